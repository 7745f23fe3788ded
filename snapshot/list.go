package snapshot

import (
	"container/heap"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot/fsmeta"
	"github.com/understudy/understudy/snapshot/selection"
)

// listing is one directory's names in byte order with their lstat and the
// cache's record. A lister fills it ahead of the walker, or the walker
// itself does, whichever claims it first.
type listing struct {
	path   string
	parent *listing // its descriptor opens this one; nil for the root
	name   string
	class  selection.Class
	dev    uint64 // the directory's device
	// asCached: the directory's stat is as the cache recorded it, so its
	// names are those of its record, if that is complete.
	asCached bool

	claimed atomic.Bool
	done    chan struct{} // closed when filled (or the open failed)
	slot    bool          // filled ahead: counts against maxAhead until obtained

	fd      int // -1 until opened; closed by release
	openErr error
	names   []string
	stats   []unix.Stat_t
	errs    []error
	err     error // reading the directory failed
	rec     *dirRecord
	subs    []*listing // by entry: the subdirectories the walk will enter
}

func newListing(parent *listing, name, p string, class selection.Class, dev uint64) *listing {
	return &listing{path: p, parent: parent, name: name, class: class, dev: dev, fd: -1, done: make(chan struct{})}
}

// maxAhead and maxAheadEntries bound the directories filled ahead of the
// walker, each with an open descriptor and its names and stats (about 200
// bytes an entry): at most maxAhead directories, and no new one once they
// hold maxAheadEntries entries, so at most 16384 entries and one more
// directory; besides that, the directories on the walker's own stack.
const (
	maxAhead        = 64
	maxAheadEntries = 16384
)

// lister lists directories: the walker's own, and on other goroutines
// those it will enter next. Filling a directory makes a listing for each
// subdirectory the walk will enter and queues it; listers take the queued
// listing that comes first in the walker's depth-first order, so they fill
// exactly the directories the walker needs next, up to maxAhead ahead.
type lister struct {
	sel   *selection.Selection
	cache *index.Cache // nil: no records
	repo  inode
	// trustListings: the cache was written with this selection and may be
	// trusted; an unchanged directory is not read again.
	trustListings bool

	mu           sync.Mutex
	cond         sync.Cond
	queue        walkOrder
	ahead        int // listings filled by listers and not yet obtained
	aheadEntries int // their entries
	closed       bool
}

func newLister(sel *selection.Selection, cache *index.Cache, repo inode) *lister {
	ls := &lister{sel: sel, cache: cache, repo: repo}
	ls.cond.L = &ls.mu
	return ls
}

// walkOrder is a heap of listings, the first in depth-first order on top.
type walkOrder []*listing

func (q walkOrder) Len() int           { return len(q) }
func (q walkOrder) Less(i, j int) bool { return beforeInWalk(q[i].path, q[j].path) }
func (q walkOrder) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *walkOrder) Push(x any)        { *q = append(*q, x.(*listing)) }
func (q *walkOrder) Pop() any {
	old := *q
	l := old[len(old)-1]
	*q = old[:len(old)-1]
	return l
}

// beforeInWalk reports whether the walk, depth-first with names in byte
// order, reaches path a before path b: byte order with '/' lowest.
func beforeInWalk(a, b string) bool {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			x, y := a[i], b[i]
			if x == '/' {
				x = 0
			}
			if y == '/' {
				y = 0
			}
			return x < y
		}
	}
	return len(a) < len(b)
}

// run fills queued listings until stop.
func (ls *lister) run() {
	for {
		ls.mu.Lock()
		for (len(ls.queue) == 0 || ls.ahead >= maxAhead || ls.aheadEntries >= maxAheadEntries) && !ls.closed {
			ls.cond.Wait()
		}
		if ls.closed {
			ls.mu.Unlock()
			return
		}
		l := heap.Pop(&ls.queue).(*listing)
		if !l.claimed.CompareAndSwap(false, true) {
			ls.mu.Unlock()
			continue // the walker took it, or it was released
		}
		l.slot = true
		ls.ahead++
		ls.mu.Unlock()
		ls.fill(l)
		ls.mu.Lock()
		ls.aheadEntries += len(l.names)
		ls.mu.Unlock()
	}
}

func (ls *lister) stop() {
	ls.mu.Lock()
	ls.closed = true
	ls.cond.Broadcast()
	ls.mu.Unlock()
}

// open returns once l is filled, filling it here if no lister has begun.
// Check l.openErr before using it.
func (ls *lister) open(l *listing) {
	if l.claimed.CompareAndSwap(false, true) {
		ls.fill(l)
		return
	}
	<-l.done
	ls.behind(l)
}

// behind takes a listing filled ahead out of the count, once the walker has
// it (or it is released).
func (ls *lister) behind(l *listing) {
	if !l.slot {
		return
	}
	l.slot = false
	ls.mu.Lock()
	ls.ahead--
	ls.aheadEntries -= len(l.names)
	ls.cond.Broadcast()
	ls.mu.Unlock()
}

func (ls *lister) fill(l *listing) {
	defer close(l.done)
	if l.fd < 0 {
		if l.fd, l.openErr = openDir(l.parent.fd, l.name); l.openErr != nil {
			l.fd = -1
			return
		}
	}
	if ls.cache != nil && len(l.path) <= index.MaxCacheKey {
		// A record that cannot be read is a miss: the directory is read.
		if raw, err := ls.cache.Get([]byte(l.path)); err == nil && raw != nil {
			l.rec, _ = decodeRecord(raw)
		}
	}
	switch {
	case l.class == selection.Ancestor:
		l.names = ls.sel.Needed(l.path)
		slices.Sort(l.names)
	case l.asCached && l.rec != nil && l.rec.complete:
		// Adding, removing or renaming an entry moves the directory's
		// ctime: its names are as recorded.
		l.names = l.rec.names()
	default:
		l.names, l.err = readNames(l.fd)
	}
	l.stats = make([]unix.Stat_t, len(l.names))
	l.errs = make([]error, len(l.names))
	for i, name := range l.names {
		l.stats[i], l.errs[i] = fsmeta.Lstat(l.fd, name)
	}
	ls.queueSubdirs(l)
}

// queueSubdirs makes a listing for each subdirectory of l that the walk
// will enter, and queues them for the listers.
func (ls *lister) queueSubdirs(l *listing) {
	var subs []*listing
	pos := 0
	for i, name := range l.names {
		st := &l.stats[i]
		if l.errs[i] != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR || isRepo(st, ls.repo) {
			continue
		}
		p := childPath(l.path, name)
		class := ls.sel.Child(l.class, p, true)
		if class == selection.Outside || !descends(ls.sel, l.class, p, st, l.dev) {
			continue
		}
		if l.subs == nil {
			l.subs = make([]*listing, len(l.names))
		}
		sub := newListing(l, name, p, class, uint64(st.Dev))
		if ls.trustListings {
			ce := l.rec.find(name, &pos)
			sub.asCached = ce != nil && ce.key.unchanged(st)
		}
		l.subs[i] = sub
		subs = append(subs, sub)
	}
	if len(subs) == 0 {
		return
	}
	ls.mu.Lock()
	for _, sub := range subs {
		heap.Push(&ls.queue, sub)
	}
	ls.cond.Broadcast()
	ls.mu.Unlock()
}

// release gives back l's descriptor, and those of the listings below it
// that the walk did not take, once no lister uses them.
func (ls *lister) release(l *listing) {
	if !l.claimed.CompareAndSwap(false, true) {
		<-l.done
	}
	for _, s := range l.subs {
		if s != nil {
			ls.release(s)
		}
	}
	if l.fd >= 0 {
		unix.Close(l.fd)
		l.fd = -1
	}
	ls.behind(l)
}
