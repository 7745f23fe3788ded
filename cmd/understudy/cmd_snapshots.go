package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
)

func newSnapshotsCmd(g *globals) *cobra.Command {
	var set string
	cmd := &cobra.Command{
		Use:   "snapshots",
		Short: "List snapshots, oldest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSnapshots(cmd.Context(), g, set)
		},
	}
	cmd.Flags().StringVar(&set, "set", "", "only the snapshots of this set")
	return cmd
}

// snapshotJSON is the stable --json form of a snapshot in listings.
type snapshotJSON struct {
	ID      index.ID `json:"id"`
	ShortID string   `json:"short_id"`
	*snapshot.Record
}

func runSnapshots(_ context.Context, g *globals, set string) error {
	repo, err := g.openRepo(chunkstore.Shared, "snapshots")
	if err != nil {
		return err
	}
	defer repo.Close()
	snaps, bad, err := snapshot.List(repo.Index(), set)
	if err != nil {
		return err
	}
	for _, e := range bad {
		fmt.Fprintf(g.stderr, "warning: %v\n", e)
	}
	if g.json {
		out := make([]snapshotJSON, 0, len(snaps))
		for _, s := range snaps {
			out = append(out, snapshotJSON{ID: s.ID, ShortID: s.ID.Short(), Record: s.Record})
		}
		return printJSON(g.stdout, out)
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTime\tHost\tSet\tFiles\tSize\tWarnings\tPaths")
	for _, s := range snaps {
		paths := make([]string, len(s.Paths))
		for i, p := range s.Paths {
			paths[i] = showPath(p)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\n", s.ID.Short(), s.Time.Local().Format("2006-01-02 15:04:05"),
			s.Host, s.Set, s.Stats.Files, humanBytes(s.Stats.BytesTotal), len(s.Warnings), strings.Join(paths, " "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	g.printf("%d snapshots\n", len(snaps))
	return nil
}
