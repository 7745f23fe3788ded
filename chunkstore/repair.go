package chunkstore

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/understudy/understudy/index"
)

// Repair from a peer (docs/design.md, "Repair from a peer"):
//
//	find:    a read-data check; each indexed pack it names is read again,
//	         every blob the index places in it verified: those that fail
//	         are bad, the others good
//	fetch:   good copies of the bad blobs, in their stored form, from a
//	         BlobSource (the peer), each verified against its ID and type
//	rewrite: per damaged pack, its good blobs and the copies fetched go to
//	         new packs (prune's repack: written, fsynced, indexed), then one
//	         transaction points them there and drops the old pack, then its
//	         file is removed
//
// A bad blob with no good copy stays bad: still indexed, its bytes as they
// were (in the new pack when the pack is rewritten for other blobs), so
// that check keeps naming it until the snapshots that need it are
// forgotten.

// DamagedPack is an indexed pack holding blobs that do not verify.
type DamagedPack struct {
	index.Pack
	Bad  []index.Blob // blobs the index places in it that do not verify, by offset
	Good []index.Blob // the other blobs it places there, verified, by offset
}

// Damage is what FindDamage found.
type Damage struct {
	Packs []DamagedPack
	// Other are problems good copies of blobs cannot repair: the index
	// itself, blob entries naming packs it does not list, a pack whose
	// problem is not a blob the index places in it (its trailer or size
	// disagreeing with the index). `repair index` is the tool for those.
	Other []Problem
}

// BadBlobs returns the number of bad blobs in d.Packs.
func (d *Damage) BadBlobs() int {
	n := 0
	for _, p := range d.Packs {
		n += len(p.Bad)
	}
	return n
}

// DamageOptions tune FindDamage.
type DamageOptions struct {
	// Blobs, if not nil, are taken as bad without a read-data check: only
	// the packs holding them are read (tests, and a known list).
	Blobs []index.ID
	// Progress is the check's, called after each pack.
	Progress func(done, total int)
}

// FindDamage finds the bad blobs of the repository and the packs holding
// them: a read-data check (Check), then every blob the index places in a
// pack the check named is verified again, so that a blob is bad only when
// the index's own entry for it does not verify.
func (r *Repo) FindDamage(ctx context.Context, opts DamageOptions) (*Damage, error) {
	d := &Damage{}
	suspect := make(map[index.ID][]Problem) // pack -> what check said of it
	forced := make(map[index.ID]bool)
	if opts.Blobs != nil {
		for _, id := range opts.Blobs {
			loc, ok, err := r.idx.Lookup(id)
			if err != nil {
				return nil, err
			}
			if !ok {
				d.Other = append(d.Other, Problem{Blob: id, Err: ErrBlobMissing})
				continue
			}
			forced[id] = true
			suspect[loc.Pack] = append(suspect[loc.Pack], Problem{Pack: loc.Pack, Blob: id, Err: errors.New("named as bad")})
		}
	} else {
		err := r.Check(ctx, CheckOptions{ReadData: true, Progress: opts.Progress}, func(p Problem) {
			switch {
			case p.Harmless:
			case p.Pack.IsZero():
				d.Other = append(d.Other, p)
			default:
				suspect[p.Pack] = append(suspect[p.Pack], p)
			}
		})
		if err != nil {
			return nil, err
		}
	}
	for id, probs := range suspect {
		if _, ok, err := r.idx.PackInfo(id); err != nil {
			return nil, err
		} else if !ok {
			d.Other = append(d.Other, probs...)
			delete(suspect, id)
		}
	}
	if len(suspect) == 0 {
		return d, nil
	}
	members := make(map[index.ID]*DamagedPack, len(suspect))
	err := r.idx.ForEachPack(func(p index.Pack) error {
		if _, ok := suspect[p.ID]; ok {
			members[p.ID] = &DamagedPack{Pack: p}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var all []index.Blob
	err = r.idx.ForEachBlob(func(b index.Blob) error {
		if members[b.Pack] != nil {
			all = append(all, b)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(all, func(a, b index.Blob) int {
		if c := bytes.Compare(a.Pack[:], b.Pack[:]); c != 0 {
			return c
		}
		return cmp.Compare(a.Offset, b.Offset)
	})
	var buf []byte
	for _, b := range all {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		dp := members[b.Pack]
		if forced[b.ID] {
			dp.Bad = append(dp.Bad, b)
			continue
		}
		data, err := r.LoadAt(b.ID, b.Location, buf)
		if err != nil {
			dp.Bad = append(dp.Bad, b)
			continue
		}
		if b.Compression == index.Zstd && cap(data) > cap(buf) {
			buf = data[:0]
		}
		dp.Good = append(dp.Good, b)
	}
	for _, dp := range members {
		if len(dp.Bad) == 0 {
			d.Other = append(d.Other, suspect[dp.ID]...)
			continue
		}
		d.Packs = append(d.Packs, *dp)
	}
	slices.SortFunc(d.Packs, func(a, b DamagedPack) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	return d, nil
}

// BlobSource gives good copies of blobs in their stored form: the peer,
// over the replication protocol (sync.Session.Fetch). It calls got once
// for each blob of want, in order, with the copy, or with missing saying
// why there is none; got may keep b.Data. An error of got stops it.
type BlobSource func(ctx context.Context, want []index.Blob, got func(id index.ID, b StoredBlob, missing error) error) error

// RepairOptions tune Repair.
type RepairOptions struct {
	// Progress, if not nil, is called now and then with the phase
	// ("fetch", "repack"), the work done and the total.
	Progress func(phase string, done, total int64)

	stopAt string // tests: return at this point, as if killed there
}

// RepairStats say what Repair did.
type RepairStats struct {
	PacksDamaged   int   `json:"packs_damaged"`
	PacksRewritten int   `json:"packs_rewritten"` // damaged packs replaced and removed
	PacksWritten   int   `json:"packs_written"`   // new packs holding their blobs
	BlobsBad       int   `json:"blobs_bad"`
	BlobsRepaired  int   `json:"blobs_repaired"` // bad blobs replaced by a good copy
	BlobsCopied    int   `json:"blobs_copied"`   // good blobs of the damaged packs moved with them
	BytesFetched   int64 `json:"bytes_fetched"`  // stored bytes of the good copies
	BytesWritten   int64 `json:"bytes_written"`  // stored bytes written to new packs

	Repaired []RepairedBlob `json:"-"`
	Lost     []LostBlob     `json:"-"` // still bad
}

// RepairedBlob is a bad blob replaced by a good copy.
type RepairedBlob struct {
	ID   index.ID
	Type index.BlobType
	Pack index.ID // the damaged pack it was in
}

// LostBlob is a bad blob Repair could not replace: it stays bad.
type LostBlob struct {
	ID   index.ID
	Type index.BlobType
	Pack index.ID // the pack holding it now
	Err  error    // why: the source had no good copy, or its pack could not be rewritten
}

// repairBatch bounds the good copies held in memory before they are
// written: the damaged packs are repaired a batch at a time, each batch
// the packs whose bad blobs' stored bytes add up to this, or one pack
// whose bad blobs alone weigh more (a pack is at most PackSize plus one
// blob, short of a large tree).
const repairBatch = 64 << 20

// Repair replaces the bad blobs of d.Packs by good copies from src and
// rewrites the packs; see the comment at the top of this file. The
// repository must be open exclusively. A damaged pack is rewritten when at
// least one of its bad blobs has a good copy and every other bad blob of it
// can still be read as it is, to be carried over unchanged; otherwise it
// is left alone. A batch is written only once all its copies have arrived
// and verified: an error of src leaves it untouched.
func (r *Repo) Repair(ctx context.Context, d *Damage, src BlobSource, opts RepairOptions) (RepairStats, error) {
	var st RepairStats
	if r.lock.mode != Exclusive || r.idx == nil {
		return st, errors.New("repair needs the repository open exclusively, with its index")
	}
	st.PacksDamaged = len(d.Packs)
	st.BlobsBad = d.BadBlobs()
	packs := d.Packs
	var fetched int64
	for len(packs) > 0 {
		n, weight := 0, int64(0)
		for n < len(packs) && (n == 0 || weight < repairBatch) {
			for _, b := range packs[n].Bad {
				weight += int64(b.Length)
			}
			n++
		}
		if err := r.repairBatch(ctx, packs[:n], src, opts, &st, &fetched); err != nil {
			return st, err
		}
		packs = packs[n:]
	}
	return st, r.idx.ReleaseMapped()
}

func (r *Repo) repairBatch(ctx context.Context, batch []DamagedPack, src BlobSource, opts RepairOptions, st *RepairStats, fetched *int64) error {
	var want []index.Blob
	types := make(map[index.ID]index.BlobType)
	for _, p := range batch {
		for _, b := range p.Bad {
			want = append(want, b)
			types[b.ID] = b.Type
		}
	}
	good := make(map[index.ID]StoredBlob)
	why := make(map[index.ID]error)
	var scratch []byte
	err := src(ctx, want, func(id index.ID, b StoredBlob, missing error) error {
		t, ok := types[id]
		if !ok {
			return fmt.Errorf("repair: the source answered for blob %s, which was not asked for", id.Short())
		}
		if missing == nil {
			missing = r.checkCopy(id, t, b, &scratch)
		}
		if missing != nil {
			why[id] = missing
		} else {
			good[id] = b
			st.BytesFetched += int64(len(b.Data))
		}
		if *fetched++; opts.Progress != nil {
			opts.Progress("fetch", *fetched, int64(st.BlobsBad))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, b := range want {
		if _, ok := good[b.ID]; !ok && why[b.ID] == nil {
			why[b.ID] = errors.New("the source did not answer for it")
		}
	}

	rw := packRewrite{op: "repair", progress: opts.Progress, stop: func(at string) error {
		if opts.stopAt == at {
			return errStopped
		}
		return ctx.Err()
	}}
	var kept []LostBlob // bad blobs carried over into a new pack
	for _, p := range batch {
		var carried []StoredBlob
		var unreadable *index.Blob
		var unreadableErr error
		recovered := 0
		for i, b := range p.Bad {
			if _, ok := good[b.ID]; ok {
				recovered++
				continue
			}
			sb, err := r.ReadStored(b.ID, b.Location, nil)
			if err != nil {
				if unreadable == nil {
					unreadable, unreadableErr = &p.Bad[i], err
				}
				continue
			}
			carried = append(carried, sb)
		}
		if recovered == 0 || unreadable != nil {
			for _, b := range p.Bad {
				lost := LostBlob{ID: b.ID, Type: b.Type, Pack: p.ID, Err: why[b.ID]}
				if lost.Err == nil {
					lost.Err = fmt.Errorf("a good copy arrived, but pack %s cannot be rewritten: its blob %s has no good copy and cannot be read (%w)",
						p.ID.Short(), unreadable.ID.Short(), unreadableErr)
				}
				st.Lost = append(st.Lost, lost)
			}
			continue
		}
		rw.drop = append(rw.drop, p.Pack)
		rw.copies = append(rw.copies, p.Good...)
		for _, b := range p.Bad {
			if sb, ok := good[b.ID]; ok {
				rw.stored = append(rw.stored, sb)
				st.Repaired = append(st.Repaired, RepairedBlob{ID: b.ID, Type: b.Type, Pack: p.ID})
			} else {
				kept = append(kept, LostBlob{ID: b.ID, Type: b.Type, Err: why[b.ID]})
			}
		}
		rw.stored = append(rw.stored, carried...)
	}
	if len(rw.drop) == 0 {
		return nil
	}
	rs, err := r.rewritePacks(ctx, rw)
	// A damaged pack written again whole, as it was, replaced its file
	// under the same name: no read may go on through the old one.
	r.packs.close()
	if err != nil {
		return err
	}
	st.PacksRewritten += len(rw.drop)
	st.PacksWritten += len(rs.newPacks)
	st.BlobsRepaired = len(st.Repaired)
	st.BlobsCopied += len(rw.copies)
	st.BytesWritten += rs.bytesWritten
	for _, l := range kept {
		loc, ok, err := r.idx.Lookup(l.ID)
		if err != nil {
			return err
		}
		if ok {
			l.Pack = loc.Pack
		}
		st.Lost = append(st.Lost, l)
	}
	return nil
}

// checkCopy verifies a good copy of blob id, of type t, before it is used:
// its ID and type are the ones asked for, and its stored bytes decode,
// within the limits of its type, to content that hashes to its ID.
func (r *Repo) checkCopy(id index.ID, t index.BlobType, b StoredBlob, scratch *[]byte) error {
	if b.ID != id {
		return fmt.Errorf("%w: the copy is of blob %s", ErrBlobHash, b.ID.Short())
	}
	if b.Type != t {
		return fmt.Errorf("the copy is a %s blob, this repository's a %s blob", b.Type, t)
	}
	raw, err := r.VerifyStored(b, *scratch)
	if err != nil {
		var be *BlobError
		if errors.As(err, &be) {
			err = be.Err
		}
		return fmt.Errorf("the copy does not verify: %w", err)
	}
	if b.Compression == index.Zstd {
		*scratch = raw[:0]
	}
	return nil
}

// writtenAgain finds the copies of a rewrite that are in no new pack: a
// pack it sealed may have the bytes, hence the name, of one indexed before
// it began. Either a pack of drop written again whole as it was (every blob
// of a missing pack fetched, in order), which is sound again and stays,
// its blobs where the index places them; or a pack left by a rewrite
// stopped before its commit, which no blob entry names, where the copies
// then move. Only a pack whose file hashes to its name is taken. It removes
// what it finds from copied, adds those packs to rs, and returns the packs
// still to drop and the blobs to move.
func (r *Repo) writtenAgain(drop []index.Pack, before, copied map[index.ID]bool, moved []index.Blob, rs *rewriteStats) ([]index.Pack, []index.Blob, error) {
	found := func(pk index.Pack) {
		rs.newPacks[pk.ID] = true
		rs.newBytes += int64(pk.Size)
	}
	var still []index.Pack
	dropped := make(map[index.ID]bool, len(drop))
	for _, pk := range drop {
		dropped[pk.ID] = true
		entries, err := r.soundPack(pk)
		if err != nil {
			still = append(still, pk)
			continue
		}
		held := 0
		for _, e := range entries {
			if !copied[e.ID] {
				continue
			}
			loc, ok, err := r.idx.Lookup(e.ID)
			if err != nil {
				return nil, nil, err
			}
			if ok && loc == e.Location(pk.ID) {
				delete(copied, e.ID)
				held++
			}
		}
		if held == 0 {
			still = append(still, pk)
			continue
		}
		found(pk)
	}
	if len(copied) == 0 {
		return still, moved, nil
	}
	named := make(map[index.ID]bool)
	err := r.idx.ForEachBlob(func(b index.Blob) error {
		named[b.Pack] = true
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	var orphans []index.Pack
	err = r.idx.ForEachPack(func(pk index.Pack) error {
		if before[pk.ID] && !named[pk.ID] && !dropped[pk.ID] {
			orphans = append(orphans, pk)
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	for _, pk := range orphans {
		entries, err := r.soundPack(pk)
		if err != nil {
			continue
		}
		n := len(moved)
		for _, e := range entries {
			if copied[e.ID] {
				delete(copied, e.ID)
				moved = append(moved, index.Blob{ID: e.ID, Location: e.Location(pk.ID)})
			}
		}
		if len(moved) > n {
			found(pk)
		}
	}
	return still, moved, nil
}

// soundPack returns the trailer of pack pk if its file has the indexed
// size and hashes to its name.
func (r *Repo) soundPack(pk index.Pack) ([]PackEntry, error) {
	entries, size, err := readPackFile(r.PackPath(pk.ID), pk.ID)
	if err != nil {
		return nil, err
	}
	if uint64(size) != pk.Size {
		return nil, fmt.Errorf("pack %s: size %d, the index says %d", pk.ID.Short(), size, pk.Size)
	}
	return entries, nil
}
