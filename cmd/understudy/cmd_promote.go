package main

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/index"
)

func newPromoteCmd(g *globals) *cobra.Command {
	var set string
	cmd := &cobra.Command{
		Use:   "promote [--set S]",
		Short: "Make this standby the primary for a set: refuse further pushes of it",
		Long: `Record in this repository that this host is now the primary for the set:
pushes of that set are refused from now on (the pushing host's push fails
with exit 4), so that an old primary coming back cannot overwrite the new
one. Snapshots already received stay. demote reverses it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runPromote(cmd.Context(), g, set, true)
		},
	}
	cmd.Flags().StringVar(&set, "set", "default", "the set to promote")
	return cmd
}

func newDemoteCmd(g *globals) *cobra.Command {
	var set string
	cmd := &cobra.Command{
		Use:   "demote [--set S]",
		Short: "Make this host a standby for a set again: accept pushes of it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runPromote(cmd.Context(), g, set, false)
		},
	}
	cmd.Flags().StringVar(&set, "set", "default", "the set to demote")
	return cmd
}

func runPromote(_ context.Context, g *globals, set string, promote bool) error {
	what := "demote"
	if promote {
		what = "promote"
	}
	was, now, err := g.toggleStandby(what, set, promote, func(st *index.StandbyState) *time.Time { return &st.Promoted })
	if err != nil {
		return err
	}
	switch {
	case promote && !was.IsZero():
		g.printf("set %s was already promoted at %s; pushes of it are refused\n", set, was.Local().Format(time.RFC3339))
	case promote:
		g.printf("set %s promoted at %s: this host is its primary; pushes of it are refused\n", set, now.Local().Format(time.RFC3339))
	case was.IsZero():
		g.printf("set %s was not promoted; pushes of it are accepted\n", set)
	default:
		g.printf("set %s demoted (it was promoted at %s): pushes of it are accepted again\n", set, was.Local().Format(time.RFC3339))
	}
	return nil
}
