package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPushToPromotedStandby: after `promote`, a push from the old primary
// exits 4 naming the promotion, and the standby gains nothing; after
// `demote` the push goes through.
func TestPushToPromotedStandby(t *testing.T) {
	base := t.TempDir()
	src, dst, tree := filepath.Join(base, "src"), filepath.Join(base, "dst"), filepath.Join(base, "tree")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc", "motd"), []byte("primary\n"), 0o644)
	runOK(t, "-r", src, "init")
	runOK(t, "-r", dst, "init")
	runOK(t, "-r", src, "snapshot", "--set", "os", tree)
	runOK(t, "-r", src, "push", "--to", dst)
	if out := runOK(t, "-r", dst, "promote", "--set", "os"); !strings.Contains(out, "promoted at") {
		t.Fatalf("promote printed %q", out)
	}
	packs := func() int {
		m, _ := filepath.Glob(filepath.Join(dst, "packs", "[0-9a-f][0-9a-f]", "*"))
		return len(m)
	}
	before, snaps := packs(), runOK(t, "-r", dst, "snapshots", "--json")

	os.WriteFile(filepath.Join(tree, "etc", "motd"), []byte("the old primary came back\n"), 0o644)
	runOK(t, "-r", src, "snapshot", "--set", "os", tree)
	r := run(t, nil, "-r", src, "push", "--to", dst)
	if r.code != exitRefused || !strings.Contains(r.stderr, dst+" has been promoted at") || !strings.Contains(r.stderr, "it is now a primary") {
		t.Fatalf("push to a promoted standby: exit %d\n%s", r.code, r.stderr)
	}
	if packs() != before || runOK(t, "-r", dst, "snapshots", "--json") != snaps {
		t.Fatal("the refused push changed the standby")
	}
	// Other sets are still received.
	runOK(t, "-r", src, "snapshot", "--set", "accounts", filepath.Join(tree, "etc"))
	runOK(t, "-r", src, "push", "--to", dst, "latest", "--set", "accounts")

	runOK(t, "-r", dst, "demote", "--set", "os")
	runOK(t, "-r", src, "push", "--to", dst, "--set", "os")
	runOK(t, "-r", dst, "check", "--read-data")
	if n := strings.Count(runOK(t, "-r", dst, "snapshots", "--json"), `"id"`); n != 3 {
		t.Fatalf("the standby holds %d snapshots, want 3", n)
	}
}
