package index

import (
	"fmt"
	"time"
)

// The standby state lives in bucket "standby": one key per set name, whose
// value is the JSON of a StandbyState. The bucket is made by the first
// update, so that a repository that never was a standby has none.
var bucketStandby = []byte("standby")

// StandbyState is what a repository records about one set it receives.
type StandbyState struct {
	// Promoted is when this host was promoted to primary for the set
	// (`understudy promote`); zero while it is a standby. A promoted set
	// refuses pushes, so that an old primary coming back cannot overwrite
	// the new one.
	Promoted time.Time `json:"promoted,omitzero"`
	// Held is when automatic applies of the set were stopped (`understudy
	// hold`); zero when they run. Pushes are still received.
	Held time.Time `json:"held,omitzero"`
	// ApplyDelay is how old a snapshot must be before it is applied
	// automatically, as time.ParseDuration reads it; "" for no delay.
	ApplyDelay string `json:"apply_delay,omitempty"`
	// MaxDeleted and MaxChanged are the mass-change guard's limits, in
	// percent of the files (and of the bytes) in the scope; nil for the
	// defaults.
	MaxDeleted *float64 `json:"max_deleted,omitempty"`
	MaxChanged *float64 `json:"max_changed,omitempty"`
	// Checks are the user's sanity checks, run against a staging view of a
	// snapshot before it is applied.
	Checks []GuardCheck `json:"checks,omitempty"`
	// Protect are patterns of host-specific paths no apply touches.
	Protect []string `json:"protect,omitempty"`
	// ConfigProtect are more such patterns, those of the set's table in
	// the configuration file: written from it before each apply and kept
	// apart from Protect (`protect add`), so that a pattern taken out of
	// the file leaves the state while the administrator's stay.
	ConfigProtect []string `json:"config_protect,omitempty"`
	// Targets are the live trees the set is applied to, by absolute path.
	Targets map[string]*TargetState `json:"targets,omitempty"`
}

// Delay returns ApplyDelay as a duration, 0 when there is none.
func (st *StandbyState) Delay() (time.Duration, error) {
	if st.ApplyDelay == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(st.ApplyDelay)
	if err != nil {
		return 0, fmt.Errorf("apply delay %q: %w", st.ApplyDelay, err)
	}
	return d, nil
}

// GuardCheck is a user-defined sanity check: Command runs with a staging
// directory holding Paths of the snapshot.
type GuardCheck struct {
	Name    string   `json:"name"`
	Command []string `json:"command"`
	Paths   []string `json:"paths,omitempty"`
	Timeout string   `json:"timeout,omitempty"`
}

// TargetState is what a standby records about one live tree.
type TargetState struct {
	// Applied is the snapshot last applied completely, at AppliedAt.
	Applied   ID        `json:"applied,omitzero"`
	AppliedAt time.Time `json:"applied_at,omitzero"`
	// Applying are the snapshots whose apply started after Applied was
	// applied and did not finish, the last one most recent: while it is
	// not empty the tree is mid-apply, made of parts of all of them.
	Applying  []ID      `json:"applying,omitempty"`
	StartedAt time.Time `json:"started_at,omitzero"`
	// LastError is why the last apply or automatic apply failed or was
	// refused; "" after a success.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// Identity is the target directory the state describes: a directory
	// made anew at the same path holds none of it.
	Identity string `json:"identity,omitempty"`
}

// MidApply reports whether an apply was started and has not finished.
func (t *TargetState) MidApply() bool { return len(t.Applying) > 0 }

// Standby returns the state of set; the zero state if none was recorded.
func (db *DB) Standby(set string) (StandbyState, error) { return standbyStates.get(db, set) }

// UpdateStandby changes the state of set in one transaction: fn gets the
// current state and changes it; an error from fn changes nothing.
func (db *DB) UpdateStandby(set string, fn func(*StandbyState) error) error {
	return standbyStates.update(db, set, fn)
}

// StandbyStates returns the state of every set that has one.
func (db *DB) StandbyStates() (map[string]StandbyState, error) { return standbyStates.all(db) }
