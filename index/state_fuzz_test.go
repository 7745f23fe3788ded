package index

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// FuzzDecodeState feeds the bytes of a damaged or hostile index's standby
// and primary state records to their decoders: neither panics, and a state
// either is refused or stores back to bytes that decode to the same state; a
// primary state has every standby's push state (its callers dereference
// them; the standby state's readers take a target without one as empty).
func FuzzDecodeState(f *testing.F) {
	at := time.Date(2026, 11, 30, 4, 0, 0, 0, time.UTC)
	pct := 12.5
	sb, _ := json.Marshal(StandbyState{Held: at, ApplyDelay: "4h", MaxDeleted: &pct,
		Checks:  []GuardCheck{{Name: "passwd", Command: []string{"/bin/true"}, Paths: []string{"/etc/passwd"}}},
		Protect: []string{"/etc/hostname"}, ConfigProtect: []string{"/etc/fstab"},
		Targets: map[string]*TargetState{"/": {Applied: Hash([]byte("s1")), AppliedAt: at, Applying: []ID{Hash([]byte("s2"))}}}})
	pr, _ := json.Marshal(PrimaryState{LastRun: at, LastRunError: "check failed", LastRunRefused: true,
		Pushes: map[string]*PushState{"standby": {Dest: "ssh://b/repo", Snapshot: Hash([]byte("s1")), SnapshotTime: at, At: at}}})
	for _, seed := range [][]byte{sb, pr, []byte("{}"), []byte("null"), []byte(`{"targets":{"/":null}}`), []byte(`{"pushes":{"b":null}}`)} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		var st StandbyState
		if err := standbyStates.decode("s", v, &st); err == nil {
			again, err := json.Marshal(st)
			if err != nil {
				t.Fatalf("an accepted standby state does not encode: %v", err)
			}
			var st2 StandbyState
			if err := standbyStates.decode("s", again, &st2); err != nil {
				t.Fatalf("a stored standby state is refused: %v\n%s", err, again)
			}
			if third, _ := json.Marshal(st2); !bytes.Equal(third, again) {
				t.Fatalf("standby state changes when stored again:\n%s\n%s", again, third)
			}
		}
		var ps PrimaryState
		if err := primaryStates.decode("s", v, &ps); err == nil {
			for key, p := range ps.Pushes {
				if p == nil {
					t.Fatalf("standby %q without a push state accepted", key)
				}
			}
			again, err := json.Marshal(ps)
			if err != nil {
				t.Fatalf("an accepted primary state does not encode: %v", err)
			}
			var ps2 PrimaryState
			if err := primaryStates.decode("s", again, &ps2); err != nil {
				t.Fatalf("a stored primary state is refused: %v\n%s", err, again)
			}
			if third, _ := json.Marshal(ps2); !bytes.Equal(third, again) {
				t.Fatalf("primary state changes when stored again:\n%s\n%s", again, third)
			}
		}
	})
}
