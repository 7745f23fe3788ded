package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// version is what one snapshot holds: content hash by path below src.
type version map[string][32]byte

func writeVersion(t *testing.T, src string, files map[string][]byte) version {
	t.Helper()
	if err := os.RemoveAll(src); err != nil {
		t.Fatal(err)
	}
	v := version{}
	for name, b := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		v[name] = sha256.Sum256(b)
	}
	return v
}

// checkWhole reads every file of live (the target's copy of src) and
// fails unless each holds, in full, its content in one of the versions,
// and every path of a version that is absent is absent from the other.
func checkWhole(live string, vs ...version) error {
	seen := map[string]bool{}
	err := filepath.WalkDir(live, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil // removed under the walk
			}
			return err
		}
		if d.IsDir() || strings.HasPrefix(d.Name(), ".understudy-tmp-") {
			return nil
		}
		rel, _ := filepath.Rel(live, p)
		b, err := os.ReadFile(p)
		if os.IsNotExist(err) {
			return nil
		}
		if err != nil {
			return err
		}
		seen[rel] = true
		sum := sha256.Sum256(b)
		for _, v := range vs {
			if h, ok := v[rel]; ok && h == sum {
				return nil
			}
		}
		return fmt.Errorf("%s: %d bytes that are no version's content", rel, len(b))
	})
	return err
}

// TestApplyKilledAnywhere kills apply with SIGKILL at 20 random points of
// its run between two snapshots that change every file, while a reader
// keeps reading the target: every file it reads is one version's content
// in full. After each kill, status says mid-apply (or the target was not
// touched yet), and the next apply
// (of either snapshot) converges: verify finds no difference.
func TestApplyKilledAnywhere(t *testing.T) {
	base := t.TempDir()
	repo := filepath.Join(base, "repo")
	root := filepath.Join(base, "root") // stands for "/" in the snapshots
	src := filepath.Join(root, "srv")
	target := filepath.Join(base, "target")
	rng := rand.New(rand.NewPCG(5, 6))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	one, two := map[string][]byte{}, map[string][]byte{}
	for i := range 240 {
		name := fmt.Sprintf("d%02d/f%03d", i%12, i)
		b := random(1 << (10 + i%8)) // 1 KiB to 128 KiB
		one[name] = b
		switch i % 4 {
		case 0: // changed in the middle
			c := bytes.Clone(b)
			copy(c[len(c)/2:], "changed in the middle")
			two[name] = c
		case 1: // rewritten
			two[name] = random(len(b) + 100)
		case 2: // deleted in the second
		case 3:
			two[name+".new"] = random(4096) // and a new one beside it
			two[name] = append(bytes.Clone(b), "appended"...)
		}
	}
	runOK(t, "-r", repo, "init")
	v1 := writeVersion(t, src, one)
	runOK(t, "-r", repo, "snapshot", "--root", root, "/srv")
	v2 := writeVersion(t, src, two)
	runOK(t, "-r", repo, "snapshot", "--root", root, "/srv")
	var snaps []snapshotJSON
	decodeJSON(t, runOK(t, "-r", repo, "--json", "snapshots"), &snaps)
	ids := []string{snaps[0].ID.String(), snaps[1].ID.String()}
	vs := []version{v1, v2}
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	live := filepath.Join(target, "srv")
	apply := func(i int) []string {
		return []string{"-r", repo, "apply", "--force", "--target", target, ids[i]}
	}

	// How long a whole apply takes here.
	runOK(t, apply(0)...)
	start := time.Now()
	runOK(t, apply(1)...)
	full := time.Since(start)
	runOK(t, apply(0)...)

	at := 0 // the snapshot the target holds
	mid := 0
	for kill := range 20 {
		towards := 1 - at
		var stop atomic.Bool
		var wg sync.WaitGroup
		var readErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() && readErr == nil {
				readErr = checkWhole(live, vs[at], vs[towards])
			}
		}()
		cmd := exec.Command(binary, apply(towards)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		delay := time.Duration(rng.Float64() * float64(full))
		time.Sleep(delay)
		cmd.Process.Kill()
		werr := cmd.Wait()
		stop.Store(true)
		wg.Wait()
		if readErr != nil {
			t.Fatalf("kill %d after %v: a reader saw a torn file: %v", kill, delay, readErr)
		}
		if err := checkWhole(live, vs[at], vs[towards]); err != nil {
			t.Fatalf("kill %d after %v: %v", kill, delay, err)
		}
		_ = werr // killed, or done before the kill
		var status []setStatus
		decodeJSON(t, runOK(t, "-r", repo, "--json", "status"), &status)
		ts := status[0].Targets[0]
		if ts.MidApply {
			mid++
		} else {
			// Killed before it recorded the apply (it wrote nothing) or
			// after it recorded it done: the target is whole.
			if r := run(t, nil, "-r", repo, "verify", "--target", target, ts.Applied.String()); r.code != 0 {
				t.Fatalf("kill %d after %v: not mid-apply, but the target is not the applied %s:\n%s", kill, delay, ts.Applied.Short(), r.stdout)
			}
		}
		// Converge: to the snapshot being applied, or back to the other.
		next := towards
		if rng.IntN(2) == 0 {
			next = at
		}
		runOK(t, apply(next)...)
		if r := run(t, nil, "-r", repo, "verify", "--target", target, ids[next]); r.code != 0 {
			t.Fatalf("kill %d after %v, then apply of %s: verify exit %d\n%s%s", kill, delay, ids[next][:8], r.code, r.stdout, r.stderr)
		}
		if status := runOK(t, "-r", repo, "status"); !strings.Contains(status, "applied "+ids[next][:8]) || strings.Contains(status, "MID-APPLY") {
			t.Fatalf("kill %d: still mid-apply after a complete apply:\n%s", kill, status)
		}
		at = next
	}
	t.Logf("a whole apply took %v; %d of 20 kills left the target mid-apply", full, mid)
	if mid < 8 {
		t.Errorf("only %d of 20 kills landed mid-apply: the test does not test much", mid)
	}
}

// TestApplyGuardAndHoldExitStatus: a refused apply exits 4 and says why;
// --force applies; a held set refuses the automatic apply with 4 and
// release lets it through; status --json tells what is applied.
func TestApplyGuardAndHoldExitStatus(t *testing.T) {
	sink := startSyslog(t)
	base := t.TempDir()
	repo := filepath.Join(base, "repo")
	root := filepath.Join(base, "root")
	target := filepath.Join(base, "target")
	files := map[string]string{}
	for i := range 10 {
		files[fmt.Sprintf("srv/f%d", i)] = fmt.Sprintf("file %d\n", i)
	}
	writeFiles(t, root, files)
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	runOK(t, "-r", repo, "init")
	runOK(t, "-r", repo, "snapshot", "--root", root, "/srv")
	runOK(t, "-r", repo, "apply", "--target", target)
	for i := range 5 {
		os.Remove(filepath.Join(root, fmt.Sprintf("srv/f%d", i)))
	}
	runOK(t, "-r", repo, "snapshot", "--root", root, "/srv")
	r := run(t, nil, "-r", repo, "apply", "--target", target)
	if r.code != 4 || !strings.Contains(r.stderr, "would delete 5 of 10 files") || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("apply deleting half the files: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(target, "srv/f0")); err != nil {
		t.Fatalf("a refused apply changed the target: %v", err)
	}
	if msg := sink.waitFor(t, 5*time.Second, "would delete 5 of 10 files"); !strings.HasPrefix(msg, "<11>") {
		t.Errorf("the refusal in syslog is not user.err: %q", msg)
	}
	// verify goes by the snapshot applied, not the latest.
	runOK(t, "-r", repo, "verify", "--target", target)
	if r := run(t, nil, "-r", repo, "verify", "--target", target, "latest"); r.code != 1 {
		t.Fatalf("verify against the snapshot not applied: exit %d\n%s", r.code, r.stdout)
	}
	runOK(t, "-r", repo, "apply", "--force", "--target", target)
	if _, err := os.Stat(filepath.Join(target, "srv/f0")); !os.IsNotExist(err) {
		t.Fatalf("--force did not apply: %v", err)
	}

	writeFiles(t, root, map[string]string{"srv/f9": "changed\n"})
	runOK(t, "-r", repo, "snapshot", "--root", root, "/srv")
	runOK(t, "-r", repo, "hold")
	r = run(t, nil, "-r", repo, "apply", "--pending", "--target", target)
	if r.code != 4 || !strings.Contains(r.stderr, "held") {
		t.Fatalf("automatic apply of a held set: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	var held []setStatus
	decodeJSON(t, runOK(t, "-r", repo, "--json", "status"), &held)
	if tg := held[0].Targets[0]; tg.Pending != 1 || !tg.FirstDue.IsZero() {
		t.Errorf("status of a held target with a newer snapshot: %+v", tg)
	}
	runOK(t, "-r", repo, "release")
	runOK(t, "-r", repo, "apply", "--pending", "--target", target)
	if b, _ := os.ReadFile(filepath.Join(target, "srv/f9")); string(b) != "changed\n" {
		t.Fatalf("after release: f9 holds %q", b)
	}
	var snaps []snapshotJSON
	decodeJSON(t, runOK(t, "-r", repo, "--json", "snapshots"), &snaps)
	var status []setStatus
	metrics := filepath.Join(base, "understudy.prom")
	decodeJSON(t, runOK(t, "-r", repo, "--json", "status", "--metrics", metrics), &status)
	prom, err := os.ReadFile(metrics)
	if err != nil {
		t.Fatal(err)
	}
	checkExposition(t, string(prom))
	for _, want := range []string{
		"understudy_snapshots{set=\"default\"} 3\n",
		fmt.Sprintf("understudy_apply_pending{set=\"default\",target=%q} 0\n", target),
		"understudy_held{set=\"default\"} 0\n",
		fmt.Sprintf("understudy_mid_apply{set=\"default\",target=%q} 0\n", target),
		"# TYPE understudy_apply_lag_seconds gauge\n",
		fmt.Sprintf("understudy_apply_lag_seconds{set=\"default\",target=%q} ", target),
	} {
		if !strings.Contains(string(prom), want) {
			t.Errorf("metrics lack %q:\n%s", want, prom)
		}
	}
	if len(status) != 1 || len(status[0].Targets) != 1 || status[0].Targets[0].Applied != snaps[len(snaps)-1].ID || status[0].Targets[0].MidApply {
		t.Fatalf("status: %+v", status)
	}
}
