package restore

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/fsmeta"
	"github.com/understudy/understudy/snapshot/selection"
	"github.com/understudy/understudy/snapshot/tree"
)

// ErrIncomplete is returned when the restore finished but some entries could
// not be restored completely; each was passed to Options.Warn.
var ErrIncomplete = errors.New("restore incomplete")

// Options say where and what to restore.
type Options struct {
	// Target is the directory standing for "/": a snapshot of /usr restored
	// with Target /mnt/new writes /mnt/new/usr. It is created if missing.
	Target string
	// Paths restricts the restore to these absolute snapshot paths and what
	// is below them. Empty means everything.
	Paths []string
	// Delete removes what the target has and the snapshot lacks, inside the
	// snapshot's scope (and Paths) only.
	Delete bool
	// DryRun reports what would change without writing.
	DryRun bool
	// Workers writing file contents at once; 0 means 4.
	Workers int
	// Warn is called for a problem that does not stop the restore.
	Warn func(path string, err error)
	// Itemize, if set, is called for every change: '+' created, '~'
	// replaced, '-' deleted.
	Itemize func(op byte, path string)
}

// Stats count what a restore did.
type Stats struct {
	Files        int64 `json:"files"`
	Dirs         int64 `json:"dirs"`
	Links        int64 `json:"hardlinks"`
	Others       int64 `json:"others"`
	Deleted      int64 `json:"deleted"`
	BytesWritten int64 `json:"bytes_written"`
	Warnings     int64 `json:"warnings"`
}

// Queue bounds: files waiting for a writer, directories waiting for their
// metadata. Each holds one open descriptor at most.
const (
	fileQueue = 64
	dirQueue  = 64
)

type restorer struct {
	ctx    context.Context
	loader snapshot.BlobLoader
	sel    *selection.Selection
	opts   Options
	filter []string
	rootfd int

	files chan *fileTask
	dirs  chan *dirTask

	seed     maphash.Seed
	restored map[uint64]struct{} // hashes of non-directory paths written in this run
	stats    struct {
		files, dirs, links, others, deleted, bytes, warnings atomic.Int64
	}
}

// fileTask is a created file waiting for its content and metadata.
type fileTask struct {
	dir  *dirHandle
	name string
	path string
	f    *os.File
	node tree.Node
	done *sync.WaitGroup
}

// dirTask is a directory whose metadata is set once its files are written.
type dirTask struct {
	parent *dirHandle
	self   *dirHandle
	name   string
	path   string
	node   *tree.Node // nil: an existing ancestor, left as it is
	files  *sync.WaitGroup
}

// Run restores snapshot rec from loader according to opts.
func Run(ctx context.Context, loader snapshot.BlobLoader, rec *snapshot.Record, opts Options) (*Stats, error) {
	sel, err := rec.Selection()
	if err != nil {
		return nil, fmt.Errorf("snapshot's selection: %w", err)
	}
	for i, p := range opts.Paths {
		if !strings.HasPrefix(p, "/") {
			return nil, fmt.Errorf("--path %q: must be absolute, as the snapshot lists it", p)
		}
		opts.Paths[i] = cleanAbs(p)
	}
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	if !opts.DryRun {
		if err := os.MkdirAll(opts.Target, 0o755); err != nil {
			return nil, fmt.Errorf("create target: %w", err)
		}
	}
	rootfd, err := unix.Open(opts.Target, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil && !(opts.DryRun && errors.Is(err, unix.ENOENT)) {
		return nil, fmt.Errorf("open target %s: %w", opts.Target, err)
	}
	if err != nil {
		rootfd = -1
	}
	root, err := snapshot.LoadTree(loader, rec.Root)
	if err != nil {
		return nil, err
	}
	g, gctx := errgroup.WithContext(ctx)
	r := &restorer{
		ctx: gctx, loader: loader, sel: sel, opts: opts, rootfd: rootfd,
		files: make(chan *fileTask, fileQueue), dirs: make(chan *dirTask, dirQueue),
		seed: maphash.MakeSeed(), restored: make(map[uint64]struct{}),
	}
	var rootDir *dirHandle
	if rootfd >= 0 {
		if rootDir, err = newDirHandle(rootfd); err != nil {
			return nil, fmt.Errorf("target %s: %w", opts.Target, err)
		}
	}
	var self *dirHandle // the target itself, for the metadata of "/"
	if rootDir != nil {
		self = rootDir.ref()
		defer self.unref()
	}
	g.Go(func() error {
		defer close(r.dirs)
		defer close(r.files)
		if rootDir != nil {
			defer rootDir.unref()
		}
		var dev uint64
		if rootDir != nil {
			dev = rootDir.dev
		}
		return r.dir(rootDir, "/", root, sel.Root(), r.filterClass("/"), dev, &sync.WaitGroup{})
	})
	for range opts.Workers {
		g.Go(r.writer)
	}
	g.Go(r.finisher)
	err = g.Wait()
	if err == nil && self != nil && !opts.DryRun && sel.Root() == selection.InScope && r.filterClass("/") == filterAll {
		// "/" is in the scope: the target takes its metadata, last.
		n, rerr := rec.RootNode()
		if rerr != nil {
			return nil, rerr
		}
		if aerr := fsmeta.Apply(self.fd, ".", self.fd, n); aerr != nil {
			r.warn("/", aerr)
		}
	}
	if err == nil && r.stats.warnings.Load() > 0 {
		err = fmt.Errorf("%w: %d problems, each reported above", ErrIncomplete, r.stats.warnings.Load())
	}
	st := &Stats{
		Files: r.stats.files.Load(), Dirs: r.stats.dirs.Load(), Links: r.stats.links.Load(),
		Others: r.stats.others.Load(), Deleted: r.stats.deleted.Load(),
		BytesWritten: r.stats.bytes.Load(), Warnings: r.stats.warnings.Load(),
	}
	return st, err
}

func cleanAbs(p string) string {
	parts := strings.FieldsFunc(p, func(r rune) bool { return r == '/' })
	return "/" + strings.Join(parts, "/")
}

// filter classes for --path
const (
	filterAll      = iota // at or below a requested path
	filterAncestor        // above a requested path: only the way down
	filterNone            // elsewhere
)

func (r *restorer) filterClass(p string) int {
	if len(r.opts.Paths) == 0 {
		return filterAll
	}
	best := filterNone
	for _, want := range r.opts.Paths {
		switch {
		case want == p || want == "/" || strings.HasPrefix(p, want+"/"):
			return filterAll
		case p == "/" || strings.HasPrefix(want, p+"/"):
			best = filterAncestor
		}
	}
	return best
}

func (r *restorer) warn(p string, err error) {
	r.stats.warnings.Add(1)
	if r.opts.Warn != nil {
		r.opts.Warn(p, err)
	}
}

func (r *restorer) itemize(op byte, p string) {
	if r.opts.Itemize != nil {
		r.opts.Itemize(op, p)
	}
}

func (r *restorer) pathKey(p string) uint64 { return maphash.String(r.seed, p) }

func childPath(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}
