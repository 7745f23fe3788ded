package ops

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/robfig/cron/v3"
)

// calendarCases are cron expressions and the systemd calendar events they
// translate to, or the error they give.
var calendarCases = []struct {
	expr   string
	events []string // nil when err
	err    string
}{
	{expr: "0 3 * * *", events: []string{"*-*-* 03:00:00"}},
	{expr: "30 2 * * *", events: []string{"*-*-* 02:30:00"}},
	{expr: "*/15 * * * *", events: []string{"*-*-* *:00/15:00"}},
	{expr: "* * * * *", events: []string{"*-*-* *:*:00"}},
	{expr: "5,35 */2 * * *", events: []string{"*-*-* 00/2:05,35:00"}},
	{expr: "10-14,40 1,2 * * *", events: []string{"*-*-* 01,02:10..14,40:00"}},
	{expr: "0 9-17 * * 1-5", events: []string{"Mon..Fri *-*-* 09..17:00:00"}},
	{expr: "0 9-17/2 * * sun,6", events: []string{"Sat,Sun *-*-* 09..17/2:00:00"}},
	{expr: "7-59/20 * * * *", events: []string{"*-*-* *:07/20:00"}},
	{expr: "0 2-20/3 * * *", events: []string{"*-*-* 02..20/3:00:00"}}, // 23 is one step on
	{expr: "30 1 1,15 * *", events: []string{"*-*-01,15 01:30:00"}},
	{expr: "0 0 */2 * *", events: []string{"*-*-01/2 00:00:00"}},
	{expr: "0 0 1 jan,JUL *", events: []string{"*-01,07-01 00:00:00"}},
	{expr: "0 0 1 */3 *", events: []string{"*-01/3-01 00:00:00"}},
	{expr: "0 0 * 2-11/3 *", events: []string{"*-02/3-* 00:00:00"}},
	{expr: "15 2 * 4-9 mon-wed,fri", events: []string{"Mon..Wed,Fri *-04..09-* 02:15:00"}},
	{expr: "0 0 * * 7", events: []string{"Sun *-*-* 00:00:00"}},
	{expr: "0 0 * * 5-7", events: []string{"Fri..Sun *-*-* 00:00:00"}},
	{expr: "0 0 * * 0,7", events: []string{"Sun *-*-* 00:00:00"}},
	{expr: "0 0 * * 1-7/3", events: []string{"Mon,Thu,Sun *-*-* 00:00:00"}},
	{expr: "0 12 * * */2", events: []string{"Tue,Thu,Sat,Sun *-*-* 12:00:00"}},
	{expr: "0 0 29 2 *", events: []string{"*-02-29 00:00:00"}},
	{expr: "0 0 31 * *", events: []string{"*-*-31 00:00:00"}},
	// Both day fields restricted: either matches.
	{expr: "0 0 1 * Mon", events: []string{"*-*-01 00:00:00", "Mon *-*-* 00:00:00"}},
	{expr: "0 4 13 * 5", events: []string{"*-*-13 04:00:00", "Fri *-*-* 04:00:00"}},
	{expr: "0 4 1-7 3 6,0", events: []string{"*-03-01..07 04:00:00", "Sat,Sun *-03-* 04:00:00"}},
	{expr: "0 0 1-31 * 1", events: []string{"*-*-* 00:00:00"}},
	{expr: "0 0 1 * 0-6", events: []string{"*-*-* 00:00:00"}},
	{expr: "0 0 31 2 Mon", events: []string{"Mon *-02-* 00:00:00"}},
	{expr: "@yearly", events: []string{"*-01-01 00:00:00"}},
	{expr: "@annually", events: []string{"*-01-01 00:00:00"}},
	{expr: "@monthly", events: []string{"*-*-01 00:00:00"}},
	{expr: "@weekly", events: []string{"Sun *-*-* 00:00:00"}},
	{expr: "@daily", events: []string{"*-*-* 00:00:00"}},
	{expr: "@midnight", events: []string{"*-*-* 00:00:00"}},
	{expr: "@hourly", events: []string{"*-*-* *:00:00"}},
	{expr: "CRON_TZ=Europe/Berlin 30 2 * * 1-5", events: []string{"Mon..Fri *-*-* 02:30:00 Europe/Berlin"}},
	{expr: "TZ=America/New_York 0 */6 * * *", events: []string{"*-*-* 00/6:00:00 America/New_York"}},
	{expr: "CRON_TZ=America/New_York 30 1,2 * * *", events: []string{"*-*-* 01,02:30:00 America/New_York"}},
	{expr: "CRON_TZ=UTC @daily", events: []string{"*-*-* 00:00:00 UTC"}},
	{expr: "CRON_TZ=Asia/Tokyo 0 0 1 * Mon", events: []string{"*-*-01 00:00:00 Asia/Tokyo", "Mon *-*-* 00:00:00 Asia/Tokyo"}},

	{expr: "0 0 30 2 *", err: "never runs"},
	{expr: "0 0 31 4,6,9,11 *", err: "never runs"},
	{expr: "@every 1h", err: "an interval, not a cron expression"},
	{expr: "61 * * * *", err: "not a cron expression"},
	{expr: "0 0 * * 8", err: "not a cron expression"},
	{expr: "0 0 * *", err: "not a cron expression"},
	{expr: "CRON_TZ=Nowhere/Land 0 0 * * *", err: "not a cron expression"},
}

func TestCalendarTranslation(t *testing.T) {
	for _, c := range calendarCases {
		events, err := OnCalendars(c.expr)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("OnCalendars(%q) = %q, %v; want an error saying %q", c.expr, events, err, c.err)
		case c.err == "" && err != nil:
			t.Errorf("OnCalendars(%q): %v", c.expr, err)
		case c.err == "" && !slices.Equal(events, c.events):
			t.Errorf("OnCalendars(%q) = %q, want %q", c.expr, events, c.events)
		}

		event, err := OnCalendar(c.expr)
		var either *EitherDayError
		switch {
		case len(c.events) == 2:
			if !errors.As(err, &either) || either.DayOfMonth != c.events[0] || either.DayOfWeek != c.events[1] {
				t.Errorf("OnCalendar(%q) = %q, %v; want an *EitherDayError with %q", c.expr, event, err, c.events)
			} else if msg := err.Error(); !strings.Contains(msg, "use the daemon") || !strings.Contains(msg, "OnCalendar="+c.events[1]) {
				t.Errorf("OnCalendar(%q): the error does not suggest the daemon or the two lines: %s", c.expr, msg)
			}
		case len(c.events) == 1 && (err != nil || event != c.events[0]):
			t.Errorf("OnCalendar(%q) = %q, %v; want %q", c.expr, event, err, c.events[0])
		case c.err != "" && err == nil:
			t.Errorf("OnCalendar(%q) = %q, want an error", c.expr, event)
		}
	}
}

// TestCalendarParseCron checks that ParseCron reads what robfig/cron's
// standard parser reads alike, and 7 as Sunday.
func TestCalendarParseCron(t *testing.T) {
	for _, c := range calendarCases {
		if c.err != "" {
			continue
		}
		want, err := cron.ParseStandard(c.expr)
		if err != nil {
			if strings.Contains(err.Error(), "above maximum (6)") {
				continue // 7 for Sunday
			}
			t.Fatalf("ParseStandard(%q): %v", c.expr, err)
		}
		got, err := ParseCron(c.expr)
		if err != nil {
			t.Fatalf("ParseCron(%q): %v", c.expr, err)
		}
		w := want.(*cron.SpecSchedule)
		if [6]uint64{got.Second, got.Minute, got.Hour, got.Dom, got.Month, got.Dow} != [6]uint64{w.Second, w.Minute, w.Hour, w.Dom, w.Month, w.Dow} ||
			got.Location.String() != w.Location.String() {
			t.Errorf("ParseCron(%q) = %+v, robfig/cron reads %+v", c.expr, got, w)
		}
	}
	// A zone without a schedule made robfig/cron slice out of range
	// (found by FuzzParseConfig).
	for _, expr := range []string{"TZ=UTC", "CRON_TZ=Europe/Berlin ", "TZ=000000000000 ", "TZ=", "TZ=UTC \t"} {
		if _, err := ParseCron(expr); err == nil {
			t.Errorf("ParseCron(%q) accepted a zone without a schedule", expr)
		}
	}
	if s, err := ParseCron("TZ=UTC\t30 4 * * *"); err != nil || s.Location.String() != "UTC" || s.Minute != 1<<30 {
		t.Errorf("ParseCron with a tab after the zone: %+v, %v", s, err)
	}
	for field, want := range map[string]string{
		"7": "0", "5-7": "5,6,0", "1-7/3": "1,4,0", "sun-7/2": "0,2,4,6", "mon,7": "mon,0",
		"fri-7,tue": "5,6,0,tue", "7/2": "0", "1-5": "1-5", "*/2": "*/2", "*": "*", "8-7": "8-7", "x-7": "x-7",
	} {
		if got := sundaySeven(field); got != want {
			t.Errorf("sundaySeven(%q) = %q, want %q", field, got, want)
		}
	}
}

// TestCalendarAgainstSystemd asks systemd-analyze when each event elapses
// and compares with when robfig/cron, the daemon's scheduler, fires, from
// the same base times: around new year, a leap day, and the daylight-saving
// changes of Europe and America. Both skip the times that a change to
// summer time skips; of the times that the change back repeats, systemd
// takes only the first, robfig/cron both, and the test leaves out the
// second.
func TestCalendarAgainstSystemd(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed: cannot compare with systemd's calendar")
	}
	if out, err := exec.Command("systemd-analyze", "calendar", "--base-time=@0", "--iterations=2", "*-*-* 00:00:00").CombinedOutput(); err != nil {
		t.Skipf("this systemd-analyze has no calendar --base-time and --iterations: %v\n%s", err, out)
	}
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skipf("no time zone data: %v", err)
	}
	const iterations = 6
	bases := []time.Time{
		time.Date(2024, 12, 31, 22, 59, 30, 0, time.UTC),
		time.Date(2024, 2, 27, 12, 34, 56, 0, time.UTC),
		time.Date(2025, 3, 30, 0, 20, 0, 0, time.UTC),  // Europe skips 02:00 to 03:00 at 01:00 UTC
		time.Date(2025, 10, 26, 0, 20, 0, 0, time.UTC), // Europe repeats 02:00 to 03:00 from 01:00 UTC
		time.Date(2025, 3, 9, 6, 20, 0, 0, time.UTC),   // America skips 02:00 to 03:00 at 07:00 UTC
		time.Date(2025, 11, 2, 5, 20, 0, 0, time.UTC),  // America repeats 01:00 to 02:00 from 06:00 UTC
	}
	// The events OnCalendars gives, not the table's: this test stands
	// on its own.
	translated := map[string][]string{}
	var events []string
	for _, c := range calendarCases {
		if c.err != "" {
			continue
		}
		evs, err := OnCalendars(c.expr)
		if err != nil {
			t.Fatalf("OnCalendars(%q): %v", c.expr, err)
		}
		translated[c.expr] = evs
		events = append(events, evs...)
	}
	slices.Sort(events)
	events = slices.Compact(events)
	// Without CRON_TZ both read an expression in the local time zone:
	// systemd's from TZ, robfig/cron's from the base time's.
	for _, loc := range []*time.Location{time.UTC, berlin} {
		for _, base := range bases {
			elapses := systemdElapses(t, events, base, iterations, loc.String())
			for _, c := range calendarCases {
				if c.err != "" || strings.Contains(c.expr, "TZ=") && loc != time.UTC {
					continue
				}
				sched, err := ParseCron(c.expr)
				if err != nil {
					t.Fatal(err)
				}
				zone := sched.Location
				if zone == time.Local {
					zone = loc
				}
				var got []time.Time
				for _, ev := range translated[c.expr] {
					got = append(got, elapses[ev]...)
				}
				slices.SortFunc(got, time.Time.Compare)
				got = slices.CompactFunc(got, time.Time.Equal)[:iterations]
				var want []time.Time
				for at := base.In(loc); len(want) < iterations; {
					if at = sched.Next(at); !repeatedClock(at.In(zone)) {
						want = append(want, at.UTC())
					}
				}
				if !slices.EqualFunc(got, want, time.Time.Equal) {
					t.Errorf("%q as %q in %s from %s:\nsystemd elapses %s\nrobfig/cron fires %s", c.expr, translated[c.expr], loc, base.Format(time.RFC3339),
						times(got), times(want))
				}
			}
		}
	}
}

// repeatedClock reports whether t is in the second pass of the hour that
// a daylight-saving change repeats: the daemon runs then, a systemd timer
// does not (OnCalendar's documentation).
func repeatedClock(t time.Time) bool {
	_, before := t.Add(-3 * time.Hour).Zone()
	_, after := t.Zone()
	if before <= after {
		return false
	}
	const clock = "2006-01-02 15:04:05"
	return t.Add(-time.Duration(before-after)*time.Second).Format(clock) == t.Format(clock)
}

// systemdElapses returns, for each calendar event, the next n times (in
// UTC) that systemd-analyze says it elapses after base, in the time zone tz.
func systemdElapses(t *testing.T, events []string, base time.Time, n int, tz string) map[string][]time.Time {
	t.Helper()
	args := append([]string{"calendar", fmt.Sprintf("--base-time=@%d", base.Unix()), fmt.Sprintf("--iterations=%d", n)}, events...)
	cmd := exec.Command("systemd-analyze", args...)
	cmd.Env = append(os.Environ(), "TZ="+tz, "LC_ALL=C", "SYSTEMD_COLORS=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("systemd-analyze %q: %v\n%s", args, err, out)
	}
	// Each event's report starts with "Normalized form: ..."; each time
	// is on a line "Next elapse: ..." or "Iter. #N: ...", followed by
	// "(in UTC): ..." when the time zone is not UTC.
	var reports [][]string
	for line := range strings.Lines(string(out)) {
		key, val, ok := strings.Cut(strings.TrimSpace(line), ": ")
		switch {
		case !ok:
		case key == "Normalized form":
			reports = append(reports, nil)
		case len(reports) == 0:
		case key == "Next elapse" || strings.HasPrefix(key, "Iter. #"):
			reports[len(reports)-1] = append(reports[len(reports)-1], val)
		case key == "(in UTC)":
			r := reports[len(reports)-1]
			r[len(r)-1] = val
		}
	}
	if len(reports) != len(events) {
		t.Fatalf("systemd-analyze %q: %d reports for %d events:\n%s", args, len(reports), len(events), out)
	}
	elapses := map[string][]time.Time{}
	for i, r := range reports {
		if len(r) != n {
			t.Fatalf("systemd-analyze calendar %q: want %d times, got %q", events[i], n, r)
		}
		for _, s := range r {
			tm, err := time.Parse("Mon 2006-01-02 15:04:05 UTC", s)
			if err != nil {
				t.Fatalf("systemd-analyze calendar %q: %q is not a time in UTC: %v", events[i], s, err)
			}
			elapses[events[i]] = append(elapses[events[i]], tm)
		}
	}
	return elapses
}

func times(ts []time.Time) string {
	var b strings.Builder
	for _, t := range ts {
		b.WriteString("\n  " + t.Format("Mon 2006-01-02 15:04:05 MST"))
	}
	return b.String()
}
