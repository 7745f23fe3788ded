package chunkstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/understudy/understudy/index"
)

// Repo is an open repository.
type Repo struct {
	dir   string
	cfg   Config
	idx   *index.DB
	lock  *lock
	codec *codec
	packs *packCache
	// beforeClose is OpenOptions.BeforeClose, for an exclusive holder
	// with its index open; nil once run.
	beforeClose func(*Repo)
}

// OpenOptions for Open.
type OpenOptions struct {
	Mode LockMode
	// What names the operation in the lock file, for the message another
	// process gets ("snapshot", "restore").
	What string
	// Wait is how long to wait for the lock; 0 fails at once.
	Wait time.Duration
	// NoIndex leaves index.db closed, for RebuildIndex on a repository
	// whose index is damaged or missing. Nothing else works without it.
	NoIndex bool
	// BeforeClose, if set, is called by Close before it closes anything,
	// with the index still open, so that the holder can leave something
	// derived from it for the processes its lock kept out (the CLI writes
	// status.json). It is called only for an Exclusive holder whose index
	// is open, once. It returns nothing: what it fails to do is its own to
	// report. A panic in it is recovered and does not keep Close from
	// releasing the index and the lock; Close then returns it as an error.
	BeforeClose func(*Repo)
}

// Open opens the repository in dir, taking its lock.
func Open(dir string, opts OpenOptions) (*Repo, error) {
	cfg, err := readConfig(dir)
	if err != nil {
		return nil, err
	}
	lk, err := acquireLock(dir, opts.Mode, opts.What, opts.Wait)
	if err != nil {
		return nil, err
	}
	r := &Repo{dir: dir, cfg: *cfg, lock: lk, packs: newPackCache(dir)}
	if opts.Mode == Exclusive && !opts.NoIndex {
		r.beforeClose = opts.BeforeClose
	}
	if opts.Mode == Exclusive {
		// Temporary packs of a crashed writer: nothing references them.
		if err := removeTemporaries(filepath.Join(dir, "packs", "tmp")); err != nil {
			lk.release()
			return nil, err
		}
	}
	if !opts.NoIndex {
		r.idx, err = index.Open(filepath.Join(dir, "index.db"), index.Options{ReadOnly: opts.Mode == Shared})
		if err != nil {
			lk.release()
			return nil, err
		}
	}
	if r.codec, err = newCodec(cfg.Compression); err != nil {
		if r.idx != nil {
			r.idx.Close()
		}
		lk.release()
		return nil, err
	}
	return r, nil
}

func removeTemporaries(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "pack-") {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// Close runs the BeforeClose hook, then releases the index, open pack
// files and the lock.
func (r *Repo) Close() error {
	hookErr := r.runBeforeClose()
	r.packs.close()
	r.codec.close()
	var err error
	if r.idx != nil {
		err = r.idx.Close()
	}
	r.lock.release()
	return errors.Join(err, hookErr)
}

// runBeforeClose calls the BeforeClose hook, at most once, and turns a
// panic in it into an error.
func (r *Repo) runBeforeClose() (err error) {
	hook := r.beforeClose
	if hook == nil {
		return nil
	}
	r.beforeClose = nil
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("repository %s: before-close hook panicked: %v", r.dir, v)
		}
	}()
	hook(r)
	return nil
}

// Dir returns the repository directory.
func (r *Repo) Dir() string { return r.dir }

// Config returns the repository configuration.
func (r *Repo) Config() Config { return r.cfg }

// Index returns the repository's index.
func (r *Repo) Index() *index.DB { return r.idx }

// PackPath returns the file name of pack id.
func (r *Repo) PackPath(id index.ID) string { return packPath(r.dir, id) }

func packPath(dir string, id index.ID) string {
	s := id.String()
	return filepath.Join(dir, "packs", s[:2], s)
}

// BlobError is a blob that could not be loaded or failed verification.
type BlobError struct {
	ID   index.ID
	Pack index.ID // zero if the blob is not indexed
	Err  error
}

func (e *BlobError) Error() string {
	if e.Pack.IsZero() {
		return fmt.Sprintf("blob %s: %v", e.ID, e.Err)
	}
	return fmt.Sprintf("blob %s in pack %s: %v", e.ID, e.Pack, e.Err)
}

func (e *BlobError) Unwrap() error { return e.Err }

// Errors that a BlobError may wrap.
var (
	ErrBlobMissing = errors.New("not in the index")
	ErrBlobHash    = errors.New("content does not match its ID")
)

// LoadBlob returns the uncompressed content of blob id, verified against its
// ID. buf is reused when it is large enough.
func (r *Repo) LoadBlob(id index.ID, buf []byte) ([]byte, error) {
	loc, ok, err := r.idx.Lookup(id)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, &BlobError{ID: id, Err: ErrBlobMissing}
	}
	return r.LoadAt(id, loc, buf)
}

// LoadAt reads blob id from the given location and verifies it.
func (r *Repo) LoadAt(id index.ID, loc index.Location, buf []byte) ([]byte, error) {
	sb, err := r.ReadStored(id, loc, nil)
	if err != nil {
		return nil, err
	}
	data, err := r.codec.decode(sb.Data, loc.Compression, loc.RawLength, buf)
	if err != nil {
		return nil, &BlobError{ID: id, Pack: loc.Pack, Err: err}
	}
	if index.Hash(data) != id {
		return nil, &BlobError{ID: id, Pack: loc.Pack, Err: ErrBlobHash}
	}
	return data, nil
}

// codec compresses and decompresses blobs with one shared encoder and decoder.
type codec struct {
	enc *zstd.Encoder
	dec *zstd.Decoder
}

func encoderLevel(name string) (zstd.EncoderLevel, error) {
	switch name {
	case "fastest":
		return zstd.SpeedFastest, nil
	case "default", "":
		return zstd.SpeedDefault, nil
	case "better":
		return zstd.SpeedBetterCompression, nil
	}
	return 0, fmt.Errorf("unknown compression %q (want fastest, default or better)", name)
}

func newCodec(level string) (*codec, error) {
	lvl, err := encoderLevel(level)
	if err != nil {
		return nil, err
	}
	n := runtime.GOMAXPROCS(0)
	// A 1 MiB window covers a whole data blob; the default (8 MiB) would
	// only cost each encoder history memory.
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(lvl), zstd.WithEncoderConcurrency(n),
		zstd.WithEncoderCRC(false), zstd.WithLowerEncoderMem(true), zstd.WithWindowSize(1<<20))
	if err != nil {
		return nil, err
	}
	// The decoder never allocates more than a blob may hold, whatever a
	// frame header claims (decompression bombs).
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(n),
		zstd.WithDecoderMaxMemory(MaxTreeBlob), zstd.WithDecoderMaxWindow(MaxTreeBlob), zstd.WithDecodeAllCapLimit(true))
	if err != nil {
		return nil, err
	}
	return &codec{enc: enc, dec: dec}, nil
}

func (c *codec) close() {
	c.enc.Close()
	c.dec.Close()
}

// compress returns the stored form of raw: zstd when that saves at least a
// thirty-second of the size, else raw itself. dst is reused if large enough.
func (c *codec) compress(raw, dst []byte) ([]byte, index.Compression) {
	out := c.enc.EncodeAll(raw, dst[:0])
	if len(out) >= len(raw)-len(raw)/32 {
		return raw, index.Raw
	}
	return out, index.Zstd
}

// decode returns the uncompressed blob, which must be exactly rawLength
// bytes. Output is capped at rawLength before any allocation beyond it.
func (c *codec) decode(stored []byte, comp index.Compression, rawLength uint32, buf []byte) ([]byte, error) {
	switch comp {
	case index.Raw:
		if uint32(len(stored)) != rawLength {
			return nil, fmt.Errorf("raw blob of %d bytes, expected %d", len(stored), rawLength)
		}
		return stored, nil
	case index.Zstd:
		if uint32(cap(buf)) < rawLength {
			buf = make([]byte, 0, rawLength)
		}
		out, err := c.dec.DecodeAll(stored, buf[:0:rawLength])
		if err != nil {
			return nil, fmt.Errorf("decompress: %w", err)
		}
		if uint32(len(out)) != rawLength {
			return nil, fmt.Errorf("decompressed to %d bytes, expected %d", len(out), rawLength)
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown compression %d", comp)
}

// packCache keeps a bounded number of pack files open for reading. Reads
// hold the read lock so that eviction never closes a file under a reader.
type packCache struct {
	dir   string
	mu    sync.RWMutex
	files map[index.ID]*os.File
}

const maxOpenPacks = 64

func newPackCache(dir string) *packCache {
	return &packCache{dir: dir, files: make(map[index.ID]*os.File)}
}

// readAt reads len(buf) bytes at off from pack id.
func (c *packCache) readAt(id index.ID, buf []byte, off int64) error {
	for {
		c.mu.RLock()
		if f, ok := c.files[id]; ok {
			_, err := f.ReadAt(buf, off)
			c.mu.RUnlock()
			return err
		}
		c.mu.RUnlock()
		if err := c.open(id); err != nil {
			return err
		}
	}
}

func (c *packCache) open(id index.ID) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.files[id]; ok {
		return nil
	}
	f, err := os.Open(packPath(c.dir, id))
	if err != nil {
		return err
	}
	if len(c.files) >= maxOpenPacks {
		for k, old := range c.files { // evict an arbitrary one
			old.Close()
			delete(c.files, k)
			break
		}
	}
	c.files[id] = f
	return nil
}

func (c *packCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, f := range c.files {
		f.Close()
		delete(c.files, k)
	}
}
