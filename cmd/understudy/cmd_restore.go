package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/restore"
	"github.com/understudy/understudy/snapshot"
)

type restoreOptions struct {
	ref     string
	set     string
	target  string
	paths   []string
	delete  bool
	dryRun  bool
	workers int
}

func newRestoreCmd(g *globals) *cobra.Command {
	var opts restoreOptions
	cmd := &cobra.Command{
		Use:   "restore SNAP --target DIR",
		Short: "Write a snapshot out into a directory",
		Long: `Write snapshot SNAP into DIR, which stands for the snapshot's root: a snapshot
of /usr restored with --target /mnt/new writes /mnt/new/usr. Owners, modes,
times to the nanosecond, xattrs, ACLs, capabilities, chattr flags, hard links,
devices, FIFOs, sockets and sparse holes are restored. Nothing outside DIR is
ever written: symlinks found in DIR are never followed.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.ref = args[0]
			return runRestore(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.target, "target", "", "directory to restore into (required)")
	f.StringVar(&opts.set, "set", "", "resolve latest within this set")
	f.StringArrayVar(&opts.paths, "path", nil, "restore only this absolute snapshot `PATH` and what is below it (repeatable)")
	f.BoolVar(&opts.delete, "delete", false, "remove what the target has and the snapshot lacks, inside the snapshot's scope")
	f.BoolVarP(&opts.dryRun, "dry-run", "n", false, "print what would change, change nothing")
	f.IntVar(&opts.workers, "workers", 4, "files written at once")
	cmd.MarkFlagRequired("target")
	return cmd
}

func runRestore(ctx context.Context, g *globals, opts restoreOptions) error {
	if opts.target == "" {
		return usageErrorf("--target is required")
	}
	repo, err := g.openRepo(chunkstore.Shared, "restore")
	if err != nil {
		return err
	}
	defer repo.Close()
	snap, err := snapshot.Find(repo.Index(), opts.ref, opts.set)
	if err != nil {
		return err
	}
	for i, p := range opts.paths {
		opts.paths[i] = cleanSnapPath(p)
		if _, _, err := snapshot.Resolve(repo, snap.Root, opts.paths[i]); err != nil {
			return err
		}
	}
	prog := g.newProgress()
	ropts := restore.Options{
		Target: opts.target, Paths: opts.paths, Delete: opts.delete, DryRun: opts.dryRun, Workers: opts.workers,
		Warn: func(p string, err error) {
			prog.done()
			fmt.Fprintf(g.stderr, "warning: %s: %v\n", showPath(p), err)
		},
	}
	if opts.dryRun || g.verbose {
		ropts.Itemize = func(op byte, p string) {
			if !g.json {
				fmt.Fprintf(g.stdout, "%c %s\n", op, showPath(p))
			}
		}
	}
	st, err := restore.Run(ctx, repo, snap.Record, ropts)
	prog.done()
	if st != nil && err == nil || errors.Is(err, restore.ErrIncomplete) {
		if g.json {
			if jerr := printJSON(g.stdout, st); jerr != nil {
				return jerr
			}
		} else if !opts.dryRun {
			g.printf("restored snapshot %s into %s: %d files, %d dirs, %d hard links, %d others, %s written, %d deleted\n",
				snap.ID.Short(), opts.target, st.Files, st.Dirs, st.Links, st.Others, humanBytes(st.BytesWritten), st.Deleted)
		}
	}
	return err
}
