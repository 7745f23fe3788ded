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

// dirJob is a directory being snapshotted: its nodes, the files still being
// read, and where its tree ID goes when it is saved.
type dirJob struct {
	path     string
	nodes    []tree.Node    // capacity fixed at creation: pointers into it stay valid
	drop     []bool         // nodes left out (could not be read)
	files    sync.WaitGroup // one count per file in fileJobs, done when it is read
	fileJobs []*fileJob
	links    []linkRef // hard links whose content comes from their first path
	parent   *tree.Node
	root     bool
}

type linkRef struct {
	idx    int
	node   *tree.Node
	leader *fileJob
}

// fileJob is a regular file queued for reading.
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
}

// counters are updated concurrently while a snapshot runs.
type counters struct {
	files, dirs, others, bytesRead, bytesTotal atomic.Int64
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

// walk snapshots the directory dirfd at path p, of class class on device dev,
// and queues it for the finisher after all its subdirectories.
func (w *walker) walk(dirfd int, p string, class selection.Class, dev uint64, job *dirJob) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	var names []string
	if class == selection.Ancestor {
		names = w.sel.Needed(p)
	} else {
		var err error
		if names, err = readNames(dirfd); err != nil {
			w.warn(p, fmt.Errorf("read directory: %w", err))
			names = nil
		}
	}
	job.path = p
	job.nodes = make([]tree.Node, 0, len(names))
	job.drop = make([]bool, 0, len(names))
	for _, name := range names {
		if err := w.entry(dirfd, p, class, dev, job, name); err != nil {
			return err
		}
	}
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

// entry adds one directory entry to job, recursing into directories.
func (w *walker) entry(dirfd int, dir string, class selection.Class, dev uint64, job *dirJob, name string) error {
	p := childPath(dir, name)
	st, err := fsmeta.Lstat(dirfd, name)
	if err != nil {
		if class == selection.Ancestor && errors.Is(err, unix.ENOENT) {
			w.warn(p, errors.New("listed path does not exist"))
		} else {
			w.warn(p, err)
		}
		return nil
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	if isDir && (inode{uint64(st.Dev), st.Ino}) == w.repo {
		return nil
	}
	childClass := w.sel.Child(class, p, isDir)
	if childClass == selection.Outside {
		return nil
	}
	job.nodes = append(job.nodes, tree.Node{Name: name})
	job.drop = append(job.drop, false)
	idx := len(job.nodes) - 1
	n := &job.nodes[idx]
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return w.dir(dirfd, p, name, &st, class, childClass, dev, job, idx)
	case unix.S_IFREG:
		return w.file(dirfd, p, name, &st, job, idx)
	default:
		if err := fsmeta.ReadNode(dirfd, name, &st, -1, w.owners, n); err != nil {
			w.warn(p, err)
			job.drop[idx] = true
			return nil
		}
		w.stats.others.Add(1)
		if st.Nlink > 1 {
			key := inode{uint64(st.Dev), st.Ino}
			if first, ok := w.linkOth[key]; ok {
				n.LinkTo = relPath(dir, first)
			} else {
				w.linkOth[key] = p
			}
		}
	}
	return nil
}

func (w *walker) dir(dirfd int, p, name string, st *unix.Stat_t, parentClass, class selection.Class, dev uint64, job *dirJob, idx int) error {
	n := &job.nodes[idx]
	fd, err := openDir(dirfd, name)
	if err != nil {
		w.warn(p, err)
		job.drop[idx] = true
		return nil
	}
	defer unix.Close(fd)
	if err := fsmeta.ReadNode(dirfd, name, st, fd, w.owners, n); err != nil {
		w.warn(p, err)
		job.drop[idx] = true
		return nil
	}
	w.stats.dirs.Add(1)
	child := &dirJob{parent: n}
	// A listed path is InScope whatever its parent: it starts its own device.
	listed := w.sel.Child(selection.Outside, p, true) == selection.InScope
	if w.sel.OneFileSystem() && parentClass == selection.InScope && !listed && uint64(st.Dev) != dev {
		// A mount point: taken, as rsync -x does, but not descended into.
		child.path = p
		return w.send(child)
	}
	return w.walk(fd, p, class, uint64(st.Dev), child)
}

func (w *walker) send(job *dirJob) error {
	select {
	case w.dirs <- job:
		return nil
	case <-w.ctx.Done():
		return w.ctx.Err()
	}
}

func (w *walker) file(dirfd int, p, name string, st *unix.Stat_t, job *dirJob, idx int) error {
	n := &job.nodes[idx]
	if st.Nlink > 1 {
		key := inode{uint64(st.Dev), st.Ino}
		if leader, ok := w.links[key]; ok {
			if err := fsmeta.ReadNode(dirfd, name, st, -1, w.owners, n); err != nil {
				w.warn(p, err)
				job.drop[idx] = true
				return nil
			}
			n.LinkTo = relPath(job.path, leader.path)
			job.links = append(job.links, linkRef{idx: idx, node: n, leader: leader})
			w.stats.files.Add(1)
			return nil
		}
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
	fj := &fileJob{dir: job, idx: idx, node: n, path: p, f: f, st: *st, done: make(chan struct{})}
	fj.outstanding.Store(1)
	if st.Nlink > 1 {
		w.links[inode{uint64(st.Dev), st.Ino}] = fj
	}
	w.stats.files.Add(1)
	w.stats.bytesTotal.Add(st.Size)
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
