package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/restic/chunker"
	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot/fsmeta"
	"github.com/understudy/understudy/snapshot/tree"
)

// defaultReadAttempts is how often a file that changes while it is read is
// read before it is recorded as changed during the read (Options.ReadAttempts).
const defaultReadAttempts = 3

// Timestamp granularity. The kernel stamps a change with a clock that moves
// by ticks (1 to 10 ms apart); some filesystems keep whole seconds. A
// change within the tick of the ctime a read started from may leave the
// ctime as it was, so a file changed that recently is read only once its
// tick is over: then any change during the read moves the ctime.
const (
	stampTick   = 20 * time.Millisecond   // twice the longest tick (HZ=100)
	stampSecond = time.Second + stampTick // stamps without nanoseconds
)

// saveJob is a new chunk on its way to the uploader.
type saveJob struct {
	file *fileJob
	id   index.ID
	buf  *[]byte // pooled; data is (*buf)[:n]
	n    int
}

type reader struct {
	ctx   context.Context
	cfg   chunkstore.Config
	up    *chunkstore.Uploader
	saves chan<- *saveJob
	bufs  *sync.Pool
	warn  func(path string, err error)
	stats *counters
	chk   *chunker.Chunker
	small []byte

	owners   *fsmeta.Owners
	attempts int // Options.ReadAttempts
	attempt  int // of the file being read, from 1
	// betweenChunks is Options.betweenChunks, a test hook.
	betweenChunks func(path string, attempt int, off int64)
}

func newBufPool(size int) *sync.Pool {
	return &sync.Pool{New: func() any { b := make([]byte, size); return &b }}
}

// run reads queued files until the queue closes.
func (r *reader) run(files <-chan *fileJob) error {
	r.small = make([]byte, r.cfg.ChunkMin)
	if r.attempts <= 0 {
		r.attempts = defaultReadAttempts
	}
	for fj := range files {
		err := r.readFile(fj)
		fj.close()
		if err != nil {
			if r.ctx.Err() != nil {
				return r.ctx.Err()
			}
			var fatal *fatalError
			if errors.As(err, &fatal) {
				return fatal.err
			}
			r.warn(fj.path, err)
			if ce := (*changedError)(nil); !errors.As(err, &ce) || !ce.kept {
				fj.failed.Store(true)
			}
		}
		fj.release()
	}
	return nil
}

// changedError is the warning for a file that changed during every read
// attempt. kept: its node is the one of the set's previous snapshot;
// else the file is left out.
type changedError struct {
	attempts int
	kept     bool
}

func (e *changedError) Error() string {
	if e.kept {
		return fmt.Sprintf("changed while being read (%d attempts); the snapshot holds it as the previous snapshot had it", e.attempts)
	}
	return fmt.Sprintf("changed while being read (%d attempts); left out, as the set's previous snapshot has no version of it to keep", e.attempts)
}

func (e *changedError) Unwrap() error { return fsmeta.ErrChanged }

// fatalError is an error that must stop the snapshot, not just skip a file.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }

// release drops one reference; the last one completes the file.
func (fj *fileJob) release() {
	if fj.outstanding.Add(-1) == 0 {
		close(fj.done)
		fj.dir.files.Done()
	}
}

// readFile reads a file into its node's Content. An attempt counts only if
// the file's stat (inode, size, mtime, ctime) is the same after the read as
// before, and its name still names it; else the file is read again, up to
// r.attempts times, the node's metadata read again with it, and from the
// file that now has the name if it was renamed over. A file that changes
// during every attempt is a changedError: its node is then the previous
// snapshot's, or it is left out; the chunks read are never kept.
func (r *reader) readFile(fj *fileJob) error {
	for r.attempt = 1; r.attempt <= r.attempts; r.attempt++ {
		settled, err := r.settle(fj)
		if err != nil {
			return err
		}
		if !settled {
			continue
		}
		content, err := r.readContent(fj)
		if err != nil {
			return err
		}
		var after unix.Stat_t
		if err := unix.Fstat(int(fj.f.Fd()), &after); err != nil {
			return fmt.Errorf("stat after reading: %w", err)
		}
		if sameVersion(&fj.st, &after) {
			fj.entry.node.Content = content
			return nil
		}
		// Renaming another file over the name changed the open one's
		// ctime (its link count dropped), so only a changed file can
		// have been renamed over.
		r.reopen(fj, &after)
	}
	return r.changed(fj)
}

// settle makes fj.st and the node's metadata those of the open file as it
// is before an attempt. A file changed within the last tick is waited for
// until the tick is over; it reports false if the file changed meanwhile.
func (r *reader) settle(fj *fileJob) (bool, error) {
	fd := int(fj.f.Fd())
	start := time.Now()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, fmt.Errorf("stat before reading: %w", err)
	}
	if err := r.refresh(fj, &st); err != nil {
		return false, err
	}
	gran := stampTick
	if st.Ctim.Nsec == 0 && st.Mtim.Nsec == 0 {
		gran = stampSecond
	}
	// A ctime in the future (the clock was set back) is no tick a change
	// made now can stamp again.
	wait := gran - start.Sub(time.Unix(st.Ctim.Sec, st.Ctim.Nsec))
	if wait <= 0 || wait > gran {
		return true, nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.ctx.Done():
		return false, r.ctx.Err()
	}
	var again unix.Stat_t
	if err := unix.Fstat(fd, &again); err != nil {
		return false, fmt.Errorf("stat before reading: %w", err)
	}
	return sameVersion(&st, &again), nil
}

// refresh reads the node's metadata again if st is not the version fj.st
// describes: the file changed since it was listed or last read.
func (r *reader) refresh(fj *fileJob, st *unix.Stat_t) error {
	if sameVersion(&fj.st, st) {
		return nil
	}
	if err := fsmeta.ReadNode(fj.dirfd, fj.entry.name, st, int(fj.f.Fd()), r.owners, fj.entry.node); err != nil {
		return err
	}
	fj.st = *st
	return nil
}

// reopen makes fj read the regular file its name now names, if that is
// not the one open (cur is its stat): it was renamed over. A name gone, or
// naming anything else, leaves fj as it is: what it holds is a version the
// name had during the snapshot.
func (r *reader) reopen(fj *fileJob, cur *unix.Stat_t) {
	if fj.dirfd < 0 {
		return
	}
	var named unix.Stat_t
	err := unix.Fstatat(fj.dirfd, fj.entry.name, &named, unix.AT_SYMLINK_NOFOLLOW)
	if err != nil || (named.Dev == cur.Dev && named.Ino == cur.Ino) || named.Mode&unix.S_IFMT != unix.S_IFREG {
		return
	}
	f, err := openFile(fj.dirfd, fj.entry.name)
	if err != nil {
		return
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		f.Close()
		return
	}
	fj.f.Close()
	fj.f = f
}

// changed records a file that changed during every attempt: never reused
// from the cache, and holding the node of the set's previous snapshot (a
// version the file had, whole) if there is one to hold.
func (r *reader) changed(fj *fileJob) error {
	fj.changed = true
	n := fj.entry.node
	if fj.entry.prev != nil {
		prev := tree.Node{Name: n.Name}
		if reuseNode(&prev, fj.entry.prev) == nil && prev.Type == tree.File && prev.LinkTo == "" {
			*n = prev
			return &changedError{attempts: r.attempts, kept: true}
		}
	}
	return &changedError{attempts: r.attempts}
}

// sameVersion reports whether two stats of a file are the same version of
// it. Every change to its data or metadata moves the ctime (settle sees to
// it that no change during a read falls in the ctime's own tick); inode,
// size and mtime are compared as well.
func sameVersion(a, b *unix.Stat_t) bool {
	return a.Dev == b.Dev && a.Ino == b.Ino && a.Size == b.Size && a.Mtim == b.Mtim && a.Ctim == b.Ctim
}

// readContent returns the extents of the file: holes from SEEK_HOLE, data
// cut into chunks. New chunks are queued for saving.
func (r *reader) readContent(fj *fileJob) ([]tree.Extent, error) {
	ranges, err := fsmeta.DataRanges(fj.f, &fj.st)
	if err != nil {
		return nil, err
	}
	var content []tree.Extent
	var pos int64
	for _, rg := range ranges {
		if rg.Offset > pos {
			content = append(content, tree.Extent{Length: uint64(rg.Offset - pos)})
		}
		section := io.NewSectionReader(fj.f, rg.Offset, rg.Length)
		var n int64
		content, n, err = r.chunkRange(fj, section, rg.Offset, rg.Length, content)
		if err != nil {
			return nil, err
		}
		if n != rg.Length { // the file shrank under us: sameVersion will see it
			pos = rg.Offset + n
			break
		}
		pos = rg.Offset + rg.Length
	}
	if pos < fj.st.Size {
		content = append(content, tree.Extent{Length: uint64(fj.st.Size - pos)})
	}
	return content, nil
}

// chunkRange cuts one data range, at offset in the file, into chunks and
// appends their extents.
func (r *reader) chunkRange(fj *fileJob, rd io.Reader, offset, length int64, content []tree.Extent) ([]tree.Extent, int64, error) {
	var total int64
	if length <= int64(r.cfg.ChunkMin) {
		// Below the minimum the chunker would return the whole range anyway.
		n, err := io.ReadFull(rd, r.small[:length])
		if err != nil && err != io.ErrUnexpectedEOF {
			return nil, 0, err
		}
		if n == 0 {
			return content, 0, nil
		}
		ext, _, err := r.chunk(fj, r.small[:n], nil)
		if err != nil {
			return nil, 0, err
		}
		r.chunked(fj, offset+int64(n))
		return append(content, ext), int64(n), nil
	}
	if r.chk == nil {
		r.chk = chunker.NewWithBoundaries(rd, r.cfg.Polynomial, r.cfg.ChunkMin, r.cfg.ChunkMax)
	} else {
		r.chk.ResetWithBoundaries(rd, r.cfg.Polynomial, r.cfg.ChunkMin, r.cfg.ChunkMax)
	}
	r.chk.SetAverageBits(r.cfg.ChunkAvgBits)
	buf := r.bufs.Get().(*[]byte)
	defer func() { r.bufs.Put(buf) }()
	for {
		c, err := r.chk.Next(*buf)
		if err == io.EOF {
			return content, total, nil
		}
		if err != nil {
			return nil, 0, err
		}
		ext, taken, err := r.chunk(fj, c.Data, buf)
		if err != nil {
			return nil, 0, err
		}
		if taken { // the saver has the buffer now
			buf = r.bufs.Get().(*[]byte)
		}
		content = append(content, ext)
		total += int64(c.Length)
		r.chunked(fj, offset+total)
	}
}

// chunked calls the test hook, if any, after a chunk that ends at off.
func (r *reader) chunked(fj *fileJob, off int64) {
	if r.betweenChunks != nil {
		r.betweenChunks(fj.path, r.attempt, off)
	}
}

// chunk hashes one chunk and queues it for saving unless the repository
// already has it. data is not retained, unless it lies in owned (a pooled
// buffer): then owned is handed to the saver, and taken is true.
func (r *reader) chunk(fj *fileJob, data []byte, owned *[]byte) (ext tree.Extent, taken bool, err error) {
	id := index.Hash(data)
	r.stats.bytesRead.Add(int64(len(data)))
	ext = tree.Extent{Blob: id, Length: uint64(len(data))}
	have, err := r.up.Has(id)
	if err != nil {
		return ext, false, &fatalError{err}
	}
	if have {
		return ext, false, nil
	}
	buf, n := owned, len(data)
	if owned == nil || len(*owned) == 0 || &(*owned)[0] != &data[0] {
		buf = r.bufs.Get().(*[]byte)
		n = copy(*buf, data)
	}
	fj.outstanding.Add(1)
	select {
	case r.saves <- &saveJob{file: fj, id: id, buf: buf, n: n}:
		return ext, buf == owned, nil
	case <-r.ctx.Done():
		fj.outstanding.Add(-1)
		if buf != owned {
			r.bufs.Put(buf)
		}
		return ext, false, r.ctx.Err()
	}
}

// saver compresses and stores queued chunks.
func saver(ctx context.Context, up *chunkstore.Uploader, saves <-chan *saveJob, bufs *sync.Pool) error {
	for sj := range saves {
		_, err := up.Save(ctx, index.DataBlob, sj.id, (*sj.buf)[:sj.n])
		bufs.Put(sj.buf)
		sj.file.release()
		if err != nil {
			return err
		}
	}
	return nil
}
