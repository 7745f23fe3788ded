package main

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
	usync "github.com/understudy/understudy/sync"
)

// setStatus is one set as `status --json` reports it.
type setStatus struct {
	Set string `json:"set"`
	// AsOf is when the state shown was saved, when status showed
	// REPO/status.json because a writer held the repository; absent when
	// it was read from the index. Ages and lags count to now all the same.
	AsOf       time.Time      `json:"as_of,omitzero"`
	Latest     index.ID       `json:"latest,omitzero"`
	LatestTime time.Time      `json:"latest_time,omitzero"`
	Snapshots  int            `json:"snapshots"`
	Promoted   time.Time      `json:"promoted,omitzero"`
	Held       time.Time      `json:"held,omitzero"`
	ApplyDelay string         `json:"apply_delay,omitempty"`
	Targets    []targetStatus `json:"targets,omitempty"`
	// As the set's primary: when `run` last finished it, and why that run
	// failed (with refused: a guard refused it), absent when it succeeded.
	LastRun        time.Time `json:"last_run,omitzero"`
	LastRunError   string    `json:"last_run_error,omitempty"`
	LastRunRefused bool      `json:"last_run_refused,omitempty"`
	// Standbys are the standbys the set is pushed to: those of its "to"
	// in the configuration file, then any other it was pushed to.
	Standbys []standbyStatus `json:"standbys,omitempty"`
}

type targetStatus struct {
	Target      string     `json:"target"`
	Applied     index.ID   `json:"applied,omitzero"`
	AppliedTime time.Time  `json:"applied_snapshot_time,omitzero"`
	AppliedAt   time.Time  `json:"applied_at,omitzero"`
	LagSeconds  float64    `json:"lag_seconds"` // age of the applied snapshot: the recovery point
	MidApply    bool       `json:"mid_apply"`
	Applying    []index.ID `json:"applying,omitempty"`
	StartedAt   time.Time  `json:"started_at,omitzero"`
	LastError   string     `json:"last_error,omitempty"`
	LastErrorAt time.Time  `json:"last_error_at,omitzero"`
	// Pending counts the set's snapshots newer than the one applied, which
	// the next automatic apply would take; FirstDue is when the oldest of
	// them has waited out the set's apply delay (absent without a delay).
	Pending  int       `json:"pending"`
	FirstDue time.Time `json:"first_due,omitzero"`
}

// standbyStatus is what this host, as the set's primary, pushed to one
// standby of the set.
type standbyStatus struct {
	// Standby is the configuration's name of the standby, or the DEST of
	// pushes from the command line to a standby it does not name.
	Standby string `json:"standby"`
	Dest    string `json:"dest"`
	// Pushed is the newest snapshot of the set pushed and committed there,
	// absent when none was; PushedTime is its time, PushedAt when that
	// push finished, LagSeconds its age (the recovery point as the primary
	// knows it). Unpushed counts the set's snapshots newer than Pushed
	// (all of them when none was pushed).
	Pushed     index.ID  `json:"pushed,omitzero"`
	PushedTime time.Time `json:"pushed_snapshot_time,omitzero"`
	PushedAt   time.Time `json:"pushed_at,omitzero"`
	LagSeconds float64   `json:"lag_seconds,omitempty"`
	Unpushed   int       `json:"unpushed"`
	// LastError is why the last push failed, absent once one succeeded.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

func newStatusCmd(g *globals) *cobra.Command {
	var metrics string
	cmd := &cobra.Command{
		Use:   "status [--metrics FILE]",
		Short: "Show each set's snapshots, pushes and, on a standby, what is applied where",
		Long: `For each set: its latest snapshot and age. As the set's primary: the last
run and its error, and for each standby (named as in the configuration
file, else by DEST) the newest snapshot pushed there, its age (the recovery
point as the primary knows it), how many newer snapshots are not pushed yet,
and the last push error; "never pushed" for a standby of the set's "to"
that was not. On a standby: whether the set is promoted or held, its apply
delay, and for each target the snapshot applied, its lag (the age of that
snapshot: the recovery point), how many newer snapshots wait and when the
first of them has waited out the apply delay (DELAYED), whether an apply was
interrupted (mid-apply: the next apply or rollback finishes it) and the last
error or refusal.
--metrics FILE also writes them in Prometheus text format for
node_exporter's textfile collector, atomically (a temporary file renamed
over FILE).

While a writer holds the repository (run, the daemon's runs, serve, apply,
prune...), status shows the state it saved in REPO/status.json when the
last writer finished, as of that time (said on stderr; "as_of" in --json,
understudy_repository_busy and understudy_status_age_seconds in
--metrics), with ages and lags counted to now.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runStatus(g, metrics, time.Now())
		},
	}
	cmd.Flags().StringVar(&metrics, "metrics", "", "also write the status to `FILE` in Prometheus text format")
	return cmd
}

func runStatus(g *globals, metrics string, now time.Time) error {
	// The configuration's standby settings are what the state says.
	g.configStandbyReading("status")
	repo, err := g.openRepo(chunkstore.Shared, "status")
	var locked *chunkstore.LockedError
	if errors.As(err, &locked) {
		return g.savedStatus(locked, metrics, now)
	}
	if err != nil {
		return err
	}
	defer repo.Close()
	// The configuration only names standbys: status works without it.
	cfg, err := g.config()
	if err != nil {
		fmt.Fprintf(g.stderr, "understudy: warning: %v; standbys are shown by DEST\n", err)
		cfg = nil
	}
	out, err := collectStatus(repo.Index(), cfg, now)
	if err != nil {
		return err
	}
	return g.showStatus(out, metrics, now, time.Time{})
}

// showStatus prints sets and writes them to the metrics file if one is
// given; asOf is when they were saved, zero when they are live.
func (g *globals) showStatus(sets []*setStatus, metrics string, now, asOf time.Time) error {
	if metrics != "" {
		if err := writeMetrics(metrics, sets, now, asOf); err != nil {
			return err
		}
	}
	if g.json {
		return printJSON(g.stdout, sets)
	}
	for _, ss := range sets {
		g.printStatus(ss, now)
	}
	return nil
}

// collectStatus gathers the status of every set: those with snapshots,
// with a standby or primary state, and the configuration's sets with
// paths or standbys (cfg may be nil).
func collectStatus(idx *index.DB, cfg *Config, now time.Time) ([]*setStatus, error) {
	snaps, _, err := snapshot.List(idx, "")
	if err != nil {
		return nil, err
	}
	states, err := idx.StandbyStates()
	if err != nil {
		return nil, err
	}
	primaries, err := idx.PrimaryStates()
	if err != nil {
		return nil, err
	}
	times := map[index.ID]time.Time{}
	setTimes := map[string][]time.Time{} // oldest first, as List sorts
	sets := map[string]*setStatus{}
	get := func(name string) *setStatus {
		if sets[name] == nil {
			sets[name] = &setStatus{Set: name}
		}
		return sets[name]
	}
	for _, s := range snaps {
		times[s.ID] = s.Time
		setTimes[s.Set] = append(setTimes[s.Set], s.Time)
		ss := get(s.Set)
		ss.Snapshots++
		ss.Latest, ss.LatestTime = s.ID, s.Time
	}
	for name, st := range states {
		ss := get(name)
		ss.Promoted, ss.Held, ss.ApplyDelay = st.Promoted, st.Held, st.ApplyDelay
		for _, key := range slices.Sorted(maps.Keys(st.Targets)) {
			t := st.Targets[key]
			ts := targetStatus{
				Target: key, Applied: t.Applied, AppliedAt: t.AppliedAt, MidApply: t.MidApply(),
				Applying: t.Applying, StartedAt: t.StartedAt, LastError: t.LastError, LastErrorAt: t.LastErrorAt,
			}
			if at, ok := times[t.Applied]; ok {
				ts.AppliedTime = at
			}
			ts.Pending, ts.FirstDue = pending(setTimes[name], ts.AppliedTime, t.Applied.IsZero(), st.ApplyDelay)
			ss.Targets = append(ss.Targets, ts)
		}
	}
	if cfg != nil {
		for name, set := range cfg.Sets {
			if len(set.Paths) > 0 || len(set.To) > 0 {
				get(name)
			}
		}
	}
	for name, ss := range sets {
		st := primaries[name]
		ss.LastRun, ss.LastRunError, ss.LastRunRefused = st.LastRun, st.LastRunError, st.LastRunRefused
		for _, sb := range standbysOf(cfg, name, st.Pushes) {
			// Snapshots newer than the pushed one: after it in time order.
			t := setTimes[name]
			sb.Unpushed = len(t) - sort.Search(len(t), func(i int) bool { return t[i].After(sb.PushedTime) })
			ss.Standbys = append(ss.Standbys, sb)
		}
	}
	out := make([]*setStatus, 0, len(sets))
	for _, name := range slices.Sorted(maps.Keys(sets)) {
		sets[name].countLags(now)
		out = append(out, sets[name])
	}
	return out, nil
}

// pending counts the times (oldest first) after applied, all of them when
// nothing is applied, and returns when the first of them is due under the
// apply delay delay (zero without one).
func pending(times []time.Time, applied time.Time, none bool, delay string) (int, time.Time) {
	i := 0
	if !none {
		i = sort.Search(len(times), func(i int) bool { return times[i].After(applied) })
	}
	d, err := time.ParseDuration(delay)
	if i == len(times) || delay == "" || err != nil || d <= 0 {
		return len(times) - i, time.Time{}
	}
	return len(times) - i, times[i].Add(d)
}

// countLags sets the lags of the set's targets and standbys: the age at now
// of the snapshot applied or pushed. They are the only fields that depend on
// now; status counts them again when it shows a saved state.
func (ss *setStatus) countLags(now time.Time) {
	for i := range ss.Targets {
		t := &ss.Targets[i]
		t.LagSeconds = 0
		if !t.AppliedTime.IsZero() {
			t.LagSeconds = now.Sub(t.AppliedTime).Seconds()
		}
	}
	for i := range ss.Standbys {
		sb := &ss.Standbys[i]
		sb.LagSeconds = 0
		if !sb.Pushed.IsZero() {
			sb.LagSeconds = now.Sub(sb.PushedTime).Seconds()
		}
	}
}

// standbysOf returns the standbys of set: first those of its "to" in cfg
// (nil for none), by name, each with what was recorded under its name or
// under its URL as DEST; then any other recorded one, by its key.
func standbysOf(cfg *Config, set string, pushes map[string]*index.PushState) []standbyStatus {
	var out []standbyStatus
	used := map[string]bool{}
	if cfg != nil {
		for _, name := range cfg.Sets[set].To {
			dest := cfg.Standbys[name].URL
			if d, err := usync.ParseDest(dest); err == nil {
				dest = d.String()
			}
			var mine []index.PushState
			for key, p := range pushes {
				if !used[key] && (key == name || key == p.Dest && p.Dest == dest) {
					mine = append(mine, *p)
					used[key] = true
				}
			}
			out = append(out, standbyStatusOf(name, dest, mergePushes(mine)))
		}
	}
	for _, key := range slices.Sorted(maps.Keys(pushes)) {
		if !used[key] {
			out = append(out, standbyStatusOf(key, pushes[key].Dest, *pushes[key]))
		}
	}
	return out
}

func standbyStatusOf(name, dest string, p index.PushState) standbyStatus {
	return standbyStatus{
		Standby: name, Dest: dest,
		Pushed: p.Snapshot, PushedTime: p.SnapshotTime, PushedAt: p.At,
		LastError: p.LastError, LastErrorAt: p.LastErrorAt,
	}
}

// mergePushes combines what was recorded of one standby under several keys
// (its name by run, its URL by push): the outcomes are replayed in the
// order they happened, so the newest snapshot pushed is kept and the error
// shows if the last push failed.
func mergePushes(states []index.PushState) index.PushState {
	if len(states) == 1 {
		return states[0]
	}
	type event struct {
		at     time.Time
		pushed *index.PushState // else failed
		failed string
	}
	var events []event
	for i := range states {
		p := &states[i]
		if !p.Snapshot.IsZero() {
			events = append(events, event{at: p.At, pushed: p})
		}
		if p.LastError != "" {
			events = append(events, event{at: p.LastErrorAt, failed: p.LastError})
		}
	}
	slices.SortStableFunc(events, func(a, b event) int { return a.at.Compare(b.at) })
	var m index.PushState
	for _, e := range events {
		if e.pushed != nil {
			m.Pushed(e.pushed.Snapshot, e.pushed.SnapshotTime, e.at)
		} else {
			m.Failed(e.failed, e.at)
		}
	}
	return m
}

func (g *globals) printStatus(ss *setStatus, now time.Time) {
	age := func(t time.Time) string { return now.Sub(t).Truncate(time.Second).String() }
	fmt.Fprintf(g.stdout, "set %s: %d snapshots", ss.Set, ss.Snapshots)
	if !ss.Latest.IsZero() {
		fmt.Fprintf(g.stdout, ", latest %s (%s ago)", ss.Latest.Short(), age(ss.LatestTime))
	}
	fmt.Fprintln(g.stdout)
	var flags []string
	if !ss.Promoted.IsZero() {
		flags = append(flags, "PROMOTED at "+ss.Promoted.Local().Format(time.RFC3339)+": this host is its primary")
	}
	if !ss.Held.IsZero() {
		flags = append(flags, "HELD since "+ss.Held.Local().Format(time.RFC3339))
	}
	if ss.ApplyDelay != "" {
		flags = append(flags, "apply delay "+ss.ApplyDelay)
	}
	if len(flags) > 0 {
		fmt.Fprintf(g.stdout, "  %s\n", strings.Join(flags, "; "))
	}
	if !ss.LastRun.IsZero() {
		outcome := "ok"
		switch {
		case ss.LastRunRefused:
			outcome = "REFUSED"
		case ss.LastRunError != "":
			outcome = "FAILED"
		}
		fmt.Fprintf(g.stdout, "  last run at %s (%s ago): %s\n", ss.LastRun.Local().Format(time.RFC3339), age(ss.LastRun), outcome)
		if ss.LastRunError != "" {
			for _, l := range strings.Split(ss.LastRunError, "\n") {
				fmt.Fprintf(g.stdout, "    %s\n", l)
			}
		}
	}
	for _, sb := range ss.Standbys {
		line := "  standby " + sb.Standby
		if sb.Dest != sb.Standby {
			line += " (" + sb.Dest + ")"
		}
		if sb.Pushed.IsZero() {
			line += ": never pushed"
		} else {
			line += fmt.Sprintf(": pushed %s at %s, lag %s", sb.Pushed.Short(), sb.PushedAt.Local().Format(time.RFC3339), age(sb.PushedTime))
			if sb.Unpushed > 0 {
				line += fmt.Sprintf("; %d newer snapshots not pushed", sb.Unpushed)
			}
		}
		fmt.Fprintln(g.stdout, line)
		if sb.LastError != "" {
			fmt.Fprintf(g.stdout, "    last push FAILED at %s: %s\n", sb.LastErrorAt.Local().Format(time.RFC3339), strings.ReplaceAll(sb.LastError, "\n", "\n      "))
		}
	}
	for _, t := range ss.Targets {
		line := fmt.Sprintf("  target %s: ", t.Target)
		if t.Applied.IsZero() {
			line += "nothing applied yet"
		} else {
			line += fmt.Sprintf("applied %s at %s, lag %s", t.Applied.Short(), t.AppliedAt.Local().Format(time.RFC3339), age(t.AppliedTime))
		}
		if t.Pending > 0 {
			line += fmt.Sprintf("; %d newer snapshots", t.Pending)
			if !t.FirstDue.IsZero() && t.FirstDue.After(now) {
				line += fmt.Sprintf(", DELAYED: the first is due at %s", t.FirstDue.Local().Format(time.RFC3339))
			}
		}
		if t.MidApply {
			ids := make([]string, len(t.Applying))
			for i, id := range t.Applying {
				ids[i] = id.Short()
			}
			line += fmt.Sprintf("; MID-APPLY towards %s since %s (apply or rollback finishes it)", strings.Join(ids, ", "), t.StartedAt.Local().Format(time.RFC3339))
		}
		fmt.Fprintln(g.stdout, line)
		if t.LastError != "" {
			fmt.Fprintf(g.stdout, "    last error at %s: %s\n", t.LastErrorAt.Local().Format(time.RFC3339), t.LastError)
		}
	}
}
