package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// TestInitFromSharesThePolynomial: init --from takes the peer's chunker
// polynomial through serve's welcome; a plain init draws its own.
func TestInitFromSharesThePolynomial(t *testing.T) {
	base := t.TempDir()
	pol := func(repo string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(repo, "config"))
		if err != nil {
			t.Fatal(err)
		}
		var cfg struct {
			Pol string `json:"chunker_polynomial"`
		}
		if err := json.Unmarshal(b, &cfg); err != nil {
			t.Fatal(err)
		}
		return cfg.Pol
	}
	primary, standby, other := filepath.Join(base, "primary"), filepath.Join(base, "standby"), filepath.Join(base, "other")
	runOK(t, "-r", primary, "init")
	runOK(t, "-r", standby, "init", "--from", primary)
	runOK(t, "-r", other, "init")
	if pol(standby) != pol(primary) {
		t.Errorf("init --from: polynomial %s, the peer has %s", pol(standby), pol(primary))
	}
	if pol(other) == pol(primary) {
		t.Errorf("two plain inits drew the same polynomial %s", pol(other))
	}
	if r := run(t, nil, "-r", filepath.Join(base, "x"), "init", "--from", filepath.Join(base, "missing")); r.code == 0 {
		t.Errorf("init --from a missing repository succeeded")
	} else if _, err := os.Stat(filepath.Join(base, "x", "config")); err == nil {
		t.Errorf("init --from a missing repository created one anyway")
	}
}
