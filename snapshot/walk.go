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

	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot/fsmeta"
	"github.com/understudy/understudy/snapshot/selection"
	"github.com/understudy/understudy/snapshot/tree"
)

// dirJob is a directory being snapshotted: its nodes, the files still being
// read, and where its tree ID goes when it is saved. The slices are indexed
// like nodes.
type dirJob struct {
	path     string
	nodes    []tree.Node // capacity fixed at creation: pointers into it stay valid
	drop     []bool      // nodes left out (could not be read)
	reuse    [][]byte    // the cached encoding, taken as it is (the node holds only its name)
	prev     [][]byte    // the cached encoding of this name, nil if the cache has none
	keys     []statKey   // the stat to record in the cache
	files    sync.WaitGroup
	fileJobs []*fileJob
	links    []linkRef // hard links whose content comes from their first path
	parent   *tree.Node
	rec      *dirRecord // the cache's record of this directory, or nil
}

type linkRef struct {
	idx    int
	node   *tree.Node
	leader *fileJob
}

// fileJob is a regular file: queued for reading, or (content reused from the
// cache) complete from the start.
type fileJob struct {
	dir  *dirJob
	idx  int
	node *tree.Node
	path string
	f    *os.File
	st   unix.Stat_t

	outstanding atomic.Int32 // the reader's own reference plus one per chunk being saved
	done        chan struct{}
	failed      atomic.Bool
	changed     bool // changed while read: recorded, never reused from the cache
}

// inode identifies a file for hard-link detection.
type inode struct{ dev, ino uint64 }

// listing is one directory's names in byte order with their lstat and the
// cache's record, filled by a lister ahead of the walker or by the walker
// itself, whichever claims it first.
type listing struct {
	path  string
	fd    int // owned by the walker, which opened it
	class selection.Class
	slot  bool // holds one of the walker's prefetch slots

	claimed atomic.Bool
	done    chan struct{}
	names   []string
	stats   []unix.Stat_t
	errs    []error
	err     error // reading the directory failed
	rec     *dirRecord
}

func newListing(p string, fd int, class selection.Class) *listing {
	return &listing{path: p, fd: fd, class: class, done: make(chan struct{})}
}

// maxPrefetch bounds the directories listed ahead of the walker, each with
// an open descriptor and its names and stats: at most maxPrefetch times the
// widest directory, besides the directories on the walker's own stack.
const maxPrefetch = 64

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

	cache      *index.Cache // records of the last snapshot, nil to read everything
	cutoff     int64        // entries changed at or after this second are racy
	force      bool         // --force-read: the cache only classifies
	trustMtime bool

	prefetch chan<- *listing // to the listers
	slots    chan struct{}   // prefetch slots in use
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

// lister fills prefetched listings until the queue closes.
func (w *walker) lister(queue <-chan *listing) {
	for l := range queue {
		if l.claimed.CompareAndSwap(false, true) {
			w.fill(l)
		}
	}
}

// obtain returns once l is filled, filling it here if no lister has begun.
func (w *walker) obtain(l *listing) {
	if l.claimed.CompareAndSwap(false, true) {
		w.fill(l)
	}
	<-l.done
}

func (w *walker) fill(l *listing) {
	defer close(l.done)
	if l.class == selection.Ancestor {
		l.names = w.sel.Needed(l.path)
		slices.Sort(l.names)
	} else {
		l.names, l.err = readNames(l.fd)
	}
	l.stats = make([]unix.Stat_t, len(l.names))
	l.errs = make([]error, len(l.names))
	for i, name := range l.names {
		l.stats[i], l.errs[i] = fsmeta.Lstat(l.fd, name)
	}
	if w.cache != nil && len(l.path) <= index.MaxCacheKey {
		// A record that cannot be read is a miss: the directory is read.
		if raw, err := w.cache.Get([]byte(l.path)); err == nil && raw != nil {
			l.rec, _ = decodeRecord(raw)
		}
	}
}

// release gives back l's descriptor and slot once no lister uses it.
func (w *walker) release(l *listing) {
	if !l.claimed.CompareAndSwap(false, true) {
		<-l.done
	}
	unix.Close(l.fd)
	if l.slot {
		<-w.slots
	}
}

// descends reports whether the walk enters directory p, of class class in a
// parent of class parentClass on device dev: with one-file-system, a mount
// point below a listed path is taken, as rsync -x does, but not entered.
func (w *walker) descends(parentClass selection.Class, p string, st *unix.Stat_t, dev uint64) bool {
	if !w.sel.OneFileSystem() || parentClass != selection.InScope || uint64(st.Dev) == dev {
		return true
	}
	// A listed path is InScope whatever its parent: it starts its own device.
	return w.sel.Child(selection.Outside, p, true) == selection.InScope
}

func (w *walker) isRepo(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFDIR && (inode{uint64(st.Dev), st.Ino}) == w.repo
}

// walk snapshots the directory of listing l, on device dev, and queues it
// for the finisher after all its subdirectories. It closes l's descriptor.
func (w *walker) walk(l *listing, dev uint64, job *dirJob) error {
	w.obtain(l)
	defer w.release(l)
	if err := w.ctx.Err(); err != nil {
		return err
	}
	if l.err != nil {
		w.warn(l.path, fmt.Errorf("read directory: %w", l.err))
	}
	job.path = l.path
	job.rec = l.rec
	n := len(l.names)
	job.nodes = make([]tree.Node, 0, n)
	job.drop = make([]bool, 0, n)
	job.reuse = make([][]byte, 0, n)
	job.prev = make([][]byte, 0, n)
	job.keys = make([]statKey, 0, n)

	// List the subdirectories ahead, as far as the slots allow.
	subs := make([]*listing, n)
	defer func() {
		for _, s := range subs {
			if s != nil {
				w.release(s)
			}
		}
	}()
prefetch:
	for i, name := range l.names {
		st := &l.stats[i]
		if l.errs[i] != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR || w.isRepo(st) {
			continue
		}
		p := childPath(l.path, name)
		class := w.sel.Child(l.class, p, true)
		if class == selection.Outside || !w.descends(l.class, p, st, dev) {
			continue
		}
		select {
		case w.slots <- struct{}{}:
		default:
			break prefetch
		}
		fd, err := openDir(l.fd, name)
		if err != nil {
			<-w.slots
			continue // entry reports it
		}
		subs[i] = newListing(p, fd, class)
		subs[i].slot = true
		w.prefetch <- subs[i] // never blocks: the queue holds as many as there are slots
	}

	pos := 0
	for i := range l.names {
		if err := w.entry(l, i, &subs[i], &pos, dev, job); err != nil {
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
	return ce != nil && !w.force && ce.key.unchanged(st) && w.sameOwners(ce.node)
}

// entry adds entry i of listing l to job, recursing into directories. sub is
// the entry's prefetched listing, if any; entry takes it over.
func (w *walker) entry(l *listing, i int, sub **listing, pos *int, dev uint64, job *dirJob) error {
	name := l.names[i]
	p := childPath(l.path, name)
	st := l.stats[i]
	if err := l.errs[i]; err != nil {
		if l.class == selection.Ancestor && errors.Is(err, unix.ENOENT) {
			w.warn(p, errors.New("listed path does not exist"))
		} else {
			w.warn(p, err)
		}
		return nil
	}
	if w.isRepo(&st) {
		return nil
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	childClass := w.sel.Child(l.class, p, isDir)
	if childClass == selection.Outside {
		return nil
	}
	ce := job.rec.find(name, pos)
	job.nodes = append(job.nodes, tree.Node{Name: name})
	job.drop = append(job.drop, false)
	job.reuse = append(job.reuse, nil)
	job.prev = append(job.prev, nil)
	job.keys = append(job.keys, keyOf(&st, w.cutoff))
	idx := len(job.nodes) - 1
	if ce != nil {
		job.prev[idx] = ce.node
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		s := *sub
		*sub = nil
		return w.dir(l, p, &st, l.class, childClass, dev, job, idx, ce, s)
	case unix.S_IFREG:
		return w.file(l.fd, p, name, &st, job, idx, ce)
	}
	w.other(l.fd, p, name, &st, job, idx, ce)
	return nil
}

// other adds a symlink, device, FIFO or socket.
func (w *walker) other(dirfd int, p, name string, st *unix.Stat_t, job *dirJob, idx int, ce *cacheEntry) {
	n := &job.nodes[idx]
	w.stats.others.Add(1)
	hit := w.cached(ce, st)
	if hit && st.Nlink <= 1 {
		job.reuse[idx] = ce.node
		return
	}
	if !hit || reuseNode(n, ce.node) != nil {
		if err := fsmeta.ReadNode(dirfd, name, st, -1, w.owners, n); err != nil {
			w.warn(p, err)
			job.drop[idx] = true
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

func (w *walker) dir(parent *listing, p string, st *unix.Stat_t, parentClass, class selection.Class, dev uint64, job *dirJob, idx int, ce *cacheEntry, sub *listing) error {
	n := &job.nodes[idx]
	name := n.Name
	if sub == nil {
		fd, err := openDir(parent.fd, name)
		if err != nil {
			w.warn(p, err)
			job.drop[idx] = true
			return nil
		}
		sub = newListing(p, fd, class)
	}
	// The node describes the directory that was opened, even if another
	// took its name since the listing.
	var fst unix.Stat_t
	if err := unix.Fstat(sub.fd, &fst); err != nil {
		w.release(sub)
		w.warn(p, err)
		job.drop[idx] = true
		return nil
	}
	job.keys[idx] = keyOf(&fst, w.cutoff)
	if !w.cached(ce, &fst) || reuseNode(n, ce.node) != nil {
		if err := fsmeta.ReadNode(parent.fd, name, &fst, sub.fd, w.owners, n); err != nil {
			w.release(sub)
			w.warn(p, err)
			job.drop[idx] = true
			return nil
		}
	}
	w.stats.dirs.Add(1)
	child := &dirJob{parent: n}
	if !w.descends(parentClass, p, &fst, dev) {
		w.release(sub)
		child.path = p
		return w.send(child)
	}
	return w.walk(sub, uint64(fst.Dev), child)
}

func (w *walker) file(dirfd int, p, name string, st *unix.Stat_t, job *dirJob, idx int, ce *cacheEntry) error {
	n := &job.nodes[idx]
	hit := w.cached(ce, st)
	linked := st.Nlink > 1
	key := inode{uint64(st.Dev), st.Ino}
	w.stats.files.Add(1)
	if linked {
		if leader, ok := w.links[key]; ok {
			if !hit || reuseNode(n, ce.node) != nil {
				if err := fsmeta.ReadNode(dirfd, name, st, -1, w.owners, n); err != nil {
					w.warn(p, err)
					job.drop[idx] = true
					return nil
				}
			}
			n.LinkTo = relPath(job.path, leader.path)
			job.links = append(job.links, linkRef{idx: idx, node: n, leader: leader})
			return nil
		}
	}
	w.stats.bytesTotal.Add(st.Size)
	if hit && !linked {
		job.reuse[idx] = ce.node
		return nil
	}
	fj := &fileJob{dir: job, idx: idx, node: n, path: p, st: *st, done: make(chan struct{})}
	if hit && reuseNode(n, ce.node) == nil {
		n.LinkTo = "" // the first link in this snapshot
		w.links[key] = fj
		close(fj.done)
		return nil
	}
	f, err := openFile(dirfd, name)
	if err != nil {
		w.warn(p, err)
		job.drop[idx] = true
		return nil
	}
	if w.opened != nil {
		w.opened(p)
	}
	if err := fsmeta.ReadNode(dirfd, name, st, int(f.Fd()), w.owners, n); err != nil {
		f.Close()
		w.warn(p, err)
		job.drop[idx] = true
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
	fj.outstanding.Store(1)
	job.files.Add(1)
	job.fileJobs = append(job.fileJobs, fj)
	select {
	case w.files <- fj:
		return nil
	case <-w.ctx.Done():
		f.Close()
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
