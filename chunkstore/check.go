package chunkstore

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/understudy/understudy/index"
)

// Problem is one thing check found wrong. Blob is zero when the problem is
// with the pack as a whole.
type Problem struct {
	Pack index.ID
	Blob index.ID
	Err  error
	// Harmless problems need no repair: a pack sealed by an interrupted
	// writer before it could be indexed.
	Harmless bool
}

func (p Problem) Error() string {
	switch {
	case p.Blob.IsZero() && p.Pack.IsZero():
		return p.Err.Error()
	case p.Blob.IsZero():
		return fmt.Sprintf("pack %s: %v", p.Pack, p.Err)
	case p.Pack.IsZero():
		return fmt.Sprintf("blob %s: %v", p.Blob, p.Err)
	}
	return fmt.Sprintf("pack %s, blob %s: %v", p.Pack, p.Blob, p.Err)
}

// CheckOptions tune Check.
type CheckOptions struct {
	// ReadData re-reads every pack, checks its hash against its name and
	// every blob's hash against its ID.
	ReadData bool
	// Progress is called after each pack with the number done and the total.
	Progress func(done, total int)
}

// Check verifies the index against the packs: every indexed pack exists with
// its indexed size and a valid trailer that agrees with the index, every
// indexed blob is in its pack, and (ReadData) every byte hashes right. It
// calls report for each problem and returns an error only when it cannot go
// on. Unindexed pack files are reported as problems too; they are harmless
// leftovers of an interrupted writer.
func (r *Repo) Check(ctx context.Context, opts CheckOptions, report func(Problem)) error {
	if err := r.idx.Check(); err != nil {
		report(Problem{Err: fmt.Errorf("index.db: %w", err)})
	}
	// Blobs per pack, as the index says: memory is one counter per pack.
	perPack := make(map[index.ID]uint32)
	err := r.idx.ForEachBlob(func(b index.Blob) error {
		perPack[b.Pack]++
		return nil
	})
	if err != nil {
		return err
	}
	var packs []index.Pack
	if err := r.idx.ForEachPack(func(p index.Pack) error { packs = append(packs, p); return nil }); err != nil {
		return err
	}
	known := make(map[index.ID]bool, len(packs))
	for _, p := range packs {
		known[p.ID] = true
	}
	for id, n := range perPack {
		if !known[id] {
			report(Problem{Pack: id, Err: fmt.Errorf("%d indexed blobs name this pack, which is not indexed", n)})
		}
	}
	for i, p := range packs {
		if err := ctx.Err(); err != nil {
			return err
		}
		r.checkPack(p, perPack[p.ID], opts.ReadData, report)
		if opts.Progress != nil {
			opts.Progress(i+1, len(packs))
		}
	}
	return r.findUnindexed(known, report)
}

func (r *Repo) checkPack(p index.Pack, indexed uint32, readData bool, report func(Problem)) {
	f, err := os.Open(r.PackPath(p.ID))
	if err != nil {
		report(Problem{Pack: p.ID, Err: err})
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		report(Problem{Pack: p.ID, Err: err})
		return
	}
	if uint64(fi.Size()) != p.Size {
		report(Problem{Pack: p.ID, Err: fmt.Errorf("size %d, the index says %d", fi.Size(), p.Size)})
	}
	entries, err := ReadTrailer(f, fi.Size())
	if err != nil {
		report(Problem{Pack: p.ID, Err: err})
		return
	}
	var matched uint32
	for _, e := range entries {
		loc, ok, err := r.idx.Lookup(e.ID)
		if err != nil {
			report(Problem{Pack: p.ID, Blob: e.ID, Err: err})
			continue
		}
		if !ok || loc.Pack != p.ID {
			continue // a duplicate indexed elsewhere, or not indexed: harmless
		}
		matched++
		if loc != e.Location(p.ID) {
			report(Problem{Pack: p.ID, Blob: e.ID, Err: fmt.Errorf("index location %+v differs from the pack trailer %+v", loc, e)})
		}
	}
	if matched != indexed {
		report(Problem{Pack: p.ID, Err: fmt.Errorf("the index places %d blobs in this pack, its trailer lists %d of them", indexed, matched)})
	}
	if !readData {
		return
	}
	if err := verifyPackHash(f, fi.Size(), p.ID); err != nil {
		report(Problem{Pack: p.ID, Err: err})
	}
	var buf []byte
	for _, e := range entries {
		data, err := r.LoadAt(e.ID, e.Location(p.ID), buf)
		if err != nil {
			report(Problem{Pack: p.ID, Blob: e.ID, Err: errors.Unwrap(err)})
			continue
		}
		if cap(data) > cap(buf) {
			buf = data[:0]
		}
	}
}

// findUnindexed reports pack files that the index does not know.
func (r *Repo) findUnindexed(known map[index.ID]bool, report func(Problem)) error {
	return r.forEachPackFile(func(id index.ID, _ string) error {
		if !known[id] {
			report(Problem{Pack: id, Harmless: true, Err: errors.New("pack file is not indexed (left by an interrupted write; `prune` removes it)")})
		}
		return nil
	}, func(rel string) {
		report(Problem{Err: fmt.Errorf("unexpected file packs/%s", rel)})
	})
}
