package restore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/restore"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/testtree"
)

// untouched is the state of a live entry an apply must leave alone: its
// content and every stat field an apply could change, ctime included.
type untouched struct {
	content []byte
	st      unix.Stat_t
}

func record(t *testing.T, p string) untouched {
	t.Helper()
	var u untouched
	if err := unix.Lstat(p, &u.st); err != nil {
		t.Fatal(err)
	}
	if u.st.Mode&unix.S_IFMT == unix.S_IFREG {
		var err error
		if u.content, err = os.ReadFile(p); err != nil {
			t.Fatal(err)
		}
	}
	return u
}

func (u untouched) check(t *testing.T, p string) {
	t.Helper()
	now := record(t, p)
	if !bytes.Equal(now.content, u.content) || now.st.Mode != u.st.Mode || now.st.Uid != u.st.Uid || now.st.Gid != u.st.Gid ||
		now.st.Mtim != u.st.Mtim || now.st.Ctim != u.st.Ctim || now.st.Ino != u.st.Ino {
		t.Errorf("%s was touched: before %+v %q, after %+v %q", p, u.st, u.content, now.st, now.content)
	}
}

func listed(t *testing.T, r *chunkstore.Repo, res *snapshot.Result) snapshot.Listed {
	t.Helper()
	l, err := snapshot.Find(r.Index(), res.ID.String(), "")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// applyAndCompare applies snap to target and compares the target's copy
// of src with a fresh restore of snap, leaving out skip (relative to src).
func applyAndCompare(t *testing.T, sb *restore.Standby, r *chunkstore.Repo, snap snapshot.Listed, target, src string, skip ...string) *restore.ApplyResult {
	t.Helper()
	res, err := sb.Apply(context.Background(), restore.ApplyRequest{Set: "test", Target: target, Snapshot: snap})
	if err != nil {
		t.Fatalf("apply %s: %v", snap.ID.Short(), err)
	}
	want := filepath.Join(t.TempDir(), "want")
	t.Cleanup(func() { testtree.ClearFlags(t, want) })
	if _, err := restore.Run(context.Background(), r, snap.Record, restore.Options{Target: want}); err != nil {
		t.Fatal(err)
	}
	testtree.CompareExcept(t, filepath.Join(want, src), filepath.Join(target, src), skip...)
	return res
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestApplySequenceAndRollback(t *testing.T) {
	testtree.NeedRoot(t)
	base := t.TempDir()
	src := filepath.Join(base, "src")
	must(t, os.Mkdir(src, 0o755))
	testtree.Every(t, src)
	t.Cleanup(func() { testtree.ClearFlags(t, src) })
	testtree.Build(t, src, testtree.Dir{
		"etc":   testtree.Dir{"hostname": testtree.File{Content: []byte("primary\n")}, "motd": testtree.File{Content: []byte("hello\n")}},
		"cache": testtree.Dir{"big": testtree.File{Content: []byte("primary's cache")}},
	})
	r := openRepo(t)
	must(t, r.Index().UpdateStandby("test", func(st *index.StandbyState) error {
		st.Protect = []string{src + "/etc/hostname"}
		return nil
	}))
	excl := []string{src + "/cache/"}

	// The standby's own host-specific and excluded entries.
	target := filepath.Join(base, "target")
	t.Cleanup(func() { testtree.ClearFlags(t, target) })
	live := filepath.Join(target, src)
	must(t, os.MkdirAll(filepath.Join(live, "etc"), 0o755))
	must(t, os.MkdirAll(filepath.Join(live, "cache"), 0o755))
	must(t, os.WriteFile(filepath.Join(live, "etc/hostname"), []byte("standby\n"), 0o600))
	must(t, os.WriteFile(filepath.Join(live, "cache/local"), []byte("standby's cache"), 0o640))
	keep := map[string]untouched{}
	for _, p := range []string{"etc/hostname", "cache/local"} {
		keep[p] = record(t, filepath.Join(live, p))
	}
	sb := &restore.Standby{DB: r.Index(), Loader: r, Warn: func(p string, err error) { t.Errorf("warning: %s: %v", p, err) }}
	skip := []string{"etc/hostname", "cache"}
	checkKept := func() {
		t.Helper()
		for p, u := range keep {
			u.check(t, filepath.Join(live, p))
		}
	}

	s1 := listed(t, r, take(t, r, excl, src))
	applyAndCompare(t, sb, r, s1, target, src, skip...)
	checkKept()

	// S2: content changed inside a big file, entries added and removed,
	// metadata changed, a file turned into a directory, a symlink
	// retargeted, a hard link broken, a directory's flags.
	at := func(p string) string { return filepath.Join(src, p) }
	f, err := os.OpenFile(at("files/random-3m"), os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt([]byte("changed in the middle"), 1<<20)
	must(t, err)
	must(t, f.Close())
	must(t, os.Remove(at("tree/a/b/c/leaf")))
	must(t, os.MkdirAll(at("new/dir"), 0o750))
	must(t, os.WriteFile(at("new/dir/file"), []byte("new"), 0o644))
	must(t, os.Chmod(at("files/small"), 0o600))
	must(t, unix.Lsetxattr(at("files/empty"), "user.added", []byte("v"), 0))
	must(t, os.Remove(at("links/dangling")))
	must(t, os.Symlink("elsewhere", at("links/dangling")))
	must(t, os.Remove(at("files/private")))
	must(t, os.MkdirAll(at("files/private/inside"), 0o700))
	must(t, os.Remove(at("hard/two")))
	must(t, os.WriteFile(at("hard/two"), []byte("a copy now\n"), 0o644))
	must(t, os.WriteFile(at("etc/motd"), []byte("changed\n"), 0o644))
	must(t, os.WriteFile(at("etc/hostname"), []byte("primary renamed\n"), 0o644))
	s2 := listed(t, r, take(t, r, excl, src))
	res := applyAndCompare(t, sb, r, s2, target, src, skip...)
	checkKept()
	if res.Stats.SubtreesSkipped == 0 {
		t.Errorf("S1→S2 skipped no unchanged subtree: %+v", res.Stats)
	}
	if res.Stats.BytesReused < 2<<20 {
		t.Errorf("S1→S2 reused %d bytes of random-3m's old content, want most of its 3 MiB", res.Stats.BytesReused)
	}

	// S3: an immutable file changed, a directory tree removed, the
	// directory turned back into a file, a new hard link.
	testtree.ClearFlags(t, at("flags"))
	must(t, os.WriteFile(at("flags/immutable"), []byte("changed after all\n"), 0o644))
	_, err = execCommand("chattr", "+i", at("flags/immutable"))
	must(t, err)
	must(t, os.RemoveAll(at("tree")))
	must(t, os.RemoveAll(at("files/private")))
	must(t, os.WriteFile(at("files/private"), []byte("a file again\n"), 0o600))
	must(t, os.Link(at("files/small"), at("new/small-link")))
	s3 := listed(t, r, take(t, r, excl, src))
	applyAndCompare(t, sb, r, s3, target, src, skip...)
	checkKept()

	// The same snapshot again changes nothing: not one ctime moves.
	before := ctimes(t, target)
	again, err := sb.Apply(context.Background(), restore.ApplyRequest{Set: "test", Target: target, Snapshot: s3})
	must(t, err)
	if st := again.Stats; st.Created+st.Replaced+st.Metadata+st.Linked+st.Deleted != 0 {
		t.Errorf("applying S3 twice changed something the second time: %+v", st)
	}
	// A full apply compares every entry, and finds nothing to do either.
	full, err := sb.Apply(context.Background(), restore.ApplyRequest{Set: "test", Target: target, Snapshot: s3, Full: true})
	must(t, err)
	if st := full.Stats; st.Created+st.Replaced+st.Metadata+st.Linked+st.Deleted != 0 || st.SubtreesSkipped != 0 {
		t.Errorf("a full apply of the applied snapshot: %+v", st)
	}
	after := ctimes(t, target)
	for p, c := range before {
		if after[p] != c {
			t.Errorf("%s: changed by applying the applied snapshot again", p)
		}
	}

	// Rollback to S1.
	applyAndCompare(t, sb, r, s1, target, src, skip...)
	checkKept()
	st, err := r.Index().Standby("test")
	must(t, err)
	key, _ := restore.TargetKey(target)
	if ts := st.Targets[key]; ts == nil || ts.Applied != s1.ID || ts.MidApply() {
		t.Errorf("state after the rollback: %+v, want S1 applied and nothing mid-apply", ts)
	}
}

func execCommand(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// ctimes returns the ctime of every entry under root, by path.
func ctimes(t *testing.T, root string) map[string]unix.Timespec {
	t.Helper()
	m := map[string]unix.Timespec{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		var st unix.Stat_t
		if err == nil {
			err = unix.Lstat(p, &st)
		}
		if errors.Is(err, unix.ENAMETOOLONG) {
			return fs.SkipDir // the chain beyond PATH_MAX
		}
		if err != nil {
			return err
		}
		m[p] = st.Ctim
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(m) < 50 {
		t.Fatalf("ctimes: %d entries under %s", len(m), root)
	}
	return m
}
