package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/snapshot"
)

func newRepairCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "repair",
		Short: "Repair a damaged repository",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "index",
		Short: "Rebuild index.db from the pack files alone",
		Long: `Rebuild index.db from the pack files alone: every pack is read whole and must
hash to its name and carry a valid trailer; each snapshot record found in the
packs is indexed if every tree and data blob it reaches is present. Packs and
snapshots that fail are named and left out. The old index is kept as
index.db.old. Takes the repository's exclusive lock.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRepairIndex(cmd.Context(), g)
		},
	})
	return cmd
}

func runRepairIndex(ctx context.Context, g *globals) error {
	// The index is not opened: it may be what is damaged.
	repo, err := g.openRepoWith(chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: "repair index", NoIndex: true})
	if err != nil {
		return err
	}
	defer repo.Close()
	st, err := repo.RebuildIndex(ctx, snapshot.ClosureChecker(ctx), func(p chunkstore.Problem) {
		fmt.Fprintf(g.stderr, "understudy: %v\n", p)
	})
	if err != nil {
		return err
	}
	if g.json {
		return printJSON(g.stdout, st)
	}
	g.printf("rebuilt the index of %s: %d packs, %d blobs, %d snapshots; %d left out\n",
		repo.Dir(), st.Packs, st.Blobs, st.Snapshots, st.Skipped)
	if st.Skipped > 0 {
		return &codedError{code: exitError, err: fmt.Errorf("%d packs or snapshots were left out, each named above", st.Skipped)}
	}
	return nil
}
