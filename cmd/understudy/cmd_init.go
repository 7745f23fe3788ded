package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
)

type initOptions struct {
	compression string
}

func newInitCmd(g *globals) *cobra.Command {
	var opts initOptions
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a repository in an empty or new directory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runInit(cmd.Context(), g, opts)
		},
	}
	cmd.Flags().StringVar(&opts.compression, "compression", "default", "zstd level for new blobs: fastest, default or better")
	return cmd
}

func runInit(_ context.Context, g *globals, opts initOptions) error {
	if g.repo == "" {
		return usageErrorf("no repository: give --repo DIR or set UNDERSTUDY_REPO")
	}
	cfg, err := chunkstore.Init(g.repo, chunkstore.InitOptions{Compression: opts.compression})
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
	return nil
}
