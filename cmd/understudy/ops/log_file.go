package ops

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Names of the log's dated and rotated files.
const (
	logDayLayout     = "2006-01-02"          // understudy-2006-01-02.log
	logRotatedLayout = "2006-01-02T15-04-05" // understudy.log.2006-01-02T15-04-05[.N]
)

const (
	logFileMode       = 0o640
	logDirMode        = 0o755
	logFileFlags      = os.O_WRONLY | os.O_APPEND | os.O_CREATE
	logCheckEvery     = time.Second // how often the path is compared with the open file
	logMaxRotateTries = 10          // rotations one write may meet before it writes anyway
	logDay            = 24 * time.Hour
)

// logFile is the log file as an io.Writer. Each Write is one write(2) of one
// whole line to a file opened O_APPEND, so processes sharing the file never
// tear each other's lines. slog's handlers make one Write per record.
//
// Size rotation is safe between processes: under an exclusive flock(2) on
// the open file, the file's size is read and the line written, or the path
// is checked to be still that file and renamed, and a new file opened. A
// process holding a file renamed by another finds out when it takes the lock
// to rotate, and at most a second later at its next write, and reopens the
// path; its lines in between go to the renamed file, never lost.
type logFile struct {
	path      string // File as configured
	dir, base string // filepath.Dir and filepath.Base of path
	stem, ext string // base without its extension, and the extension: daily names are stem-DATEext
	maxSize   int64
	keepDays  int
	now       func() time.Time
	stderr    io.Writer // where the first failure is reported; nil for nowhere

	mu       sync.Mutex
	f        *os.File  // nil after Close
	name     string    // the path f was opened at
	checked  time.Time // when the file at name was last compared with f
	reported bool      // a failure has been reported on stderr
}

// openLogFile opens the log file of o and deletes the expired ones.
func openLogFile(o LogOptions, stderr io.Writer) (*logFile, error) {
	base := filepath.Base(o.File)
	ext := filepath.Ext(base)
	l := &logFile{
		path: o.File, dir: filepath.Dir(o.File), base: base,
		stem: strings.TrimSuffix(base, ext), ext: ext,
		maxSize: o.MaxSize, keepDays: o.KeepDays, now: o.Now, stderr: stderr,
	}
	if err := os.MkdirAll(l.dir, logDirMode); err != nil {
		return nil, fmt.Errorf("log directory: %w", err)
	}
	t := l.now()
	if err := l.open(l.nameAt(t), t); err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	if err := l.expire(t); err != nil {
		l.report(err)
	}
	return l, nil
}

// Write writes p, one line, to the log file. It never fails: a failure is
// reported once on stderr and the next write tries again.
func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return len(p), nil
	}
	if err := l.write(p); err != nil {
		l.report(err)
	}
	return len(p), nil
}

// Close closes the file; later writes are dropped.
func (l *logFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

func (l *logFile) write(p []byte) error {
	t := l.now()
	if name := l.nameAt(t); name != l.name {
		// A new day. If its file cannot be opened, write to the old one.
		if err := l.open(name, t); err != nil {
			l.f.Write(p)
			return err
		}
		if err := l.expire(t); err != nil {
			l.report(err)
		}
	} else if t.Sub(l.checked) >= logCheckEvery || t.Before(l.checked) {
		l.checked = t
		if fi, err := l.f.Stat(); err != nil || !l.current(fi) {
			if err := l.open(l.name, t); err != nil {
				l.report(err)
			}
		}
	}
	if l.maxSize == 0 {
		_, err := l.f.Write(p)
		return err
	}
	return l.writeCapped(p, t)
}

// writeCapped writes p to the file at path, rotating it first if p would
// take it past maxSize. An empty file takes any line.
func (l *logFile) writeCapped(p []byte, t time.Time) error {
	for try := 1; ; try++ {
		f := l.f
		locked := logFlock(f, unix.LOCK_EX) == nil
		fi, err := f.Stat()
		if err == nil && fi.Size() > 0 && fi.Size()+int64(len(p)) > l.maxSize && try < logMaxRotateTries {
			err = l.rotate(fi, t) // unlocks f by closing it, unless it fails
			if err == nil {
				continue
			}
		}
		_, werr := f.Write(p)
		if locked {
			logFlock(f, unix.LOCK_UN)
		}
		return errors.Join(err, werr)
	}
}

// rotate renames the file at path, which is the open file fi unless another
// process has renamed it already, and opens a new one. f is locked by the
// caller; on success it is closed, which releases the lock, so another
// process waiting for it finds the path is a new file.
func (l *logFile) rotate(fi os.FileInfo, t time.Time) error {
	renamed := false
	if l.current(fi) {
		to, err := l.rotatedName(t)
		if err == nil {
			err = os.Rename(l.path, to)
		}
		if err != nil {
			return fmt.Errorf("rotating the log file: %w", err)
		}
		renamed = true
	}
	if err := l.open(l.path, t); err != nil {
		return err
	}
	if renamed {
		if err := l.expire(t); err != nil {
			l.report(err)
		}
	}
	return nil
}

// current reports whether the file at l.name is fi.
func (l *logFile) current(fi os.FileInfo) bool {
	st, err := os.Stat(l.name)
	return err == nil && os.SameFile(st, fi)
}

// open makes the file at name, created if missing, the open file; the old
// one is closed. On failure the old one stays open.
func (l *logFile) open(name string, t time.Time) error {
	if err := os.MkdirAll(filepath.Dir(name), logDirMode); err != nil {
		return err
	}
	f, err := os.OpenFile(name, logFileFlags, logFileMode)
	if err != nil {
		return err
	}
	if l.f != nil {
		l.f.Close()
	}
	l.f, l.name, l.checked = f, name, t
	return nil
}

// nameAt returns the path the log is written to at t.
func (l *logFile) nameAt(t time.Time) string {
	if l.maxSize > 0 {
		return l.path
	}
	return filepath.Join(l.dir, l.stem+"-"+t.Format(logDayLayout)+l.ext)
}

// rotatedName returns the name path is renamed to at t: path.TIME, or
// path.TIME.N if that exists.
func (l *logFile) rotatedName(t time.Time) (string, error) {
	name := l.path + "." + t.Format(logRotatedLayout)
	for n := 1; ; n++ {
		_, err := os.Lstat(name)
		if errors.Is(err, os.ErrNotExist) {
			return name, nil
		}
		if err != nil {
			return "", err
		}
		name = l.path + "." + t.Format(logRotatedLayout) + "." + strconv.Itoa(n)
	}
}

// expire deletes this log's dated and rotated files, but the open one,
// last modified more than keepDays days before t.
func (l *logFile) expire(t time.Time) error {
	if l.keepDays == 0 {
		return nil
	}
	cutoff := t.Add(-time.Duration(l.keepDays) * logDay)
	entries, err := os.ReadDir(l.dir)
	if err != nil {
		return fmt.Errorf("expiring old log files: %w", err)
	}
	var errs []error
	for _, e := range entries {
		name := filepath.Join(l.dir, e.Name())
		if !l.isOld(e.Name()) || name == l.name || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil || !fi.ModTime().Before(cutoff) {
			continue
		}
		if err := os.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("expiring old log files: %w", err))
		}
	}
	return errors.Join(errs...)
}

// isOld reports whether name is one of this log's dated files
// (stem-2006-01-02ext) or rotated files (base.2006-01-02T15-04-05[.N]).
func (l *logFile) isOld(name string) bool {
	if rest, ok := strings.CutPrefix(name, l.base+"."); ok && len(rest) >= len(logRotatedLayout) {
		if _, err := time.Parse(logRotatedLayout, rest[:len(logRotatedLayout)]); err == nil {
			rest = rest[len(logRotatedLayout):]
			if rest == "" {
				return true
			}
			n, ok := strings.CutPrefix(rest, ".")
			return ok && n != "" && n[0] != '0' && strings.Trim(n, "0123456789") == ""
		}
	}
	if rest, ok := strings.CutPrefix(name, l.stem+"-"); ok {
		if date, ok := strings.CutSuffix(rest, l.ext); ok && len(date) == len(logDayLayout) {
			_, err := time.Parse(logDayLayout, date)
			return err == nil
		}
	}
	return false
}

// report writes err on stderr if it is the log file's first failure.
func (l *logFile) report(err error) {
	if l.reported {
		return
	}
	l.reported = true
	if l.stderr != nil {
		fmt.Fprintf(l.stderr, "understudy: log file %s: %v (the run goes on; further log file errors are not shown)\n", l.path, err)
	}
}

// logFlock applies how (unix.LOCK_EX, unix.LOCK_UN) to f.
func logFlock(f *os.File, how int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	cerr := rc.Control(func(fd uintptr) {
		for {
			if err = unix.Flock(int(fd), how); err != unix.EINTR {
				return
			}
		}
	})
	return errors.Join(cerr, err)
}
