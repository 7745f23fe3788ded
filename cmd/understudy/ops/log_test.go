package ops

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"log/syslog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// logTextLine is a line of slog.TextHandler: time, level, message, attributes.
var logTextLine = regexp.MustCompile(`^time=(\S+) level=([A-Z]+) msg=("(?:[^"\\]|\\.)*"|[^ "]+)( .*)?$`)

// logClock is a clock tests move by hand.
type logClock struct {
	mu sync.Mutex
	t  time.Time
}

func newLogClock(t time.Time) *logClock { return &logClock{t: t} }

func (c *logClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *logClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// logBuffer is a bytes.Buffer safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// openTestLog opens a log closed at the end of the test.
func openTestLog(t *testing.T, o LogOptions) *Log {
	t.Helper()
	l, err := OpenLog(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// readLogLines returns the lines of the file at path; each must end in "\n".
func readLogLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 {
		return nil
	}
	if b[len(b)-1] != '\n' {
		t.Fatalf("%s does not end with a newline: %q", path, b)
	}
	return strings.Split(string(b[:len(b)-1]), "\n")
}

// checkTextLine fails unless line is a slog text line with a time stamp at
// most a minute old in the local time zone, at level, with message msg.
func checkTextLine(t *testing.T, line, level, msg string) {
	t.Helper()
	m := logTextLine.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("not a text log line: %q", line)
	}
	ts, err := time.Parse(time.RFC3339Nano, m[1])
	if err != nil {
		t.Fatalf("line %q: time: %v", line, err)
	}
	if d := time.Since(ts); d < 0 || d > time.Minute {
		t.Errorf("line %q: time %v is not now", line, ts)
	}
	if _, off := ts.Zone(); off != func() int { _, o := ts.Local().Zone(); return o }() {
		t.Errorf("line %q: time %v is not in the local time zone", line, ts)
	}
	if m[2] != level || strings.Trim(m[3], `"`) != msg {
		t.Errorf("line %q: want level %s, message %q", line, level, msg)
	}
}

func TestLogStderrAndLevel(t *testing.T) {
	for _, tc := range []struct {
		level slog.Level
		want  []string
	}{
		{slog.LevelInfo, []string{"INFO shown", "ERROR failed"}},
		{slog.LevelDebug, []string{"DEBUG hidden", "INFO shown", "ERROR failed"}},
		{slog.LevelError, []string{"ERROR failed"}},
	} {
		t.Run(tc.level.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "log", "understudy.log")
			var stderr logBuffer
			l := openTestLog(t, LogOptions{File: path, MaxSize: 1 << 20, Stderr: &stderr, Level: tc.level})
			log := l.Logger()
			log.Debug("hidden")
			log.Info("shown", "set", "os")
			log.Error("failed", "err", errors.New("disk full"))
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() & ^os.FileMode(0o640) != 0 {
				t.Errorf("log file mode %v, want at most 0640", fi.Mode())
			}
			fileLines := readLogLines(t, path)
			if got := stderr.String(); got != strings.Join(fileLines, "\n")+"\n" {
				t.Errorf("stderr got\n%s\nthe file has\n%s", got, strings.Join(fileLines, "\n"))
			}
			if len(fileLines) != len(tc.want) {
				t.Fatalf("lines %q, want %q", fileLines, tc.want)
			}
			for i, w := range tc.want {
				level, msg, _ := strings.Cut(w, " ")
				checkTextLine(t, fileLines[i], level, msg)
			}
		})
	}
}

func TestLogJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "understudy.log")
	var stderr logBuffer
	l := openTestLog(t, LogOptions{File: path, JSON: true, Stderr: &stderr})
	log := l.Logger()
	log.Info("snapshot taken", "set", "os", "files", 3)
	log.With("set", "accounts").Error("push failed", "err", errors.New("connection refused"))
	l.Close()

	logDay := filepath.Join(filepath.Dir(path), "understudy-"+time.Now().Format(logDayLayout)+".log")
	lines := readLogLines(t, logDay)
	if got := stderr.String(); got != strings.Join(lines, "\n")+"\n" {
		t.Errorf("stderr got\n%s\nthe file has\n%s", got, strings.Join(lines, "\n"))
	}
	want := []map[string]any{
		{"level": "INFO", "msg": "snapshot taken", "set": "os", "files": 3.0},
		{"level": "ERROR", "msg": "push failed", "set": "accounts", "err": "connection refused"},
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d: %q", len(lines), len(want), lines)
	}
	for i, line := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		ts, _ := rec["time"].(string)
		if when, err := time.Parse(time.RFC3339Nano, ts); err != nil || time.Since(when) > time.Minute {
			t.Errorf("line %q: time %q is not a time stamp of now (%v)", line, ts, err)
		}
		delete(rec, "time")
		if fmt.Sprint(rec) != fmt.Sprint(want[i]) {
			t.Errorf("line %d: got %v, want %v", i, rec, want[i])
		}
	}
}

// listenSyslog listens on a unixgram socket in dir and returns the channel
// of datagrams received.
func listenSyslog(t *testing.T, sock string) (<-chan string, *net.UnixConn) {
	t.Helper()
	os.Remove(sock)
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ch := make(chan string, 16)
	go func() {
		defer close(ch)
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return ch, c
}

func receiveSyslog(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatal("syslog listener closed")
		}
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("nothing received by syslog in 10s")
	}
	return ""
}

// checkSyslog fails unless m is a syslog message of priority user.err,
// tag understudy, this process's pid and text text.
func checkSyslog(t *testing.T, m, text string) {
	t.Helper()
	if !strings.HasPrefix(m, "<11>") {
		t.Errorf("syslog message %q: want priority <11> (user.err)", m)
	}
	if want := fmt.Sprintf(" understudy[%d]: %s\n", os.Getpid(), text); !strings.HasSuffix(m, want) {
		t.Errorf("syslog message %q: want it to end with %q", m, want)
	}
}

func TestLogSyslog(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "log.sock")
	ch, conn := listenSyslog(t, sock)
	path := filepath.Join(dir, "understudy.log")
	l := openTestLog(t, LogOptions{File: path, MaxSize: 1 << 20, Syslog: true, SyslogAddr: "unixgram:" + sock})
	log := l.Logger()

	log.Info("routine", "set", "os")
	log.Warn("odd", "set", "os")
	log.With("set", "os").WithGroup("push").Error("push failed", "to", "dr", "err", errors.New("connection refused"),
		slog.Group("", "inline", 1), slog.Group("empty"))
	log.Error("second")
	// Datagrams on a unix socket arrive in order: the Info and Warn records
	// would be before these.
	checkSyslog(t, receiveSyslog(t, ch), `push failed set=os push.to=dr push.err="connection refused" push.inline=1`)
	checkSyslog(t, receiveSyslog(t, ch), "second")

	// syslogd restarts: a new socket at the same path.
	conn.Close()
	ch, _ = listenSyslog(t, sock)
	log.Error("after restart", "n", 1)
	checkSyslog(t, receiveSyslog(t, ch), "after restart n=1")

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	log.Error("after close")
	// A datagram the test sends arrives after anything the log sent.
	c, err := net.Dial("unixgram", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("marker")); err != nil {
		t.Fatal(err)
	}
	if m := receiveSyslog(t, ch); m != "marker" {
		t.Errorf("after Close, syslog got %q", m)
	}
	lines := readLogLines(t, path)
	if len(lines) != 5 {
		t.Fatalf("log file: %d lines, want every record, 5: %q", len(lines), lines)
	}
	checkTextLine(t, lines[2], "ERROR", "push failed")
}

func TestLogSyslogAddr(t *testing.T) {
	dir := t.TempDir()
	for _, addr := range []string{
		"unixgram:" + filepath.Join(dir, "missing.sock"),
		"unix:" + filepath.Join(dir, "missing.sock"),
		"udp:",
		"/dev/log",
		"kafka:localhost:9092",
	} {
		l, err := OpenLog(LogOptions{File: filepath.Join(dir, "understudy.log"), Syslog: true, SyslogAddr: addr})
		if err == nil {
			l.Close()
			t.Errorf("syslog address %q: no error", addr)
			continue
		}
		if !strings.Contains(err.Error(), addr) {
			t.Errorf("syslog address %q: error %q does not name it", addr, err)
		}
	}
}

func TestLogNoSystemSyslog(t *testing.T) {
	if w, err := syslog.New(syslog.LOG_USER|syslog.LOG_INFO, "understudy-test"); err == nil {
		w.Close()
		t.Skip("this host has a syslog")
	}
	path := filepath.Join(t.TempDir(), "understudy.log")
	var stderr logBuffer
	l := openTestLog(t, LogOptions{File: path, MaxSize: 1 << 20, Syslog: true, Stderr: &stderr})
	l.Logger().Error("failed")
	l.Logger().Error("failed again")
	l.Close()
	lines := readLogLines(t, path)
	if len(lines) != 3 {
		t.Fatalf("want a warning and two errors, got %q", lines)
	}
	checkTextLine(t, lines[0], "WARN", "no syslog on this host; failures are only in this log")
	checkTextLine(t, lines[1], "ERROR", "failed")
	if strings.Contains(stderr.String(), "syslog") {
		t.Errorf("the warning went to stderr as well: %q", stderr.String())
	}
}

func TestLogWriteError(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	var stderr logBuffer
	l := openTestLog(t, LogOptions{File: "/dev/full", MaxSize: 1 << 20, Stderr: &stderr})
	for i := range 3 {
		l.Logger().Info("line", "i", i)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var reports, lines int
	for _, line := range strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n") {
		switch {
		case strings.HasPrefix(line, "understudy: log file /dev/full: ") && strings.Contains(line, "no space left"):
			reports++
		case logTextLine.MatchString(line):
			lines++
		default:
			t.Errorf("stderr: unexpected %q", line)
		}
	}
	if reports != 1 || lines != 3 {
		t.Errorf("stderr has %d reports and %d log lines, want 1 and 3:\n%s", reports, lines, stderr.String())
	}
}
