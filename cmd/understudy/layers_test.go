package main

import (
	"encoding/json"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/understudy/understudy/"

// layers lists, for every package of the module, the packages of the module
// it may import. The graph has no cycles and points downwards: the index
// knows nothing of packs, the chunk store nothing of trees, snapshot nothing
// of restore, and only the CLI knows everything. A new package must be added
// here, which is the moment to decide where it sits.
var layers = map[string][]string{
	"index":              {},
	"chunkstore":         {"index", "chunkstore/faultpoint"},
	"snapshot/tree":      {"index"},
	"snapshot/selection": {},
	"snapshot/retention": {"index"},
	"snapshot/fsmeta":    {"snapshot/tree"},
	"snapshot/testtree":  {}, // checks fsmeta's work with code of its own
	"snapshot":           {"index", "chunkstore", "snapshot/tree", "snapshot/selection", "snapshot/fsmeta"},
	"restore":            {"index", "chunkstore", "chunkstore/faultpoint", "snapshot", "snapshot/tree", "snapshot/selection", "snapshot/fsmeta"},
	"sync":               {"index", "chunkstore", "chunkstore/faultpoint", "snapshot", "snapshot/tree", "snapshot/selection", "snapshot/fsmeta"},
	"sync/sshdtest":      {}, // runs a real sshd for tests
	"cmd/understudy":     {"index", "chunkstore", "snapshot", "snapshot/tree", "snapshot/selection", "snapshot/fsmeta", "snapshot/retention", "restore", "sync", "cmd/understudy/ops"},
	"cmd/understudy/ops": {}, // the log and the daemon's plan: no repository in it
	"bench/gentree":      {},
	"bench/manysnaps":    {"chunkstore", "snapshot"}, // fills a repository with snapshot records

	"chunkstore/faultpoint": {}, // the crash tests' kill points: an empty Hit in a normal build
}

// TestLayers checks the module's import graph (tests included) against
// layers.
func TestLayers(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", "../../...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for {
		var p struct {
			ImportPath  string
			Imports     []string
			TestImports []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(p.ImportPath, module)
		allowed, ok := layers[name]
		if !ok {
			t.Errorf("package %s is not in layers (layers_test.go): decide which packages it may import", name)
			continue
		}
		seen++
		for _, imp := range append(p.Imports, p.TestImports...) {
			dep, ours := strings.CutPrefix(imp, module)
			if !ours || dep == name {
				continue
			}
			if (dep == "snapshot/testtree" || dep == "sync/sshdtest") && slices.Contains(p.TestImports, imp) {
				continue // any test may build test trees and run sshd
			}
			if !slices.Contains(allowed, dep) {
				t.Errorf("%s imports %s, which layers_test.go does not allow", name, dep)
			}
		}
	}
	if seen < 9 {
		t.Fatalf("go list found only %d packages of the module", seen)
	}
}
