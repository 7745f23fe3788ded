package main

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/restore"
	usync "github.com/understudy/understudy/sync"
	"github.com/understudy/understudy/sync/sshdtest"
)

// pushApplyReport is the --json form of push --apply's result for one
// standby.
type pushApplyReport struct {
	Dest    string `json:"dest"`
	Error   string `json:"error"`
	Refused bool   `json:"refused"`
	Apply   []struct {
		Set      string    `json:"set"`
		Target   string    `json:"target"`
		Status   string    `json:"status"`
		Snapshot string    `json:"snapshot"`
		DueAt    time.Time `json:"due_at"`
		Reasons  []string  `json:"reasons"`
		Stats    *struct {
			Created int64 `json:"created"`
		} `json:"stats"`
	} `json:"apply"`
}

// pushApply runs push with --json and returns its exit code and report.
func pushApply(t *testing.T, args ...string) (int, pushApplyReport, string) {
	t.Helper()
	r := run(t, nil, append(args, "--json")...)
	var rep []pushApplyReport
	decodeJSON(t, r.stdout, &rep)
	if len(rep) != 1 {
		t.Fatalf("push --json gave %d results: %s", len(rep), r.stdout)
	}
	return r.code, rep[0], r.stderr
}

// setStandby changes the standby state of set in the repository in dir.
func setStandby(t *testing.T, dir, set string, fn func(*index.StandbyState)) {
	t.Helper()
	r, err := chunkstore.Open(dir, chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: "test", Wait: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Index().UpdateStandby(set, func(st *index.StandbyState) error { fn(st); return nil }); err != nil {
		t.Fatal(err)
	}
}

// snapshotTime returns the time of snapshot id in the repository in dir.
func snapshotTime(t *testing.T, dir, id string) time.Time {
	t.Helper()
	var l []struct {
		ID   string    `json:"id"`
		Time time.Time `json:"time"`
	}
	decodeJSON(t, runOK(t, "-r", dir, "snapshots", "--json"), &l)
	for _, s := range l {
		if s.ID == id {
			return s.Time
		}
	}
	t.Fatalf("snapshot %s is not in %s", id, dir)
	return time.Time{}
}

func isEmptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("%s was written: %d entries, first %s", dir, len(ents), ents[0].Name())
	}
}

// TestPushApplyLocal: push --apply to a local standby (whose serve push
// starts with --allow-target itself) applies the snapshot; a held set is
// refused with exit 4 and the target left alone, the snapshot stored; an
// apply delay makes it wait; then it applies, then it is up to date.
func TestPushApplyLocal(t *testing.T) {
	base := t.TempDir()
	src, standby, tree, target := filepath.Join(base, "src"), filepath.Join(base, "standby"), filepath.Join(base, "tree"), filepath.Join(base, "target")
	runOK(t, "-r", src, "init")
	runOK(t, "-r", standby, "init")
	writeFiles(t, tree, map[string]string{"etc/hosts": "127.0.0.1 localhost\n", "usr/bin/tool": strings.Repeat("binary ", 5000)})
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	runOK(t, "-r", src, "snapshot", tree)
	first := listSnapshots(t, src)[0].ID
	push := []string{"-r", src, "push", "--to", standby, "--apply", "--target", target}

	for _, args := range [][]string{
		{"-r", src, "push", "--to", standby, "--apply"},
		{"-r", src, "push", "--to", standby, "--target", target},
		{"-r", src, "push", "--to", "ssh://standby.example/r", "--apply", "--target", "relative/dir"},
	} {
		if r := run(t, nil, args...); r.code != exitUsage || !strings.Contains(r.stderr, "--target") {
			t.Errorf("%v: exit %d, want %d and a word on --target\nstderr: %s", args, r.code, exitUsage, r.stderr)
		}
	}

	code, rep, stderr := pushApply(t, push...)
	if code != 0 || len(rep.Apply) != 1 {
		t.Fatalf("push --apply: exit %d, %+v\nstderr: %s", code, rep, stderr)
	}
	if a := rep.Apply[0]; a.Status != "applied" || a.Snapshot != first || a.Set != "default" || a.Target != target || a.Stats == nil || a.Stats.Created == 0 {
		t.Errorf("apply reply %+v, want snapshot %s applied to %s", a, first, target)
	}
	runOK(t, "-r", standby, "verify", "--target", target)

	// Held: the next snapshot is stored, not applied.
	setStandby(t, standby, "default", func(st *index.StandbyState) { st.Held = time.Now() })
	writeFiles(t, tree, map[string]string{"etc/hosts": "10.0.0.1 changed\n"})
	runOK(t, "-r", src, "snapshot", tree)
	second := listSnapshots(t, src)[1].ID
	r := run(t, nil, push...)
	want := fmt.Sprintf("%s: snapshot %s stored; not applied: ", standby, second[:8])
	if r.code != exitRefused || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "held") {
		t.Fatalf("push --apply to a held set: exit %d, want %d and %q…held\nstdout: %s\nstderr: %s", r.code, exitRefused, want, r.stdout, r.stderr)
	}
	t.Logf("held: %s", r.stderr)
	sameSnapshots(t, src, standby)
	runOK(t, "-r", standby, "verify", "--target", target, first)
	if got, _ := os.ReadFile(filepath.Join(target, tree, "etc/hosts")); string(got) != "127.0.0.1 localhost\n" {
		t.Errorf("the held target changed: %q", got)
	}

	// Released, with an apply delay: waiting, until the second snapshot is
	// an hour old.
	setStandby(t, standby, "default", func(st *index.StandbyState) { st.Held, st.ApplyDelay = time.Time{}, "1h" })
	code, rep, stderr = pushApply(t, push...)
	if code != 0 || len(rep.Apply) != 1 {
		t.Fatalf("push --apply with a delay: exit %d, %+v\nstderr: %s", code, rep, stderr)
	}
	due := snapshotTime(t, standby, second).Add(time.Hour)
	if a := rep.Apply[0]; a.Status != "waiting" || a.Snapshot != second || !a.DueAt.Equal(due) {
		t.Errorf("apply reply %+v, want snapshot %s waiting until %v", a, second, due)
	}
	r = run(t, nil, push...)
	if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("%s: stored; apply waiting: snapshot %s is due at %s", standby, second[:8], due.Local().Format(time.RFC3339))) {
		t.Errorf("push --apply with a delay: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	runOK(t, "-r", standby, "verify", "--target", target, first)

	// No delay: applied, then up to date.
	setStandby(t, standby, "default", func(st *index.StandbyState) { st.ApplyDelay = "" })
	r = run(t, nil, push...)
	if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("%s: applied snapshot %s to %s (", standby, second[:8], target)) {
		t.Fatalf("push --apply: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	runOK(t, "-r", standby, "verify", "--target", target)
	r = run(t, nil, push...)
	if r.code != 0 || !strings.Contains(r.stdout, standby+": up to date\n") {
		t.Errorf("push --apply again: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
}

// TestPushApplyOverSSH: over a real sshd, a forced command with
// --allow-target DIR applies to DIR; one without it stores the snapshot but
// refuses the apply (exit 4), and DIR stays empty.
func TestPushApplyOverSSH(t *testing.T) {
	base := t.TempDir()
	src, tree := filepath.Join(base, "src"), filepath.Join(base, "tree")
	allowing, confined := filepath.Join(base, "allowing"), filepath.Join(base, "confined")
	target, target2 := filepath.Join(base, "target"), filepath.Join(base, "target2")
	s := sshdtest.Start(t)
	for _, r := range []string{src, allowing, confined} {
		runOK(t, "-r", r, "init")
	}
	for _, d := range []string{target, target2} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFiles(t, tree, map[string]string{"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n", "etc/motd": "standby\n", "var/lib/data": strings.Repeat("d", 100000)})
	runOK(t, "-r", src, "snapshot", tree)
	id := listSnapshots(t, src)[0].ID

	s.Authorize(fmt.Sprintf(`command="%s serve --allow-target %s --repo %s",restrict %s`, binary, target, allowing, s.ClientPub))
	r := run(t, nil, append([]string{"-r", src, "push", "--to", s.URL(allowing), "--apply", "--target", target}, sshFlags(s)...)...)
	if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("%s: applied snapshot %s to %s (", s.URL(allowing), id[:8], target)) {
		t.Fatalf("push --apply over ssh: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	runOK(t, "-r", allowing, "verify", "--target", target)

	s.Authorize(forcedCommand(s.ClientPub, confined))
	r = run(t, nil, append([]string{"-r", src, "push", "--to", s.URL(confined), "--apply", "--target", target2}, sshFlags(s)...)...)
	want := fmt.Sprintf("%s: snapshot %s stored; not applied: serve does not allow applying to %s: add --allow-target %s to its command", s.URL(confined), id[:8], target2, target2)
	if r.code != exitRefused || !strings.Contains(r.stderr, want) {
		t.Fatalf("push --apply to a serve without --allow-target: exit %d, want %d and %q\nstdout: %s\nstderr: %s", r.code, exitRefused, want, r.stdout, r.stderr)
	}
	t.Logf("not allowed:\n%s%s", r.stdout, r.stderr)
	sameSnapshots(t, src, confined)
	runOK(t, "-r", confined, "check", "--read-data")
	isEmptyDir(t, target2)
}

// TestAutoReply: every outcome of the automatic apply maps to its reply,
// and only a hard failure stays an error.
func TestAutoReply(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "repo")
	runOK(t, "-r", dir, "init")
	r, err := chunkstore.Open(dir, chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	id, older := index.Hash([]byte("snap")), index.Hash([]byte("older"))
	due := time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := r.Index().UpdateStandby("os", func(st *index.StandbyState) error {
		st.Targets = map[string]*index.TargetState{"/live": {Applied: older}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	applied := &restore.AutoResult{Applied: &restore.ApplyResult{Snapshot: id, Stats: &restore.ApplyStats{Created: 2, Warnings: 1}}}
	for _, c := range []struct {
		name   string
		target string
		res    *restore.AutoResult
		err    error
		want   usync.ApplyReply
		hard   bool
	}{
		{name: "applied", res: applied, want: usync.ApplyReply{Status: usync.ApplyApplied, Snapshot: id}},
		{name: "incomplete", res: applied, err: fmt.Errorf("%w: 1 problems, each reported above", restore.ErrIncomplete),
			want: usync.ApplyReply{Status: usync.ApplyIncomplete, Snapshot: id, Error: "restore incomplete: 1 problems, each reported above"}},
		{name: "incomplete without a result", err: restore.ErrIncomplete, hard: true},
		{name: "refused", err: fmt.Errorf("auto: %w", &restore.Refused{Set: "os", Snapshot: id, Reasons: []string{"held"}}),
			want: usync.ApplyReply{Status: usync.ApplyRefused, Snapshot: id, Reasons: []string{"held"}}},
		{name: "failed", res: applied, err: errors.New("disk on fire"), hard: true},
		{name: "waiting", res: &restore.AutoResult{Waiting: id, DueAt: due}, want: usync.ApplyReply{Status: usync.ApplyWaiting, Snapshot: id, DueAt: due}},
		{name: "up to date", target: "/live/", res: &restore.AutoResult{UpToDate: true}, want: usync.ApplyReply{Status: usync.ApplyUpToDate, Snapshot: older}},
		{name: "up to date, new target", target: "/other", res: &restore.AutoResult{UpToDate: true}, want: usync.ApplyReply{Status: usync.ApplyUpToDate}},
	} {
		target := cmp.Or(c.target, "/live")
		got, err := autoReply(r.Index(), "os", target, c.res, c.err)
		if c.hard {
			if err == nil {
				t.Errorf("%s: reply %+v, want an error", c.name, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		stats := got.Stats
		got.Stats = nil
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%s: reply %+v, want %+v", c.name, got, c.want)
		}
		if wantStats := c.want.Status == usync.ApplyApplied || c.want.Status == usync.ApplyIncomplete; wantStats != (len(stats) > 0) ||
			wantStats && !strings.Contains(string(stats), `"created":2`) {
			t.Errorf("%s: stats %s", c.name, stats)
		}
	}
}

// TestPushApplyOverSSHIntoASwappedDirectory: between two pushes, someone
// with access to the standby replaces a directory of its live tree with a
// symlink to a directory outside it. The second push --apply, through a
// confined serve, replaces the symlink with the snapshot's directory and
// writes, chmods, chowns and deletes nothing outside the target.
func TestPushApplyOverSSHIntoASwappedDirectory(t *testing.T) {
	base := t.TempDir()
	src, tree, standby := filepath.Join(base, "src"), filepath.Join(base, "tree"), filepath.Join(base, "standby")
	target, outside := filepath.Join(base, "target"), filepath.Join(base, "outside")
	s := sshdtest.Start(t)
	runOK(t, "-r", src, "init")
	runOK(t, "-r", standby, "init")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"srv/www/index.html": "version 1\n",
		"srv/www/old.html":   "deleted by the second snapshot\n",
	}
	for i := range 40 { // enough unchanged files to keep under the mass-change guard
		files[fmt.Sprintf("var/lib/%02d", i)] = fmt.Sprintf("unchanged %d\n", i)
	}
	writeFiles(t, tree, files)
	runOK(t, "-r", src, "snapshot", "--root", tree, "/srv", "/var")
	s.Authorize(fmt.Sprintf(`command="%s serve --allow-target %s --repo %s",restrict %s`, binary, target, standby, s.ClientPub))
	push := append([]string{"-r", src, "push", "--to", s.URL(standby), "--apply", "--target", target}, sshFlags(s)...)
	runOK(t, push...)

	// The same names outside, so that a followed symlink would find
	// every file the apply means to replace or delete.
	writeFiles(t, outside, map[string]string{"index.html": "outside, not to be touched\n", "old.html": "outside too\n", "mine": "kept\n"})
	if err := os.Chmod(outside, 0o700); err != nil {
		t.Fatal(err)
	}
	before := treeState(t, base, src, standby, target, tree)
	ctimes := map[string]unix.Timespec{}
	for p := range before {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		ctimes[p] = st.Ctim
	}
	www := filepath.Join(target, "srv/www")
	if err := os.RemoveAll(www); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, www); err != nil {
		t.Fatal(err)
	}

	writeFiles(t, tree, map[string]string{"srv/www/index.html": "version 2\n", "srv/www/new.html": "added\n"})
	if err := os.Remove(filepath.Join(tree, "srv/www/old.html")); err != nil {
		t.Fatal(err)
	}
	runOK(t, "-r", src, "snapshot", "--root", tree, "/srv", "/var")
	r := run(t, nil, push...)
	if r.code != 0 {
		t.Errorf("the second push --apply: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}

	sameTreeState(t, before, treeState(t, base, src, standby, target, tree))
	for p, c := range ctimes {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err == nil && st.Ctim != c {
			t.Errorf("%s outside the target had its inode changed (ctime %v, was %v)", p, st.Ctim, c)
		}
	}
	if fi, err := os.Lstat(www); err != nil || !fi.IsDir() {
		t.Errorf("%s after the apply: %v, %v; want the snapshot's directory", www, fi, err)
	}
	// A full comparison: the symlink's replacement is the snapshot's
	// directory with its content, and nothing else differs.
	runOK(t, "-r", standby, "verify", "--target", target)
}
