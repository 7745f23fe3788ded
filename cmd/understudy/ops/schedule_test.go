package ops

import (
	"slices"
	"testing"
	"time"

	"github.com/robfig/cron/v3"
)

type interval time.Duration

func (i interval) Next(t time.Time) time.Time { return t.Add(time.Duration(i)) }

func mustCron(t *testing.T, expr string) Schedule {
	t.Helper()
	s, err := cron.ParseStandard(expr)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var t0 = time.Date(2026, 12, 1, 10, 17, 0, 0, time.UTC)

func TestPlanFirstRun(t *testing.T) {
	p := NewPlan()
	p.Set("accounts", interval(time.Hour), true, time.Time{}, t0)
	p.Set("os", mustCron(t, "0 3 * * *"), false, time.Time{}, t0)
	if got := p.Due(t0); !slices.Equal(got, []string{"accounts"}) {
		t.Fatalf("due at start: %v", got)
	}
	next, _ := p.NextOf("os")
	if want := time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC); !next.Equal(want) {
		t.Fatalf("os next %v, want %v", next, want)
	}
}

func TestPlanCatchesUpOnce(t *testing.T) {
	p := NewPlan()
	// Last ran five hours ago, hourly: four windows missed, one run now.
	p.Set("accounts", interval(time.Hour), true, t0.Add(-5*time.Hour), t0)
	if got := p.Due(t0); !slices.Equal(got, []string{"accounts"}) {
		t.Fatalf("due: %v", got)
	}
	p.Start("accounts", t0)
	if got := p.Due(t0); len(got) != 0 {
		t.Fatalf("due while running: %v", got)
	}
	if _, ok := p.Wake(); ok {
		t.Fatal("a wake time for a running set")
	}
	p.Done("accounts", t0.Add(2*time.Minute))
	next, _ := p.NextOf("accounts")
	if !next.Equal(t0.Add(time.Hour)) {
		t.Fatalf("after the catch-up run, next %v, want %v", next, t0.Add(time.Hour))
	}
	// Daily at 03:00, last ran the day before yesterday: one run now.
	p.Set("os", mustCron(t, "0 3 * * *"), false, t0.Add(-55*time.Hour), t0)
	if got := p.Due(t0); !slices.Equal(got, []string{"os"}) {
		t.Fatalf("due: %v", got)
	}
	// Not missed: ran at 03:00 today, next tomorrow.
	p.Set("os2", mustCron(t, "0 3 * * *"), false, time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC), t0)
	if next, _ := p.NextOf("os2"); !next.Equal(time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)) {
		t.Fatalf("os2 next %v", next)
	}
}

func TestPlanLongRun(t *testing.T) {
	p := NewPlan()
	p.Set("s", interval(10*time.Minute), true, time.Time{}, t0)
	p.Start("s", t0)
	// The run took 25 minutes: two windows passed during it; it is due
	// again at once, once.
	end := t0.Add(25 * time.Minute)
	p.Done("s", end)
	if got := p.Due(end); !slices.Equal(got, []string{"s"}) {
		t.Fatalf("due after a long run: %v", got)
	}
	p.Start("s", end)
	p.Done("s", end.Add(time.Minute))
	if next, _ := p.NextOf("s"); !next.Equal(end.Add(10 * time.Minute)) {
		t.Fatalf("next %v, want %v", next, end.Add(10*time.Minute))
	}
}

func TestPlanOrderAndWake(t *testing.T) {
	p := NewPlan()
	p.Set("b", interval(time.Hour), true, t0.Add(-3*time.Hour), t0)
	p.Set("a", interval(time.Hour), true, t0.Add(-30*time.Minute), t0)
	p.Set("c", interval(time.Hour), true, t0.Add(-2*time.Hour), t0)
	if got := p.Due(t0); !slices.Equal(got, []string{"b", "c"}) {
		t.Fatalf("due: %v", got)
	}
	p.Start("b", t0)
	p.Start("c", t0)
	wake, ok := p.Wake()
	if !ok || !wake.Equal(t0.Add(30*time.Minute)) {
		t.Fatalf("wake %v %v", wake, ok)
	}
	later := t0.Add(31 * time.Minute)
	if got := p.Due(later); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("due later: %v", got)
	}
}

func TestPlanReload(t *testing.T) {
	p := NewPlan()
	p.Set("s", interval(time.Hour), true, t0.Add(-10*time.Minute), t0)
	if next, _ := p.NextOf("s"); !next.Equal(t0.Add(50 * time.Minute)) {
		t.Fatalf("next %v", next)
	}
	// The interval is shortened to 5 minutes: overdue, due now.
	p.Set("s", interval(5*time.Minute), true, time.Time{}, t0)
	if got := p.Due(t0); !slices.Equal(got, []string{"s"}) {
		t.Fatalf("due after reload: %v", got)
	}
	// A reload while the set runs does not make it due twice.
	p.Start("s", t0)
	p.Set("s", interval(time.Minute), true, time.Time{}, t0.Add(3*time.Minute))
	if got := p.Due(t0.Add(3 * time.Minute)); len(got) != 0 {
		t.Fatalf("due while running: %v", got)
	}
	p.Remove("s")
	if names := p.Names(); len(names) != 0 {
		t.Fatalf("names after remove: %v", names)
	}
	p.Done("s", t0) // a run of a removed set finishing is harmless
	if _, ok := p.NextOf("s"); ok {
		t.Fatal("removed set came back")
	}
}
