package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/snapshot/testtree"
	"github.com/understudy/understudy/sync/sshdtest"
)

// syslogSink is a syslog socket of the test's own (UNDERSTUDY_SYSLOG).
type syslogSink struct {
	addr string
	mu   sync.Mutex
	msgs []string
}

func startSyslog(t *testing.T) *syslogSink {
	t.Helper()
	path := filepath.Join(t.TempDir(), "log.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s := &syslogSink{addr: "unixgram:" + path}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.msgs = append(s.msgs, string(buf[:n]))
			s.mu.Unlock()
		}
	}()
	t.Setenv("UNDERSTUDY_SYSLOG", s.addr)
	return s
}

// waitFor returns the first message containing every one of parts,
// waiting up to d for it.
func (s *syslogSink) waitFor(t *testing.T, d time.Duration, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		s.mu.Lock()
		for _, m := range s.msgs {
			if containsAll(m, parts...) {
				s.mu.Unlock()
				return m
			}
		}
		all := strings.Join(s.msgs, "\n")
		s.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no syslog message with %q within %s; got:\n%s", parts, d, all)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// runJSON runs `run --json` with args and decodes its report.
func runReport(t *testing.T, wantCode int, args ...string) []setReport {
	t.Helper()
	r := run(t, nil, append([]string{"--json"}, args...)...)
	if r.code != wantCode {
		t.Fatalf("understudy --json %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, wantCode, r.stdout, r.stderr)
	}
	var reps []setReport
	decodeJSON(t, r.stdout, &reps)
	return reps
}

func TestRunChecksRolesLockAndSyslog(t *testing.T) {
	testtree.NeedRoot(t) // apply sets owners
	sink := startSyslog(t)
	base := t.TempDir()
	src, standby, live, tree := filepath.Join(base, "src"), filepath.Join(base, "standby"), filepath.Join(base, "live"), filepath.Join(base, "tree")
	runOK(t, "-r", src, "init")
	runOK(t, "-r", standby, "init")
	os.Mkdir(live, 0o755)
	writeFiles(t, tree, map[string]string{"etc/passwd": "root:x:0:0::/root:/bin/sh\n", "etc/group": "root:x:0:\n", "usr/bin/tool": "tool"})
	flag := filepath.Join(base, "closed")
	conf := filepath.Join(base, "understudy.toml")
	logFile := filepath.Join(base, "log", "understudy.log")
	writeConfig := func(repo string) {
		t.Helper()
		body := fmt.Sprintf(`repo = %q
log_file = %q
log_rotate = "size:1MiB"
syslog = true

[standby.dr]
url = %q
target = %q
apply = true

[[check]]
name = "gate open"
command = ["sh", "-c", "echo gate for $UNDERSTUDY_SET; test ! -e %s"]
timeout = "10s"

[set.accounts]
paths = [%q]
to = ["dr"]
keep = { last = 2 }

[set.os]
paths = [%q]
exclude = [%q]
to = ["dr"]
`, repo, logFile, standby, live, flag, tree+"/etc/", tree+"/", tree+"/etc/")
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeConfig(src)

	// Without --json the log is text; with it, JSON lines.
	out := runOK(t, "-c", conf, "run", "os")
	if !strings.HasPrefix(out, "ok       os in ") {
		t.Errorf("run report: %q", out)
	}
	logged, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	stamp := regexp.MustCompile(`^time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+`)
	for _, line := range strings.Split(strings.TrimSpace(string(logged)), "\n") {
		if !stamp.MatchString(line) {
			t.Errorf("log line without a timestamp: %q", line)
		}
	}
	if !strings.Contains(string(logged), `msg="snapshot saved" set=os`) {
		t.Errorf("log lacks the snapshot of os:\n%s", logged)
	}
	reps := runReport(t, exitOK, "-c", conf, "run")
	if len(reps) != 2 || reps[0].Set != "accounts" || reps[1].Set != "os" {
		t.Fatalf("report: %+v", reps)
	}
	for _, rep := range reps {
		if rep.Status != setOK || rep.Snapshot == nil || len(rep.Push) != 1 || rep.Push[0].Error != "" || len(rep.Push[0].Apply) != 1 {
			t.Fatalf("set %s: %+v", rep.Set, rep)
		}
		names := []string{}
		for _, c := range rep.Checks {
			names = append(names, c.Name)
		}
		if got := strings.Join(names, ","); got != "role-primary,reachable dr,role-primary dr,gate open" {
			t.Errorf("set %s checks: %s", rep.Set, got)
		}
	}
	if b, err := os.ReadFile(filepath.Join(live, tree, "etc/passwd")); err != nil || !strings.HasPrefix(string(b), "root:") {
		t.Fatalf("accounts not applied on the standby: %q %v", b, err)
	}
	// status on the primary: each set's last run and what dr has.
	var st []setStatus
	decodeJSON(t, runOK(t, "-c", conf, "--json", "status"), &st)
	for _, set := range st {
		want := *reps[0].Snapshot
		if set.Set == "os" {
			want = *reps[1].Snapshot
		}
		if set.LastRun.IsZero() || set.LastRunError != "" || len(set.Standbys) != 1 || set.Standbys[0].Standby != "dr" ||
			set.Standbys[0].Pushed != want || set.Standbys[0].Unpushed != 0 {
			t.Errorf("status of %s after the run: %+v", set.Set, set)
		}
	}
	logged, _ = os.ReadFile(logFile)
	lines := strings.Split(strings.TrimSpace(string(logged)), "\n")
	var entry struct {
		Time time.Time `json:"time"`
		Msg  string    `json:"msg"`
		Set  string    `json:"set"`
	}
	decodeJSON(t, lines[len(lines)-1], &entry)
	if entry.Time.IsZero() || entry.Msg != "run finished" || entry.Set != "os" {
		t.Errorf("last JSON log line: %s", lines[len(lines)-1])
	}

	// A failing check refuses the set: exit 4, its output in the report,
	// the log and syslog; no snapshot taken.
	os.WriteFile(flag, nil, 0o644)
	reps = runReport(t, exitRefused, "-c", conf, "run", "accounts")
	if reps[0].Status != setRefused || reps[0].Snapshot != nil || !strings.Contains(reps[0].Error, `check "gate open" failed`) {
		t.Fatalf("refused report: %+v", reps[0])
	}
	last := reps[0].Checks[len(reps[0].Checks)-1]
	if last.OK || last.Output != "gate for accounts" {
		t.Errorf("check report: %+v", last)
	}
	msg := sink.waitFor(t, 5*time.Second, "check failed", "gate open", "set=accounts")
	if !strings.HasPrefix(msg, "<11>") || !strings.Contains(msg, "understudy") {
		t.Errorf("syslog message not user.err with tag understudy: %q", msg)
	}
	os.Remove(flag)

	// Runs do not overlap: while the repository is held, run exits at once
	// naming the holder, unless --wait lets it wait.
	lf, err := os.OpenFile(filepath.Join(src, "lock"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	r := run(t, nil, "-c", conf, "run", "accounts")
	if r.code != exitError || !strings.Contains(r.stderr, "locked") || !strings.Contains(r.stderr, "--wait") {
		t.Fatalf("run while locked: exit %d, stderr %q", r.code, r.stderr)
	}
	p := startBinary(t, "-c", conf, "run", "--wait", "30s", "accounts")
	time.Sleep(500 * time.Millisecond)
	if p.exited() {
		t.Fatalf("run --wait did not wait: %s", p.stderr.String())
	}
	unix.Flock(int(lf.Fd()), unix.LOCK_UN)
	if code := p.wait(t); code != 0 {
		t.Fatalf("run --wait: exit %d: %s", code, p.stderr.String())
	}

	// The standby is not the set's primary: the same configuration run
	// there is refused by role-primary.
	writeConfig(standby)
	reps = runReport(t, exitRefused, "-c", conf, "run", "os")
	if c := reps[0].Checks[0]; c.Name != "role-primary" || c.OK || !strings.Contains(c.Error, "promote --set os") {
		t.Fatalf("role-primary on the standby: %+v", reps[0])
	}
	writeConfig(src)

	// The standby promoted for a set: the old primary's run is refused
	// before it takes a snapshot.
	runOK(t, "-r", standby, "promote", "--set", "os")
	reps = runReport(t, exitRefused, "-c", conf, "run", "os")
	if reps[0].Snapshot != nil || !strings.Contains(reps[0].Error, `"role-primary dr" failed`) || !strings.Contains(reps[0].Error, "promoted") {
		t.Fatalf("run against a promoted standby: %+v", reps[0])
	}
	sink.waitFor(t, 5*time.Second, "role-primary dr", "set=os")
	runOK(t, "-r", standby, "demote", "--set", "os")
	runReport(t, exitOK, "-c", conf, "run", "os")
}

// logRuns counts the finished runs of each set in the log.
func logRuns(t *testing.T, file string) map[string]int {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	n := map[string]int{}
	for _, m := range regexp.MustCompile(`msg="run finished" set=(\S+)`).FindAllStringSubmatch(string(b), -1) {
		n[m[1]]++
	}
	return n
}

func waitLog(t *testing.T, file string, d time.Duration, what string, ok func(log string) bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		b, _ := os.ReadFile(file)
		if ok(string(b)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("within %s, the log did not show %s:\n%s", d, what, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestDaemonTwoSetsOverSSH is the seed's hourly accounts set and daily OS
// set, at 1200 times the speed (an hour is 3 s), pushed and applied over a
// real sshd.
func TestDaemonTwoSetsOverSSH(t *testing.T) {
	testtree.NeedRoot(t)
	sink := startSyslog(t)
	base := t.TempDir()
	src, standby, live, tree := filepath.Join(base, "src"), filepath.Join(base, "standby"), filepath.Join(base, "live"), filepath.Join(base, "tree")
	s := sshdtest.Start(t)
	s.Authorize(fmt.Sprintf(`command="%s serve --repo %s --allow-target %s",restrict %s`, binary, standby, live, s.ClientPub))
	runOK(t, "-r", src, "init")
	runOK(t, "-r", standby, "init")
	os.Mkdir(live, 0o755)
	writeFiles(t, tree, map[string]string{"etc/passwd": "root:x:0:0::/root:/bin/sh\n", "etc/group": "root:x:0:\n", "usr/lib/os-release": "ID=test\n"})
	flag := filepath.Join(base, "closed")
	conf := filepath.Join(base, "understudy.toml")
	logFile := filepath.Join(base, "understudy.log")
	config := fmt.Sprintf(`repo = %q
log_file = %q
log_rotate = "size:4MiB"
syslog = true

[standby.dr]
url = %q
target = %q
apply = true
known_hosts = %q
identity = %q

[[check]]
name = "accounts gate"
command = ["sh", "-c", "test $UNDERSTUDY_SET != accounts || test ! -e %s"]

[set.accounts]
paths = [%q, %q]
every = "1h"
to = ["dr"]
keep = { hourly = 48, daily = 14 }

[set.os]
paths = [%q]
exclude = [%q]
every = "24h"
to = ["dr"]
keep = { daily = 30 }
`, src, logFile, s.URL(standby), live, s.KnownHosts, s.ClientKey, flag, tree+"/etc/passwd", tree+"/etc/group", tree+"/", tree+"/etc/")
	if err := os.WriteFile(conf, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startBinary(t, "-c", conf, "daemon", "--time-scale", "1200")
	defer func() {
		if !d.exited() {
			d.cmd.Process.Kill()
			<-d.done
		}
	}()

	// Both start at once (never ran, intervals); accounts then every 3 s,
	// os every 72 s, after this test.
	waitLog(t, logFile, 45*time.Second, "four runs of accounts", func(string) bool { return logRuns(t, logFile)["accounts"] >= 4 })
	n := logRuns(t, logFile)
	if n["os"] != 1 {
		t.Errorf("with accounts run %d times (every 3 s), os ran %d times, want 1 (every 72 s)", n["accounts"], n["os"])
	}
	// An interval counts from the start of the last run (or its end, when
	// it ran longer): never less than 3 s between two starts.
	b, _ := os.ReadFile(logFile)
	var starts []time.Time
	for _, m := range regexp.MustCompile(`time=(\S+) level=INFO msg="run started" set=accounts`).FindAllStringSubmatch(string(b), -1) {
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			t.Fatal(err)
		}
		starts = append(starts, at)
	}
	for i := 1; i < len(starts); i++ {
		if gap := starts[i].Sub(starts[i-1]); gap < 2900*time.Millisecond {
			t.Errorf("accounts runs %d and %d started %v apart, under its interval (3 s at this scale)", i, i+1, gap)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(live, tree, "usr/lib/os-release")); string(b) != "ID=test\n" {
		t.Errorf("os not applied on the standby: %q", b)
	}

	// A failing check stops its set, logged and in syslog; the daemon goes on.
	os.WriteFile(flag, nil, 0o644)
	sink.waitFor(t, 30*time.Second, "check failed", "accounts gate", "set=accounts")
	os.Remove(flag)

	// SIGHUP reloads: a new set runs.
	cfg2 := config + fmt.Sprintf("\n[set.extra]\npaths = [%q]\nevery = \"2h\"\nto = [\"dr\"]\n", tree+"/usr/")
	os.WriteFile(conf, []byte(cfg2), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, logFile, 30*time.Second, "a run of the new set", func(string) bool { return logRuns(t, logFile)["extra"] >= 1 })

	// SIGTERM: a clean stop.
	d.cmd.Process.Signal(syscall.SIGTERM)
	if code := d.wait(t); code != 0 {
		t.Fatalf("daemon exit %d after SIGTERM: %s", code, d.stderr.String())
	}
	logged, _ := os.ReadFile(logFile)
	if !strings.Contains(string(logged), "configuration reloaded") || !strings.Contains(string(logged), "daemon stopped") {
		t.Errorf("log lacks the reload or the stop:\n%s", logged)
	}
	stamp := regexp.MustCompile(`^time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+`)
	for _, line := range strings.Split(strings.TrimSpace(string(logged)), "\n") {
		if !stamp.MatchString(line) {
			t.Errorf("log line without a timestamp: %q", line)
		}
	}

	// The standby's status reports what is applied and its lag.
	var st []setStatus
	decodeJSON(t, runOK(t, "-r", standby, "--json", "status"), &st)
	seen := 0
	for _, set := range st {
		for _, tg := range set.Targets {
			if tg.Target == live && !tg.Applied.IsZero() && tg.LagSeconds >= 0 && !tg.AppliedTime.IsZero() {
				seen++
			}
		}
	}
	if seen != 3 {
		t.Errorf("status --json on the standby: %d sets applied to %s with a lag, want 3: %+v", seen, live, st)
	}
}

// TestRunStopsAfterTheStep: SIGTERM lets the step going on finish (a slow
// check here) and starts no other; the report says so.
func TestRunStopsAfterTheStep(t *testing.T) {
	base := t.TempDir()
	repo, tree := filepath.Join(base, "repo"), filepath.Join(base, "tree")
	runOK(t, "-r", repo, "init")
	writeFiles(t, tree, map[string]string{"f": "x"})
	logFile := filepath.Join(base, "understudy.log")
	conf := filepath.Join(base, "understudy.toml")
	body := fmt.Sprintf(`repo = %q
log_file = %q
log_rotate = "size:1MiB"

[[check]]
name = "slow"
command = ["sleep", "2"]

[set.a]
paths = [%q]

[set.b]
paths = [%q]
`, repo, logFile, tree, tree)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startBinary(t, "-c", conf, "--json", "run")
	waitLog(t, logFile, 30*time.Second, "the run of a starting", func(log string) bool { return strings.Contains(log, `"msg":"run started","set":"a"`) })
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(t); code != exitError {
		t.Fatalf("run stopped by SIGTERM: exit %d\n%s", code, p.stderr.String())
	}
	var reps []setReport
	decodeJSON(t, p.stdout.String(), &reps)
	if len(reps) != 1 || reps[0].Status != setStopped || len(reps[0].Checks) != 2 || !reps[0].Checks[1].OK || reps[0].Snapshot != nil ||
		reps[0].DurationSec < 1.9 {
		t.Fatalf("report of a stopped run: %+v", reps)
	}
	if snaps := listSnapshots(t, repo); len(snaps) != 0 {
		t.Errorf("a stopped run took %d snapshots", len(snaps))
	}
}
