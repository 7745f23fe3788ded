package main

import (
	"context"
	"fmt"
	"io/fs"
	"time"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/tree"
)

type lsOptions struct {
	set       string
	long      bool
	recursive bool
	ref, path string
}

func newLsCmd(g *globals) *cobra.Command {
	var opts lsOptions
	cmd := &cobra.Command{
		Use:   "ls SNAP [PATH]",
		Short: "List a directory of a snapshot",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.ref, opts.path = args[0], "/"
			if len(args) == 2 {
				opts.path = args[1]
			}
			return runLs(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.set, "set", "", "resolve latest within this set")
	f.BoolVarP(&opts.long, "long", "l", false, "long listing: mode, owner, size, mtime")
	f.BoolVarP(&opts.recursive, "recursive", "R", false, "list subdirectories too")
	return cmd
}

// nodeJSON is the stable --json form of a directory entry.
type nodeJSON struct {
	Path   string            `json:"path"`
	Type   string            `json:"type"`
	Mode   string            `json:"mode"`
	UID    uint32            `json:"uid"`
	GID    uint32            `json:"gid"`
	User   string            `json:"user,omitempty"`
	Group  string            `json:"group,omitempty"`
	Size   uint64            `json:"size"`
	Mtime  time.Time         `json:"mtime"`
	Target string            `json:"target,omitempty"`
	LinkTo string            `json:"hardlink_to,omitempty"`
	Rdev   uint64            `json:"rdev,omitempty"`
	Flags  uint32            `json:"flags,omitempty"`
	Xattrs map[string][]byte `json:"xattrs,omitempty"`
}

func toJSON(p string, n *tree.Node) nodeJSON {
	j := nodeJSON{Path: p, Type: n.Type.String(), Mode: fmt.Sprintf("%04o", n.Mode), UID: n.UID, GID: n.GID,
		User: n.User, Group: n.Group, Size: n.Size(), Mtime: time.Unix(n.MtimeSec, int64(n.MtimeNsec)).UTC(),
		Target: n.Target, LinkTo: n.LinkTo, Rdev: n.Rdev, Flags: n.Flags}
	if len(n.Xattrs) > 0 {
		j.Xattrs = make(map[string][]byte, len(n.Xattrs))
		for _, x := range n.Xattrs {
			j.Xattrs[x.Name] = x.Value
		}
	}
	return j
}

// modeString renders type and permission bits as ls -l does.
func modeString(n *tree.Node) string {
	perm := []byte(fs.FileMode(n.Mode & 0o777).String()[1:])
	special := func(bit uint32, at int, lower, upper byte) {
		if n.Mode&bit == 0 {
			return
		}
		if perm[at] == 'x' {
			perm[at] = lower
		} else {
			perm[at] = upper
		}
	}
	special(0o4000, 2, 's', 'S')
	special(0o2000, 5, 's', 'S')
	special(0o1000, 8, 't', 'T')
	return string(n.Type.Letter()) + string(perm)
}

func runLs(ctx context.Context, g *globals, opts lsOptions) error {
	repo, err := g.openRepo(chunkstore.Shared, "ls")
	if err != nil {
		return err
	}
	defer repo.Close()
	snap, err := snapshot.Find(repo.Index(), opts.ref, opts.set)
	if err != nil {
		return err
	}
	dir := cleanSnapPath(opts.path)
	n, t, err := snapshot.Resolve(repo, snap.Root, dir)
	if err != nil {
		return err
	}
	var out []nodeJSON
	emit := func(p string, n *tree.Node) {
		switch {
		case g.json:
			out = append(out, toJSON(p, n))
		case opts.long:
			owner := fmt.Sprint(n.UID)
			if n.User != "" {
				owner = n.User
			}
			group := fmt.Sprint(n.GID)
			if n.Group != "" {
				group = n.Group
			}
			line := fmt.Sprintf("%s %8s %8s %12d %s %s", modeString(n), owner, group, n.Size(),
				time.Unix(n.MtimeSec, int64(n.MtimeNsec)).Local().Format("2006-01-02 15:04:05"), showPath(p))
			if n.Type == tree.Symlink {
				line += " -> " + showPath(n.Target)
			}
			fmt.Fprintln(g.stdout, line)
		default:
			fmt.Fprintln(g.stdout, showPath(p))
		}
	}
	if t == nil { // a single entry
		emit(dir, n)
	} else if err := lsTree(ctx, repo, dir, t, opts.recursive, emit); err != nil {
		return err
	}
	if g.json {
		if out == nil {
			out = []nodeJSON{}
		}
		return printJSON(g.stdout, out)
	}
	return nil
}

func lsTree(ctx context.Context, l snapshot.BlobLoader, dir string, t *tree.Tree, recursive bool, emit func(string, *tree.Node)) error {
	for i := range t.Nodes {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := &t.Nodes[i]
		p := joinSnapPath(dir, n.Name)
		emit(p, n)
		if recursive && n.Type == tree.Dir {
			sub, err := snapshot.LoadTree(l, n.Subtree)
			if err != nil {
				return err
			}
			if err := lsTree(ctx, l, p, sub, recursive, emit); err != nil {
				return err
			}
		}
	}
	return nil
}
