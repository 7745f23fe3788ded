package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/retention"
)

type forgetOptions struct {
	set    string
	policy retention.Policy
	dryRun bool
	prune  bool
}

func newForgetCmd(g *globals) *cobra.Command {
	var o forgetOptions
	cmd := &cobra.Command{
		Use:   "forget [--set S] --keep-last N | --keep-hourly N | ... [--dry-run | --prune]",
		Short: "Remove snapshots a retention policy does not keep (prune then frees their data)",
		Long: `Apply a retention policy to the snapshots of each set separately (with --set,
of that set only) and remove the snapshots it does not keep, as restic forget
does:

  --keep-last N        the N newest snapshots
  --keep-hourly N      the newest snapshot of each of the N newest hours,
  --keep-daily N       days, ISO weeks (Monday to Sunday), months or years
  --keep-weekly N      that have a snapshot; a period without one is not
  --keep-monthly N     counted. When N is more than the periods there are,
  --keep-yearly N      the oldest snapshot is kept as well
  --keep-within SPAN   every snapshot newer than the latest snapshot's time
                       minus SPAN (not minus now): 7d, 36h, 1y6m; units y
                       (years), m (months, as in restic), d (days), h (hours)

A snapshot is kept when any option keeps it, and the output lists every
reason. N may be "unlimited" (or -1): one snapshot in every period, or with
--keep-last every snapshot. Periods are in local time (TZ). Without any
option forget refuses (exit 2): it would remove every snapshot.

On a standby, a snapshot applied to a target, one being applied, and one
newer than a target's applied snapshot that still waits for the set's apply
delay are always kept.

forget removes the snapshots from the index only; their data stays in the
packs until prune (--prune runs it next, under the same lock, with its
default --max-unused). Until then, repair index finds them in the packs and
brings them back.

--json prints one object per set, snapshots oldest first (the same with
--dry-run, which changes nothing):
  [{"set": "os",
    "keep":   [{"id": "<64 hex digits>", "time": "<RFC 3339>", "reasons": ["last snapshot", "daily snapshot"]}],
    "remove": [{"id": "<64 hex digits>", "time": "<RFC 3339>"}]}]
With --prune: {"forget": <that list>, "prune": <prune --json's object>}.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runForget(cmd.Context(), g, o, time.Now(), time.Local)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.set, "set", "", "only the snapshots of this set (default: every set, each on its own)")
	p := &o.policy
	f.Var(keepCount{&p.Last}, "keep-last", "keep the `N` newest snapshots")
	f.Var(keepCount{&p.Hourly}, "keep-hourly", "keep the newest snapshot of each of the `N` newest hours that have one")
	f.Var(keepCount{&p.Daily}, "keep-daily", "keep the newest snapshot of each of the `N` newest days that have one")
	f.Var(keepCount{&p.Weekly}, "keep-weekly", "keep the newest snapshot of each of the `N` newest weeks that have one")
	f.Var(keepCount{&p.Monthly}, "keep-monthly", "keep the newest snapshot of each of the `N` newest months that have one")
	f.Var(keepCount{&p.Yearly}, "keep-yearly", "keep the newest snapshot of each of the `N` newest years that have one")
	f.Var(keepSpan{&p.Within}, "keep-within", "keep the snapshots newer than the latest one minus `SPAN` (7d, 36h, 1y6m)")
	f.BoolVarP(&o.dryRun, "dry-run", "n", false, "print what would be removed, remove nothing")
	f.BoolVar(&o.prune, "prune", false, "then prune: free the data of the snapshots removed")
	return cmd
}

// keepCount is the value of a --keep-N flag: a count, or "unlimited" (-1).
type keepCount struct{ n *int }

func (k keepCount) String() string {
	if k.n == nil {
		return "0"
	}
	if *k.n == retention.Unlimited {
		return "unlimited"
	}
	return strconv.Itoa(*k.n)
}

func (k keepCount) Set(s string) error {
	if s == "unlimited" {
		*k.n = retention.Unlimited
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < retention.Unlimited {
		return errors.New("want a count, 0 for none, or unlimited (-1)")
	}
	*k.n = n
	return nil
}

func (keepCount) Type() string { return "N" }

// keepSpan is the value of --keep-within.
type keepSpan struct{ s *retention.Span }

func (k keepSpan) String() string {
	if k.s == nil {
		return ""
	}
	return k.s.String()
}

func (k keepSpan) Set(v string) error {
	sp, err := retention.ParseSpan(v)
	if err != nil {
		// pflag's error names the flag and the value already.
		return errors.New(strings.TrimPrefix(err.Error(), retention.ErrBadPolicy.Error()+": "))
	}
	*k.s = sp
	return nil
}

func (keepSpan) Type() string { return "SPAN" }

// forgetSetJSON is the stable --json form of forget's decisions for a set.
type forgetSetJSON struct {
	Set    string       `json:"set"`
	Keep   []keptJSON   `json:"keep"`
	Remove []forgotJSON `json:"remove"`
}

type keptJSON struct {
	ID      index.ID  `json:"id"`
	Time    time.Time `json:"time"`
	Reasons []string  `json:"reasons"`
}

type forgotJSON struct {
	ID   index.ID  `json:"id"`
	Time time.Time `json:"time"`
}

// runForget applies o.policy to every set's snapshots (o.set's only, when
// given), holding what the standby state needs, and removes the rest from
// the index unless o.dryRun. now is the clock of the apply delay and of
// snapshots dated in the future; loc the zone of the policy's periods.
func runForget(ctx context.Context, g *globals, o forgetOptions, now time.Time, loc *time.Location) error {
	start := time.Now()
	if o.dryRun && o.prune {
		return usageErrorf("--prune with --dry-run: a dry run removes nothing for prune to free; run forget --dry-run alone")
	}
	if err := o.policy.Validate(); err != nil {
		if errors.Is(err, retention.ErrEmptyPolicy) {
			return usageErrorf("no retention policy: give at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within (forget will not remove every snapshot)")
		}
		return usageErrorf("%v", err)
	}
	// A dry run changes nothing and shares the repository with readers.
	// The apply delay that holds snapshots is the configuration's, for a
	// set it names: record it first.
	mode := chunkstore.Exclusive
	if o.dryRun {
		mode = chunkstore.Shared
		g.configStandbyReading("forget")
	}
	repo, err := g.openRepoWith(chunkstore.OpenOptions{Mode: mode, What: "forget", Wait: time.Minute})
	if err != nil {
		return err
	}
	defer repo.Close()
	if !o.dryRun {
		if err := g.configStandby(repo.Index()); err != nil {
			return err
		}
	}
	decided, removed, err := forget(g, repo.Index(), o, now, loc)
	if err != nil {
		return err
	}
	if !o.prune {
		if g.json {
			return printJSON(g.stdout, forgetJSON(decided))
		}
		return g.printForget(o, decided, removed, loc)
	}
	if !g.json {
		if err := g.printForget(o, decided, removed, loc); err != nil {
			return err
		}
	}
	rep, err := prune(ctx, g, repo, defaultMaxUnused, false, start)
	if err != nil {
		return err
	}
	if g.json {
		return printJSON(g.stdout, struct {
			Forget []forgetSetJSON `json:"forget"`
			Prune  pruneReport     `json:"prune"`
		}{forgetJSON(decided), rep})
	}
	g.printPrune(repo, rep, defaultMaxUnusedText)
	return nil
}

// forget decides o.policy for every set's snapshots (o.set's only, when
// given) in idx, holding what the standby state needs, and removes the
// snapshots not kept unless o.dryRun. It returns the decisions and how
// many snapshots were (or would be) removed.
func forget(g *globals, idx *index.DB, o forgetOptions, now time.Time, loc *time.Location) ([]setDecisions, int, error) {
	snaps, bad, err := snapshot.List(idx, o.set)
	if err != nil {
		return nil, 0, err
	}
	for _, e := range bad {
		fmt.Fprintf(g.stderr, "warning: %v (left alone)\n", e)
	}
	bySet := map[string][]retention.Snapshot{}
	for _, s := range snaps {
		bySet[s.Set] = append(bySet[s.Set], retention.Snapshot{ID: s.ID, Time: s.Time})
	}

	states, err := idx.StandbyStates()
	if err != nil {
		return nil, 0, err
	}
	holds := retention.Holds{}
	for set, st := range states {
		if _, decided := bySet[set]; !decided {
			continue
		}
		if err := holds.AddStandby(set, st, bySet[set], now); err != nil {
			return nil, 0, fmt.Errorf("%w; set a valid one with `understudy standby --set %s --apply-delay D`", err, set)
		}
	}

	var decided []setDecisions
	var remove []index.ID
	for _, set := range slices.Sorted(maps.Keys(bySet)) {
		ds, err := o.policy.Apply(bySet[set], holds, now, loc)
		if err != nil {
			return nil, 0, err
		}
		for _, d := range ds {
			if !d.Keep() {
				remove = append(remove, d.ID)
			}
		}
		decided = append(decided, setDecisions{set, ds})
	}
	if !o.dryRun && len(remove) > 0 {
		if err := idx.ForgetSnapshots(remove); err != nil {
			return nil, 0, fmt.Errorf("nothing was forgotten: %w", err)
		}
	}
	return decided, len(remove), nil
}

// setDecisions are the decisions about one set's snapshots, oldest first.
type setDecisions struct {
	set string
	ds  []retention.Decision
}

func forgetJSON(decided []setDecisions) []forgetSetJSON {
	out := make([]forgetSetJSON, 0, len(decided))
	for _, sd := range decided {
		fs := forgetSetJSON{Set: sd.set, Keep: []keptJSON{}, Remove: []forgotJSON{}}
		for _, d := range sd.ds {
			if d.Keep() {
				fs.Keep = append(fs.Keep, keptJSON{ID: d.ID, Time: d.Time, Reasons: d.Reasons})
			} else {
				fs.Remove = append(fs.Remove, forgotJSON{ID: d.ID, Time: d.Time})
			}
		}
		out = append(out, fs)
	}
	return out
}

func (g *globals) printForget(o forgetOptions, decided []setDecisions, removed int, loc *time.Location) error {
	if g.quiet {
		return nil
	}
	if len(decided) == 0 {
		if o.set != "" {
			g.printf("set %s has no snapshots\n", o.set)
		} else {
			g.printf("no snapshots\n")
		}
		return nil
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	for i, sd := range decided {
		if i > 0 {
			fmt.Fprintln(tw)
		}
		kept := 0
		for _, d := range sd.ds {
			if d.Keep() {
				kept++
			}
		}
		fmt.Fprintf(tw, "set %s (keep %s): %d kept, %d to remove\n", sd.set, o.policy, kept, len(sd.ds)-kept)
		for _, d := range sd.ds {
			fate := "remove"
			if d.Keep() {
				fate = "keep"
			}
			line := fmt.Sprintf("  %s\t%s\t%s", fate, d.ID.Short(), d.Time.In(loc).Format("2006-01-02 15:04:05"))
			if d.Keep() {
				line += "\t" + strings.Join(d.Reasons, ", ")
			}
			fmt.Fprintln(tw, line)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	switch {
	case removed == 0:
		g.printf("nothing to remove\n")
	case o.dryRun:
		g.printf("would remove %d snapshots (dry run: nothing changed)\n", removed)
	case o.prune:
		g.printf("removed %d snapshots; pruning\n", removed)
	default:
		g.printf("removed %d snapshots; their data stays in the repository until prune\n", removed)
	}
	return nil
}
