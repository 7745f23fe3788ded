package faultpoint

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		name string
		n    int64
		bad  bool
	}{
		{"", "", 0, false},
		{"pack-written", "pack-written", 1, false},
		{"apply-mid-rename:17", "apply-mid-rename", 17, false},
		{"x:1", "x", 1, false},
		{"x:0", "", 0, true},
		{"x:-3", "", 0, true},
		{"x:", "", 0, true},
		{"x:two", "", 0, true},
		{":3", "", 0, true},
	} {
		name, n, err := Parse(tc.in)
		if (err != nil) != tc.bad || name != tc.name || n != tc.n {
			t.Errorf("Parse(%q) = %q, %d, %v; want %q, %d, error %v", tc.in, name, n, err, tc.name, tc.n, tc.bad)
		}
		if err != nil && !strings.Contains(err.Error(), Env) {
			t.Errorf("Parse(%q): the error does not name %s: %v", tc.in, Env, err)
		}
	}
}

// buildHitter builds testdata/hitter, with the faultpoints tag if tagged.
func buildHitter(t *testing.T, tagged bool) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "hitter")
	args := []string{"build", "-o", bin}
	if tagged {
		args = append(args, "-tags", "faultpoints")
	}
	if out, err := exec.Command("go", append(args, "./testdata/hitter")...).CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin
}

type hitRun struct {
	out    string
	killed bool // by SIGKILL
	code   int
	stderr string
}

func runHitter(t *testing.T, bin string, env []string, names ...string) hitRun {
	t.Helper()
	cmd := exec.Command(bin, names...)
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	r := hitRun{out: string(out), stderr: stderr.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		ws := ee.Sys().(syscall.WaitStatus)
		r.killed = ws.Signaled() && ws.Signal() == syscall.SIGKILL
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestHitKillsAtTheNthHit runs the hitter built with the faultpoints tag:
// it dies of SIGKILL right after printing the armed hit, without running
// its deferred function; a name it never hits lets it finish; a bad value
// stops it with a message; the log counts every hit.
func TestHitKillsAtTheNthHit(t *testing.T) {
	bin := buildHitter(t, true)
	for _, tc := range []struct {
		fault, last string // the last line printed before the kill
	}{
		{"b:3", "b 3"},
		{"b", "b 1"},
		{"a:5", "a 5"},
		{"b:5", "b 5"},
	} {
		r := runHitter(t, bin, []string{Env + "=" + tc.fault}, "a", "b")
		lines := strings.Split(strings.TrimSpace(r.out), "\n")
		if !r.killed || lines[len(lines)-1] != tc.last || strings.Contains(r.out, "deferred") {
			t.Errorf("%s: killed %v, output %q; want killed after %q, no deferred line", tc.fault, r.killed, r.out, tc.last)
		}
	}

	log := filepath.Join(t.TempDir(), "hits")
	r := runHitter(t, bin, []string{Env + "=c:1", LogEnv + "=" + log}, "a", "b")
	if r.killed || r.code != 0 || !strings.HasSuffix(r.out, "done\ndeferred\n") {
		t.Errorf("armed at a name never hit: killed %v, exit %d, output %q", r.killed, r.code, r.out)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); strings.Count(s, "a ") != 5 || strings.Count(s, "b ") != 5 || strings.Count(s, "\n") != 10 {
		t.Errorf("the hit log holds %q, want 5 lines for a and 5 for b", s)
	}

	r = runHitter(t, bin, []string{Env + "=b:zero"}, "a", "b")
	if r.killed || r.code != 2 || !strings.Contains(r.stderr, Env) || strings.Contains(r.out, "a 2") {
		t.Errorf("a bad %s: killed %v, exit %d, stderr %q, output %q; want exit 2 at the first hit, naming the variable", Env, r.killed, r.code, r.stderr, r.out)
	}
}

// TestHitIsInertInANormalBuild: without the tag the armed point never
// fires, and the compiler inlines the call away.
func TestHitIsInertInANormalBuild(t *testing.T) {
	bin := buildHitter(t, false)
	r := runHitter(t, bin, []string{Env + "=a:1"}, "a", "b")
	if r.killed || r.code != 0 || !strings.HasSuffix(r.out, "done\ndeferred\n") {
		t.Errorf("normal build armed at a: killed %v, exit %d, output %q", r.killed, r.code, r.out)
	}
	out, err := exec.Command("go", "build", "-o", os.DevNull, "-gcflags=-m", "./testdata/hitter").CombinedOutput()
	if err != nil {
		t.Fatalf("go build -gcflags=-m: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "inlining call to faultpoint.Hit") {
		t.Errorf("the compiler does not inline faultpoint.Hit in a normal build:\n%s", out)
	}
}
