package restore

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/chunkstore/faultpoint"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot/fsmeta"
	"github.com/understudy/understudy/snapshot/selection"
	"github.com/understudy/understudy/snapshot/tree"
)

// writer writes queued files. After a fatal error it stops the walk and
// keeps draining the queue, releasing each task, so that the walker never
// waits forever.
func (a *applier) writer() error {
	var buf []byte
	var first error
	for t := range a.files {
		if first == nil && a.ctx.Err() == nil {
			if err := a.writeFile(t, &buf); err != nil {
				var fatal *fatalError
				if errors.As(err, &fatal) {
					first = fatal.err
				} else if errors.Is(err, unix.ENOSPC) { // every later write would fail too
					first = fsmeta.NoSpace(err, path.Join(a.opts.Target, t.path))
				} else {
					a.warn(t.path, err)
				}
				if first != nil {
					a.stop(first)
				}
			}
		}
		t.dir.unref()
	}
	return first
}

// writeFile writes t's content to a new temporary file in its directory,
// taking each extent from the old file when it is there (checked against
// the blob ID) and from the repository otherwise, starts its writeback,
// gives it its metadata and hands it to the batch that renames it over the
// old entry once it is on disk (see place). A reader of the path sees the
// old file or the new one, whole.
func (a *applier) writeFile(t *applyTask, buf *[]byte) error {
	d := t.dir.fd
	tmp := tempName()
	fd, err := unix.Openat(d, tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create a temporary file: %w", err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	placed := false
	defer func() {
		f.Close()
		if !placed {
			unix.Unlinkat(d, tmp, 0)
		}
	}()
	var old *oldFile
	if t.exists {
		if old = openOld(d, t.name); old != nil {
			defer old.close()
		}
	}
	var off int64
	for _, e := range t.node.Content {
		if e.IsHole() {
			off += int64(e.Length)
			continue
		}
		data := old.find(t, e, off, buf)
		if data != nil {
			a.c.reused.Add(int64(len(data)))
		} else {
			if data, err = a.loader.LoadBlob(e.Blob, *buf); err != nil {
				return &fatalError{fmt.Errorf("%s: %w", t.path, err)}
			}
			if uint64(len(data)) != e.Length {
				return &fatalError{fmt.Errorf("%s: blob %s has %d bytes, the tree says %d", t.path, e.Blob.Short(), len(data), e.Length)}
			}
			a.c.written.Add(int64(len(data)))
		}
		if cap(data) > cap(*buf) {
			*buf = data[:0]
		}
		if _, err := f.WriteAt(data, off); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		off += int64(len(data))
	}
	if err := f.Truncate(off); err != nil { // a trailing hole
		return fmt.Errorf("truncate: %w", err)
	}
	// Start the writeback now, so that the batch's sync finds little left.
	unix.SyncFileRange(fd, 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	meta := t.node
	meta.Flags = 0
	if err := fsmeta.Apply(d, tmp, fd, &meta); err != nil {
		if !errors.Is(err, fsmeta.ErrUnsupported) {
			return err
		}
		a.warn(t.path, err)
	}
	placed = true
	a.place(placement{dir: t.dir.ref(), tmp: tmp, name: t.name, path: t.path, flags: t.node.Flags, size: off, exists: t.exists})
	return nil
}

// placement is a file written under a temporary name that waits for a
// sync of its filesystem before it is renamed over its path.
type placement struct {
	dir             *dirHandle
	tmp, name, path string
	flags           uint32
	size            int64
	exists          bool
}

// Batches of written files: a file is renamed into place only after a
// syncfs(2) of its filesystem that began after the file was written, so
// that after a power loss a path holds the old file or the whole new one,
// never a new name over data that never reached the disk. One sync per
// batch instead of one fsync per file: that is most of the speed of a
// first apply.
const (
	batchFiles = 1024
	batchBytes = 256 << 20
)

// place adds a written file to the batch, and places the batch when it is
// full.
func (a *applier) place(p placement) {
	a.batchMu.Lock()
	a.batch = append(a.batch, p)
	a.batchSize += p.size
	var full []placement
	if len(a.batch) >= batchFiles || a.batchSize >= batchBytes {
		full, a.batch, a.batchSize = a.batch, nil, 0
	}
	a.batchMu.Unlock()
	if full != nil {
		a.placeAll(full)
	}
}

// flush places what the batch holds.
func (a *applier) flush() {
	a.batchMu.Lock()
	rest := a.batch
	a.batch, a.batchSize = nil, 0
	a.batchMu.Unlock()
	a.placeAll(rest)
}

// placeAll syncs the filesystems of a batch, then renames each file over
// its path and sets its inode flags, which an immutable file would have
// refused before the rename.
func (a *applier) placeAll(batch []placement) {
	if len(batch) == 0 {
		return
	}
	synced := map[uint64]error{}
	for _, p := range batch {
		if _, done := synced[p.dir.dev]; !done {
			synced[p.dir.dev] = unix.Syncfs(p.dir.fd)
		}
	}
	faultpoint.Hit("apply-before-rename") // the batch is on disk under temporary names
	for _, p := range batch {
		err := synced[p.dir.dev]
		if err != nil {
			err = fmt.Errorf("sync its filesystem before renaming it into place: %w", err)
		} else {
			err = a.renameOver(p.dir.fd, p.tmp, p.name, p.exists)
		}
		faultpoint.Hit("apply-mid-rename") // this file renamed (its flags not set yet), the rest of the batch not
		if err != nil {
			unix.Unlinkat(p.dir.fd, p.tmp, 0)
			a.warn(p.path, err)
		} else if p.flags&fsmeta.SettableFlags != 0 {
			if err := fsmeta.SetFlags(p.dir.fd, p.name, p.flags); err != nil {
				a.warn(p.path, err)
			}
		}
		p.dir.unref()
	}
}

// oldFile is the live file a new one replaces, read for the chunks the two
// have in common.
type oldFile struct {
	f     *os.File
	size  int64
	where map[index.ID]int64 // blob → offset in the old file, by the refs' nodes
}

// openOld opens the regular file name in dirfd for reading, or returns nil.
func openOld(dirfd int, name string) *oldFile {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil
	}
	return &oldFile{f: os.NewFile(uintptr(fd), name), size: st.Size}
}

func (o *oldFile) close() { o.f.Close() }

// find returns extent e's bytes if the old file has them where a ref's
// node puts that blob or at the same offset; the bytes are hashed, so a
// wrong guess costs a read, never a wrong file.
func (o *oldFile) find(t *applyTask, e tree.Extent, off int64, buf *[]byte) []byte {
	if o == nil {
		return nil
	}
	if o.where == nil {
		o.where = make(map[index.ID]int64)
		for _, r := range t.refs {
			if r == nil || r.Type != tree.File {
				continue
			}
			var at int64
			for _, re := range r.Content {
				if _, ok := o.where[re.Blob]; !ok && !re.IsHole() {
					o.where[re.Blob] = at
				}
				at += int64(re.Length)
			}
		}
	}
	n := int64(e.Length)
	if int64(cap(*buf)) < n {
		*buf = make([]byte, 0, n)
	}
	b := (*buf)[:n]
	var buf2 [2]int64
	cands := buf2[:0]
	if at, ok := o.where[e.Blob]; ok {
		cands = append(cands, at)
	}
	if len(cands) == 0 || cands[0] != off {
		cands = append(cands, off)
	}
	for _, at := range cands {
		if at+n > o.size {
			continue
		}
		if k, err := o.f.ReadAt(b, at); err != nil || int64(k) != n {
			continue
		}
		if sha256.Sum256(b) == e.Blob {
			return b
		}
	}
	return nil
}

// linkAll makes the hard links, after every file is in place: each link
// path becomes the inode now at its first path, unless it already is.
func (a *applier) linkAll() error {
	for _, lj := range a.links {
		if err := a.ctx.Err(); err != nil {
			return err
		}
		if err := a.link(lj); err != nil {
			return err
		}
	}
	return nil
}

func components(dir string) []string {
	return strings.FieldsFunc(dir, func(c rune) bool { return c == '/' })
}

func (a *applier) link(lj linkJob) error {
	ldir, lname := path.Split(lj.path)
	lfd, err := openPath(a.rootfd, components(ldir))
	if err != nil {
		if a.opts.DryRun && errors.Is(err, unix.ENOENT) {
			a.itemize('+', lj.path)
			a.c.created.Add(1)
			return nil
		}
		a.warn(lj.path, fmt.Errorf("open its directory: %w", err))
		return nil
	}
	defer unix.Close(lfd)
	lst, lerr := fsmeta.Lstat(lfd, lname)
	fdir, fname := path.Split(lj.first)
	ffd, err := openPath(a.rootfd, components(fdir))
	var fst unix.Stat_t
	if err == nil {
		defer unix.Close(ffd)
		fst, err = fsmeta.Lstat(ffd, fname)
	}
	if err == nil {
		if typ, _ := fsmeta.TypeOf(fst.Mode); typ != lj.node.Type {
			err = fmt.Errorf("it is a %s", typ)
		}
	}
	if err != nil {
		// The first path is not there to link to (protected, or it could
		// not be written): this path gets a file of its own.
		a.warn(lj.path, fmt.Errorf("cannot link to %s (%v); written as a separate file", lj.first, err))
		return a.writeSeparate(lfd, lj, lerr == nil)
	}
	if lerr == nil && lst.Dev == fst.Dev && lst.Ino == fst.Ino {
		return nil
	}
	if lerr == nil {
		a.itemize('h', lj.path)
		a.c.filesChanged.Add(1)
		if lst.Mode&unix.S_IFMT == unix.S_IFREG {
			a.c.bytesChanged.Add(lst.Size)
		}
	} else {
		a.itemize('h', lj.path)
	}
	a.c.linked.Add(1)
	if a.opts.DryRun {
		return nil
	}
	tmp := tempName()
	err = unix.Linkat(ffd, fname, lfd, tmp, 0)
	if errors.Is(err, unix.EPERM) {
		// An immutable or append-only inode cannot get another link.
		flags, cerr := fsmeta.ClearFlags(ffd, fname)
		if cerr == nil {
			err = unix.Linkat(ffd, fname, lfd, tmp, 0)
			if serr := fsmeta.SetFlags(ffd, fname, flags); serr != nil {
				a.warn(lj.first, serr)
			}
		}
	}
	if err == nil {
		if err = a.renameOver(lfd, tmp, lname, lerr == nil); err != nil {
			unix.Unlinkat(lfd, tmp, 0)
		}
	}
	if err != nil {
		a.warn(lj.path, fmt.Errorf("link to %s: %w", lj.first, err))
	}
	a.touched(lj)
	return nil
}

// touched queues the directory of a link path for its metadata, once:
// making the link moved its mtime.
func (a *applier) touched(lj linkJob) {
	dir := parentOf(lj.path)
	switch {
	case lj.dir != nil:
		if a.linkedDirs == nil {
			a.linkedDirs = map[string]bool{}
		}
		if !a.linkedDirs[dir] {
			a.linkedDirs[dir] = true
			a.dirs = append(a.dirs, dirMeta{path: dir, node: lj.dir})
		}
	case dir == "/":
		a.rootLinked = true
	}
}

// writeSeparate writes a hard link's node as a file of its own.
func (a *applier) writeSeparate(lfd int, lj linkJob, exists bool) error {
	if exists {
		a.itemize('~', lj.path)
		a.c.replaced.Add(1)
	} else {
		a.itemize('+', lj.path)
		a.c.created.Add(1)
	}
	if a.opts.DryRun {
		return nil
	}
	defer a.touched(lj)
	fd, err := unix.Dup(lfd)
	if err != nil {
		return err
	}
	d, err := newDirHandle(fd)
	if err != nil {
		return err
	}
	defer d.unref()
	n := *lj.node
	n.LinkTo = ""
	if n.Type != tree.File {
		a.create(d, lj.path, &n, lj.refs, exists)
		return nil
	}
	var buf []byte
	err = a.writeFile(&applyTask{dir: d, name: n.Name, path: lj.path, node: n, refs: lj.refs, exists: exists}, &buf)
	a.flush()
	var fatal *fatalError
	if errors.As(err, &fatal) {
		return fatal.err
	}
	if err != nil {
		a.warn(lj.path, err)
	}
	return nil
}

// finishDirs sets the metadata of the directories the walk went through,
// children before parents, after every entry in them is in place.
func (a *applier) finishDirs() error {
	if a.opts.DryRun {
		return nil
	}
	parent, pfd := "", -1
	defer func() {
		if pfd >= 0 {
			unix.Close(pfd)
		}
	}()
	for _, dm := range a.dirs {
		if err := a.ctx.Err(); err != nil {
			return err
		}
		dir, name := path.Split(dm.path)
		if dir != parent {
			if pfd >= 0 {
				unix.Close(pfd)
			}
			var err error
			parent = dir
			if pfd, err = openPath(a.rootfd, components(dir)); err != nil {
				a.warn(dm.path, fmt.Errorf("open its parent for its metadata: %w", err))
				parent, pfd = "", -1
				continue
			}
		}
		if err := fsmeta.Apply(pfd, name, -1, dm.node); err != nil {
			a.warn(dm.path, err)
		}
	}
	return nil
}

// deleteExtras removes what the live directory d has and t lacks, inside
// the scope and outside the protected paths, and the leftovers of a
// crashed apply.
func (a *applier) deleteExtras(d *dirHandle, p string, t *tree.Tree, class selection.Class) (changed bool) {
	names, err := readNames(d.fd)
	if err != nil {
		a.warn(p, fmt.Errorf("list to delete what the snapshot lacks: %w", err))
		return false
	}
	for _, name := range names {
		if t.Find(name) != nil {
			continue
		}
		cp := childPath(p, name)
		if strings.HasPrefix(name, tmpPrefix) {
			changed = true
			if !a.opts.DryRun {
				if err := removeEntry(d.fd, name, d.dev); err != nil {
					a.warn(cp, fmt.Errorf("remove a crashed apply's temporary entry: %w", err))
				}
			}
			continue
		}
		st, err := fsmeta.Lstat(d.fd, name)
		if err != nil {
			continue
		}
		if a.sel.Child(class, cp, isDir(&st)) != selection.InScope || a.protected(cp, isDir(&st)) {
			continue
		}
		a.remove(d, name, cp, class)
		changed = true // even a directory that stays lost entries
	}
	return changed
}

// remove deletes the entry name of d at snapshot path p and, for a
// directory, what it holds, keeping protected entries and entries outside
// the scope (and the directories above them). It never follows a symlink
// and never crosses into another filesystem. It reports whether the entry
// is gone (would be, in a dry run).
func (a *applier) remove(d *dirHandle, name, p string, class selection.Class) bool {
	return a.removeAt(d.fd, d.dev, name, p, class)
}

func (a *applier) removeAt(dirfd int, dev uint64, name, p string, class selection.Class) bool {
	st, err := fsmeta.Lstat(dirfd, name)
	if errors.Is(err, unix.ENOENT) {
		return true
	}
	if err != nil {
		a.warn(p, err)
		return false
	}
	if !isDir(&st) {
		a.c.seen.Add(1)
		a.c.filesDeleted.Add(1)
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			a.c.bytesSeen.Add(st.Size)
			a.c.bytesDeleted.Add(st.Size)
		}
		a.c.deleted.Add(1)
		a.itemize('-', p)
		if a.opts.DryRun {
			return true
		}
		if _, err := fsmeta.ClearFlags(dirfd, name); err != nil {
			a.warn(p, err)
			return false
		}
		if err := unix.Unlinkat(dirfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			a.warn(p, fmt.Errorf("delete: %w", err))
			return false
		}
		return true
	}
	if uint64(st.Dev) != dev {
		a.warn(p, errors.New("a mount point of another filesystem, which the snapshot lacks; not removed"))
		return false
	}
	fd, err := openDirAt(dirfd, name)
	if err != nil {
		a.warn(p, fmt.Errorf("open to delete: %w", err))
		return false
	}
	defer unix.Close(fd)
	if !a.opts.DryRun {
		if _, err := fsmeta.ClearFlags(dirfd, name); err != nil {
			a.warn(p, err)
			return false
		}
	}
	names, err := readNames(fd)
	if err != nil {
		a.warn(p, fmt.Errorf("list to delete: %w", err))
		return false
	}
	gone := true
	for _, c := range names {
		cp := childPath(p, c)
		cst, err := fsmeta.Lstat(fd, c)
		if err != nil {
			continue
		}
		if a.sel.Child(class, cp, isDir(&cst)) != selection.InScope || a.protected(cp, isDir(&cst)) {
			a.c.kept.Add(1)
			gone = false
			continue
		}
		if !a.removeAt(fd, dev, c, cp, class) {
			gone = false
		}
	}
	if !gone {
		return false
	}
	a.c.deleted.Add(1)
	a.itemize('-', p)
	if a.opts.DryRun {
		return true
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil {
		a.warn(p, fmt.Errorf("delete: %w", err))
		return false
	}
	return true
}
