package restore

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/fsmeta"
	"github.com/understudy/understudy/snapshot/selection"
	"github.com/understudy/understudy/snapshot/tree"
)

// dir restores the entries of t into d, the target directory for snapshot
// path p (d is nil in a dry run where the directory does not exist yet).
// files counts the files of this directory still being written.
func (r *restorer) dir(d *dirHandle, p string, t *tree.Tree, class selection.Class, filter int, scopeDev uint64, files *sync.WaitGroup) error {
	for i := range t.Nodes {
		if err := r.ctx.Err(); err != nil {
			return err
		}
		n := &t.Nodes[i]
		cp := childPath(p, n.Name)
		fc := r.filterClass(cp)
		if fc == filterNone || (fc == filterAncestor && n.Type != tree.Dir) {
			continue
		}
		cc := r.sel.Child(class, cp, n.Type == tree.Dir)
		if cc == selection.Outside {
			r.warn(cp, errors.New("in the snapshot but outside its own selection; skipped"))
			continue
		}
		var err error
		if n.Type == tree.Dir {
			err = r.subdir(d, cp, n, cc, fc, scopeDev)
		} else {
			err = r.leaf(d, cp, n, files)
		}
		if err != nil {
			return err
		}
	}
	if r.opts.Delete && class == selection.InScope && filter == filterAll && d != nil && d.dev == scopeDev {
		r.deleteExtras(d, p, t, class)
	}
	return nil
}

func isDir(st *unix.Stat_t) bool { return st.Mode&unix.S_IFMT == unix.S_IFDIR }

// subdir restores directory node n at snapshot path p inside d.
func (r *restorer) subdir(d *dirHandle, p string, n *tree.Node, class selection.Class, filter int, scopeDev uint64) error {
	sub, err := snapshot.LoadTree(r.loader, n.Subtree)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	modify := class == selection.InScope && filter == filterAll
	created := false
	var child *dirHandle
	if d != nil {
		st, err := fsmeta.Lstat(d.fd, n.Name)
		exists := err == nil
		switch {
		case exists && isDir(&st):
		case exists && !modify:
			return fmt.Errorf("%s: the target has a %s here, not a directory, and this restore may not replace it; move it away", p, fileType(&st))
		case exists || errors.Is(err, unix.ENOENT):
			op := byte('+')
			if exists {
				op = '~'
			}
			r.itemize(op, p)
			if r.opts.DryRun {
				break
			}
			if exists {
				if err := removeEntry(d.fd, n.Name, d.dev); err != nil {
					return fmt.Errorf("%s: replace with a directory: %w", p, err)
				}
			}
			if err := unix.Mkdirat(d.fd, n.Name, 0o700); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			created = true
		default:
			return fmt.Errorf("%s: %w", p, err)
		}
		if !r.opts.DryRun || (exists && isDir(&st)) {
			fd, err := openDirAt(d.fd, n.Name)
			if err != nil {
				return fmt.Errorf("%s: open directory: %w", p, err)
			}
			if child, err = newDirHandle(fd); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
	} else {
		r.itemize('+', p)
	}
	if child != nil && r.sel.Child(selection.Outside, p, true) == selection.InScope {
		scopeDev = child.dev // a listed path starts its own filesystem scope
	}
	files := &sync.WaitGroup{}
	err = r.dir(child, p, sub, class, filter, scopeDev, files)
	if modify || created {
		r.stats.dirs.Add(1)
	}
	if child == nil {
		return err
	}
	if r.opts.DryRun || err != nil {
		files.Wait()
		child.unref()
		return err
	}
	task := &dirTask{parent: d.ref(), self: child, name: n.Name, path: p, files: files}
	if modify || created {
		task.node = n
	}
	select {
	case r.dirs <- task:
		return nil
	case <-r.ctx.Done():
		files.Wait()
		task.parent.unref()
		child.unref()
		return r.ctx.Err()
	}
}

func fileType(st *unix.Stat_t) string {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFSOCK:
		return "socket"
	}
	return "file of unknown type"
}

// leaf restores a non-directory node at snapshot path p inside d.
func (r *restorer) leaf(d *dirHandle, p string, n *tree.Node, files *sync.WaitGroup) error {
	if d == nil {
		r.itemize('+', p)
		return nil
	}
	st, err := fsmeta.Lstat(d.fd, n.Name)
	exists := err == nil
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("%s: %w", p, err)
	}
	if r.opts.DryRun {
		if !exists {
			r.itemize('+', p)
		} else if differs(&st, n) {
			r.itemize('~', p)
		}
		return nil
	}
	if exists {
		if err := removeEntry(d.fd, n.Name, d.dev); err != nil {
			r.warn(p, fmt.Errorf("cannot replace the existing %s: %w", fileType(&st), err))
			return nil
		}
		r.itemize('~', p)
	} else {
		r.itemize('+', p)
	}
	if n.LinkTo != "" && r.link(d, p, n) {
		r.stats.links.Add(1)
		return nil
	}
	switch n.Type {
	case tree.File:
		fd, err := unix.Openat(d.fd, n.Name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("%s: create: %w", p, err)
		}
		r.restored[r.pathKey(p)] = struct{}{}
		r.stats.files.Add(1)
		files.Add(1)
		task := &fileTask{dir: d.ref(), name: n.Name, path: p, f: newFile(fd, p), node: *n, done: files}
		select {
		case r.files <- task:
			return nil
		case <-r.ctx.Done():
			task.finish()
			return r.ctx.Err()
		}
	case tree.Symlink:
		err = fsmeta.Symlink(d.fd, n.Name, n.Target)
	default:
		err = fsmeta.Mknod(d.fd, n.Name, n)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	r.restored[r.pathKey(p)] = struct{}{}
	r.stats.others.Add(1)
	if err := fsmeta.Apply(d.fd, n.Name, -1, n); err != nil {
		r.warn(p, err)
	}
	return nil
}

// differs reports whether an existing entry visibly differs from node n:
// type, size, mode, owner or mtime.
func differs(st *unix.Stat_t, n *tree.Node) bool {
	if fileType(st) != fileType(&unix.Stat_t{Mode: nodeMode(n)}) {
		return true
	}
	return st.Mode&tree.ModeMask != n.Mode || st.Uid != n.UID || st.Gid != n.GID ||
		(n.Type == tree.File && uint64(st.Size) != n.Size()) ||
		(n.Type != tree.Symlink && (st.Mtim.Sec != n.MtimeSec || st.Mtim.Nsec != int64(n.MtimeNsec)))
}

func nodeMode(n *tree.Node) uint32 {
	switch n.Type {
	case tree.Dir:
		return unix.S_IFDIR
	case tree.Symlink:
		return unix.S_IFLNK
	case tree.BlockDev:
		return unix.S_IFBLK
	case tree.CharDev:
		return unix.S_IFCHR
	case tree.FIFO:
		return unix.S_IFIFO
	case tree.Socket:
		return unix.S_IFSOCK
	}
	return unix.S_IFREG
}

// link makes p a hard link to the entry its LinkTo names, if that entry was
// written by this restore. It reports whether the link was made.
func (r *restorer) link(d *dirHandle, p string, n *tree.Node) bool {
	first, ok := snapshot.ResolveLink(path.Dir(p), n.LinkTo)
	if !ok {
		r.warn(p, fmt.Errorf("malformed hard link path %q; restored as a separate file", n.LinkTo))
		return false
	}
	if _, ok := r.restored[r.pathKey(first)]; !ok {
		return false
	}
	dir, name := path.Split(first)
	fd, err := openPath(r.rootfd, strings.FieldsFunc(dir, func(c rune) bool { return c == '/' }))
	if err != nil {
		r.warn(p, fmt.Errorf("open directory of %s for linking: %w", first, err))
		return false
	}
	defer unix.Close(fd)
	if err := unix.Linkat(fd, name, d.fd, n.Name, 0); err != nil {
		r.warn(p, fmt.Errorf("link to %s: %w", first, err))
		return false
	}
	return true
}

// deleteExtras removes the entries of d that t lacks and the snapshot's
// selection covers.
func (r *restorer) deleteExtras(d *dirHandle, p string, t *tree.Tree, class selection.Class) {
	names, err := readNames(d.fd)
	if err != nil {
		r.warn(p, fmt.Errorf("list for --delete: %w", err))
		return
	}
	for _, name := range names {
		if t.Find(name) != nil {
			continue
		}
		cp := childPath(p, name)
		st, err := fsmeta.Lstat(d.fd, name)
		if err != nil {
			continue
		}
		if r.sel.Child(class, cp, isDir(&st)) != selection.InScope || r.filterClass(cp) != filterAll {
			continue
		}
		r.itemize('-', cp)
		if r.opts.DryRun {
			continue
		}
		if err := removeEntry(d.fd, name, d.dev); err != nil {
			r.warn(cp, fmt.Errorf("delete: %w", err))
			continue
		}
		r.stats.deleted.Add(1)
	}
}
