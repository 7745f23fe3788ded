package chunkstore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/understudy/understudy/chunkstore/faultpoint"
	"github.com/understudy/understudy/index"
)

// Uploader saves blobs into new packs of one repository. It is safe for
// concurrent use; Save compresses outside any lock, so several goroutines
// calling it keep several cores busy. See the package doc for the order of
// writes.
type Uploader struct {
	repo *Repo

	pmu     sync.Mutex // guards pending
	pending map[index.ID]*pendingBlob

	mu   sync.Mutex // guards data, tree
	data *packWriter
	tree *packWriter

	// Sealing jobs, in the order they must commit. qmu is taken after mu,
	// never before it; the sealer takes mu only without qmu.
	qmu     sync.Mutex
	qcond   *sync.Cond
	queue   []sealJob
	seals   int // seal jobs in queue
	writes  int // write jobs in queue
	closed  bool
	sealerr atomic.Pointer[error]
	sealWG  sync.WaitGroup

	bufs sync.Pool

	// Counters of what this uploader added to the repository.
	BlobsAdded  atomic.Int64
	BytesAdded  atomic.Int64 // stored (compressed) bytes
	RawAdded    atomic.Int64 // uncompressed bytes of the added blobs
	PacksSealed atomic.Int64
}

// pendingBlob is a claimed blob that is not yet committed to the index.
// ready is closed once it has been appended to an open pack.
type pendingBlob struct{ ready chan struct{} }

// sealJob is the sealer's work, in order: bytes to append to an open
// pack's file (data), or a pack to seal.
type sealJob struct {
	w     *packWriter
	data  *[]byte // if not nil: append these bytes to w's file, nothing else
	snaps []index.Snapshot
	done  chan struct{} // closed after the job, if not nil
}

// sealQueue is how many sealed packs may wait for their fsync and commit
// before Save blocks: back-pressure without holding anything in memory.
// writeQueue is how many writeChunk buffers of pack bytes may wait for the
// sealer to write them: savers append to a buffer under the lock and the
// file writes happen outside it, at most writeQueue buffers behind.
const (
	sealQueue  = 4
	writeQueue = 4
	writeChunk = 512 << 10
)

// NewUploader starts an uploader. The repository must be open exclusively.
// Every uploader must end with Flush or Abort.
func (r *Repo) NewUploader() *Uploader {
	u := &Uploader{
		repo:    r,
		pending: make(map[index.ID]*pendingBlob),
	}
	u.qcond = sync.NewCond(&u.qmu)
	u.sealWG.Add(1)
	go u.sealer()
	return u
}

func (u *Uploader) failed() error {
	if p := u.sealerr.Load(); p != nil {
		return *p
	}
	return nil
}

// Has reports whether the repository holds blob id or this uploader has
// claimed it.
func (u *Uploader) Has(id index.ID) (bool, error) {
	u.pmu.Lock()
	_, ok := u.pending[id]
	u.pmu.Unlock()
	if ok {
		return true, nil
	}
	return u.repo.idx.Has(id)
}

// Save stores blob id of type t with content raw unless the repository
// already holds it or it is pending. It returns once the blob is in an open
// pack (so that a tree naming it may be saved after it), and reports whether
// it was added. raw is not retained.
func (u *Uploader) Save(ctx context.Context, t index.BlobType, id index.ID, raw []byte) (bool, error) {
	if len(raw) > int(MaxRaw(t)) {
		return false, fmt.Errorf("blob %s: %d bytes exceeds the %d byte maximum for %s blobs", id.Short(), len(raw), MaxRaw(t), t)
	}
	return u.save(ctx, id, func() error { return u.add(t, id, raw) })
}

// save claims id and, if this caller must add it, calls add, which appends
// the blob to an open pack and releases the claim.
func (u *Uploader) save(ctx context.Context, id index.ID, add func() error) (bool, error) {
	if err := u.failed(); err != nil {
		return false, err
	}
	p, err := u.claim(id)
	if err != nil || p == nil {
		return false, err
	}
	if p.ready != nil { // claimed by another caller: wait until it is in a pack
		select {
		case <-p.ready:
		case <-ctx.Done():
			return false, ctx.Err()
		}
		return false, u.failed()
	}
	if err := add(); err != nil {
		return false, err
	}
	u.backpressure()
	return true, nil
}

// claim returns nil if the blob is indexed, the pending entry if another
// caller claimed it, or a new pending entry with a nil ready channel if this
// caller must add it.
func (u *Uploader) claim(id index.ID) (*pendingBlob, error) {
	u.pmu.Lock()
	p := u.pending[id]
	u.pmu.Unlock()
	if p != nil {
		return p, nil
	}
	ok, err := u.repo.idx.Has(id)
	if err != nil || ok {
		return nil, err
	}
	u.pmu.Lock()
	defer u.pmu.Unlock()
	if p := u.pending[id]; p != nil {
		return p, nil
	}
	u.pending[id] = &pendingBlob{ready: make(chan struct{})}
	return &pendingBlob{}, nil
}

func (u *Uploader) add(t index.BlobType, id index.ID, raw []byte) error {
	bp, _ := u.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	stored, comp := u.repo.codec.compress(raw, *bp)
	if comp == index.Zstd {
		*bp = stored
	}
	err := u.appendClaimed(t, id, stored, comp, uint32(len(raw)))
	u.bufs.Put(bp)
	return err
}

// appendClaimed appends a claimed blob to the open pack of its kind, releases
// the claim and counts it.
func (u *Uploader) appendClaimed(t index.BlobType, id index.ID, stored []byte, comp index.Compression, rawLen uint32) error {
	u.mu.Lock()
	err := u.appendLocked(t, id, stored, comp, rawLen)
	u.mu.Unlock()
	u.pmu.Lock()
	p := u.pending[id]
	u.pmu.Unlock()
	close(p.ready)
	if err != nil {
		u.setErr(err)
		return err
	}
	u.BlobsAdded.Add(1)
	u.BytesAdded.Add(int64(len(stored)))
	u.RawAdded.Add(int64(rawLen))
	return nil
}

func (u *Uploader) setErr(err error) { u.sealerr.CompareAndSwap(nil, &err) }

// appendLocked appends a blob to the open pack of its kind and seals packs
// that are full. u.mu is held.
func (u *Uploader) appendLocked(t index.BlobType, id index.ID, stored []byte, comp index.Compression, rawLen uint32) error {
	w := &u.data
	if t != index.DataBlob {
		w = &u.tree
	}
	if *w == nil {
		pw, err := newPackWriter(u.repo.dir, t)
		if err != nil {
			return err
		}
		*w = pw
	}
	(*w).add(PackEntry{ID: id, Type: t, Compression: comp, Length: uint32(len(stored)), RawLength: rawLen}, stored)
	if len(*(*w).buf) >= writeChunk {
		u.queueWrite(*w)
	}
	if (*w).size < PackSize && len((*w).entries) < PackMaxBlobs {
		return nil
	}
	if t != index.DataBlob {
		u.sealLocked(&u.data, nil, nil) // the trees' data first: closure rule
	}
	u.sealLocked(w, nil, nil)
	return nil
}

// sealLocked hands the open pack *w to the sealer and clears *w.
func (u *Uploader) sealLocked(w **packWriter, snaps []index.Snapshot, done chan struct{}) {
	job := sealJob{w: *w, snaps: snaps, done: done}
	*w = nil
	if job.w == nil && snaps == nil && done == nil {
		return
	}
	u.qmu.Lock()
	u.queue = append(u.queue, job)
	u.seals++
	u.qcond.Broadcast()
	u.qmu.Unlock()
}

// queueWrite hands w's buffered bytes to the sealer to write. u.mu is held.
func (u *Uploader) queueWrite(w *packWriter) {
	job := sealJob{w: w, data: w.buf}
	w.buf = getWriteBuf()
	u.qmu.Lock()
	u.queue = append(u.queue, job)
	u.writes++
	u.qcond.Broadcast()
	u.qmu.Unlock()
}

// backpressure waits while more than sealQueue packs or writeQueue buffers
// wait for the sealer.
func (u *Uploader) backpressure() {
	u.qmu.Lock()
	for u.seals > sealQueue || u.writes > writeQueue {
		u.qcond.Wait()
	}
	u.qmu.Unlock()
}

// writeBufs hold pack bytes on their way to the sealer: room for writeChunk
// and one more default-sized chunk; append grows them for larger blobs.
var writeBufs = sync.Pool{New: func() any { b := make([]byte, 0, writeChunk+1<<20); return &b }}

func getWriteBuf() *[]byte {
	b := writeBufs.Get().(*[]byte)
	*b = (*b)[:0]
	return b
}

func (u *Uploader) next() (sealJob, bool) {
	u.qmu.Lock()
	defer u.qmu.Unlock()
	for len(u.queue) == 0 && !u.closed {
		u.qcond.Wait()
	}
	if len(u.queue) == 0 {
		return sealJob{}, false
	}
	job := u.queue[0]
	u.queue = u.queue[1:]
	if job.data != nil {
		u.writes--
	} else {
		u.seals--
	}
	u.qcond.Broadcast()
	return job, true
}

func (u *Uploader) sealer() {
	defer u.sealWG.Done()
	for {
		job, ok := u.next()
		if !ok {
			return
		}
		if job.data != nil {
			if u.failed() == nil {
				if err := job.w.write(*job.data); err != nil {
					u.setErr(err)
				}
			}
			writeBufs.Put(job.data)
			continue
		}
		if u.failed() == nil {
			if err := u.seal(job); err != nil {
				u.setErr(err)
			}
		}
		if u.failed() != nil && job.w != nil {
			job.w.discard()
		}
		if job.done != nil {
			close(job.done)
		}
	}
}

func (u *Uploader) seal(job sealJob) error {
	if job.w == nil {
		if len(job.snaps) > 0 {
			return errors.New("snapshot record without a pack")
		}
		return nil
	}
	pack, blobs, err := job.w.finish()
	if err != nil {
		return err
	}
	faultpoint.Hit("before-index-commit") // renamed into packs/, not indexed
	if err := u.repo.idx.AddPack(pack, blobs, job.snaps); err != nil {
		return fmt.Errorf("index pack %s: %w", pack.ID.Short(), err)
	}
	u.PacksSealed.Add(1)
	// The index's pages stay in the page cache; this process need not keep
	// them mapped in (random blob IDs touch most of them).
	if err := u.repo.idx.ReleaseMapped(); err != nil {
		return fmt.Errorf("index pack %s: %w", pack.ID.Short(), err)
	}
	u.pmu.Lock()
	for _, b := range blobs {
		delete(u.pending, b.ID)
	}
	u.pmu.Unlock()
	return nil
}

// Flush seals the open packs and waits until everything saved is committed.
// If record is not nil it is stored as a snapshot blob in the last tree pack
// and indexed in the same transaction; its ID is returned.
func (u *Uploader) Flush(record []byte) (index.ID, error) {
	var snapID index.ID
	u.mu.Lock()
	var snaps []index.Snapshot
	if record != nil {
		snapID = index.Hash(record)
		if err := u.appendLocked(index.SnapshotBlob, snapID, record, index.Raw, uint32(len(record))); err != nil {
			u.mu.Unlock()
			return snapID, err
		}
		snaps = []index.Snapshot{{ID: snapID, Record: record}}
	}
	done := make(chan struct{})
	u.sealLocked(&u.data, nil, nil)
	u.sealLocked(&u.tree, snaps, done)
	u.mu.Unlock()
	<-done
	return snapID, u.failed()
}

// Close stops the sealer after Flush. Packs not flushed are discarded.
func (u *Uploader) Close() {
	u.mu.Lock()
	for _, w := range []*packWriter{u.data, u.tree} {
		if w != nil {
			w.discard()
		}
	}
	u.data, u.tree = nil, nil
	u.mu.Unlock()
	u.qmu.Lock()
	u.closed = true
	u.qcond.Broadcast()
	u.qmu.Unlock()
	u.sealWG.Wait()
}

// packWriter writes one pack to a temporary file.
type packWriter struct {
	dir     string // repository
	typ     index.BlobType
	f       *os.File
	buf     *[]byte // bytes not yet handed to the sealer
	hash    hash.Hash
	size    int64
	entries []PackEntry
}

func newPackWriter(repoDir string, t index.BlobType) (*packWriter, error) {
	var rnd [8]byte
	rand.Read(rnd[:])
	name := filepath.Join(repoDir, "packs", "tmp", "pack-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create pack: %w", err)
	}
	w := &packWriter{dir: repoDir, typ: t, f: f, hash: sha256.New()}
	if t == index.SnapshotBlob {
		w.typ = index.TreeBlob
	}
	w.buf = getWriteBuf()
	*w.buf = append(*w.buf, packHeader()...)
	w.size = packHeaderSize
	return w, nil
}

// add appends a blob to the pack's buffer.
func (w *packWriter) add(e PackEntry, stored []byte) {
	e.Offset = uint32(w.size)
	*w.buf = append(*w.buf, stored...)
	w.size += int64(len(stored))
	w.entries = append(w.entries, e)
}

// write appends p to the pack's file and hash; only the sealer calls it.
func (w *packWriter) write(p []byte) error {
	if _, err := w.f.Write(p); err != nil {
		return fmt.Errorf("write pack %s: %w", w.f.Name(), err)
	}
	w.hash.Write(p)
	return nil
}

// finish writes the trailer, makes the pack durable under its final name and
// returns what the index must record.
func (w *packWriter) finish() (index.Pack, []index.Blob, error) {
	tmp := w.f.Name()
	fail := func(err error) (index.Pack, []index.Blob, error) {
		w.discard()
		return index.Pack{}, nil, fmt.Errorf("seal pack %s: %w", tmp, err)
	}
	trailer := appendTrailer(nil, w.entries)
	*w.buf = append(*w.buf, trailer...)
	err := w.write(*w.buf)
	writeBufs.Put(w.buf)
	w.buf = nil
	if err != nil {
		return fail(err)
	}
	if err := w.f.Sync(); err != nil {
		return fail(err)
	}
	if err := w.f.Close(); err != nil {
		return fail(err)
	}
	faultpoint.Hit("pack-written") // durable in packs/tmp, not yet renamed
	var id index.ID
	w.hash.Sum(id[:0])
	final := packPath(w.dir, id)
	sub := filepath.Dir(final)
	if _, err := os.Stat(sub); errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir(sub, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return fail(err)
		}
		if err := syncDir(filepath.Dir(sub)); err != nil {
			return fail(err)
		}
	}
	if err := os.Rename(tmp, final); err != nil {
		return fail(err)
	}
	if err := syncDir(sub); err != nil {
		return index.Pack{}, nil, fmt.Errorf("seal pack %s: %w", final, err)
	}
	size := w.size + int64(len(trailer))
	blobs := make([]index.Blob, len(w.entries))
	for i, e := range w.entries {
		blobs[i] = index.Blob{ID: e.ID, Location: e.Location(id)}
	}
	return index.Pack{ID: id, Type: w.typ, Size: uint64(size), Count: uint32(len(w.entries))}, blobs, nil
}

func (w *packWriter) discard() {
	if w.f != nil {
		w.f.Close()
		os.Remove(w.f.Name())
	}
}
