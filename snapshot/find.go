package snapshot

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/understudy/understudy/index"
)

// Listed is a snapshot with its decoded record.
type Listed struct {
	ID index.ID
	*Record
}

// List returns the snapshots in the index, oldest first, only those of set
// when set is not empty. Records that do not decode are returned in bad.
func List(idx *index.DB, set string) (snaps []Listed, bad []error, err error) {
	err = idx.ForEachSnapshot(func(id index.ID, rec []byte) error {
		r, err := DecodeRecord(rec)
		if err != nil {
			bad = append(bad, fmt.Errorf("snapshot %s: %w", id.Short(), err))
			return nil
		}
		if set == "" || r.Set == set {
			snaps = append(snaps, Listed{ID: id, Record: r})
		}
		return nil
	})
	slices.SortStableFunc(snaps, func(a, b Listed) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return strings.Compare(a.ID.String(), b.ID.String())
	})
	return snaps, bad, err
}

// ErrNoSnapshot is wrapped when a snapshot reference names nothing.
var ErrNoSnapshot = errors.New("no such snapshot")

// Find resolves a reference: a unique prefix of a snapshot ID, "latest" or
// "latest~N" (the Nth before the latest), within set when set is not empty.
func Find(idx *index.DB, ref, set string) (Listed, error) {
	if ref == "latest" || strings.HasPrefix(ref, "latest~") {
		back := 0
		if ref != "latest" {
			n, err := strconv.Atoi(ref[len("latest~"):])
			if err != nil || n < 0 {
				return Listed{}, fmt.Errorf("snapshot reference %q: want latest~N with N a number", ref)
			}
			back = n
		}
		snaps, _, err := List(idx, set)
		if err != nil {
			return Listed{}, err
		}
		if back >= len(snaps) {
			where := ""
			if set != "" {
				where = " of set " + set
			}
			return Listed{}, fmt.Errorf("%s: %w (there are %d snapshots%s)", ref, ErrNoSnapshot, len(snaps), where)
		}
		return snaps[len(snaps)-1-back], nil
	}
	if len(ref) < 4 || strings.Trim(strings.ToLower(ref), "0123456789abcdef") != "" {
		return Listed{}, fmt.Errorf("snapshot reference %q: want at least 4 hex digits of an ID, latest or latest~N", ref)
	}
	ids, err := idx.SnapshotsWithPrefix(strings.ToLower(ref))
	if err != nil {
		return Listed{}, err
	}
	switch len(ids) {
	case 0:
		return Listed{}, fmt.Errorf("%s: %w", ref, ErrNoSnapshot)
	case 1:
	default:
		return Listed{}, fmt.Errorf("snapshot reference %q is ambiguous: %d snapshots begin with it; give more digits", ref, len(ids))
	}
	rec, _, err := idx.SnapshotRecord(ids[0])
	if err != nil {
		return Listed{}, err
	}
	r, err := DecodeRecord(rec)
	if err != nil {
		return Listed{}, fmt.Errorf("snapshot %s: %w", ids[0].Short(), err)
	}
	if set != "" && r.Set != set {
		return Listed{}, fmt.Errorf("snapshot %s belongs to set %q, not %q", ids[0].Short(), r.Set, set)
	}
	return Listed{ID: ids[0], Record: r}, nil
}
