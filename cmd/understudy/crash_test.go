package main

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSnapshotKilledAnywhere kills `understudy snapshot` with SIGKILL at
// several points of its run. After each kill the repository passes
// check --read-data (leftover packs are harmless notes), and in the end a
// snapshot completes and restores byte for byte.
func TestSnapshotKilledAnywhere(t *testing.T) {
	base := t.TempDir()
	repo := filepath.Join(base, "repo")
	src := filepath.Join(base, "src")
	rng := rand.New(rand.NewPCG(11, 12))
	files := map[string][]byte{}
	for i := range 48 { // ~48 MiB that does not compress: three data packs and more
		b := make([]byte, 1<<20)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		files[filepath.Join("big", string(rune('a'+i%26))+strings.Repeat("x", i/26))] = b
	}
	for i := range 2000 {
		files[filepath.Join("small", string(rune('a'+i%26)), strings.Repeat("y", 1+i/26))] = []byte(strings.Repeat("s", i))
	}
	for name, b := range files {
		p := filepath.Join(src, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// How long a whole snapshot takes here, in a throwaway repository.
	scratch := filepath.Join(base, "scratch")
	runOK(t, "-r", scratch, "init")
	start := time.Now()
	runOK(t, "-r", scratch, "snapshot", src)
	full := time.Since(start)
	os.RemoveAll(scratch)

	runOK(t, "-r", repo, "init")
	for _, frac := range []float64{0.02, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0} {
		delay := time.Duration(float64(full) * frac)
		cmd := exec.Command(binary, "-r", repo, "snapshot", src)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		cmd.Process.Kill()
		cmd.Wait()
		r := run(t, nil, "-r", repo, "check", "--read-data")
		if r.code != 0 {
			t.Fatalf("after a kill at %v: check exit %d\n%s%s", delay, r.code, r.stdout, r.stderr)
		}
		snaps := strings.Count(runOK(t, "-r", repo, "snapshots", "--json"), `"id"`)
		packs, _ := filepath.Glob(filepath.Join(repo, "packs", "[0-9a-f][0-9a-f]", "*"))
		t.Logf("killed at %v of %v: %d snapshots, %d packs, %d of them unindexed", delay, full, snaps, len(packs), strings.Count(r.stderr, "note:"))
	}
	runOK(t, "-r", repo, "snapshot", src)
	runOK(t, "-r", repo, "check", "--read-data")
	target := filepath.Join(base, "target")
	runOK(t, "-r", repo, "restore", "latest", "--target", target)
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(target, src, name))
		if err != nil || string(got) != string(want) {
			t.Fatalf("%s restored wrong: %v", name, err)
		}
	}
}
