package restore

import (
	"errors"
	"fmt"
	"os"

	"github.com/understudy/understudy/snapshot/fsmeta"
)

func newFile(fd int, name string) *os.File { return os.NewFile(uintptr(fd), name) }

// finish releases what a file task holds.
func (t *fileTask) finish() {
	t.f.Close()
	t.dir.unref()
	t.done.Done()
}

// writer writes queued files. After an error it keeps draining the queue,
// releasing each task, so that no other stage waits forever.
func (r *restorer) writer() error {
	var buf []byte
	var first error
	for t := range r.files {
		if first == nil && r.ctx.Err() == nil {
			if err := r.writeFile(t, &buf); err != nil {
				var fatal *fatalError
				if errors.As(err, &fatal) {
					first = fatal.err
				} else {
					r.warn(t.path, err)
				}
			}
		}
		t.finish()
	}
	return first
}

// fatalError stops the restore: the repository cannot provide the data.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }

func (r *restorer) writeFile(t *fileTask, buf *[]byte) error {
	var off int64
	for _, e := range t.node.Content {
		if e.IsHole() {
			off += int64(e.Length)
			continue
		}
		data, err := r.loader.LoadBlob(e.Blob, *buf)
		if err != nil {
			return &fatalError{fmt.Errorf("%s: %w", t.path, err)}
		}
		if uint64(len(data)) != e.Length {
			return &fatalError{fmt.Errorf("%s: blob %s has %d bytes, the tree says %d", t.path, e.Blob.Short(), len(data), e.Length)}
		}
		if cap(data) > cap(*buf) {
			*buf = data[:0]
		}
		if _, err := t.f.WriteAt(data, off); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		off += int64(len(data))
		r.stats.bytes.Add(int64(len(data)))
	}
	if n := len(t.node.Content); n > 0 && t.node.Content[n-1].IsHole() {
		if err := t.f.Truncate(off); err != nil { // a trailing hole
			return fmt.Errorf("truncate: %w", err)
		}
	}
	return fsmeta.Apply(t.dir.fd, t.name, int(t.f.Fd()), &t.node)
}

// finisher sets the metadata of directories, children before parents, once
// their files are written.
func (r *restorer) finisher() error {
	for t := range r.dirs {
		t.files.Wait()
		if t.node != nil && r.ctx.Err() == nil {
			if err := fsmeta.Apply(t.parent.fd, t.name, t.self.fd, t.node); err != nil {
				r.warn(t.path, err)
			}
		}
		t.self.unref()
		t.parent.unref()
	}
	return nil
}
