package chunkstore

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/understudy/understudy/chunkstore/faultpoint"
	"github.com/understudy/understudy/index"
)

// Prune removes what no snapshot in the index reaches (docs/design.md,
// "Prune"):
//
//	mark:   every snapshot record, and every blob its trees reach,
//	        each tree read once
//	plan:   per pack, the stored bytes of its marked blobs;
//	        no marked blob                 -> delete
//	        unused share > MaxUnused, or an unused snapshot record -> repack
//	remove pack files the index does not know
//	delete: one transaction drops the deleted packs and their blobs,
//	        then their files are removed
//	repack: marked blobs of the repacked packs are copied as stored into
//	        new packs (written, fsynced, indexed: the Uploader's order);
//	        one transaction points them at the new packs and drops the old
//	        packs and their other blobs; then the old files are removed
//
// A file is removed only after the commit that leaves the index naming
// nothing in it, so a crash anywhere leaves a repository that check passes.

// Links tells prune what a blob names, which chunkstore cannot know: it
// decodes raw, a snapshot record (t is SnapshotBlob) or a tree (TreeBlob),
// and calls fn for every blob that it names, with that blob's type (TreeBlob
// or DataBlob). An error stops the prune before anything is changed.
type Links func(t index.BlobType, raw []byte, fn func(id index.ID, t index.BlobType)) error

// DefaultMaxUnused is the share of a pack's bytes that may be unused before
// prune repacks it. Repacking a pack copies its used bytes to free the
// unused ones: at 10 % each byte freed costs at most nine bytes copied, and
// after a prune no pack, hence no repository, is more than 10 % garbage.
const DefaultMaxUnused = 0.10

// PruneOptions tune Prune.
type PruneOptions struct {
	// MaxUnused is the share (0 to 1) of a pack's bytes that may be held by
	// blobs no snapshot reaches before the pack is repacked.
	MaxUnused float64
	// DryRun plans and reports without changing anything.
	DryRun bool
	// Links decodes records and trees; required.
	Links Links
	// Progress, if not nil, is called now and then with the phase ("mark",
	// "repack"), the work done and the total (0 when unknown).
	Progress func(phase string, done, total int64)

	stopAt string // tests: return at this point, as if killed there
}

// PruneStats say what Prune did, or would do with DryRun (BytesFreed is
// then an estimate).
type PruneStats struct {
	Snapshots      int   `json:"snapshots"`
	Trees          int   `json:"trees"`             // distinct trees walked
	BlobsUsed      int   `json:"blobs_used"`        // blobs the snapshots reach
	Packs          int   `json:"packs"`             // indexed packs before
	PacksDeleted   int   `json:"packs_deleted"`     // packs of unused blobs only, removed
	PacksRepacked  int   `json:"packs_repacked"`    // packs whose used blobs were copied, removed
	PacksWritten   int   `json:"packs_written"`     // new packs holding those copies
	PacksUnindexed int   `json:"packs_unindexed"`   // pack files the index did not know, removed
	BlobsRemoved   int   `json:"blobs_removed"`     // index entries of unused blobs removed
	BlobsRepacked  int   `json:"blobs_repacked"`    // used blobs copied into new packs
	BytesRepacked  int64 `json:"bytes_repacked"`    // their stored bytes
	BytesBefore    int64 `json:"bytes_before"`      // indexed pack bytes before
	BytesFreed     int64 `json:"bytes_freed"`       // pack bytes removed, less the new packs' bytes
	UnusedKept     int64 `json:"bytes_unused_kept"` // unused bytes left in packs under MaxUnused
}

// ErrPruneRefused is wrapped when the index is not sound enough to tell
// garbage from data: a blob a snapshot reaches is not indexed, or a blob
// names a pack the index does not list. Nothing is changed then.
var ErrPruneRefused = errors.New("prune refused")

// errStopped is what a test's stopAt returns.
var errStopped = errors.New("stopped for a test")

// Prune removes blobs no snapshot in the index reaches; see the comment at
// the top of this file. The repository must be open exclusively.
func (r *Repo) Prune(ctx context.Context, opts PruneOptions) (PruneStats, error) {
	var st PruneStats
	if r.lock.mode != Exclusive || r.idx == nil {
		return st, errors.New("prune needs the repository open exclusively, with its index")
	}
	if opts.Links == nil || opts.MaxUnused < 0 || opts.MaxUnused > 1 {
		return st, fmt.Errorf("prune: bad options (links set: %v, max unused %v)", opts.Links != nil, opts.MaxUnused)
	}
	marked, err := r.mark(ctx, opts, &st)
	if err != nil {
		return st, err
	}
	p, err := r.planPrune(marked, opts.MaxUnused, &st)
	if err != nil {
		return st, err
	}
	if opts.DryRun {
		return st, nil
	}
	stop := func(at string) error {
		if opts.stopAt == at {
			return errStopped
		}
		return ctx.Err()
	}

	// Pack files the index does not know hold nothing it names.
	for _, f := range p.unindexed {
		if err := removePackFile(r.PackPath(f.ID)); err != nil {
			return st, fmt.Errorf("prune: %w", err)
		}
	}
	if err := stop("unindexed"); err != nil {
		return st, err
	}

	if len(p.deleted) > 0 {
		if _, err := r.idx.DropPacks(packIDs(p.deleted), p.removeDeleted, nil); err != nil {
			return st, fmt.Errorf("prune: drop unused packs from the index: %w", err)
		}
		if err := stop("deleted-committed"); err != nil {
			return st, err
		}
		if err := r.removeDropped(p.deleted, nil); err != nil {
			return st, fmt.Errorf("prune: %w", err)
		}
	}
	if err := stop("deleted"); err != nil {
		return st, err
	}

	if len(p.repacked) > 0 {
		if err := r.repack(ctx, p, opts, stop, &st); err != nil {
			return st, err
		}
	}
	return st, r.idx.ReleaseMapped()
}

// Marks kept per blob ID during a prune. The map costs 42 to 84 bytes per
// blob as it grows (measured): at most 84 MiB for a million blobs, an OS
// tree's repository with many snapshots.
const (
	markUsed   = 1 << iota // a snapshot reaches it
	markWalked             // a tree queued or read; never read twice
)

// mark returns every blob the snapshots in the index reach. Trees are read
// level by level, each level by one goroutine per core.
func (r *Repo) mark(ctx context.Context, opts PruneOptions, st *PruneStats) (map[index.ID]uint8, error) {
	marked := make(map[index.ID]uint8)
	var level []index.ID
	add := func(next *[]index.ID) func(index.ID, index.BlobType) {
		return func(id index.ID, t index.BlobType) {
			v := marked[id]
			if t == index.TreeBlob && v&markWalked == 0 {
				v |= markWalked
				*next = append(*next, id)
			}
			marked[id] = v | markUsed
		}
	}
	err := r.idx.ForEachSnapshot(func(id index.ID, rec []byte) error {
		st.Snapshots++
		marked[id] |= markUsed // the record's own blob
		if err := opts.Links(index.SnapshotBlob, rec, add(&level)); err != nil {
			return fmt.Errorf("prune: snapshot %s: %w; nothing was changed", id.Short(), err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	workers := runtime.GOMAXPROCS(0)
	for len(level) > 0 {
		var (
			mu   sync.Mutex
			next []index.ID
			pos  atomic.Int64
		)
		g, gctx := errgroup.WithContext(ctx)
		for range workers {
			g.Go(func() error {
				type ref struct {
					id index.ID
					t  index.BlobType
				}
				var refs []ref
				var buf []byte
				for i := pos.Add(1) - 1; i < int64(len(level)); i = pos.Add(1) - 1 {
					if err := gctx.Err(); err != nil {
						return err
					}
					data, err := r.LoadBlob(level[i], buf)
					if err != nil {
						return fmt.Errorf("prune: tree %s: %w; nothing was changed: run `understudy check`", level[i].Short(), err)
					}
					refs = refs[:0]
					if err := opts.Links(index.TreeBlob, data, func(id index.ID, t index.BlobType) { refs = append(refs, ref{id, t}) }); err != nil {
						return fmt.Errorf("prune: tree %s: %w; nothing was changed: run `understudy check`", level[i].Short(), err)
					}
					if cap(data) > cap(buf) {
						buf = data[:0] // links keeps nothing of it
					}
					mu.Lock()
					fn := add(&next)
					for _, rf := range refs {
						fn(rf.id, rf.t)
					}
					mu.Unlock()
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
		st.Trees += len(level)
		if opts.Progress != nil {
			opts.Progress("mark", int64(st.Trees), 0)
		}
		level = next
	}
	st.BlobsUsed = len(marked)
	return marked, nil
}

// packUse is what one indexed pack holds and what prune does with it.
type packUse struct {
	index.Pack
	usedBytes    uint64 // stored bytes of its marked blobs
	used         int    // blobs of it in use
	unusedRecord bool   // it holds the record of a snapshot no longer indexed
	action       packAction
}

type packAction uint8

const (
	keepPack packAction = iota
	deletePack
	repackPack
)

// prunePlan is the work Prune has left after mark.
type prunePlan struct {
	deleted, repacked []index.Pack
	unindexed         []index.Pack // files only: ID and size
	removeDeleted     []index.ID   // unused blobs in deleted packs
	removeRepacked    []index.ID   // unused blobs in repacked packs
	copies            []index.Blob // used blobs in repacked packs, by pack and offset
	// repackEstimate is what BytesFreed counts for the repacked packs until
	// the new packs exist: the old sizes less the copies and their trailer
	// entries.
	repackEstimate int64
}

// unusedBytes returns the bytes of p that no marked blob holds, not
// counting the header, trailer and footer a pack of its blobs needs anyway.
func (p *packUse) unusedBytes() uint64 {
	overhead := uint64(packHeaderSize+packFooterSize) + uint64(p.Count)*packEntrySize
	if p.Size < overhead+p.usedBytes {
		return 0
	}
	return p.Size - overhead - p.usedBytes
}

// planPrune reads the index twice: once to weigh every pack, once to list
// the blobs of the packs that go.
func (r *Repo) planPrune(marked map[index.ID]uint8, maxUnused float64, st *PruneStats) (*prunePlan, error) {
	packs := make(map[index.ID]*packUse)
	err := r.idx.ForEachPack(func(p index.Pack) error {
		packs[p.ID] = &packUse{Pack: p}
		st.BytesBefore += int64(p.Size)
		return nil
	})
	if err != nil {
		return nil, err
	}
	st.Packs = len(packs)
	found, strays := 0, 0
	var stray index.Blob
	err = r.idx.ForEachBlob(func(b index.Blob) error {
		pu := packs[b.Pack]
		switch {
		case pu == nil:
			if strays++; strays == 1 {
				stray = b
			}
		case marked[b.ID]&markUsed != 0:
			found++
			pu.used++
			pu.usedBytes += uint64(b.Length)
		default:
			if b.Type == index.SnapshotBlob {
				pu.unusedRecord = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if strays > 0 {
		return nil, fmt.Errorf("%w: %d indexed blobs (%s, …) name pack %s or others the index does not list; run `understudy check`, and `understudy repair index` to rebuild the index from the packs", ErrPruneRefused, strays, stray.ID.Short(), stray.Pack.Short())
	}
	if found != len(marked) {
		return nil, r.missingMarked(marked, len(marked)-found)
	}

	p := &prunePlan{}
	for _, pu := range packs {
		unused := pu.unusedBytes()
		switch {
		case pu.used == 0:
			pu.action = deletePack
			p.deleted = append(p.deleted, pu.Pack)
			st.BytesFreed += int64(pu.Size)
		case pu.unusedRecord || float64(unused) > maxUnused*float64(pu.Size):
			pu.action = repackPack
			p.repacked = append(p.repacked, pu.Pack)
			est := int64(pu.Size) - int64(pu.usedBytes) - int64(pu.used)*packEntrySize
			p.repackEstimate += est
			st.BytesFreed += est
			st.BlobsRepacked += pu.used
			st.BytesRepacked += int64(pu.usedBytes)
		default:
			st.UnusedKept += int64(unused)
		}
	}
	sortPacks := func(ps []index.Pack) {
		slices.SortFunc(ps, func(a, b index.Pack) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	}
	sortPacks(p.deleted)
	sortPacks(p.repacked)
	st.PacksDeleted, st.PacksRepacked = len(p.deleted), len(p.repacked)
	err = r.forEachPackFile(func(id index.ID, name string) error {
		if packs[id] != nil {
			return nil
		}
		fi, err := os.Lstat(name)
		if err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			p.unindexed = append(p.unindexed, index.Pack{ID: id, Size: uint64(fi.Size())})
			st.PacksUnindexed++
			st.BytesFreed += fi.Size()
		}
		return nil
	}, nil)
	if err != nil {
		return nil, err
	}
	if len(p.deleted)+len(p.repacked) == 0 {
		return p, nil
	}
	err = r.idx.ForEachBlob(func(b index.Blob) error {
		pu := packs[b.Pack]
		if pu == nil {
			return nil
		}
		used := marked[b.ID]&markUsed != 0
		switch {
		case pu.action == deletePack:
			p.removeDeleted = append(p.removeDeleted, b.ID)
			st.BlobsRemoved++
		case pu.action == repackPack && used:
			p.copies = append(p.copies, b)
		case pu.action == repackPack:
			p.removeRepacked = append(p.removeRepacked, b.ID)
			st.BlobsRemoved++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(p.copies, func(a, b index.Blob) int {
		if c := bytes.Compare(a.Pack[:], b.Pack[:]); c != 0 {
			return c
		}
		return cmp.Compare(a.Offset, b.Offset)
	})
	return p, nil
}

// missingMarked names up to three blobs that snapshots reach and the index
// lacks.
func (r *Repo) missingMarked(marked map[index.ID]uint8, n int) error {
	var names []string
	for id := range marked {
		ok, err := r.idx.Has(id)
		if err != nil {
			return err
		}
		if !ok {
			if names = append(names, id.Short()); len(names) == 3 {
				break
			}
		}
	}
	return fmt.Errorf("%w: snapshots reach %d blobs that are not in the index (%v …); nothing was changed: run `understudy check`", ErrPruneRefused, n, names)
}

// repackWorkers copy blobs in parallel, one pack each. Each holds one
// stored and one decoded blob at a time: at most 2 × MaxDataBlob for data,
// 2 × MaxTreeBlob for a tree pack's largest possible blob.
func repackWorkers() int { return runtime.GOMAXPROCS(0) }

// repack copies the used blobs of p.repacked into new packs and drops the
// old packs.
func (r *Repo) repack(ctx context.Context, p *prunePlan, opts PruneOptions, stop func(string) error, st *PruneStats) error {
	rs, err := r.rewritePacks(ctx, packRewrite{op: "prune", drop: p.repacked, copies: p.copies, remove: p.removeRepacked, progress: opts.Progress, stop: stop})
	if err != nil {
		return err
	}
	st.PacksWritten = len(rs.newPacks)
	st.BlobsRepacked = rs.moved
	st.BytesRepacked = rs.bytesWritten
	var oldBytes int64
	for _, pk := range p.repacked {
		oldBytes += int64(pk.Size)
	}
	st.BytesFreed += oldBytes - rs.newBytes - p.repackEstimate
	return nil
}

// packRewrite is work for rewritePacks: packs to replace by new ones.
type packRewrite struct {
	op     string       // the command, for messages: "prune", "repair"
	drop   []index.Pack // the packs replaced
	copies []index.Blob // blobs the index places in them to copy, by pack and offset; each verified first
	// stored are blobs the index places in drop, given in their stored
	// form, written instead of the old packs' copies as they are (the
	// caller verified them, or keeps them as they were).
	stored []StoredBlob
	remove []index.ID // blobs the index places in them that go
	// copies, stored and remove together name every blob the index places
	// in the packs of drop.
	progress func(phase string, done, total int64)
	stop     func(at string) error // tests: "written", "repacked-committed"
}

// rewriteStats say what rewritePacks wrote.
type rewriteStats struct {
	newPacks     map[index.ID]bool
	newBytes     int64 // their size
	moved        int   // blob entries now naming a new pack
	bytesWritten int64 // stored bytes of the blobs written
}

// rewritePacks writes rw.copies and rw.stored into new packs, which the
// Uploader makes durable and indexes (the entries of the blobs still name
// the old packs); then one transaction points every blob written at its new
// pack, removes rw.remove and drops the old packs; then their files are
// removed. A crash at any point leaves a valid repository (docs/design.md,
// "Prune", order of writes).
func (r *Repo) rewritePacks(ctx context.Context, rw packRewrite) (rewriteStats, error) {
	var rs rewriteStats
	stop := rw.stop
	if stop == nil {
		stop = func(string) error { return ctx.Err() }
	}
	before := make(map[index.ID]bool)
	if err := r.idx.ForEachPack(func(pk index.Pack) error { before[pk.ID] = true; return nil }); err != nil {
		return rs, err
	}
	u := r.NewUploader()
	defer u.Close()
	if err := r.copyBlobs(ctx, u, rw.copies, rw.progress, rw.op); err != nil {
		return rs, err
	}
	for _, sb := range rw.stored {
		if err := u.saveCopy(ctx, sb); err != nil {
			return rs, fmt.Errorf("%s: write blob %s: %w", rw.op, sb.ID.Short(), err)
		}
	}
	if _, err := u.Flush(nil); err != nil {
		return rs, fmt.Errorf("%s: write new packs: %w", rw.op, err)
	}
	if err := stop("written"); err != nil {
		return rs, err
	}
	faultpoint.Hit(rw.op + "-before-delete") // new packs indexed, old ones still named: prune-before-delete, repair-before-delete

	// The new packs are indexed, but the blobs still point at the old ones
	// (AddPack keeps a blob's first location). Find where each copy is.
	copied := make(map[index.ID]bool, len(rw.copies)+len(rw.stored))
	for _, b := range rw.copies {
		copied[b.ID] = true
	}
	for _, b := range rw.stored {
		copied[b.ID] = true
	}
	var moved []index.Blob
	rs.newPacks = make(map[index.ID]bool)
	err := r.idx.ForEachPack(func(pk index.Pack) error {
		if !before[pk.ID] {
			rs.newPacks[pk.ID] = true
			rs.newBytes += int64(pk.Size)
		}
		return nil
	})
	if err != nil {
		return rs, err
	}
	for id := range rs.newPacks {
		entries, err := r.packEntries(id)
		if err != nil {
			return rs, fmt.Errorf("%s: read new pack %s: %w", rw.op, id.Short(), err)
		}
		for _, e := range entries {
			if copied[e.ID] {
				delete(copied, e.ID)
				moved = append(moved, index.Blob{ID: e.ID, Location: e.Location(id)})
			}
		}
	}
	drop := rw.drop
	if len(copied) > 0 {
		if drop, moved, err = r.writtenAgain(rw.drop, before, copied, moved, &rs); err != nil {
			return rs, fmt.Errorf("%s: %w", rw.op, err)
		}
	}
	if len(copied) > 0 {
		return rs, fmt.Errorf("%s: %d copied blobs are in no new pack; nothing was dropped", rw.op, len(copied))
	}
	ds, err := r.idx.DropPacks(packIDs(drop), rw.remove, moved)
	if err != nil {
		return rs, fmt.Errorf("%s: drop the rewritten packs from the index: %w", rw.op, err)
	}
	if err := stop("repacked-committed"); err != nil {
		return rs, err
	}
	rs.moved = ds.Moved
	rs.bytesWritten = u.BytesAdded.Load()
	if err := r.removeDropped(drop, rs.newPacks); err != nil {
		return rs, fmt.Errorf("%s: %w", rw.op, err)
	}
	return rs, nil
}

// copyBlobs copies blobs, sorted by pack and offset, in their stored form
// into u, each verified against its ID first: a corrupt blob stops op
// (prune, repair) before the index changes, rather than moving into a pack
// whose name would vouch for it.
func (r *Repo) copyBlobs(ctx context.Context, u *Uploader, blobs []index.Blob, progress func(string, int64, int64), op string) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(repackWorkers())
	var done atomic.Int64
	total := int64(len(blobs))
	for len(blobs) > 0 {
		n := 1
		for n < len(blobs) && blobs[n].Pack == blobs[0].Pack {
			n++
		}
		group := blobs[:n]
		blobs = blobs[n:]
		g.Go(func() error {
			var stored, raw []byte
			for _, b := range group {
				sb, err := r.ReadStored(b.ID, b.Location, stored)
				if err != nil {
					return fmt.Errorf("%s: %w; nothing was dropped", op, err)
				}
				stored = sb.Data
				data, err := r.VerifyStored(sb, raw)
				if err != nil {
					return fmt.Errorf("%s: pack %s: %w; nothing was dropped: run `understudy check --read-data`", op, b.Pack.Short(), err)
				}
				if b.Compression == index.Zstd && cap(data) > cap(raw) {
					raw = data[:0]
				}
				if err := u.saveCopy(gctx, sb); err != nil {
					return fmt.Errorf("%s: copy blob %s: %w", op, b.ID.Short(), err)
				}
				if d := done.Add(1); progress != nil && (d%1024 == 0 || d == total) {
					progress("repack", d, total)
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// saveCopy appends a copy of an indexed blob, in its stored form, to an
// open pack whatever the index says (Save and SaveStored skip indexed
// blobs). The index keeps pointing at the first copy until DropPacks moves
// it. b.Data is not retained.
func (u *Uploader) saveCopy(ctx context.Context, b StoredBlob) error {
	if err := u.failed(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	u.pmu.Lock()
	if _, ok := u.pending[b.ID]; ok {
		u.pmu.Unlock()
		return nil
	}
	u.pending[b.ID] = &pendingBlob{ready: make(chan struct{})}
	u.pmu.Unlock()
	if err := u.appendClaimed(b.Type, b.ID, b.Data, b.Compression, b.RawLength); err != nil {
		return err
	}
	u.backpressure()
	return nil
}

// packEntries reads the trailer of pack id.
func (r *Repo) packEntries(id index.ID) ([]PackEntry, error) {
	f, err := os.Open(r.PackPath(id))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return ReadTrailer(f, fi.Size())
}

// removeDropped removes the files of packs that a committed DropPacks took
// out of the index, except those in keep (a new pack may, in principle,
// have the bytes and so the name of an old one). A pack still indexed is
// left alone whatever the caller thinks.
func (r *Repo) removeDropped(packs []index.Pack, keep map[index.ID]bool) error {
	for _, pk := range packs {
		if keep[pk.ID] {
			continue
		}
		if _, ok, err := r.idx.PackInfo(pk.ID); err != nil || ok {
			if err == nil {
				err = fmt.Errorf("pack %s is still indexed", pk.ID.Short())
			}
			return err
		}
		if err := removePackFile(r.PackPath(pk.ID)); err != nil {
			return err
		}
	}
	return nil
}

// removePackFile removes a pack file; one already gone is no error. The
// removal is not synced: a pack file that comes back after a power loss is
// one the index does not know, which check notes and the next prune
// removes.
func removePackFile(name string) error {
	if err := os.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func packIDs(packs []index.Pack) []index.ID {
	ids := make([]index.ID, len(packs))
	for i, p := range packs {
		ids[i] = p.ID
	}
	return ids
}
