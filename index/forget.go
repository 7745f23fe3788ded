package index

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// Errors of ForgetSnapshots. Either one rolls the whole transaction back.
var (
	// ErrUnknownSnapshot is wrapped when a snapshot to forget is not in
	// the index: the caller's list is stale.
	ErrUnknownSnapshot = errors.New("snapshot is not in the index")
	// ErrSnapshotInUse is wrapped when a snapshot to forget is the one
	// applied to a target of this standby, or one being applied: the
	// live tree is made of it.
	ErrSnapshotInUse = errors.New("snapshot is in use by a standby target")
)

// ForgetSnapshots removes the records of snapshots ids from the snapshots
// bucket, in one transaction: all of them or, on an error, none. Their
// blobs (the record's own blob too) stay indexed and in their packs until
// a prune removes them; until then `repair index`, which indexes every
// snapshot blob it finds in the packs, brings the snapshots back. The
// change-detection cache of a set whose last snapshot is forgotten is no
// longer used: a snapshot trusts it only while that snapshot is indexed.
//
// The standby state is read in the same transaction: a snapshot that any
// target of any set names as applied or being applied is refused with
// ErrSnapshotInUse, whatever the caller decided.
func (db *DB) ForgetSnapshots(ids []ID) error {
	ids = slices.Clone(ids)
	slices.SortFunc(ids, func(a, b ID) int { return bytes.Compare(a[:], b[:]) })
	ids = slices.Compact(ids)
	return db.bolt.Update(func(tx *bolt.Tx) error {
		inUse, err := standbyInUse(tx)
		if err != nil {
			return err
		}
		sb := tx.Bucket(bucketSnapshots)
		for _, id := range ids {
			if why, ok := inUse[id]; ok {
				return fmt.Errorf("forget snapshot %s: %w (%s)", id.Short(), ErrSnapshotInUse, why)
			}
			if sb.Get(id[:]) == nil {
				return fmt.Errorf("forget snapshot %s: %w", id.Short(), ErrUnknownSnapshot)
			}
			if err := sb.Delete(id[:]); err != nil {
				return err
			}
		}
		return nil
	})
}

// standbyInUse returns the snapshots the standby state of any set names
// as applied to a target or being applied, with what names them.
func standbyInUse(tx *bolt.Tx) (map[ID]string, error) {
	inUse := map[ID]string{}
	b := tx.Bucket(bucketStandby)
	if b == nil {
		return inUse, nil
	}
	err := b.ForEach(func(k, v []byte) error {
		var st StandbyState
		if err := standbyStates.decode(string(k), v, &st); err != nil {
			return err
		}
		name := func(id ID, why string) {
			if _, ok := inUse[id]; !ok {
				inUse[id] = why
			}
		}
		for _, target := range slices.Sorted(maps.Keys(st.Targets)) {
			ts := st.Targets[target]
			if ts == nil {
				continue
			}
			if !ts.Applied.IsZero() {
				name(ts.Applied, fmt.Sprintf("applied to %s, set %s", target, k))
			}
			for _, id := range ts.Applying {
				name(id, fmt.Sprintf("being applied to %s, set %s", target, k))
			}
		}
		return nil
	})
	return inUse, err
}
