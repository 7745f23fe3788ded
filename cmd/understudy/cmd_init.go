package main

import (
	"context"
	"fmt"

	"github.com/restic/chunker"
	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	usync "github.com/understudy/understudy/sync"
)

type initOptions struct {
	compression string
	from        string
	ssh         remoteFlags
}

func newInitCmd(g *globals) *cobra.Command {
	var opts initOptions
	cmd := &cobra.Command{
		Use:   "init [--from DEST]",
		Short: "Create a repository in an empty or new directory",
		Long: `Create a repository in an empty or new directory. With --from DEST (a
repository path or ssh://[user@]host[:port]/path, as for push), it takes the
chunker polynomial of that repository, so that both cut files at the same
places: a standby that is promoted and takes its own snapshots, or a primary
rebuilt from its standby, then shares chunks with the other.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runInit(cmd.Context(), g, opts)
		},
	}
	cmd.Flags().StringVar(&opts.compression, "compression", "default", "zstd level for new blobs: fastest, default or better")
	cmd.Flags().StringVar(&opts.from, "from", "", "take the chunker polynomial of the repository `DEST`")
	opts.ssh.add(cmd.Flags())
	return cmd
}

func runInit(ctx context.Context, g *globals, opts initOptions) error {
	if g.repo == "" {
		return usageErrorf("no repository: give --repo DIR or set UNDERSTUDY_REPO")
	}
	var pol chunker.Pol
	if opts.from != "" {
		var err error
		if pol, err = peerPolynomial(ctx, g, opts); err != nil {
			return err
		}
	}
	cfg, err := chunkstore.Init(g.repo, chunkstore.InitOptions{Compression: opts.compression, Polynomial: pol})
	if err != nil {
		return err
	}
	// Create the index now, so that a repository is complete from the start.
	repo, err := chunkstore.Open(g.repo, chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: "init"})
	if err != nil {
		return err
	}
	if err := repo.Close(); err != nil {
		return err
	}
	if g.json {
		return printJSON(g.stdout, map[string]any{"repository": g.repo, "id": cfg.ID})
	}
	g.printf("created repository %s (id %s)\n", g.repo, cfg.ID[:8])
	if opts.from != "" {
		g.printf("chunker polynomial %v, as %s's\n", cfg.Polynomial, opts.from)
	}
	return nil
}

// peerPolynomial asks the repository opts.from for its chunker polynomial:
// serve announces it in its welcome.
func peerPolynomial(ctx context.Context, g *globals, opts initOptions) (chunker.Pol, error) {
	d, err := usync.ParseDest(opts.from)
	if err != nil {
		return 0, usageErrorf("--from %s: %v", opts.from, err)
	}
	conn, err := usync.Dial(ctx, d, usync.DialOptions{
		SSH:    opts.ssh.options(),
		Stderr: &prefixWriter{w: g.stderr, prefix: d.String() + ": "},
	})
	if err != nil {
		return 0, fmt.Errorf("--from %s: %w", d, err)
	}
	sess, err := usync.NewSession(ctx, conn)
	if err != nil {
		return 0, fmt.Errorf("--from %s: %w", d, err)
	}
	pol := chunker.Pol(sess.Welcome().Polynomial)
	if err := sess.Close(); err != nil {
		return 0, fmt.Errorf("--from %s: %w", d, err)
	}
	if !pol.Irreducible() {
		return 0, fmt.Errorf("--from %s: its chunker polynomial %v is not irreducible", d, pol)
	}
	return pol, nil
}
