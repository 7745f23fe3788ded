package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/restore"
	usync "github.com/understudy/understudy/sync"
)

type serveOptions struct {
	appendOnly   bool
	lockWait     time.Duration
	allowTargets []string
}

func newServeCmd(g *globals) *cobra.Command {
	var opts serveOptions
	cmd := &cobra.Command{
		Use:   "serve --repo DIR",
		Short: "Speak the replication protocol on stdin/stdout (an ssh forced command)",
		Long: `Receive snapshots pushed by a primary: speak understudy's replication protocol
on standard input and output, storing what arrives in the repository given
by --repo and nothing else. Meant as the forced command of the primary's key
in the standby's authorized_keys:

  command="understudy serve --repo /var/lib/understudy/repo",restrict ssh-ed25519 AAAA...

Every blob is verified against its ID before it is stored; what arrived is
committed when the session ends, however it ends, so that the next push
resumes. Messages go to standard error, which ssh passes to the client.

With --allow-target DIR, "push --apply --target DIR" may ask serve, once the
snapshot is committed, to run the automatic apply of its set into DIR (as
"apply --pending --target DIR" does: hold, apply delay, promotion and the
mass-change guard apply; a refusal goes to syslog). Any other target is
refused, so the key cannot make the standby write anywhere else:

  command="understudy serve --repo /var/lib/understudy/repo --allow-target /",restrict ssh-ed25519 AAAA...`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServe(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&opts.appendOnly, "append-only", false, "refuse every request that would delete from the repository")
	f.DurationVar(&opts.lockWait, "lock-wait", time.Minute, "how long to wait for another session or command to release the repository")
	f.StringArrayVar(&opts.allowTargets, "allow-target", nil, "let the client ask for an apply into `DIR`, an absolute path (repeatable)")
	return cmd
}

func runServe(ctx context.Context, g *globals, opts serveOptions) error {
	if g.repo == "" {
		return usageErrorf("no repository: give --repo DIR")
	}
	for i, t := range opts.allowTargets {
		if !filepath.IsAbs(t) {
			return usageErrorf("--allow-target %s: give an absolute path", t)
		}
		opts.allowTargets[i] = filepath.Clean(t)
	}
	var repo *chunkstore.Repo
	open := func() (*chunkstore.Repo, error) {
		var err error
		repo, err = g.openRepoWith(chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: "serve", Wait: opts.lockWait})
		return repo, err
	}
	// A client that went away must not kill serve with SIGPIPE before it
	// has said why the session ended; writes then fail with EPIPE.
	signal.Ignore(syscall.SIGPIPE)
	log := slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if g.verbose {
		log = slog.New(slog.NewTextHandler(g.stderr, nil))
	}
	err := usync.Serve(ctx, open, os.Stdin, os.Stdout, usync.ServeOptions{
		AppendOnly: opts.appendOnly, Program: "understudy", Log: log,
		Apply: serveApply(log, g.configStandby), AllowTargets: opts.allowTargets, Syslog: syslogErr,
	})
	var told *usync.ToldError
	if errors.As(err, &told) {
		// The client has it and shows it; only the log keeps a copy.
		log.Debug("session ended", "error", told.Err)
		err = &codedError{code: exitError, err: errReported}
	}
	if repo != nil {
		if cerr := repo.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}
	return err
}

// serveApplyWorkers is how many files an apply asked for by a push writes
// at once, as apply's default.
const serveApplyWorkers = 8

// serveApply runs the automatic apply (apply --pending) for serve, and
// turns its outcome into the protocol's reply. Messages about single
// entries go to log, hence to the client's standard error. configure first
// writes the configuration file's standby settings (globals.configStandby).
func serveApply(log *slog.Logger, configure func(*index.DB) error) usync.ApplyFunc {
	return func(ctx context.Context, repo *chunkstore.Repo, set, target string) (usync.ApplyReply, error) {
		if err := configure(repo.Index()); err != nil {
			return usync.ApplyReply{}, err
		}
		sb := &restore.Standby{
			DB: repo.Index(), Loader: repo, StagingDir: repo.Dir(), Workers: serveApplyWorkers,
			Warn: func(p string, err error) { log.Warn("apply", "path", p, "error", err) },
		}
		res, err := sb.Auto(ctx, set, target)
		return autoReply(repo.Index(), set, target, res, err)
	}
}

// autoReply maps what Standby.Auto did to an ApplyReply; only a hard
// failure stays an error.
func autoReply(db *index.DB, set, target string, res *restore.AutoResult, err error) (usync.ApplyReply, error) {
	var refused *restore.Refused
	if errors.As(err, &refused) {
		return usync.ApplyReply{Status: usync.ApplyRefused, Snapshot: refused.Snapshot, Reasons: refused.Reasons}, nil
	}
	if err != nil && !(errors.Is(err, restore.ErrIncomplete) && res != nil && res.Applied != nil) {
		return usync.ApplyReply{}, err
	}
	switch {
	case res == nil:
		return usync.ApplyReply{}, errors.New("the automatic apply returned no result")
	case res.Applied != nil:
		r := usync.ApplyReply{Status: usync.ApplyApplied, Snapshot: res.Applied.Snapshot}
		if err != nil {
			r.Status, r.Error = usync.ApplyIncomplete, err.Error()
		}
		if res.Applied.Stats != nil {
			stats, jerr := json.Marshal(res.Applied.Stats)
			if jerr != nil {
				return usync.ApplyReply{}, jerr
			}
			r.Stats = stats
		}
		return r, nil
	case !res.Waiting.IsZero():
		return usync.ApplyReply{Status: usync.ApplyWaiting, Snapshot: res.Waiting, DueAt: res.DueAt}, nil
	}
	r := usync.ApplyReply{Status: usync.ApplyUpToDate}
	if key, kerr := restore.TargetKey(target); kerr == nil {
		if st, serr := db.Standby(set); serr == nil && st.Targets[key] != nil {
			r.Snapshot = st.Targets[key].Applied
		}
	}
	return r, nil
}
