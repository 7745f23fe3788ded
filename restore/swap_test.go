package restore_test

// A local user of the standby, or a hostile snapshot, puts symlinks to
// outside where an apply expects directories: swapped in and out while
// the apply runs, or left there between two applies. Nothing outside the
// target may change, and an apply after the attack still converges.

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/restore"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/testtree"
	"github.com/understudy/understudy/snapshot/tree"
)

// entryState is what an apply could change of an entry: its stat but the
// access time, its content and its xattrs.
type entryState struct {
	mode, uid, gid uint32
	ino, nlink     uint64
	size           int64
	mtime, ctime   unix.Timespec
	content        [32]byte
	xattrs         string
}

// listTree records every entry below root, symlinks not followed.
func listTree(t *testing.T, root string) map[string]entryState {
	t.Helper()
	list := map[string]entryState{}
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		e := entryState{mode: st.Mode, uid: st.Uid, gid: st.Gid, ino: st.Ino, nlink: st.Nlink, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.content = sha256.Sum256(b)
		}
		if e.xattrs, err = xattrsOf(p); err != nil {
			return err
		}
		list[strings.TrimPrefix(p, root)] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// xattrsOf returns p's xattrs as "name=value" lines, sorted.
func xattrsOf(p string) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return "", err
	}
	var lines []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		val := make([]byte, 4096)
		k, err := unix.Lgetxattr(p, name, val)
		if err != nil {
			return "", err
		}
		lines = append(lines, name+"="+string(val[:k]))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n"), nil
}

// sameTree fails for every entry below root that was created, deleted or
// changed since before was listed.
func sameTree(t *testing.T, root string, before map[string]entryState) {
	t.Helper()
	after := listTree(t, root)
	for _, p := range slices.Sorted(maps.Keys(before)) {
		a, ok := after[p]
		switch {
		case !ok:
			t.Errorf("outside the target, %s%s was deleted", root, p)
		case a != before[p]:
			t.Errorf("outside the target, %s%s was changed: before %+v, after %+v", root, p, before[p], a)
		}
	}
	for _, p := range slices.Sorted(maps.Keys(after)) {
		if _, ok := before[p]; !ok {
			t.Errorf("outside the target, %s%s was created", root, p)
		}
	}
}

var (
	raceMtime1   = time.Unix(1700000000, 100)
	raceMtime2   = time.Unix(1700086400, 200)
	outsideMtime = time.Unix(1500000000, 300)
)

// raceFiles are the files of directory dir in version 1 or 2 of the
// race's tree: version 2 changes the content of a quarter of them, the
// mode, owner, mtime and xattrs of another quarter, drops a quarter and
// adds 20.
func raceFiles(dir string, version int) testtree.Dir {
	d := testtree.Dir{}
	body := func(name string, v int) []byte {
		return bytes.Repeat([]byte(fmt.Sprintf("version %d of %s/%s\n", v, dir, name)), 64)
	}
	for i := range 40 {
		name := fmt.Sprintf("f%03d", i)
		f := testtree.File{Content: body(name, 1), Mtime: raceMtime1, Xattrs: map[string][]byte{"user.v": []byte("1")}}
		if version == 2 {
			switch i % 4 {
			case 0:
				f.Content, f.Mtime = body(name, 2), raceMtime2
			case 1:
				f.Mode, f.UID, f.GID, f.Mtime = 0o600, 1000, 1000, raceMtime2
				f.Xattrs = map[string][]byte{"user.v": []byte("2"), "user.w": []byte("new")}
			case 2:
				continue
			}
		}
		d[name] = f
	}
	if version == 2 {
		for i := range 20 {
			name := fmt.Sprintf("g%03d", i)
			d[name] = testtree.File{Content: body(name, 2), Mode: 0o640, UID: 1000, Mtime: raceMtime2}
		}
	}
	return d
}

// raceTree is version 1 or 2 of the tree under /srv: directories a, a/b,
// a/b/c, x, x/y and x/y/gone of 40 files each; version 2 changes them,
// gives a/b and x/y other metadata, drops x/y/gone and adds a/b/new and
// x/fresh.
func raceTree(version int) testtree.Dir {
	dir := func(p string, sub testtree.Dir) testtree.Entry {
		entries := raceFiles(p, version)
		maps.Copy(entries, sub)
		if version == 2 && (p == "a/b" || p == "x/y") {
			return testtree.Directory{Entries: entries, Mode: 0o750, UID: 1000, GID: 1000, Mtime: raceMtime2,
				Xattrs: map[string][]byte{"user.dir": []byte("2")}}
		}
		return entries
	}
	b := testtree.Dir{"c": dir("a/b/c", nil)}
	y := testtree.Dir{}
	x := testtree.Dir{}
	if version == 1 {
		y["gone"] = dir("x/y/gone", nil)
	} else {
		b["new"] = dir("a/b/new", nil)
		x["fresh"] = dir("x/fresh", nil)
	}
	x["y"] = dir("x/y", y)
	return testtree.Dir{"srv": testtree.Dir{
		"a": dir("a", testtree.Dir{"b": dir("a/b", b)}),
		"x": dir("x", x),
	}}
}

// outsideTree holds a file of every name the race's directories hold,
// and every subdirectory a path through a swapped directory can reach,
// so that anything written, changed or deleted through a symlink lands
// on an entry that exists.
func outsideTree() testtree.Dir {
	files := func() testtree.Dir {
		d := testtree.Dir{}
		names := maps.Keys(raceFiles("", 1))
		for _, name := range slices.Concat(slices.Collect(names), slices.Collect(maps.Keys(raceFiles("", 2)))) {
			d[name] = testtree.File{Content: []byte("outside: " + name), Mode: 0o640, UID: 4321, GID: 4321,
				Mtime: outsideMtime, Xattrs: map[string][]byte{"user.outside": []byte("keep")}}
		}
		return d
	}
	with := func(sub testtree.Dir) testtree.Dir {
		d := files()
		maps.Copy(d, sub)
		return d
	}
	d := with(testtree.Dir{
		"b":     with(testtree.Dir{"c": files(), "new": files()}),
		"c":     files(),
		"new":   files(),
		"y":     with(testtree.Dir{"gone": files()}),
		"gone":  files(),
		"fresh": files(),
	})
	for _, name := range []string{"f000", "f001", "f002"} {
		d[name] = testtree.Directory{Entries: files(), Mode: 0o700, UID: 4321, Mtime: outsideMtime} // a directory where the target has a file
	}
	return d
}

// swapper plays the local user: it swaps the directories dirs, in turn,
// for a symlink to outside (absolute, then relative) and back, until
// stopped. Each swap is either one atomic exchange or a rename away and
// a symlink made after it, which leaves a moment with nothing there.
type swapper struct {
	dirs    []string // absolute paths in the target
	outside string
	stash   string        // beside the target, on its filesystem: where the real directories wait
	hold    time.Duration // how long a symlink stays; 0: not at all
	first   int           // where in the cycle to start
	swaps   int
}

func (s *swapper) run(stop <-chan struct{}) error {
	for i := s.first; ; i++ {
		select {
		case <-stop:
			return nil
		default:
		}
		d := s.dirs[i%len(s.dirs)]
		cycle := i / len(s.dirs)
		link := s.outside
		if cycle%2 == 1 {
			rel, err := filepath.Rel(filepath.Dir(d), s.outside)
			if err != nil {
				return err
			}
			link = rel // "../../../outside"
		}
		away := filepath.Join(s.stash, fmt.Sprint(i))
		if !swapOut(d, link, away, cycle/2%2 == 1) {
			continue // the apply removed d, or is making it
		}
		s.swaps++
		if s.hold > 0 {
			time.Sleep(s.hold) // the symlink's lifetime, not a synchronisation
		}
		if err := putBack(d, away); err != nil {
			return err
		}
	}
}

// swapOut puts a symlink to link at d and the real directory at away.
func swapOut(d, link, away string, twoSteps bool) bool {
	if twoSteps {
		if os.Rename(d, away) != nil {
			return false
		}
		os.Symlink(link, d) // fails if the apply made a directory at d meanwhile
		return true
	}
	if os.Symlink(link, away) != nil {
		return false
	}
	if err := unix.Renameat2(unix.AT_FDCWD, d, unix.AT_FDCWD, away, unix.RENAME_EXCHANGE); err != nil {
		os.Remove(away)
		return false
	}
	return true
}

// putBack brings the real directory at away back to d, moving to away
// whatever is at d now: the symlink, or a directory the apply made in
// its place.
func putBack(d, away string) error {
	var err error
	for range 1000 {
		err = unix.Renameat2(unix.AT_FDCWD, away, unix.AT_FDCWD, d, unix.RENAME_EXCHANGE)
		if errors.Is(err, unix.ENOENT) { // the apply removed what was at d
			err = unix.Renameat2(unix.AT_FDCWD, away, unix.AT_FDCWD, d, unix.RENAME_NOREPLACE)
		}
		if err == nil || !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EEXIST) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("put %s back: %w", d, err)
	}
	return nil
}

// TestApplyRacesADirectorySwap applies S2 over S1, and S1 over S2 (a
// rollback), while directories of the target are swapped for symlinks to
// outside and back without pause. The racing apply may warn and fail to
// finish; nothing outside may change, and a full apply afterwards makes
// the target the snapshot again.
func TestApplyRacesADirectorySwap(t *testing.T) {
	testtree.NeedRoot(t)
	base := t.TempDir()
	r := openRepo(t)
	var snaps [2]snapshot.Listed
	for v := 1; v <= 2; v++ {
		root := filepath.Join(base, fmt.Sprint("root", v))
		must(t, os.Mkdir(root, 0o755))
		testtree.Build(t, root, raceTree(v))
		snaps[v-1] = listed(t, r, takeAt(t, r, root, nil, "/srv"))
	}
	outside := filepath.Join(base, "outside")
	must(t, os.Mkdir(outside, 0o755))
	testtree.Build(t, outside, outsideTree())
	outsideBefore := listTree(t, outside)
	target := filepath.Join(base, "target")
	must(t, os.Mkdir(target, 0o755))
	stash := filepath.Join(base, "stash")
	var dirs []string
	for _, d := range []string{"a", "a/b", "a/b/c", "x", "x/y", "x/y/gone"} {
		dirs = append(dirs, filepath.Join(target, "srv", d))
	}

	var mu sync.Mutex
	warnings := 0
	racing := &restore.Standby{DB: r.Index(), Loader: r, Warn: func(string, error) {
		mu.Lock()
		warnings++
		mu.Unlock()
	}}
	clean := &restore.Standby{DB: r.Index(), Loader: r, Warn: func(p string, err error) { t.Errorf("warning: %s: %v", p, err) }}
	// converge applies snap in full and verifies the target. A racing
	// apply can succeed though some of its writes went into a real
	// directory while it was swapped away; only an apply that compares
	// every entry is bound to repair that.
	converge := func(snap snapshot.Listed) {
		t.Helper()
		_, err := clean.Apply(context.Background(), restore.ApplyRequest{Set: "test", Target: target, Snapshot: snap, Full: true})
		must(t, err)
		var diffs []string
		_, err = restore.Verify(context.Background(), r, snap.Record, target, func(d restore.Difference) error {
			diffs = append(diffs, fmt.Sprintf("%s %s %v", d.KindName(), d.Path, d.Attrs))
			return nil
		})
		must(t, err)
		if len(diffs) > 0 {
			t.Fatalf("the target is not %s after a full apply, %d differences: %s", snap.ID.Short(), len(diffs), strings.Join(diffs[:min(len(diffs), 10)], "; "))
		}
	}
	converge(snaps[0])

	holds := []time.Duration{0, 20 * time.Microsecond, 200 * time.Microsecond, 0, 2 * time.Millisecond}
	for round, hold := range holds {
		for _, step := range []struct {
			name string
			snap snapshot.Listed
		}{{"apply", snaps[1]}, {"rollback", snaps[0]}} {
			must(t, os.Mkdir(stash, 0o755))
			s := &swapper{dirs: dirs, outside: outside, stash: stash, hold: hold, first: round}
			stop := make(chan struct{})
			done := make(chan error, 1)
			go func() { done <- s.run(stop) }()
			mu.Lock()
			warnings = 0
			mu.Unlock()
			_, err := racing.Apply(context.Background(), restore.ApplyRequest{Set: "test", Target: target, Snapshot: step.snap})
			close(stop)
			must(t, <-done)
			if err != nil && !errors.Is(err, restore.ErrIncomplete) {
				t.Fatalf("round %d, %s during the swaps: %v", round, step.name, err)
			}
			mu.Lock()
			t.Logf("round %d, %s: %d swaps, %d warnings, %v", round, step.name, s.swaps, warnings, err)
			mu.Unlock()
			if s.swaps == 0 {
				t.Errorf("round %d, %s: no directory was swapped during the apply", round, step.name)
			}
			sameTree(t, outside, outsideBefore)
			outsideUntouched(t, base, "root1", "root2", "outside", "target", "stash")
			for _, d := range dirs {
				if fi, err := os.Lstat(d); err == nil && !fi.IsDir() {
					t.Fatalf("%s was not put back: a %v", d, fi.Mode())
				}
			}
			// The stash holds what the swaps moved out of the target: the
			// symlinks, and directories the apply made in their place.
			must(t, os.RemoveAll(stash))
			if t.Failed() {
				t.FailNow()
			}
			converge(step.snap)
		}
	}
}

// hostileTree is a snapshot's tree as a hostile repository could hold
// it: the entries of the root and, unless nil, of a directory "d" in it.
type hostileTree struct {
	root, d []rawEntry
}

// store writes h's trees into r and returns its snapshot.
func (h hostileTree) store(t *testing.T, r *chunkstore.Repo) *snapshot.Record {
	t.Helper()
	var data [][]byte
	var trees [][]byte
	root := slices.Clone(h.root)
	for _, e := range slices.Concat(h.root, h.d) {
		if e.content != nil {
			data = append(data, e.content)
		}
	}
	if h.d != nil {
		d := sortedRaw(h.d)
		trees = append(trees, d)
		root = append(root, rawEntry{name: "d", typ: tree.Dir, subtree: index.Hash(d)})
	}
	trees = append(trees, sortedRaw(root))
	return storeHostile(t, r, data, trees...)
}

func sortedRaw(entries []rawEntry) []byte {
	entries = slices.Clone(entries)
	slices.SortFunc(entries, func(a, b rawEntry) int { return cmp.Compare(a.name, b.name) })
	return rawTree(entries...)
}

// TestApplyReplacesHostileSymlinks: a snapshot S1 or a local user leaves
// a symlink to outside, to "/" or relative, where the next snapshot S2
// has a directory, or has nothing; S2 may also hard-link through a
// symlink of its own. Apply replaces or deletes the symlink and never
// writes, changes or deletes through it.
func TestApplyReplacesHostileSymlinks(t *testing.T) {
	testtree.NeedRoot(t)
	pwned := []byte("pwned")
	// rootVictim is a name no host has at "/": what a symlink to "/"
	// would let an apply create there.
	rootVictim := fmt.Sprintf("understudy-escape-%d-%d", os.Getpid(), time.Now().UnixNano())
	t.Cleanup(func() {
		if _, err := os.Lstat("/" + rootVictim); err == nil {
			os.Remove("/" + rootVictim)
		}
	})
	inner := []rawEntry{
		{name: "victim", typ: tree.File, content: pwned},
		{name: rootVictim, typ: tree.File, content: pwned},
	}
	isDirD := func(t *testing.T, target string) {
		t.Helper()
		fi, err := os.Lstat(filepath.Join(target, "d"))
		if err != nil || !fi.IsDir() {
			t.Fatalf("d is not a directory: %v %v", fi, err)
		}
		mustContent(t, filepath.Join(target, "d/victim"), "pwned")
	}
	noD := func(t *testing.T, target string) {
		t.Helper()
		if _, err := os.Lstat(filepath.Join(target, "d")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("d is still there: %v", err)
		}
	}
	// swapD plays the local user between the two applies.
	swapD := func(link string) func(t *testing.T, target, outside string) {
		return func(t *testing.T, target, outside string) {
			must(t, os.RemoveAll(filepath.Join(target, "d")))
			must(t, os.Symlink(cmp.Or(link, outside), filepath.Join(target, "d")))
		}
	}
	symlinkD := func(to string) hostileTree {
		return hostileTree{root: []rawEntry{{name: "d", typ: tree.Symlink, target: to}}}
	}
	for _, tc := range []struct {
		name    string
		s1      func(outside string) hostileTree
		between func(t *testing.T, target, outside string)
		s2      func(outside string) hostileTree
		check   func(t *testing.T, target string)
	}{
		{
			name:  "absolute symlink then directory",
			s1:    func(outside string) hostileTree { return symlinkD(outside) },
			s2:    func(string) hostileTree { return hostileTree{d: inner} },
			check: isDirD,
		},
		{
			name:  "relative symlink then directory",
			s1:    func(string) hostileTree { return symlinkD("../outside") },
			s2:    func(string) hostileTree { return hostileTree{d: inner} },
			check: isDirD,
		},
		{
			name:  "symlink to root then directory",
			s1:    func(string) hostileTree { return symlinkD("/") },
			s2:    func(string) hostileTree { return hostileTree{d: inner} },
			check: isDirD,
		},
		{
			name: "symlink then directory holding a hard link's first name",
			s1:   func(outside string) hostileTree { return symlinkD(outside) },
			s2: func(string) hostileTree {
				return hostileTree{d: inner, root: []rawEntry{{name: "l", typ: tree.File, linkTo: "d/victim", content: pwned}}}
			},
			check: func(t *testing.T, target string) {
				isDirD(t, target)
				var a, b unix.Stat_t
				must(t, unix.Lstat(filepath.Join(target, "d/victim"), &a))
				must(t, unix.Lstat(filepath.Join(target, "l"), &b))
				if a.Ino != b.Ino {
					t.Errorf("l is not a hard link to d/victim")
				}
			},
		},
		{
			name: "hard link whose first name is under a symlink",
			s1: func(string) hostileTree {
				return hostileTree{root: []rawEntry{{name: "l", typ: tree.File, content: []byte("mine")}}}
			},
			s2: func(outside string) hostileTree {
				return hostileTree{root: []rawEntry{
					{name: "d", typ: tree.Symlink, target: outside},
					{name: "l", typ: tree.File, linkTo: "d/victim", content: pwned},
				}}
			},
			check: func(t *testing.T, target string) { mustContent(t, filepath.Join(target, "l"), "pwned") },
		},
		{
			name:    "dropped directory swapped for an absolute symlink",
			s1:      func(string) hostileTree { return hostileTree{d: inner[:1]} },
			between: swapD(""),
			s2:      func(string) hostileTree { return hostileTree{} },
			check:   noD,
		},
		{
			name:    "dropped directory swapped for a relative symlink",
			s1:      func(string) hostileTree { return hostileTree{d: inner[:1]} },
			between: swapD("../outside"),
			s2:      func(string) hostileTree { return hostileTree{} },
			check:   noD,
		},
		{
			name:    "changed directory swapped for a symlink to root",
			s1:      func(string) hostileTree { return hostileTree{d: inner[:1]} },
			between: swapD("/"),
			s2:      func(string) hostileTree { return hostileTree{d: inner} },
			check:   isDirD,
		},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			r := openRepo(t)
			base := t.TempDir()
			outside := filepath.Join(base, "outside")
			must(t, os.Mkdir(outside, 0o755))
			testtree.Build(t, outside, testtree.Dir{
				"victim": testtree.File{Content: []byte("safe"), Mode: 0o600, UID: 4321, Mtime: outsideMtime,
					Xattrs: map[string][]byte{"user.outside": []byte("keep")}},
				"other": testtree.File{Content: []byte("other"), Mtime: outsideMtime},
			})
			before := listTree(t, outside)
			target := filepath.Join(base, "target")
			must(t, os.Mkdir(target, 0o755))
			s1 := tc.s1(outside).store(t, r)
			s2 := tc.s2(outside).store(t, r)
			apply := func(rec *snapshot.Record, refs ...*snapshot.Record) {
				_, err := restore.Apply(context.Background(), r, rec, restore.ApplyOptions{Target: target, Refs: refs,
					Warn: func(p string, err error) { t.Logf("warning: %s: %v", p, err) }})
				if err != nil && !errors.Is(err, restore.ErrIncomplete) {
					t.Fatal(err)
				}
			}
			apply(s1)
			if tc.between != nil {
				tc.between(t, target, outside)
			}
			apply(s2, s1)
			sameTree(t, outside, before)
			outsideUntouched(t, base, "outside", "target")
			if _, err := os.Lstat("/" + rootVictim); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("apply created /%s through a symlink to /: %v", rootVictim, err)
			}
			tc.check(t, target)
		})
	}
}
