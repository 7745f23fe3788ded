package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/cmd/understudy/ops"
	"github.com/understudy/understudy/restore"
	"github.com/understudy/understudy/snapshot"
)

type applyOptions struct {
	target   string
	set      string
	force    bool
	full     bool
	dryRun   bool
	pending  bool
	protect  []string
	workers  int
	lockWait time.Duration
}

func (o *applyOptions) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.target, "target", "", "the live tree, standing for / (required)")
	f.StringVar(&o.set, "set", "default", "the set")
	f.BoolVar(&o.full, "full", false, "compare every entry in scope with the live tree, repairing local changes everywhere")
	f.BoolVarP(&o.dryRun, "dry-run", "n", false, "print what would change, change nothing")
	f.StringArrayVar(&o.protect, "protect", nil, "also leave paths matching `PATTERN` alone (repeatable; see protect add)")
	f.IntVar(&o.workers, "workers", 8, "files written at once")
	f.DurationVar(&o.lockWait, "lock-wait", time.Minute, "how long to wait for the repository lock")
	cmd.MarkFlagRequired("target")
}

func newApplyCmd(g *globals) *cobra.Command {
	var opts applyOptions
	cmd := &cobra.Command{
		Use:   "apply [SNAP] --target DIR",
		Short: "Make a live tree equal to a snapshot, touching only what differs",
		Long: `Make the live tree under DIR (standing for /) equal to SNAP (default: the
latest of the set) inside the snapshot's scope. Protected paths (protect add)
and paths the set excludes are never touched. Subtrees the snapshot shares
with the one applied last are skipped; elsewhere each entry is compared with
the live one by its stat, so local changes there are repaired too (--full:
everywhere). Each changed file is written to a temporary file beside it,
synced to disk and renamed over the old one: a reader sees the old file or the new
one, never a mix. An apply that is killed leaves the tree mid-apply; the
next apply or rollback finishes the job.

The mass-change guard refuses a snapshot that would delete more than 20% or
change more than 50% of the files or bytes in the scope (see standby), or
whose /etc/passwd, /etc/shadow or /etc/group is broken, or that fails a
sanity check of the set: exit status 4, and a syslog line. --force applies it
anyway.

--pending is the automatic apply: the newest snapshot that is due (older than
the set's apply delay), unless the set is held or promoted.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref := "latest"
			if len(args) == 1 {
				if opts.pending {
					return usageErrorf("--pending chooses the snapshot itself: give no SNAP")
				}
				ref = args[0]
			}
			return runApply(cmd.Context(), g, opts, ref, 0, false)
		},
	}
	opts.flags(cmd)
	cmd.Flags().BoolVar(&opts.force, "force", false, "apply even if the mass-change guard refuses")
	cmd.Flags().BoolVar(&opts.pending, "pending", false, "apply the newest due snapshot, as an automatic apply does")
	return cmd
}

func newRollbackCmd(g *globals) *cobra.Command {
	var opts applyOptions
	var to string
	var steps int
	cmd := &cobra.Command{
		Use:   "rollback --target DIR (--to SNAP | --steps N)",
		Short: "Put a live tree back to an earlier snapshot",
		Long: `Apply an earlier snapshot of the set to DIR with the same engine as apply, so
that its cost is what differs: --to names it, --steps N counts back from the
one applied. The mass-change guard does not judge a rollback; protected and
excluded paths are left alone as by apply.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (to == "") == (steps == 0) {
				return usageErrorf("give exactly one of --to SNAP and --steps N")
			}
			if steps < 0 {
				return usageErrorf("--steps %d: want a positive number", steps)
			}
			return runApply(cmd.Context(), g, opts, to, steps, true)
		},
	}
	opts.flags(cmd)
	cmd.Flags().StringVar(&to, "to", "", "the snapshot to go back to")
	cmd.Flags().IntVar(&steps, "steps", 0, "go back N snapshots of the set from the one applied")
	return cmd
}

// runApply applies ref, or with steps > 0 rolls back that many snapshots,
// or with opts.pending applies the newest due snapshot.
func runApply(ctx context.Context, g *globals, opts applyOptions, ref string, steps int, rollback bool) error {
	repo, err := g.openRepoWith(chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: "apply", Wait: opts.lockWait})
	if err != nil {
		return err
	}
	defer repo.Close()
	if err := g.configStandby(repo.Index()); err != nil {
		return err
	}
	prog := g.newProgress()
	sb := &restore.Standby{
		DB: repo.Index(), Loader: repo, Workers: opts.workers, StagingDir: repo.Dir(),
		Warn: func(p string, err error) {
			prog.done()
			fmt.Fprintf(g.stderr, "warning: %s: %v\n", showPath(p), err)
		},
	}
	if opts.dryRun || g.verbose {
		sb.Itemize = func(op byte, p string) {
			if !g.json {
				fmt.Fprintf(g.stdout, "%c %s\n", op, showPath(p))
			}
		}
	}
	if opts.pending {
		res, err := sb.Auto(ctx, opts.set, opts.target)
		prog.done()
		return g.reportAuto(opts, res, err)
	}
	var snap snapshot.Listed
	if steps > 0 {
		snap, err = sb.Previous(opts.set, opts.target, steps)
	} else {
		snap, err = snapshot.Find(repo.Index(), ref, opts.set)
		if err == nil && snap.Set != opts.set {
			err = usageErrorf("snapshot %s is of set %s, not %s: say --set %s", snap.ID.Short(), snap.Set, opts.set, snap.Set)
		}
	}
	if err != nil {
		return err
	}
	res, err := sb.Apply(ctx, restore.ApplyRequest{
		Set: opts.set, Target: opts.target, Snapshot: snap, Guard: !rollback, Force: opts.force,
		Full: opts.full, DryRun: opts.dryRun, Protect: opts.protect,
	})
	prog.done()
	return g.reportApply(opts, res, err)
}

func (g *globals) reportApply(opts applyOptions, res *restore.ApplyResult, err error) error {
	var refused *restore.Refused
	if errors.As(err, &refused) {
		syslogErr(refused.Error())
		return &codedError{code: exitRefused, err: fmt.Errorf("%w\n(apply --force applies it anyway)", err)}
	}
	if res != nil && (err == nil || errors.Is(err, restore.ErrIncomplete)) {
		if g.json {
			if jerr := printJSON(g.stdout, res); jerr != nil {
				return jerr
			}
		} else if !opts.dryRun {
			st := res.Stats
			g.printf("applied snapshot %s to %s in %.1fs: %d created, %d replaced, %d metadata, %d linked, %d deleted; %s written, %s reused; %d subtrees unchanged\n",
				res.Snapshot.Short(), res.Target, res.Duration, st.Created, st.Replaced, st.Metadata, st.Linked, st.Deleted,
				humanBytes(st.BytesWritten), humanBytes(st.BytesReused), st.SubtreesSkipped)
		}
	}
	if err != nil && !opts.dryRun {
		syslogErr(err.Error())
	}
	return err
}

func (g *globals) reportAuto(opts applyOptions, res *restore.AutoResult, err error) error {
	if err != nil && (res == nil || res.Applied == nil) {
		return g.reportApply(opts, nil, err)
	}
	switch {
	case res.Applied != nil:
		return g.reportApply(opts, res.Applied, err)
	case g.json:
		return printJSON(g.stdout, res)
	case !res.Waiting.IsZero():
		g.printf("nothing due: snapshot %s will be due at %s\n", res.Waiting.Short(), res.DueAt.Local().Format(time.RFC3339))
	default:
		g.printf("%s is up to date with set %s\n", opts.target, opts.set)
	}
	return nil
}

// syslogErr sends a failure to syslog as user.err, tag understudy, as the
// seed's `logger -p user.err` did (UNDERSTUDY_SYSLOG names another socket,
// as for run's log); a host without syslog is not an error.
func syslogErr(msg string) {
	w, err := ops.DialSyslog(os.Getenv("UNDERSTUDY_SYSLOG"))
	if err != nil {
		return
	}
	defer w.Close()
	w.Err(msg)
}
