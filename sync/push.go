package sync

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/tree"
)

// PushStats say what pushing one snapshot did.
type PushStats struct {
	Snapshot index.ID `json:"snapshot"`
	// AlreadyThere: the standby held the snapshot; nothing was sent.
	AlreadyThere bool `json:"already_there"`
	// Base is the snapshot the standby held that the walk compared
	// against, if any.
	Base        *index.ID `json:"base,omitempty"`
	TreesWalked int64     `json:"trees_walked"` // trees the standby lacked, loaded and examined
	IDsAsked    int64     `json:"ids_asked"`    // blob IDs in have queries
	RoundTrips  int64     `json:"round_trips"`
	TreesSent   int64     `json:"trees_sent"`
	DataSent    int64     `json:"data_blobs_sent"`
	BytesSent   int64     `json:"blob_bytes_sent"` // stored bytes of the blobs sent, or of their deltas
	RawSent     int64     `json:"raw_bytes_sent"`  // their uncompressed size
	// Data blobs sent as a delta against their predecessor (the blob that
	// held the same bytes of the same file in the base), and the stored
	// bytes that saved.
	DeltasSent int64 `json:"deltas_sent"`
	// Trees sent as a delta against the base's tree at the same path.
	TreeDeltas int64 `json:"tree_deltas_sent"`
	DeltaSaved int64 `json:"delta_bytes_saved"`
	// What the standby's repository gained in this session so far.
	StandbyBlobsAdded uint64  `json:"standby_blobs_added"`
	StandbyBytesAdded uint64  `json:"standby_bytes_added"`
	WireOut           int64   `json:"wire_bytes_out"` // protocol bytes to the standby, this snapshot
	WireIn            int64   `json:"wire_bytes_in"`
	DurationSec       float64 `json:"duration_seconds"`
}

// maxBaseCandidates bounds how many of the source's snapshots are offered to
// the standby to find a common base.
const maxBaseCandidates = 1024

// Push sends snapshot id from src and everything it needs that the standby
// lacks, then commits it there. Only trees the standby lacks are walked (a
// tree the standby holds implies everything under it, because a repository
// indexes a tree only after the blobs it names), and data blobs are asked
// about in batches. A snapshot the standby holds (the newest one, of the same
// set first) serves as a base: blobs of a file at the same path in the base
// are known to be there without asking.
//
// The order of sending keeps the standby's repository valid at every instant:
// data blobs first, then trees children before parents, then the record.
func (s *Session) Push(ctx context.Context, src *chunkstore.Repo, id index.ID) (PushStats, error) {
	start := time.Now()
	out0, in0 := s.Wire()
	st := PushStats{Snapshot: id}
	stop := context.AfterFunc(ctx, func() { s.conn.Close() })
	defer stop()
	err := s.push(src, id, &st)
	out1, in1 := s.Wire()
	st.WireOut, st.WireIn = out1-out0, in1-in0
	st.DurationSec = time.Since(start).Seconds()
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return st, err
}

// Accepts asks the standby whether it accepts pushes of set, sending
// nothing else: the pre-flight check that this host is still the set's
// primary. A standby promoted for the set answers with a refusal matching
// ErrRefused, which ends the session; after nil the session goes on.
func (s *Session) Accepts(ctx context.Context, set string) error {
	stop := context.AfterFunc(ctx, func() { s.conn.Close() })
	defer stop()
	begin, err := encodeBegin(index.ID{}, set)
	if err != nil {
		return err
	}
	if err := s.send(fBegin, begin); err != nil {
		return err
	}
	if err := s.flush(); err != nil {
		return err
	}
	if _, err := s.expect(fReady); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return err
	}
	return nil
}

func (s *Session) push(src *chunkstore.Repo, id index.ID, st *PushStats) error {
	record, ok, err := src.Index().SnapshotRecord(id)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("snapshot %s: %w", id.Short(), snapshot.ErrNoSnapshot)
	}
	rec, err := snapshot.DecodeRecord(record)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", id.Short(), err)
	}
	begin, err := encodeBegin(id, rec.Set)
	if err != nil {
		return err
	}
	if err := s.send(fBegin, begin); err != nil {
		return err
	}
	if err := s.flush(); err != nil {
		return err
	}
	if _, err := s.expect(fReady); err != nil {
		return err
	}
	held, err := s.have(st, []index.ID{id})
	if err != nil {
		return err
	}
	if held[0] {
		st.AlreadyThere = true
		return nil
	}
	w := &walk{s: s, src: src, st: st, pred: make(map[index.ID]index.ID), seenData: make(map[index.ID]struct{}), seenTree: make(map[index.ID]struct{}), children: make(map[index.ID][]index.ID)}
	baseRoot, err := w.findBase(id, rec)
	if err != nil {
		return err
	}
	if err := w.run(rec.Root, baseRoot); err != nil {
		return err
	}
	if err := w.sendData(); err != nil {
		return err
	}
	if err := w.sendTrees(rec.Root); err != nil {
		return err
	}
	if err := s.send(fCommit, encodeCommit(id, record)); err != nil {
		return err
	}
	if err := s.flush(); err != nil {
		return err
	}
	p, err := s.expect(fCommitted)
	if err != nil {
		return err
	}
	c, err := decodeCommitted(p)
	if err != nil {
		return err
	}
	if c.Snapshot != id {
		return fmt.Errorf("the standby committed snapshot %s, not %s", c.Snapshot.Short(), id.Short())
	}
	st.StandbyBlobsAdded, st.StandbyBytesAdded = c.BlobsAdded, c.BytesAdded
	return nil
}

// have asks which of ids the standby holds: all batches are sent before the
// replies are read, so a call costs one round trip.
func (s *Session) have(st *PushStats, ids []index.ID) ([]bool, error) {
	held := make([]bool, 0, len(ids))
	if len(ids) == 0 {
		return held, nil
	}
	var buf []byte
	for i := 0; i < len(ids); i += maxHaveIDs {
		batch := ids[i:min(i+maxHaveIDs, len(ids))]
		buf = encodeHave(buf[:0], batch)
		if err := s.send(fHave, buf); err != nil {
			return nil, err
		}
	}
	if err := s.flush(); err != nil {
		return nil, err
	}
	for i := 0; i < len(ids); i += maxHaveIDs {
		n := min(maxHaveIDs, len(ids)-i)
		p, err := s.expect(fHaveReply)
		if err != nil {
			return nil, err
		}
		h, err := decodeHaveReply(p, n)
		if err != nil {
			return nil, err
		}
		held = append(held, h...)
	}
	st.IDsAsked += int64(len(ids))
	st.RoundTrips++
	return held, nil
}

// walk is the have/want negotiation of one snapshot.
type walk struct {
	s   *Session
	src *chunkstore.Repo
	st  *PushStats

	seenData map[index.ID]struct{} // data blobs asked about or known held
	seenTree map[index.ID]struct{} // trees asked about
	askData  []index.ID            // data blobs to ask about at the next round trip
	lacking  []index.Blob          // data blobs to send, with their location here
	// pred maps a data blob of a file to its predecessor, the blob at the
	// same offset of the file at the same path in the base; and a tree to
	// the base's tree at the same path.
	pred map[index.ID]index.ID
	// children are, for each tree the standby lacks, the trees it names
	// that the standby lacks: the order in which to send them.
	children map[index.ID][]index.ID
}

// findBase offers the source's other snapshots, newest first (those of the
// same set before the others), and returns the root tree of the first one
// the standby holds, or the zero ID.
func (w *walk) findBase(id index.ID, rec *snapshot.Record) (index.ID, error) {
	all, _, err := snapshot.List(w.src.Index(), "")
	if err != nil {
		return index.ID{}, err
	}
	slices.Reverse(all)
	slices.SortStableFunc(all, func(a, b snapshot.Listed) int {
		return cmp.Compare(boolInt(a.Set != rec.Set), boolInt(b.Set != rec.Set))
	})
	var cands []snapshot.Listed
	for _, l := range all {
		if l.ID != id && len(cands) < maxBaseCandidates {
			cands = append(cands, l)
		}
	}
	// Usually the standby holds the set's previous snapshot: ask about a
	// few first, then more, so that a long history costs little.
	for lo, hi := 0, 16; lo < len(cands); lo, hi = hi, hi*8 {
		batch := cands[lo:min(hi, len(cands))]
		ids := make([]index.ID, len(batch))
		for i, c := range batch {
			ids[i] = c.ID
		}
		held, err := w.s.have(w.st, ids)
		if err != nil {
			return index.ID{}, err
		}
		for i, h := range held {
			if h {
				base := batch[i].ID
				w.st.Base = &base
				return batch[i].Root, nil
			}
		}
	}
	return index.ID{}, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// pair is a tree of the snapshot and the tree at the same path in the base
// (zero if none).
type pair struct{ id, base index.ID }

// run walks the trees the standby lacks, level by level: one round trip per
// level asks about that level's trees and the data blobs met on the level
// above.
func (w *walk) run(root, baseRoot index.ID) error {
	frontier := []pair{{root, baseRoot}}
	for len(frontier) > 0 {
		var ask []pair
		for _, p := range frontier {
			if p.id == p.base {
				continue // the base's own subtree: held, with everything under it
			}
			if _, ok := w.seenTree[p.id]; ok {
				continue
			}
			w.seenTree[p.id] = struct{}{}
			ask = append(ask, p)
		}
		ids := make([]index.ID, 0, len(ask)+len(w.askData))
		for _, p := range ask {
			ids = append(ids, p.id)
		}
		ids = append(ids, w.askData...)
		held, err := w.s.have(w.st, ids)
		if err != nil {
			return err
		}
		if err := w.noteData(held[len(ask):]); err != nil {
			return err
		}
		frontier = frontier[:0:0]
		for i, p := range ask {
			if held[i] {
				continue
			}
			next, err := w.visit(p)
			if err != nil {
				return err
			}
			frontier = append(frontier, next...)
		}
	}
	held, err := w.s.have(w.st, w.askData)
	if err != nil {
		return err
	}
	return w.noteData(held)
}

// noteData records the answers about askData.
func (w *walk) noteData(held []bool) error {
	for i, id := range w.askData {
		if held[i] {
			continue
		}
		loc, ok, err := w.src.Index().Lookup(id)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("data blob %s: %w in the source repository (run check)", id.Short(), chunkstore.ErrBlobMissing)
		}
		w.lacking = append(w.lacking, index.Blob{ID: id, Location: loc})
	}
	w.askData = w.askData[:0]
	return nil
}

// visit examines a tree the standby lacks and returns its subtrees to walk.
func (w *walk) visit(p pair) ([]pair, error) {
	t, err := snapshot.LoadTree(w.src, p.id)
	if err != nil {
		return nil, err
	}
	w.st.TreesWalked++
	var base *tree.Tree
	if !p.base.IsZero() {
		if base, err = snapshot.LoadTree(w.src, p.base); err != nil {
			base = nil // not in the source any more: ask instead
		} else {
			w.pred[p.id] = p.base
		}
	}
	knownSub := make(map[index.ID]struct{})
	if base != nil {
		for i := range base.Nodes {
			n := &base.Nodes[i]
			switch n.Type {
			case tree.Dir:
				knownSub[n.Subtree] = struct{}{}
			case tree.File:
				for _, e := range n.Content {
					if !e.IsHole() {
						w.seenData[e.Blob] = struct{}{}
					}
				}
			}
		}
	}
	var next []pair
	for i := range t.Nodes {
		n := &t.Nodes[i]
		switch n.Type {
		case tree.Dir:
			if _, ok := knownSub[n.Subtree]; ok {
				continue
			}
			w.children[p.id] = append(w.children[p.id], n.Subtree)
			var b index.ID
			if base != nil {
				if bn := base.Find(n.Name); bn != nil && bn.Type == tree.Dir {
					b = bn.Subtree
				}
			}
			next = append(next, pair{n.Subtree, b})
		case tree.File:
			var bn *tree.Node
			if base != nil {
				if bn = base.Find(n.Name); bn != nil && bn.Type != tree.File {
					bn = nil
				}
			}
			var off uint64
			for _, e := range n.Content {
				at := off
				off += e.Length
				if e.IsHole() {
					continue
				}
				if _, ok := w.seenData[e.Blob]; ok {
					continue
				}
				w.seenData[e.Blob] = struct{}{}
				w.askData = append(w.askData, e.Blob)
				if bn != nil {
					if p := blobAt(bn, at); !p.IsZero() {
						w.pred[e.Blob] = p
					}
				}
			}
		}
	}
	if _, ok := w.children[p.id]; !ok {
		w.children[p.id] = nil
	}
	return next, nil
}
