package restore

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/snapshot/fsmeta"
)

// dirHandle is an open directory of the target shared by the walker, the
// file writers and the finisher; the last user closes it.
type dirHandle struct {
	fd   int
	dev  uint64
	refs atomic.Int32
}

func newDirHandle(fd int) (*dirHandle, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, err
	}
	d := &dirHandle{fd: fd, dev: uint64(st.Dev)}
	d.refs.Store(1)
	return d, nil
}

func (d *dirHandle) ref() *dirHandle { d.refs.Add(1); return d }

func (d *dirHandle) unref() {
	if d.refs.Add(-1) == 0 {
		unix.Close(d.fd)
	}
}

// openDirAt opens name in dirfd as a directory, refusing symlinks.
func openDirAt(dirfd int, name string) (int, error) {
	return unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// openPath opens the directory at the given components below rootfd, one
// component at a time and never following a symlink.
func openPath(rootfd int, components []string) (int, error) {
	fd, err := unix.Dup(rootfd)
	if err != nil {
		return -1, err
	}
	for _, c := range components {
		next, err := openDirAt(fd, c)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

func readNames(dirfd int) ([]string, error) {
	fd, err := unix.Dup(dirfd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "dir")
	defer f.Close()
	names, err := f.Readdirnames(-1)
	slices.Sort(names)
	return names, err
}

// removeEntry removes name from dirfd, a whole directory tree if it is one,
// clearing immutable and append-only flags on the way. It never follows a
// symlink and never descends into a directory on another device than dev.
func removeEntry(dirfd int, name string, dev uint64) error {
	st, err := fsmeta.Lstat(dirfd, name)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	if _, err := fsmeta.ClearFlags(dirfd, name); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return unix.Unlinkat(dirfd, name, 0)
	}
	if uint64(st.Dev) != dev {
		return fmt.Errorf("is a mount point of another filesystem; not removing it")
	}
	fd, err := openDirAt(dirfd, name)
	if err != nil {
		return err
	}
	names, err := readNames(fd)
	if err == nil {
		for _, n := range names {
			if err = removeEntry(fd, n, dev); err != nil {
				err = fmt.Errorf("%s: %w", n, err)
				break
			}
		}
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}
