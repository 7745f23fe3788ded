package retention

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/understudy/understudy/index"
)

// Unlimited as a count keeps one snapshot in every bucket of its kind; as
// Last, every snapshot (restic's "unlimited").
const Unlimited = -1

// Reasons to keep a snapshot. Within's reason is "within" and the span;
// a kind whose count outlasts the buckets also keeps the oldest snapshot,
// with "oldest" before its reason ("oldest daily snapshot").
const (
	ReasonLast     = "last snapshot"
	ReasonHourly   = "hourly snapshot"
	ReasonDaily    = "daily snapshot"
	ReasonWeekly   = "weekly snapshot"
	ReasonMonthly  = "monthly snapshot"
	ReasonYearly   = "yearly snapshot"
	ReasonApplied  = "applied on the standby"
	ReasonApplying = "being applied"
	ReasonWaiting  = "waiting for its apply delay"
)

var (
	// ErrEmptyPolicy is returned for a policy that keeps nothing: every
	// count 0 and no span. Applied, it would remove every snapshot.
	ErrEmptyPolicy = errors.New("empty retention policy: it would remove every snapshot")
	// ErrBadPolicy is wrapped by errors about a count or span that is out
	// of range or does not parse.
	ErrBadPolicy = errors.New("invalid retention policy")
)

// Policy says which snapshots of a set to keep; every other one is
// removed. A snapshot is kept if any part of the policy keeps it.
type Policy struct {
	Last    int // the newest Last snapshots
	Hourly  int // the newest snapshot of each of the newest Hourly hours that have one
	Daily   int // ... days
	Weekly  int // ... ISO weeks
	Monthly int // ... months
	Yearly  int // ... years
	// Within keeps every snapshot newer than the latest one's time minus
	// the span.
	Within Span
}

// Empty reports whether the policy keeps nothing.
func (p Policy) Empty() bool {
	return p.Last == 0 && p.Hourly == 0 && p.Daily == 0 && p.Weekly == 0 && p.Monthly == 0 && p.Yearly == 0 && p.Within.IsZero()
}

// counts names the policy's counts, in the order reasons are given.
func (p Policy) counts() []struct {
	name string
	n    int
} {
	return []struct {
		name string
		n    int
	}{{"last", p.Last}, {"hourly", p.Hourly}, {"daily", p.Daily}, {"weekly", p.Weekly}, {"monthly", p.Monthly}, {"yearly", p.Yearly}}
}

// Validate returns ErrEmptyPolicy for an empty policy and an ErrBadPolicy
// error for a count below Unlimited or a negative span.
func (p Policy) Validate() error {
	for _, c := range p.counts() {
		if c.n < Unlimited {
			return fmt.Errorf("%w: keep %s %d: want a count, 0 for none or %d for unlimited", ErrBadPolicy, c.name, c.n, Unlimited)
		}
	}
	if w := p.Within; w.Years < 0 || w.Months < 0 || w.Days < 0 || w.Hours < 0 {
		return fmt.Errorf("%w: keep within %+v: a span cannot be negative", ErrBadPolicy, w)
	}
	if p.Empty() {
		return ErrEmptyPolicy
	}
	return nil
}

// String describes the policy, as "last 2, daily 7, weekly all, within 30d".
func (p Policy) String() string {
	var parts []string
	for _, c := range p.counts() {
		switch {
		case c.n == Unlimited:
			parts = append(parts, c.name+" all")
		case c.n != 0:
			parts = append(parts, c.name+" "+strconv.Itoa(c.n))
		}
	}
	if !p.Within.IsZero() {
		parts = append(parts, "within "+p.Within.String())
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, ", ")
}

// kind is a calendar bucket kind: the reason it gives, its count, and the
// bucket of a time already in the policy's location, as a number that
// differs between buckets.
type kind struct {
	reason string
	count  int
	bucket func(t time.Time) int
}

func (p Policy) kinds() []kind {
	return []kind{
		{ReasonHourly, p.Hourly, func(t time.Time) int {
			y, m, d := t.Date()
			return ((y*100+int(m))*100+d)*100 + t.Hour()
		}},
		{ReasonDaily, p.Daily, func(t time.Time) int {
			y, m, d := t.Date()
			return (y*100+int(m))*100 + d
		}},
		{ReasonWeekly, p.Weekly, func(t time.Time) int {
			y, w := t.ISOWeek()
			return y*100 + w
		}},
		{ReasonMonthly, p.Monthly, func(t time.Time) int { return t.Year()*100 + int(t.Month()) }},
		{ReasonYearly, p.Yearly, func(t time.Time) int { return t.Year() }},
	}
}

// Snapshot is what the policy needs to know of a snapshot.
type Snapshot struct {
	ID   index.ID
	Time time.Time
}

// Decision is the fate of one snapshot: kept for Reasons, removed when
// there are none.
type Decision struct {
	Snapshot
	Reasons []string
}

// Keep reports whether the snapshot is kept.
func (d Decision) Keep() bool { return len(d.Reasons) > 0 }

func (d *Decision) add(reason string) {
	if !slices.Contains(d.Reasons, reason) {
		d.Reasons = append(d.Reasons, reason)
	}
}

// Apply decides the fate of each of snaps, the snapshots of one set: one
// decision per snapshot, oldest first (snapshots of equal time keep their
// order in snaps, the later counting as the newer). Buckets are read in loc
// (nil for time.Local); now only keeps a snapshot dated in the future from
// being taken as the latest one for Within. Held snapshots are kept, with
// the hold's reasons after the policy's. A policy that does not pass
// Validate is refused with its error.
func (p Policy) Apply(snaps []Snapshot, holds Holds, now time.Time, loc *time.Location) ([]Decision, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if loc == nil {
		loc = time.Local
	}
	ds := make([]Decision, len(snaps))
	for i, s := range snaps {
		ds[i].Snapshot = s
	}
	slices.SortStableFunc(ds, func(a, b Decision) int { return a.Time.Compare(b.Time) })

	// The latest snapshot that is not in the future; with none, every
	// snapshot counts as within the span, as in restic.
	latest, anyPast := time.Time{}, false
	for i := len(ds) - 1; i >= 0; i-- {
		if !ds[i].Time.After(now) {
			latest, anyPast = ds[i].Time, true
			break
		}
	}
	var cutoff time.Time
	if anyPast {
		cutoff = p.Within.Before(latest.In(loc))
	}
	within := "within " + p.Within.String()

	kinds := p.kinds()
	left := make([]int, len(kinds)) // buckets still to keep; Unlimited stays
	last := make([]int, len(kinds)) // the bucket of the last snapshot kept
	for i, k := range kinds {
		left[i] = k.count
	}
	n := len(ds)
	for r := 0; r < n; r++ { // r: rank from the newest
		d := &ds[n-1-r]
		t := d.Time.In(loc)
		if p.Last == Unlimited || r < p.Last {
			d.add(ReasonLast)
		}
		for i, k := range kinds {
			if left[i] == 0 {
				continue
			}
			b := k.bucket(t)
			switch {
			case r == 0 || b != last[i]:
				d.add(k.reason)
				last[i] = b
				if left[i] > 0 {
					left[i]--
				}
			case r == n-1:
				d.add("oldest " + k.reason)
			}
		}
		if !p.Within.IsZero() && (!anyPast || d.Time.After(cutoff)) {
			d.add(within)
		}
		for _, reason := range holds[d.ID] {
			d.add(reason)
		}
	}
	return ds, nil
}

// Holds are reasons outside the policy to keep snapshots, by ID.
type Holds map[index.ID][]string

// Add holds snapshot id for reason.
func (h Holds) Add(id index.ID, reason string) {
	if !slices.Contains(h[id], reason) {
		h[id] = append(h[id], reason)
	}
}

// AddStandby holds what the standby state st of set needs: on every
// target, the snapshot applied and those being applied, and the snapshots
// newer than the one applied that the set's apply delay still keeps from
// being applied (Time + delay after now), as restore.Standby.Auto judges
// them. snaps are the set's snapshots, for their times.
func (h Holds) AddStandby(set string, st index.StandbyState, snaps []Snapshot, now time.Time) error {
	delay, err := st.Delay()
	if err != nil {
		return fmt.Errorf("standby state of set %s: %w", set, err)
	}
	times := make(map[index.ID]time.Time, len(snaps))
	for _, s := range snaps {
		times[s.ID] = s.Time
	}
	for _, key := range slices.Sorted(maps.Keys(st.Targets)) {
		t := st.Targets[key]
		if t == nil {
			continue
		}
		if !t.Applied.IsZero() {
			h.Add(t.Applied, ReasonApplied)
		}
		for _, id := range t.Applying {
			h.Add(id, ReasonApplying)
		}
		// A target with nothing applied, or whose applied snapshot is no
		// longer listed, would take any snapshot next.
		applied, known := times[t.Applied]
		known = known && !t.Applied.IsZero()
		for _, s := range snaps {
			if known && !s.Time.After(applied) {
				continue
			}
			if s.Time.Add(delay).After(now) {
				h.Add(s.ID, ReasonWaiting)
			}
		}
	}
	return nil
}

// Span is a calendar length, as restic's --keep-within takes it: years,
// months, days and hours. Subtracting it works on the calendar, in the
// location of the time: 1m before March 31 of a common year is March 3
// (time.AddDate normalises February 31), and 1d before a time the day
// after a daylight saving change is the same wall-clock time, 23 or 25
// hours earlier.
type Span struct {
	Years, Months, Days, Hours int
}

// maxSpanPart bounds each number of a span: 100000 years is plenty, and
// no sum can overflow.
const maxSpanPart = 1_000_000

// ParseSpan reads a span written as numbers with units y (years), m
// (months), d (days) and h (hours), each unit at most once, in any order:
// "7d", "12h", "1y6m", "2y5m7d3h".
func ParseSpan(s string) (Span, error) {
	var sp Span
	bad := func(why string) (Span, error) {
		return Span{}, fmt.Errorf("%w: span %q: %s; write it like 7d, 36h or 1y6m (y years, m months, d days, h hours)", ErrBadPolicy, s, why)
	}
	if s == "" {
		return bad("empty")
	}
	seen := map[byte]bool{}
	for rest := s; rest != ""; {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 {
			return bad("a number must come before each unit")
		}
		n, err := strconv.Atoi(rest[:i])
		if err != nil || n > maxSpanPart {
			return bad(fmt.Sprintf("%s is too large", rest[:i]))
		}
		if i == len(rest) {
			return bad(fmt.Sprintf("%s has no unit", rest[:i]))
		}
		unit := rest[i]
		if seen[unit] {
			return bad(fmt.Sprintf("unit %c given twice", unit))
		}
		seen[unit] = true
		switch unit {
		case 'y':
			sp.Years = n
		case 'm':
			sp.Months = n
		case 'd':
			sp.Days = n
		case 'h':
			sp.Hours = n
		default:
			return bad(fmt.Sprintf("unknown unit %q", rest[i:i+1]))
		}
		rest = rest[i+1:]
	}
	return sp, nil
}

// IsZero reports whether the span is empty.
func (s Span) IsZero() bool { return s == Span{} }

// String gives the span in the form ParseSpan reads, "" for the zero span.
func (s Span) String() string {
	var b strings.Builder
	for _, part := range []struct {
		n    int
		unit byte
	}{{s.Years, 'y'}, {s.Months, 'm'}, {s.Days, 'd'}, {s.Hours, 'h'}} {
		if part.n != 0 {
			b.WriteString(strconv.Itoa(part.n))
			b.WriteByte(part.unit)
		}
	}
	return b.String()
}

// Before returns t minus the span, on t's calendar.
func (s Span) Before(t time.Time) time.Time {
	return t.AddDate(-s.Years, -s.Months, -s.Days).Add(-time.Duration(s.Hours) * time.Hour)
}
