package snapshot

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot/fsmeta"
	"github.com/understudy/understudy/snapshot/selection"
	"github.com/understudy/understudy/snapshot/tree"
)

// Queue bounds of the pipeline (see the package doc). With the default 1 MiB
// maximum chunk, chunk buffers in flight are at most
// (saveQueue + savers + readers) × 1 MiB = 8 MiB on two cores.
const (
	fileQueue = 64
	saveQueue = 4
	dirQueue  = 64
)

// Options say what to snapshot and how.
type Options struct {
	// Root is the directory that stands for "/" in the snapshot: "/" for a
	// host, or the mount point of another root filesystem.
	Root      string
	Selection *selection.Selection
	Set       string
	Host      string
	Tags      []string
	Time      time.Time // snapshot time; zero means now
	Parent    *index.ID
	// Readers is the number of files read at once: several for SSDs and
	// many small files, one for a single spinning disk. 0 means 2.
	Readers int
	// ForceRead reads every file, trusting nothing in the change-detection
	// cache; the cache still tells which files are new or changed.
	ForceRead bool
	// TrustMtime: a file whose ctime moved but whose inode, size and mtime
	// did not has its metadata read again but its content taken from the
	// cache. Off by default, since tools can set an mtime back.
	TrustMtime bool
	// ReadAttempts is how often a file that changes while it is read is
	// read before it is a warning, changed during the read. 0 means 3.
	ReadAttempts int
	// Warn is called for every path that cannot be read (optional).
	Warn func(path string, err error)
	// Progress is called about once a second with the counts so far (optional).
	Progress func(Stats)
	// opened is a test hook called for every file opened for reading.
	opened func(path string)
	// betweenChunks is a test hook called after each chunk a reader cuts,
	// with the attempt (from 1) and the offset reached.
	betweenChunks func(path string, attempt int, off int64)
	// now is a test clock for the racy cutoff; nil means time.Now.
	now func() time.Time
}

// Result of a snapshot.
type Result struct {
	ID     index.ID
	Record *Record
}

// Take snapshots the selected paths into repo, which must be open
// exclusively. Paths that cannot be read are listed in the record's
// warnings; the snapshot is still written.
func Take(ctx context.Context, repo *chunkstore.Repo, opts Options) (*Result, error) {
	start := time.Now()
	if opts.Time.IsZero() {
		opts.Time = start
	}
	if opts.Root == "" {
		opts.Root = "/"
	}
	readers := opts.Readers
	if readers <= 0 {
		readers = 2
	}
	rootfd, err := unix.Open(opts.Root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open root %s: %w", opts.Root, err)
	}
	defer unix.Close(rootfd)
	var rootSt unix.Stat_t
	if err := unix.Fstat(rootfd, &rootSt); err != nil {
		return nil, fmt.Errorf("stat root %s: %w", opts.Root, err)
	}

	var repoSt unix.Stat_t
	if err := unix.Stat(repo.Dir(), &repoSt); err != nil {
		return nil, fmt.Errorf("stat repository: %w", err)
	}

	var warnMu sync.Mutex
	var warnings []Warning
	warn := func(p string, err error) {
		warnMu.Lock()
		warnings = append(warnings, Warning{Path: displayPath(p), Error: err.Error()})
		warnMu.Unlock()
		if opts.Warn != nil {
			opts.Warn(p, err)
		}
	}

	cache, err := repo.Index().OpenCache(opts.Set)
	if err != nil {
		return nil, err
	}
	owners := fsmeta.NewOwners()
	meta := cacheMeta{root: opts.Root, owners: owners.Digest(), selection: selectionDigest(opts.Selection)}
	readCache, prev := usableCache(repo.Index(), cache, meta.root)
	checkOwners := prev.owners != meta.owners
	sameSelection := prev.selection == meta.selection
	repoIno := inode{uint64(repoSt.Dev), repoSt.Ino}

	up := repo.NewUploader()
	defer up.Close()
	cfg := repo.Config()
	bufs := newBufPool(int(cfg.ChunkMax))
	var stats counters

	g, gctx := errgroup.WithContext(ctx)
	files := make(chan *fileJob, fileQueue)
	saves := make(chan *saveJob, saveQueue)
	dirs := make(chan *dirJob, dirQueue)
	records := make(chan index.CacheRecord, dirQueue)

	rootNode := &tree.Node{}
	if err := fsmeta.ReadNode(-1, "", &rootSt, rootfd, owners, rootNode); err != nil {
		return nil, fmt.Errorf("root %s: %w", opts.Root, err)
	}
	listfd, err := unix.Dup(rootfd)
	if err != nil {
		return nil, err
	}
	rootList := newListing(nil, "", "/", opts.Selection.Root(), uint64(rootSt.Dev))
	rootList.fd = listfd
	cutoff := start.Unix() - racyWindow
	if opts.now != nil {
		cutoff = opts.now().Unix() - racyWindow
	}

	g.Go(func() error {
		ls := newLister(opts.Selection, readCache, repoIno)
		ls.trustListings = readCache != nil && sameSelection && !opts.ForceRead
		var listers sync.WaitGroup
		for range runtime.GOMAXPROCS(0) {
			listers.Go(ls.run)
		}
		defer listers.Wait()
		defer ls.stop()
		defer close(dirs)
		defer close(files)
		w := &walker{ctx: gctx, sel: opts.Selection, owners: owners, files: files, dirs: dirs,
			warn: warn, links: make(map[inode]*fileJob), linkOth: make(map[inode]string), stats: &stats, opened: opts.opened,
			repo: repoIno, ls: ls, cutoff: cutoff, force: opts.ForceRead, trustMtime: opts.TrustMtime,
			checkOwners: checkOwners}
		return w.walk(rootList, &dirJob{parent: rootNode})
	})
	var readWG sync.WaitGroup
	for range readers {
		readWG.Add(1)
		g.Go(func() error {
			defer readWG.Done()
			r := &reader{ctx: gctx, cfg: cfg, up: up, saves: saves, bufs: bufs, warn: warn, stats: &stats,
				owners: owners, attempts: opts.ReadAttempts, betweenChunks: opts.betweenChunks}
			err := r.run(files)
			if err != nil {
				for fj := range files { // unblock the walker
					fj.close()
				}
			}
			return err
		})
	}
	g.Go(func() error {
		readWG.Wait()
		close(saves)
		return nil
	})
	for range runtime.GOMAXPROCS(0) {
		g.Go(func() error { return saver(gctx, up, saves, bufs) })
	}
	fin := &finisher{ctx: gctx, up: up, records: records, keep: make(map[string]struct{}),
		stats: &stats, cutoff: cutoff, reuse: readCache != nil && !opts.ForceRead}
	g.Go(func() error {
		defer close(records)
		return fin.run(dirs)
	})
	g.Go(func() error { return cacheWriter(gctx, cache, records) })
	if opts.Progress != nil {
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					opts.Progress(stats.snapshot(up, start))
				case <-stop:
					return
				}
			}
		}()
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	rootDir, err := EncodeRootDir(*rootNode)
	if err != nil {
		return nil, err
	}
	rec := &Record{
		Version:       RecordVersion,
		Time:          opts.Time,
		Root:          rootNode.Subtree,
		RootDir:       rootDir,
		Set:           opts.Set,
		Host:          opts.Host,
		Paths:         opts.Selection.Paths(),
		Excludes:      opts.Selection.Excludes(),
		OneFileSystem: opts.Selection.OneFileSystem(),
		Tags:          opts.Tags,
		Parent:        opts.Parent,
		Warnings:      warnings,
	}
	// The stats count every data and tree blob (they are counted when
	// saved); the record's own blob is not in them. The returned record is
	// exactly the stored one.
	rec.Stats = stats.snapshot(up, start)
	data, err := rec.Encode()
	if err != nil {
		return nil, err
	}
	id, err := up.Flush(data)
	if err != nil {
		return nil, err
	}
	keep := func(key []byte) bool { _, ok := fin.keep[string(key)]; return ok }
	if err := cache.Commit(id, meta.encode(), keep); err != nil {
		return nil, fmt.Errorf("snapshot %s is saved, but its change cache is not: %w", id.Short(), err)
	}
	return &Result{ID: id, Record: rec}, nil
}

func (c *counters) snapshot(up *chunkstore.Uploader, start time.Time) Stats {
	return Stats{
		Files:           c.files.Load(),
		FilesNew:        c.filesNew.Load(),
		FilesChanged:    c.filesChanged.Load(),
		FilesUnmodified: c.filesSame.Load(),
		Dirs:            c.dirs.Load(),
		DirsNew:         c.dirsNew.Load(),
		DirsChanged:     c.dirsChanged.Load(),
		DirsUnmodified:  c.dirsSame.Load(),
		Others:          c.others.Load(),
		BytesRead:       c.bytesRead.Load(),
		BytesTotal:      c.bytesTotal.Load(),
		BlobsAdded:      up.BlobsAdded.Load(),
		BytesAdded:      up.BytesAdded.Load(),
		RawAdded:        up.RawAdded.Load(),
		DurationSec:     time.Since(start).Seconds(),
	}
}

// displayPath shows a path as it is when it is valid UTF-8 without control
// characters, else with Go escapes.
func displayPath(p string) string {
	q := strconv.Quote(p)
	if q[1:len(q)-1] == p {
		return p
	}
	return q
}

// usableCache returns the cache for reading, with the meta it was written
// with, if its records describe a snapshot still in the repository, of the
// same root; else nil: then every file is read.
func usableCache(idx *index.DB, c *index.Cache, root string) (*index.Cache, cacheMeta) {
	snap, raw, ok := c.Previous()
	if !ok {
		return nil, cacheMeta{}
	}
	meta, ok := parseCacheMeta(raw)
	if !ok || meta.root != root {
		return nil, cacheMeta{}
	}
	if _, ok, err := idx.SnapshotRecord(snap); err != nil || !ok {
		return nil, cacheMeta{}
	}
	return c, meta
}

// finisher saves the tree of each directory once its files are read, and
// its cache record. The walker sends directories in post-order, so a
// directory's subdirectories are saved, and their IDs filled into its nodes,
// before it.
type finisher struct {
	ctx     context.Context
	up      *chunkstore.Uploader
	records chan<- index.CacheRecord
	keep    map[string]struct{} // directories whose record is valid after this snapshot
	stats   *counters
	cutoff  int64
	reuse   bool // a directory whose entries are all as cached keeps its tree ID
}

func (f *finisher) run(dirs <-chan *dirJob) error {
	for job := range dirs {
		if len(job.fileJobs) > 0 {
			done := make(chan struct{})
			go func() { job.files.Wait(); close(done) }()
			select {
			case <-done:
			case <-f.ctx.Done():
				for range dirs {
				}
				return f.ctx.Err()
			}
		}
		if err := f.finish(job); err != nil {
			for range dirs {
			}
			return err
		}
	}
	return nil
}

func (f *finisher) finish(job *dirJob) error {
	for _, l := range job.links {
		select {
		case <-l.leader.done:
		case <-f.ctx.Done():
			return f.ctx.Err()
		}
		if l.leader.failed.Load() { // its first link could not be read either
			l.entry.drop = true
			continue
		}
		l.entry.node.Content = l.leader.entry.node.Content
	}
	for _, fj := range job.fileJobs {
		e := fj.entry
		if fj.failed.Load() {
			e.drop = true
			continue
		}
		e.key = keyOf(&fj.st, f.cutoff)
		e.key.racy = e.key.racy || fj.changed
	}

	// Compare every node with the cache's: the counts, and whether the
	// directory is exactly as cached.
	encs := make([][]byte, len(job.entries))
	same := f.reuse && job.rec != nil
	kept := 0
	for i := range job.entries {
		e := &job.entries[i]
		if e.drop {
			continue
		}
		kept++
		eq := e.reused
		if eq {
			encs[i] = e.prev
		} else {
			var err error
			if encs[i], eq, err = equalNode(e.node, e.prev); err != nil {
				return fmt.Errorf("encode %s: %w", displayPath(childPath(job.path, e.name)), err)
			}
		}
		f.count(e, encs[i], eq)
		same = same && eq
	}
	same = same && kept == len(job.rec.entries)

	var id index.ID
	if same {
		id = job.rec.tree
	} else {
		t := &tree.Tree{Nodes: make([]tree.Node, 0, kept)}
		for i := range job.entries {
			e := &job.entries[i]
			if e.drop {
				continue
			}
			if e.reused {
				e.node = &tree.Node{Name: e.name}
				if err := reuseNode(e.node, e.prev); err != nil {
					return fmt.Errorf("%s: %w", displayPath(childPath(job.path, e.name)), err)
				}
			}
			t.Nodes = append(t.Nodes, *e.node)
		}
		data, err := tree.Encode(t)
		if err != nil {
			return fmt.Errorf("encode tree of %s: %w", displayPath(job.path), err)
		}
		id = index.Hash(data)
		if _, err := f.up.Save(f.ctx, index.TreeBlob, id, data); err != nil {
			return fmt.Errorf("save tree of %s: %w", displayPath(job.path), err)
		}
	}
	job.parent.Subtree = id
	return f.record(job, id, encs, kept, same)
}

// count adds one node to the new/changed/unmodified counters.
func (f *finisher) count(e *entry, enc []byte, same bool) {
	typ := tree.Type(0)
	switch {
	case e.node != nil:
		typ = e.node.Type
	case e.key.mode&unix.S_IFMT == unix.S_IFREG:
		typ = tree.File
	case e.key.mode&unix.S_IFMT == unix.S_IFDIR:
		typ = tree.Dir
	}
	var fresh, changed, unmodified *atomic.Int64
	switch typ {
	case tree.File:
		fresh, changed, unmodified = &f.stats.filesNew, &f.stats.filesChanged, &f.stats.filesSame
	case tree.Dir:
		fresh, changed, unmodified = &f.stats.dirsNew, &f.stats.dirsChanged, &f.stats.dirsSame
	default:
		return
	}
	switch {
	case e.prev == nil:
		fresh.Add(1)
	case same:
		unmodified.Add(1)
	default:
		changed.Add(1)
	}
}

// record queues the directory's new cache record unless the cache already
// holds exactly it.
func (f *finisher) record(job *dirJob, id index.ID, encs [][]byte, kept int, same bool) error {
	if len(job.path) > index.MaxCacheKey {
		return nil
	}
	complete := job.complete
	for i := range job.entries {
		complete = complete && !job.entries[i].drop
	}
	rewrite := !same || complete != job.rec.complete
	for i, j := 0, 0; !rewrite && i < len(job.entries); i++ {
		if !job.entries[i].drop {
			rewrite = job.entries[i].key != job.rec.entries[j].key
			j++
		}
	}
	f.keep[job.path] = struct{}{}
	if !rewrite {
		return nil
	}
	b := newRecord(id, kept, complete)
	for i := range job.entries {
		if !job.entries[i].drop {
			b.add(&job.entries[i].key, encs[i])
		}
	}
	select {
	case f.records <- index.CacheRecord{Key: []byte(job.path), Value: b.buf}:
		return nil
	case <-f.ctx.Done():
		return f.ctx.Err()
	}
}
