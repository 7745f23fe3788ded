package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/fsmeta"
	"github.com/understudy/understudy/snapshot/selection"
	"github.com/understudy/understudy/snapshot/tree"
)

// ApplyOptions say where and how to apply a snapshot to a live tree.
type ApplyOptions struct {
	// Target is the directory standing for "/"; it must exist.
	Target string
	// Refs are the snapshots the live tree is believed to be made of: the
	// one last applied completely and every one whose apply was started
	// since. A subtree whose ID is the same in the snapshot and in every
	// ref is skipped without being looked at; below it, local changes are
	// not repaired. Empty: every entry in scope is compared with the live
	// tree (a first apply, or a full one).
	Refs []*snapshot.Record
	// Protect are patterns (exclude syntax) of host-specific paths that the
	// apply neither writes nor deletes nor descends into.
	Protect []string
	// DryRun counts what would change without writing: the plan the
	// mass-change guard judges.
	DryRun bool
	// Workers writing file contents at once; 0 means 8 (each waits for an
	// fsync most of its time).
	Workers int
	// Warn is called for a problem that does not stop the apply.
	Warn func(path string, err error)
	// Itemize, if set, is called for every change: '+' created, '~'
	// replaced, '.' metadata changed, '-' deleted, 'h' hard-linked.
	Itemize func(op byte, path string)
}

// ApplyStats count what an apply did, or would do in a dry run.
type ApplyStats struct {
	Created         int64 `json:"created"`
	Replaced        int64 `json:"replaced"`
	Metadata        int64 `json:"metadata"`
	Linked          int64 `json:"linked"`
	Deleted         int64 `json:"deleted"`
	Kept            int64 `json:"kept"` // protected or excluded entries left in a deleted directory
	BytesWritten    int64 `json:"bytes_written"`
	BytesReused     int64 `json:"bytes_reused"` // copied from the old file instead of the repository
	SubtreesSkipped int64 `json:"subtrees_skipped"`
	Warnings        int64 `json:"warnings"`

	// For the mass-change guard: non-directories of the live tree seen,
	// deleted, and changed (replaced or given other metadata), with the
	// bytes of the old files.
	FilesSeen    int64 `json:"files_seen"`
	BytesSeen    int64 `json:"bytes_seen"`
	FilesDeleted int64 `json:"files_deleted"`
	BytesDeleted int64 `json:"bytes_deleted"`
	FilesChanged int64 `json:"files_changed"`
	BytesChanged int64 `json:"bytes_changed"`
}

type applyCounters struct {
	created, replaced, metadata, linked, deleted, kept, written, reused, skipped, warnings atomic.Int64
	seen, bytesSeen, filesDeleted, bytesDeleted, filesChanged, bytesChanged                atomic.Int64
}

func (c *applyCounters) stats() *ApplyStats {
	return &ApplyStats{
		Created: c.created.Load(), Replaced: c.replaced.Load(), Metadata: c.metadata.Load(),
		Linked: c.linked.Load(), Deleted: c.deleted.Load(), Kept: c.kept.Load(),
		BytesWritten: c.written.Load(), BytesReused: c.reused.Load(), SubtreesSkipped: c.skipped.Load(),
		Warnings: c.warnings.Load(), FilesSeen: c.seen.Load(), BytesSeen: c.bytesSeen.Load(), FilesDeleted: c.filesDeleted.Load(),
		BytesDeleted: c.bytesDeleted.Load(), FilesChanged: c.filesChanged.Load(), BytesChanged: c.bytesChanged.Load(),
	}
}

// applier is one run of Apply. The walker goroutine owns links and dirs.
type applier struct {
	ctx context.Context
	// stop ends phase 1 early with its cause: a writer's fatal error
	// (disk full, a blob that cannot be read) stops the walker too,
	// rather than letting it create and delete entries to the end of the
	// tree with every file write refused.
	stop    context.CancelCauseFunc
	loader  snapshot.BlobLoader
	sel     *selection.Selection
	protect *selection.Selection // nil: nothing protected
	opts    ApplyOptions
	rootfd  int

	files chan *applyTask
	links []linkJob
	// rootLinked: the link phase changed an entry of "/" itself.
	rootLinked bool
	// linkedDirs are the directories the link phase queued for their
	// metadata, each once however many links it made there.
	linkedDirs map[string]bool

	batchMu   sync.Mutex
	batch     []placement // written files waiting for a sync to be renamed
	batchSize int64

	dirs []dirMeta
	c    applyCounters
}

// applyTask is a file whose content must be written: to a temporary file
// in its directory, fsynced, given its metadata and renamed over the old.
type applyTask struct {
	dir  *dirHandle
	name string
	path string
	node tree.Node
	refs []*tree.Node // the ref snapshots' nodes at this path, for reuse
	// exists: an entry is there to replace, perhaps with chunks to reuse.
	exists bool
}

// linkJob makes path a hard link to first once every file is written.
type linkJob struct {
	path, first string
	node        *tree.Node
	refs        []*tree.Node
	dir         *tree.Node // the node of path's directory, nil if it is not in scope
}

// dirMeta is a directory whose metadata is set at the end, children first.
type dirMeta struct {
	path string
	node *tree.Node
}

// tmpPrefix starts the names of the temporary entries an apply creates; a
// crashed apply's leftovers are removed by the next one.
const tmpPrefix = ".understudy-tmp-"

// Apply makes the live tree under opts.Target equal to snapshot rec inside
// the snapshot's scope, outside the protected paths, touching only what
// differs. See the package documentation for the order of the work and
// why a reader never sees a torn file.
func Apply(ctx context.Context, loader snapshot.BlobLoader, rec *snapshot.Record, opts ApplyOptions) (*ApplyStats, error) {
	sel, err := rec.Selection()
	if err != nil {
		return nil, fmt.Errorf("snapshot's selection: %w", err)
	}
	a := &applier{loader: loader, sel: sel, opts: opts}
	if len(opts.Protect) > 0 {
		if a.protect, err = selection.New([]string{"/"}, opts.Protect, false); err != nil {
			return nil, fmt.Errorf("protect pattern: %w", err)
		}
	}
	if a.opts.Workers <= 0 {
		a.opts.Workers = 8
	}
	a.rootfd, err = unix.Open(opts.Target, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("target %s does not exist: apply changes a live tree in place; create the directory first, or use restore", opts.Target)
		}
		return nil, fmt.Errorf("open target %s: %w", opts.Target, err)
	}
	defer unix.Close(a.rootfd)
	root, err := snapshot.LoadTree(loader, rec.Root)
	if err != nil {
		return nil, err
	}
	refRoots := make([]*tree.Tree, len(opts.Refs))
	refNodes := make([]*tree.Node, len(opts.Refs))
	for i, r := range opts.Refs {
		if r.Root == rec.Root {
			refRoots[i] = root
		} else if refRoots[i], err = snapshot.LoadTree(loader, r.Root); err != nil {
			return nil, fmt.Errorf("snapshot applied before: %w", err)
		}
		if refNodes[i], err = r.RootNode(); err != nil {
			return nil, err
		}
	}
	dupfd, err := unix.Dup(a.rootfd)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", opts.Target, err)
	}
	rootDir, err := newDirHandle(dupfd)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", opts.Target, err)
	}

	// Phase 1: the walk, with writers filling files behind it.
	g, gctx := errgroup.WithContext(ctx)
	a.ctx, a.stop = context.WithCancelCause(gctx)
	defer a.stop(nil)
	a.files = make(chan *applyTask, fileQueue)
	rootChanged := false // entries of "/" changed, or its flags were cleared
	g.Go(func() error {
		defer close(a.files)
		defer rootDir.unref()
		if sel.Root() == selection.InScope && !opts.DryRun {
			rootChanged = a.unlock(a.rootfd, ".", "/")
		}
		changed, err := a.dir(rootDir, "/", nil, root, refRoots, sel.Root(), rootDir.dev)
		rootChanged = rootChanged || changed
		return err
	})
	for range a.opts.Workers {
		g.Go(a.writer)
	}
	err = g.Wait()
	a.flush() // even after an error: what is written is whole
	if err != nil {
		return a.c.stats(), err
	}
	a.ctx = ctx
	// Phase 2: hard links, now that their first paths hold the new inodes.
	if err := a.linkAll(); err != nil {
		return a.c.stats(), err
	}
	// Phase 3: directories, children before parents, then "/".
	if err := a.finishDirs(); err != nil {
		return a.c.stats(), err
	}
	if sel.Root() == selection.InScope {
		n, err := rec.RootNode()
		if err != nil {
			return a.c.stats(), err
		}
		var st unix.Stat_t
		if err := unix.Fstat(a.rootfd, &st); err != nil {
			return a.c.stats(), err
		}
		if rootChanged || a.rootLinked || a.metaDiffers(a.rootfd, ".", &st, n, refNodes) {
			a.itemize('.', "/")
			if !opts.DryRun {
				if err := fsmeta.Apply(a.rootfd, ".", a.rootfd, n); err != nil {
					a.warn("/", err)
				}
			}
		}
	}
	st := a.c.stats()
	if st.Warnings > 0 {
		return st, fmt.Errorf("%w: %d problems, each reported above", ErrIncomplete, st.Warnings)
	}
	return st, nil
}

func (a *applier) warn(p string, err error) {
	a.c.warnings.Add(1)
	if a.opts.Warn != nil {
		a.opts.Warn(p, err)
	}
}

func (a *applier) itemize(op byte, p string) {
	if a.opts.Itemize != nil {
		a.opts.Itemize(op, p)
	}
}

func (a *applier) protected(p string, isDir bool) bool {
	return a.protect != nil && a.protect.Excluded(p, isDir)
}

// unlock clears the immutable and append-only flags of a directory about
// to be changed, and reports whether it had any; its metadata, set at the
// end, brings back the snapshot's.
func (a *applier) unlock(dirfd int, name, p string) bool {
	flags, err := fsmeta.ClearFlags(dirfd, name)
	if err != nil {
		a.warn(p, err)
	}
	return flags&(fsmeta.FlagImmutable|fsmeta.FlagAppend) != 0
}

// dir applies tree t to the live directory d at snapshot path p, whose
// node is self when p is in scope (nil otherwise, and for "/"). refs are
// the ref snapshots' trees of p, nil where a ref has no directory there.
// It reports whether entries of d were created, replaced or deleted, which
// changes d's mtime.
func (a *applier) dir(d *dirHandle, p string, self *tree.Node, t *tree.Tree, refs []*tree.Tree, class selection.Class, scopeDev uint64) (changed bool, err error) {
	if class == selection.InScope && d.dev == scopeDev {
		changed = a.deleteExtras(d, p, t, class)
	}
	for i := range t.Nodes {
		if a.ctx.Err() != nil {
			return changed, context.Cause(a.ctx)
		}
		n := &t.Nodes[i]
		cp := childPath(p, n.Name)
		isDir := n.Type == tree.Dir
		cc := a.sel.Child(class, cp, isDir)
		if cc == selection.Outside {
			a.warn(cp, errors.New("in the snapshot but outside its own selection; skipped"))
			continue
		}
		if a.protected(cp, isDir) {
			continue
		}
		rn := make([]*tree.Node, len(refs))
		for j, rt := range refs {
			if rt != nil {
				rn[j] = rt.Find(n.Name)
			}
		}
		var ch bool
		if isDir {
			ch, err = a.subdir(d, cp, n, rn, cc, scopeDev)
		} else {
			ch = a.leaf(d, cp, self, n, rn)
		}
		changed = changed || ch
		if err != nil {
			return changed, err
		}
	}
	return changed, nil
}

// same reports whether every ref has a node at this path and f holds for
// each; false when there are no refs.
func same(rn []*tree.Node, f func(*tree.Node) bool) bool {
	for _, r := range rn {
		if r == nil || !f(r) {
			return false
		}
	}
	return len(rn) > 0
}

// subdir applies directory node n at snapshot path p inside d. It reports
// whether the entry in d was created or replaced.
func (a *applier) subdir(d *dirHandle, p string, n *tree.Node, rn []*tree.Node, class selection.Class, scopeDev uint64) (created bool, err error) {
	if same(rn, func(r *tree.Node) bool { return r.Type == tree.Dir && r.Subtree == n.Subtree }) {
		a.c.skipped.Add(1)
		if class == selection.InScope && !same(rn, func(r *tree.Node) bool { return sameMeta(r, n) }) {
			a.itemize('.', p)
			a.c.metadata.Add(1)
			a.dirs = append(a.dirs, dirMeta{path: p, node: n})
		}
		return false, nil
	}
	modify := class == selection.InScope
	st, err := fsmeta.Lstat(d.fd, n.Name)
	exists := err == nil
	switch {
	case exists && isDir(&st):
	case exists && !modify:
		a.warn(p, fmt.Errorf("the target has a %s here, not a directory, and it lies outside the scope; move it away", fileType(&st)))
		return false, nil
	case exists || errors.Is(err, unix.ENOENT):
		if exists {
			if !a.remove(d, n.Name, p, class) {
				a.warn(p, errors.New("cannot replace it with a directory: it holds protected or excluded entries"))
				return false, nil
			}
			a.itemize('~', p)
			a.c.replaced.Add(1)
		} else {
			a.itemize('+', p)
			a.c.created.Add(1)
		}
		created = true
		if a.opts.DryRun {
			return true, nil // nothing below can be deleted or changed
		}
		if err := unix.Mkdirat(d.fd, n.Name, 0o700); err != nil {
			a.warn(p, err)
			return true, nil
		}
	default:
		a.warn(p, err)
		return false, nil
	}
	fd, err := openDirAt(d.fd, n.Name)
	if err != nil {
		a.warn(p, fmt.Errorf("open directory: %w", err))
		return created, nil
	}
	child, err := newDirHandle(fd)
	if err != nil {
		a.warn(p, err)
		return created, nil
	}
	defer child.unref()
	unlocked := modify && !a.opts.DryRun && a.unlock(d.fd, n.Name, p)
	if a.sel.Child(selection.Outside, p, true) == selection.InScope {
		scopeDev = child.dev // a listed path starts its own filesystem scope
	}
	sub, err := snapshot.LoadTree(a.loader, n.Subtree)
	if err != nil {
		return created, fmt.Errorf("%s: %w", p, err)
	}
	subRefs := make([]*tree.Tree, len(rn))
	for i, r := range rn {
		switch {
		case r == nil || r.Type != tree.Dir:
		case r.Subtree == n.Subtree:
			subRefs[i] = sub
		default:
			if subRefs[i], err = snapshot.LoadTree(a.loader, r.Subtree); err != nil {
				return created, fmt.Errorf("%s in a snapshot applied before: %w", p, err)
			}
		}
	}
	var self *tree.Node
	if modify {
		self = n
	}
	inside, err := a.dir(child, p, self, sub, subRefs, class, scopeDev)
	if err != nil {
		return created, err
	}
	// Its metadata: a directory made here takes the snapshot's; one in
	// scope is set again when its entries changed (its mtime moved), its
	// flags were cleared, or it differs.
	if created || modify && (inside || unlocked || a.metaDiffers(d.fd, n.Name, &st, n, rn)) {
		a.dirs = append(a.dirs, dirMeta{path: p, node: n})
	}
	return created, nil
}

// leaf applies a non-directory node n at snapshot path p inside d, whose
// node is dirNode. It reports whether the entry was created or replaced
// (a hard link is made later, and says so then).
func (a *applier) leaf(d *dirHandle, p string, dirNode, n *tree.Node, rn []*tree.Node) bool {
	st, err := fsmeta.Lstat(d.fd, n.Name)
	exists := err == nil
	if err != nil && !errors.Is(err, unix.ENOENT) {
		a.warn(p, err)
		return false
	}
	replacedDir := exists && isDir(&st)
	if replacedDir {
		if !a.remove(d, n.Name, p, selection.InScope) {
			a.warn(p, fmt.Errorf("cannot replace the directory here with a %s: it holds protected or excluded entries", n.Type))
			return false
		}
		a.itemize('~', p)
		a.c.replaced.Add(1)
		exists = false
	}
	if exists {
		a.c.seen.Add(1)
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			a.c.bytesSeen.Add(st.Size)
		}
	}
	if n.LinkTo != "" {
		first, ok := snapshot.ResolveLink(parentOf(p), n.LinkTo)
		if !ok {
			a.warn(p, fmt.Errorf("malformed hard link path %q; applied as a separate file", n.LinkTo))
		} else {
			a.links = append(a.links, linkJob{path: p, first: first, node: n, refs: rn, dir: dirNode})
			return replacedDir
		}
	}
	if !exists {
		if !replacedDir {
			a.itemize('+', p)
			a.c.created.Add(1)
		}
		a.create(d, p, n, rn, false)
		return true
	}
	if a.needsNew(d, &st, n, rn) {
		a.itemize('~', p)
		a.c.replaced.Add(1)
		a.c.filesChanged.Add(1)
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			a.c.bytesChanged.Add(st.Size)
		}
		a.create(d, p, n, rn, true)
		return true
	}
	if a.metaDiffers(d.fd, n.Name, &st, n, rn) {
		a.itemize('.', p)
		a.c.metadata.Add(1)
		a.c.filesChanged.Add(1)
		if !a.opts.DryRun {
			if err := fsmeta.Apply(d.fd, n.Name, -1, n); err != nil {
				a.warn(p, err)
			}
		}
	}
	return false
}

func parentOf(p string) string {
	for i := len(p) - 1; i > 0; i-- {
		if p[i] == '/' {
			return p[:i]
		}
	}
	return "/"
}

// needsNew reports whether the live entry st must be replaced by a new one
// for node n: another type, other content, symlink target or device.
func (a *applier) needsNew(d *dirHandle, st *unix.Stat_t, n *tree.Node, rn []*tree.Node) bool {
	if typ, _ := fsmeta.TypeOf(st.Mode); typ != n.Type {
		return true
	}
	switch n.Type {
	case tree.File:
		if uint64(st.Size) != n.Size() || st.Mtim.Sec != n.MtimeSec || st.Mtim.Nsec != int64(n.MtimeNsec) {
			return true
		}
		for _, r := range rn {
			// Size and mtime cannot tell this node's content from the
			// ref's; and a link the ref had must be broken.
			if r == nil {
				continue
			}
			if r.Type == tree.File && !slices.Equal(r.Content, n.Content) && r.Size() == n.Size() && r.MtimeSec == n.MtimeSec && r.MtimeNsec == n.MtimeNsec {
				return true
			}
			if r.LinkTo != "" && st.Nlink > 1 {
				return true
			}
		}
		return false
	case tree.Symlink:
		if uint64(st.Size) != uint64(len(n.Target)) {
			return true
		}
		target, err := readlinkAt(d.fd, n.Name, len(n.Target))
		return err != nil || target != n.Target
	case tree.BlockDev, tree.CharDev:
		return uint64(st.Rdev) != n.Rdev
	}
	return false
}

func readlinkAt(dirfd int, name string, size int) (string, error) {
	buf := make([]byte, size+1)
	k, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:k]), nil
}

// metaDiffers reports whether the live entry's metadata differs from n's:
// mode, owner and mtime by its stat; xattrs and flags by the refs' nodes,
// or read from the entry when there are no refs to go by.
func (a *applier) metaDiffers(dirfd int, name string, st *unix.Stat_t, n *tree.Node, rn []*tree.Node) bool {
	if n.Type != tree.Symlink && st.Mode&tree.ModeMask != n.Mode {
		return true
	}
	if st.Uid != n.UID || st.Gid != n.GID || st.Mtim.Sec != n.MtimeSec || st.Mtim.Nsec != int64(n.MtimeNsec) {
		return true
	}
	if same(rn, func(r *tree.Node) bool { return sameMeta(r, n) }) {
		return false
	}
	var live tree.Node
	if err := fsmeta.ReadNode(dirfd, name, st, -1, nil, &live); err != nil {
		return true
	}
	return !sameMeta(&live, n)
}

// sameMeta compares what Apply sets besides content: mode, owner, mtime,
// xattrs and flags.
func sameMeta(a, b *tree.Node) bool {
	if a.Mode != b.Mode || a.UID != b.UID || a.GID != b.GID || a.MtimeSec != b.MtimeSec || a.MtimeNsec != b.MtimeNsec || a.Flags != b.Flags || len(a.Xattrs) != len(b.Xattrs) {
		return false
	}
	for i := range a.Xattrs {
		if a.Xattrs[i].Name != b.Xattrs[i].Name || string(a.Xattrs[i].Value) != string(b.Xattrs[i].Value) {
			return false
		}
	}
	return true
}

// create writes node n at p in d under a temporary name and renames it
// over whatever is there: files through a writer, the rest at once.
// exists says whether an entry is there to replace.
func (a *applier) create(d *dirHandle, p string, n *tree.Node, rn []*tree.Node, exists bool) {
	if a.opts.DryRun {
		return
	}
	if n.Type == tree.File {
		t := &applyTask{dir: d.ref(), name: n.Name, path: p, node: *n, refs: rn, exists: exists}
		select {
		case a.files <- t:
		case <-a.ctx.Done():
			t.dir.unref()
		}
		return
	}
	tmp := tempName()
	var err error
	if n.Type == tree.Symlink {
		err = fsmeta.Symlink(d.fd, tmp, n.Target)
	} else {
		err = fsmeta.Mknod(d.fd, tmp, n)
	}
	if err == nil {
		if err = fsmeta.Apply(d.fd, tmp, -1, n); errors.Is(err, fsmeta.ErrUnsupported) {
			a.warn(p, err)
			err = nil
		}
	}
	if err == nil {
		err = a.renameOver(d.fd, tmp, n.Name, exists)
	}
	if err != nil {
		unix.Unlinkat(d.fd, tmp, 0)
		a.warn(p, err)
	}
}

// renameOver renames tmp over name in dirfd, clearing the flags that
// forbid replacing the old entry if there is one.
func (a *applier) renameOver(dirfd int, tmp, name string, exists bool) error {
	if exists {
		if _, err := fsmeta.ClearFlags(dirfd, name); err != nil && !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
	if err := unix.Renameat(dirfd, tmp, dirfd, name); err != nil {
		return fmt.Errorf("rename into place: %w", err)
	}
	return nil
}

var tmpCounter atomic.Uint64

// tempName returns a name for a temporary entry, unique in this process
// and unlikely to be met in the target.
func tempName() string {
	return fmt.Sprintf("%s%d-%d", tmpPrefix, os.Getpid(), tmpCounter.Add(1))
}
