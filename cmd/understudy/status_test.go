package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
)

// statusOf runs status --json with args and returns the set named set.
func statusOf(t *testing.T, set string, args ...string) setStatus {
	t.Helper()
	var sets []setStatus
	decodeJSON(t, runOK(t, append(args, "--json", "status")...), &sets)
	for _, ss := range sets {
		if ss.Set == set {
			return ss
		}
	}
	t.Fatalf("status lists no set %s: %+v", set, sets)
	return setStatus{}
}

// TestStatusShowsPushes pushes to a local standby and reads back, with
// status, the snapshot pushed, the snapshots not pushed yet, the error of
// a push that failed (the standby's repository removed), its clearing by
// the next push, and the standbys of the configuration file by name.
func TestStatusShowsPushes(t *testing.T) {
	base := t.TempDir()
	src, standby, tree := filepath.Join(base, "src"), filepath.Join(base, "standby"), filepath.Join(base, "tree")
	runOK(t, "-r", src, "init")
	runOK(t, "-r", standby, "init")
	writeFiles(t, tree, map[string]string{"etc/passwd": "root:x:0:0::/root:/bin/sh\n"})
	noConfig := []string{"-c", "", "-r", src}

	runOK(t, "-r", src, "snapshot", "--set", "os", tree)
	first := listSnapshots(t, src)[0].ID
	before := time.Now().Add(-time.Second)
	runOK(t, "-r", src, "push", "--to", standby)
	ss := statusOf(t, "os", noConfig...)
	if len(ss.Standbys) != 1 {
		t.Fatalf("standbys after one push: %+v", ss.Standbys)
	}
	sb := ss.Standbys[0]
	if sb.Standby != standby || sb.Dest != standby || sb.Pushed.String() != first || sb.Unpushed != 0 || sb.LastError != "" ||
		sb.PushedAt.Before(before) || sb.PushedAt.After(time.Now()) || !sb.PushedTime.Equal(ss.LatestTime) || sb.LagSeconds <= 0 {
		t.Fatalf("after a push of %s: %+v", first, sb)
	}

	writeFiles(t, tree, map[string]string{"etc/passwd": "changed\n"})
	runOK(t, "-r", src, "snapshot", "--set", "os", tree)
	second := listSnapshots(t, src)[1].ID
	if sb := statusOf(t, "os", noConfig...).Standbys[0]; sb.Pushed.String() != first || sb.Unpushed != 1 {
		t.Fatalf("a snapshot later, not pushed: %+v", sb)
	}

	// A push to a standby whose repository is gone fails, and says so.
	if err := os.RemoveAll(standby); err != nil {
		t.Fatal(err)
	}
	r := run(t, nil, "-r", src, "push", "--to", standby)
	if r.code != exitError {
		t.Fatalf("push to a removed repository: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stderr, "warning") {
		t.Fatalf("the failed push was not recorded:\n%s", r.stderr)
	}
	sb = statusOf(t, "os", noConfig...).Standbys[0]
	if sb.Pushed.String() != first || sb.LastError == "" || sb.LastErrorAt.IsZero() || sb.Unpushed != 1 {
		t.Fatalf("after a failed push: %+v", sb)
	}
	text := runOK(t, append(noConfig, "status")...)
	for _, want := range []string{
		fmt.Sprintf("standby %s: pushed %s at ", standby, first[:8]),
		"1 newer snapshots not pushed",
		"last push FAILED at ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("status lacks %q:\n%s", want, text)
		}
	}

	// The standby is back: the next push clears the error.
	runOK(t, "-r", standby, "init")
	runOK(t, "-r", src, "push", "--to", standby)
	sb = statusOf(t, "os", noConfig...).Standbys[0]
	if sb.Pushed.String() != second || sb.LastError != "" || sb.Unpushed != 0 {
		t.Fatalf("after the standby came back: %+v", sb)
	}

	// With a configuration file, the set's standbys are listed by name,
	// the one never pushed to as well.
	cfg := filepath.Join(base, "understudy.toml")
	conf := fmt.Sprintf(`repo = %q
[standby.dr]
url = %q
[standby.far]
url = "ssh://root@far.example/var/lib/understudy/repo"
[set.os]
paths = ["/etc"]
to = ["dr", "far"]
`, src, standby+"/")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	ss = statusOf(t, "os", "-c", cfg)
	if len(ss.Standbys) != 2 || ss.Standbys[0].Standby != "dr" || ss.Standbys[0].Dest != standby || ss.Standbys[0].Pushed.String() != second ||
		ss.Standbys[1].Standby != "far" || !ss.Standbys[1].Pushed.IsZero() || ss.Standbys[1].Unpushed != 2 {
		t.Fatalf("standbys by name: %+v", ss.Standbys)
	}
	text = runOK(t, "-c", cfg, "status")
	for _, want := range []string{
		fmt.Sprintf("standby dr (%s): pushed %s", standby, second[:8]),
		"standby far (ssh://root@far.example/var/lib/understudy/repo): never pushed",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("status lacks %q:\n%s", want, text)
		}
	}

	// What run records: the outcome of the set's last run, and a push
	// recorded under the standby's name, which status merges with the
	// one under its URL: the later failure shows.
	failedAt := time.Now().UTC().Truncate(time.Second).Add(time.Minute)
	repo, err := chunkstore.Open(src, chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: "test"})
	if err != nil {
		t.Fatal(err)
	}
	err = repo.Index().UpdatePrimary("os", func(st *index.PrimaryState) error {
		st.LastRun, st.LastRunError, st.LastRunRefused = failedAt, "check \"disk group imported\" failed: exit status 1", true
		st.Push("dr", standby).Failed("connection refused", failedAt)
		return nil
	})
	repo.Close()
	if err != nil {
		t.Fatal(err)
	}
	metrics := filepath.Join(base, "understudy.prom")
	var sets []setStatus
	decodeJSON(t, runOK(t, "-c", cfg, "--json", "status", "--metrics", metrics), &sets)
	if len(sets) != 1 {
		t.Fatalf("status: %+v", sets)
	}
	ss = sets[0]
	if !ss.LastRun.Equal(failedAt) || !ss.LastRunRefused || !strings.Contains(ss.LastRunError, "disk group") {
		t.Errorf("last run: %+v", ss)
	}
	if len(ss.Standbys) != 2 || ss.Standbys[0].Pushed.String() != second || ss.Standbys[0].LastError != "connection refused" {
		t.Errorf("dr, recorded under its name and its URL: %+v", ss.Standbys)
	}
	prom, err := os.ReadFile(metrics)
	if err != nil {
		t.Fatal(err)
	}
	checkExposition(t, string(prom))
	for _, want := range []string{
		fmt.Sprintf("understudy_last_run_timestamp_seconds{set=\"os\"} %d\n", failedAt.Unix()),
		"understudy_run_error{set=\"os\"} 0\n",
		"understudy_run_refused{set=\"os\"} 1\n",
		fmt.Sprintf("understudy_last_push_timestamp_seconds{set=\"os\",standby=\"dr\"} %d\n", ss.Standbys[0].PushedAt.Unix()),
		fmt.Sprintf("understudy_pushed_snapshot_timestamp_seconds{set=\"os\",standby=\"dr\"} %d\n", ss.Standbys[0].PushedTime.Unix()),
		"understudy_push_error{set=\"os\",standby=\"dr\"} 1\n",
		"understudy_push_error{set=\"os\",standby=\"far\"} 0\n",
		"# TYPE understudy_push_error gauge\n",
	} {
		if !strings.Contains(string(prom), want) {
			t.Errorf("metrics lack %q:\n%s", want, prom)
		}
	}
	if strings.Contains(string(prom), `understudy_last_push_timestamp_seconds{set="os",standby="far"}`) {
		t.Errorf("a timestamp for a standby never pushed to:\n%s", prom)
	}
	text = runOK(t, "-c", cfg, "status")
	for _, want := range []string{"last run at ", ": REFUSED\n", "    check \"disk group imported\" failed", "last push FAILED at "} {
		if !strings.Contains(text, want) {
			t.Errorf("status lacks %q:\n%s", want, text)
		}
	}
}

// TestMergePushes: outcomes recorded under two keys replay in time order.
func TestMergePushes(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 6, 0, 0, 0, time.UTC)
	older, newer := index.Hash([]byte("older")), index.Hash([]byte("newer"))
	byName := index.PushState{Dest: "/s", Snapshot: older, SnapshotTime: t0, At: t0.Add(time.Minute)}
	byDest := index.PushState{Dest: "/s", Snapshot: newer, SnapshotTime: t0.Add(time.Hour), At: t0.Add(61 * time.Minute)}
	m := mergePushes([]index.PushState{byName, byDest})
	if m.Snapshot != newer || !m.At.Equal(byDest.At) || m.LastError != "" {
		t.Errorf("two successes: %+v", m)
	}
	// byName failed after byDest's success: the failure shows, and the
	// newest snapshot pushed stays.
	byName.Failed("refused: set os promoted", t0.Add(2*time.Hour))
	m = mergePushes([]index.PushState{byDest, byName})
	if m.Snapshot != newer || m.LastError != "refused: set os promoted" {
		t.Errorf("a later failure: %+v", m)
	}
	// A success after the failure clears it, even of an older snapshot.
	byDest.Pushed(older, t0, t0.Add(3*time.Hour))
	m = mergePushes([]index.PushState{byName, byDest})
	if m.Snapshot != newer || m.LastError != "" {
		t.Errorf("a success after the failure: %+v", m)
	}
}

// TestRecordPush: a push of several snapshots that failed part way
// records, per set, the newest snapshot committed and the error for a set
// with one that was not.
func TestRecordPush(t *testing.T) {
	idx, err := index.Open(filepath.Join(t.TempDir(), "index.db"), index.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer idx.Close()
	t0 := time.Date(2026, 12, 1, 6, 0, 0, 0, time.UTC)
	snap := func(name, set string, at time.Time) snapshot.Listed {
		return snapshot.Listed{ID: index.Hash([]byte(name)), Record: &snapshot.Record{Set: set, Time: at}}
	}
	// Given in this order; the newer snapshot of accounts first.
	snaps := []snapshot.Listed{
		snap("a2", "accounts", t0.Add(time.Hour)),
		snap("a1", "accounts", t0),
		snap("o1", "os", t0),
		snap("o2", "os", t0.Add(time.Hour)),
	}
	finished := t0.Add(2 * time.Hour)
	res := destResult{Dest: "/standby", Error: "snapshot o2: connection reset", committed: 3, finished: finished}
	if err := recordPush(idx, "dr", snaps, res); err != nil {
		t.Fatal(err)
	}
	states, err := idx.PrimaryStates()
	if err != nil {
		t.Fatal(err)
	}
	a, o := states["accounts"].Pushes["dr"], states["os"].Pushes["dr"]
	if a == nil || a.Snapshot != snaps[0].ID || !a.At.Equal(finished) || a.LastError != "" || a.Dest != "/standby" {
		t.Errorf("accounts, all committed: %+v", a)
	}
	if o == nil || o.Snapshot != snaps[2].ID || o.LastError != res.Error || !o.LastErrorAt.Equal(finished) {
		t.Errorf("os, o2 not committed: %+v", o)
	}
	// Nothing committed: a dial that failed.
	res = destResult{Dest: "/standby", Error: "dial: no such file", finished: finished.Add(time.Hour)}
	if err := recordPush(idx, "dr", snaps[:2], res); err != nil {
		t.Fatal(err)
	}
	st, err := idx.Primary("accounts")
	if err != nil {
		t.Fatal(err)
	}
	if a := st.Pushes["dr"]; a.Snapshot != snaps[0].ID || a.LastError != "dial: no such file" {
		t.Errorf("accounts after a failed dial: %+v", a)
	}
}

// holdRepo holds the repository's lock exclusively, as a writer does, with
// the text a writer leaves in the lock file, until release or the end of
// the test.
func holdRepo(t *testing.T, repo string) (release func()) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(repo, "lock"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		t.Fatal(err)
	}
	fmt.Fprintf(f, "pid %d (test hold since %s)\n", os.Getpid(), time.Now().Format("2006-01-02 15:04:05"))
	released := false
	release = func() {
		if !released {
			released = true
			f.Truncate(0)
			f.Close()
		}
	}
	t.Cleanup(release)
	return release
}

// busyStatus runs status with args while the repository is held and
// returns its output; it must exit 0 and say on stderr that it shows the
// saved state.
func busyStatus(t *testing.T, args ...string) (stdout, stderr string) {
	t.Helper()
	r := run(t, nil, append(args, "status")...)
	holder := fmt.Sprintf("understudy: repository busy: pid %d (test hold since ", os.Getpid())
	if r.code != 0 || !strings.HasPrefix(r.stderr, holder) || !strings.Contains(r.stderr, "; showing the state as of ") {
		t.Fatalf("status %s while busy: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout, r.stderr
}

// checkExposition checks the text format's rules that collectors rely on:
// each family's HELP and TYPE lines come first, then all its samples in one
// group, every sample a name of the family, optional labels and a number.
func checkExposition(t *testing.T, text string) {
	t.Helper()
	sample := regexp.MustCompile(`^([a-z_]+)(\{[a-z_]+="(?:[^"\\]|\\.)*"(?:,[a-z_]+="(?:[^"\\]|\\.)*")*\})? (\S+)$`)
	done := map[string]bool{}
	cur := ""
	for i, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		switch {
		case strings.HasPrefix(line, "# HELP "):
			name := strings.Fields(line)[2]
			if done[name] || name == cur {
				t.Errorf("line %d: family %s seen before", i+1, name)
			}
			if cur != "" {
				done[cur] = true
			}
			cur = name
		case strings.HasPrefix(line, "# TYPE "):
			if f := strings.Fields(line); len(f) != 4 || f[2] != cur || f[3] != "gauge" {
				t.Errorf("line %d: %q is not the TYPE of %s", i+1, line, cur)
			}
		default:
			m := sample.FindStringSubmatch(line)
			if m == nil {
				t.Errorf("line %d: not a sample: %q", i+1, line)
				continue
			}
			if m[1] != cur {
				t.Errorf("line %d: a sample of %s inside family %s", i+1, m[1], cur)
			}
			if _, err := strconv.ParseFloat(m[3], 64); err != nil {
				t.Errorf("line %d: value %q", i+1, m[3])
			}
		}
	}
}

// metricValue returns the value of the sample name (with its labels) in
// a metrics file.
func metricValue(t *testing.T, file, name string) float64 {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s lacks %s:\n%s", file, name, b)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestStatusWhileBusy: while a writer holds the repository, status shows
// the state the last writer saved in status.json (exit 0, as_of, the busy
// gauges), with lags counted to now; without status.json it fails naming
// the holder. init saves none; snapshot, apply and push do.
func TestStatusWhileBusy(t *testing.T) {
	base := t.TempDir()
	repo, standby := filepath.Join(base, "repo"), filepath.Join(base, "standby")
	root, target := filepath.Join(base, "root"), filepath.Join(base, "target")
	runOK(t, "-r", repo, "init")
	runOK(t, "-r", standby, "init")
	writeFiles(t, root, map[string]string{"srv/a": "a\n", "srv/b": "b\n"})
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"-c", "", "-r", repo}
	cache := filepath.Join(repo, "status.json")

	if _, err := os.Stat(cache); !os.IsNotExist(err) {
		t.Fatalf("init left a status.json: %v", err)
	}
	release := holdRepo(t, repo)
	r := run(t, nil, append(args, "--json", "status")...)
	if r.code != exitError || r.stdout != "" || !strings.Contains(r.stderr, fmt.Sprintf("locked by pid %d (test hold since ", os.Getpid())) ||
		!strings.Contains(r.stderr, "retry when it is done") {
		t.Fatalf("busy status without status.json: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	release()

	runOK(t, append(args, "snapshot", "--set", "os", "--root", root, "/srv")...)
	fi, err := os.Stat(cache)
	if err != nil {
		t.Fatalf("snapshot left no status.json: %v", err)
	}
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("status.json mode %v, want 0640", fi.Mode().Perm())
	}
	runOK(t, append(args, "apply", "--set", "os", "--target", target)...)
	runOK(t, append(args, "push", "--to", standby)...)
	if _, err := os.Stat(cache + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("a temporary file is left: %v", err)
	}
	live := statusOf(t, "os", args...)
	if !live.AsOf.IsZero() || len(live.Targets) != 1 || live.Targets[0].Applied.IsZero() || len(live.Standbys) != 1 || live.Standbys[0].Pushed.IsZero() {
		t.Fatalf("live status: %+v", live)
	}
	metrics := filepath.Join(base, "understudy.prom")
	runOK(t, append(args, "status", "--metrics", metrics)...)
	if busy, age := metricValue(t, metrics, "understudy_repository_busy"), metricValue(t, metrics, "understudy_status_age_seconds"); busy != 0 || age != 0 {
		t.Errorf("live: understudy_repository_busy %v, understudy_status_age_seconds %v", busy, age)
	}

	// Another writer came and went: the saved state is the latest.
	writeFiles(t, root, map[string]string{"srv/a": "changed\n"})
	runOK(t, append(args, "snapshot", "--set", "os", "--root", root, "/srv")...)
	live = statusOf(t, "os", args...)
	saved := time.Now()
	holdRepo(t, repo)

	var sets []setStatus
	stdout, _ := busyStatus(t, append(args, "--json")...)
	decodeJSON(t, stdout, &sets)
	if len(sets) != 1 {
		t.Fatalf("busy status --json: %s", stdout)
	}
	first := sets[0]
	sets = nil
	if first.AsOf.IsZero() || first.AsOf.After(saved) || first.Latest != live.Latest || first.Snapshots != 2 ||
		len(first.Targets) != 1 || first.Targets[0].Applied != live.Targets[0].Applied ||
		len(first.Standbys) != 1 || first.Standbys[0].Pushed != live.Standbys[0].Pushed || first.Standbys[0].Unpushed != 1 {
		t.Fatalf("busy status, live was %+v: %+v", live, first)
	}

	// Lags count to now, not to when the state was saved.
	time.Sleep(1100 * time.Millisecond)
	before := time.Now()
	stdout, _ = busyStatus(t, append(args, "--json", "--metrics", metrics)...)
	decodeJSON(t, stdout, &sets)
	second := sets[0]
	if !second.AsOf.Equal(first.AsOf) {
		t.Errorf("as_of changed while busy: %v then %v", first.AsOf, second.AsOf)
	}
	for _, lag := range []struct {
		what          string
		first, second float64
		of            time.Time
	}{
		{"target", first.Targets[0].LagSeconds, second.Targets[0].LagSeconds, second.Targets[0].AppliedTime},
		{"standby", first.Standbys[0].LagSeconds, second.Standbys[0].LagSeconds, second.Standbys[0].PushedTime},
	} {
		if lag.second-lag.first < 1.1 || lag.second < before.Sub(lag.of).Seconds() {
			t.Errorf("%s lag %.3f s, then %.3f s 1.1 s later; its snapshot is %v old", lag.what, lag.first, lag.second, before.Sub(lag.of))
		}
	}
	if busy := metricValue(t, metrics, "understudy_repository_busy"); busy != 1 {
		t.Errorf("understudy_repository_busy %v, want 1", busy)
	}
	if age := metricValue(t, metrics, "understudy_status_age_seconds"); age < 1 || age > time.Since(saved).Seconds()+1 {
		t.Errorf("understudy_status_age_seconds %v; saved %v ago", age, time.Since(saved))
	}
	lagName := `understudy_apply_lag_seconds{set="os",target="` + target + `"}`
	if lag := metricValue(t, metrics, lagName); lag < before.Sub(second.Targets[0].AppliedTime).Seconds()-1 {
		t.Errorf("%s %v, the snapshot is %v old", lagName, lag, before.Sub(second.Targets[0].AppliedTime))
	}

	// Text, and -q without the notice.
	stdout, _ = busyStatus(t, args...)
	if !strings.Contains(stdout, "set os: 2 snapshots, latest "+live.Latest.Short()) {
		t.Errorf("busy status text:\n%s", stdout)
	}
	if r := run(t, nil, append(args, "-q", "status")...); r.code != 0 || r.stderr != "" || r.stdout != stdout {
		t.Errorf("status -q while busy: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}

	// A status.json that cannot be read is no state to show.
	if err := os.WriteFile(cache, []byte("{\"version\": 1, \"made\": "), 0o640); err != nil {
		t.Fatal(err)
	}
	if r := run(t, nil, append(args, "status")...); r.code != exitError || !strings.Contains(r.stderr, "status.json") || !strings.Contains(r.stderr, "retry") {
		t.Errorf("busy status with a broken status.json: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
}

// TestStatusWhileRunning: run saves the status after each set, so status
// shows the first set's run while the second set's check still holds the
// repository.
func TestStatusWhileRunning(t *testing.T) {
	base := t.TempDir()
	repo, tree, gate := filepath.Join(base, "repo"), filepath.Join(base, "tree"), filepath.Join(base, "gate")
	runOK(t, "-r", repo, "init")
	writeFiles(t, tree, map[string]string{"a/f": "a\n", "b/f": "b\n"})
	conf := filepath.Join(base, "understudy.toml")
	body := fmt.Sprintf(`repo = %q
log_file = %q

[[check]]
name = "gate open for b"
command = ["sh", "-c", "[ \"$UNDERSTUDY_SET\" != b ] || while [ ! -e %s ]; do sleep 0.05; done"]
timeout = "1m"

[set.a]
paths = [%q]

[set.b]
paths = [%q]
`, repo, filepath.Join(base, "understudy.log"), gate, filepath.Join(tree, "a"), filepath.Join(tree, "b"))
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startBinary(t, "-c", conf, "run")
	defer func() {
		if !p.exited() {
			p.cmd.Process.Kill()
			<-p.done
		}
	}()

	// Before run takes the repository status reads it; until a is done
	// there is no state to show; then it shows a's run.
	var sets []setStatus
	for deadline := time.Now().Add(30 * time.Second); ; {
		r := run(t, nil, "-c", conf, "--json", "status")
		if r.code == 0 {
			sets = nil
			decodeJSON(t, r.stdout, &sets)
			if len(sets) > 0 && !sets[0].AsOf.IsZero() {
				break
			}
		} else if !strings.Contains(r.stderr, "is locked by pid ") {
			t.Fatalf("status during the run: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
		}
		if time.Now().After(deadline) || p.exited() {
			t.Fatalf("status during the run: exit %d\nstdout: %s\nstderr: %s\nrun: %s", r.code, r.stdout, r.stderr, p.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if p.exited() {
		t.Fatalf("run ended before b's gate opened: %s", p.stderr.String())
	}
	if len(sets) != 2 || sets[0].Set != "a" || sets[0].AsOf.IsZero() || sets[0].LastRun.IsZero() || sets[0].Snapshots != 1 ||
		sets[1].Set != "b" || !sets[1].LastRun.IsZero() || sets[1].Snapshots != 0 {
		t.Fatalf("status while b waits: %+v", sets)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t); code != 0 {
		t.Fatalf("run: exit %d: %s", code, p.stderr.String())
	}
	sets = nil
	decodeJSON(t, runOK(t, "-c", conf, "--json", "status"), &sets)
	if len(sets) != 2 || !sets[0].AsOf.IsZero() || sets[1].LastRun.IsZero() || sets[1].Snapshots != 1 {
		t.Fatalf("status after the run: %+v", sets)
	}
}

func TestPendingAndFirstDue(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	times := []time.Time{t0, t0.Add(time.Hour), t0.Add(2 * time.Hour), t0.Add(3 * time.Hour)}
	for _, tc := range []struct {
		applied time.Time
		none    bool
		delay   string
		n       int
		due     time.Time
	}{
		{none: true, n: 4},
		{none: true, delay: "4h", n: 4, due: t0.Add(4 * time.Hour)},
		{applied: t0.Add(time.Hour), delay: "4h", n: 2, due: t0.Add(6 * time.Hour)},
		{applied: t0.Add(time.Hour), n: 2},
		{applied: t0.Add(3 * time.Hour), delay: "4h", n: 0},
		{applied: t0.Add(90 * time.Minute), delay: "30m", n: 2, due: t0.Add(150 * time.Minute)},
	} {
		n, due := pending(times, tc.applied, tc.none, tc.delay)
		if n != tc.n || !due.Equal(tc.due) {
			t.Errorf("pending(applied %v, none %v, delay %q) = %d, %v; want %d, %v", tc.applied, tc.none, tc.delay, n, due, tc.n, tc.due)
		}
	}
}
