package main

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/cmd/understudy/ops"
	"github.com/understudy/understudy/snapshot"
)

// daemonLockWait is how long the daemon waits for the repository when
// another process (a manual run, a prune) holds it.
const daemonLockWait = 6 * time.Hour

func newDaemonCmd(g *globals) *cobra.Command {
	var scale float64
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the configuration's sets on their schedules until stopped",
		Long: `Run each set of the configuration file that has paths and "every" as run
does (checks, snapshot, push, retention), on its schedule: an interval
("1h": counted from the start of the last run) or a cron expression
("0 3 * * *", local time, or CRON_TZ=Zone in front).

Sets due at the same time run one after the other, never two runs of one set
at once. A set that missed its time (the daemon was down, or a run took
longer than the interval) runs once at start-up or right after, not once per
missed window; a set that never ran starts at once if it has an interval,
at its next time if it has a cron expression.

SIGHUP reloads the configuration file (a file with problems is logged and the
old configuration kept). SIGTERM or SIGINT stops the daemon after the step it
is in (a check, the snapshot, the pushes, forget); a second one cancels that
step. The log is the configuration's log_file, with failures in syslog;
systemd-units writes a unit for the daemon and, as the alternative to it, a
timer per set.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDaemon(cmd.Context(), g, scale)
		},
	}
	// For the tests: the daemon's clock runs this many times faster than
	// the wall clock, so that "1h" is a second at 3600.
	cmd.Flags().Float64Var(&scale, "time-scale", 1, "run the schedule's clock this many times faster (testing)")
	cmd.Flags().MarkHidden("time-scale")
	return cmd
}

// daemon is the state of a running daemon.
type daemon struct {
	g     *globals
	cfg   *Config
	log   *ops.Log
	plan  *ops.Plan
	clock func() time.Time
	scale float64
}

func runDaemon(ctx context.Context, g *globals, scale float64) error {
	if scale <= 0 {
		return usageErrorf("--time-scale must be above 0")
	}
	cfg, err := g.runConfig()
	if err != nil {
		return err
	}
	log, err := g.openLog(cfg)
	if err != nil {
		return err
	}
	start := time.Now()
	d := &daemon{g: g, cfg: cfg, log: log, plan: ops.NewPlan(), scale: scale,
		clock: func() time.Time { return start.Add(time.Duration(float64(time.Since(start)) * scale)) }}
	defer func() { d.log.Close() }()

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	work, release := stepwise(ctx, g)
	defer release()

	if err := d.schedule(time.Minute); err != nil && !errors.Is(err, chunkstore.ErrLocked) {
		return err // no repository: nothing would ever run
	}
	d.log.Logger().Info("daemon started", "config", cfg.File, "pid", os.Getpid(), "sets", len(d.plan.Names()))
	d.logPlan()
	for {
		if ctx.Err() != nil {
			d.log.Logger().Info("daemon stopped by a signal")
			return nil
		}
		if due := d.plan.Due(d.clock()); len(due) > 0 {
			d.runDue(ctx, work, due)
			continue
		}
		var timer <-chan time.Time
		var t *time.Timer
		if at, ok := d.plan.Wake(); ok {
			t = time.NewTimer(max(time.Duration(float64(at.Sub(d.clock()))/d.scale), 0))
			timer = t.C
		}
		select {
		case <-timer:
		case <-hup:
			d.reload()
		case <-ctx.Done():
		}
		if t != nil {
			t.Stop()
		}
	}
}

// schedule puts the configuration's scheduled sets into the plan, with
// their last runs from the repository, waiting up to wait for it; sets no
// longer scheduled leave it. A repository it cannot read leaves the plan
// to its own record of the last runs (none at start-up: sets with an
// interval then run at once). The error is the repository's, for the
// caller to judge.
func (d *daemon) schedule(wait time.Duration) error {
	last, err := d.lastRuns(wait)
	if err != nil {
		d.log.Logger().Warn("last runs not read; scheduling from what this daemon knows", "err", err)
	}
	now := d.clock()
	var keep []string
	for _, name := range sortedKeys(d.cfg.Sets) {
		s := d.cfg.Sets[name]
		if s.Every.IsZero() || len(s.Paths) == 0 {
			continue
		}
		keep = append(keep, name)
		d.plan.Set(name, s.Every, s.Every.Interval > 0, last[name], now)
	}
	for _, name := range d.plan.Names() {
		if !slices.Contains(keep, name) {
			d.plan.Remove(name)
		}
	}
	if len(keep) == 0 {
		d.log.Logger().Warn("no set has both paths and every: nothing to run until the configuration changes (SIGHUP reloads it)", "config", d.cfg.File)
	}
	return err
}

// lastRuns returns when each set last ran: its last run's start, or else
// its latest snapshot's time.
func (d *daemon) lastRuns(wait time.Duration) (map[string]time.Time, error) {
	repo, err := d.g.openRepoWith(chunkstore.OpenOptions{Mode: chunkstore.Shared, What: "daemon", Wait: wait})
	if err != nil {
		return nil, err
	}
	defer repo.Close()
	last := map[string]time.Time{}
	states, err := repo.Index().PrimaryStates()
	if err != nil {
		return nil, err
	}
	for set, st := range states {
		last[set] = st.LastRun
	}
	for name := range d.cfg.Sets {
		if !last[name].IsZero() {
			continue
		}
		if l, err := snapshot.Find(repo.Index(), "latest", name); err == nil {
			last[name] = l.Time
		}
	}
	return last, nil
}

func (d *daemon) logPlan() {
	for _, name := range d.plan.Names() {
		next, _ := d.plan.NextOf(name)
		d.log.Logger().Info("scheduled", "set", name, "every", d.cfg.Sets[name].Every.String(), "next", next.Local().Format(time.RFC3339))
	}
}

// runDue runs the due sets in one run, steps under work; ctx ending stops
// it between steps.
func (d *daemon) runDue(ctx, work context.Context, due []string) {
	var sets []Set
	for _, name := range due {
		sets = append(sets, d.cfg.Sets[name])
		d.plan.Start(name, d.clock())
	}
	r := &runner{g: d.g, cfg: d.cfg, log: d.log.Logger(), now: d.clock, stopping: func() bool { return ctx.Err() != nil }}
	if _, err := r.run(work, sets, daemonLockWait); err != nil {
		d.log.Logger().Error("run not done", "err", err)
	}
	now := d.clock()
	for _, name := range due {
		d.plan.Done(name, now)
		if next, ok := d.plan.NextOf(name); ok {
			d.log.Logger().Debug("next run", "set", name, "at", next.Local().Format(time.RFC3339))
		}
	}
}

// reload reads the configuration file again; one with problems is logged
// and the old configuration kept.
func (d *daemon) reload() {
	log := d.log.Logger()
	cfg, err := loadConfig(d.cfg.File)
	if err != nil {
		log.Error("configuration not reloaded; keeping the old one", "config", d.cfg.File, "err", err)
		return
	}
	if cfg.Repo != d.cfg.Repo && d.g.repo == d.cfg.Repo {
		log.Warn("repo changed in the configuration: restart the daemon to use it", "repo", d.cfg.Repo, "new", cfg.Repo)
		cfg.Repo = d.cfg.Repo
	}
	if cfg.LogFile != d.cfg.LogFile || cfg.LogRotate != d.cfg.LogRotate || cfg.LogKeepDays != d.cfg.LogKeepDays || cfg.Syslog != d.cfg.Syslog {
		nl, err := d.g.openLog(cfg)
		if err != nil {
			log.Error("new log settings not used", "err", err)
			cfg.LogFile, cfg.LogRotate, cfg.LogKeepDays, cfg.Syslog = d.cfg.LogFile, d.cfg.LogRotate, d.cfg.LogKeepDays, d.cfg.Syslog
		} else {
			d.log.Close()
			d.log = nl
			log = nl.Logger()
		}
	}
	d.cfg = cfg
	// What the commands' own look-ups (the status cache) see.
	d.g.conf.cfg, d.g.conf.err = cfg, nil
	// Without waiting: a run holding the repository must not keep the
	// daemon from its signals; the plan knows the runs it made.
	d.schedule(0) // an error is logged; the plan goes on
	log.Info("configuration reloaded", "config", cfg.File, "sets", len(d.plan.Names()))
	d.logPlan()
}
