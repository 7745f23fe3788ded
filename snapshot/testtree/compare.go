package testtree

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// maxReports bounds the differences Compare reports one by one.
const maxReports = 50

// Compare fails t when the trees a and b differ, reporting each difference
// with t.Errorf. It walks both trees itself, through directory descriptors
// (so paths beyond PATH_MAX are compared), and checks, for the roots and
// every entry: presence, type, mode, owner, mtime to the nanosecond (symlinks
// too), size, content (sparse-aware: holes are compared without reading
// them), device number, symlink target, every xattr, inode flags (those a
// user sets; storage flags such as extents are ignored), the hard-link
// structure, and that b has every hole of a: SEEK_DATA finds no data in b
// where a has a hole (to the block; a hole of a may be data of zeros in b
// only if it is shorter than a block), and for sparse files b's st_blocks is
// not much larger than a's (so that b's holes are not preallocated space).
//
// Then it runs rsync -aHAXS --numeric-ids --checksum --dry-run
// --itemize-changes --delete a/ b/, which must print nothing. Two
// adjustments keep rsync usable: paths longer than rsync's limit are
// excluded (the walk above covers them), and files over 1 GiB, whose holes
// rsync --checksum would read byte by byte, are left to a second rsync run
// without --checksum over those files alone (the walk compares their
// content). Without rsync installed, Compare calls t.Skip after its own walk.
func Compare(t testing.TB, a, b string) {
	t.Helper()
	CompareExcept(t, a, b)
}

// CompareExcept is Compare leaving out the paths skip (relative to a and b,
// such as "etc/hostname") and what is below them, on both sides: the
// entries of a live tree that an apply must leave alone.
func CompareExcept(t testing.TB, a, b string, skip ...string) {
	t.Helper()
	c := &comparer{
		t:     t,
		keysA: make(map[string]inode),
		keysB: make(map[string]inode),
		skip:  make(map[string]bool),
	}
	for _, s := range skip {
		c.skip[s] = true
	}
	a, b = filepath.Clean(a), filepath.Clean(b)
	afd, err := unix.Open(filepath.Dir(a), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("testtree.Compare: %v", err)
	}
	defer unix.Close(afd)
	bfd, err := unix.Open(filepath.Dir(b), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("testtree.Compare: %v", err)
	}
	defer unix.Close(bfd)
	c.entry(afd, filepath.Base(a), bfd, filepath.Base(b), ".", false)
	c.compareLinks()
	if c.diffs > maxReports {
		t.Errorf("testtree.Compare: %d differences in all, %d reported", c.diffs, maxReports)
	}
	c.rsync(a, b)
}

type inode struct{ dev, ino uint64 }

type comparer struct {
	t     testing.TB
	diffs int

	// Hard links: the inode of every non-directory that has several links
	// in a or in b, on both sides.
	keysA, keysB map[string]inode
	linked       []string

	skip map[string]bool // paths left out

	long []string // topmost paths too long for rsync
	big  []string // files too large for rsync --checksum

	bufA, bufB []byte // for sameContent, allocated once
}

func (c *comparer) diff(rel, format string, args ...any) {
	c.t.Helper()
	c.diffs++
	if c.diffs <= maxReports {
		c.t.Errorf("testtree.Compare: %s: %s", short(rel), fmt.Sprintf(format, args...))
	}
}

// short quotes a relative path, eliding the middle of very long ones.
func short(rel string) string {
	if len(rel) > 160 {
		rel = rel[:70] + fmt.Sprintf("...(%d bytes)...", len(rel)-140) + rel[len(rel)-70:]
	}
	return fmt.Sprintf("%q", rel)
}

func child(rel, name string) string {
	if rel == "." {
		return name
	}
	return rel + "/" + name
}

func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFCHR:
		return "char device"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	}
	return fmt.Sprintf("type %#o", mode&unix.S_IFMT)
}

// entry compares aname in afd with bname in bfd, at rel. deep is set below a
// path already too long for rsync.
func (c *comparer) entry(afd int, aname string, bfd int, bname string, rel string, deep bool) {
	c.t.Helper()
	sa, err := lstat(afd, aname)
	if err != nil {
		c.diff(rel, "lstat in a: %v", err)
		return
	}
	sb, err := lstat(bfd, bname)
	if err != nil {
		c.diff(rel, "lstat in b: %v", err)
		return
	}
	typ := sa.Mode & unix.S_IFMT
	if typ != sb.Mode&unix.S_IFMT {
		c.diff(rel, "%s in a, %s in b", typeName(sa.Mode), typeName(sb.Mode))
		return
	}
	if !deep && tooLongForRsync(rel) {
		c.long = append(c.long, rel)
		deep = true
	}
	if typ != unix.S_IFLNK && sa.Mode&0o7777 != sb.Mode&0o7777 {
		c.diff(rel, "mode %#o in a, %#o in b", sa.Mode&0o7777, sb.Mode&0o7777)
	}
	if sa.Uid != sb.Uid || sa.Gid != sb.Gid {
		c.diff(rel, "owner %d:%d in a, %d:%d in b", sa.Uid, sa.Gid, sb.Uid, sb.Gid)
	}
	if sa.Mtim != sb.Mtim {
		c.diff(rel, "mtime %d.%09d in a, %d.%09d in b", sa.Mtim.Sec, sa.Mtim.Nsec, sb.Mtim.Sec, sb.Mtim.Nsec)
	}
	if typ != unix.S_IFDIR && sa.Size != sb.Size {
		c.diff(rel, "size %d in a, %d in b", sa.Size, sb.Size)
	}
	c.xattrs(afd, aname, bfd, bname, rel)
	if typ != unix.S_IFDIR && (sa.Nlink > 1 || sb.Nlink > 1) {
		c.keysA[rel] = inode{sa.Dev, sa.Ino}
		c.keysB[rel] = inode{sb.Dev, sb.Ino}
		c.linked = append(c.linked, rel)
	}

	switch typ {
	case unix.S_IFREG, unix.S_IFDIR:
		c.flagsAndData(afd, aname, bfd, bname, rel, &sa, &sb, deep)
	case unix.S_IFLNK:
		ta, erra := readlink(afd, aname)
		tb, errb := readlink(bfd, bname)
		if erra != nil || errb != nil {
			c.diff(rel, "readlink: %v, %v", erra, errb)
		} else if ta != tb {
			c.diff(rel, "symlink target %q in a, %q in b", ta, tb)
		}
	case unix.S_IFBLK, unix.S_IFCHR:
		if sa.Rdev != sb.Rdev {
			c.diff(rel, "device %d:%d in a, %d:%d in b",
				unix.Major(sa.Rdev), unix.Minor(sa.Rdev), unix.Major(sb.Rdev), unix.Minor(sb.Rdev))
		}
	}
}

func readlink(dirfd int, name string) (string, error) {
	buf := make([]byte, 8192)
	n, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func (c *comparer) xattrs(afd int, aname string, bfd int, bname string, rel string) {
	c.t.Helper()
	xa, err := xattrs(afd, aname)
	if err != nil {
		c.diff(rel, "xattrs of a: %v", err)
		return
	}
	xb, err := xattrs(bfd, bname)
	if err != nil {
		c.diff(rel, "xattrs of b: %v", err)
		return
	}
	keys := slices.Sorted(maps.Keys(xa))
	for _, k := range slices.Sorted(maps.Keys(xb)) {
		if _, ok := xa[k]; !ok {
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		va, oka := xa[k]
		vb, okb := xb[k]
		switch {
		case !okb:
			c.diff(rel, "xattr %s missing in b", k)
		case !oka:
			c.diff(rel, "xattr %s only in b", k)
		case !bytes.Equal(va, vb):
			c.diff(rel, "xattr %s is %q in a, %q in b", k, va, vb)
		}
	}
}

// flagsAndData opens a regular file or directory on both sides and compares
// flags, then content and holes (files) or entries (directories).
func (c *comparer) flagsAndData(afd int, aname string, bfd int, bname string, rel string, sa, sb *unix.Stat_t, deep bool) {
	c.t.Helper()
	fa, err := openRead(afd, aname)
	if err != nil {
		c.diff(rel, "open in a: %v", err)
		return
	}
	defer fa.Close()
	fb, err := openRead(bfd, bname)
	if err != nil {
		c.diff(rel, "open in b: %v", err)
		return
	}
	defer fb.Close()

	ga, erra := getFlags(int(fa.Fd()))
	gb, errb := getFlags(int(fb.Fd()))
	switch {
	case erra != nil && !noFlags(erra):
		c.diff(rel, "flags of a: %v", erra)
	case errb != nil && !noFlags(errb):
		c.diff(rel, "flags of b: %v", errb)
	case ga&^storageFlags != gb&^storageFlags:
		c.diff(rel, "flags %#x in a, %#x in b", ga&^storageFlags, gb&^storageFlags)
	}

	if sa.Mode&unix.S_IFMT == unix.S_IFDIR {
		c.dir(int(fa.Fd()), int(fb.Fd()), rel, deep)
		return
	}
	if sa.Size != sb.Size {
		return // reported
	}
	if !deep && sa.Size > rsyncChecksumLimit {
		c.big = append(c.big, rel)
	}
	ra, exactA, err := dataSpans(fa, sa.Size)
	if err != nil {
		c.diff(rel, "data ranges of a: %v", err)
		return
	}
	rb, exactB, err := dataSpans(fb, sb.Size)
	if err != nil {
		c.diff(rel, "data ranges of b: %v", err)
		return
	}
	if err := c.sameContent(fa, fb, union(ra, rb)); err != nil {
		c.diff(rel, "%v", err)
	}
	if exactA && exactB {
		gran := max(int64(sa.Blksize), int64(sb.Blksize), 512)
		if n, at := dataInHoles(rb, ra, gran); n > 0 {
			c.diff(rel, "holes not recreated: %d bytes of data in b where a has holes, from byte %d", n, at)
			return
		}
	}
	if sa.Blocks*512 < sa.Size {
		// Allocated but unwritten blocks (preallocation) are holes to
		// SEEK_DATA; count them too.
		slack := 2048 + sa.Blocks/8 // 1 MiB plus an eighth, in 512-byte blocks
		if sb.Blocks > sa.Blocks+slack {
			c.diff(rel, "holes not recreated: %d bytes allocated in a, %d in b", sa.Blocks*512, sb.Blocks*512)
		}
	}
}

// dir compares the entries of two open directories.
func (c *comparer) dir(afd, bfd int, rel string, deep bool) {
	c.t.Helper()
	na, err := readNames(afd)
	if err != nil {
		c.diff(rel, "read directory a: %v", err)
		return
	}
	nb, err := readNames(bfd)
	if err != nil {
		c.diff(rel, "read directory b: %v", err)
		return
	}
	keep := func(names []string) []string {
		return slices.DeleteFunc(names, func(n string) bool { return c.skip[child(rel, n)] })
	}
	na, nb = keep(na), keep(nb)
	i, j := 0, 0
	for i < len(na) || j < len(nb) {
		switch {
		case j == len(nb) || (i < len(na) && na[i] < nb[j]):
			c.diff(child(rel, na[i]), "only in a")
			i++
		case i == len(na) || nb[j] < na[i]:
			c.diff(child(rel, nb[j]), "only in b")
			j++
		default:
			c.entry(afd, na[i], bfd, nb[j], child(rel, na[i]), deep)
			i++
			j++
		}
	}
}

// sameContent compares two files of equal size over spans, the union of
// their data ranges, byte by byte; holes on both sides are not read at all (a
// hole reads as zeros, so a hole against written zeros is equal content).
func (c *comparer) sameContent(fa, fb *os.File, spans []span) error {
	if c.bufA == nil {
		c.bufA, c.bufB = make([]byte, 1<<20), make([]byte, 1<<20)
	}
	bufA, bufB := c.bufA, c.bufB
	for _, s := range spans {
		for off := s.off; off < s.end; {
			n := int(min(int64(len(bufA)), s.end-off))
			if _, err := fa.ReadAt(bufA[:n], off); err != nil {
				return fmt.Errorf("read a at %d: %w", off, err)
			}
			if _, err := fb.ReadAt(bufB[:n], off); err != nil {
				return fmt.Errorf("read b at %d: %w", off, err)
			}
			if !bytes.Equal(bufA[:n], bufB[:n]) {
				k := 0
				for bufA[k] == bufB[k] {
					k++
				}
				return fmt.Errorf("content differs from byte %d", off+int64(k))
			}
			off += int64(n)
		}
	}
	return nil
}

// compareLinks checks that the same paths share an inode in a and in b.
func (c *comparer) compareLinks() {
	c.t.Helper()
	groups := func(keys map[string]inode) map[inode][]string {
		g := make(map[inode][]string)
		for _, rel := range c.linked {
			g[keys[rel]] = append(g[keys[rel]], rel)
		}
		return g
	}
	ga, gb := groups(c.keysA), groups(c.keysB)
	seen := make(map[string]bool)
	for _, rel := range c.linked {
		la, lb := ga[c.keysA[rel]], gb[c.keysB[rel]]
		sa, sb := quoteAll(la), quoteAll(lb)
		if sa == sb || seen[sa+"\x00"+sb] {
			continue
		}
		seen[sa+"\x00"+sb] = true
		c.diff(rel, "hard links: one inode for %s in a, for %s in b", sa, sb)
	}
}

func quoteAll(paths []string) string {
	q := make([]string, len(paths))
	for i, p := range paths {
		q[i] = short(p)
	}
	slices.Sort(q)
	return "[" + strings.Join(q, " ") + "]"
}
