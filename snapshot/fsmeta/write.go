package fsmeta

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/snapshot/tree"
)

// Mknod creates the block or character device, FIFO or socket name in dirfd
// with n's type, device number and permission bits (minus the umask; Apply
// sets the mode). Sockets are made with mknodat(S_IFSOCK), which Linux
// allows: the node exists, no process listens on it.
func Mknod(dirfd int, name string, n *tree.Node) error {
	var mode uint32
	var dev uint64
	switch n.Type {
	case tree.BlockDev:
		mode, dev = unix.S_IFBLK, n.Rdev
	case tree.CharDev:
		mode, dev = unix.S_IFCHR, n.Rdev
	case tree.FIFO:
		mode = unix.S_IFIFO
	case tree.Socket:
		mode = unix.S_IFSOCK
	default:
		return newError(name, "mknod", fmt.Errorf("cannot make a %s node", n.Type))
	}
	// Permission bits only: setuid and friends wait for Apply, after chown.
	if err := unix.Mknodat(dirfd, name, mode|n.Mode&0o777, int(dev)); err != nil {
		return newError(name, "mknod", err)
	}
	return nil
}

// Symlink creates the symlink name in dirfd pointing at target, verbatim.
func Symlink(dirfd int, name string, target string) error {
	if err := unix.Symlinkat(target, dirfd, name); err != nil {
		return newError(name, "symlink", err)
	}
	return nil
}

// Apply sets n's metadata on the entry name in dirfd, which must already have
// n's type: owner (numeric UID and GID), mode (not on symlinks), xattrs (every
// recorded one is set, every other one removed), mtime (atime is left alone)
// and last the inode flags of regular files and directories, in that order
// (see the package documentation for why). Immutable and append-only flags
// already on the entry are cleared first, so Apply works on an entry that
// already carries them.
//
// fd is an open descriptor of the entry (a regular file or directory) or -1.
// An attribute the filesystem refuses as unsupported does not stop Apply: the
// other attributes are set and the returned error wraps ErrUnsupported (one
// per refused attribute, joined). Inode flags count one by one: a flag the
// filesystem lacks (no-copy-on-write on ext4, say) is reported and the
// others are still set. Any other failure is returned at once, as an *Error
// naming the entry and the attribute.
func Apply(dirfd int, name string, fd int, n *tree.Node) error {
	st, err := Lstat(dirfd, name)
	if err != nil {
		return newError(name, "stat", err)
	}
	typ, ok := TypeOf(st.Mode)
	if !ok || typ != n.Type {
		return newError(name, "apply metadata", fmt.Errorf("%w: it is a %s, the node a %s", ErrChanged, typ, n.Type))
	}
	fileOrDir := typ == tree.File || typ == tree.Dir
	if !fileOrDir {
		fd = -1
	} else if fd < 0 {
		own, err := openEntry(dirfd, name, &st)
		if err != nil {
			return newError(name, "open for metadata", err)
		}
		defer unix.Close(own)
		fd = own
	}

	var skipped []error
	flags, hasFlags := uint32(0), false
	if fileOrDir {
		if flags, hasFlags, err = getFlags(fd); err != nil {
			return newError(name, "read flags", err)
		}
		if hasFlags && flags&lockFlags != 0 {
			if err := setFlags(fd, flags&^lockFlags); err != nil {
				return newError(name, "clear flags", err)
			}
			flags &^= lockFlags
		}
	}

	// With a descriptor, owner and times go through it like everything
	// else: name may have been replaced since it was opened (by a hard
	// link to a file elsewhere on the filesystem, say), and a change by
	// name would land on that file.
	if fd >= 0 {
		err = unix.Fchown(fd, int(n.UID), int(n.GID))
	} else {
		err = unix.Fchownat(dirfd, name, int(n.UID), int(n.GID), unix.AT_SYMLINK_NOFOLLOW)
	}
	if err != nil {
		return newError(name, "set owner", err)
	}

	if typ != tree.Symlink {
		mode := n.Mode & tree.ModeMask
		if fd >= 0 {
			err = unix.Fchmod(fd, mode)
		} else {
			err = chmodNoFollow(dirfd, name, &st, mode)
		}
		if err != nil {
			return newError(name, "set mode", err)
		}
	}

	h := xattrHandle{fd: fd, path: entryPath(dirfd, name)}
	more, err := applyXattrs(h, name, n.Xattrs)
	skipped = append(skipped, more...)
	if err != nil {
		return errors.Join(append(skipped, err)...)
	}

	ts := []unix.Timespec{
		{Nsec: unix.UTIME_OMIT},
		{Sec: n.MtimeSec, Nsec: int64(n.MtimeNsec)},
	}
	if fd >= 0 {
		err = futimens(fd, ts)
	} else {
		err = unix.UtimesNanoAt(dirfd, name, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err != nil {
		return errors.Join(append(skipped, newError(name, "set mtime", err))...)
	}

	if fileOrDir {
		want := flags&^SettableFlags | n.Flags&SettableFlags
		switch {
		case want == flags:
		case !hasFlags:
			skipped = append(skipped, unsupported(name, fmt.Sprintf("set flags %#x", n.Flags), unix.EOPNOTSUPP))
		default:
			refused, err := applyFlags(fd, flags, want)
			if err != nil {
				return errors.Join(append(skipped, newError(name, fmt.Sprintf("set flags %#x", n.Flags), err))...)
			}
			if refused != 0 {
				skipped = append(skipped, unsupported(name, fmt.Sprintf("set flags %#x", refused), unix.EOPNOTSUPP))
			}
		}
	}
	return errors.Join(skipped...)
}

// applyFlags changes the inode flags of fd from have to want. A filesystem
// refuses a whole FS_IOC_SETFLAGS as unsupported (EOPNOTSUPP) when one flag
// is foreign to it, such as no-copy-on-write on ext4 or sync on tmpfs; then
// applyFlags changes the flags one at a time, so that the ones the
// filesystem has are still set, and returns the bits it refused. Immutable
// and append-only come last: once set, they forbid changing other flags.
func applyFlags(fd int, have, want uint32) (refused uint32, err error) {
	err = setFlags(fd, want)
	if err == nil || !errors.Is(err, unix.EOPNOTSUPP) {
		return 0, err
	}
	cur := have
	for _, last := range []bool{false, true} {
		for bit := uint32(1); bit != 0; bit <<= 1 {
			if bit&SettableFlags == 0 || (bit&lockFlags != 0) != last || (cur^want)&bit == 0 {
				continue
			}
			next := cur ^ bit
			switch err := setFlags(fd, next); {
			case err == nil:
				cur = next
			case errors.Is(err, unix.EOPNOTSUPP):
				refused |= bit
			default:
				return refused, err
			}
		}
	}
	return refused, nil
}

// chmodNoFollow changes the mode of name in dirfd, which is not a symlink,
// without following a symlink put there since st was taken: chmod has no
// no-follow flag before fchmodat2 (Linux 6.6), so it takes an O_PATH
// descriptor, checks it, and changes the mode through /proc/self/fd, as
// glibc's fchmodat does.
func chmodNoFollow(dirfd int, name string, st *unix.Stat_t, mode uint32) error {
	pfd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	var pst unix.Stat_t
	if err := unix.Fstat(pfd, &pst); err != nil {
		return err
	}
	if pst.Mode&unix.S_IFMT == unix.S_IFLNK || pst.Ino != st.Ino || pst.Dev != st.Dev {
		return ErrChanged
	}
	return unix.Chmod(fmt.Sprintf("/proc/self/fd/%d", pfd), mode)
}

// futimens sets the times of the open file fd: utimensat with a NULL path,
// as the C library's futimens does. x/sys/unix has no call for it: its
// UtimesNanoAt always passes a path, and an empty one is ENOENT.
func futimens(fd int, ts []unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}
