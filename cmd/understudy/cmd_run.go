package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/cmd/understudy/ops"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/restore"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/retention"
	usync "github.com/understudy/understudy/sync"
)

type runOptions struct {
	sets []string
	wait time.Duration
}

func newRunCmd(g *globals) *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run [SET]... [--wait D]",
		Short: "Run sets from the configuration: checks, snapshot, push, retention",
		Long: `For each SET of the configuration file (default: every set with paths), in
order:

  1. pre-flight checks: role-primary (this host is not a standby of the set,
     and no standby of the set has been promoted for it), ssh-reachable (each
     standby in the set's "to" answers the replication handshake), then each
     [[check]] command, with its timeout. The first failure ends the set's
     run: exit 4, the check's name and output in the log and in syslog.
  2. a snapshot of the set's paths, excludes, one_file_system, trust_mtime;
  3. a push to each standby in "to", at the same time, with its automatic
     apply when the standby has apply = true;
  4. forget with the set's keep policy, when it has one (prune is separate).

One report at the end lists every set. Each step is logged, timestamped, to
log_file and, when stderr is a terminal, to stderr; every failure also goes
to syslog (user.err, tag understudy) when syslog = true. --json prints the
report as JSON and writes the log as JSON lines.

SIGTERM or SIGINT stops the run after the step it is in (the sets not
started are not run); a second one cancels that step.

The repository is held for the whole run, so runs never overlap: a second
run exits at once naming the first (pid and start) unless --wait gives it
time to wait for it.

Exit status: 0 every set done; 1 a set failed; 4 a check, a promotion or an
apply guard refused a set (and none failed); 3 a snapshot is missing paths
that could not be read or changed while being read (and nothing worse).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.sets = args
			return runRun(cmd.Context(), g, o)
		},
	}
	cmd.Flags().DurationVar(&o.wait, "wait", 0, "wait up to `D` for a run (or another writer) holding the repository, instead of exiting")
	return cmd
}

func runRun(ctx context.Context, g *globals, o runOptions) error {
	cfg, err := g.runConfig()
	if err != nil {
		return err
	}
	sets, err := cfg.runnableSets(o.sets)
	if err != nil {
		return err
	}
	log, err := g.openLog(cfg)
	if err != nil {
		return err
	}
	defer log.Close()
	work, release := stepwise(ctx, g)
	defer release()
	r := &runner{g: g, cfg: cfg, log: log.Logger(), now: time.Now, stopping: func() bool { return ctx.Err() != nil }}
	reports, err := r.run(work, sets, o.wait)
	if err != nil {
		return err
	}
	if err := g.printRunReport(reports); err != nil {
		return err
	}
	return runOutcome(reports)
}

// stepwise makes the first SIGTERM or SIGINT, which cancels ctx (main's),
// a request to stop after the current step, and the second a cancellation
// of that step: steps run under work. release undoes it.
func stepwise(ctx context.Context, g *globals) (work context.Context, release func()) {
	work, cancel := context.WithCancel(context.WithoutCancel(ctx))
	term := make(chan os.Signal, 2)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan struct{})
	go func() {
		for n := 0; ; {
			select {
			case <-term:
				if n++; n == 2 {
					fmt.Fprintln(g.stderr, "understudy: a second signal: cancelling the current step")
					cancel()
					return
				}
			case <-done:
				return
			}
		}
	}()
	return work, func() {
		signal.Stop(term)
		close(done)
		cancel()
	}
}

// runConfig returns the configuration file, which run and daemon need.
func (g *globals) runConfig() (*Config, error) {
	cfg, err := g.config()
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return nil, usageErrorf("no configuration file: give -c FILE, or write %s", defaultConfigPath)
	}
	if g.repo == "" {
		g.repo = cfg.Repo
	}
	return cfg, nil
}

// runnableSets returns the named sets (all sets with paths when names is
// empty), in the order given or sorted.
func (c *Config) runnableSets(names []string) ([]Set, error) {
	if len(names) == 0 {
		for _, n := range sortedKeys(c.Sets) {
			if len(c.Sets[n].Paths) > 0 {
				names = append(names, n)
			}
		}
		if len(names) == 0 {
			return nil, usageErrorf("%s has no set with paths to run", c.File)
		}
	}
	var sets []Set
	for _, n := range names {
		s, ok := c.Sets[n]
		switch {
		case !ok:
			msg := fmt.Sprintf("no set %q in %s", n, c.File)
			if sug := suggest(n, sortedKeys(c.Sets)); sug != "" {
				msg += fmt.Sprintf(" (did you mean %s?)", sug)
			}
			return nil, usageErrorf("%s", msg)
		case len(s.Paths) == 0:
			return nil, usageErrorf("set %s in %s has no paths: it only holds standby settings", n, c.File)
		case slices.ContainsFunc(sets, func(o Set) bool { return o.Name == n }):
			continue
		}
		sets = append(sets, s)
	}
	return sets, nil
}

// openLog opens the run log the configuration describes. Lines go to
// stderr as well when it is a terminal; --json makes them JSON; -v adds
// debug lines. UNDERSTUDY_SYSLOG names another syslog socket than the
// system's ("unixgram:/path", for containers and tests).
func (g *globals) openLog(cfg *Config) (*ops.Log, error) {
	opts := ops.LogOptions{
		File: cfg.LogFile, MaxSize: cfg.LogRotate.MaxSize, KeepDays: cfg.LogKeepDays,
		JSON: g.json, Level: slog.LevelInfo,
		Syslog: cfg.Syslog, SyslogAddr: os.Getenv("UNDERSTUDY_SYSLOG"),
	}
	if g.verbose {
		opts.Level = slog.LevelDebug
	}
	if f, ok := g.stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) && !g.quiet {
		opts.Stderr = f
	}
	l, err := ops.OpenLog(opts)
	if err != nil {
		return nil, fmt.Errorf("log: %w", err)
	}
	return l, nil
}

// runner runs sets: the work of run and daemon.
type runner struct {
	g   *globals
	cfg *Config
	log *slog.Logger
	now func() time.Time
	// stopping reports whether the daemon was asked to stop: no further
	// step starts. nil for run.
	stopping func() bool
}

// Set outcomes, in rising severity.
const (
	setOK      = "ok"
	setPartial = "partial" // the snapshot misses paths that could not be read or changed while being read
	setStopped = "stopped" // the daemon stopped before the set's next step
	setRefused = "refused" // a check, a promotion or an apply guard
	setFailed  = "failed"
)

// setReport is what a run did with one set; the --json report is a list
// of them.
type setReport struct {
	Set         string           `json:"set"`
	Status      string           `json:"status"`
	Error       string           `json:"error,omitempty"`
	Started     time.Time        `json:"started"`
	DurationSec float64          `json:"duration_seconds"`
	Checks      []preflightCheck `json:"checks"`
	Snapshot    *index.ID        `json:"snapshot,omitempty"`
	Stats       snapshot.Stats   `json:"stats,omitzero"`
	Missing     int              `json:"missing_paths,omitempty"`
	Push        []standbyPush    `json:"push,omitempty"`
	Forgot      int              `json:"forgot"`
}

// preflightCheck is one pre-flight check.
type preflightCheck struct {
	Name        string  `json:"name"`
	OK          bool    `json:"ok"`
	Error       string  `json:"error,omitempty"`
	Output      string  `json:"output,omitempty"`
	DurationSec float64 `json:"duration_seconds"`
}

// standbyPush is the push to one standby of the set.
type standbyPush struct {
	Standby string `json:"standby"`
	destResult
}

// worse raises the report's status to s if s is more severe.
func (rep *setReport) worse(s, msg string) {
	order := []string{setOK, setPartial, setStopped, setRefused, setFailed}
	if slices.Index(order, s) > slices.Index(order, rep.Status) {
		rep.Status = s
	}
	if msg != "" {
		rep.Error = strings.TrimPrefix(rep.Error+"\n"+msg, "\n")
	}
}

// run opens the repository (waiting up to wait for another holder) and
// runs sets one after the other.
func (r *runner) run(ctx context.Context, sets []Set, wait time.Duration) ([]setReport, error) {
	names := make([]string, len(sets))
	for i, s := range sets {
		names[i] = s.Name
	}
	repo, err := r.g.openRepoWith(chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: "run " + strings.Join(names, " "), Wait: wait})
	if err != nil {
		if errors.Is(err, chunkstore.ErrLocked) {
			err = fmt.Errorf("%w; give --wait DURATION to wait for it", err)
		}
		r.log.Error("run not started", "sets", strings.Join(names, ","), "err", err)
		return nil, err
	}
	defer repo.Close()
	var reports []setReport
	for _, s := range sets {
		if r.stopping != nil && r.stopping() {
			break
		}
		reports = append(reports, r.runSet(ctx, repo, s))
	}
	return reports, nil
}

// runSet runs one set's steps, each only if the ones before allow it and
// the daemon is not stopping.
func (r *runner) runSet(ctx context.Context, repo *chunkstore.Repo, set Set) (rep setReport) {
	rep = setReport{Set: set.Name, Status: setOK, Started: r.now(), Checks: []preflightCheck{}}
	log := r.log.With("set", set.Name)
	log.Info("run started")
	defer func() {
		rep.DurationSec = time.Since(rep.Started).Seconds()
		r.record(repo, set.Name, &rep, log)
		r.g.writeStatusCache(repo, r.cfg)
		attrs := []any{"status", rep.Status, "duration", fmtDuration(rep.DurationSec)}
		if rep.Snapshot != nil {
			attrs = append(attrs, "snapshot", rep.Snapshot.Short())
		}
		switch rep.Status {
		case setOK, setPartial, setStopped:
			log.Info("run finished", attrs...)
		default:
			log.Error("run finished", append(attrs, "err", rep.Error)...)
		}
	}()
	stop := func() bool {
		if r.stopping != nil && r.stopping() {
			rep.worse(setStopped, "stopped by a signal before the next step")
			return true
		}
		return false
	}

	if !r.preflight(ctx, repo, set, &rep, log) || stop() {
		return rep
	}
	listed, ok := r.snapshot(ctx, repo, set, &rep, log)
	if !ok || stop() {
		return rep
	}
	r.push(ctx, repo, set, listed, &rep, log)
	if stop() {
		return rep
	}
	r.retain(repo, set, &rep, log)
	return rep
}

// preflight runs the built-in checks, then the configuration's; false
// when one failed (the report says which, as refused).
func (r *runner) preflight(ctx context.Context, repo *chunkstore.Repo, set Set, rep *setReport, log *slog.Logger) bool {
	fail := func(c preflightCheck) bool {
		rep.Checks = append(rep.Checks, c)
		if c.OK {
			log.Debug("check passed", "check", c.Name)
			return true
		}
		log.Error("check failed", "check", c.Name, "err", c.Error, "output", c.Output)
		rep.worse(setRefused, fmt.Sprintf("check %q failed: %s", c.Name, c.Error))
		return false
	}
	if !fail(localRole(repo, set.Name)) {
		return false
	}
	for _, c := range r.reachStandbys(ctx, set) {
		if !fail(c) {
			return false
		}
	}
	for _, c := range r.cfg.Checks {
		start := time.Now()
		res, err := restore.RunCommand(ctx, c.Command, c.Timeout, "", "UNDERSTUDY_SET="+set.Name)
		cr := preflightCheck{Name: c.Name, OK: err == nil && !res.Failed, Output: strings.TrimSpace(res.Output), DurationSec: time.Since(start).Seconds()}
		switch {
		case err != nil:
			cr.Error = err.Error()
		case res.Failed:
			cr.Error = res.Why
			if res.LastLine != "" {
				cr.Error += ": " + res.LastLine
			}
		}
		if !fail(cr) {
			return false
		}
	}
	return true
}

// localRole is the local half of role-primary: a host that applies the set
// as a standby and was not promoted for it is not its primary.
func localRole(repo *chunkstore.Repo, set string) preflightCheck {
	c := preflightCheck{Name: "role-primary", OK: true}
	st, err := repo.Index().Standby(set)
	switch {
	case err != nil:
		c.OK, c.Error = false, err.Error()
	case st.Promoted.IsZero() && len(st.Targets) > 0:
		targets := sortedKeys(st.Targets)
		c.OK = false
		c.Error = fmt.Sprintf("this host applies set %s to %s as a standby; it is not the set's primary (after a failover, `understudy promote --set %s` here makes it one)",
			set, strings.Join(targets, ", "), set)
	}
	return c
}

// reachStandbys is ssh-reachable and the remote half of role-primary for
// each standby of the set, all at once: a handshake with the standby's
// serve, then the question whether it accepts pushes of the set (it does
// not once promoted for it).
func (r *runner) reachStandbys(ctx context.Context, set Set) []preflightCheck {
	out := make([]preflightCheck, 2*len(set.To))
	var wg sync.WaitGroup
	for i, name := range set.To {
		sb := r.cfg.Standbys[name]
		wg.Add(1)
		go func() {
			defer wg.Done()
			reach := preflightCheck{Name: "ssh-reachable " + name}
			role := preflightCheck{Name: "role-primary " + name}
			start := time.Now()
			defer func() {
				reach.DurationSec = time.Since(start).Seconds()
				out[2*i], out[2*i+1] = reach, role
			}()
			d, err := usync.ParseDest(sb.URL)
			if err != nil {
				reach.Error = err.Error()
				return
			}
			if d.SSH == nil {
				reach.Name = "reachable " + name
			}
			opts := standbyRemote(sb)
			conn, err := usync.Dial(ctx, d, usync.DialOptions{SSH: opts.options(), Stderr: &prefixWriter{w: r.g.stderr, prefix: "standby " + name + ": "}})
			if err != nil {
				reach.Error = err.Error()
				return
			}
			sess, err := usync.NewSession(ctx, conn)
			if err != nil {
				reach.Error = err.Error()
				return
			}
			reach.OK = true
			if err := sess.Accepts(ctx, set.Name); err != nil {
				sess.Abort()
				role.Error = fmt.Sprintf("%s: %v", d, err)
				if errors.Is(err, usync.ErrRefused) {
					role.Error = fmt.Sprintf("standby %s (%s) refuses set %s: %v; this host is no longer its primary", name, d, set.Name, err)
				}
				return
			}
			role.OK = true
			if err := sess.Close(); err != nil {
				reach.OK, reach.Error = false, err.Error()
			}
		}()
	}
	wg.Wait()
	// A standby not reached has no role answer: drop it.
	var checks []preflightCheck
	for i := 0; i < len(out); i += 2 {
		checks = append(checks, out[i])
		if out[i].OK {
			checks = append(checks, out[i+1])
		}
	}
	return checks
}

// standbyRemote returns the connection settings of a standby, push's
// defaults where the configuration is silent.
func standbyRemote(sb Standby) remoteFlags {
	return remoteFlags{
		identity: sb.Identity, knownHosts: sb.KnownHosts,
		remoteCommand: cmp.Or(sb.RemoteCommand, "understudy"),
		keepalive:     cmp.Or(sb.Keepalive, 15*time.Second),
		connectTime:   cmp.Or(sb.ConnectTimeout, 30*time.Second),
	}
}

// snapshot takes the set's snapshot; false when none was taken.
func (r *runner) snapshot(ctx context.Context, repo *chunkstore.Repo, set Set, rep *setReport, log *slog.Logger) (snapshot.Listed, bool) {
	sel, err := set.Selection()
	if err != nil {
		rep.worse(setFailed, err.Error())
		return snapshot.Listed{}, false
	}
	host, _ := os.Hostname()
	opts := snapshot.Options{
		Root: "/", Selection: sel, Set: set.Name, Host: host, Readers: 2, TrustMtime: set.TrustMtime,
		Warn: func(p string, err error) { log.Warn("path not read", "path", showPath(p), "err", err) },
	}
	if p, err := snapshot.Find(repo.Index(), "latest", set.Name); err == nil {
		opts.Parent = &p.ID
	}
	res, err := snapshot.Take(ctx, repo, opts)
	if err != nil {
		rep.worse(setFailed, "snapshot: "+err.Error())
		log.Error("snapshot failed", "err", err)
		return snapshot.Listed{}, false
	}
	st := res.Record.Stats
	rep.Snapshot, rep.Stats, rep.Missing = &res.ID, st, len(res.Record.Warnings)
	log.Info("snapshot saved", "snapshot", res.ID.Short(), "files", st.Files, "new", st.FilesNew, "changed", st.FilesChanged,
		"read", humanBytes(st.BytesRead), "added", humanBytes(st.BytesAdded), "duration", fmtDuration(st.DurationSec))
	if rep.Missing > 0 {
		rep.worse(setPartial, fmt.Sprintf("snapshot %s has %d warnings: paths that could not be read or changed while being read", res.ID.Short(), rep.Missing))
		log.Warn("snapshot incomplete", "snapshot", res.ID.Short(), "missing", rep.Missing)
	}
	return snapshot.Listed{ID: res.ID, Record: res.Record}, true
}

// push sends the snapshot to each standby of the set at once.
func (r *runner) push(ctx context.Context, repo *chunkstore.Repo, set Set, l snapshot.Listed, rep *setReport, log *slog.Logger) {
	rep.Push = make([]standbyPush, len(set.To))
	var wg sync.WaitGroup
	for i, name := range set.To {
		sb := r.cfg.Standbys[name]
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := usync.ParseDest(sb.URL)
			if err != nil { // loadConfig parsed it
				rep.Push[i] = standbyPush{name, destResult{Dest: sb.URL, Error: err.Error()}}
				return
			}
			opts := pushOptions{ssh: standbyRemote(sb), apply: sb.Apply, target: sb.Target}
			rep.Push[i] = standbyPush{name, pushTo(ctx, r.g, repo, d, []snapshot.Listed{l}, opts)}
		}()
	}
	wg.Wait()
	for _, p := range rep.Push {
		plog := log.With("standby", p.Standby, "snapshot", l.ID.Short())
		if err := recordPush(repo.Index(), p.Standby, []snapshot.Listed{l}, p.destResult); err != nil {
			plog.Warn("push not recorded for status", "err", err)
		}
		switch {
		case p.Refused:
			rep.worse(setRefused, fmt.Sprintf("standby %s: %s", p.Standby, p.Error))
			plog.Error("push refused", "err", p.Error)
		case p.Error != "":
			rep.worse(setFailed, fmt.Sprintf("push to %s: %s", p.Standby, p.Error))
			plog.Error("push failed", "err", p.Error)
		default:
			var sent int64
			var added uint64
			for _, s := range p.Snapshots {
				sent += s.DataSent + s.TreesSent
				added += s.StandbyBlobsAdded
			}
			plog.Info("pushed", "blobs_sent", sent, "blobs_added", added, "wire_out", humanBytes(p.WireOut), "duration", fmtDuration(p.Duration))
			for _, a := range p.Apply {
				plog.Info("applied", "target", a.Target, "status", a.Status, "applied", a.Snapshot.Short())
			}
		}
	}
}

// retain applies the set's keep policy, if it has one.
func (r *runner) retain(repo *chunkstore.Repo, set Set, rep *setReport, log *slog.Logger) {
	k := set.Keep
	p := retention.Policy{Last: k.Last, Hourly: k.Hourly, Daily: k.Daily, Weekly: k.Weekly, Monthly: k.Monthly, Yearly: k.Yearly}
	if k.Within > 0 {
		hours := int((k.Within + time.Hour - 1) / time.Hour)
		p.Within = retention.Span{Days: hours / 24, Hours: hours % 24}
	}
	if p.Empty() {
		return
	}
	_, removed, err := forget(r.g, repo.Index(), forgetOptions{set: set.Name, policy: p}, r.now(), time.Local)
	if err != nil {
		rep.worse(setFailed, "forget: "+err.Error())
		log.Error("forget failed", "err", err)
		return
	}
	rep.Forgot = removed
	if removed > 0 {
		log.Info("forgot snapshots", "count", removed, "keep", p.String())
	}
}

// record keeps the run's outcome in the index for status.
func (r *runner) record(repo *chunkstore.Repo, set string, rep *setReport, log *slog.Logger) {
	err := repo.Index().UpdatePrimary(set, func(st *index.PrimaryState) error {
		st.LastRun = rep.Started.UTC().Truncate(time.Second)
		st.LastRunError = rep.Error
		st.LastRunRefused = rep.Status == setRefused
		return nil
	})
	if err != nil {
		log.Warn("run outcome not recorded", "err", err)
	}
}

// runOutcome is the exit status of a run: the worst set's.
func runOutcome(reports []setReport) error {
	worst := setReport{Status: setOK}
	n := map[string]int{}
	for _, rep := range reports {
		worst.worse(rep.Status, "")
		n[rep.Status]++
	}
	code := map[string]int{setOK: exitOK, setPartial: exitPartial, setStopped: exitError, setRefused: exitRefused, setFailed: exitError}[worst.Status]
	if code == exitOK {
		return nil
	}
	return &codedError{code: code, err: fmt.Errorf("run: %d of %d sets %s (the report above and the log say why)", n[worst.Status], len(reports), worst.Status)}
}

func (g *globals) printRunReport(reports []setReport) error {
	if g.json {
		return printJSON(g.stdout, reports)
	}
	if g.quiet {
		return nil
	}
	for _, rep := range reports {
		line := fmt.Sprintf("%-8s %s in %s", rep.Status, rep.Set, fmtDuration(rep.DurationSec))
		if rep.Snapshot != nil {
			line += fmt.Sprintf(": snapshot %s (%d files new, %d changed; %s added)", rep.Snapshot.Short(),
				rep.Stats.FilesNew, rep.Stats.FilesChanged, humanBytes(rep.Stats.BytesAdded))
		}
		g.printf("%s\n", line)
		for _, p := range rep.Push {
			if p.Error == "" {
				what := "pushed"
				for _, a := range p.Apply {
					what += fmt.Sprintf(", %s %s to %s", a.Status, a.Snapshot.Short(), a.Target)
				}
				g.printf("  %s: %s\n", p.Standby, what)
			}
		}
		if rep.Forgot > 0 {
			g.printf("  forgot %d snapshots (prune frees their data)\n", rep.Forgot)
		}
		if rep.Error != "" {
			for _, l := range strings.Split(rep.Error, "\n") {
				g.printf("  %s\n", l)
			}
		}
	}
	return nil
}
