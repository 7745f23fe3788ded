package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/snapshot/fsmeta"
	"github.com/understudy/understudy/snapshot/selection"
	"github.com/understudy/understudy/snapshot/tree"
)

// dirJob is a directory being snapshotted: its entries, the files still
// being read, and where its tree ID goes when it is saved.
type dirJob struct {
	path     string
	entries  []entry
	files    sync.WaitGroup // one count per file in fileJobs, done when it is read
	fileJobs []*fileJob
	links    []linkRef // hard links whose content comes from their first path
	parent   *tree.Node
	rec      *dirRecord // the cache's record of this directory, or nil
	complete bool       // every name was listed and stat'ed (entries dropped later are checked apart)
}

// entry is one directory entry of a dirJob.
type entry struct {
	node   *tree.Node // nil if reused: prev, the cached encoding, stands for it
	name   string
	prev   []byte  // the cached encoding of this name, nil if the cache has none
	key    statKey // the stat to record in the cache
	reused bool    // taken from the cache as it is
	drop   bool    // left out: could not be read
}

type linkRef struct {
	entry  *entry
	leader *fileJob
}

// fileJob is a regular file: queued for reading, or (content reused from the
// cache) complete from the start.
type fileJob struct {
	dir   *dirJob
	entry *entry
	path  string
	f     *os.File
	st    unix.Stat_t // the version of the file that entry.node describes
	// dirfd is the file's directory (a duplicate descriptor, or -1): the
	// reader looks there whether the name was renamed over during a read.
	dirfd int

	outstanding atomic.Int32 // the reader's own reference plus one per chunk being saved
	done        chan struct{}
	failed      atomic.Bool
	changed     bool // changed while read: recorded, never reused from the cache
}

// close closes what a queued file holds open.
func (fj *fileJob) close() {
	fj.f.Close()
	if fj.dirfd >= 0 {
		unix.Close(fj.dirfd)
		fj.dirfd = -1
	}
}

// inode identifies a file for hard-link detection.
type inode struct{ dev, ino uint64 }

type walker struct {
	ctx     context.Context
	sel     *selection.Selection
	owners  *fsmeta.Owners
	files   chan<- *fileJob
	dirs    chan<- *dirJob
	warn    func(path string, err error)
	links   map[inode]*fileJob // first path of multiply-linked inodes
	linkOth map[inode]string   // first path of multiply-linked non-regular inodes
	stats   *counters
	opened  func(path string) // test hook: called for every file opened for reading
	// repo is the repository's own directory: never taken, or a snapshot
	// of "/" would copy the packs it is writing.
	repo inode
	ls   *lister

	cutoff      int64 // entries changed at or after this second are racy
	force       bool  // --force-read: the cache only classifies
	trustMtime  bool
	checkOwners bool // owner names changed since the cache was written
}

// counters are updated concurrently while a snapshot runs.
type counters struct {
	files, dirs, others, bytesRead, bytesTotal atomic.Int64
	filesNew, filesChanged, filesSame          atomic.Int64
	dirsNew, dirsChanged, dirsSame             atomic.Int64
}

// openDir opens name in dirfd as a directory without following symlinks.
func openDir(dirfd int, name string) (int, error) {
	return unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// openFile opens a regular file for reading, without following symlinks and
// without updating its atime when the kernel lets us.
func openFile(dirfd int, name string) (*os.File, error) {
	flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK
	fd, err := unix.Openat(dirfd, name, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Openat(dirfd, name, flags, 0)
	}
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// readNames returns the entry names of the directory dirfd in byte order.
func readNames(dirfd int) ([]string, error) {
	fd, err := unix.Dup(dirfd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "dir")
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	return names, nil
}

// descends reports whether the walk enters directory p, of class class in a
// parent of class parentClass on device dev: with one-file-system, a mount
// point below a listed path is taken, as rsync -x does, but not entered.
func descends(sel *selection.Selection, parentClass selection.Class, p string, st *unix.Stat_t, dev uint64) bool {
	if !sel.OneFileSystem() || parentClass != selection.InScope || uint64(st.Dev) == dev {
		return true
	}
	// A listed path is InScope whatever its parent: it starts its own device.
	return sel.Child(selection.Outside, p, true) == selection.InScope
}

func isRepo(st *unix.Stat_t, repo inode) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFDIR && (inode{uint64(st.Dev), st.Ino}) == repo
}

// walk snapshots the directory of listing l and queues it for the finisher
// after all its subdirectories. It releases l.
func (w *walker) walk(l *listing, job *dirJob) error {
	w.ls.open(l)
	defer w.ls.release(l)
	if err := w.ctx.Err(); err != nil {
		return err
	}
	if l.err != nil {
		w.warn(l.path, fmt.Errorf("read directory: %w", l.err))
	}
	job.path = l.path
	job.rec = l.rec
	job.complete = l.err == nil && l.class == selection.InScope && !slices.ContainsFunc(l.errs, func(err error) bool { return err != nil })
	// Capacity fixed: pointers to entries stay valid.
	job.entries = make([]entry, 0, len(l.names))
	allIn := l.class == selection.InScope && !w.sel.HasExcludes()
	pos := 0
	for i := range l.names {
		var sub *listing
		if l.subs != nil {
			sub, l.subs[i] = l.subs[i], nil
		}
		if err := w.entry(l, i, sub, &pos, allIn, job); err != nil {
			return err
		}
	}
	return w.send(job)
}

func (w *walker) send(job *dirJob) error {
	select {
	case w.dirs <- job:
		return nil
	case <-w.ctx.Done():
		return w.ctx.Err()
	}
}

func childPath(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}

// cached reports whether the cache entry ce describes st as it is, so that
// its node may be reused without reading anything.
func (w *walker) cached(ce *cacheEntry, st *unix.Stat_t) bool {
	return ce != nil && !w.force && ce.key.unchanged(st) && (!w.checkOwners || w.sameOwners(ce.node))
}

// entry adds entry i of listing l to job, recursing into directories. sub is
// the entry's prefetched listing, if any; entry releases it.
func (w *walker) entry(l *listing, i int, sub *listing, pos *int, allIn bool, job *dirJob) (err error) {
	if sub != nil {
		defer func() {
			if sub != nil {
				w.ls.release(sub)
			}
		}()
	}
	name := l.names[i]
	st := &l.stats[i]
	// The common case first, without building the path: an entry as the
	// cache has it in a directory whose entries are all taken.
	if allIn && l.errs[i] == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Nlink <= 1 {
		if ce := job.rec.find(name, pos); w.cached(ce, st) {
			job.entries = append(job.entries, entry{name: name, prev: ce.node, key: keyOf(st, w.cutoff), reused: true})
			if st.Mode&unix.S_IFMT == unix.S_IFREG {
				w.stats.files.Add(1)
				w.stats.bytesTotal.Add(st.Size)
			} else {
				w.stats.others.Add(1)
			}
			return nil
		}
	}
	p := childPath(l.path, name)
	if err := l.errs[i]; err != nil {
		if l.class == selection.Ancestor && errors.Is(err, unix.ENOENT) {
			w.warn(p, errors.New("listed path does not exist"))
		} else {
			w.warn(p, err)
		}
		return nil
	}
	if isRepo(st, w.repo) {
		return nil
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	childClass := w.sel.Child(l.class, p, isDir)
	if childClass == selection.Outside {
		return nil
	}
	ce := job.rec.find(name, pos)
	job.entries = append(job.entries, entry{name: name, node: &tree.Node{Name: name}, key: keyOf(st, w.cutoff)})
	e := &job.entries[len(job.entries)-1]
	if ce != nil {
		e.prev = ce.node
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		s := sub
		sub = nil
		return w.dir(l, p, st, childClass, job, e, ce, s)
	case unix.S_IFREG:
		return w.file(l.fd, p, st, job, e, ce)
	}
	w.other(l.fd, p, st, job, e, ce)
	return nil
}

// other adds a symlink, device, FIFO or socket.
func (w *walker) other(dirfd int, p string, st *unix.Stat_t, job *dirJob, e *entry, ce *cacheEntry) {
	n := e.node
	w.stats.others.Add(1)
	hit := w.cached(ce, st)
	if hit && st.Nlink <= 1 {
		e.node, e.reused = nil, true
		return
	}
	if !hit || reuseNode(n, ce.node) != nil {
		if err := fsmeta.ReadNode(dirfd, e.name, st, -1, w.owners, n); err != nil {
			w.warn(p, err)
			e.drop = true
			return
		}
	}
	n.LinkTo = ""
	if st.Nlink > 1 {
		key := inode{uint64(st.Dev), st.Ino}
		if first, ok := w.linkOth[key]; ok {
			n.LinkTo = relPath(job.path, first)
		} else {
			w.linkOth[key] = p
		}
	}
}

func (w *walker) dir(parent *listing, p string, st *unix.Stat_t, class selection.Class, job *dirJob, e *entry, ce *cacheEntry, sub *listing) error {
	n := e.node
	if sub == nil { // not entered: a mount point, opened for its metadata
		sub = newListing(parent, e.name, p, class, uint64(st.Dev))
		sub.claimed.Store(true)
		close(sub.done)
		sub.fd, sub.openErr = openDir(parent.fd, e.name)
	} else {
		w.ls.open(sub)
	}
	if sub.openErr != nil {
		w.ls.release(sub)
		w.warn(p, sub.openErr)
		e.drop = true
		return nil
	}
	if !w.cached(ce, st) || reuseNode(n, ce.node) != nil {
		if err := fsmeta.ReadNode(parent.fd, e.name, st, sub.fd, w.owners, n); err != nil {
			w.ls.release(sub)
			w.warn(p, err)
			e.drop = true
			return nil
		}
	}
	w.stats.dirs.Add(1)
	child := &dirJob{parent: n}
	if !descends(w.sel, parent.class, p, st, parent.dev) {
		w.ls.release(sub)
		child.path = p
		return w.send(child)
	}
	return w.walk(sub, child)
}

func (w *walker) file(dirfd int, p string, st *unix.Stat_t, job *dirJob, e *entry, ce *cacheEntry) error {
	n := e.node
	hit := w.cached(ce, st)
	linked := st.Nlink > 1
	key := inode{uint64(st.Dev), st.Ino}
	w.stats.files.Add(1)
	if linked {
		if leader, ok := w.links[key]; ok {
			if !hit || reuseNode(n, ce.node) != nil {
				if err := fsmeta.ReadNode(dirfd, e.name, st, -1, w.owners, n); err != nil {
					w.warn(p, err)
					e.drop = true
					return nil
				}
			}
			n.LinkTo = relPath(job.path, leader.path)
			job.links = append(job.links, linkRef{entry: e, leader: leader})
			return nil
		}
	}
	w.stats.bytesTotal.Add(st.Size)
	if hit && !linked {
		e.node, e.reused = nil, true
		return nil
	}
	fj := &fileJob{dir: job, entry: e, path: p, st: *st, dirfd: -1, done: make(chan struct{})}
	if hit && reuseNode(n, ce.node) == nil {
		n.LinkTo = "" // the first link in this snapshot
		w.links[key] = fj
		close(fj.done)
		return nil
	}
	f, err := openFile(dirfd, e.name)
	if err != nil {
		w.warn(p, err)
		e.drop = true
		return nil
	}
	if w.opened != nil {
		w.opened(p)
	}
	if err := fsmeta.ReadNode(dirfd, e.name, st, int(f.Fd()), w.owners, n); err != nil {
		f.Close()
		w.warn(p, err)
		e.drop = true
		return nil
	}
	if linked {
		w.links[key] = fj
	}
	if ce != nil && w.trustMtime && !w.force && ce.key.sameData(st) {
		// Only the ctime moved: the metadata is read again, the content
		// is trusted to be what it was.
		if prev, err := tree.DecodeNode(ce.node); err == nil && prev.Type == tree.File {
			f.Close()
			n.Content = prev.Content
			close(fj.done)
			return nil
		}
	}
	fj.f = f
	if !linked {
		// Without it a replaced file is only read again as it was; a
		// hard link is always read from the inode its other paths name.
		if fd, err := unix.FcntlInt(uintptr(dirfd), unix.F_DUPFD_CLOEXEC, 0); err == nil {
			fj.dirfd = fd
		}
	}
	fj.outstanding.Store(1)
	job.files.Add(1)
	job.fileJobs = append(job.fileJobs, fj)
	select {
	case w.files <- fj:
		return nil
	case <-w.ctx.Done():
		fj.close()
		return w.ctx.Err()
	}
}

// relPath returns the path of target relative to directory dir; both are
// absolute and clean.
func relPath(dir, target string) string {
	dparts := splitPath(dir)
	tparts := splitPath(target)
	common := 0
	for common < len(dparts) && common < len(tparts)-1 && dparts[common] == tparts[common] {
		common++
	}
	var b strings.Builder
	for range dparts[common:] {
		b.WriteString("../")
	}
	b.WriteString(strings.Join(tparts[common:], "/"))
	return b.String()
}

func splitPath(p string) []string {
	p = strings.Trim(p, "/")
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

// ResolveLink returns the absolute path that a LinkTo value of a node in
// directory dir names, or false if it is malformed or leaves the root.
func ResolveLink(dir, linkTo string) (string, bool) {
	if linkTo == "" || strings.HasPrefix(linkTo, "/") || strings.IndexByte(linkTo, 0) >= 0 {
		return "", false
	}
	parts := splitPath(dir)
	for _, c := range strings.Split(linkTo, "/") {
		switch c {
		case "..":
			if len(parts) == 0 {
				return "", false
			}
			parts = parts[:len(parts)-1]
		case "", ".":
			return "", false
		default:
			parts = append(parts, c)
		}
	}
	if len(parts) == 0 {
		return "", false
	}
	return path.Join(append([]string{"/"}, parts...)...), true
}
