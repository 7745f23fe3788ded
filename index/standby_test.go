package index

import (
	"errors"
	"path/filepath"
	"testing"
	"time"
)

func TestStandbyState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	db, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := db.Standby("os"); err != nil || !st.Promoted.IsZero() {
		t.Fatalf("state of a set never recorded: %+v, %v", st, err)
	}
	at := time.Date(2026, 12, 1, 6, 0, 0, 123, time.UTC)
	if err := db.UpdateStandby("os", func(st *StandbyState) error { st.Promoted = at; return nil }); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := db.UpdateStandby("os", func(st *StandbyState) error { st.Promoted = time.Time{}; return boom }); err != boom {
		t.Fatalf("failed update: %v", err)
	}
	if err := db.UpdateStandby("", func(*StandbyState) error { return nil }); err == nil {
		t.Fatal("empty set name accepted")
	}
	db.Close()

	db, err = Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := db.Standby("os")
	if err != nil || !st.Promoted.Equal(at) {
		t.Fatalf("after reopening: %+v, %v (want promoted at %v; a failed update must change nothing)", st, err, at)
	}
	if st, err := db.Standby("accounts"); err != nil || !st.Promoted.IsZero() {
		t.Fatalf("another set: %+v, %v", st, err)
	}
}
