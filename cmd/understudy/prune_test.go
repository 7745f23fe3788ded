package main

import (
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/understudy/understudy/index"
)

// pruneCorpus is a source tree and the snapshots taken of its states.
type pruneCorpus struct {
	t     *testing.T
	repo  string
	src   string
	files map[string][]byte // the tree as it is now
	rng   *rand.ChaCha8
	snaps []index.ID
	state []map[string][]byte // the tree of each snapshot
}

func newPruneCorpus(t *testing.T, base string) *pruneCorpus {
	c := &pruneCorpus{t: t, repo: filepath.Join(base, "repo"), src: filepath.Join(base, "src"),
		files: map[string][]byte{}, rng: rand.NewChaCha8([32]byte{'p', 'r', 'u', 'n', 'e'})}
	runOK(t, "-r", c.repo, "init")
	return c
}

// write sets file name to n bytes that do not compress.
func (c *pruneCorpus) write(name string, n int) {
	b := make([]byte, n)
	c.rng.Read(b)
	c.files[name] = b
	p := filepath.Join(c.src, name)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		c.t.Fatal(err)
	}
}

func (c *pruneCorpus) remove(name string) {
	delete(c.files, name)
	if err := os.Remove(filepath.Join(c.src, name)); err != nil {
		c.t.Fatal(err)
	}
}

func (c *pruneCorpus) snapshot() {
	c.t.Helper()
	var out struct{ ID index.ID }
	decodeJSON(c.t, runOK(c.t, "-r", c.repo, "--json", "snapshot", c.src), &out)
	state := make(map[string][]byte, len(c.files))
	for k, v := range c.files {
		state[k] = v
	}
	c.snaps = append(c.snaps, out.ID)
	c.state = append(c.state, state)
}

// forget removes the records of snapshots i… from the index, as forget
// would, while no process has the repository open.
func (c *pruneCorpus) forget(repo string, i ...int) {
	c.t.Helper()
	idx, err := index.Open(filepath.Join(repo, "index.db"), index.Options{})
	if err != nil {
		c.t.Fatal(err)
	}
	defer idx.Close()
	var ids []index.ID
	for _, k := range i {
		ids = append(ids, c.snaps[k])
	}
	if n, err := idx.RemoveSnapshotRecords(ids); err != nil || n != len(ids) {
		c.t.Fatalf("removed %d snapshot records: %v", n, err)
	}
}

// restoreAndVerify restores snapshot i of repo, compares every file byte
// for byte with what the tree held then, and runs verify against it.
func (c *pruneCorpus) restoreAndVerify(repo string, i int) {
	c.t.Helper()
	target := filepath.Join(c.t.TempDir(), "target")
	id := c.snaps[i].String()
	runOK(c.t, "-r", repo, "restore", id, "--target", target)
	n := 0
	err := filepath.WalkDir(filepath.Join(target, c.src), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(filepath.Join(target, c.src), p)
		got, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		want, ok := c.state[i][rel]
		if !ok || string(got) != string(want) {
			return fmt.Errorf("%s restored wrong (in the snapshot: %v)", rel, ok)
		}
		n++
		return nil
	})
	if err != nil || n != len(c.state[i]) {
		c.t.Fatalf("snapshot %d restored %d of %d files: %v", i, n, len(c.state[i]), err)
	}
	runOK(c.t, "-r", repo, "verify", "--target", target, id)
}

// checkRepo runs check --read-data, which must exit 0, and returns its
// harmless notes.
func checkRepo(t *testing.T, repo string) int {
	t.Helper()
	r := run(t, nil, "-r", repo, "check", "--read-data")
	if r.code != 0 {
		t.Fatalf("check --read-data: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	return strings.Count(r.stderr, "note:")
}

// TestPrune forgets the oldest of three snapshots that share most of their
// data; prune frees space, check --read-data finds nothing at all, and the
// other two restore byte for byte and verify.
func TestPrune(t *testing.T) {
	c := newPruneCorpus(t, t.TempDir())
	for i := range 24 {
		c.write(fmt.Sprintf("big/%02d", i), 1<<20)
	}
	for i := range 300 {
		c.write(fmt.Sprintf("small/%c/%03d", 'a'+i%7, i), 1+i*37)
	}
	c.snapshot()
	for i := range 12 {
		c.write(fmt.Sprintf("big/%02d", i), 1<<20)
	}
	for i := 0; i < 300; i += 3 {
		c.remove(fmt.Sprintf("small/%c/%03d", 'a'+i%7, i))
	}
	c.snapshot()
	c.write("big/new", 3<<20)
	c.write("big/20", 1<<20)
	c.snapshot()
	c.forget(c.repo, 0)

	var dry, st pruneReport
	decodeJSON(t, runOK(t, "-r", c.repo, "--json", "prune", "--dry-run", "--max-unused", "5"), &dry)
	if checkRepo(t, c.repo) != 0 {
		t.Fatal("a dry run changed the repository")
	}
	decodeJSON(t, runOK(t, "-r", c.repo, "--json", "prune", "--max-unused", "5%"), &st)
	t.Logf("dry run: %+v\nprune: %+v", dry, st)
	if st.DryRun || !dry.DryRun || st.Snapshots != 2 || st.BytesFreed <= 0 || st.PacksDeleted+st.PacksRepacked == 0 ||
		st.BlobsRemoved < 12+100 || st.DurationSec <= 0 {
		t.Fatalf("prune: %+v", st)
	}
	if dry.PacksDeleted != st.PacksDeleted || dry.PacksRepacked != st.PacksRepacked || dry.BlobsRemoved != st.BlobsRemoved || dry.BlobsRepacked != st.BlobsRepacked {
		t.Errorf("the dry run planned otherwise: %+v", dry)
	}
	if notes := checkRepo(t, c.repo); notes != 0 {
		t.Fatalf("check after prune: %d notes", notes)
	}
	c.restoreAndVerify(c.repo, 1)
	c.restoreAndVerify(c.repo, 2)
	if out := runOK(t, "-r", c.repo, "prune"); !strings.Contains(out, "deleted 0 packs") || !strings.Contains(out, "repacked 0 packs") {
		t.Fatalf("a second prune found work:\n%s", out)
	}
	if r := run(t, nil, "-r", c.repo, "prune", "--max-unused", "120"); r.code != exitUsage {
		t.Fatalf("--max-unused 120: exit %d", r.code)
	}
}

// TestPruneKilledAnywhere kills `understudy prune` with SIGKILL at 20
// random points of its run. After each kill check --read-data exits 0
// (packs left unindexed are harmless notes); every other kill starts again
// from the unpruned repository, the others from what the previous kill
// left. In the end a prune completes and the snapshots kept restore byte
// for byte and verify.
func TestPruneKilledAnywhere(t *testing.T) {
	base := t.TempDir()
	c := newPruneCorpus(t, base)
	// 48 MiB that do not compress: three full data packs and a part.
	for i := range 48 {
		c.write(fmt.Sprintf("big/%02d", i), 1<<20)
	}
	for i := range 2000 {
		c.write(fmt.Sprintf("small/%c/%04d", 'a'+i%26, i), 1+i%3000)
	}
	c.snapshot()
	// The first 20 MiB change (a pack of garbage only once the first
	// snapshot is gone), then every other file (packs half garbage).
	for i := range 20 {
		c.write(fmt.Sprintf("big/%02d", i), 1<<20)
	}
	for i := 21; i < 48; i += 2 {
		c.write(fmt.Sprintf("big/%02d", i), 1<<20)
	}
	for i := 0; i < 2000; i += 5 {
		c.write(fmt.Sprintf("small/%c/%04d", 'a'+i%26, i), 100)
	}
	c.snapshot()
	c.write("big/20", 1<<20)
	c.snapshot()
	c.forget(c.repo, 0)
	pristine := filepath.Join(base, "pristine")
	copyRepo(t, c.repo, pristine)

	// How long a whole prune takes here.
	scratch := filepath.Join(base, "scratch")
	copyRepo(t, pristine, scratch)
	start := time.Now()
	var st pruneReport
	decodeJSON(t, runOK(t, "-r", scratch, "--json", "prune"), &st)
	full := time.Since(start)
	os.RemoveAll(scratch)
	t.Logf("a whole prune: %v, %+v", full, st)
	if st.PacksDeleted == 0 || st.PacksRepacked == 0 {
		t.Fatalf("the corpus does not make prune delete and repack: %+v", st)
	}

	rng := rand.New(rand.NewPCG(20, 26))
	for i := range 20 {
		if i%2 == 0 {
			os.RemoveAll(c.repo)
			copyRepo(t, pristine, c.repo)
		}
		delay := time.Duration(rng.Int64N(int64(full)))
		cmd := exec.Command(binary, "-r", c.repo, "prune")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		cmd.Process.Kill()
		how := "killed"
		if err := cmd.Wait(); err == nil {
			how = "finished before the kill"
		}
		notes := checkRepo(t, c.repo)
		packs, _ := filepath.Glob(filepath.Join(c.repo, "packs", "[0-9a-f][0-9a-f]", "*"))
		t.Logf("kill %2d at %v of %v (%s): %d pack files, %d unindexed", i, delay.Round(time.Millisecond), full.Round(time.Millisecond), how, len(packs), notes)
	}
	runOK(t, "-r", c.repo, "prune")
	if notes := checkRepo(t, c.repo); notes != 0 {
		t.Fatalf("check after the final prune: %d notes", notes)
	}
	c.restoreAndVerify(c.repo, 1)
	c.restoreAndVerify(c.repo, 2)
}

// copyRepo copies repository src to dst. Pack files, never written in
// place, are hard-linked; everything else is copied.
func copyRepo(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(out, 0o700)
		case strings.HasPrefix(rel, "packs"+string(filepath.Separator)):
			return os.Link(p, out)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(out, data, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}
