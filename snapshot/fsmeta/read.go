package fsmeta

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/snapshot/tree"
)

// Lstat stats name in the directory dirfd without following a final symlink
// (fstatat with AT_SYMLINK_NOFOLLOW). Its error is the bare errno, for
// errors.Is(err, unix.ENOENT) and the like.
func Lstat(dirfd int, name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	for {
		err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if err != unix.EINTR {
			return st, err
		}
	}
}

// TypeOf returns the node type of a st_mode, and false for a type that a
// snapshot cannot hold.
func TypeOf(mode uint32) (tree.Type, bool) {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return tree.File, true
	case unix.S_IFDIR:
		return tree.Dir, true
	case unix.S_IFLNK:
		return tree.Symlink, true
	case unix.S_IFBLK:
		return tree.BlockDev, true
	case unix.S_IFCHR:
		return tree.CharDev, true
	case unix.S_IFIFO:
		return tree.FIFO, true
	case unix.S_IFSOCK:
		return tree.Socket, true
	}
	return 0, false
}

// ReadNode fills n's Type, Mode, UID, GID, User, Group, MtimeSec, MtimeNsec,
// Rdev (devices), Target (symlinks), Xattrs (every namespace, sorted by name)
// and Flags (masked to SettableFlags) for the entry name of dirfd, whose
// lstat is st. It does not set Name, Content, Subtree or LinkTo.
//
// fd is an open descriptor of the entry (a regular file or directory), or -1:
// then fsmeta opens regular files and directories itself for their flags and
// reaches the xattrs of every type by path, without following the final
// name. With fd >= 0, dirfd may be -1 and name "" (not for symlinks).
// owners may be nil: User and Group stay "".
func ReadNode(dirfd int, name string, st *unix.Stat_t, fd int, owners *Owners, n *tree.Node) error {
	typ, ok := TypeOf(st.Mode)
	if !ok {
		return newError(name, "read", fmt.Errorf("unknown file type %#o", st.Mode&unix.S_IFMT))
	}
	n.Type = typ
	n.Mode = st.Mode & tree.ModeMask
	n.UID, n.GID = st.Uid, st.Gid
	n.User, n.Group = owners.User(st.Uid), owners.Group(st.Gid)
	n.MtimeSec, n.MtimeNsec = st.Mtim.Sec, uint32(st.Mtim.Nsec)
	n.Rdev, n.Target, n.Flags, n.Xattrs = 0, "", 0, nil

	switch typ {
	case tree.BlockDev, tree.CharDev:
		n.Rdev = st.Rdev
	case tree.Symlink:
		target, err := readlink(dirfd, name, st.Size)
		if err != nil {
			return newError(name, "read symlink", err)
		}
		n.Target = target
	}

	if typ == tree.File || typ == tree.Dir {
		if fd < 0 {
			own, err := openEntry(dirfd, name, st)
			if err != nil {
				return newError(name, "open for metadata", err)
			}
			defer unix.Close(own)
			fd = own
		}
		flags, _, err := getFlags(fd)
		if err != nil {
			return newError(name, "read flags", err)
		}
		n.Flags = flags & SettableFlags
	} else {
		fd = -1 // never use a descriptor of another type
	}

	byPath := dirfd >= 0 || dirfd == unix.AT_FDCWD
	var err error
	if fd >= 0 {
		n.Xattrs, err = readXattrs(xattrHandle{fd: fd})
		if errors.Is(err, unix.EBADF) && byPath {
			fd = -1 // an O_PATH descriptor: fall back to the path
		}
	}
	if fd < 0 {
		if byPath {
			n.Xattrs, err = readXattrs(xattrHandle{fd: -1, path: entryPath(dirfd, name)})
		} else {
			err = errors.New("neither a descriptor nor a directory given")
		}
	}
	if err != nil {
		return newError(name, "read xattrs", err)
	}
	return nil
}

// readlink returns the target of the symlink name in dirfd, whose lstat size
// is size (0 on filesystems that do not report it).
func readlink(dirfd int, name string, size int64) (string, error) {
	buf := make([]byte, max(int(size)+1, 128))
	for {
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		if len(buf) >= 1<<20 {
			return "", errors.New("symlink target longer than 1 MiB")
		}
		buf = make([]byte, 2*len(buf)) // the target grew since lstat
	}
}
