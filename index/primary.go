package index

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The primary state lives in bucket "primary": one key per set name, whose
// value is the JSON of a PrimaryState. Like the standby state's, the bucket
// is made by the first update, so a repository that never pushed or ran a
// set has none.
var bucketPrimary = []byte("primary")

// maxPrimaryState bounds a stored state, for a damaged index.
const maxPrimaryState = 1 << 20

// PrimaryState is what this host, as the set's primary, last did with it.
type PrimaryState struct {
	// LastRun is when `run` last finished the set, successfully or not.
	LastRun time.Time `json:"last_run,omitzero"`
	// LastRunError is why that run failed; "" when it succeeded.
	LastRunError string `json:"last_run_error,omitempty"`
	// LastRunRefused: that run was refused by a guard (a pre-flight check,
	// a promoted or held standby; exit 4), LastRunError says why.
	LastRunRefused bool `json:"last_run_refused,omitempty"`
	// Pushes are the standbys the set was pushed to, by the configuration's
	// name of the standby, or by DEST for a push given on the command line.
	Pushes map[string]*PushState `json:"pushes,omitempty"`
}

// PushState is what the primary knows of one standby of a set: the last
// snapshot it pushed and committed there, and the last push's error.
type PushState struct {
	// Dest is the standby's repository as push names it (usync.Dest's
	// String: an absolute path, or ssh://[user@]host[:port]/path).
	Dest string `json:"dest"`
	// Snapshot is the newest snapshot of the set pushed and committed
	// there, SnapshotTime its time. At is when the last successful push
	// finished: that snapshot's, or a later one of an older snapshot.
	Snapshot     ID        `json:"snapshot,omitzero"`
	SnapshotTime time.Time `json:"snapshot_time,omitzero"`
	At           time.Time `json:"at,omitzero"`
	// LastError is why the last push failed; "" once a push succeeds.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// Primary returns the primary state of set; the zero state if none was
// recorded.
func (db *DB) Primary(set string) (PrimaryState, error) {
	var st PrimaryState
	err := db.bolt.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPrimary)
		if b == nil {
			return nil
		}
		return decodePrimary(set, b.Get([]byte(set)), &st)
	})
	return st, err
}

// UpdatePrimary changes the primary state of set in one transaction: fn
// gets the current state and changes it; an error from fn changes nothing.
func (db *DB) UpdatePrimary(set string, fn func(*PrimaryState) error) error {
	if set == "" || len(set) > bolt.MaxKeySize {
		return fmt.Errorf("primary state: invalid set name %q", set)
	}
	return db.bolt.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketPrimary)
		if err != nil {
			return err
		}
		var st PrimaryState
		if err := decodePrimary(set, b.Get([]byte(set)), &st); err != nil {
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

func decodePrimary(set string, v []byte, st *PrimaryState) error {
	if v == nil {
		return nil
	}
	if len(v) > maxPrimaryState {
		return fmt.Errorf("primary state of set %q: %d bytes", set, len(v))
	}
	if err := json.Unmarshal(v, st); err != nil {
		return fmt.Errorf("primary state of set %q: %w", set, err)
	}
	for key, p := range st.Pushes {
		if p == nil {
			return fmt.Errorf("primary state of set %q: standby %q has no push state", set, key)
		}
	}
	return nil
}

// PrimaryStates returns the primary state of every set that has one.
func (db *DB) PrimaryStates() (map[string]PrimaryState, error) {
	states := map[string]PrimaryState{}
	err := db.bolt.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPrimary)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var st PrimaryState
			if err := decodePrimary(string(k), v, &st); err != nil {
				return err
			}
			states[string(k)] = st
			return nil
		})
	})
	return states, err
}

// Push returns the push state of the standby named key, adding one for
// dest if there is none.
func (st *PrimaryState) Push(key, dest string) *PushState {
	if st.Pushes == nil {
		st.Pushes = map[string]*PushState{}
	}
	p := st.Pushes[key]
	if p == nil {
		p = &PushState{Dest: dest}
		st.Pushes[key] = p
	}
	return p
}

// Pushed records a successful push that committed snapshot id, of time
// taken, on the standby at at. The snapshot is recorded unless one of a
// later time is (pushing an older snapshot again does not make the standby
// older); either way the push succeeded: At moves and LastError is cleared.
func (p *PushState) Pushed(id ID, taken, at time.Time) {
	if p.Snapshot.IsZero() || !taken.Before(p.SnapshotTime) {
		p.Snapshot, p.SnapshotTime = id, taken
	}
	p.At = at
	p.LastError, p.LastErrorAt = "", time.Time{}
}

// Failed records a push that failed at at with msg.
func (p *PushState) Failed(msg string, at time.Time) {
	p.LastError, p.LastErrorAt = msg, at
}
