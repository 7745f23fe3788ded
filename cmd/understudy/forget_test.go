package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// forgetFixture is a repository with snapshots of root's /srv.
type forgetFixture struct {
	repo, root string
	n          int
}

func newForgetFixture(t *testing.T) *forgetFixture {
	t.Helper()
	base := t.TempDir()
	f := &forgetFixture{repo: filepath.Join(base, "repo"), root: filepath.Join(base, "root")}
	runOK(t, "-r", f.repo, "init")
	return f
}

// snap changes a file and takes a snapshot of set.
func (f *forgetFixture) snap(t *testing.T, set string) {
	t.Helper()
	f.n++
	writeFiles(t, f.root, map[string]string{"srv/a": "same\n", "srv/b": fmt.Sprintf("version %d\n", f.n)})
	runOK(t, "-r", f.repo, "snapshot", "--set", set, "--root", f.root, "/srv")
}

// ids lists the snapshot IDs of set, oldest first.
func (f *forgetFixture) ids(t *testing.T, set string) []string {
	t.Helper()
	var snaps []struct {
		ID  string `json:"id"`
		Set string `json:"set"`
	}
	decodeJSON(t, runOK(t, "-r", f.repo, "--json", "snapshots"), &snaps)
	var ids []string
	for _, s := range snaps {
		if s.Set == set {
			ids = append(ids, s.ID)
		}
	}
	return ids
}

// forgetResult is the documented --json form of forget.
type forgetResult []struct {
	Set  string `json:"set"`
	Keep []struct {
		ID      string   `json:"id"`
		Time    string   `json:"time"`
		Reasons []string `json:"reasons"`
	} `json:"keep"`
	Remove []struct {
		ID   string `json:"id"`
		Time string `json:"time"`
	} `json:"remove"`
}

// reasons returns the reasons of every kept snapshot of set by ID, and
// the IDs removed.
func (r forgetResult) of(set string) (kept map[string][]string, removed []string) {
	kept = map[string][]string{}
	for _, s := range r {
		if s.Set != set {
			continue
		}
		for _, k := range s.Keep {
			kept[k.ID] = k.Reasons
		}
		for _, x := range s.Remove {
			removed = append(removed, x.ID)
		}
	}
	return kept, removed
}

func TestForgetKeepLast(t *testing.T) {
	f := newForgetFixture(t)
	for range 5 {
		f.snap(t, "default")
	}
	all := f.ids(t, "default")
	if len(all) != 5 {
		t.Fatalf("%d snapshots, want 5", len(all))
	}

	for _, args := range [][]string{
		{"forget"},                     // an empty policy would remove everything
		{"forget", "--keep-last", "0"}, // so would this one
		{"forget", "--keep-within", "0d"},
		{"forget", "--keep-last", "-2"},
		{"forget", "--keep-daily", "many"},
		{"forget", "--keep-within", "30s"}, // seconds are no unit of a span
		{"forget", "--keep-last", "1", "extra"},
	} {
		r := run(t, nil, append([]string{"-r", f.repo}, args...)...)
		if r.code != exitUsage || r.stderr == "" {
			t.Errorf("%v: exit %d, want %d\n%s", args, r.code, exitUsage, r.stderr)
		}
	}
	if r := run(t, nil, "-r", f.repo, "forget"); !strings.Contains(r.stderr, "--keep-last") {
		t.Errorf("the refusal of an empty policy does not say what to give: %q", r.stderr)
	}

	// A dry run says what it would do and does nothing.
	var res forgetResult
	decodeJSON(t, runOK(t, "-r", f.repo, "--json", "forget", "--keep-last", "2", "--dry-run"), &res)
	kept, removed := res.of("default")
	if len(res) != 1 || len(kept) != 2 || !slices.Equal(removed, all[:3]) {
		t.Fatalf("dry run: %+v", res)
	}
	for _, id := range all[3:] {
		if !slices.Equal(kept[id], []string{"last snapshot"}) {
			t.Errorf("%s kept for %q, want [last snapshot]", id[:8], kept[id])
		}
	}
	if got := f.ids(t, "default"); len(got) != 5 {
		t.Fatalf("--dry-run removed snapshots: %d left", len(got))
	}

	out := runOK(t, "-r", f.repo, "forget", "--keep-last", "2")
	if !strings.Contains(out, "removed 3 snapshots") || strings.Count(out, "  remove  ") != 3 || strings.Count(out, "  keep  ") != 2 {
		t.Errorf("forget output:\n%s", out)
	}
	if got := f.ids(t, "default"); !slices.Equal(got, all[3:]) {
		t.Fatalf("after forget --keep-last 2: %v, want %v", got, all[3:])
	}
	// The forgotten snapshots' blobs are still in the packs and indexed;
	// check does not mind blobs that no snapshot references.
	if out := runOK(t, "-r", f.repo, "check"); !strings.Contains(out, "no problems found") {
		t.Errorf("check after forget:\n%s", out)
	}
	if out := runOK(t, "-r", f.repo, "forget", "--keep-last", "2"); !strings.Contains(out, "nothing to remove") {
		t.Errorf("a second forget:\n%s", out)
	}
	// The next snapshot still works (its parent and cache are the newest,
	// which is kept).
	f.snap(t, "default")
	if got := f.ids(t, "default"); len(got) != 3 {
		t.Fatalf("after another snapshot: %d snapshots", len(got))
	}

	// --prune frees what forget removed, in the same command.
	if r := run(t, nil, "-r", f.repo, "forget", "--keep-last", "1", "--prune", "--dry-run"); r.code != exitUsage {
		t.Errorf("--prune with --dry-run: exit %d, want %d\n%s", r.code, exitUsage, r.stderr)
	}
	var both struct {
		Forget forgetResult `json:"forget"`
		Prune  pruneReport  `json:"prune"`
	}
	decodeJSON(t, runOK(t, "-r", f.repo, "--json", "forget", "--keep-last", "1", "--prune"), &both)
	if _, removed := both.Forget.of("default"); len(removed) != 2 || both.Prune.Snapshots != 1 || both.Prune.BlobsRemoved == 0 || both.Prune.BytesFreed == 0 {
		t.Errorf("forget --prune: %+v", both)
	}
	runOK(t, "-r", f.repo, "check", "--read-data")
	if out := runOK(t, "-r", f.repo, "prune", "--dry-run"); !strings.Contains(out, "would have removed 0 blobs") {
		t.Errorf("a prune after forget --prune still finds work:\n%s", out)
	}
}

// Without --set each set gets the policy on its own; with --set only that
// set is touched.
func TestForgetSets(t *testing.T) {
	f := newForgetFixture(t)
	for range 3 {
		f.snap(t, "os")
		f.snap(t, "accounts")
	}
	osIDs, accIDs := f.ids(t, "os"), f.ids(t, "accounts")

	var res forgetResult
	decodeJSON(t, runOK(t, "-r", f.repo, "--json", "forget", "--set", "os", "--keep-last", "1"), &res)
	if len(res) != 1 || res[0].Set != "os" {
		t.Fatalf("forget --set os reported %+v", res)
	}
	if got := f.ids(t, "os"); !slices.Equal(got, osIDs[2:]) {
		t.Errorf("set os: %v, want %v", got, osIDs[2:])
	}
	if got := f.ids(t, "accounts"); !slices.Equal(got, accIDs) {
		t.Errorf("forget --set os touched set accounts: %v", got)
	}

	decodeJSON(t, runOK(t, "-r", f.repo, "--json", "forget", "--keep-last", "2"), &res)
	if len(res) != 2 || res[0].Set != "accounts" || res[1].Set != "os" {
		t.Fatalf("forget of every set reported %+v", res)
	}
	if got := f.ids(t, "accounts"); !slices.Equal(got, accIDs[1:]) {
		t.Errorf("set accounts: %v, want %v", got, accIDs[1:])
	}
	if got := f.ids(t, "os"); !slices.Equal(got, osIDs[2:]) {
		t.Errorf("set os: %v, want %v", got, osIDs[2:])
	}
	if out := runOK(t, "-r", f.repo, "forget", "--set", "none", "--keep-last", "1"); !strings.Contains(out, "set none has no snapshots") {
		t.Errorf("forget of a set without snapshots:\n%s", out)
	}
}

// A snapshot applied on this standby is kept whatever the policy, and so
// are the newer ones while the set's apply delay keeps them waiting.
func TestForgetKeepsWhatTheStandbyNeeds(t *testing.T) {
	f := newForgetFixture(t)
	target := filepath.Join(t.TempDir(), "target")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		f.snap(t, "default")
	}
	all := f.ids(t, "default")
	runOK(t, "-r", f.repo, "apply", "--target", target, all[0])

	var res forgetResult
	decodeJSON(t, runOK(t, "-r", f.repo, "--json", "forget", "--keep-last", "1"), &res)
	kept, removed := res.of("default")
	if !slices.Equal(kept[all[0]], []string{"applied on the standby"}) || !slices.Equal(kept[all[2]], []string{"last snapshot"}) ||
		!slices.Equal(removed, all[1:2]) {
		t.Fatalf("forget --keep-last 1 with the oldest applied: kept %v, removed %v", kept, removed)
	}
	if got := f.ids(t, "default"); !slices.Equal(got, []string{all[0], all[2]}) {
		t.Fatalf("left %v, want the applied and the newest", got)
	}
	out := runOK(t, "-r", f.repo, "forget", "--keep-last", "1", "--dry-run")
	if !strings.Contains(out, "applied on the standby") {
		t.Errorf("the text output does not say why the applied snapshot stays:\n%s", out)
	}

	// With an apply delay of an hour, the snapshots just taken wait for it.
	runOK(t, "-r", f.repo, "standby", "--apply-delay", "1h")
	f.snap(t, "default")
	all = f.ids(t, "default") // applied, newest before, new one
	decodeJSON(t, runOK(t, "-r", f.repo, "--json", "forget", "--keep-last", "1"), &res)
	kept, removed = res.of("default")
	if len(removed) != 0 || !slices.Equal(kept[all[1]], []string{"waiting for its apply delay"}) ||
		!slices.Equal(kept[all[2]], []string{"last snapshot", "waiting for its apply delay"}) {
		t.Fatalf("with an apply delay: kept %v, removed %v", kept, removed)
	}
	runOK(t, "-r", f.repo, "standby", "--apply-delay", "0")
	runOK(t, "-r", f.repo, "forget", "--keep-last", "1")
	if got := f.ids(t, "default"); !slices.Equal(got, []string{all[0], all[2]}) {
		t.Fatalf("without the delay: left %v, want %v", got, []string{all[0], all[2]})
	}
	runOK(t, "-r", f.repo, "check")
}
