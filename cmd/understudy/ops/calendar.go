package ops

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// A cron expression is five fields, minute hour day-of-month month
// day-of-week, each a list of values, ranges a-b and steps */n or a-b/n
// (months and weekdays also by name), or one of @yearly, @monthly, @weekly,
// @daily, @midnight and @hourly; CRON_TZ=Zone in front names the time zone
// it is read in, the local one otherwise.
//
// The daemon reads it with robfig/cron. OnCalendar translates it from the
// schedule robfig/cron parses, not from the text, so that both read the
// fields alike: a systemd timer and the daemon fire at the same times.
//
// systemd's calendar events (systemd.time(7)) are
//
//	[WEEKDAYS] YEAR-MONTH-DAY HOUR:MINUTE:SECOND [ZONE]
//
// each component a list of values, ranges a..b (weekdays Mon..Fri) and
// repetitions a/n or a..b/n. A cron field becomes the component with the
// same set of values. One thing differs: when both day fields of a cron
// expression are restricted (neither starts with an unstepped *), a day
// matches if either matches, while systemd requires both. Then two events,
// one per day field, have together the cron meaning (a timer may have
// several OnCalendar= lines and elapses at each).

// starBit marks a day field that was * (or *, ? or */1) in robfig/cron's
// schedule: it makes the day fields combine by "and" instead of "or".
const starBit = 1 << 63

// ParseCron parses a cron expression as a set's every takes it, with
// robfig/cron's standard parser, except that 7 in the day-of-week field is
// Sunday too, as in Vixie cron (robfig/cron knows only 0).
func ParseCron(expr string) (*cron.SpecSchedule, error) {
	spec := strings.TrimSpace(expr)
	var zone string
	if strings.HasPrefix(spec, "TZ=") || strings.HasPrefix(spec, "CRON_TZ=") {
		i := strings.IndexAny(spec, " \t")
		if i < 0 {
			// robfig/cron slices up to the space it assumes (a panic).
			return nil, fmt.Errorf("%q names a time zone but no schedule after it", expr)
		}
		zone, spec = spec[:i]+" ", strings.TrimSpace(spec[i:])
	}
	if f := strings.Fields(spec); len(f) == 5 && !strings.HasPrefix(spec, "@") {
		f[4] = sundaySeven(f[4])
		spec = strings.Join(f, " ")
	}
	s, err := cron.ParseStandard(zone + spec)
	if err != nil {
		return nil, fmt.Errorf("%q is not a cron expression: %w", expr, err)
	}
	ss, ok := s.(*cron.SpecSchedule)
	if !ok {
		return nil, fmt.Errorf("%q is an interval, not a cron expression: write the interval itself, such as 1h", expr)
	}
	return ss, nil
}

// weekdayNumbers are the weekday names cron takes, by their numbers.
var weekdayNumbers = map[string]int{"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}

// sundaySeven rewrites the items of a day-of-week field that use 7 for
// Sunday into lists of the days 0 to 6: "5-7" becomes "5,6,0". Items it
// cannot read are left for the parser to report.
func sundaySeven(field string) string {
	items := strings.Split(field, ",")
	for i, item := range items {
		rng, stepText, stepped := strings.Cut(item, "/")
		lo, hi, ranged := strings.Cut(rng, "-")
		num := func(s string) (int, bool) {
			if n, ok := weekdayNumbers[strings.ToLower(s)]; ok {
				return n, true
			}
			n, err := strconv.Atoi(s)
			return n, err == nil
		}
		start, okLo := num(lo)
		end, okHi := start, okLo
		switch {
		case ranged:
			end, okHi = num(hi)
		case stepped:
			end = 7
		}
		step := 1
		if stepped {
			var err error
			if step, err = strconv.Atoi(stepText); err != nil {
				continue
			}
		}
		if !okLo || !okHi || start != 7 && end != 7 || start < 0 || start > end || end > 7 || step < 1 {
			continue
		}
		var days []string
		for d := start; d <= end; d += step {
			days = append(days, strconv.Itoa(d%7))
		}
		items[i] = strings.Join(days, ",")
	}
	return strings.Join(items, ",")
}

// OnCalendar returns the systemd calendar event that elapses when the cron
// expression expr fires, for a timer's OnCalendar=. When one event cannot
// say it (both day fields restricted: see OnCalendars), the error is an
// *EitherDayError holding the two events that can.
//
// One difference stays, at the change back from summer time: of the times
// in the hour it repeats, a timer elapses at the first pass only, the
// daemon at both. (Both skip the times that the change to summer time
// skips.)
func OnCalendar(expr string) (string, error) {
	events, err := OnCalendars(expr)
	if err != nil {
		return "", err
	}
	if len(events) == 2 {
		return "", &EitherDayError{Expr: expr, DayOfMonth: events[0], DayOfWeek: events[1]}
	}
	return events[0], nil
}

// EitherDayError is a cron expression that restricts both the day of the
// month and the day of the week: cron runs on the days that match either,
// one systemd calendar event matches only the days that match both.
type EitherDayError struct {
	Expr       string
	DayOfMonth string // the event of the days of the month
	DayOfWeek  string // the event of the days of the week
}

func (e *EitherDayError) Error() string {
	return fmt.Sprintf("cron expression %q runs on the days that match its day of month or its day of week, "+
		"but one systemd calendar event matches only the days that match both: "+
		"use the daemon, or a timer with two lines, OnCalendar=%s and OnCalendar=%s", e.Expr, e.DayOfMonth, e.DayOfWeek)
}

// OnCalendars returns the systemd calendar events that elapse, together,
// when the cron expression expr fires: one event, or two when both day
// fields are restricted (the days of the month, then the days of the
// week), cron's "either" that one event cannot say. A timer given each as
// an OnCalendar= line elapses when cron would fire.
func OnCalendars(expr string) ([]string, error) {
	s, err := ParseCron(expr)
	if err != nil {
		return nil, err
	}
	zone := ""
	if s.Location != nil && s.Location != time.Local {
		zone = " " + s.Location.String()
	}
	clock := fmt.Sprintf("%s:%s:%s", component(s.Hour, 0, 23), component(s.Minute, 0, 59), component(s.Second, 0, 59))
	month := component(s.Month, 1, 12)
	// event is the days in dom (1 to 31) that are also weekdays in dow
	// (cron's 0 to 6); "" when no month it runs in has such a day.
	event := func(dom, dow uint64) string {
		if dow&allWeekdays == allWeekdays && !anyDate(s.Month, dom) {
			return ""
		}
		days := ""
		if dow&allWeekdays != allWeekdays {
			days = weekdays(dow) + " "
		}
		return fmt.Sprintf("%s*-%s-%s %s%s", days, month, component(dom, 1, 31), clock, zone)
	}
	var events []string
	if s.Dom&starBit != 0 || s.Dow&starBit != 0 {
		events = []string{event(s.Dom, s.Dow)}
	} else {
		events = []string{event(s.Dom, allWeekdays), event(allDays, s.Dow)}
		switch {
		case s.Dom&allDays == allDays || s.Dow&allWeekdays == allWeekdays:
			events = []string{event(allDays, allWeekdays)} // either is every day
		case events[0] == "":
			events = events[1:] // the days of the month never come
		}
	}
	if events[0] == "" {
		return nil, fmt.Errorf("cron expression %q never runs: no month it names has the days it names", expr)
	}
	return events, nil
}

// Bits of every value of the day fields in robfig/cron's schedule.
const (
	allDays     = (1<<32 - 1) &^ 1 // 1 to 31
	allWeekdays = 1<<7 - 1         // 0 (Sunday) to 6
)

// monthDays is the most days each month has (February in a leap year).
var monthDays = [13]int{0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}

// anyDate reports whether some month in months has some day in days.
func anyDate(months, days uint64) bool {
	for m := 1; m <= 12; m++ {
		if months&(1<<m) != 0 && days&(1<<(monthDays[m]+1)-1) != 0 {
			return true
		}
	}
	return false
}

// component writes the values min to max set in b as a component of a
// calendar event: *, a repetition a/n or a..b/n, or a list of values and
// ranges a..b, each value in two digits.
func component(b uint64, min, max int) string {
	var v []int
	for i := min; i <= max; i++ {
		if b&(1<<i) != 0 {
			v = append(v, i)
		}
	}
	if len(v) == max-min+1 {
		return "*"
	}
	if n := len(v); n >= 3 && v[1]-v[0] > 1 && isProgression(v) {
		step := v[1] - v[0]
		if v[n-1]+step > max {
			return fmt.Sprintf("%02d/%d", v[0], step)
		}
		return fmt.Sprintf("%02d..%02d/%d", v[0], v[n-1], step)
	}
	return joinRuns(v, func(i int) string { return fmt.Sprintf("%02d", i) })
}

// isProgression reports whether v's values are equally spaced.
func isProgression(v []int) bool {
	for i := 2; i < len(v); i++ {
		if v[i]-v[i-1] != v[1]-v[0] {
			return false
		}
	}
	return true
}

// weekdays writes the days of the week set in cron's b (0 Sunday to 6) as
// systemd's weekday list, Monday first: 1-5 is Mon..Fri, 0,6 is Sat,Sun.
func weekdays(b uint64) string {
	names := [...]string{"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"}
	var v []int // 0 Monday to 6 Sunday
	for i := range 7 {
		if b&(1<<((i+1)%7)) != 0 {
			v = append(v, i)
		}
	}
	return joinRuns(v, func(i int) string { return names[i] })
}

// joinRuns lists the sorted values v, each run of three or more
// consecutive values as a range first..last.
func joinRuns(v []int, name func(int) string) string {
	var parts []string
	for i := 0; i < len(v); {
		j := i
		for j+1 < len(v) && v[j+1] == v[j]+1 {
			j++
		}
		switch {
		case j-i >= 2:
			parts = append(parts, name(v[i])+".."+name(v[j]))
		case j > i:
			parts = append(parts, name(v[i]), name(v[j]))
		default:
			parts = append(parts, name(v[i]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}
