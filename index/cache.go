package index

import (
	"bytes"
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// The change-detection cache of a set lives in bucket "cache", one nested
// bucket per set name:
//
//	cache/<set>/state         attempt (8) committed (8) snapshot ID (32) meta (rest)
//	cache/<set>/records/<key> stamp (8) payload (rest)
//
// Keys and payloads belong to the snapshot package (one record per
// directory). The index gives them one rule, the stamp: every snapshot
// attempt takes a new attempt number and stamps what it writes with it; a
// successful snapshot commits its number. A record is valid only if its
// stamp is at most the committed number, so records written by an attempt
// that crashed or failed are never used. Commit deletes every record that
// the committing attempt did not keep, so a valid record always describes
// part of the committed snapshot and names only blobs that snapshot holds.
var (
	bucketCache  = []byte("cache")
	keyState     = []byte("state")
	bucketRecord = []byte("records")
)

const cacheStateSize = 8 + 8 + 32

// MaxCacheKey is the longest key a cache record may have.
const MaxCacheKey = bolt.MaxKeySize

// MaxCacheRecord bounds a stored cache record: a directory of a million
// entries with long names fits.
const MaxCacheRecord = 1 << 30

// Cache is one set's change-detection cache, opened for one snapshot
// attempt. Its methods use short transactions of their own, so it may be
// used while the uploader commits packs (a long read transaction would stall
// bbolt's remapping of a growing file).
type Cache struct {
	db        *DB
	set       []byte
	attempt   uint64
	committed uint64
	snapshot  ID
	meta      []byte
}

// OpenCache starts a snapshot attempt on the cache of set: it takes the next
// attempt number, so that nothing this attempt writes is valid before
// Commit.
func (db *DB) OpenCache(set string) (*Cache, error) {
	c := &Cache{db: db, set: []byte(set)}
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		b, err := cacheBucket(tx, c.set, true)
		if err != nil {
			return err
		}
		if v := b.Get(keyState); v != nil {
			if len(v) < cacheStateSize {
				return fmt.Errorf("index: cache state of set %q is %d bytes, want at least %d", set, len(v), cacheStateSize)
			}
			c.attempt = binary.BigEndian.Uint64(v)
			c.committed = binary.BigEndian.Uint64(v[8:])
			copy(c.snapshot[:], v[16:48])
			c.meta = bytes.Clone(v[48:])
		}
		c.attempt = max(c.attempt, c.committed) + 1
		return b.Put(keyState, c.state(c.committed, c.snapshot, c.meta))
	})
	if err != nil {
		return nil, fmt.Errorf("open change cache of set %q: %w", set, err)
	}
	return c, nil
}

func cacheBucket(tx *bolt.Tx, set []byte, create bool) (*bolt.Bucket, error) {
	if len(set) == 0 {
		set = []byte{0} // bbolt refuses empty keys; no set name is a NUL
	}
	if !create {
		top := tx.Bucket(bucketCache)
		if top == nil {
			return nil, nil
		}
		return top.Bucket(set), nil
	}
	top, err := tx.CreateBucketIfNotExists(bucketCache)
	if err != nil {
		return nil, err
	}
	b, err := top.CreateBucketIfNotExists(set)
	if err != nil {
		return nil, err
	}
	if _, err := b.CreateBucketIfNotExists(bucketRecord); err != nil {
		return nil, err
	}
	return b, nil
}

func (c *Cache) state(committed uint64, snap ID, meta []byte) []byte {
	v := make([]byte, 0, cacheStateSize+len(meta))
	v = binary.BigEndian.AppendUint64(v, c.attempt)
	v = binary.BigEndian.AppendUint64(v, committed)
	v = append(v, snap[:]...)
	return append(v, meta...)
}

// Previous returns the snapshot and meta of the last committed attempt; ok
// is false if none committed.
func (c *Cache) Previous() (snap ID, meta []byte, ok bool) {
	return c.snapshot, c.meta, c.committed != 0
}

// Get returns a copy of the valid record under key, or nil.
func (c *Cache) Get(key []byte) ([]byte, error) {
	if c.committed == 0 {
		return nil, nil
	}
	var out []byte
	err := c.db.bolt.View(func(tx *bolt.Tx) error {
		b, err := cacheBucket(tx, c.set, false)
		if err != nil || b == nil {
			return err
		}
		v := b.Bucket(bucketRecord).Get(key)
		if len(v) < 8 || binary.BigEndian.Uint64(v) > c.committed {
			return nil
		}
		out = bytes.Clone(v[8:])
		return nil
	})
	return out, err
}

// CacheRecord is one record to write.
type CacheRecord struct {
	Key, Value []byte
}

// Put stores records stamped with this attempt, in one transaction.
func (c *Cache) Put(recs []CacheRecord) error {
	return c.db.bolt.Update(func(tx *bolt.Tx) error {
		b, err := cacheBucket(tx, c.set, true)
		if err != nil {
			return err
		}
		rb := b.Bucket(bucketRecord)
		// A snapshot writes records in nearly sorted order (post-order of
		// the walk): fill pages rather than split them in half.
		rb.FillPercent = 0.9
		for _, r := range recs {
			if len(r.Key) == 0 || len(r.Key) > MaxCacheKey {
				return fmt.Errorf("index: cache key of %d bytes", len(r.Key))
			}
			if len(r.Value) > MaxCacheRecord-8 {
				return fmt.Errorf("index: cache record of %d bytes for %q exceeds the maximum", len(r.Value), r.Key)
			}
			v := make([]byte, 8, 8+len(r.Value))
			binary.BigEndian.PutUint64(v, c.attempt)
			if err := rb.Put(r.Key, append(v, r.Value...)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Commit makes this attempt's records valid and deletes every record for
// whose key keep returns false: call it after snapshot snap is indexed. meta
// is returned by Previous on the next attempt.
func (c *Cache) Commit(snap ID, meta []byte, keep func(key []byte) bool) error {
	drop, err := c.unkept(keep)
	if err != nil {
		return err
	}
	return c.db.bolt.Update(func(tx *bolt.Tx) error {
		b, err := cacheBucket(tx, c.set, true)
		if err != nil {
			return err
		}
		rb := b.Bucket(bucketRecord)
		for _, k := range drop {
			if err := rb.Delete(k); err != nil {
				return err
			}
		}
		return b.Put(keyState, c.state(c.attempt, snap, meta))
	})
}

// unkept returns the keys for which keep is false. It reads the records in
// batches, releasing the index's mapped pages after each, so that a large
// cache is not all resident at once. (Deleting a record early is always
// safe: a missing record is a miss.)
func (c *Cache) unkept(keep func(key []byte) bool) ([][]byte, error) {
	const batch = 4096
	var drop [][]byte
	var after []byte
	for {
		done := true
		err := c.db.bolt.View(func(tx *bolt.Tx) error {
			b, err := cacheBucket(tx, c.set, false)
			if err != nil || b == nil {
				return err
			}
			cur := b.Bucket(bucketRecord).Cursor()
			k, _ := cur.First()
			if after != nil {
				if k, _ = cur.Seek(after); bytes.Equal(k, after) {
					k, _ = cur.Next()
				}
			}
			for n := 0; k != nil; k, _ = cur.Next() {
				if !keep(k) {
					drop = append(drop, bytes.Clone(k))
				}
				if n++; n == batch {
					after, done = bytes.Clone(k), false
					break
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if err := c.db.ReleaseMapped(); err != nil {
			return nil, err
		}
		if done {
			return drop, nil
		}
	}
}
