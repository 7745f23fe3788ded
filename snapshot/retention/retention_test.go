package retention

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/understudy/understudy/index"
)

// zone is the fixed "local time" of the tests: buckets are read in it.
var zone = time.FixedZone("test", 2*3600)

// at parses "2006-01-02 15:04[:05]" in zone; a suffix "#..." after the time
// names one of several snapshots with the same time.
func at(t *testing.T, s string) time.Time {
	t.Helper()
	s, _, _ = strings.Cut(s, "#")
	for _, layout := range []string{"2006-01-02 15:04:05.999999999", "2006-01-02 15:04"} {
		if tm, err := time.ParseInLocation(layout, s, zone); err == nil {
			return tm
		}
	}
	t.Fatalf("bad test time %q", s)
	return time.Time{}
}

func idOf(label string) index.ID { return index.Hash([]byte(label)) }

// listOf makes snapshots from labels, in the order given.
func listOf(t *testing.T, labels ...string) []Snapshot {
	t.Helper()
	out := make([]Snapshot, len(labels))
	for i, l := range labels {
		out[i] = Snapshot{ID: idOf(l), Time: at(t, l)}
	}
	return out
}

// decide applies p and returns the reasons of the kept snapshots by label;
// the labels missing from the map are removed.
func decide(t *testing.T, p Policy, labels []string, holds Holds, now time.Time) map[string][]string {
	t.Helper()
	ds, err := p.Apply(listOf(t, labels...), holds, now, zone)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != len(labels) {
		t.Fatalf("%d decisions for %d snapshots", len(ds), len(labels))
	}
	byID := map[index.ID]string{}
	for _, l := range labels {
		byID[idOf(l)] = l
	}
	kept := map[string][]string{}
	for i, d := range ds {
		if i > 0 && d.Time.Before(ds[i-1].Time) {
			t.Fatalf("decisions not oldest first: %v after %v", d.Time, ds[i-1].Time)
		}
		if d.Keep() {
			kept[byID[d.ID]] = d.Reasons
		}
	}
	return kept
}

func sameKept(got, want map[string][]string) string {
	var diffs []string
	for l, w := range want {
		if g, ok := got[l]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s removed, want kept for %q", l, w))
		} else if !slices.Equal(g, w) {
			diffs = append(diffs, fmt.Sprintf("%s kept for %q, want %q", l, g, w))
		}
	}
	for l, g := range got {
		if _, ok := want[l]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s kept for %q, want removed", l, g))
		}
	}
	slices.Sort(diffs)
	return strings.Join(diffs, "\n")
}

const (
	last, hourly, daily, weekly, monthly, yearly = ReasonLast, ReasonHourly, ReasonDaily, ReasonWeekly, ReasonMonthly, ReasonYearly
)

func r(reasons ...string) []string { return reasons }

func TestPolicy(t *testing.T) {
	// One snapshot every Sunday at 11:00 for 12 weeks (the shape of the
	// example in restic's manual).
	var sundays []string
	for d := at(t, "2019-09-01 11:00"); len(sundays) < 12; d = d.AddDate(0, 0, 7) {
		sundays = append(sundays, d.Format("2006-01-02 15:04"))
	}
	farFuture := at(t, "2100-01-01 00:00")
	tests := []struct {
		name   string
		policy Policy
		snaps  []string // oldest first
		now    time.Time
		keep   map[string][]string
	}{
		{
			name:   "weekly snapshots, keep daily 4: the last four",
			policy: Policy{Daily: 4},
			snaps:  sundays,
			keep: map[string][]string{
				sundays[8]: r(daily), sundays[9]: r(daily), sundays[10]: r(daily), sundays[11]: r(daily),
			},
		},
		{
			name:   "keep last",
			policy: Policy{Last: 2},
			snaps:  []string{"2024-01-01 10:00", "2024-01-01 11:00", "2024-01-01 12:00", "2024-01-01 13:00"},
			keep:   map[string][]string{"2024-01-01 12:00": r(last), "2024-01-01 13:00": r(last)},
		},
		{
			name:   "keep last larger than the list keeps all, and no oldest reason",
			policy: Policy{Last: 10},
			snaps:  []string{"2024-01-01 10:00", "2024-01-01 10:00#b", "2024-01-02 10:00"},
			keep: map[string][]string{
				"2024-01-01 10:00": r(last), "2024-01-01 10:00#b": r(last), "2024-01-02 10:00": r(last),
			},
		},
		{
			name:   "keep last unlimited",
			policy: Policy{Last: Unlimited},
			snaps:  []string{"2024-01-01 10:00", "2024-02-01 10:00", "2024-03-01 10:00"},
			keep: map[string][]string{
				"2024-01-01 10:00": r(last), "2024-02-01 10:00": r(last), "2024-03-01 10:00": r(last),
			},
		},
		{
			name:   "hourly: newest of each hour, an hour without snapshots is not counted",
			policy: Policy{Hourly: 3},
			snaps: []string{"2024-05-01 09:59", "2024-05-01 10:05", "2024-05-01 10:40", "2024-05-01 11:10", "2024-05-01 11:50",
				/* no snapshot at 12 */ "2024-05-01 13:20"},
			keep: map[string][]string{
				"2024-05-01 10:40": r(hourly), "2024-05-01 11:50": r(hourly), "2024-05-01 13:20": r(hourly),
			},
		},
		{
			name:   "daily: the newest of each day wins, and of equal times the later listed",
			policy: Policy{Daily: 2},
			snaps: []string{"2024-05-01 08:00", "2024-05-01 20:00", "2024-05-03 09:00", "2024-05-03 09:00#later",
				"2024-05-04 00:00", "2024-05-04 23:59:59.999999999"},
			keep: map[string][]string{
				"2024-05-03 09:00#later": r(daily), "2024-05-04 23:59:59.999999999": r(daily),
			},
		},
		{
			name:   "daily larger than the days there are: every day, and the oldest too",
			policy: Policy{Daily: 10},
			snaps: []string{"2024-05-01 08:00", "2024-05-01 20:00", "2024-05-02 08:00", "2024-05-02 20:00",
				"2024-05-05 08:00", "2024-05-05 20:00"},
			keep: map[string][]string{
				"2024-05-01 08:00": r("oldest " + daily), "2024-05-01 20:00": r(daily),
				"2024-05-02 20:00": r(daily), "2024-05-05 20:00": r(daily),
			},
		},
		{
			name:   "daily larger than the days, the oldest alone on its day",
			policy: Policy{Daily: 10},
			snaps:  []string{"2024-05-01 08:00", "2024-05-02 08:00", "2024-05-02 20:00"},
			keep:   map[string][]string{"2024-05-01 08:00": r(daily), "2024-05-02 20:00": r(daily)},
		},
		{
			name:   "daily unlimited",
			policy: Policy{Daily: Unlimited},
			snaps:  []string{"2023-01-01 08:00", "2023-01-01 09:00", "2023-06-01 08:00", "2023-06-01 09:00", "2024-05-02 08:00"},
			keep: map[string][]string{
				"2023-01-01 08:00": r("oldest " + daily), "2023-01-01 09:00": r(daily), "2023-06-01 09:00": r(daily),
				"2024-05-02 08:00": r(daily),
			},
		},
		{
			name:   "weekly: ISO weeks run Monday to Sunday, across the new year",
			policy: Policy{Weekly: 3},
			snaps: []string{
				"2020-12-20 12:00", // Sunday, week 2020-51
				"2020-12-27 23:00", // Sunday, week 2020-52
				"2020-12-28 01:00", // Monday, week 2020-53
				"2020-12-31 12:00", // Thursday, week 2020-53
				"2021-01-03 22:00", // Sunday, still week 2020-53
				"2021-01-04 00:30", // Monday, week 2021-01
			},
			keep: map[string][]string{
				"2020-12-27 23:00": r(weekly), "2021-01-03 22:00": r(weekly), "2021-01-04 00:30": r(weekly),
			},
		},
		{
			name:   "monthly",
			policy: Policy{Monthly: 2},
			snaps:  []string{"2024-01-31 23:00", "2024-02-01 00:00", "2024-02-29 12:00", "2024-04-01 00:00", "2024-04-15 00:00"},
			keep:   map[string][]string{"2024-02-29 12:00": r(monthly), "2024-04-15 00:00": r(monthly)},
		},
		{
			name:   "yearly, fewer years than asked: the oldest too",
			policy: Policy{Yearly: 5},
			snaps:  []string{"2021-03-01 00:00", "2021-12-31 23:59", "2022-06-01 00:00", "2024-01-01 00:00"},
			keep: map[string][]string{
				"2021-03-01 00:00": r("oldest " + yearly), "2021-12-31 23:59": r(yearly),
				"2022-06-01 00:00": r(yearly), "2024-01-01 00:00": r(yearly),
			},
		},
		{
			name:   "within: strictly newer than the latest minus the span, from the latest and not from now",
			policy: Policy{Within: Span{Days: 7}},
			snaps: []string{"2024-04-30 12:00", "2024-05-01 12:00", "2024-05-01 12:00:00.000000001", "2024-05-03 00:00",
				"2024-05-08 12:00"},
			now: farFuture,
			keep: map[string][]string{
				"2024-05-01 12:00:00.000000001": r("within 7d"), "2024-05-03 00:00": r("within 7d"),
				"2024-05-08 12:00": r("within 7d"),
			},
		},
		{
			name:   "within: a snapshot dated in the future is kept but is not the latest",
			policy: Policy{Within: Span{Days: 2}},
			snaps:  []string{"2024-05-01 12:00", "2024-05-04 12:00", "2024-05-05 12:00", "2024-09-01 00:00"},
			now:    at(t, "2024-05-06 00:00"),
			keep: map[string][]string{
				"2024-05-04 12:00": r("within 2d"), "2024-05-05 12:00": r("within 2d"), "2024-09-01 00:00": r("within 2d"),
			},
		},
		{
			name:   "within: every snapshot in the future is kept",
			policy: Policy{Within: Span{Hours: 1}},
			snaps:  []string{"2024-05-01 12:00", "2024-05-04 12:00"},
			now:    at(t, "2024-01-01 00:00"),
			keep:   map[string][]string{"2024-05-01 12:00": r("within 1h"), "2024-05-04 12:00": r("within 1h")},
		},
		{
			name:   "within a calendar span: one month before March 31 is March 2 in a leap year",
			policy: Policy{Within: Span{Months: 1}},
			snaps:  []string{"2024-02-29 12:00", "2024-03-02 00:00", "2024-03-02 00:01", "2024-03-31 00:00"},
			now:    farFuture,
			keep: map[string][]string{
				"2024-03-02 00:01": r("within 1m"), "2024-03-31 00:00": r("within 1m"),
			},
		},
		{
			name:   "combined: all the reasons of each kept snapshot, in a fixed order",
			policy: Policy{Last: 2, Daily: 2, Weekly: 2, Monthly: 1, Yearly: 1, Within: Span{Hours: 6}},
			snaps: []string{
				"2024-04-28 10:00",                     // Sunday
				"2024-05-01 09:00", "2024-05-01 18:00", // Wednesday
				"2024-05-02 03:00", "2024-05-02 04:00", // Thursday
			},
			now: farFuture,
			keep: map[string][]string{
				"2024-04-28 10:00": r(weekly),
				"2024-05-01 18:00": r(daily),
				"2024-05-02 03:00": r(last, "within 6h"),
				"2024-05-02 04:00": r(last, daily, weekly, monthly, yearly, "within 6h"),
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			now := tc.now
			if now.IsZero() {
				now = farFuture
			}
			if d := sameKept(decide(t, tc.policy, tc.snaps, nil, now), tc.keep); d != "" {
				t.Errorf("policy %s:\n%s", tc.policy, d)
			}
		})
	}
}

// A daily snapshot for 100 years, with the policy of restic's manual:
// keep-daily 7, keep-weekly 5, keep-monthly 12, keep-yearly 75.
func TestPolicyHundredYears(t *testing.T) {
	end := at(t, "2024-06-16 10:00") // a Sunday
	var snaps []Snapshot
	for d := at(t, "1925-01-01 10:00"); !d.After(end); d = d.AddDate(0, 0, 1) {
		snaps = append(snaps, Snapshot{ID: index.Hash([]byte(d.String())), Time: d})
	}
	ds, err := Policy{Daily: 7, Weekly: 5, Monthly: 12, Yearly: 75}.Apply(snaps, nil, end, zone)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string][]string{}
	kept := 0
	for _, d := range ds {
		if d.Keep() {
			kept++
		}
		for _, reason := range d.Reasons {
			kinds[reason] = append(kinds[reason], d.Time.Format("2006-01-02"))
		}
	}
	want := map[string][]string{
		daily:  {"2024-06-10", "2024-06-11", "2024-06-12", "2024-06-13", "2024-06-14", "2024-06-15", "2024-06-16"},
		weekly: {"2024-05-19", "2024-05-26", "2024-06-02", "2024-06-09", "2024-06-16"},
		monthly: {"2023-07-31", "2023-08-31", "2023-09-30", "2023-10-31", "2023-11-30", "2023-12-31",
			"2024-01-31", "2024-02-29", "2024-03-31", "2024-04-30", "2024-05-31", "2024-06-16"},
	}
	for reason, dates := range want {
		if !slices.Equal(kinds[reason], dates) {
			t.Errorf("%s: %v, want %v", reason, kinds[reason], dates)
		}
	}
	years := kinds[yearly]
	if len(years) != 75 || years[0] != "1950-12-31" || years[73] != "2023-12-31" || years[74] != "2024-06-16" {
		t.Errorf("yearly: %d snapshots, %v ... %v", len(years), years[:min(2, len(years))], years[max(0, len(years)-2):])
	}
	// The newest is all four kinds, and December 31, 2023 both monthly and
	// yearly: 7 daily, 4 more weekly, 11 more monthly, 73 more yearly.
	if kept != 95 || len(kinds) != 4 {
		t.Errorf("kept %d snapshots for %d kinds of reason, want 95 for 4", kept, len(kinds))
	}
}

// Buckets are read in the location given: two snapshots on two UTC days
// are one day at +02:00.
func TestPolicyLocation(t *testing.T) {
	snaps := []Snapshot{
		{ID: idOf("a"), Time: time.Date(2024, 3, 1, 10, 0, 0, 0, time.UTC)},
		{ID: idOf("b"), Time: time.Date(2024, 3, 1, 23, 30, 0, 0, time.UTC)},
		{ID: idOf("c"), Time: time.Date(2024, 3, 2, 0, 30, 0, 0, time.UTC)},
	}
	for _, tc := range []struct {
		loc  *time.Location
		keep []bool
	}{
		{time.UTC, []bool{false, true, true}},
		{zone, []bool{true, false, true}},
	} {
		ds, err := Policy{Daily: 2}.Apply(snaps, nil, time.Now(), tc.loc)
		if err != nil {
			t.Fatal(err)
		}
		for i, d := range ds {
			if d.Keep() != tc.keep[i] {
				t.Errorf("in %s: snapshot %d kept %v, want %v (%q)", tc.loc, i, d.Keep(), tc.keep[i], d.Reasons)
			}
		}
	}
}

// Snapshots given out of order are decided as if sorted, oldest first.
func TestPolicyUnsortedInput(t *testing.T) {
	in := listOf(t, "2024-05-03 10:00", "2024-05-01 10:00", "2024-05-02 10:00")
	ds, err := Policy{Last: 1}.Apply(in, nil, time.Now(), zone)
	if err != nil {
		t.Fatal(err)
	}
	if ds[0].ID != in[1].ID || ds[2].ID != in[0].ID || !ds[2].Keep() || ds[0].Keep() || ds[1].Keep() {
		t.Fatalf("decisions %+v", ds)
	}
	if ds, err := (Policy{Last: 1}).Apply(nil, nil, time.Now(), zone); err != nil || len(ds) != 0 {
		t.Fatalf("no snapshots: %v, %v", ds, err)
	}
}

func TestPolicyHolds(t *testing.T) {
	snaps := []string{"2024-05-01 10:00", "2024-05-02 10:00", "2024-05-03 10:00"}
	holds := Holds{}
	holds.Add(idOf("2024-05-01 10:00"), ReasonApplied)
	holds.Add(idOf("2024-05-01 10:00"), ReasonApplied) // once only
	holds.Add(idOf("2024-05-03 10:00"), ReasonWaiting)
	holds.Add(idOf("not listed"), ReasonApplying)
	got := decide(t, Policy{Last: 1}, snaps, holds, at(t, "2024-05-04 00:00"))
	want := map[string][]string{
		"2024-05-01 10:00": r(ReasonApplied),
		"2024-05-03 10:00": r(last, ReasonWaiting),
	}
	if d := sameKept(got, want); d != "" {
		t.Error(d)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		p    Policy
		want error
	}{
		{Policy{}, ErrEmptyPolicy},
		{Policy{Within: Span{}}, ErrEmptyPolicy},
		{Policy{Last: -2}, ErrBadPolicy},
		{Policy{Daily: 1, Yearly: -5}, ErrBadPolicy},
		{Policy{Within: Span{Days: -1}}, ErrBadPolicy},
		{Policy{Last: 1}, nil},
		{Policy{Monthly: Unlimited}, nil},
		{Policy{Within: Span{Hours: 1}}, nil},
	} {
		err := tc.p.Validate()
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%+v: %v, want %v", tc.p, err, tc.want)
		}
		if _, aerr := tc.p.Apply(nil, nil, time.Now(), zone); !errors.Is(aerr, tc.want) || (tc.want == nil) != (aerr == nil) {
			t.Errorf("Apply %+v: %v, want %v", tc.p, aerr, tc.want)
		}
	}
	if s := (Policy{Last: 2, Daily: 7, Weekly: Unlimited, Within: Span{Days: 30}}).String(); s != "last 2, daily 7, weekly all, within 30d" {
		t.Errorf("String: %q", s)
	}
}

func TestParseSpan(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Span
	}{
		{"7d", Span{Days: 7}},
		{"36h", Span{Hours: 36}},
		{"1y6m", Span{Years: 1, Months: 6}},
		{"2y5m7d3h", Span{2, 5, 7, 3}},
		{"3h2y", Span{Years: 2, Hours: 3}},
		{"0d", Span{}},
	} {
		got, err := ParseSpan(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSpan(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if again, err := ParseSpan(got.String()); !got.IsZero() && (err != nil || again != got) {
			t.Errorf("%q: String %q does not read back: %+v, %v", tc.in, got.String(), again, err)
		}
	}
	for _, in := range []string{"", "d", "7", "7w", "30s", "1d2d", "7 d", "-1d", "+1d", "1.5d", "99999999999999999999d", "1000001d", "7D"} {
		if sp, err := ParseSpan(in); !errors.Is(err, ErrBadPolicy) {
			t.Errorf("ParseSpan(%q) = %+v, %v; want an error", in, sp, err)
		}
	}
}

func TestSpanBefore(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skipf("no time zone database: %v", err)
	}
	for _, tc := range []struct {
		span     Span
		from, to time.Time
	}{
		{Span{Months: 1}, time.Date(2023, 3, 31, 12, 0, 0, 0, zone), time.Date(2023, 3, 3, 12, 0, 0, 0, zone)},
		{Span{Years: 1}, time.Date(2024, 2, 29, 0, 0, 0, 0, zone), time.Date(2023, 3, 1, 0, 0, 0, 0, zone)},
		{Span{Days: 1, Hours: 2}, time.Date(2024, 5, 2, 1, 0, 0, 0, zone), time.Date(2024, 4, 30, 23, 0, 0, 0, zone)},
		// The day of the spring change is 23 hours long.
		{Span{Days: 1}, time.Date(2024, 3, 31, 12, 0, 0, 0, berlin), time.Date(2024, 3, 30, 12, 0, 0, 0, berlin)},
	} {
		if got := tc.span.Before(tc.from); !got.Equal(tc.to) {
			t.Errorf("%s before %v: %v, want %v", tc.span, tc.from, got, tc.to)
		}
	}
	d := Span{Days: 1}.Before(time.Date(2024, 3, 31, 12, 0, 0, 0, berlin))
	if h := time.Date(2024, 3, 31, 12, 0, 0, 0, berlin).Sub(d); h != 23*time.Hour {
		t.Errorf("a day back across the spring change: %v, want 23h", h)
	}
}

func TestAddStandby(t *testing.T) {
	list := listOf(t, "2024-05-01 10:00", "2024-05-02 10:00", "2024-05-03 10:00", "2024-05-03 20:00", "2024-05-03 23:00")
	id := func(i int) index.ID { return list[i].ID }
	now := at(t, "2024-05-04 00:00")
	st := index.StandbyState{
		ApplyDelay: "4h30m",
		Targets: map[string]*index.TargetState{
			"/":    {Applied: id(1), Applying: []index.ID{id(2)}},
			"/mnt": {Applied: id(0)},
			"/new": nil,
		},
	}
	holds := Holds{}
	if err := holds.AddStandby("os", st, list, now); err != nil {
		t.Fatal(err)
	}
	// 20:00 and 23:00 are younger than 4h30m and newer than either applied
	// snapshot; 10:00 on the 3rd is old enough.
	want := Holds{
		id(0): {ReasonApplied},
		id(1): {ReasonApplied},
		id(2): {ReasonApplying},
		id(3): {ReasonWaiting},
		id(4): {ReasonWaiting},
	}
	if fmt.Sprint(holds) != fmt.Sprint(want) {
		t.Errorf("holds %v, want %v", holds, want)
	}

	// No delay: only snapshots dated after now wait. A target whose
	// applied snapshot is not listed any more would take any of them.
	future := listOf(t, "2024-05-01 10:00", "2024-05-05 10:00")
	holds = Holds{}
	st = index.StandbyState{Targets: map[string]*index.TargetState{"/": {Applied: idOf("gone")}}}
	if err := holds.AddStandby("os", st, future, now); err != nil {
		t.Fatal(err)
	}
	want = Holds{idOf("gone"): {ReasonApplied}, future[1].ID: {ReasonWaiting}}
	if fmt.Sprint(holds) != fmt.Sprint(want) {
		t.Errorf("holds %v, want %v", holds, want)
	}

	// No targets: nothing is held, whatever the delay.
	holds = Holds{}
	if err := holds.AddStandby("os", index.StandbyState{ApplyDelay: "24h"}, list, now); err != nil || len(holds) != 0 {
		t.Errorf("no targets: %v, %v", holds, err)
	}
	if err := holds.AddStandby("os", index.StandbyState{ApplyDelay: "soon"}, list, now); err == nil {
		t.Error("a bad apply delay was accepted")
	}
}
