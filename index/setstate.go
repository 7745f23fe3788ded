package index

import (
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// maxSetState bounds a stored per-set state, for a damaged index.
const maxSetState = 1 << 20

// setStates is one kind of per-set state (the standby's, the primary's):
// a bucket with one key per set name, whose value is the JSON of an S. The
// bucket is made by the first update, so a repository that never played
// that part has none.
type setStates[S any] struct {
	bucket []byte
	what   string         // "standby state": how errors name it
	check  func(*S) error // refuses a decoded state its readers cannot use; nil accepts any
}

var (
	standbyStates = setStates[StandbyState]{bucket: bucketStandby, what: "standby state"}
	primaryStates = setStates[PrimaryState]{bucket: bucketPrimary, what: "primary state", check: checkPrimary}
)

// decode reads the stored state v of set into st; nil v leaves st zero.
func (k setStates[S]) decode(set string, v []byte, st *S) error {
	if v == nil {
		return nil
	}
	if len(v) > maxSetState {
		return fmt.Errorf("%s of set %q: %d bytes", k.what, set, len(v))
	}
	if err := json.Unmarshal(v, st); err != nil {
		return fmt.Errorf("%s of set %q: %w", k.what, set, err)
	}
	if k.check != nil {
		if err := k.check(st); err != nil {
			return fmt.Errorf("%s of set %q: %w", k.what, set, err)
		}
	}
	return nil
}

// get returns the state of set; the zero state if none was recorded.
func (k setStates[S]) get(db *DB, set string) (S, error) {
	var st S
	err := db.bolt.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(k.bucket)
		if b == nil {
			return nil
		}
		return k.decode(set, b.Get([]byte(set)), &st)
	})
	return st, err
}

// update changes the state of set in one transaction: fn gets the current
// state and changes it; an error from fn changes nothing.
func (k setStates[S]) update(db *DB, set string, fn func(*S) error) error {
	if set == "" || len(set) > bolt.MaxKeySize {
		return fmt.Errorf("%s: invalid set name %q", k.what, set)
	}
	return db.bolt.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(k.bucket)
		if err != nil {
			return err
		}
		var st S
		if err := k.decode(set, b.Get([]byte(set)), &st); err != nil {
			return err
		}
		if err := fn(&st); err != nil {
			return err
		}
		v, err := json.Marshal(st)
		if err != nil {
			return err
		}
		return b.Put([]byte(set), v)
	})
}

// all returns the state of every set that has one.
func (k setStates[S]) all(db *DB) (map[string]S, error) {
	states := map[string]S{}
	err := db.bolt.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(k.bucket)
		if b == nil {
			return nil
		}
		return b.ForEach(func(key, v []byte) error {
			var st S
			if err := k.decode(string(key), v, &st); err != nil {
				return err
			}
			states[string(key)] = st
			return nil
		})
	})
	return states, err
}
