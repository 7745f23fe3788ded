package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/selection"
)

type snapshotOptions struct {
	set           string
	excludes      []string
	oneFileSystem bool
	tags          []string
	root          string
	readers       int
	forceRead     bool
	trustMtime    bool
	readAttempts  int
	paths         []string
}

func newSnapshotCmd(g *globals) *cobra.Command {
	var opts snapshotOptions
	cmd := &cobra.Command{
		Use:   "snapshot [flags] PATH...",
		Short: "Take a snapshot of the given paths",
		Long: `Take a point-in-time snapshot of PATH... and everything below them, except
what --exclude patterns (rsync --exclude syntax) leave out. A listed PATH is
always taken, even under an excluded directory.

Files whose inode, size, mtime and ctime are as at the set's last snapshot
are not opened: their content and metadata come from the change-detection
cache in index.db. --force-read reads every file all the same.

A file that changes while it is read is read again, up to --read-attempts
times; one that changes during every attempt keeps the version the set's
previous snapshot has (or is left out without one), never a mix of both.

Exit status 3 means the snapshot was written but some paths could not be
read, or changed during every read; they are listed on stderr and in the
snapshot.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.paths = args
			return runSnapshot(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.set, "set", "default", "the set this snapshot belongs to")
	f.StringArrayVar(&opts.excludes, "exclude", nil, "leave out paths matching `PATTERN` (rsync syntax; repeatable)")
	f.BoolVarP(&opts.oneFileSystem, "one-file-system", "x", false, "do not cross filesystem boundaries below the listed paths")
	f.StringArrayVar(&opts.tags, "tag", nil, "add a `TAG` to the snapshot (repeatable)")
	f.StringVar(&opts.root, "root", "/", "the directory that stands for / (snapshot another root filesystem mounted there)")
	f.IntVar(&opts.readers, "readers", 2, "files read at once (more for SSDs and many small files, 1 for one spinning disk)")
	f.BoolVar(&opts.forceRead, "force-read", false, "read every file, trusting nothing in the change-detection cache")
	f.BoolVar(&opts.trustMtime, "trust-mtime", false, "when only a file's ctime moved (chmod, chown, xattrs), re-read its metadata but not its content")
	f.IntVar(&opts.readAttempts, "read-attempts", 3, "reads of a file that changes while it is read, before it is a warning")
	return cmd
}

// absPaths makes the command-line paths absolute paths inside root.
func absPaths(root string, paths []string) ([]string, error) {
	out := make([]string, 0, len(paths))
	for _, p := range paths {
		if p == "" {
			return nil, usageErrorf("empty path")
		}
		trailing := strings.HasSuffix(p, "/") && p != "/"
		switch {
		case root == "/":
			abs, err := filepath.Abs(p)
			if err != nil {
				return nil, err
			}
			p = abs
		case !strings.HasPrefix(p, "/"):
			return nil, usageErrorf("path %q: with --root, paths are absolute paths inside the root", p)
		}
		if trailing {
			p += "/"
		}
		out = append(out, p)
	}
	return out, nil
}

func runSnapshot(ctx context.Context, g *globals, opts snapshotOptions) error {
	if opts.readers < 1 {
		return usageErrorf("--readers must be at least 1")
	}
	if opts.readAttempts < 1 {
		return usageErrorf("--read-attempts must be at least 1")
	}
	paths, err := absPaths(opts.root, opts.paths)
	if err != nil {
		return err
	}
	sel, err := selection.New(paths, opts.excludes, opts.oneFileSystem)
	if err != nil {
		return usageErrorf("%v", err)
	}
	repo, err := g.openRepo(chunkstore.Exclusive, "snapshot")
	if err != nil {
		return err
	}
	defer repo.Close()
	host, _ := os.Hostname()
	var parent *snapshot.Listed
	if p, err := snapshot.Find(repo.Index(), "latest", opts.set); err == nil {
		parent = &p
	}
	prog := g.newProgress()
	sopts := snapshot.Options{
		Root: opts.root, Selection: sel, Set: opts.set, Host: host, Tags: opts.tags, Readers: opts.readers,
		ForceRead: opts.forceRead, TrustMtime: opts.trustMtime, ReadAttempts: opts.readAttempts,
		Warn: func(p string, err error) {
			prog.done()
			fmt.Fprintf(g.stderr, "warning: %s: %v\n", showPath(p), err)
		},
		Progress: func(s snapshot.Stats) {
			prog.show("%d files, %d dirs, %s read, %s added", s.Files, s.Dirs, humanBytes(s.BytesRead), humanBytes(s.BytesAdded))
		},
	}
	if parent != nil {
		sopts.Parent = &parent.ID
	}
	res, err := snapshot.Take(ctx, repo, sopts)
	prog.done()
	if err != nil {
		return err
	}
	st := res.Record.Stats
	if g.json {
		if err := printJSON(g.stdout, struct {
			ID index.ID `json:"id"`
			*snapshot.Record
		}{res.ID, res.Record}); err != nil {
			return err
		}
	} else {
		g.printf("snapshot %s saved in %s\n", res.ID.Short(), fmtDuration(st.DurationSec))
		g.printf("  files: %d new, %d changed, %d unmodified\n", st.FilesNew, st.FilesChanged, st.FilesUnmodified)
		g.printf("  dirs:  %d new, %d changed, %d unmodified; %d others (symlinks, devices, FIFOs, sockets)\n",
			st.DirsNew, st.DirsChanged, st.DirsUnmodified, st.Others)
		g.printf("  data:  %s read of %s; %s new, %s added to the repository (compressed)\n",
			humanBytes(st.BytesRead), humanBytes(st.BytesTotal), humanBytes(st.RawAdded), humanBytes(st.BytesAdded))
	}
	if n := len(res.Record.Warnings); n > 0 {
		return &codedError{code: exitPartial, err: fmt.Errorf("snapshot %s has %d warnings: paths that could not be read or changed while being read (listed above)", res.ID.Short(), n)}
	}
	return nil
}
