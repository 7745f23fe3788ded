package ops

import (
	"cmp"
	"slices"
	"time"
)

// Schedule says when a set runs: the first run time after a given one.
// A set's config Every is one.
type Schedule interface {
	Next(after time.Time) time.Time
}

// Plan is the daemon's timetable: for each scheduled set, when it runs
// next. It is not safe for concurrent use; the daemon's loop owns it.
//
// The rules:
//   - A set that has run before is due at its schedule's next time after
//     the start of its last run. If that time has passed (the daemon was
//     down, or a run took longer than the interval), the set is due now,
//     once: missed windows are caught up by one run, not one per window.
//   - A set that has never run is due now when Immediate (an interval: the
//     first snapshot should not wait a day), else at its next time (a cron
//     expression says when runs may happen).
//   - Runs of one set never overlap: a set is not due while it runs, and
//     Done computes its next time from the run's start.
type Plan struct {
	jobs map[string]*job
}

type job struct {
	sched     Schedule
	immediate bool
	last      time.Time // start of the last run; zero if never
	next      time.Time
	running   bool
}

// NewPlan returns an empty plan.
func NewPlan() *Plan { return &Plan{jobs: map[string]*job{}} }

// Set adds the set name with its schedule, or changes it (a reloaded
// configuration). lastRun is the start of its last run, zero if it never
// ran; for a set already in the plan the later of lastRun and the plan's
// own record counts.
func (p *Plan) Set(name string, s Schedule, immediate bool, lastRun, now time.Time) {
	j := p.jobs[name]
	if j == nil {
		j = &job{}
		p.jobs[name] = j
	}
	j.sched, j.immediate = s, immediate
	if lastRun.After(j.last) {
		j.last = lastRun
	}
	j.next = j.due(now)
}

func (j *job) due(now time.Time) time.Time {
	if j.last.IsZero() {
		if j.immediate {
			return now
		}
		return j.sched.Next(now)
	}
	next := j.sched.Next(j.last)
	if next.IsZero() || next.Before(now) {
		return now
	}
	return next
}

// Remove drops name from the plan; a run of it already going finishes.
func (p *Plan) Remove(name string) { delete(p.jobs, name) }

// Names returns the sets in the plan, sorted.
func (p *Plan) Names() []string {
	names := make([]string, 0, len(p.jobs))
	for n := range p.jobs {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// NextOf returns when name runs next; false if it is not in the plan.
func (p *Plan) NextOf(name string) (time.Time, bool) {
	j, ok := p.jobs[name]
	if !ok {
		return time.Time{}, false
	}
	return j.next, true
}

// Due returns the sets due at now that are not running, the longest
// overdue first (ties by name).
func (p *Plan) Due(now time.Time) []string {
	var due []string
	for n, j := range p.jobs {
		if !j.running && !j.next.After(now) {
			due = append(due, n)
		}
	}
	slices.SortFunc(due, func(a, b string) int {
		return cmp.Or(p.jobs[a].next.Compare(p.jobs[b].next), cmp.Compare(a, b))
	})
	return due
}

// Wake returns the earliest next time of a set not running; false when
// there is none.
func (p *Plan) Wake() (time.Time, bool) {
	var at time.Time
	found := false
	for _, j := range p.jobs {
		if j.running {
			continue
		}
		if !found || j.next.Before(at) {
			at, found = j.next, true
		}
	}
	return at, found
}

// Start marks name as running from started.
func (p *Plan) Start(name string, started time.Time) {
	if j, ok := p.jobs[name]; ok {
		j.running = true
		j.last = started
	}
}

// Done marks the run of name that Start began as finished at now and
// plans its next run (due at once if its next time has already passed).
func (p *Plan) Done(name string, now time.Time) {
	if j, ok := p.jobs[name]; ok {
		j.running = false
		j.next = j.due(now)
	}
}
