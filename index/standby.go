package index

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The standby state lives in bucket "standby": one key per set name, whose
// value is the JSON of a StandbyState. The bucket is made by the first
// update, so that a repository that never was a standby has none.
var bucketStandby = []byte("standby")

// maxStandbyState bounds a stored state, for a damaged index.
const maxStandbyState = 1 << 20

// StandbyState is what a repository records about one set it receives.
type StandbyState struct {
	// Promoted is when this host was promoted to primary for the set
	// (`understudy promote`); zero while it is a standby. A promoted set
	// refuses pushes, so that an old primary coming back cannot overwrite
	// the new one.
	Promoted time.Time `json:"promoted,omitzero"`
}

// Standby returns the state of set; the zero state if none was recorded.
func (db *DB) Standby(set string) (StandbyState, error) {
	var st StandbyState
	err := db.bolt.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketStandby)
		if b == nil {
			return nil
		}
		return decodeStandby(set, b.Get([]byte(set)), &st)
	})
	return st, err
}

// UpdateStandby changes the state of set in one transaction: fn gets the
// current state and changes it; an error from fn changes nothing.
func (db *DB) UpdateStandby(set string, fn func(*StandbyState) error) error {
	if set == "" || len(set) > bolt.MaxKeySize {
		return fmt.Errorf("standby state: invalid set name %q", set)
	}
	return db.bolt.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketStandby)
		if err != nil {
			return err
		}
		var st StandbyState
		if err := decodeStandby(set, b.Get([]byte(set)), &st); err != nil {
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

func decodeStandby(set string, v []byte, st *StandbyState) error {
	if v == nil {
		return nil
	}
	if len(v) > maxStandbyState {
		return fmt.Errorf("standby state of set %q: %d bytes", set, len(v))
	}
	if err := json.Unmarshal(v, st); err != nil {
		return fmt.Errorf("standby state of set %q: %w", set, err)
	}
	return nil
}

// StandbyStates returns the state of every set that has one.
func (db *DB) StandbyStates() (map[string]StandbyState, error) {
	states := map[string]StandbyState{}
	err := db.bolt.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketStandby)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var st StandbyState
			if err := decodeStandby(string(k), v, &st); err != nil {
				return err
			}
			states[string(k)] = st
			return nil
		})
	})
	return states, err
}
