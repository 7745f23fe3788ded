package index

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// Format is the version of the index layout, stored in the meta bucket.
const Format = 1

var (
	bucketMeta      = []byte("meta")
	bucketBlobs     = []byte("blobs")
	bucketPacks     = []byte("packs")
	bucketSnapshots = []byte("snapshots")

	keyFormat = []byte("format")
)

// ErrLocked is returned when another process holds the database open for
// writing past the open timeout.
var ErrLocked = errors.New("index is in use by another process")

// DB is an open index.db.
type DB struct {
	bolt *bolt.DB
	path string
}

// Options for Open.
type Options struct {
	ReadOnly bool
	Timeout  time.Duration // how long to wait for bbolt's file lock; 0 means 10s
}

// Open opens (creating if needed and not read-only) the index at path.
func Open(path string, opts Options) (*DB, error) {
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	if err := checkTruncated(path); err != nil {
		return nil, err
	}
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:      timeout,
		ReadOnly:     opts.ReadOnly,
		FreelistType: bolt.FreelistMapType,
	})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("%s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("open index %s: %w", path, err)
	}
	db := &DB{bolt: bdb, path: path}
	if opts.ReadOnly {
		err = bdb.View(db.checkFormat)
	} else {
		err = bdb.Update(func(tx *bolt.Tx) error {
			for _, name := range [][]byte{bucketMeta, bucketBlobs, bucketPacks, bucketSnapshots} {
				if _, err := tx.CreateBucketIfNotExists(name); err != nil {
					return err
				}
			}
			meta := tx.Bucket(bucketMeta)
			if meta.Get(keyFormat) == nil {
				return meta.Put(keyFormat, binary.BigEndian.AppendUint32(nil, Format))
			}
			return db.checkFormat(tx)
		})
	}
	if err != nil {
		bdb.Close()
		return nil, err
	}
	return db, nil
}

func (db *DB) checkFormat(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return fmt.Errorf("index %s: no meta bucket; rebuild it from the packs with `understudy repair index`", db.path)
	}
	v := meta.Get(keyFormat)
	if len(v) != 4 || binary.BigEndian.Uint32(v) != Format {
		return fmt.Errorf("index %s: unsupported format %x (this understudy reads %d)", db.path, v, Format)
	}
	return nil
}

// Close closes the database.
func (db *DB) Close() error { return db.bolt.Close() }

// Path returns the database file name.
func (db *DB) Path() string { return db.path }

// Bolt gives packages that own further buckets (standby state, the change
// cache) access to the database. They must follow the write discipline above.
func (db *DB) Bolt() *bolt.DB { return db.bolt }

// ReleaseMapped drops the index file's pages from this process's resident
// set: bbolt reads through a shared read-only mapping, and the random keys
// of blob IDs touch most pages of a large index. The pages stay in the page
// cache and fault back in when read. The read transaction keeps bbolt from
// remapping the file meanwhile.
func (db *DB) ReleaseMapped() error {
	return db.bolt.View(func(tx *bolt.Tx) error {
		data, size := db.bolt.Info().Data, uintptr(tx.Size())
		if data == 0 || size == 0 {
			return nil
		}
		_, _, errno := unix.Syscall(unix.SYS_MADVISE, data, size, unix.MADV_DONTNEED)
		if errno != 0 {
			return fmt.Errorf("madvise index %s: %w", db.path, errno)
		}
		return nil
	})
}

// Check runs bbolt's own consistency check of the file's pages.
func (db *DB) Check() error {
	return db.bolt.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
}

// Location says where a blob is stored.
type Location struct {
	Pack        ID
	Offset      uint32 // of the stored bytes within the pack
	Length      uint32 // of the stored (possibly compressed) bytes
	RawLength   uint32 // of the uncompressed blob
	Type        BlobType
	Compression Compression
}

// Compression says how a blob's bytes are stored.
type Compression uint8

// Compressions. The numbers are part of the on-disk format.
const (
	Raw  Compression = 0
	Zstd Compression = 1
)

const locationSize = IDSize + 4 + 4 + 4 + 1 + 1

func (l Location) marshal() []byte {
	b := make([]byte, 0, locationSize)
	b = append(b, l.Pack[:]...)
	b = binary.BigEndian.AppendUint32(b, l.Offset)
	b = binary.BigEndian.AppendUint32(b, l.Length)
	b = binary.BigEndian.AppendUint32(b, l.RawLength)
	return append(b, byte(l.Type), byte(l.Compression))
}

func unmarshalLocation(b []byte) (Location, error) {
	var l Location
	if len(b) != locationSize {
		return l, fmt.Errorf("index: blob location of %d bytes, want %d", len(b), locationSize)
	}
	copy(l.Pack[:], b)
	l.Offset = binary.BigEndian.Uint32(b[32:])
	l.Length = binary.BigEndian.Uint32(b[36:])
	l.RawLength = binary.BigEndian.Uint32(b[40:])
	l.Type = BlobType(b[44])
	l.Compression = Compression(b[45])
	if !l.Type.Valid() || l.Compression > Zstd || l.Length == 0 && l.RawLength != 0 {
		return l, fmt.Errorf("index: invalid blob location %x", b)
	}
	return l, nil
}

// Lookup returns the location of blob id.
func (db *DB) Lookup(id ID) (loc Location, ok bool, err error) {
	err = db.bolt.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketBlobs).Get(id[:])
		if v == nil {
			return nil
		}
		ok = true
		loc, err = unmarshalLocation(v)
		return err
	})
	return loc, ok, err
}

// Has reports whether blob id is indexed.
func (db *DB) Has(id ID) (bool, error) {
	var ok bool
	err := db.bolt.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketBlobs).Get(id[:]) != nil
		return nil
	})
	return ok, err
}

// Blob is a blob ID with its location.
type Blob struct {
	ID ID
	Location
}

// Pack describes a sealed pack file.
type Pack struct {
	ID    ID
	Type  BlobType // the kind of blobs it was written for: data, or tree (trees and snapshots)
	Size  uint64
	Count uint32
}

const packInfoSize = 1 + 8 + 4

// Snapshot is a snapshot record with its ID.
type Snapshot struct {
	ID     ID
	Record []byte
}

// AddPack indexes a sealed pack, its blobs and the snapshot records it holds,
// in one transaction. The pack file must already be durable under its final
// name. Blobs already indexed keep their first location.
func (db *DB) AddPack(p Pack, blobs []Blob, snaps []Snapshot) error {
	sorted := slices.Clone(blobs)
	slices.SortFunc(sorted, func(a, b Blob) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	return db.bolt.Update(func(tx *bolt.Tx) error {
		info := make([]byte, 0, packInfoSize)
		info = append(info, byte(p.Type))
		info = binary.BigEndian.AppendUint64(info, p.Size)
		info = binary.BigEndian.AppendUint32(info, p.Count)
		if err := tx.Bucket(bucketPacks).Put(p.ID[:], info); err != nil {
			return err
		}
		bb := tx.Bucket(bucketBlobs)
		for _, b := range sorted {
			if b.Pack != p.ID {
				return fmt.Errorf("index: blob %s claims pack %s while adding pack %s", b.ID.Short(), b.Pack.Short(), p.ID.Short())
			}
			if bb.Get(b.ID[:]) != nil {
				continue
			}
			if err := bb.Put(b.ID[:], b.Location.marshal()); err != nil {
				return err
			}
		}
		return putSnapshots(tx, snaps)
	})
}

// AddSnapshots indexes snapshot records whose blobs are already indexed (an
// index rebuilt from packs adds them after every pack).
func (db *DB) AddSnapshots(snaps []Snapshot) error {
	return db.bolt.Update(func(tx *bolt.Tx) error { return putSnapshots(tx, snaps) })
}

func putSnapshots(tx *bolt.Tx, snaps []Snapshot) error {
	sb := tx.Bucket(bucketSnapshots)
	for _, s := range snaps {
		if err := sb.Put(s.ID[:], s.Record); err != nil {
			return err
		}
	}
	return nil
}

// PackInfo returns what the index knows of pack id.
func (db *DB) PackInfo(id ID) (p Pack, ok bool, err error) {
	err = db.bolt.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketPacks).Get(id[:])
		if v == nil {
			return nil
		}
		ok = true
		p, err = unmarshalPack(id, v)
		return err
	})
	return p, ok, err
}

func unmarshalPack(id ID, v []byte) (Pack, error) {
	if len(v) != packInfoSize {
		return Pack{}, fmt.Errorf("index: pack %s: record of %d bytes, want %d", id.Short(), len(v), packInfoSize)
	}
	return Pack{ID: id, Type: BlobType(v[0]), Size: binary.BigEndian.Uint64(v[1:]), Count: binary.BigEndian.Uint32(v[9:])}, nil
}

// ForEachPack calls fn for every indexed pack in ID order, within one read
// transaction: fn must not call back into the DB's write methods.
func (db *DB) ForEachPack(fn func(Pack) error) error {
	return db.bolt.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPacks).ForEach(func(k, v []byte) error {
			id, err := keyID(k)
			if err != nil {
				return err
			}
			p, err := unmarshalPack(id, v)
			if err != nil {
				return err
			}
			return fn(p)
		})
	})
}

// ForEachBlob calls fn for every indexed blob in ID order, within one read
// transaction.
func (db *DB) ForEachBlob(fn func(Blob) error) error {
	return db.bolt.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
			id, err := keyID(k)
			if err != nil {
				return err
			}
			loc, err := unmarshalLocation(v)
			if err != nil {
				return fmt.Errorf("blob %x: %w", k, err)
			}
			return fn(Blob{ID: id, Location: loc})
		})
	})
}

// SnapshotRecord returns the stored record of snapshot id.
func (db *DB) SnapshotRecord(id ID) (rec []byte, ok bool, err error) {
	err = db.bolt.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketSnapshots).Get(id[:]); v != nil {
			rec, ok = bytes.Clone(v), true
		}
		return nil
	})
	return rec, ok, err
}

// ForEachSnapshot calls fn with every snapshot record in ID order. The record
// slice is only valid during the call.
func (db *DB) ForEachSnapshot(fn func(id ID, rec []byte) error) error {
	return db.bolt.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSnapshots).ForEach(func(k, v []byte) error {
			id, err := keyID(k)
			if err != nil {
				return err
			}
			return fn(id, v)
		})
	})
}

// SnapshotsWithPrefix returns the IDs of snapshots whose hex form begins with
// prefix.
func (db *DB) SnapshotsWithPrefix(prefix string) ([]ID, error) {
	var ids []ID
	err := db.ForEachSnapshot(func(id ID, _ []byte) error {
		if len(prefix) <= 2*IDSize && id.String()[:len(prefix)] == prefix {
			ids = append(ids, id)
		}
		return nil
	})
	return ids, err
}

// keyID converts a bucket key to an ID, refusing keys of the wrong length (a
// damaged index) instead of panicking.
func keyID(k []byte) (ID, error) {
	if len(k) != IDSize {
		return ID{}, fmt.Errorf("index: key %x is not an ID", k)
	}
	return ID(k), nil
}
