package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"

	"github.com/understudy/understudy/index"
)

// peerPair makes two repositories holding the same two snapshots, as a
// primary and its standby do.
func peerPair(t *testing.T) (local, peer *toyRepo, data []index.ID) {
	local, peer = newToyRepo(t), newToyRepo(t)
	for i := range 40 {
		data = append(data, local.blob(i))
		peer.blob(i)
	}
	for _, tr := range []*toyRepo{local, peer} {
		tr.snapshot([][]index.ID{data[:20], data[20:30]})
		tr.snapshot([][]index.ID{data[10:], data[:5]})
	}
	return local, peer, data
}

// repoSource serves good copies from src, as serve does: a blob in lack
// is missing, and tamper, if set, changes each copy before it is sent.
func repoSource(src *Repo, lack map[index.ID]bool, tamper func(*StoredBlob)) BlobSource {
	return func(ctx context.Context, want []index.Blob, got func(index.ID, StoredBlob, error) error) error {
		for _, w := range want {
			loc, ok, err := src.idx.Lookup(w.ID)
			if err != nil {
				return err
			}
			if !ok || lack[w.ID] {
				if err := got(w.ID, StoredBlob{}, errors.New("not held")); err != nil {
					return err
				}
				continue
			}
			sb, err := src.ReadStored(w.ID, loc, nil)
			if err != nil {
				return err
			}
			if tamper != nil {
				tamper(&sb)
			}
			if err := got(w.ID, sb, nil); err != nil {
				return err
			}
		}
		return nil
	}
}

// corrupt flips one byte in the middle of blob id's stored bytes, in its
// pack file, and returns the pack.
func corrupt(t *testing.T, r *Repo, id index.ID) index.ID {
	t.Helper()
	loc, ok, err := r.idx.Lookup(id)
	if err != nil || !ok {
		t.Fatalf("blob %s: %v %v", id.Short(), ok, err)
	}
	name := r.PackPath(loc.Pack)
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
	b[0] ^= 0x20
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	r.packs.close()
	return loc.Pack
}

// problems runs check --read-data and returns the blobs of its blob
// problems and the number of other problems that are not harmless.
func problems(t *testing.T, r *Repo) (bad []index.ID, other int) {
	t.Helper()
	err := r.Check(context.Background(), CheckOptions{ReadData: true}, func(p Problem) {
		switch {
		case !p.Blob.IsZero():
			bad = append(bad, p.Blob)
		case !p.Harmless:
			other++
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return bad, other
}

func packExists(r *Repo, id index.ID) bool {
	_, err := os.Stat(r.PackPath(id))
	return err == nil
}

// statsLine is st without its lists.
func statsLine(st RepairStats) string {
	st.Repaired, st.Lost = nil, nil
	return fmt.Sprintf("%+v", st)
}

func (tr *toyRepo) repair(src BlobSource, opts RepairOptions) (*Damage, RepairStats) {
	tr.t.Helper()
	d, err := tr.r.FindDamage(context.Background(), DamageOptions{})
	if err != nil {
		tr.t.Fatal(err)
	}
	st, err := tr.r.Repair(context.Background(), d, src, opts)
	if err != nil {
		tr.t.Fatalf("repair: %v", err)
	}
	return d, st
}

// TestRepairFromPeer: two data blobs and a tree rot; check names them;
// FindDamage places each in its pack; Repair fetches the peer's copies and
// rewrites those packs, whose files go; then check --read-data passes,
// every snapshot reads, and nothing is left to repair.
func TestRepairFromPeer(t *testing.T) {
	local, peer, data := peerPair(t)
	var tree index.ID
	local.r.idx.ForEachBlob(func(b index.Blob) error {
		if b.Type == index.TreeBlob && tree.IsZero() {
			tree = b.ID
		}
		return nil
	})
	rotten := []index.ID{data[3], data[33], tree}
	var oldPacks []index.ID
	for _, id := range rotten {
		oldPacks = append(oldPacks, corrupt(t, local.r, id))
	}
	if bad, _ := problems(t, local.r); len(bad) != 3 {
		t.Fatalf("check names blobs %v, want the 3 corrupted", bad)
	}
	d, st := local.repair(repoSource(peer.r, nil, nil), RepairOptions{})
	t.Logf("damage %d packs, %d other; %s", len(d.Packs), len(d.Other), statsLine(st))
	if d.BadBlobs() != 3 || len(d.Other) != 0 {
		t.Fatalf("damage: %d bad blobs, other %v", d.BadBlobs(), d.Other)
	}
	for _, p := range d.Packs {
		if len(p.Good) == 0 {
			t.Errorf("pack %s: no good blob found beside the bad", p.ID.Short())
		}
	}
	if st.BlobsRepaired != 3 || len(st.Lost) != 0 || st.PacksRewritten != len(d.Packs) || st.PacksWritten == 0 || st.BytesFetched == 0 {
		t.Fatalf("stats %+v, lost %v", st, st.Lost)
	}
	for _, id := range oldPacks {
		if packExists(local.r, id) {
			t.Errorf("damaged pack %s is still there", id.Short())
		}
	}
	local.reopen()
	local.check(false)
	local.verify()
	if d, err := local.r.FindDamage(context.Background(), DamageOptions{}); err != nil || len(d.Packs)+len(d.Other) != 0 {
		t.Fatalf("after repair: %+v %v", d, err)
	}
}

// TestRepairPeerLacks: of two bad blobs in one pack the peer holds one:
// that one is repaired, the pack rewritten, and the other carried over as
// it was, so check still names it, in the new pack. A pack whose only bad
// blob the peer lacks is left alone.
func TestRepairPeerLacks(t *testing.T) {
	local, peer, data := peerPair(t)
	locA, _, _ := local.r.idx.Lookup(data[0])
	var sibling index.ID
	for _, id := range data[1:] {
		if loc, _, _ := local.r.idx.Lookup(id); loc.Pack == locA.Pack {
			sibling = id
			break
		}
	}
	var elsewhere index.ID
	for _, id := range data {
		if loc, _, _ := local.r.idx.Lookup(id); loc.Pack != locA.Pack {
			elsewhere = id
		}
	}
	if sibling.IsZero() || elsewhere.IsZero() {
		t.Fatal("the test needs two data packs, one with two blobs")
	}
	corrupt(t, local.r, data[0])
	corrupt(t, local.r, sibling)
	otherPack := corrupt(t, local.r, elsewhere)
	lack := map[index.ID]bool{sibling: true, elsewhere: true}
	_, st := local.repair(repoSource(peer.r, lack, nil), RepairOptions{})
	t.Logf("%s; lost %v", statsLine(st), st.Lost)
	if st.BlobsRepaired != 1 || len(st.Lost) != 2 || st.PacksRewritten != 1 {
		t.Fatalf("stats %+v", st)
	}
	for _, l := range st.Lost {
		if l.Err == nil || !lack[l.ID] {
			t.Errorf("lost %s: %v", l.ID.Short(), l.Err)
		}
		if l.ID == sibling && (l.Pack == locA.Pack || l.Pack.IsZero()) {
			t.Errorf("blob %s should now be in a new pack, is in %s", l.ID.Short(), l.Pack.Short())
		}
		if l.ID == elsewhere && l.Pack != otherPack {
			t.Errorf("blob %s should still be in its pack %s, is in %s", l.ID.Short(), otherPack.Short(), l.Pack.Short())
		}
	}
	if packExists(local.r, locA.Pack) || !packExists(local.r, otherPack) {
		t.Errorf("pack %s rewritten: %v (want true); pack %s kept: %v (want true)", locA.Pack.Short(), !packExists(local.r, locA.Pack), otherPack.Short(), packExists(local.r, otherPack))
	}
	local.reopen()
	bad, other := problems(t, local.r)
	slices.SortFunc(bad, func(a, b index.ID) int { return slices.Compare(a[:], b[:]) })
	want := []index.ID{sibling, elsewhere}
	slices.SortFunc(want, func(a, b index.ID) int { return slices.Compare(a[:], b[:]) })
	if !slices.Equal(bad, want) {
		t.Errorf("check names %v, want %v", bad, want)
	}
	if other != 1 { // the kept pack's hash
		t.Errorf("%d other problems, want 1 (the kept pack's hash)", other)
	}
	if b, err := local.r.LoadBlob(data[0], nil); err != nil || string(b) != string(local.blobs[data[0]]) {
		t.Errorf("repaired blob: %v", err)
	}
}

// TestRepairRefusesBadCopy: copies that do not hash to their ID, or are of
// the wrong type, are refused and nothing is written.
func TestRepairRefusesBadCopy(t *testing.T) {
	for name, tamper := range map[string]func(*StoredBlob){
		"bytes": func(sb *StoredBlob) { sb.Data[len(sb.Data)/3] ^= 1 },
		"type":  func(sb *StoredBlob) { sb.Type = index.TreeBlob },
		"id":    func(sb *StoredBlob) { sb.ID[0] ^= 1 },
	} {
		t.Run(name, func(t *testing.T) {
			local, peer, data := peerPair(t)
			corrupt(t, local.r, data[7])
			before, n := packBytes(t, local.r.Dir())
			_, st := local.repair(repoSource(peer.r, nil, tamper), RepairOptions{})
			if st.BlobsRepaired != 0 || len(st.Lost) != 1 || st.Lost[0].ID != data[7] || st.PacksWritten != 0 {
				t.Fatalf("stats %+v lost %v", st, st.Lost)
			}
			t.Logf("refused: %v", st.Lost[0].Err)
			if after, m := packBytes(t, local.r.Dir()); after != before || m != n {
				t.Errorf("packs changed: %d bytes in %d, were %d in %d", after, m, before, n)
			}
			if bad, _ := problems(t, local.r); len(bad) != 1 || bad[0] != data[7] {
				t.Errorf("check names %v", bad)
			}
		})
	}
}

// TestRepairWholePack: a pack file gone, or every blob of it rotten,
// makes every blob of it bad; the peer has them all, and the pack is
// written again from its copies alone, in order: the same bytes, hence the
// same name, which must then stay indexed with its blobs where they were.
func TestRepairWholePack(t *testing.T) {
	for _, how := range []string{"missing", "rotten"} {
		t.Run(how, func(t *testing.T) {
			local, peer, data := peerPair(t)
			loc, _, _ := local.r.idx.Lookup(data[12])
			if how == "missing" {
				if err := os.Remove(local.r.PackPath(loc.Pack)); err != nil {
					t.Fatal(err)
				}
			} else {
				local.r.idx.ForEachBlob(func(b index.Blob) error {
					if b.Pack == loc.Pack {
						corrupt(t, local.r, b.ID)
					}
					return nil
				})
				local.r.LoadBlob(data[12], nil) // the pack's file is open, as in a long-running process
			}
			local.r.packs.close()
			d, st := local.repair(repoSource(peer.r, nil, nil), RepairOptions{})
			t.Logf("%s", statsLine(st))
			if len(d.Packs) != 1 || len(d.Packs[0].Good) != 0 || st.BlobsRepaired != len(d.Packs[0].Bad) || len(st.Lost) != 0 {
				t.Fatalf("damage %+v stats %+v", d, st)
			}
			local.verify() // in the same process
			local.check(false)
			if !packExists(local.r, loc.Pack) {
				t.Errorf("pack %s, written again as it was, was removed", loc.Pack.Short())
			}
		})
	}
}

// TestRepairNamedBlobs: DamageOptions.Blobs takes sound blobs as bad
// without a check; their packs are rewritten all the same.
func TestRepairNamedBlobs(t *testing.T) {
	local, peer, data := peerPair(t)
	d, err := local.r.FindDamage(context.Background(), DamageOptions{Blobs: []index.ID{data[2], index.Hash([]byte("not held"))}})
	if err != nil {
		t.Fatal(err)
	}
	if d.BadBlobs() != 1 || len(d.Other) != 1 || !errors.Is(d.Other[0].Err, ErrBlobMissing) {
		t.Fatalf("damage %+v", d)
	}
	st, err := local.r.Repair(context.Background(), d, repoSource(peer.r, nil, nil), RepairOptions{})
	if err != nil || st.BlobsRepaired != 1 || st.PacksRewritten != 1 {
		t.Fatalf("repair: %+v %v", st, err)
	}
	local.check(false)
	local.verify()
}

// TestRepairStopped stops a repair after the new packs are indexed and
// after the commit, as a crash would: the repository is valid (the bad
// blob still named before the commit, only harmless notes after), and the
// next repair finishes the job.
func TestRepairStopped(t *testing.T) {
	for _, at := range []string{"written", "repacked-committed"} {
		t.Run(at, func(t *testing.T) {
			local, peer, data := peerPair(t)
			corrupt(t, local.r, data[25])
			d, err := local.r.FindDamage(context.Background(), DamageOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := local.r.Repair(context.Background(), d, repoSource(peer.r, nil, nil), RepairOptions{stopAt: at}); !errors.Is(err, errStopped) {
				t.Fatalf("stopped at %s: %v", at, err)
			}
			local.reopen()
			bad, other := problems(t, local.r)
			switch at {
			case "written":
				if len(bad) != 1 || bad[0] != data[25] || other != 1 {
					t.Fatalf("before the commit: bad %v, %d other problems; want the one blob and its pack's hash", bad, other)
				}
			default:
				if len(bad) != 0 || other != 0 {
					t.Fatalf("after the commit: bad %v, %d other problems", bad, other)
				}
			}
			local.repair(repoSource(peer.r, nil, nil), RepairOptions{})
			local.check(true)
			local.verify()
			local.prune(PruneOptions{MaxUnused: DefaultMaxUnused})
			local.check(false)
			local.verify()
		})
	}
}
