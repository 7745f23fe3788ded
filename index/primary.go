package index

import (
	"fmt"
	"time"
)

// The primary state lives in bucket "primary": one key per set name, whose
// value is the JSON of a PrimaryState. Like the standby state's, the bucket
// is made by the first update, so a repository that never pushed or ran a
// set has none.
var bucketPrimary = []byte("primary")

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
func (db *DB) Primary(set string) (PrimaryState, error) { return primaryStates.get(db, set) }

// UpdatePrimary changes the primary state of set in one transaction: fn
// gets the current state and changes it; an error from fn changes nothing.
func (db *DB) UpdatePrimary(set string, fn func(*PrimaryState) error) error {
	return primaryStates.update(db, set, fn)
}

// PrimaryStates returns the primary state of every set that has one.
func (db *DB) PrimaryStates() (map[string]PrimaryState, error) { return primaryStates.all(db) }

// checkPrimary refuses a state with a standby but no push state: its
// callers dereference them.
func checkPrimary(st *PrimaryState) error {
	for key, p := range st.Pushes {
		if p == nil {
			return fmt.Errorf("standby %q has no push state", key)
		}
	}
	return nil
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
