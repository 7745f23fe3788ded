package testtree

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Inode flags (FS_*_FL of include/uapi/linux/fs.h; golang.org/x/sys/unix
// does not define them) used by the trees and the comparison.
const (
	FlagImmutable uint32 = 0x00000010 // FS_IMMUTABLE_FL (chattr +i)
	FlagAppend    uint32 = 0x00000020 // FS_APPEND_FL (chattr +a)
	FlagNoDump    uint32 = 0x00000040 // FS_NODUMP_FL (chattr +d)
)

// storageFlags describe how the filesystem stores an inode, not what a user
// chose; Compare ignores them: FS_INDEX_FL (hashed directory, depends on its
// size), FS_HUGE_FILE_FL, FS_EXTENT_FL, FS_EA_INODE_FL, FS_EOFBLOCKS_FL,
// FS_INLINE_DATA_FL, FS_ENCRYPT_FL, FS_VERITY_FL, FS_DAX_FL, FS_CASEFOLD_FL.
const storageFlags uint32 = 0x00001000 | 0x00040000 | 0x00080000 | 0x00200000 |
	0x00400000 | 0x10000000 | 0x00000800 | 0x00100000 | 0x02000000 | 0x40000000

// openDirAt opens the directory name in dirfd without following a symlink.
func openDirAt(dirfd int, name string) (int, error) {
	return unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// openPath opens the directory reached from dirfd through the components
// comps, one openat at a time, so any depth works.
func openPath(dirfd int, comps []string) (int, error) {
	fd, err := unix.Dup(dirfd)
	if err != nil {
		return -1, err
	}
	for _, c := range comps {
		next, err := openDirAt(fd, c)
		unix.Close(fd)
		if err != nil {
			return -1, fmt.Errorf("open %q: %w", c, err)
		}
		fd = next
	}
	return fd, nil
}

// openRead opens a regular file or directory for reading, its flags and its
// data; never call it for other types.
func openRead(dirfd int, name string) (*os.File, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// readNames returns the names in the directory fd in byte order.
func readNames(fd int) ([]string, error) {
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), "dir")
	defer f.Close()
	names, err := f.Readdirnames(-1)
	slices.Sort(names)
	return names, err
}

func lstat(dirfd int, name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return st, err
}

// procPath names name in dirfd for path-only calls: the kernel resolves the
// directory through the descriptor, and the l* calls do not follow name.
func procPath(dirfd int, name string) string {
	return fmt.Sprintf("/proc/self/fd/%d/%s", dirfd, name)
}

// noFlags reports whether an FS_IOC_[GS]ETFLAGS error means the filesystem
// has no inode flags.
func noFlags(err error) bool {
	return errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)
}

func getFlags(fd int) (uint32, error) {
	return unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
}

func setFlags(fd int, flags uint32) error {
	return unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(int32(flags)))
}

// xattrs returns all xattrs of name in dirfd, not following a symlink.
func xattrs(dirfd int, name string) (map[string][]byte, error) {
	p := procPath(dirfd, name)
	size, err := unix.Llistxattr(p, nil)
	if errors.Is(err, unix.EOPNOTSUPP) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	buf := make([]byte, size)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte)
	for _, key := range strings.Split(string(buf[:n]), "\x00") {
		if key == "" {
			continue
		}
		size, err := unix.Lgetxattr(p, key, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		v := make([]byte, size)
		n, err := unix.Lgetxattr(p, key, v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		out[key] = v[:n]
	}
	return out, nil
}

// span is a run [off, end) of a file.
type span struct{ off, end int64 }

// dataSpans returns the data runs of f up to size with SEEK_DATA/SEEK_HOLE,
// and true. Without SEEK_DATA it returns the whole file and false.
func dataSpans(f *os.File, size int64) ([]span, bool, error) {
	var out []span
	for off := int64(0); off < size; {
		data, err := f.Seek(off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if errors.Is(err, unix.EINVAL) {
			return []span{{0, size}}, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		hole, err := f.Seek(data, unix.SEEK_HOLE)
		if err != nil {
			return nil, false, err
		}
		hole = min(hole, size)
		if data >= hole {
			break
		}
		out = append(out, span{data, hole})
		off = hole
	}
	return out, true, nil
}

// dataInHoles returns how many bytes of the spans data lie outside the
// spans within, each widened to multiples of gran (the block size: data
// ranges are whole blocks), and the offset of the first such byte.
func dataInHoles(data, within []span, gran int64) (n, first int64) {
	first = -1
	j := 0
	for _, d := range data {
		off := d.off
		for off < d.end {
			for j < len(within) && alignUp(within[j].end, gran) <= off {
				j++
			}
			end := d.end
			if j < len(within) {
				lo, hi := alignDown(within[j].off, gran), alignUp(within[j].end, gran)
				if lo <= off {
					off = min(hi, d.end) // covered up to hi
					continue
				}
				end = min(end, lo)
			}
			if first < 0 {
				first = off
			}
			n += end - off
			off = end
		}
	}
	return n, first
}

func alignDown(x, gran int64) int64 { return x / gran * gran }
func alignUp(x, gran int64) int64   { return (x + gran - 1) / gran * gran }

// union merges two sorted span lists into sorted, non-overlapping spans.
func union(a, b []span) []span {
	all := append(slices.Clone(a), b...)
	slices.SortFunc(all, func(x, y span) int { return cmp.Compare(x.off, y.off) })
	var out []span
	for _, s := range all {
		if n := len(out); n > 0 && s.off <= out[n-1].end {
			out[n-1].end = max(out[n-1].end, s.end)
			continue
		}
		out = append(out, s)
	}
	return out
}

// ClearFlags removes the immutable and append-only flags from every regular
// file and directory under root (root included), so that the tree can be
// deleted. A missing root is not an error. Build registers it with
// t.Cleanup.
func ClearFlags(t testing.TB, root string) {
	t.Helper()
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return
	}
	if err != nil {
		t.Errorf("testtree.ClearFlags %s: %v", root, err)
		return
	}
	defer unix.Close(fd)
	unlockFD(t, root, fd)
	if err := clearTree(t, fd, root); err != nil {
		t.Errorf("testtree.ClearFlags %s: %v", root, err)
	}
}

func unlockFD(t testing.TB, p string, fd int) {
	flags, err := getFlags(fd)
	if err != nil {
		if !noFlags(err) {
			t.Errorf("testtree.ClearFlags: read flags of %s: %v", p, err)
		}
		return
	}
	if flags&(FlagImmutable|FlagAppend) != 0 {
		if err := setFlags(fd, flags&^(FlagImmutable|FlagAppend)); err != nil {
			t.Errorf("testtree.ClearFlags: clear flags of %s: %v", p, err)
		}
	}
}

func clearTree(t testing.TB, dirfd int, p string) error {
	names, err := readNames(dirfd)
	if err != nil {
		return err
	}
	for _, name := range names {
		st, err := lstat(dirfd, name)
		if err != nil {
			return err
		}
		mode := st.Mode & unix.S_IFMT
		if mode != unix.S_IFREG && mode != unix.S_IFDIR {
			continue
		}
		f, err := openRead(dirfd, name)
		if err != nil {
			return err
		}
		unlockFD(t, p+"/"+name, int(f.Fd()))
		if mode == unix.S_IFDIR {
			err = clearTree(t, int(f.Fd()), p+"/"+name)
		}
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// NeedRoot skips a test that is not run as root, saying why; CI runs as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (owners, devices, trusted.* xattrs, flags); run as root as CI does")
	}
}
