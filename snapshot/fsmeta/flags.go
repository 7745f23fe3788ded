package fsmeta

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Inode flags of chattr(1), as FS_IOC_GETFLAGS reports them. The values are
// Linux's FS_*_FL from include/uapi/linux/fs.h; golang.org/x/sys/unix (v0.50)
// does not define them.
const (
	FlagSecRm       uint32 = 0x00000001 // FS_SECRM_FL: secure deletion (s)
	FlagUnRm        uint32 = 0x00000002 // FS_UNRM_FL: undelete (u)
	FlagCompr       uint32 = 0x00000004 // FS_COMPR_FL: compress (c)
	FlagSync        uint32 = 0x00000008 // FS_SYNC_FL: synchronous updates (S)
	FlagImmutable   uint32 = 0x00000010 // FS_IMMUTABLE_FL: immutable (i)
	FlagAppend      uint32 = 0x00000020 // FS_APPEND_FL: append only (a)
	FlagNoDump      uint32 = 0x00000040 // FS_NODUMP_FL: no dump (d)
	FlagNoAtime     uint32 = 0x00000080 // FS_NOATIME_FL: no atime updates (A)
	FlagJournalData uint32 = 0x00004000 // FS_JOURNAL_DATA_FL: data journaling (j)
	FlagNoTail      uint32 = 0x00008000 // FS_NOTAIL_FL: no tail merging (t)
	FlagDirSync     uint32 = 0x00010000 // FS_DIRSYNC_FL: synchronous directory updates (D)
	FlagTopDir      uint32 = 0x00020000 // FS_TOPDIR_FL: top of directory hierarchy (T)
	FlagNoCOW       uint32 = 0x00800000 // FS_NOCOW_FL: no copy on write (C)
	FlagProjInherit uint32 = 0x20000000 // FS_PROJINHERIT_FL: project ID inheritance (P)
)

// SettableFlags are the flags a user can set with chattr and that a restore
// recreates. Flags that describe how the filesystem stores the inode
// (extents, inline data, encryption, verity, casefold, DAX) are left out:
// they are the filesystem's business or cannot be set by chattr.
const SettableFlags = FlagSecRm | FlagUnRm | FlagCompr | FlagSync | FlagImmutable |
	FlagAppend | FlagNoDump | FlagNoAtime | FlagJournalData | FlagNoTail |
	FlagDirSync | FlagTopDir | FlagNoCOW | FlagProjInherit

// lockFlags forbid writing, renaming or removing an entry.
const lockFlags = FlagImmutable | FlagAppend

// noFlags reports whether err from FS_IOC_GETFLAGS or FS_IOC_SETFLAGS means
// that the filesystem has no inode flags.
func noFlags(err error) bool {
	return errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)
}

// getFlags returns the inode flags of the open file or directory fd, all of
// them, and false if the filesystem has none.
func getFlags(fd int) (uint32, bool, error) {
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		if noFlags(err) {
			return 0, false, nil
		}
		return 0, false, err
	}
	return flags, true, nil
}

// setFlags sets the inode flags of fd. The kernel reads an int.
func setFlags(fd int, flags uint32) error {
	return unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(int32(flags)))
}

// isFileOrDir reports whether the file type bits of mode are those of a
// regular file or a directory: the only types fsmeta opens.
func isFileOrDir(mode uint32) bool {
	t := mode & unix.S_IFMT
	return t == unix.S_IFREG || t == unix.S_IFDIR
}

// openEntry opens the regular file or directory name in dirfd read-only for
// ioctl and xattr calls. It never follows a symlink and never opens another
// type of file: it takes an O_PATH descriptor, checks that it is a regular
// file or directory (and, if st is not nil, the inode st describes), and
// reopens that inode through /proc/self/fd. The atime is left alone when the
// kernel allows O_NOATIME.
func openEntry(dirfd int, name string, st *unix.Stat_t) (int, error) {
	pfd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(pfd)
	var pst unix.Stat_t
	if err := unix.Fstat(pfd, &pst); err != nil {
		return -1, err
	}
	if !isFileOrDir(pst.Mode) || (st != nil && (pst.Ino != st.Ino || pst.Dev != st.Dev)) {
		return -1, ErrChanged
	}
	p := fmt.Sprintf("/proc/self/fd/%d", pfd)
	// No O_NOFOLLOW: the magic link is the inode itself, checked above.
	flags := unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NONBLOCK
	fd, err := unix.Open(p, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Open(p, flags, 0)
	}
	if err != nil {
		return -1, fmt.Errorf("reopen through /proc: %w", err)
	}
	return fd, nil
}

// ClearFlags clears the immutable and append-only flags of the regular file
// or directory name in dirfd so that it can be written, renamed or removed,
// and returns its flags as they were (all bits, not only SettableFlags). For
// other types, and on filesystems without inode flags, it does nothing and
// returns 0.
func ClearFlags(dirfd int, name string) (uint32, error) {
	st, err := Lstat(dirfd, name)
	if err != nil {
		return 0, newError(name, "stat", err)
	}
	if !isFileOrDir(st.Mode) {
		return 0, nil
	}
	fd, err := openEntry(dirfd, name, &st)
	if err != nil {
		return 0, newError(name, "open for flags", err)
	}
	defer unix.Close(fd)
	flags, ok, err := getFlags(fd)
	if err != nil {
		return 0, newError(name, "read flags", err)
	}
	if !ok || flags&lockFlags == 0 {
		return flags, nil
	}
	if err := setFlags(fd, flags&^lockFlags); err != nil {
		return flags, newError(name, "clear flags", err)
	}
	return flags, nil
}

// SetFlags sets the settable inode flags of the regular file or directory
// name in dirfd to those of flags, keeping the bits outside SettableFlags,
// as Apply does last. It is for an entry that was given its other metadata
// while it had to stay renameable (a file written under a temporary name).
// Other types are left alone.
func SetFlags(dirfd int, name string, flags uint32) error {
	st, err := Lstat(dirfd, name)
	if err != nil {
		return newError(name, "stat", err)
	}
	if !isFileOrDir(st.Mode) {
		return nil
	}
	fd, err := openEntry(dirfd, name, &st)
	if err != nil {
		return newError(name, "open for flags", err)
	}
	defer unix.Close(fd)
	have, ok, err := getFlags(fd)
	if err != nil {
		return newError(name, "read flags", err)
	}
	want := have&^SettableFlags | flags&SettableFlags
	switch {
	case want == have:
		return nil
	case !ok:
		return unsupported(name, fmt.Sprintf("set flags %#x", flags), unix.EOPNOTSUPP)
	}
	refused, err := applyFlags(fd, have, want)
	if err != nil {
		return newError(name, fmt.Sprintf("set flags %#x", flags), err)
	}
	if refused != 0 {
		return unsupported(name, fmt.Sprintf("set flags %#x", refused), unix.EOPNOTSUPP)
	}
	return nil
}
