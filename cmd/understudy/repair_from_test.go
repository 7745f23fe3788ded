package main

import (
	"bytes"
	"crypto/sha256"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot/testtree"
	"github.com/understudy/understudy/sync/sshdtest"
)

// repairTree writes a tree of a few files, one of several chunks of random
// bytes, one that compresses, and returns its path.
func repairTree(t *testing.T, base string) string {
	t.Helper()
	tree := filepath.Join(base, "tree")
	writeFiles(t, tree, map[string]string{
		"etc/hosts":      "127.0.0.1 localhost\n",
		"etc/motd":       "welcome\n",
		"usr/share/text": strings.Repeat("a line that compresses well\n", 20000),
		"usr/bin/true":   "#!/bin/sh\n",
	})
	big := make([]byte, 900<<10)
	rand.NewChaCha8([32]byte{7}).Read(big)
	if err := os.WriteFile(filepath.Join(tree, "usr/bin/tool"), big, 0o755); err != nil {
		t.Fatal(err)
	}
	return tree
}

// repairPair makes a primary holding a snapshot of a fresh tree and a
// standby it was pushed to.
func repairPair(t *testing.T) (base, primary, standby, tree string) {
	t.Helper()
	base = t.TempDir()
	primary, standby = filepath.Join(base, "primary"), filepath.Join(base, "standby")
	tree = repairTree(t, base)
	runOK(t, "-r", primary, "init")
	runOK(t, "-r", standby, "init")
	runOK(t, "-r", primary, "snapshot", tree)
	runOK(t, "-r", primary, "push", "--to", standby)
	return base, primary, standby, tree
}

// dataBlobs returns the data blobs indexed in the repository in dir, by ID.
func dataBlobs(t *testing.T, dir string) []index.Blob {
	t.Helper()
	r := openShared(t, dir)
	defer r.Close()
	var blobs []index.Blob
	if err := r.Index().ForEachBlob(func(b index.Blob) error {
		if b.Type == index.DataBlob {
			blobs = append(blobs, b)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(blobs) < 3 {
		t.Fatalf("%s holds %d data blobs", dir, len(blobs))
	}
	return blobs
}

// corruptBlob flips one byte in the middle of blob id's stored bytes, in
// the pack the index of the repository in dir places it in.
func corruptBlob(t *testing.T, dir string, id index.ID) {
	t.Helper()
	r := openShared(t, dir)
	loc, ok, err := r.Index().Lookup(id)
	name := r.PackPath(loc.Pack)
	r.Close()
	if err != nil || !ok {
		t.Fatalf("blob %s in %s: %v (found %v)", id.Short(), dir, err, ok)
	}
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	off := int64(loc.Offset + loc.Length/2)
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x01
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

// checkFails runs check --read-data on dir, which must fail naming every
// blob of bad, and returns its output.
func checkFails(t *testing.T, dir string, bad ...index.ID) string {
	t.Helper()
	r := run(t, nil, "-r", dir, "check", "--read-data")
	if r.code != exitError {
		t.Fatalf("check --read-data %s: exit %d, want %d\n%s%s", dir, r.code, exitError, r.stdout, r.stderr)
	}
	for _, id := range bad {
		if !strings.Contains(r.stdout, "blob "+id.String()) {
			t.Errorf("check --read-data %s does not name blob %s:\n%s", dir, id, r.stdout)
		}
	}
	return r.stdout
}

// restoreSame restores the latest snapshot of repo and compares it with
// tree, byte for byte and every attribute.
func restoreSame(t *testing.T, repo, tree string) {
	t.Helper()
	target := filepath.Join(t.TempDir(), "target")
	runOK(t, "-r", repo, "restore", "latest", "--target", target)
	testtree.Compare(t, tree, filepath.Join(target, tree))
}

// repairJSON is the part of repair --from --json the tests read.
type repairJSON struct {
	From           string `json:"from"`
	DryRun         bool   `json:"dry_run"`
	PacksDamaged   int    `json:"packs_damaged"`
	PacksRewritten int    `json:"packs_rewritten"`
	PacksWritten   int    `json:"packs_written"`
	BlobsBad       int    `json:"blobs_bad"`
	BlobsRepaired  int    `json:"blobs_repaired"`
	BytesFetched   int64  `json:"bytes_fetched"`
	Repaired       []struct {
		Blob string `json:"blob"`
		Type string `json:"type"`
		Pack string `json:"pack"`
	} `json:"repaired"`
	Lost []struct {
		Blob      string   `json:"blob"`
		Pack      string   `json:"pack"`
		Path      string   `json:"path"`
		Snapshots []string `json:"snapshots"`
		Error     string   `json:"error"`
	} `json:"lost"`
	WouldFetch []struct {
		Blob      string `json:"blob"`
		PeerHolds bool   `json:"peer_holds"`
	} `json:"would_fetch"`
	Other   []checkProblem `json:"other"`
	WireIn  int64          `json:"wire_bytes_in"`
	WireOut int64          `json:"wire_bytes_out"`
}

// repairFrom runs repair --from with args and --json on repo; it must exit
// with code.
func repairFrom(t *testing.T, repo string, code int, args ...string) repairJSON {
	t.Helper()
	r := run(t, nil, append([]string{"-r", repo, "repair", "--json", "--from"}, args...)...)
	if r.code != code {
		t.Fatalf("repair --from %v: exit %d, want %d\nstdout: %s\nstderr: %s", args, r.code, code, r.stdout, r.stderr)
	}
	var rep repairJSON
	decodeJSON(t, r.stdout, &rep)
	return rep
}

// packFiles returns the SHA-256 of every pack file of the repository in
// dir, by name.
func packFiles(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "packs", "[0-9a-f][0-9a-f]", "*"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][32]byte{}
	for _, n := range names {
		data, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		files[filepath.Base(n)] = sha256.Sum256(data)
	}
	return files
}

func samePacks(a, b map[string][32]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestRepairFromPeer: a byte flipped inside a data blob of the standby is
// found by check --read-data; --dry-run lists it, held by the primary, and
// changes nothing; repair --from PRIMARY fetches the good copy and rewrites
// the pack, after which check --read-data passes and the snapshot restores
// byte for byte. Then the other way: a blob of the primary rots and is
// repaired from the standby. Last, --blobs rewrites the pack of a sound
// blob named on the command line.
func TestRepairFromPeer(t *testing.T) {
	_, primary, standby, tree := repairPair(t)
	blobs := dataBlobs(t, standby)
	bad := blobs[0].ID
	corruptBlob(t, standby, bad)
	checkFails(t, standby, bad)

	before := packFiles(t, standby)
	dry := repairFrom(t, standby, 0, primary, "--dry-run")
	if !dry.DryRun || dry.BlobsBad != 1 || len(dry.WouldFetch) != 1 || dry.WouldFetch[0].Blob != bad.String() || !dry.WouldFetch[0].PeerHolds {
		t.Fatalf("--dry-run: %+v", dry)
	}
	if !samePacks(before, packFiles(t, standby)) {
		t.Fatal("--dry-run changed the packs")
	}
	checkFails(t, standby, bad)

	rep := repairFrom(t, standby, 0, primary)
	t.Logf("repair: %+v", rep)
	if rep.BlobsBad != 1 || rep.BlobsRepaired != 1 || len(rep.Repaired) != 1 || rep.Repaired[0].Blob != bad.String() || rep.Repaired[0].Type != "data" ||
		rep.Repaired[0].Pack != blobs[0].Pack.String() || len(rep.Lost) != 0 || rep.PacksRewritten != 1 || rep.PacksWritten < 1 || rep.WireIn == 0 {
		t.Fatalf("repair: %+v", rep)
	}
	if _, ok := packFiles(t, standby)[blobs[0].Pack.String()]; ok {
		t.Errorf("damaged pack %s is still there", blobs[0].Pack.Short())
	}
	runOK(t, "-r", standby, "check", "--read-data")
	sameSnapshots(t, primary, standby)
	if again := repairFrom(t, standby, 0, primary); again.BlobsBad != 0 || again.WireIn != 0 {
		t.Errorf("second repair: %+v", again)
	}

	// The other way: the primary's copy rots, the standby has a good one.
	pblobs := dataBlobs(t, primary)
	pbad := pblobs[len(pblobs)-1].ID
	corruptBlob(t, primary, pbad)
	checkFails(t, primary, pbad)
	rep = repairFrom(t, primary, 0, standby)
	if rep.BlobsRepaired != 1 || rep.Repaired[0].Blob != pbad.String() || len(rep.Lost) != 0 {
		t.Fatalf("repair of the primary: %+v", rep)
	}
	runOK(t, "-r", primary, "check", "--read-data")

	// --blobs: a sound blob named as bad is fetched and its pack rewritten.
	named := dataBlobs(t, standby)[1]
	rep = repairFrom(t, standby, 0, primary, "--blobs", named.ID.String())
	if rep.BlobsRepaired != 1 || rep.PacksRewritten != 1 || rep.Repaired[0].Pack != named.Pack.String() {
		t.Fatalf("repair --blobs: %+v", rep)
	}
	runOK(t, "-r", standby, "check", "--read-data")
	if r := run(t, nil, "-r", standby, "repair", "--from", standby); r.code != exitUsage || !strings.Contains(r.stderr, "is this repository") {
		t.Errorf("repair from itself: exit %d, %s", r.code, r.stderr)
	}
	if r := run(t, nil, "-r", standby, "repair"); r.code != exitUsage || !strings.Contains(r.stderr, "repair index") {
		t.Errorf("repair without --from: exit %d, %s", r.code, r.stderr)
	}

	restoreSame(t, primary, tree)
	restoreSame(t, standby, tree)
}

// TestRepairFromPeerOverSSH: the standby repairs a rotten blob from the
// primary through a real sshd whose key is confined to serve of the
// primary's repository.
func TestRepairFromPeerOverSSH(t *testing.T) {
	_, primary, standby, tree := repairPair(t)
	s := sshdtest.Start(t)
	s.Authorize(forcedCommand(s.ClientPub, primary))
	blobs := dataBlobs(t, standby)
	bad := []index.ID{blobs[0].ID, blobs[len(blobs)-1].ID}
	for _, id := range bad {
		corruptBlob(t, standby, id)
	}
	checkFails(t, standby, bad...)
	rep := repairFrom(t, standby, 0, append([]string{s.URL(primary)}, sshFlags(s)...)...)
	t.Logf("repair over ssh: %+v", rep)
	var got []string
	for _, r := range rep.Repaired {
		got = append(got, r.Blob)
	}
	slices.Sort(got)
	want := []string{bad[0].String(), bad[1].String()}
	slices.Sort(want)
	if rep.From != s.URL(primary) || rep.BlobsRepaired != 2 || !slices.Equal(got, want) || len(rep.Lost) != 0 || rep.WireIn == 0 {
		t.Fatalf("repair over ssh: %+v", rep)
	}
	runOK(t, "-r", standby, "check", "--read-data")
	restoreSame(t, standby, tree)
}

// TestRepairPeerLacksBlob: the primary holds a second snapshot the standby
// never received. A rotten blob only it uses cannot be repaired from the
// standby: repair repairs what it can, names the blob, its path and the
// snapshot that needs it, and exits 1; check still names it. Forgetting
// that snapshot and pruning then leave a repository that passes.
func TestRepairPeerLacksBlob(t *testing.T) {
	_, primary, standby, tree := repairPair(t)
	shared := dataBlobs(t, primary)
	onlyFile := filepath.Join(tree, "usr/bin/new")
	dirInfo, err := os.Stat(filepath.Dir(onlyFile))
	if err != nil {
		t.Fatal(err)
	}
	fresh := make([]byte, 300<<10)
	rand.NewChaCha8([32]byte{8}).Read(fresh)
	if err := os.WriteFile(onlyFile, fresh, 0o755); err != nil {
		t.Fatal(err)
	}
	runOK(t, "-r", primary, "snapshot", tree)
	second := listSnapshots(t, primary)
	if len(second) != 2 {
		t.Fatalf("primary has %d snapshots", len(second))
	}
	var newID string
	for _, s := range second {
		if !slices.ContainsFunc(listSnapshots(t, standby), func(l listedSnapshot) bool { return l.ID == s.ID }) {
			newID = s.ID
		}
	}
	var only index.ID
	for _, b := range dataBlobs(t, primary) {
		if !slices.ContainsFunc(shared, func(s index.Blob) bool { return s.ID == b.ID }) {
			only = b.ID
			break
		}
	}
	if only.IsZero() || newID == "" {
		t.Fatal("the second snapshot has no data blob of its own")
	}
	corruptBlob(t, primary, only)
	corruptBlob(t, primary, shared[0].ID)
	checkFails(t, primary, only, shared[0].ID)

	rep := repairFrom(t, primary, exitError, standby)
	t.Logf("repair: %+v", rep)
	if rep.BlobsBad != 2 || rep.BlobsRepaired != 1 || rep.Repaired[0].Blob != shared[0].ID.String() || len(rep.Lost) != 1 {
		t.Fatalf("repair: %+v", rep)
	}
	l := rep.Lost[0]
	if l.Blob != only.String() || !strings.Contains(l.Error, "does not hold it") || l.Path != onlyFile ||
		!slices.Equal(l.Snapshots, []string{newID[:8]}) {
		t.Fatalf("lost blob: %+v; want %s at %s, needed by %s", l, only, onlyFile, newID[:8])
	}
	r := run(t, nil, "-r", primary, "repair", "--from", standby)
	if r.code != exitError || !strings.Contains(r.stdout, "still bad: blob "+only.String()) || !strings.Contains(r.stdout, newID[:8]) ||
		!strings.Contains(r.stderr, "forget") {
		t.Errorf("repair text: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	out := checkFails(t, primary, only)
	if strings.Contains(out, shared[0].ID.String()) {
		t.Errorf("check still names the repaired blob:\n%s", out)
	}

	// What forget would do, then prune: the bad blob goes with the
	// snapshot that needed it.
	sid, err := index.ParseID(newID)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := index.Open(filepath.Join(primary, "index.db"), index.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := idx.RemoveSnapshotRecords([]index.ID{sid}); err != nil || n != 1 {
		t.Fatalf("forget: %d %v", n, err)
	}
	idx.Close()
	runOK(t, "-r", primary, "prune")
	runOK(t, "-r", primary, "check", "--read-data")
	// The tree as the first snapshot has it.
	if err := os.Remove(onlyFile); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Dir(onlyFile), dirInfo.ModTime(), dirInfo.ModTime()); err != nil {
		t.Fatal(err)
	}
	restoreSame(t, primary, tree)
}

// TestRepairRefusesBadPeerCopy: the peer's copy has rotted too; serve
// sends it as its pack holds it, the client's hash check refuses it, and
// nothing is written: the packs are byte for byte what they were, check
// still names the blob, repair exits 1 saying why.
func TestRepairRefusesBadPeerCopy(t *testing.T) {
	_, primary, standby, _ := repairPair(t)
	bad := dataBlobs(t, standby)[1].ID
	corruptBlob(t, standby, bad)
	corruptBlob(t, primary, bad)
	before := packFiles(t, standby)
	rep := repairFrom(t, standby, exitError, primary)
	t.Logf("repair: %+v", rep)
	if rep.BlobsRepaired != 0 || len(rep.Lost) != 1 || rep.Lost[0].Blob != bad.String() || !strings.Contains(rep.Lost[0].Error, "does not verify") ||
		rep.PacksWritten != 0 || rep.BytesFetched != 0 {
		t.Fatalf("repair: %+v", rep)
	}
	if !samePacks(before, packFiles(t, standby)) {
		t.Error("a refused copy changed the packs")
	}
	checkFails(t, standby, bad)
}

// TestRepairIndexAfterDamage: index.db truncated, its meta pages
// overwritten with garbage, or deleted: repair index rebuilds it from the
// packs with every snapshot, check --read-data passes, and the latest
// snapshot restores byte for byte.
func TestRepairIndexAfterDamage(t *testing.T) {
	base, primary, _, tree := repairPair(t)
	writeFiles(t, tree, map[string]string{"etc/motd": "changed\n"})
	runOK(t, "-r", primary, "snapshot", tree)
	want := listSnapshots(t, primary)
	if len(want) != 2 {
		t.Fatalf("%d snapshots", len(want))
	}
	for _, how := range []string{"truncated", "garbage", "deleted"} {
		t.Run(how, func(t *testing.T) {
			repo := filepath.Join(base, "copy-"+how)
			copyRepo(t, primary, repo)
			db := filepath.Join(repo, "index.db")
			switch how {
			case "truncated":
				fi, err := os.Stat(db)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.Truncate(db, fi.Size()/3); err != nil {
					t.Fatal(err)
				}
			case "garbage":
				f, err := os.OpenFile(db, os.O_RDWR, 0)
				if err != nil {
					t.Fatal(err)
				}
				junk := bytes.Repeat([]byte{0xa5, 0x5a, 0x00, 0xff}, 2*4096/4) // both meta pages
				if _, err := f.WriteAt(junk, 0); err != nil {
					t.Fatal(err)
				}
				f.Close()
			case "deleted":
				if err := os.Remove(db); err != nil {
					t.Fatal(err)
				}
			}
			if r := run(t, nil, "-r", repo, "check", "--read-data"); r.code == 0 {
				t.Fatalf("check passes with the index %s", how)
			}
			runOK(t, "-r", repo, "repair", "index")
			if got := listSnapshots(t, repo); !slices.Equal(got, want) {
				t.Fatalf("snapshots after repair index: %v, want %v", got, want)
			}
			runOK(t, "-r", repo, "check", "--read-data")
			restoreSame(t, repo, tree)
		})
	}
}
