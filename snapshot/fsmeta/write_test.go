package fsmeta

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/snapshot/testtree"
	"github.com/understudy/understudy/snapshot/tree"
)

// umask returns the process umask from /proc/self/status, which reads it
// without setting it.
func umask(t *testing.T) uint32 {
	t.Helper()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			if err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			return uint32(m)
		}
	}
	t.Fatal("no Umask in /proc/self/status")
	return 0
}

func TestMknod(t *testing.T) {
	testtree.NeedRoot(t)
	dirfd := openDir(t, t.TempDir())
	mask := umask(t)
	for _, n := range []tree.Node{
		{Name: "block", Type: tree.BlockDev, Mode: 0o660, Rdev: unix.Mkdev(8, 17)},
		{Name: "char", Type: tree.CharDev, Mode: 0o4666, Rdev: unix.Mkdev(4095, 1048575)},
		{Name: "fifo", Type: tree.FIFO, Mode: 0o1755},
		{Name: "socket", Type: tree.Socket, Mode: 0o777},
	} {
		if err := Mknod(dirfd, n.Name, &n); err != nil {
			t.Fatalf("Mknod %s: %v", n.Name, err)
		}
		got := readNode(t, dirfd, n.Name, nil)
		// Permission bits minus the umask: setuid, setgid and sticky wait
		// for Apply, after chown.
		if got.Type != n.Type || got.Rdev != n.Rdev || got.Mode != n.Mode&0o777&^mask {
			t.Errorf("Mknod %s: made %s", n.Name, describe(&got))
		}
		if err := Mknod(dirfd, n.Name, &n); !errors.Is(err, unix.EEXIST) || !strings.Contains(err.Error(), n.Name) {
			t.Errorf("Mknod over an existing %s = %v, want EEXIST naming it", n.Name, err)
		}
	}
	for _, typ := range []tree.Type{tree.File, tree.Dir, tree.Symlink, 0} {
		n := tree.Node{Type: typ, Mode: 0o644}
		if err := Mknod(dirfd, "x", &n); err == nil || !strings.Contains(err.Error(), "cannot make") {
			t.Errorf("Mknod of a %s = %v, want refused", typ, err)
		}
		if _, err := Lstat(dirfd, "x"); !errors.Is(err, unix.ENOENT) {
			t.Errorf("Mknod of a %s made something: %v", typ, err)
		}
	}
}

func TestSymlink(t *testing.T) {
	dirfd := openDir(t, t.TempDir())
	for name, target := range map[string]string{
		"plain":    "../etc/passwd",
		"bytes":    "\xff\xfe\n /with spaces/ ",
		"long":     strings.Repeat("x/", 2047) + "x", // 4095 bytes, the most Linux takes
		"dangling": "does/not/exist",
	} {
		if err := Symlink(dirfd, name, target); err != nil {
			t.Fatalf("Symlink %s: %v", name, err)
		}
		st, err := Lstat(dirfd, name)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := readlink(dirfd, name, st.Size); err != nil || got != target {
			t.Errorf("%s points at %q (%v), want %q", name, got, err, target)
		}
		// readlink copes with a target longer than lstat said.
		if got, err := readlink(dirfd, name, 0); err != nil || got != target {
			t.Errorf("%s with size 0: %q (%v)", name, got, err)
		}
	}
	if err := Symlink(dirfd, "plain", "x"); !errors.Is(err, unix.EEXIST) {
		t.Errorf("Symlink over an existing name = %v, want EEXIST", err)
	}
}

// copyTree recreates the tree under srcfd in dstfd with fsmeta alone, as a
// restore does: create, write the data ranges, Apply; hard links by linkat;
// a directory's Apply after its entries. It returns how many nodes were
// checked.
type copier struct {
	t      *testing.T
	owners *Owners
	links  map[[2]uint64]linkSrc
	nodes  int
}

type linkSrc struct {
	dirfd int
	name  string
}

func (c *copier) dir(srcfd, dstfd int) {
	t := c.t
	t.Helper()
	f := os.NewFile(uintptr(mustDup(t, srcfd)), "src")
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		c.entry(srcfd, dstfd, name)
	}
}

func mustDup(t *testing.T, fd int) int {
	t.Helper()
	d, err := unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (c *copier) entry(srcfd, dstfd int, name string) {
	t := c.t
	t.Helper()
	st, err := Lstat(srcfd, name)
	if err != nil {
		t.Fatal(err)
	}
	var n tree.Node
	if err := ReadNode(srcfd, name, &st, -1, c.owners, &n); err != nil {
		t.Fatal(err)
	}
	key := [2]uint64{st.Dev, st.Ino}
	if l, ok := c.links[key]; ok && n.Type != tree.Dir {
		if err := unix.Linkat(l.dirfd, l.name, dstfd, name, 0); err != nil {
			t.Fatal(err)
		}
		return
	}
	if st.Nlink > 1 && n.Type != tree.Dir {
		c.links[key] = linkSrc{mustDup(t, dstfd), name}
		t.Cleanup(func() { unix.Close(c.links[key].dirfd) })
	}
	fd := -1
	switch n.Type {
	case tree.File:
		fd = c.file(srcfd, dstfd, name, &st)
		defer unix.Close(fd)
	case tree.Dir:
		if err := unix.Mkdirat(dstfd, name, 0o700); err != nil {
			t.Fatal(err)
		}
		sfd, err := unix.Openat(srcfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(sfd)
		fd, err = unix.Openat(dstfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		c.dir(sfd, fd)
	case tree.Symlink:
		if err := Symlink(dstfd, name, n.Target); err != nil {
			t.Fatal(err)
		}
	default:
		if err := Mknod(dstfd, name, &n); err != nil {
			t.Fatal(err)
		}
	}
	if err := Apply(dstfd, name, fd, &n); err != nil {
		t.Fatalf("Apply %s: %v", describe(&n), err)
	}
	got := readNode(t, dstfd, name, c.owners)
	if !reflect.DeepEqual(got, n) {
		t.Errorf("%q after Apply:\n got %s\nwant %s", name, describe(&got), describe(&n))
	}
	c.nodes++
}

// file creates name in dstfd with the content of name in srcfd, holes
// included, and returns it open for writing.
func (c *copier) file(srcfd, dstfd int, name string, st *unix.Stat_t) int {
	t := c.t
	t.Helper()
	sfd, err := unix.Openat(srcfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	src := os.NewFile(uintptr(sfd), name)
	defer src.Close()
	fd, err := unix.Openat(dstfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	ranges, err := DataRanges(src, st)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for _, r := range ranges {
		for off := r.Offset; off < r.End(); {
			n, err := src.ReadAt(buf[:min(int64(len(buf)), r.End()-off)], off)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := unix.Pwrite(fd, buf[:n], off); err != nil {
				t.Fatal(err)
			}
			off += int64(n)
		}
	}
	if err := unix.Ftruncate(fd, st.Size); err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestApplyRecreatesEvery copies testtree.Every with fsmeta alone: each
// entry read back must be the node applied, and testtree.Compare, which
// does not use fsmeta, must find the copy equal.
func TestApplyRecreatesEvery(t *testing.T) {
	testtree.NeedRoot(t)
	src, dst := t.TempDir(), t.TempDir()
	testtree.Every(t, src)
	t.Cleanup(func() { testtree.ClearFlags(t, dst) })
	c := &copier{t: t, owners: NewOwners(), links: make(map[[2]uint64]linkSrc)}
	srcfd, dstfd := openDir(t, src), openDir(t, dst)
	c.dir(srcfd, dstfd)
	// The roots, through their parents.
	rootNode := readNode(t, openDir(t, filepath.Dir(src)), filepath.Base(src), nil)
	if err := Apply(openDir(t, filepath.Dir(dst)), filepath.Base(dst), dstfd, &rootNode); err != nil {
		t.Fatal(err)
	}
	if c.nodes < 50 {
		t.Fatalf("only %d nodes copied", c.nodes)
	}
	testtree.Compare(t, src, dst)
}

// lockedFile builds a file with immutable and append-only set and metadata
// other than want's, to apply want onto.
func lockedFile(t *testing.T) (dirfd int, name string) {
	t.Helper()
	root := t.TempDir()
	testtree.Build(t, root, testtree.Dir{"f": testtree.File{Content: []byte("old"), Mode: 0o600, UID: 42, GID: 43,
		Xattrs: map[string][]byte{"user.old": []byte("old"), "trusted.old": nil},
		Flags:  FlagImmutable | FlagAppend}})
	return openDir(t, root), "f"
}

// TestApplyOverLockedEntries applies nodes onto entries that carry
// immutable and append-only flags: they are cleared first, every attribute
// is set, times after, and the recorded flags last.
func TestApplyOverLockedEntries(t *testing.T) {
	testtree.NeedRoot(t)
	if !flagsSupported(t, t.TempDir(), lockAndDump) {
		t.Skip("the filesystem of the temporary directory has no immutable, append-only and nodump flags")
	}
	mtime := time.Unix(1234567890, 123456789)
	for _, tc := range []struct {
		name  string
		flags uint32
		useFD bool
	}{
		{"to immutable and nodump", FlagImmutable | FlagNoDump, false},
		{"to append-only", FlagAppend, false},
		{"to no flags", 0, false},
		{"to immutable through a descriptor", FlagImmutable, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dirfd, name := lockedFile(t)
			want := tree.Node{Type: tree.File, Mode: 0o4750, UID: 1234, GID: 5678,
				MtimeSec: mtime.Unix(), MtimeNsec: uint32(mtime.Nanosecond()), Flags: tc.flags,
				Xattrs: []tree.Xattr{{Name: "security.capability", Value: testtree.CapNetBindService}, {Name: "user.new", Value: []byte{}}}}
			fd := -1
			if tc.useFD {
				var err error
				fd, err = unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Close(fd)
			}
			if err := Apply(dirfd, name, fd, &want); err != nil {
				t.Fatal(err)
			}
			got := readNode(t, dirfd, name, nil)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("after Apply:\n got %s\nwant %s", describe(&got), describe(&want))
			}
			// Apply again onto what it made, now locked its own way.
			want.Mode, want.MtimeNsec = 0o640, 1
			if err := Apply(dirfd, name, -1, &want); err != nil {
				t.Fatal(err)
			}
			if got := readNode(t, dirfd, name, nil); !reflect.DeepEqual(got, want) {
				t.Errorf("after a second Apply:\n got %s\nwant %s", describe(&got), describe(&want))
			}
			if tc.flags&lockFlags == 0 {
				if err := unix.Unlinkat(dirfd, name, 0); err != nil {
					t.Errorf("the file is still locked: %v", err)
				}
			}
		})
	}
}

// TestApplyLockedDirectory applies onto an immutable directory, whose
// entries cannot change, and makes it immutable again.
func TestApplyLockedDirectory(t *testing.T) {
	testtree.NeedRoot(t)
	if !flagsSupported(t, t.TempDir(), lockAndDump) {
		t.Skip("the filesystem of the temporary directory has no immutable flag")
	}
	root := t.TempDir()
	testtree.Build(t, root, testtree.Dir{"d": testtree.Directory{Flags: FlagImmutable, Entries: testtree.Dir{"f": testtree.File{}}}})
	dirfd := openDir(t, root)
	want := tree.Node{Type: tree.Dir, Mode: 0o2775, GID: 5678, MtimeSec: 5, Flags: FlagImmutable | FlagNoDump,
		Xattrs: []tree.Xattr{{Name: "system.posix_acl_default", Value: testACL}}}
	if err := Apply(dirfd, "d", -1, &want); err != nil {
		t.Fatal(err)
	}
	if got := readNode(t, dirfd, "d", nil); !reflect.DeepEqual(got, want) {
		t.Errorf("after Apply:\n got %s\nwant %s", describe(&got), describe(&want))
	}
	if err := os.Remove(filepath.Join(root, "d", "f")); !errors.Is(err, unix.EPERM) {
		t.Errorf("removing from the directory Apply made immutable: %v, want EPERM", err)
	}
}

// TestApplyOtherTypes applies onto a symlink (no mode), devices, a FIFO and
// a socket, through the path-only calls.
func TestApplyOtherTypes(t *testing.T) {
	testtree.NeedRoot(t)
	root := t.TempDir()
	testtree.Build(t, root, testtree.Dir{
		"symlink": testtree.Symlink{Target: "t", Xattrs: map[string][]byte{"trusted.old": []byte("x")}},
		"block":   testtree.Dev{Block: true, Major: 8, Minor: 1},
		"char":    testtree.Dev{Major: 1, Minor: 3},
		"fifo":    testtree.FIFO{},
		"socket":  testtree.Socket{},
	})
	dirfd := openDir(t, root)
	for _, want := range []tree.Node{
		{Type: tree.Symlink, Mode: 0o777, UID: 1234, GID: 5678, MtimeSec: -5, MtimeNsec: 999999999, Target: "t",
			Xattrs: []tree.Xattr{{Name: "trusted.new", Value: []byte("y")}}},
		{Type: tree.BlockDev, Mode: 0o2660, GID: 6, MtimeSec: 1, Rdev: unix.Mkdev(8, 1)},
		{Type: tree.CharDev, Mode: 0o600, UID: 65534, MtimeSec: 2, Rdev: unix.Mkdev(1, 3),
			Xattrs: []tree.Xattr{{Name: "trusted.c", Value: []byte{0}}}},
		{Type: tree.FIFO, Mode: 0o4711, UID: 1, GID: 2, MtimeSec: 3},
		{Type: tree.Socket, Mode: 0o1777, MtimeSec: 4},
	} {
		name := map[tree.Type]string{tree.Symlink: "symlink", tree.BlockDev: "block", tree.CharDev: "char",
			tree.FIFO: "fifo", tree.Socket: "socket"}[want.Type]
		if err := Apply(dirfd, name, -1, &want); err != nil {
			t.Fatalf("Apply %s: %v", name, err)
		}
		if got := readNode(t, dirfd, name, nil); !reflect.DeepEqual(got, want) {
			t.Errorf("%s after Apply:\n got %s\nwant %s", name, describe(&got), describe(&want))
		}
	}
}

// TestApplyWrongType: Apply never works on an entry of another type, such as
// a symlink planted where a file was expected.
func TestApplyWrongType(t *testing.T) {
	testtree.NeedRoot(t)
	root := t.TempDir()
	testtree.Build(t, root, testtree.Dir{
		"target":  testtree.File{Mode: 0o600},
		"planted": testtree.Symlink{Target: "target"},
		"fifo":    testtree.FIFO{},
	})
	dirfd := openDir(t, root)
	file := tree.Node{Type: tree.File, Mode: 0o4777, UID: 1234}
	for _, name := range []string{"planted", "fifo"} {
		err := Apply(dirfd, name, -1, &file)
		var e *Error
		if !errors.Is(err, ErrChanged) || !errors.As(err, &e) || e.Name != name {
			t.Errorf("Apply of a file node onto %s = %v, want ErrChanged naming it", name, err)
		}
	}
	if got := readNode(t, dirfd, "target", nil); got.Mode != 0o600 || got.UID != 0 {
		t.Errorf("the symlink's target was changed: %s", describe(&got))
	}
	if err := Apply(dirfd, "missing", -1, &file); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Apply onto a missing entry = %v, want ENOENT", err)
	}
}

func TestClearFlags(t *testing.T) {
	testtree.NeedRoot(t)
	root := t.TempDir()
	flags := flagsSupported(t, t.TempDir(), lockAndDump)
	testtree.Build(t, root, testtree.Dir{
		"file": testtree.File{Flags: lockAndDump},
		"dir":  testtree.Directory{Flags: FlagImmutable, Entries: testtree.Dir{"x": testtree.File{}}},
		"link": testtree.Symlink{Target: "file"},
		"fifo": testtree.FIFO{},
	})
	dirfd := openDir(t, root)
	for _, tc := range []struct {
		name       string
		was, after uint32
	}{
		{"file", lockAndDump, FlagNoDump},
		{"dir", FlagImmutable, 0},
		{"link", 0, 0}, // not followed: file keeps its flags
		{"fifo", 0, 0},
	} {
		if !flags {
			tc.was, tc.after = 0, 0
		}
		was, err := ClearFlags(dirfd, tc.name)
		if err != nil {
			t.Fatalf("ClearFlags %s: %v", tc.name, err)
		}
		if was&SettableFlags != tc.was {
			t.Errorf("ClearFlags %s returned %#x, want %#x", tc.name, was&SettableFlags, tc.was)
		}
		if n := readNode(t, dirfd, tc.name, nil); n.Flags != tc.after {
			t.Errorf("%s: flags %#x after ClearFlags, want %#x", tc.name, n.Flags, tc.after)
		}
	}
	if !flags {
		t.Log("the filesystem has no inode flags: only checked that nothing fails")
	}
	if err := os.RemoveAll(filepath.Join(root, "dir")); err != nil {
		t.Errorf("after ClearFlags: %v", err)
	}
	if _, err := ClearFlags(dirfd, "missing"); !errors.Is(err, unix.ENOENT) {
		t.Errorf("ClearFlags of a missing entry = %v, want ENOENT", err)
	}
}

func TestErrorMessage(t *testing.T) {
	inner := unix.EPERM
	for name, want := range map[string]string{
		"plain":       "set mode of plain: operation not permitted",
		"with space":  `set mode of "with space": operation not permitted`,
		"new\nline":   `set mode of "new\nline": operation not permitted`,
		"bad-\xff":    `set mode of "bad-\xff": operation not permitted`,
		"":            `set mode of "": operation not permitted`,
		"ünïcode-ok":  "set mode of ünïcode-ok: operation not permitted",
		`quote"mark`:  `set mode of "quote\"mark": operation not permitted`,
		"tab\tinside": `set mode of "tab\tinside": operation not permitted`,
	} {
		err := newError(name, "set mode", inner)
		if got := err.Error(); got != want {
			t.Errorf("%q: %s, want %s", name, got, want)
		}
		if !errors.Is(err, unix.EPERM) {
			t.Errorf("%q: does not unwrap", name)
		}
	}
	u := unsupported("f", "set xattr user.a", unix.EOPNOTSUPP)
	if !errors.Is(u, ErrUnsupported) || !errors.Is(u, unix.EOPNOTSUPP) {
		t.Errorf("unsupported(...) = %v, want ErrUnsupported and EOPNOTSUPP", u)
	}
}

// TestApplyThroughTheDescriptor: given a descriptor, Apply sets owner and
// times on that inode even when the name now holds another file, as it
// would after an attacker replaced it with a hard link to a file elsewhere
// on the filesystem between the open and the metadata.
func TestApplyThroughTheDescriptor(t *testing.T) {
	testtree.NeedRoot(t)
	root := t.TempDir()
	testtree.Build(t, root, testtree.Dir{
		"written": testtree.File{Mode: 0o600},
		"victim":  testtree.File{Mode: 0o640, Content: []byte("root:x:0:0::/root:/bin/sh\n")},
	})
	dirfd := openDir(t, root)
	fd, err := unix.Openat(dirfd, "written", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	victimBefore := readNode(t, dirfd, "victim", nil)
	// The swap: "written" becomes a second name of victim.
	if err := unix.Unlinkat(dirfd, "written", 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Linkat(dirfd, "victim", dirfd, "written", 0); err != nil {
		t.Fatal(err)
	}
	want := tree.Node{Type: tree.File, Mode: 0o4755, UID: 1234, GID: 5678, MtimeSec: 1e9, MtimeNsec: 5,
		Xattrs: []tree.Xattr{{Name: "trusted.mark", Value: []byte("x")}}}
	if err := Apply(dirfd, "written", fd, &want); err != nil {
		t.Fatal(err)
	}
	if got := readNode(t, dirfd, "victim", nil); !reflect.DeepEqual(got, victimBefore) {
		t.Errorf("the file behind the swapped name was changed:\n got %s\nwas %s", describe(&got), describe(&victimBefore))
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 1234 || st.Gid != 5678 || st.Mode&0o7777 != 0o4755 || st.Mtim != (unix.Timespec{Sec: 1e9, Nsec: 5}) {
		t.Errorf("the descriptor's inode: uid %d gid %d mode %o mtime %v; want 1234 5678 4755 1e9.000000005", st.Uid, st.Gid, st.Mode&0o7777, st.Mtim)
	}
}
