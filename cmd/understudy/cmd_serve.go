package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	usync "github.com/understudy/understudy/sync"
)

type serveOptions struct {
	appendOnly bool
	lockWait   time.Duration
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
resumes. Messages go to standard error, which ssh passes to the client.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServe(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&opts.appendOnly, "append-only", false, "refuse every request that would delete from the repository")
	f.DurationVar(&opts.lockWait, "lock-wait", time.Minute, "how long to wait for another session or command to release the repository")
	return cmd
}

func runServe(ctx context.Context, g *globals, opts serveOptions) error {
	if g.repo == "" {
		return usageErrorf("no repository: give --repo DIR")
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
	err := usync.Serve(ctx, open, os.Stdin, os.Stdout, usync.ServeOptions{AppendOnly: opts.appendOnly, Program: "understudy", Log: log})
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
