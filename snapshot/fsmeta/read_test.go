package fsmeta

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/snapshot/testtree"
	"github.com/understudy/understudy/snapshot/tree"
)

func TestTypeOf(t *testing.T) {
	for _, tc := range []struct {
		mode uint32
		want tree.Type
		ok   bool
	}{
		{unix.S_IFREG | 0o644, tree.File, true},
		{unix.S_IFDIR | 0o755, tree.Dir, true},
		{unix.S_IFLNK | 0o777, tree.Symlink, true},
		{unix.S_IFBLK, tree.BlockDev, true},
		{unix.S_IFCHR, tree.CharDev, true},
		{unix.S_IFIFO, tree.FIFO, true},
		{unix.S_IFSOCK | 0o4755, tree.Socket, true},
		{0, 0, false},
		{0o160000, 0, false}, // S_IFWHT and friends
	} {
		got, ok := TypeOf(tc.mode)
		if got != tc.want || ok != tc.ok {
			t.Errorf("TypeOf(%#o) = %v, %v; want %v, %v", tc.mode, got, ok, tc.want, tc.ok)
		}
	}
}

const (
	symlinkTarget = "../a target\nwith a newline and \xff"
	lockAndDump   = FlagImmutable | FlagAppend | FlagNoDump
)

// readTree is one entry of every type with every kind of metadata.
var readTree = testtree.Dir{
	"file": testtree.File{Content: []byte("hello\n"), Mode: 0o4755, UID: 1234, GID: 5678, Mtime: testtree.OddNanos,
		Xattrs: map[string][]byte{
			"user.b":              []byte("b"),
			"user.a":              {},
			"trusted.t":           {0, 0xff, '\n'},
			"security.capability": testtree.CapNetBindService,
		}},
	"dir": testtree.Directory{Mode: 0o1770, UID: 1234, GID: 5678, Mtime: testtree.Before70,
		Xattrs:  map[string][]byte{"system.posix_acl_access": testACL, "system.posix_acl_default": testACL},
		Entries: testtree.Dir{"inside": testtree.File{}}},
	"sgid-dir": testtree.Directory{Mode: 0o2755, GID: 5678},
	"symlink": testtree.Symlink{Target: symlinkTarget, UID: 1234, GID: 5678, Mtime: testtree.After2038,
		Xattrs: map[string][]byte{"trusted.s": []byte("on a symlink")}},
	"block":   testtree.Dev{Block: true, Major: 8, Minor: 1, Mode: 0o660, GID: 6},
	"char":    testtree.Dev{Major: 4095, Minor: 1048575, Mode: 0o620, Xattrs: map[string][]byte{"trusted.c": []byte("c")}},
	"fifo":    testtree.FIFO{Mode: 0o600, UID: 65534, GID: 65534, Xattrs: map[string][]byte{"trusted.f": {}}},
	"socket":  testtree.Socket{Mode: 0o755, UID: 1234},
	"flagged": testtree.File{Content: []byte("locked\n"), Mode: testtree.NoPerm, Flags: lockAndDump},
}

// wantNodes is what ReadNode must make of readTree; flags says whether the
// filesystem keeps inode flags.
func wantNodes(flags bool) map[string]tree.Node {
	dflt := testtree.DefaultMtime
	locked := uint32(0)
	if flags {
		locked = lockAndDump
	}
	return map[string]tree.Node{
		"file": {Type: tree.File, Mode: 0o4755, UID: 1234, GID: 5678, User: "alice", Group: "staff",
			MtimeSec: testtree.OddNanos.Unix(), MtimeNsec: uint32(testtree.OddNanos.Nanosecond()),
			Xattrs: []tree.Xattr{ // sorted by name, byte order
				{Name: "security.capability", Value: testtree.CapNetBindService},
				{Name: "trusted.t", Value: []byte{0, 0xff, '\n'}},
				{Name: "user.a", Value: []byte{}}, // empty, not nil
				{Name: "user.b", Value: []byte("b")},
			}},
		"dir": {Type: tree.Dir, Mode: 0o1770, UID: 1234, GID: 5678, User: "alice", Group: "staff",
			MtimeSec: testtree.Before70.Unix(), MtimeNsec: uint32(testtree.Before70.Nanosecond()),
			Xattrs: []tree.Xattr{
				{Name: "system.posix_acl_access", Value: testACL},
				{Name: "system.posix_acl_default", Value: testACL},
			}},
		"sgid-dir": {Type: tree.Dir, Mode: 0o2755, GID: 5678, User: "root", Group: "staff",
			MtimeSec: dflt.Unix(), MtimeNsec: uint32(dflt.Nanosecond())},
		"symlink": {Type: tree.Symlink, Mode: 0o777, UID: 1234, GID: 5678, User: "alice", Group: "staff",
			MtimeSec: testtree.After2038.Unix(), MtimeNsec: uint32(testtree.After2038.Nanosecond()),
			Target: symlinkTarget, Xattrs: []tree.Xattr{{Name: "trusted.s", Value: []byte("on a symlink")}}},
		"block": {Type: tree.BlockDev, Mode: 0o660, GID: 6, User: "root",
			MtimeSec: dflt.Unix(), MtimeNsec: uint32(dflt.Nanosecond()), Rdev: unix.Mkdev(8, 1)},
		"char": {Type: tree.CharDev, Mode: 0o620, User: "root", Group: "root",
			MtimeSec: dflt.Unix(), MtimeNsec: uint32(dflt.Nanosecond()), Rdev: unix.Mkdev(4095, 1048575),
			Xattrs: []tree.Xattr{{Name: "trusted.c", Value: []byte("c")}}},
		"fifo": {Type: tree.FIFO, Mode: 0o600, UID: 65534, GID: 65534,
			MtimeSec: dflt.Unix(), MtimeNsec: uint32(dflt.Nanosecond()),
			Xattrs: []tree.Xattr{{Name: "trusted.f", Value: []byte{}}}},
		"socket": {Type: tree.Socket, Mode: 0o755, UID: 1234, User: "alice", Group: "root",
			MtimeSec: dflt.Unix(), MtimeNsec: uint32(dflt.Nanosecond())},
		"flagged": {Type: tree.File, Mode: 0, User: "root", Group: "root",
			MtimeSec: dflt.Unix(), MtimeNsec: uint32(dflt.Nanosecond()), Flags: locked},
	}
}

func buildReadTree(t *testing.T) (root string, dirfd int, flags bool) {
	t.Helper()
	root = t.TempDir()
	flags = flagsSupported(t, t.TempDir(), lockAndDump)
	testtree.Build(t, root, readTree)
	return root, openDir(t, root), flags
}

func TestReadNode(t *testing.T) {
	testtree.NeedRoot(t)
	_, dirfd, flags := buildReadTree(t)
	owners := testOwners(t)
	for name, want := range wantNodes(flags) {
		t.Run(name, func(t *testing.T) {
			st, err := Lstat(dirfd, name)
			if err != nil {
				t.Fatal(err)
			}
			// Fields ReadNode sets are overwritten; the others are left.
			got := tree.Node{Name: name, LinkTo: "keep", Rdev: 99, Target: "junk", Flags: 0xffff,
				Xattrs: []tree.Xattr{{Name: "user.junk"}}}
			if err := ReadNode(dirfd, name, &st, -1, owners, &got); err != nil {
				t.Fatal(err)
			}
			want.Name, want.LinkTo = name, "keep"
			if !reflect.DeepEqual(got, want) {
				t.Errorf("ReadNode:\n got %s\nwant %s", describe(&got), describe(&want))
			}
		})
	}
}

// TestReadNodeDescriptor reads files and directories through descriptors
// the caller opened, with and without the directory.
func TestReadNodeDescriptor(t *testing.T) {
	testtree.NeedRoot(t)
	root, dirfd, flags := buildReadTree(t)
	owners := testOwners(t)
	want := wantNodes(flags)
	for _, tc := range []struct {
		name, how string
		flags     int
	}{
		{"file", "read-only", unix.O_RDONLY},
		{"file", "write-only", unix.O_WRONLY},
		{"flagged", "read-only", unix.O_RDONLY},
		{"dir", "read-only", unix.O_RDONLY | unix.O_DIRECTORY},
		{"sgid-dir", "read-only", unix.O_RDONLY | unix.O_DIRECTORY},
	} {
		t.Run(tc.name+" "+tc.how, func(t *testing.T) {
			fd, err := unix.Open(filepath.Join(root, tc.name), tc.flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil {
				t.Fatal(err)
			}
			for _, at := range []struct {
				dirfd int
				name  string
			}{{dirfd, tc.name}, {-1, ""}} {
				var got tree.Node
				if err := ReadNode(at.dirfd, at.name, &st, fd, owners, &got); err != nil {
					t.Fatalf("ReadNode(%d, %q, fd): %v", at.dirfd, at.name, err)
				}
				w := want[tc.name]
				if !reflect.DeepEqual(got, w) {
					t.Errorf("ReadNode(%d, %q, fd):\n got %s\nwant %s", at.dirfd, at.name, describe(&got), describe(&w))
				}
			}
		})
	}
}

// TestReadNodeNilOwners: without Owners the names stay empty.
func TestReadNodeNilOwners(t *testing.T) {
	testtree.NeedRoot(t)
	_, dirfd, _ := buildReadTree(t)
	n := readNode(t, dirfd, "file", nil)
	if n.User != "" || n.Group != "" || n.UID != 1234 || n.GID != 5678 {
		t.Errorf("owner %d:%d names %q:%q, want 1234:5678 without names", n.UID, n.GID, n.User, n.Group)
	}
}

// TestReadNodeChanged replaces an entry between the caller's lstat and
// ReadNode: ReadNode must notice, never follow a planted symlink and never
// open a FIFO (which would block).
func TestReadNodeChanged(t *testing.T) {
	testtree.NeedRoot(t)
	root := t.TempDir()
	testtree.Build(t, root, testtree.Dir{
		"victim":  testtree.File{Content: []byte("v")},
		"other":   testtree.File{Content: []byte("o")},
		"fifo":    testtree.FIFO{},
		"dir":     testtree.Dir{},
		"outside": testtree.File{Content: []byte("secret"), Xattrs: map[string][]byte{"user.secret": []byte("x")}},
	})
	dirfd := openDir(t, root)
	for _, tc := range []struct {
		name    string
		replace func(p string) error
	}{
		{"another file", func(p string) error { return os.Rename(filepath.Join(root, "other"), p) }},
		{"a symlink", func(p string) error { return os.Symlink("outside", p) }},
		{"a FIFO", func(p string) error { return os.Rename(filepath.Join(root, "fifo"), p) }},
		{"a directory", func(p string) error { return os.Rename(filepath.Join(root, "dir"), p) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(root, "victim"), []byte("v"), 0o644); err != nil && !errors.Is(err, unix.EISDIR) {
				t.Fatal(err)
			}
			st, err := Lstat(dirfd, "victim")
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(root, "victim")
			if err := os.RemoveAll(p); err != nil {
				t.Fatal(err)
			}
			if err := tc.replace(p); err != nil {
				t.Fatal(err)
			}
			var n tree.Node
			err = ReadNode(dirfd, "victim", &st, -1, nil, &n)
			if !errors.Is(err, ErrChanged) {
				t.Fatalf("ReadNode = %v, want ErrChanged", err)
			}
			var e *Error
			if !errors.As(err, &e) || e.Name != "victim" {
				t.Errorf("error %v does not name the entry", err)
			}
			if _, ok := n.Xattr("user.secret"); ok {
				t.Error("read the xattrs of the symlink's target")
			}
			os.RemoveAll(p)
		})
	}
}

func TestReadNodeMissing(t *testing.T) {
	testtree.NeedRoot(t)
	root := t.TempDir()
	testtree.Build(t, root, testtree.Dir{"gone": testtree.File{}})
	dirfd := openDir(t, root)
	st, err := Lstat(dirfd, "gone")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, "gone")); err != nil {
		t.Fatal(err)
	}
	var n tree.Node
	err = ReadNode(dirfd, "gone", &st, -1, nil, &n)
	if !errors.Is(err, unix.ENOENT) || !strings.Contains(err.Error(), "gone") {
		t.Fatalf("ReadNode of a removed file = %v, want ENOENT naming it", err)
	}
	if _, err := Lstat(dirfd, "gone"); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("Lstat = %v, want a bare ENOENT", err)
	}
	st.Mode = st.Mode&^unix.S_IFMT | 0o160000
	if err := ReadNode(dirfd, "gone", &st, -1, nil, &n); err == nil || !strings.Contains(err.Error(), "unknown file type") {
		t.Fatalf("ReadNode of an unknown type = %v", err)
	}
}

// TestReadNodeDeep reads entries far deeper than PATH_MAX, where the xattr
// calls that only take paths must go through the directory descriptor.
func TestReadNodeDeep(t *testing.T) {
	testtree.NeedRoot(t)
	root := t.TempDir()
	leaf := testtree.Dir{
		"file":    testtree.File{Content: []byte("deep"), Xattrs: map[string][]byte{"user.deep": []byte("file")}, Flags: FlagNoDump},
		"symlink": testtree.Symlink{Target: "file", Xattrs: map[string][]byte{"trusted.deep": []byte("symlink")}},
		"fifo":    testtree.FIFO{Xattrs: map[string][]byte{"trusted.deep": []byte("fifo")}},
	}
	var comps []string
	for i := range 25 {
		name := fmt.Sprintf("%02d-%s", i, strings.Repeat("D", 240))
		comps = append(comps, name)
	}
	d := leaf
	for _, c := range slices.Backward(comps) {
		d = testtree.Dir{c: d}
	}
	testtree.Build(t, root, d)
	fd := openDir(t, root)
	for _, c := range comps {
		next, err := unix.Openat(fd, c, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(next) })
		fd = next
	}
	flags := flagsSupported(t, t.TempDir(), FlagNoDump)
	for name, xattr := range map[string]string{"file": "user.deep", "symlink": "trusted.deep", "fifo": "trusted.deep"} {
		n := readNode(t, fd, name, nil)
		v, ok := n.Xattr(xattr)
		if !ok || !bytes.Equal(v, []byte(name)) {
			t.Errorf("%s: xattrs %v, want %s=%s", name, n.Xattrs, xattr, name)
		}
		if name == "file" && flags && n.Flags != FlagNoDump {
			t.Errorf("file: flags %#x, want nodump", n.Flags)
		}
		if name == "symlink" && n.Target != "file" {
			t.Errorf("symlink: target %q", n.Target)
		}
	}
}

// TestReadNodeBigXattrs reads more names and longer values than the first
// buffers hold, on tmpfs, which takes values of any size.
func TestReadNodeBigXattrs(t *testing.T) {
	testtree.NeedRoot(t)
	root := mountFS(t, "tmpfs")
	xattrs := map[string][]byte{"user.big": bytes.Repeat([]byte("v"), 60000)}
	for i := range 40 {
		xattrs[fmt.Sprintf("user.%02d-%s", i, strings.Repeat("n", 40))] = []byte{byte(i)}
	}
	testtree.Build(t, root, testtree.Dir{"f": testtree.File{Xattrs: xattrs}})
	n := readNode(t, openDir(t, root), "f", nil)
	if len(n.Xattrs) != len(xattrs) {
		t.Fatalf("%d xattrs, want %d", len(n.Xattrs), len(xattrs))
	}
	if !slices.IsSortedFunc(n.Xattrs, func(a, b tree.Xattr) int { return strings.Compare(a.Name, b.Name) }) {
		t.Error("xattrs not sorted")
	}
	for _, x := range n.Xattrs {
		if !bytes.Equal(x.Value, xattrs[x.Name]) {
			t.Errorf("%s: %d bytes, want %d", x.Name, len(x.Value), len(xattrs[x.Name]))
		}
	}
}
