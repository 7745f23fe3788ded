package testtree

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// expect is what one entry of a built tree must be.
type expect struct {
	path   string
	typ    uint32 // S_IF*
	mode   uint32 // 07777
	uid    uint32
	gid    uint32
	mtime  time.Time // zero: DefaultMtime
	xattrs map[string][]byte
	flags  uint32 // of FlagImmutable, FlagAppend, FlagNoDump
	size   int64  // regular files
	rdev   uint64
	target string
	nlink  uint64 // non-directories; 0 means 1
}

// checkEntry checks the entry e.path under root against e. Two builds of the
// same description compare equal even when Build drops an attribute on both,
// so this checks what Build made against what was asked for.
func checkEntry(t *testing.T, root string, e expect, flags bool) {
	t.Helper()
	dirfd, name := openParent(t, root, e.path)
	st, err := lstat(dirfd, name)
	if err != nil {
		t.Errorf("%s: %v", e.path, err)
		return
	}
	if st.Mode&unix.S_IFMT != e.typ {
		t.Errorf("%s: %s, want %s", e.path, typeName(st.Mode), typeName(e.typ))
		return
	}
	if e.typ != unix.S_IFLNK && st.Mode&0o7777 != e.mode {
		t.Errorf("%s: mode %#o, want %#o", e.path, st.Mode&0o7777, e.mode)
	}
	if st.Uid != e.uid || st.Gid != e.gid {
		t.Errorf("%s: owner %d:%d, want %d:%d", e.path, st.Uid, st.Gid, e.uid, e.gid)
	}
	mtime := e.mtime
	if mtime.IsZero() {
		mtime = DefaultMtime
	}
	if got := time.Unix(st.Mtim.Sec, st.Mtim.Nsec); !got.Equal(mtime) {
		t.Errorf("%s: mtime %v, want %v", e.path, got, mtime)
	}
	x, err := xattrs(dirfd, name)
	if err != nil {
		t.Errorf("%s: %v", e.path, err)
	}
	if len(x) != len(e.xattrs) {
		t.Errorf("%s: xattrs %q, want %q", e.path, x, e.xattrs)
	}
	for k, v := range e.xattrs {
		if !bytes.Equal(x[k], v) {
			t.Errorf("%s: xattr %s is %q, want %q", e.path, k, x[k], v)
		}
	}
	switch e.typ {
	case unix.S_IFREG:
		if st.Size != e.size {
			t.Errorf("%s: size %d, want %d", e.path, st.Size, e.size)
		}
	case unix.S_IFLNK:
		if target, err := readlink(dirfd, name); err != nil || target != e.target {
			t.Errorf("%s: target %q (%v), want %q", e.path, target, err, e.target)
		}
	case unix.S_IFBLK, unix.S_IFCHR:
		if st.Rdev != e.rdev {
			t.Errorf("%s: device %#x, want %#x", e.path, st.Rdev, e.rdev)
		}
	}
	if nlink := max(e.nlink, 1); e.typ != unix.S_IFDIR && st.Nlink != nlink {
		t.Errorf("%s: %d links, want %d", e.path, st.Nlink, nlink)
	}
	if flags && (e.typ == unix.S_IFREG || e.typ == unix.S_IFDIR) {
		f, err := openRead(dirfd, name)
		if err != nil {
			t.Errorf("%s: %v", e.path, err)
			return
		}
		defer f.Close()
		got, err := getFlags(int(f.Fd()))
		if err != nil {
			t.Errorf("%s: flags: %v", e.path, err)
		}
		if got &= FlagImmutable | FlagAppend | FlagNoDump; got != e.flags {
			t.Errorf("%s: flags %#x, want %#x", e.path, got, e.flags)
		}
	}
}

// TestEveryHasEveryCase checks that Every made what its documentation lists.
func TestEveryHasEveryCase(t *testing.T) {
	NeedRoot(t)
	root := t.TempDir()
	if err := os.Chmod(root, 0o700); err != nil { // Build leaves the root's mode alone
		t.Fatal(err)
	}
	Every(t, root)
	flags := flagsSupported(t, t.TempDir())
	script := []byte("#!/bin/sh\necho understudy\n")
	const (
		reg, dir, lnk = unix.S_IFREG, unix.S_IFDIR, unix.S_IFLNK
	)
	for _, e := range []expect{
		{path: ".", typ: dir, mode: 0o700},
		{path: "files", typ: dir, mode: 0o755, mtime: OddNanos, xattrs: map[string][]byte{"user.dir": []byte("on a directory")}},
		{path: "files/empty", typ: reg, mode: 0o644},
		{path: "files/small", typ: reg, mode: 0o644, mtime: OddNanos, size: 18},
		{path: "files/random-3m", typ: reg, mode: 0o644, size: 3 << 20},
		{path: "files/setuid", typ: reg, mode: 0o4755, uid: 1234, gid: 5678, size: int64(len(script))},
		{path: "files/setgid", typ: reg, mode: 0o2755, gid: 5678, size: int64(len(script))},
		{path: "files/no-perm", typ: reg, mode: 0, size: 7},
		{path: "files/private", typ: reg, mode: 0o600, uid: 65534, gid: 65534, size: 5},
		{path: EveryCaps, typ: reg, mode: 0o755, uid: 1234, gid: 5678, size: int64(len(script)),
			xattrs: map[string][]byte{"security.capability": CapNetBindService}},
		{path: "files/before-1970", typ: reg, mode: 0o644, mtime: Before70, size: 4},
		{path: "files/after-2038", typ: reg, mode: 0o644, mtime: After2038, size: 4},
		{path: "files/bad-\xff\xfe", typ: reg, mode: 0o644, size: 10},
		{path: "files/new\nline", typ: reg, mode: 0o644, size: 8},
		{path: "files/-dash and spaces ", typ: reg, mode: 0o644, size: 5},
		{path: "files/xattrs", typ: reg, mode: 0o644, size: 2, xattrs: map[string][]byte{
			"user.text": []byte("hello"), "user.binary": {0, 1, 0xff, 0xfe, 0, '\n'},
			"user.empty": {}, "trusted.secret": []byte("trusted value"),
			"security.selinux": []byte("system_u:object_r:etc_t:s0\x00")}},
		{path: "tree/a", typ: dir, mode: 0o755, uid: 1234, gid: 5678},
		{path: "tree/a/b/c/leaf", typ: reg, mode: 0o644, mtime: OddNanos, size: 5},
		{path: "links", typ: dir, mode: 0o755, mtime: Before70},
		{path: "links/relative", typ: lnk, target: "../files/small"},
		{path: "links/absolute", typ: lnk, target: "/etc/passwd", uid: 1234, gid: 5678, mtime: OddNanos,
			xattrs: map[string][]byte{"trusted.link": []byte("on a symlink")}},
		{path: "links/dangling", typ: lnk, target: "does/not/exist", mtime: After2038},
		{path: "links/to-dir", typ: lnk, target: "../tree/a", uid: 65534, gid: 65534},
		{path: "hard/one", typ: reg, mode: 0o640, uid: 1234, gid: 5678, mtime: OddNanos, size: 12, nlink: 3},
		{path: "hard/two", typ: reg, mode: 0o640, uid: 1234, gid: 5678, mtime: OddNanos, size: 12, nlink: 3},
		{path: "hard2/three", typ: reg, mode: 0o640, uid: 1234, gid: 5678, mtime: OddNanos, size: 12, nlink: 3},
		{path: "special", typ: dir, mode: 0o755, mtime: OddNanos},
		{path: "special/block", typ: unix.S_IFBLK, mode: 0o660, gid: 6, rdev: unix.Mkdev(8, 1)},
		{path: "special/char", typ: unix.S_IFCHR, mode: 0o666, mtime: Before70, rdev: unix.Mkdev(1, 3),
			xattrs: map[string][]byte{"trusted.dev": []byte("on a device")}},
		{path: "special/fifo", typ: unix.S_IFIFO, mode: 0o600, uid: 1234, gid: 5678, mtime: OddNanos, nlink: 2,
			xattrs: map[string][]byte{"trusted.fifo": {}}},
		{path: "special/socket", typ: unix.S_IFSOCK, mode: 0o755, uid: 65534, mtime: After2038},
		{path: "modes/sticky", typ: dir, mode: 0o1777},
		{path: "modes/setgid-dir", typ: dir, mode: 0o2755, gid: 5678},
		{path: "modes/setgid-dir/inside", typ: reg, mode: 0o644},
		{path: "modes/nobody", typ: dir, mode: 0o700, uid: 65534, gid: 65534},
		{path: "modes/root-only", typ: dir, mode: 0},
		{path: "flags/immutable", typ: reg, mode: 0o644, size: 14, flags: FlagImmutable},
		{path: "flags/append-only", typ: reg, mode: 0o644, size: 14, flags: FlagAppend},
		{path: "flags/nodump", typ: reg, mode: 0o644, size: 11, flags: FlagNoDump},
		{path: "flags/nodump-dir", typ: dir, mode: 0o755, flags: FlagNoDump},
		{path: EveryHuge, typ: reg, mode: 0o644, size: EveryHugeSize},
		{path: EveryTrailingHole, typ: reg, mode: 0o644, size: 16 << 20},
		{path: longPath, typ: reg, mode: 0o644, uid: 1234, mtime: OddNanos, size: 9},
		{path: filepath.Dir(longPath) + "/symlink", typ: lnk, target: "file", mtime: Before70},
	} {
		checkEntry(t, root, e, flags)
	}

	if len(longPath) <= unix.PathMax {
		t.Errorf("the long chain is %d bytes, not beyond PATH_MAX", len(longPath))
	}
	// The hard links share one inode, and so do the FIFO's two names.
	for _, group := range [][]string{{"hard/one", "hard/two", "hard2/three"}, {"special/fifo", "special/fifo-link"}} {
		var first unix.Stat_t
		for i, p := range group {
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(root, p), &st); err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				first = st
			} else if st.Ino != first.Ino {
				t.Errorf("%s and %s are different inodes", group[0], p)
			}
		}
	}
	// The sparse files have their holes.
	for p, maxAlloc := range map[string]int64{EveryHuge: 16 << 20, EveryTrailingHole: 4 << 20} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, p), &st); err != nil {
			t.Fatal(err)
		}
		if st.Blocks*512 > maxAlloc {
			t.Errorf("%s: %d bytes allocated, want holes (at most %d)", p, st.Blocks*512, maxAlloc)
		}
	}
	// The ACLs, when the filesystem keeps them.
	acl := filepath.Join(root, EveryACLDir)
	var st unix.Stat_t
	if err := unix.Lstat(acl, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o770 || st.Uid != 1234 || st.Gid != 5678 {
		t.Errorf("%s: mode %#o owner %d:%d, want 0770 (group bits from the ACL mask rwx) 1234:5678", EveryACLDir, st.Mode&0o7777, st.Uid, st.Gid)
	}
	for _, key := range []string{"system.posix_acl_access", "system.posix_acl_default"} {
		v, ok := getXattr(t, root, EveryACLDir, key)
		if !ok {
			t.Logf("%s: no %s: the filesystem keeps no ACLs", EveryACLDir, key)
			continue
		}
		if !bytes.Equal(v, EveryACL()) {
			t.Errorf("%s: %s is %x, want %x", EveryACLDir, key, v, EveryACL())
		}
	}
}

// TestBuildLockedTreeIsRemovable builds immutable and append-only entries,
// files and directories, one with a hard link: the cleanup Build registers
// must let t.TempDir remove them (the test fails otherwise).
func TestBuildLockedTreeIsRemovable(t *testing.T) {
	NeedRoot(t)
	if !flagsSupported(t, t.TempDir()) {
		t.Skip("the filesystem of the temporary directory has no inode flags")
	}
	root := t.TempDir()
	Build(t, root, Dir{
		"locked": Directory{Flags: FlagImmutable, Entries: Dir{
			"file":   File{Content: []byte("x"), Flags: FlagImmutable},
			"append": File{Content: []byte("y"), Flags: FlagAppend},
			"inner":  Directory{Flags: FlagAppend, Entries: Dir{"z": File{}}},
		}},
		"link": Hardlink{To: "locked/file"},
	})
	checkEntry(t, root, expect{path: "locked", typ: unix.S_IFDIR, mode: 0o755, flags: FlagImmutable}, true)
	checkEntry(t, root, expect{path: "locked/file", typ: unix.S_IFREG, mode: 0o644, size: 1, nlink: 2, flags: FlagImmutable}, true)
	checkEntry(t, root, expect{path: "locked/inner", typ: unix.S_IFDIR, mode: 0o755, flags: FlagAppend}, true)
	if err := os.Remove(filepath.Join(root, "locked/file")); !errors.Is(err, unix.EPERM) {
		t.Fatalf("removing an immutable file: %v, want EPERM", err)
	}
}

// TestClearFlags checks that ClearFlags removes immutable and append-only,
// and only those, everywhere below root.
func TestClearFlags(t *testing.T) {
	NeedRoot(t)
	if !flagsSupported(t, t.TempDir()) {
		t.Skip("the filesystem of the temporary directory has no inode flags")
	}
	root := t.TempDir()
	Build(t, root, Dir{
		"d": Directory{Flags: FlagImmutable | FlagNoDump, Entries: Dir{
			"f":    File{Flags: FlagAppend | FlagNoDump},
			"fifo": FIFO{},
			"l":    Symlink{Target: "f"},
		}},
		"g": File{Flags: FlagImmutable},
	})
	if err := os.Chmod(root, 0o700); err != nil {
		t.Fatal(err)
	}
	ClearFlags(t, root)
	checkEntry(t, root, expect{path: "d", typ: unix.S_IFDIR, mode: 0o755, flags: FlagNoDump}, true)
	checkEntry(t, root, expect{path: "d/f", typ: unix.S_IFREG, mode: 0o644, flags: FlagNoDump}, true)
	checkEntry(t, root, expect{path: "g", typ: unix.S_IFREG, mode: 0o644}, true)
	if err := os.RemoveAll(filepath.Join(root, "d")); err != nil {
		t.Fatalf("after ClearFlags: %v", err)
	}
	// A missing root is not an error.
	r := record(t, func(tb testing.TB) { ClearFlags(tb, filepath.Join(root, "missing")) })
	if r.Failed() {
		t.Errorf("ClearFlags of a missing root failed:%s", r.report())
	}
}

// TestBuildNames checks names with every byte but '/' and NUL.
func TestBuildNames(t *testing.T) {
	NeedRoot(t)
	root := t.TempDir()
	var name strings.Builder
	for c := 1; c < 256; c++ {
		if c != '/' && c != '.' {
			name.WriteByte(byte(c))
		}
	}
	Build(t, root, Dir{name.String(): Dir{"..x": File{}, "-": Symlink{Target: "\xff"}}})
	checkEntry(t, root, expect{path: name.String() + "/..x", typ: unix.S_IFREG, mode: 0o644}, false)
	checkEntry(t, root, expect{path: name.String() + "/-", typ: unix.S_IFLNK, target: "\xff"}, false)
}
