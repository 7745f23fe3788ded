package index

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestPrimaryState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	db, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := db.Primary("os"); err != nil || !st.LastRun.IsZero() || st.Pushes != nil {
		t.Fatalf("state of a set never recorded: %+v, %v", st, err)
	}
	if states, err := db.PrimaryStates(); err != nil || len(states) != 0 {
		t.Fatalf("states of a repository that never pushed: %v, %v", states, err)
	}
	ran := time.Date(2026, 12, 1, 6, 0, 0, 123, time.UTC)
	taken := ran.Add(-time.Minute)
	snap := Hash([]byte("snapshot"))
	err = db.UpdatePrimary("os", func(st *PrimaryState) error {
		st.LastRun, st.LastRunError, st.LastRunRefused = ran, "pre-flight check failed", true
		st.Push("dr", "ssh://standby/repo").Pushed(snap, taken, ran)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = db.UpdatePrimary("accounts", func(st *PrimaryState) error {
		st.Push("/srv/standby", "/srv/standby").Failed("dial: no route to host", ran)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := db.UpdatePrimary("os", func(st *PrimaryState) error { st.Pushes = nil; return boom }); err != boom {
		t.Fatalf("failed update: %v", err)
	}
	for _, bad := range []string{"", strings.Repeat("x", bolt.MaxKeySize+1)} {
		if err := db.UpdatePrimary(bad, func(*PrimaryState) error { return nil }); err == nil {
			t.Fatalf("set name of %d bytes accepted", len(bad))
		}
	}
	db.Close()

	db, err = Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := db.Primary("os")
	if err != nil {
		t.Fatal(err)
	}
	p := st.Pushes["dr"]
	if !st.LastRun.Equal(ran) || st.LastRunError != "pre-flight check failed" || !st.LastRunRefused || p == nil ||
		p.Dest != "ssh://standby/repo" || p.Snapshot != snap || !p.SnapshotTime.Equal(taken) || !p.At.Equal(ran) || p.LastError != "" {
		t.Fatalf("after reopening: %+v, push %+v (a failed update must change nothing)", st, p)
	}
	states, err := db.PrimaryStates()
	if err != nil || len(states) != 2 {
		t.Fatalf("states: %v, %v", states, err)
	}
	a := states["accounts"].Pushes["/srv/standby"]
	if a == nil || a.LastError != "dial: no route to host" || !a.LastErrorAt.Equal(ran) || !a.Snapshot.IsZero() || !a.At.IsZero() {
		t.Fatalf("accounts: %+v", a)
	}
	if states["os"].Pushes["dr"].Snapshot != snap {
		t.Fatalf("os in states: %+v", states["os"])
	}
}

// A success clears the error and moves the time of the push; an older
// snapshot pushed later does not replace a newer one.
func TestPushStateOutcomes(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 6, 0, 0, 0, time.UTC)
	older, newer := Hash([]byte("older")), Hash([]byte("newer"))
	var p PushState
	p.Failed("refused: promoted", t0)
	if p.LastError == "" || !p.Snapshot.IsZero() {
		t.Fatalf("after a failure: %+v", p)
	}
	p.Pushed(newer, t0.Add(time.Hour), t0.Add(2*time.Hour))
	if p.LastError != "" || !p.LastErrorAt.IsZero() || p.Snapshot != newer {
		t.Fatalf("after a success: %+v", p)
	}
	p.Failed("connection reset", t0.Add(3*time.Hour))
	if p.Snapshot != newer || p.LastError != "connection reset" {
		t.Fatalf("a failure must keep what was pushed: %+v", p)
	}
	p.Pushed(older, t0, t0.Add(4*time.Hour))
	if p.Snapshot != newer || !p.SnapshotTime.Equal(t0.Add(time.Hour)) || !p.At.Equal(t0.Add(4*time.Hour)) || p.LastError != "" {
		t.Fatalf("an older snapshot pushed later: %+v", p)
	}
	p.Pushed(newer, t0.Add(time.Hour), t0.Add(5*time.Hour))
	if p.Snapshot != newer || !p.At.Equal(t0.Add(5*time.Hour)) {
		t.Fatalf("the same snapshot again: %+v", p)
	}
}

// A damaged value is an error that names the set, from every reader and
// from an update, which then changes nothing.
func TestPrimaryStateDamaged(t *testing.T) {
	db := openTemp(t)
	if err := db.UpdatePrimary("good", func(st *PrimaryState) error { st.LastRun = time.Now(); return nil }); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]byte{
		[]byte("{not json"),
		[]byte(`{"pushes":{"dr":null}}`),
		[]byte(`{"pushes":{"dr":{"snapshot":"abc"}}}`),
		make([]byte, maxSetState+1),
	} {
		err := db.Bolt().Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketPrimary).Put([]byte("os"), bad) })
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Primary("os"); err == nil || !strings.Contains(err.Error(), `set "os"`) {
			t.Errorf("Primary of %.20q: %v", bad, err)
		}
		if _, err := db.PrimaryStates(); err == nil || !strings.Contains(err.Error(), `set "os"`) {
			t.Errorf("PrimaryStates with %.20q: %v", bad, err)
		}
		called := false
		err = db.UpdatePrimary("os", func(*PrimaryState) error { called = true; return nil })
		if err == nil || called || !strings.Contains(err.Error(), `set "os"`) {
			t.Errorf("UpdatePrimary over %.20q: %v (fn called: %v)", bad, err, called)
		}
		if st, err := db.Primary("good"); err != nil || st.LastRun.IsZero() {
			t.Errorf("another set: %+v, %v", st, err)
		}
	}
	if err := db.Check(); err != nil {
		t.Fatal(err)
	}
}
