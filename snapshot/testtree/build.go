package testtree

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Build creates d under the existing directory root and registers ClearFlags
// for root with t.Cleanup, so that t.TempDir can remove it.
//
// Order: every entry is created with its owner, mode and xattrs, a
// directory's after its entries (so a setgid directory or a default ACL does
// not rub off on them); then the hard links; then, depth first, every mtime
// (a directory's after its entries) and flags after the mtime; root's mtime,
// DefaultMtime, comes last. What the filesystem refuses as unsupported
// (flags, an xattr namespace) is skipped with a t.Log; any other failure is
// fatal.
func Build(t testing.TB, root string, d Dir) {
	t.Helper()
	t.Cleanup(func() { ClearFlags(t, root) })
	rootfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("testtree.Build: %v", err)
	}
	defer unix.Close(rootfd)
	b := &builder{t: t, rootfd: rootfd}
	if err := b.create(rootfd, nil, d); err != nil {
		t.Fatalf("testtree.Build %s: %v", root, err)
	}
	for _, l := range b.links {
		if err := b.link(l); err != nil {
			t.Fatalf("testtree.Build %s: hard link %s/%s to %s: %v", root, strings.Join(l.dir, "/"), l.name, l.to, err)
		}
	}
	if err := b.finish(rootfd, nil, d); err != nil {
		t.Fatalf("testtree.Build %s: %v", root, err)
	}
	if err := setMtime(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", rootfd), DefaultMtime, 0); err != nil {
		t.Fatalf("testtree.Build %s: set mtime: %v", root, err)
	}
}

type builder struct {
	t      testing.TB
	rootfd int
	links  []pendingLink
}

type pendingLink struct {
	dir  []string // components from the root to the link's directory
	name string
	to   string
}

func sortedNames(d Dir) []string {
	return slices.Sorted(maps.Keys(d))
}

func display(dir []string, name string) string {
	return fmt.Sprintf("%q", strings.Join(append(slices.Clone(dir), name), "/"))
}

// create makes the entries of d in dirfd, whose path from the root is dir.
func (b *builder) create(dirfd int, dir []string, d Dir) error {
	for _, name := range sortedNames(d) {
		e := d[name]
		if err := b.createOne(dirfd, dir, name, e); err != nil {
			return fmt.Errorf("%s: %w", display(dir, name), err)
		}
	}
	return nil
}

func (b *builder) createOne(dirfd int, dir []string, name string, e Entry) error {
	switch e := e.(type) {
	case File:
		if err := writeFile(dirfd, name, e); err != nil {
			return err
		}
	case Dir, Directory:
		entries, _ := entriesOf(e)
		if err := unix.Mkdirat(dirfd, name, 0o700); err != nil {
			return err
		}
		fd, err := openDirAt(dirfd, name)
		if err != nil {
			return err
		}
		err = b.create(fd, append(slices.Clone(dir), name), entries)
		unix.Close(fd)
		if err != nil {
			return err
		}
	case Symlink:
		if err := unix.Symlinkat(e.Target, dirfd, name); err != nil {
			return err
		}
	case Hardlink:
		b.links = append(b.links, pendingLink{dir: slices.Clone(dir), name: name, to: e.To})
		return nil
	case Dev:
		mode := uint32(unix.S_IFCHR)
		if e.Block {
			mode = unix.S_IFBLK
		}
		if err := unix.Mknodat(dirfd, name, mode|0o600, int(unix.Mkdev(e.Major, e.Minor))); err != nil {
			return err
		}
	case FIFO:
		if err := unix.Mknodat(dirfd, name, unix.S_IFIFO|0o600, 0); err != nil {
			return err
		}
	case Socket:
		if err := bindSocket(dirfd, name); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown entry type %T", e)
	}
	return b.basics(dirfd, dir, name, metaOf(e))
}

// writeFile creates a regular file with its content, data at offsets and
// holes.
func writeFile(dirfd int, name string, e File) error {
	fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	if _, err := f.Write(e.Content); err != nil {
		return err
	}
	end := int64(len(e.Content))
	for _, at := range e.Sparse {
		if _, err := f.WriteAt(at.Data, at.Offset); err != nil {
			return err
		}
		end = max(end, at.Offset+int64(len(at.Data)))
	}
	if e.Size > end {
		if err := f.Truncate(e.Size); err != nil {
			return err
		}
	}
	return f.Close()
}

// bindSocket creates a socket node by binding a real unix socket, reached
// through /proc/self/fd so that the depth does not matter, and closing it
// (the node stays). If the path does not fit in sun_path, mknod makes the
// same node.
func bindSocket(dirfd int, name string) error {
	p := procPath(dirfd, name)
	if len(p) >= 108 {
		return unix.Mknodat(dirfd, name, unix.S_IFSOCK|0o600, 0)
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	return unix.Bind(s, &unix.SockaddrUnix{Name: p})
}

// basics sets owner, then mode (chown clears setuid/setgid), then xattrs
// (chown clears security.capability).
func (b *builder) basics(dirfd int, dir []string, name string, m meta) error {
	if err := unix.Fchownat(dirfd, name, int(m.uid), int(m.gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if m.chmod {
		if err := unix.Chmod(procPath(dirfd, name), m.mode); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	p := procPath(dirfd, name)
	for _, key := range slices.Sorted(maps.Keys(m.xattrs)) {
		err := unix.Lsetxattr(p, key, m.xattrs[key], 0)
		if errors.Is(err, unix.EOPNOTSUPP) {
			b.t.Logf("testtree: %s: the filesystem refuses xattr %s (%v); left out", display(dir, name), key, err)
			continue
		}
		if err != nil {
			return fmt.Errorf("set xattr %s: %w", key, err)
		}
	}
	return nil
}

func (b *builder) link(l pendingLink) error {
	to := strings.Split(l.to, "/")
	srcfd, err := openPath(b.rootfd, to[:len(to)-1])
	if err != nil {
		return err
	}
	defer unix.Close(srcfd)
	dstfd, err := openPath(b.rootfd, l.dir)
	if err != nil {
		return err
	}
	defer unix.Close(dstfd)
	return unix.Linkat(srcfd, to[len(to)-1], dstfd, l.name, 0)
}

// finish sets, depth first, every mtime and then the flags of the entries of
// d in dirfd.
func (b *builder) finish(dirfd int, dir []string, d Dir) error {
	for _, name := range sortedNames(d) {
		e := d[name]
		if entries, ok := entriesOf(e); ok {
			fd, err := openDirAt(dirfd, name)
			if err != nil {
				return fmt.Errorf("%s: %w", display(dir, name), err)
			}
			err = b.finish(fd, append(slices.Clone(dir), name), entries)
			unix.Close(fd)
			if err != nil {
				return err
			}
		}
		m := metaOf(e)
		if !m.setTime {
			continue
		}
		if err := setMtime(dirfd, name, m.mtime, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("%s: set mtime: %w", display(dir, name), err)
		}
		if m.flags != 0 {
			if err := b.addFlags(dirfd, dir, name, m.flags); err != nil {
				return fmt.Errorf("%s: set flags %#x: %w", display(dir, name), m.flags, err)
			}
		}
	}
	return nil
}

func setMtime(dirfd int, name string, mtime time.Time, flags int) error {
	ts := []unix.Timespec{
		{Nsec: unix.UTIME_OMIT},
		{Sec: mtime.Unix(), Nsec: int64(mtime.Nanosecond())},
	}
	return unix.UtimesNanoAt(dirfd, name, ts, flags)
}

func (b *builder) addFlags(dirfd int, dir []string, name string, flags uint32) error {
	f, err := openRead(dirfd, name)
	if err != nil {
		return err
	}
	defer f.Close()
	cur, err := getFlags(int(f.Fd()))
	if err == nil {
		err = setFlags(int(f.Fd()), cur|flags)
	}
	if err != nil && noFlags(err) {
		b.t.Logf("testtree: %s: the filesystem refuses inode flags %#x (%v); left out", display(dir, name), flags, err)
		return nil
	}
	return err
}
