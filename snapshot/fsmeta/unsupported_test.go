package fsmeta

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/snapshot/testtree"
	"github.com/understudy/understudy/snapshot/tree"
)

// unwrapAll returns the leaves of a tree of joined errors, stopping at
// *Error.
func unwrapAll(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var all []error
		for _, e := range j.Unwrap() {
			all = append(all, unwrapAll(e)...)
		}
		return all
	}
	return []error{err}
}

// checkSkipped checks Apply's promise for refused attributes: an error
// wrapping ErrUnsupported, one *Error per refused attribute, each naming the
// entry and the attribute, and nothing else.
func checkSkipped(t *testing.T, err error, name string, attrs ...string) {
	t.Helper()
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Apply = %v, want an error wrapping ErrUnsupported", err)
	}
	leaves := unwrapAll(err)
	if len(leaves) != len(attrs) {
		t.Errorf("Apply returned %d errors, want %d (%s): %v", len(leaves), len(attrs), strings.Join(attrs, ", "), err)
	}
	for _, leaf := range leaves {
		var e *Error
		if !errors.As(leaf, &e) || e.Name != name || !errors.Is(leaf, ErrUnsupported) {
			t.Errorf("%v: not an *Error for %s wrapping ErrUnsupported", leaf, name)
		}
	}
	for _, attr := range attrs {
		if !strings.Contains(err.Error(), attr) {
			t.Errorf("Apply's error %q does not name %q", err, attr)
		}
	}
}

// TestApplyWithoutXattrsOrFlags works on ramfs, which has neither xattrs nor
// inode flags: ReadNode reads none, ClearFlags does nothing, and Apply sets
// owner, mode and mtime and reports each refused attribute as unsupported.
func TestApplyWithoutXattrsOrFlags(t *testing.T) {
	testtree.NeedRoot(t)
	root := mountFS(t, "ramfs")
	testtree.Build(t, root, testtree.Dir{
		"file": testtree.File{Content: []byte("x")},
		"dir":  testtree.Dir{},
		"fifo": testtree.FIFO{},
	})
	dirfd := openDir(t, root)

	if n := readNode(t, dirfd, "file", nil); n.Xattrs != nil || n.Flags != 0 {
		t.Errorf("ReadNode on ramfs: %s, want no xattrs and no flags", describe(&n))
	}
	if was, err := ClearFlags(dirfd, "file"); was != 0 || err != nil {
		t.Errorf("ClearFlags on ramfs = %#x, %v; want 0, nil", was, err)
	}

	for _, tc := range []struct {
		name  string
		node  tree.Node
		attrs []string
	}{
		{"file", tree.Node{Type: tree.File, Mode: 0o4750, UID: 1234, GID: 5678, MtimeSec: 7, MtimeNsec: 8,
			Flags:  FlagNoDump | FlagImmutable,
			Xattrs: []tree.Xattr{{Name: "trusted.a", Value: []byte("a")}, {Name: "user.b", Value: []byte("b")}}},
			[]string{"set xattr trusted.a", "set xattr user.b", "set flags 0x50"}},
		{"dir", tree.Node{Type: tree.Dir, Mode: 0o1777, UID: 1, MtimeSec: -1, Flags: FlagNoDump},
			[]string{"set flags 0x40"}},
		{"fifo", tree.Node{Type: tree.FIFO, Mode: 0o640, GID: 2, MtimeSec: 9,
			Xattrs: []tree.Xattr{{Name: "trusted.f", Value: nil}}},
			[]string{"set xattr trusted.f"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkSkipped(t, Apply(dirfd, tc.name, -1, &tc.node), tc.name, tc.attrs...)
			want := tc.node
			want.Flags, want.Xattrs = 0, nil
			if got := readNode(t, dirfd, tc.name, nil); !reflect.DeepEqual(got, want) {
				t.Errorf("after Apply:\n got %s\nwant %s", describe(&got), describe(&want))
			}
			// Nothing refused when nothing unsupported is asked for.
			if err := Apply(dirfd, tc.name, -1, &want); err != nil {
				t.Errorf("Apply without xattrs and flags = %v, want nil", err)
			}
		})
	}
}

// TestApplySomeFlagsUnsupported works on tmpfs, which keeps immutable,
// append-only, nodump and noatime but no other flag: asking for a flag it
// lacks must not lose the ones it has.
func TestApplySomeFlagsUnsupported(t *testing.T) {
	testtree.NeedRoot(t)
	root := mountFS(t, "tmpfs")
	if !flagsSupported(t, root, FlagNoDump|FlagImmutable) || flagsSupported(t, root, FlagSync) {
		t.Skip("tmpfs here does not keep nodump and immutable, or keeps sync: the premise of the test")
	}
	testtree.Build(t, root, testtree.Dir{"file": testtree.File{}, "dir": testtree.Dir{}})
	dirfd := openDir(t, root)
	for _, tc := range []struct {
		name      string
		typ       tree.Type
		flags     uint32
		kept      uint32
		refused   string
		unchanged bool
	}{
		{"file", tree.File, FlagImmutable | FlagNoDump | FlagSync, FlagImmutable | FlagNoDump, "set flags 0x8", false},
		{"dir", tree.Dir, FlagAppend | FlagDirSync | FlagTopDir, FlagAppend, "set flags 0x30000", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := tree.Node{Type: tc.typ, Mode: 0o700, MtimeSec: 1, Flags: tc.flags}
			checkSkipped(t, Apply(dirfd, tc.name, -1, &n), tc.name, tc.refused)
			if got := readNode(t, dirfd, tc.name, nil); got.Flags != tc.kept || got.Mode != 0o700 || got.MtimeSec != 1 {
				t.Errorf("after Apply: %s, want flags %#x", describe(&got), tc.kept)
			}
			// And back to none, clearing the lock flags.
			n.Flags = 0
			if err := Apply(dirfd, tc.name, -1, &n); err != nil {
				t.Fatal(err)
			}
			if got := readNode(t, dirfd, tc.name, nil); got.Flags != 0 {
				t.Errorf("flags %#x after applying none", got.Flags)
			}
		})
	}
}

// TestReadNodeIgnoresUnsettableFlags: ReadNode keeps only SettableFlags, so
// the extents and index flags of ext4 never reach a snapshot.
func TestReadNodeIgnoresUnsettableFlags(t *testing.T) {
	testtree.NeedRoot(t)
	root := t.TempDir()
	testtree.Build(t, root, testtree.Dir{"f": testtree.File{Content: []byte("x")}})
	dirfd := openDir(t, root)
	fd, err := openEntry(dirfd, "f", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	raw, ok, err := getFlags(fd)
	if err != nil {
		t.Fatal(err)
	}
	if !ok || raw&^SettableFlags == 0 {
		t.Skipf("the filesystem sets no storage flags (%#x) to ignore", raw)
	}
	if n := readNode(t, dirfd, "f", nil); n.Flags != raw&SettableFlags {
		t.Errorf("flags %#x, raw %#x: want only the settable ones", n.Flags, raw)
	}
}
