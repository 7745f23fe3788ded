package ops

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"log/syslog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// SyslogTag is the tag of understudy's syslog lines, the seed's
// `logger -t understudy`.
const SyslogTag = "understudy"

// LogOptions says where the log of an operational command goes.
type LogOptions struct {
	// File is the log file, an absolute path; "" for none. Its directory is
	// created (0755) if missing, and the file (0640).
	File string
	// MaxSize is 0 for a file per day, the date (in the clock's time zone)
	// put before the extension: understudy-2006-01-02.log for File
	// understudy.log, understudy-2006-01-02 for File understudy. Otherwise
	// File is renamed to File.2006-01-02T15-04-05 (.1, .2… if that exists)
	// before a write that would take it past MaxSize bytes, and a new File
	// started.
	MaxSize int64
	// KeepDays: the dated and rotated files of File, named as above, whose
	// modification time is more than KeepDays days old are deleted when the
	// log is opened and at each rotation. 0 keeps them all.
	KeepDays int
	// Stderr, if not nil, also gets every line (the CLI passes os.Stderr
	// when it is a terminal), and the one report of a failing log file.
	Stderr io.Writer
	// JSON writes JSON lines (slog.JSONHandler) instead of key=value lines
	// (slog.TextHandler), in File and on Stderr.
	JSON bool
	// Level is the lowest level written to File and Stderr.
	Level slog.Level
	// Syslog copies every record at slog.LevelError or above to syslog,
	// facility user, severity err, tag understudy: the message and its
	// attributes as key=value, without a timestamp (syslog adds its own).
	Syslog bool
	// SyslogAddr is where syslog is when Syslog is set: "" for the system's
	// (log/syslog.New; a host without one gets a warning in the log, not an
	// error), or "unixgram:/path", "unix:/path", "udp:host:port",
	// "tcp:host:port" (tests and containers; OpenLog fails if it cannot be
	// reached).
	SyslogAddr string
	// Now is the clock for file names, rotation and expiry; nil for
	// time.Now. Records carry slog's own time stamp.
	Now func() time.Time
}

// Log is the log of an operational command: slog records, each a
// time-stamped line, go to the log file, to a terminal, and, at level
// error, to syslog. A write that fails is reported once and the program
// goes on: the log is never the reason a run fails.
type Log struct {
	file   *logFile       // nil without a file
	sys    *syslog.Writer // nil without syslog
	closed atomic.Bool    // stops the records to syslog
	logger *slog.Logger
}

// OpenLog opens the log o describes: it creates the log file and its
// directory if missing, deletes expired files, and connects to syslog.
func OpenLog(o LogOptions) (*Log, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxSize < 0 {
		return nil, fmt.Errorf("log file %s: negative maximum size %d", o.File, o.MaxSize)
	}
	if o.KeepDays < 0 {
		return nil, fmt.Errorf("log file %s: negative days to keep %d", o.File, o.KeepDays)
	}
	var stderr io.Writer
	if o.Stderr != nil {
		stderr = &lockedLogWriter{w: o.Stderr}
	}
	format := func(w io.Writer) slog.Handler {
		ho := &slog.HandlerOptions{Level: o.Level}
		if o.JSON {
			return slog.NewJSONHandler(w, ho)
		}
		return slog.NewTextHandler(w, ho)
	}

	l := &Log{}
	var handlers []slog.Handler
	var notice slog.Handler // where the log's own warnings go: the file, else stderr
	if o.File != "" {
		f, err := openLogFile(o, stderr)
		if err != nil {
			return nil, err
		}
		l.file = f
		notice = format(f)
		handlers = append(handlers, notice)
	}
	if stderr != nil {
		h := format(stderr)
		if notice == nil {
			notice = h
		}
		handlers = append(handlers, h)
	}
	warn := func(msg string, args ...any) {
		if notice != nil {
			slog.New(notice).Warn(msg, args...)
		}
	}

	if o.Syslog {
		w, err := DialSyslog(o.SyslogAddr)
		switch {
		case err != nil && o.SyslogAddr != "":
			if l.file != nil {
				l.file.Close()
			}
			return nil, fmt.Errorf("syslog %s: %w", o.SyslogAddr, err)
		case err != nil:
			warn("no syslog on this host; failures are only in this log", "err", err)
		default:
			l.sys = w
			handlers = append(handlers, &syslogHandler{w: w, closed: &l.closed, failed: new(sync.Once), warn: warn})
		}
	}
	l.logger = slog.New(slog.NewMultiHandler(handlers...))
	return l, nil
}

// Logger returns the logger writing to l; it is safe for concurrent use.
func (l *Log) Logger() *slog.Logger { return l.logger }

// Close closes the log file and the syslog connection. Records logged
// after Close go to Stderr only.
func (l *Log) Close() error {
	if l.closed.Swap(true) {
		return nil
	}
	var errs []error
	if l.sys != nil {
		errs = append(errs, l.sys.Close())
	}
	if l.file != nil {
		errs = append(errs, l.file.Close())
	}
	return errors.Join(errs...)
}

// DialSyslog connects to the syslog at addr ("" for the system's,
// "unixgram:/path", "unix:/path", "udp:host:port" or "tcp:host:port") as
// user.err with tag understudy.
func DialSyslog(addr string) (*syslog.Writer, error) {
	const priority = syslog.LOG_USER | syslog.LOG_ERR
	if addr == "" {
		return syslog.New(priority, SyslogTag)
	}
	network, raddr, ok := strings.Cut(addr, ":")
	switch {
	case !ok || raddr == "":
	case network == "unixgram", network == "unix", network == "udp", network == "tcp":
		return syslog.Dial(network, raddr, priority, SyslogTag)
	}
	return nil, errors.New("want unixgram:/path, unix:/path, udp:host:port or tcp:host:port")
}

// lockedLogWriter serialises the writes of the stderr handler and of the log
// file's error report.
type lockedLogWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (w *lockedLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}
