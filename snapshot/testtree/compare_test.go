package testtree

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// needRsync skips tests that check what Compare's rsync run reports.
func needRsync(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("rsync"); err != nil {
		t.Skip("rsync not installed: apt-get install rsync")
	}
}

// flagsSupported reports whether the filesystem of dir keeps inode flags.
func flagsSupported(t *testing.T, dir string) bool {
	t.Helper()
	f, err := os.CreateTemp(dir, "flags-probe-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	cur, err := getFlags(int(f.Fd()))
	if err == nil {
		err = setFlags(int(f.Fd()), cur|FlagNoDump)
	}
	if err != nil && noFlags(err) {
		return false
	}
	if err != nil {
		t.Fatalf("probe inode flags in %s: %v", dir, err)
	}
	return true
}

// longPath is the path of the file at the bottom of the chain Every builds
// at EveryLong.
var longPath = func() string {
	p := EveryLong
	for i := range EveryLongDepth {
		p += "/" + fmt.Sprintf("%02d-%s", i, strings.Repeat("L", 197))
	}
	return p + "/file"
}()

// openParent opens the directory holding rel under root one component at a
// time (rel may be longer than PATH_MAX) and returns it with the last
// component.
func openParent(t *testing.T, root, rel string) (int, string) {
	t.Helper()
	rootfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rootfd)
	comps := strings.Split(rel, "/")
	fd, err := openPath(rootfd, comps[:len(comps)-1])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd, comps[len(comps)-1]
}

// mtimeOf returns the mtime of rel under root, not following a symlink.
func mtimeOf(t *testing.T, root, rel string) time.Time {
	t.Helper()
	dirfd, name := openParent(t, root, rel)
	st, err := lstat(dirfd, name)
	if err != nil {
		t.Fatal(err)
	}
	return time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
}

func setMtimeOf(t *testing.T, root, rel string, mtime time.Time) {
	t.Helper()
	dirfd, name := openParent(t, root, rel)
	if err := setMtime(dirfd, name, mtime, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
}

// overwrite writes data at off into the regular file rel under root, which
// keeps its size.
func overwrite(t *testing.T, root, rel string, off int64, data []byte) {
	t.Helper()
	dirfd, name := openParent(t, root, rel)
	fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
}

func changeFlags(t *testing.T, root, rel string, set, clear uint32) {
	t.Helper()
	dirfd, name := openParent(t, root, rel)
	f, err := openRead(dirfd, name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cur, err := getFlags(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if err := setFlags(int(f.Fd()), cur&^clear|set); err != nil {
		t.Fatal(err)
	}
}

func setXattr(t *testing.T, root, rel, key string, value []byte) {
	t.Helper()
	dirfd, name := openParent(t, root, rel)
	if err := unix.Lsetxattr(procPath(dirfd, name), key, value, 0); err != nil {
		t.Fatal(err)
	}
}

// getXattr returns an xattr of rel under root and false if it is absent.
func getXattr(t *testing.T, root, rel, key string) ([]byte, bool) {
	t.Helper()
	dirfd, name := openParent(t, root, rel)
	x, err := xattrs(dirfd, name)
	if err != nil {
		t.Fatal(err)
	}
	v, ok := x[key]
	return v, ok
}

// capNetRaw is security.capability for cap_net_raw+ep.
func capNetRaw() []byte {
	v := append([]byte(nil), CapNetBindService...)
	binary.LittleEndian.PutUint32(v[4:], 1<<13)
	return v
}

// compareCase is one difference that Compare must report.
type compareCase struct {
	name   string
	path   string // the entry that differs
	walk   string // what Compare's own walk says about path
	rsync  bool   // rsync sees it too
	others []string
	// keep lists entries (besides the ones mutate says) whose mtime is put
	// back after mutate, so that exactly one attribute differs.
	keep   []string
	needs  string // "flags" or "acl": skip where the filesystem lacks it
	mutate func(t *testing.T, b string)
}

func compareCases() []compareCase {
	return []compareCase{
		{
			name: "content byte, same size and mtime", path: "files/small",
			walk: "content differs from byte 0", rsync: true, keep: []string{"files/small"},
			mutate: func(t *testing.T, b string) { overwrite(t, b, "files/small", 0, []byte("H")) },
		},
		{
			name: "setuid bit", path: "files/private", walk: "mode 0600 in a, 04600 in b", rsync: true,
			mutate: func(t *testing.T, b string) {
				if err := os.Chmod(filepath.Join(b, "files/private"), 0o600|os.ModeSetuid); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "owner uid", path: "files/small", walk: "owner 0:0 in a, 4321:0 in b", rsync: true,
			mutate: func(t *testing.T, b string) {
				if err := os.Lchown(filepath.Join(b, "files/small"), 4321, 0); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "owner gid of a symlink", path: "links/absolute", walk: "owner 1234:5678 in a, 1234:4321 in b", rsync: true,
			mutate: func(t *testing.T, b string) {
				if err := os.Lchown(filepath.Join(b, "links/absolute"), 1234, 4321); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "mtime nanoseconds only", path: "files/small",
			walk: "mtime 1234567890.123456789 in a, 1234567890.123456790 in b",
			mutate: func(t *testing.T, b string) {
				setMtimeOf(t, b, "files/small", OddNanos.Add(time.Nanosecond))
			},
		},
		{
			name: "directory mtime", path: "tree/a",
			walk: "mtime 1600000000.111111111 in a, 1600000001.111111111 in b", rsync: true,
			mutate: func(t *testing.T, b string) {
				setMtimeOf(t, b, "tree/a", DefaultMtime.Add(time.Second))
			},
		},
		{
			name: "xattr value", path: "files/xattrs", walk: `xattr user.text is "hello" in a, "hellO" in b`, rsync: true,
			mutate: func(t *testing.T, b string) { setXattr(t, b, "files/xattrs", "user.text", []byte("hellO")) },
		},
		{
			name: "xattr added", path: "files/small", walk: "xattr user.added only in b", rsync: true,
			mutate: func(t *testing.T, b string) { setXattr(t, b, "files/small", "user.added", []byte("new")) },
		},
		{
			name: "xattr removed", path: "files/xattrs", walk: "xattr user.empty missing in b", rsync: true,
			mutate: func(t *testing.T, b string) {
				if err := unix.Lremovexattr(filepath.Join(b, "files/xattrs"), "user.empty"); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "trusted xattr on a symlink", path: "links/absolute",
			walk: `xattr trusted.link is "on a symlink" in a, "on a symlinK" in b`, rsync: true,
			mutate: func(t *testing.T, b string) {
				setXattr(t, b, "links/absolute", "trusted.link", []byte("on a symlinK"))
			},
		},
		{
			name: "POSIX ACL entry", path: EveryACLDir, walk: "xattr system.posix_acl_access is", rsync: true, needs: "acl",
			mutate: func(t *testing.T, b string) {
				acl, ok := getXattr(t, b, EveryACLDir, "system.posix_acl_access")
				if !ok {
					t.Fatal("no access ACL")
				}
				found := false
				for off := 4; off+8 <= len(acl); off += 8 {
					tag := binary.LittleEndian.Uint16(acl[off:])
					id := binary.LittleEndian.Uint32(acl[off+4:])
					if tag == aclUser && id == 1234 {
						binary.LittleEndian.PutUint16(acl[off+2:], 5) // rwx -> r-x
						found = true
					}
				}
				if !found {
					t.Fatalf("no entry for user 1234 in the ACL %x", acl)
				}
				setXattr(t, b, EveryACLDir, "system.posix_acl_access", acl)
			},
		},
		{
			name: "security.capability", path: EveryCaps, walk: "xattr security.capability is", rsync: true,
			mutate: func(t *testing.T, b string) { setXattr(t, b, EveryCaps, "security.capability", capNetRaw()) },
		},
		{
			name: "immutable flag added", path: "files/small", walk: "flags 0x0 in a, 0x10 in b", needs: "flags",
			mutate: func(t *testing.T, b string) { changeFlags(t, b, "files/small", FlagImmutable, 0) },
		},
		{
			name: "append-only flag removed", path: "flags/append-only", walk: "flags 0x20 in a, 0x0 in b", needs: "flags",
			mutate: func(t *testing.T, b string) { changeFlags(t, b, "flags/append-only", 0, FlagAppend) },
		},
		{
			name: "nodump flag of a directory removed", path: "flags/nodump-dir", walk: "flags 0x40 in a, 0x0 in b", needs: "flags",
			mutate: func(t *testing.T, b string) { changeFlags(t, b, "flags/nodump-dir", 0, FlagNoDump) },
		},
		{
			name: "hole filled with zeros", path: EveryTrailingHole, walk: "holes not recreated",
			keep: []string{EveryTrailingHole},
			mutate: func(t *testing.T, b string) {
				overwrite(t, b, EveryTrailingHole, 64<<10, make([]byte, 16<<20-64<<10))
			},
		},
		{
			name: "content in the data of a huge sparse file", path: EveryHuge,
			walk: fmt.Sprintf("content differs from byte %d", EveryHugeDataOffset+100), keep: []string{EveryHuge},
			mutate: func(t *testing.T, b string) {
				dirfd, name := openParent(t, b, EveryHuge)
				f, err := openRead(dirfd, name)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				c := make([]byte, 1)
				if _, err := f.ReadAt(c, EveryHugeDataOffset+100); err != nil {
					t.Fatal(err)
				}
				overwrite(t, b, EveryHuge, EveryHugeDataOffset+100, []byte{^c[0]})
			},
		},
		{
			name: "mode of a huge sparse file", path: EveryHuge, walk: "mode 0644 in a, 0604 in b", rsync: true,
			mutate: func(t *testing.T, b string) {
				if err := os.Chmod(filepath.Join(b, EveryHuge), 0o604); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "hard link broken into a copy", path: "hard/one", walk: "hard links: one inode for", rsync: true,
			others: []string{"hard/two", "hard2/three"}, keep: []string{"hard"},
			mutate: func(t *testing.T, b string) {
				p := filepath.Join(b, "hard/two")
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte("three names\n"), 0o640); err != nil {
					t.Fatal(err)
				}
				if err := os.Chown(p, 1234, 5678); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(p, 0o640); err != nil {
					t.Fatal(err)
				}
				setMtimeOf(t, b, "hard/two", OddNanos)
			},
		},
		{
			name: "symlink target", path: "links/relative",
			walk: `symlink target "../files/small" in a, "../files/empty" in b`, rsync: true,
			keep: []string{"links/relative", "links"},
			mutate: func(t *testing.T, b string) {
				p := filepath.Join(b, "links/relative")
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink("../files/empty", p); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "device minor", path: "special/char", walk: "device 1:3 in a, 1:5 in b", rsync: true,
			keep: []string{"special/char", "special"},
			mutate: func(t *testing.T, b string) {
				p := filepath.Join(b, "special/char")
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
				if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(p, 0o666); err != nil {
					t.Fatal(err)
				}
				setXattr(t, b, "special/char", "trusted.dev", []byte("on a device"))
			},
		},
		{
			name: "block device major", path: "special/block", walk: "device 8:1 in a, 9:1 in b", rsync: true,
			keep: []string{"special/block", "special"},
			mutate: func(t *testing.T, b string) {
				p := filepath.Join(b, "special/block")
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
				if err := unix.Mknod(p, unix.S_IFBLK|0o660, int(unix.Mkdev(9, 1))); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(p, 0o660); err != nil {
					t.Fatal(err)
				}
				if err := os.Chown(p, 0, 6); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "FIFO instead of a file", path: "files/empty", walk: "file in a, fifo in b", rsync: true,
			keep: []string{"files/empty", "files"},
			mutate: func(t *testing.T, b string) {
				p := filepath.Join(b, "files/empty")
				if err := os.Remove(p); err != nil {
					t.Fatal(err)
				}
				if err := unix.Mkfifo(p, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(p, 0o644); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "extra file in b", path: "tree/a/b/c/extra", walk: "only in b", rsync: true,
			keep: []string{"tree/a/b/c"},
			mutate: func(t *testing.T, b string) {
				if err := os.WriteFile(filepath.Join(b, "tree/a/b/c/extra"), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "file missing in b", path: "tree/a/b/c/leaf", walk: "only in a", rsync: true,
			keep: []string{"tree/a/b/c"},
			mutate: func(t *testing.T, b string) {
				if err := os.Remove(filepath.Join(b, "tree/a/b/c/leaf")); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "file deeper than PATH_MAX", path: longPath, walk: "content differs from byte 0",
			keep:   []string{longPath},
			mutate: func(t *testing.T, b string) { overwrite(t, b, longPath, 0, []byte("F")) },
		},
		{
			name: "mode deeper than PATH_MAX", path: longPath, walk: "mode 0644 in a, 0640 in b",
			mutate: func(t *testing.T, b string) {
				dirfd, name := openParent(t, b, longPath)
				if err := unix.Chmod(procPath(dirfd, name), 0o640); err != nil {
					t.Fatal(err)
				}
			},
		},
	}
}

// TestCompareEqual builds Every twice: the trees must compare equal, so that
// Every is deterministic and Compare has no false alarms.
func TestCompareEqual(t *testing.T) {
	NeedRoot(t)
	needRsync(t)
	a, b := t.TempDir(), t.TempDir()
	Every(t, a)
	Every(t, b)
	r := record(t, func(tb testing.TB) { Compare(tb, a, b) })
	if r.Failed() || r.Skipped() {
		t.Fatalf("two builds of Every differ (failed=%v skipped=%v):%s", r.Failed(), r.Skipped(), r.report())
	}
	// And with the real t, to show Compare's logs.
	Compare(t, a, b)
}

// TestCompareFindsEachDifference makes one difference at a time in a copy of
// Every and checks that Compare fails and names the path and the attribute.
func TestCompareFindsEachDifference(t *testing.T) {
	NeedRoot(t)
	needRsync(t)
	a := t.TempDir()
	Every(t, a)
	flags := flagsSupported(t, t.TempDir()) // not in a: a new entry would move its mtime
	_, acl := getXattr(t, a, EveryACLDir, "system.posix_acl_access")
	for _, tc := range compareCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each builds its own b; a is only read
			switch {
			case tc.needs == "flags" && !flags:
				t.Skipf("the filesystem of %s has no inode flags", a)
			case tc.needs == "acl" && !acl:
				t.Skipf("the filesystem of %s keeps no POSIX ACLs", a)
			}
			b := t.TempDir()
			Every(t, b)
			mtimes := make(map[string]time.Time)
			for _, rel := range tc.keep {
				mtimes[rel] = mtimeOf(t, b, rel)
			}
			tc.mutate(t, b)
			for rel, mt := range mtimes {
				setMtimeOf(t, b, rel, mt)
			}

			r := record(t, func(tb testing.TB) { Compare(tb, a, b) })
			if !r.Failed() {
				t.Fatalf("Compare passed:%s", r.report())
			}
			checkReports(t, r, tc)
		})
	}
}

// checkReports checks that the walk reported tc, that rsync did exactly when
// tc says it sees the difference, and that no report names another path.
func checkReports(t *testing.T, r *recorder, tc compareCase) {
	t.Helper()
	want := fmt.Sprintf("testtree.Compare: %s: %s", short(tc.path), tc.walk)
	paths := append([]string{tc.path}, tc.others...)
	walked, rsynced := false, false
	for _, e := range r.errs {
		if strings.HasPrefix(e, want) {
			walked = true
		}
		if strings.HasPrefix(e, "testtree.Compare: rsync") {
			// Itemized lines: 11 characters of change codes, a space and
			// the path, with a slash after a directory, " -> target"
			// after a symlink and " => first name" after a hard link.
			for _, line := range strings.Split(e, "\n")[1:] {
				var p string
				if len(line) > 12 {
					p, _, _ = strings.Cut(line[12:], " -> ")
					p, _, _ = strings.Cut(p, " => ")
				}
				if slices.Contains(paths, strings.TrimSuffix(p, "/")) {
					rsynced = true
				} else {
					t.Errorf("rsync reports something else: %q", line)
				}
			}
			continue
		}
		named := false
		for _, p := range paths {
			named = named || strings.Contains(e, short(p))
		}
		if !named {
			t.Errorf("a report names another path: %q", e)
		}
	}
	if !walked {
		t.Errorf("no report starts with %q", want)
	}
	if rsynced != tc.rsync {
		t.Errorf("rsync reported the difference: %v, want %v", rsynced, tc.rsync)
	}
	if t.Failed() {
		t.Logf("Compare reported:%s", r.report())
	}
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// TestCompareBoundsReports checks that many differences are counted but not
// all reported.
func TestCompareBoundsReports(t *testing.T) {
	NeedRoot(t)
	needRsync(t)
	a, b := t.TempDir(), t.TempDir()
	Build(t, a, Dir{})
	extra := Dir{}
	for i := range maxReports + 10 {
		extra[fmt.Sprintf("f%03d", i)] = File{}
	}
	Build(t, b, extra)
	r := record(t, func(tb testing.TB) { Compare(tb, a, b) })
	walk := 0
	for _, e := range r.errs {
		if strings.Contains(e, ": only in b") {
			walk++
		}
	}
	if walk != maxReports {
		t.Errorf("%d entries reported one by one, want %d", walk, maxReports)
	}
	summary := fmt.Sprintf("testtree.Compare: %d differences in all, %d reported", maxReports+10, maxReports)
	if !containsAny(strings.Join(r.errs, "\n"), []string{summary}) {
		t.Errorf("no %q:%s", summary, r.report())
	}
}

// TestCompareMissingRoot checks that a missing tree is a failure, not a pass.
func TestCompareMissingRoot(t *testing.T) {
	NeedRoot(t)
	needRsync(t)
	a := t.TempDir()
	Build(t, a, Dir{"f": File{}})
	r := record(t, func(tb testing.TB) { Compare(tb, a, filepath.Join(t.TempDir(), "missing")) })
	if !r.Failed() {
		t.Fatalf("Compare passed against a missing tree:%s", r.report())
	}
}

// TestCompareRootMetadata checks the roots themselves, not only their entries.
func TestCompareRootMetadata(t *testing.T) {
	NeedRoot(t)
	needRsync(t)
	a, b := t.TempDir(), t.TempDir()
	Build(t, a, Dir{"f": File{}})
	Build(t, b, Dir{"f": File{}})
	if err := os.Chmod(b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(a, 0o700); err != nil {
		t.Fatal(err)
	}
	r := record(t, func(tb testing.TB) { Compare(tb, a, b) })
	if !containsAny(strings.Join(r.errs, "\n"), []string{`testtree.Compare: ".": mode 0700 in a, 0755 in b`}) {
		t.Fatalf("the roots' modes differ, Compare says:%s", r.report())
	}
}

// TestCompareHoles checks the sparseness check on holes far smaller than
// the trees Every makes: b must have every hole of a, whatever its size, and
// may have holes where a has written zeros.
func TestCompareHoles(t *testing.T) {
	NeedRoot(t)
	needRsync(t)
	data := bytes.Repeat([]byte("data"), 1024) // 4 KiB
	sparse := File{Content: data, Sparse: []At{{Offset: 260 << 10, Data: data}}, Size: 512 << 10}
	dense := File{Content: append(append(data, make([]byte, 256<<10)...), data...), Size: 512 << 10}
	for _, tc := range []struct {
		name  string
		a, b  File
		fill  []At // written into b after the build
		holes bool // Compare must report missing holes
	}{
		{name: "same holes", a: sparse, b: sparse},
		{name: "inner hole filled", a: sparse, b: dense, holes: true},
		{name: "inner hole filled afterwards", a: sparse, b: sparse, fill: []At{{Offset: 4 << 10, Data: make([]byte, 256<<10)}}, holes: true},
		{name: "one block of the trailing hole filled", a: sparse, b: sparse, fill: []At{{Offset: 500 << 10, Data: make([]byte, 4<<10)}}, holes: true},
		{name: "holes where a has zeros", a: dense, b: sparse},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := t.TempDir(), t.TempDir()
			Build(t, a, Dir{"f": tc.a})
			Build(t, b, Dir{"f": tc.b})
			for _, at := range tc.fill {
				overwrite(t, b, "f", at.Offset, at.Data)
			}
			setMtimeOf(t, b, "f", DefaultMtime)
			r := record(t, func(tb testing.TB) { Compare(tb, a, b) })
			reported := containsAny(strings.Join(r.errs, "\n"), []string{`testtree.Compare: "f": holes not recreated`})
			if reported != tc.holes || r.Failed() != tc.holes {
				t.Fatalf("holes reported: %v, want %v; failed: %v:%s", reported, tc.holes, r.Failed(), r.report())
			}
		})
	}
}

func TestDataInHoles(t *testing.T) {
	for _, tc := range []struct {
		name         string
		data, within []span
		gran         int64
		n, first     int64
	}{
		{"nothing", nil, nil, 4096, 0, -1},
		{"all outside", []span{{0, 8192}}, nil, 4096, 8192, 0},
		{"same", []span{{0, 4096}, {8192, 9000}}, []span{{0, 4096}, {8192, 9000}}, 4096, 0, -1},
		{"partial block of a is a whole block of b", []span{{8192, 12288}}, []span{{8192, 9000}}, 4096, 0, -1},
		{"unaligned a widened", []span{{4096, 12288}}, []span{{5000, 9000}}, 4096, 0, -1},
		{"hole between", []span{{0, 12288}}, []span{{0, 4096}, {8192, 12288}}, 4096, 4096, 4096},
		{"before and after", []span{{0, 16384}}, []span{{4096, 8192}}, 4096, 12288, 0},
		{"several data spans", []span{{0, 4096}, {8192, 16384}}, []span{{0, 4096}, {12288, 16384}}, 4096, 4096, 8192},
		{"overlapping widened spans", []span{{0, 8192}}, []span{{100, 200}, {300, 5000}}, 4096, 0, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, first := dataInHoles(tc.data, tc.within, tc.gran)
			if n != tc.n || first != tc.first {
				t.Errorf("dataInHoles = %d, %d; want %d, %d", n, first, tc.n, tc.first)
			}
		})
	}
}

// TestCompareAwkwardNames checks the rsync filter rules for paths with
// rsync's wildcard characters: a long path must be left out of rsync, and a
// big file out of the --checksum run, so rsync must not see a change of
// their content (only the walk does); the big file's mode it must see.
func TestCompareAwkwardNames(t *testing.T) {
	NeedRoot(t)
	needRsync(t)
	name := strings.Repeat(`a*b?c[d]\e `, 18)
	deep := Dir{"f": File{Content: []byte("x")}}
	deepPath := "f"
	for range 20 {
		deep = Dir{name: deep}
		deepPath = name + "/" + deepPath
	}
	deepPath = "long*/" + deepPath
	const bigPath = `d?[x]/big[1]*\`
	big := File{Sparse: []At{{Offset: 1 << 30, Data: []byte("x")}}, Size: 2 << 30}
	d := Dir{"long*": deep, "d?[x]": Dir{`big[1]*\`: big, "small": File{}}, "d?[y]": Dir{"other": File{}}}
	a := t.TempDir()
	Build(t, a, d)
	for _, tc := range []struct {
		compareCase
		mutate func(b string)
	}{
		{compareCase: compareCase{name: "equal"}},
		{compareCase{name: "deep content", path: deepPath, walk: "content differs from byte 0"},
			func(b string) { overwrite(t, b, deepPath, 0, []byte("y")) }},
		{compareCase{name: "big content", path: bigPath, walk: "content differs from byte 1073741824"},
			func(b string) { overwrite(t, b, bigPath, 1<<30, []byte("y")) }},
		{compareCase{name: "big mode", path: bigPath, walk: "mode 0644 in a, 0600 in b", rsync: true},
			func(b string) {
				if err := os.Chmod(filepath.Join(b, bigPath), 0o600); err != nil {
					t.Fatal(err)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := t.TempDir()
			Build(t, b, d)
			if tc.mutate == nil {
				r := record(t, func(tb testing.TB) { Compare(tb, a, b) })
				if r.Failed() {
					t.Fatalf("equal trees differ:%s", r.report())
				}
				return
			}
			tc.mutate(b)
			setMtimeOf(t, b, tc.path, DefaultMtime)
			r := record(t, func(tb testing.TB) { Compare(tb, a, b) })
			checkReports(t, r, tc.compareCase)
		})
	}
}

func TestRsyncPattern(t *testing.T) {
	for _, tc := range []struct{ rel, want string }{
		{"a/b", "/a/b"},
		{`back\slash`, `/back\slash`}, // no wildcard: rsync takes a backslash literally
		{`a*b?c[d]\e`, `/a\*b\?c\[d]\\e`},
	} {
		if got := rsyncPattern(tc.rel); got != tc.want {
			t.Errorf("rsyncPattern(%q) = %q, want %q", tc.rel, got, tc.want)
		}
	}
	if tooLongForRsync(strings.Repeat("x", 2000)) || !tooLongForRsync(strings.Repeat("x", rsyncPathLimit+1)) {
		t.Errorf("the limit is not %d bytes", rsyncPathLimit)
	}
	if wild := strings.Repeat("*", rsyncPathLimit/2); !tooLongForRsync(wild) {
		t.Errorf("a path whose pattern is twice as long fits")
	}
}
