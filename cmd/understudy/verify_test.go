package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestVerifyExitStatus: verify exits 0 on a faithful copy and 1, listing
// the difference, after drift.
func TestVerifyExitStatus(t *testing.T) {
	base := t.TempDir()
	repo, tree, live := filepath.Join(base, "repo"), filepath.Join(base, "tree"), filepath.Join(base, "live")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc", "hosts"), []byte("127.0.0.1 localhost\n"), 0o644)
	runOK(t, "-r", repo, "init")
	runOK(t, "-r", repo, "snapshot", tree)
	runOK(t, "-r", repo, "restore", "latest", "--target", live)
	if out := runOK(t, "-r", repo, "verify", "--target", live); !strings.Contains(out, " 0 differences") {
		t.Fatalf("verify of a fresh restore: %s", out)
	}
	hosts := filepath.Join(live, tree, "etc", "hosts")
	fi, _ := os.Stat(hosts)
	os.WriteFile(hosts, []byte("10.0.0.66 localhost\n"), 0o644)
	os.Chtimes(hosts, fi.ModTime(), fi.ModTime())
	r := run(t, nil, "-r", repo, "verify", "--target", live, "--json")
	if r.code != 1 || !strings.Contains(r.stdout, `"change": "content"`) || !strings.Contains(r.stdout, "/etc/hosts") {
		t.Fatalf("verify after drift: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
