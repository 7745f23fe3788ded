package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/restic/chunker"
	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot/fsmeta"
	"github.com/understudy/understudy/snapshot/tree"
)

// maxReadAttempts is how often a file that changes while it is read is read
// again before it is recorded as changed during the read.
const maxReadAttempts = 3

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
}

func newBufPool(size int) *sync.Pool {
	return &sync.Pool{New: func() any { b := make([]byte, size); return &b }}
}

// run reads queued files until the queue closes.
func (r *reader) run(files <-chan *fileJob) error {
	r.small = make([]byte, r.cfg.ChunkMin)
	for fj := range files {
		err := r.readFile(fj)
		fj.f.Close()
		if err != nil {
			if r.ctx.Err() != nil {
				return r.ctx.Err()
			}
			var fatal *fatalError
			if errors.As(err, &fatal) {
				return fatal.err
			}
			r.warn(fj.path, err)
			fj.failed.Store(true)
		}
		fj.release()
	}
	return nil
}

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

// readFile reads a file into its node's Content, retrying if the file changes
// during the read.
func (r *reader) readFile(fj *fileJob) error {
	for attempt := 1; ; attempt++ {
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
		if attempt == maxReadAttempts {
			fj.entry.node.Content = content
			fj.changed = true
			return fmt.Errorf("changed while being read (%d attempts); the snapshot holds the last read", attempt)
		}
		fj.st = after
		fj.entry.node.MtimeSec, fj.entry.node.MtimeNsec = after.Mtim.Sec, uint32(after.Mtim.Nsec)
		if _, err := fj.f.Seek(0, io.SeekStart); err != nil {
			return err
		}
	}
}

func sameVersion(a, b *unix.Stat_t) bool {
	return a.Size == b.Size && a.Mtim == b.Mtim && a.Ctim == b.Ctim && a.Ino == b.Ino
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
		content, n, err = r.chunkRange(fj, section, rg.Length, content)
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

// chunkRange cuts one data range into chunks and appends their extents.
func (r *reader) chunkRange(fj *fileJob, rd io.Reader, length int64, content []tree.Extent) ([]tree.Extent, int64, error) {
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
