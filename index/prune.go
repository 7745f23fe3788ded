package index

import (
	"bytes"
	"errors"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// ErrDropPlan is wrapped when DropPacks is asked to do something that would
// leave the index naming a pack that no longer exists, or to touch a blob
// that is not in a dropped pack. Nothing is changed then.
var ErrDropPlan = errors.New("prune plan does not match the index")

// DropStats say what DropPacks changed.
type DropStats struct {
	Packs   int // pack entries removed
	Removed int // blob entries removed
	Moved   int // blob entries that now name a new pack
}

// DropPacks removes packs from the index in one transaction (prune's
// commit point):
//
//   - every blob of moved gets its new location, which must be in an
//     indexed pack that is not dropped;
//   - every blob of removed loses its entry;
//   - the pack entries of drop are deleted.
//
// Each blob of moved and removed must be placed by the index in one of the
// dropped packs; otherwise (another copy is indexed in a kept pack) the
// caller's plan is stale and the transaction is rolled back with
// ErrDropPlan. The caller must list every blob the index places in the
// dropped packs, in removed or in moved, so that no entry names a pack file
// about to be deleted; it holds the repository exclusively between reading
// the index and calling DropPacks, so that list cannot go stale.
func (db *DB) DropPacks(drop []ID, removed []ID, moved []Blob) (DropStats, error) {
	var st DropStats
	dropped := make(map[ID]bool, len(drop))
	for _, id := range drop {
		dropped[id] = true
	}
	removed = slices.Clone(removed)
	slices.SortFunc(removed, func(a, b ID) int { return bytes.Compare(a[:], b[:]) })
	moved = slices.Clone(moved)
	slices.SortFunc(moved, func(a, b Blob) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		st = DropStats{}
		pb, bb := tx.Bucket(bucketPacks), tx.Bucket(bucketBlobs)
		// inDropped checks that the index places blob id in a dropped pack.
		inDropped := func(id ID) error {
			v := bb.Get(id[:])
			if v == nil {
				return fmt.Errorf("%w: blob %s is not indexed", ErrDropPlan, id.Short())
			}
			loc, err := unmarshalLocation(v)
			if err != nil {
				return err
			}
			if !dropped[loc.Pack] {
				return fmt.Errorf("%w: blob %s is indexed in pack %s, which is kept", ErrDropPlan, id.Short(), loc.Pack.Short())
			}
			return nil
		}
		for _, b := range moved {
			if dropped[b.Pack] || pb.Get(b.Pack[:]) == nil {
				return fmt.Errorf("%w: blob %s would move to pack %s, which is not indexed or is dropped", ErrDropPlan, b.ID.Short(), b.Pack.Short())
			}
			if err := inDropped(b.ID); err != nil {
				return err
			}
			if err := bb.Put(b.ID[:], b.Location.marshal()); err != nil {
				return err
			}
			st.Moved++
		}
		for _, id := range removed {
			if err := inDropped(id); err != nil {
				return err
			}
			if err := bb.Delete(id[:]); err != nil {
				return err
			}
			st.Removed++
		}
		for _, id := range drop {
			if pb.Get(id[:]) == nil {
				continue
			}
			if err := pb.Delete(id[:]); err != nil {
				return err
			}
			st.Packs++
		}
		return nil
	})
	if err != nil {
		return DropStats{}, err
	}
	return st, nil
}

// RemoveSnapshotRecords deletes the records of snapshots ids from the index,
// nothing else, and returns how many there were. Their blobs stay until a
// prune. It is the bare deletion that tests and bench tools use to make
// garbage; `forget` has its own, with its policy and the standby's rules.
func (db *DB) RemoveSnapshotRecords(ids []ID) (int, error) {
	n := 0
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		n = 0
		sb := tx.Bucket(bucketSnapshots)
		for _, id := range ids {
			if sb.Get(id[:]) == nil {
				continue
			}
			if err := sb.Delete(id[:]); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}
