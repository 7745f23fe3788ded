package snapshot

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"sync"
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
// (saveQueue + savers + readers) × 1 MiB ≈ 20 MiB on two cores.
const (
	fileQueue = 256
	saveQueue = 8
	dirQueue  = 256
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
	// Warn is called for every path that cannot be read (optional).
	Warn func(path string, err error)
	// Progress is called about once a second with the counts so far (optional).
	Progress func(Stats)
	// opened is a test hook called for every file opened for reading.
	opened func(path string)
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

	up := repo.NewUploader()
	defer up.Close()
	cfg := repo.Config()
	bufs := newBufPool(int(cfg.ChunkMax))
	var stats counters

	g, gctx := errgroup.WithContext(ctx)
	files := make(chan *fileJob, fileQueue)
	saves := make(chan *saveJob, saveQueue)
	dirs := make(chan *dirJob, dirQueue)

	owners := fsmeta.NewOwners()
	rootNode := &tree.Node{}
	if err := fsmeta.ReadNode(-1, "", &rootSt, rootfd, owners, rootNode); err != nil {
		return nil, fmt.Errorf("root %s: %w", opts.Root, err)
	}
	rootJob := &dirJob{parent: rootNode, root: true}

	g.Go(func() error {
		defer close(dirs)
		defer close(files)
		w := &walker{ctx: gctx, sel: opts.Selection, owners: owners, files: files, dirs: dirs,
			warn: warn, links: make(map[inode]*fileJob), linkOth: make(map[inode]string), stats: &stats, opened: opts.opened,
			repo: inode{uint64(repoSt.Dev), repoSt.Ino}}
		return w.walk(rootfd, "/", opts.Selection.Root(), uint64(rootSt.Dev), rootJob)
	})
	var readWG sync.WaitGroup
	for range readers {
		readWG.Add(1)
		g.Go(func() error {
			defer readWG.Done()
			r := &reader{ctx: gctx, cfg: cfg, up: up, saves: saves, bufs: bufs, warn: warn, stats: &stats}
			err := r.run(files)
			if err != nil {
				for fj := range files { // unblock the walker
					fj.f.Close()
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
	g.Go(func() error { return finisher(gctx, up, dirs) })
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
	return &Result{ID: id, Record: rec}, nil
}

func (c *counters) snapshot(up *chunkstore.Uploader, start time.Time) Stats {
	return Stats{
		Files:       c.files.Load(),
		Dirs:        c.dirs.Load(),
		Others:      c.others.Load(),
		BytesRead:   c.bytesRead.Load(),
		BytesTotal:  c.bytesTotal.Load(),
		BlobsAdded:  up.BlobsAdded.Load(),
		BytesAdded:  up.BytesAdded.Load(),
		RawAdded:    up.RawAdded.Load(),
		DurationSec: time.Since(start).Seconds(),
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

// finisher saves the tree of each directory once its files are read. The
// walker sends directories in post-order, so a directory's subdirectories
// are saved, and their IDs filled into its nodes, before it.
func finisher(ctx context.Context, up *chunkstore.Uploader, dirs <-chan *dirJob) error {
	for job := range dirs {
		done := make(chan struct{})
		go func() { job.files.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			for range dirs {
			}
			return ctx.Err()
		}
		t := &tree.Tree{Nodes: make([]tree.Node, 0, len(job.nodes))}
		for _, l := range job.links {
			select {
			case <-l.leader.done:
			case <-ctx.Done():
				return ctx.Err()
			}
			if l.leader.failed.Load() { // its first link could not be read either
				job.drop[l.idx] = true
				continue
			}
			l.node.Content = l.leader.node.Content
		}
		for _, fj := range job.fileJobs {
			if fj.failed.Load() {
				job.drop[fj.idx] = true
			}
		}
		for i := range job.nodes {
			if !job.drop[i] {
				t.Nodes = append(t.Nodes, job.nodes[i])
			}
		}
		data, err := tree.Encode(t)
		if err != nil {
			return fmt.Errorf("encode tree of %s: %w", displayPath(job.path), err)
		}
		id := index.Hash(data)
		if _, err := up.Save(ctx, index.TreeBlob, id, data); err != nil {
			return fmt.Errorf("save tree of %s: %w", displayPath(job.path), err)
		}
		job.parent.Subtree = id
	}
	return nil
}
