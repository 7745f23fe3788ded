package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/understudy/understudy/cmd/understudy/ops"
	"github.com/understudy/understudy/snapshot/selection"
)

// defaultConfigPath is read when -c is not given and the file exists.
const defaultConfigPath = "/etc/understudy/understudy.toml"

// maxConfigSize bounds what loadConfig reads: a configuration is a few
// kilobytes, anything near this is not one.
const maxConfigSize = 1 << 20

// Defaults of the configuration file.
const (
	defaultLogKeepDays  = 14
	defaultCheckTimeout = time.Minute
	minEvery            = time.Minute // the shortest interval a set may be snapshotted at; "1m" in messages
)

// Config is the configuration file (PRODUCT.md, "Configuration (TOML)").
// loadConfig fills it only from a file without problems, so every value in
// it has been checked: paths are absolute, patterns compile, URLs parse,
// every name in a set's To is a key of Standbys, every schedule comes
// again (FuzzParseConfig holds parseConfig to this).
type Config struct {
	File        string    // the file it was read from
	Repo        string    // repo: the repository; "" when --repo must say
	LogFile     string    // log_file: "" for no log file
	LogKeepDays int       // log_keep_days: rotated log files older than this are deleted, 0 never (default 14)
	LogRotate   LogRotate // log_rotate: "daily" (default) or "size:64MiB"
	Syslog      bool      // syslog: failures also go to syslog, user.err

	Standbys map[string]Standby // [standby.NAME]
	Checks   []Check            // [[check]]: pre-flight checks, in file order
	Sets     map[string]Set     // [set.NAME]
}

// LogRotate says when the log file is rotated.
type LogRotate struct {
	// MaxSize is 0 for a file per day, the date put before the extension
	// (understudy-2006-01-02.log for log_file understudy.log); otherwise
	// the file is rotated when it reaches MaxSize bytes.
	MaxSize int64
}

// String returns r as log_rotate is written.
func (r LogRotate) String() string {
	if r.MaxSize == 0 {
		return "daily"
	}
	for _, u := range []struct {
		name string
		size int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if r.MaxSize%u.size == 0 {
			return fmt.Sprintf("size:%d%s", r.MaxSize/u.size, u.name)
		}
	}
	return fmt.Sprintf("size:%d", r.MaxSize)
}

func (r *LogRotate) parse(s string) error {
	if s == "daily" {
		*r = LogRotate{}
		return nil
	}
	if size, ok := strings.CutPrefix(s, "size:"); ok {
		n, err := parseSize(size)
		if err != nil || n < 1<<10 {
			return fmt.Errorf("%q: want a size of at least 1KiB after size:, such as size:64MiB", s)
		}
		r.MaxSize = n
		return nil
	}
	return fmt.Errorf("%q: want \"daily\" or \"size:SIZE\" such as \"size:64MiB\"", s)
}

// Standby is a [standby.NAME] table: where push sends snapshots.
type Standby struct {
	Name           string
	URL            string        // url: a repository path or ssh://[user@]host[:port]/path (usync.ParseDest)
	Target         string        // target: the live tree on the standby, for Apply; absolute
	KnownHosts     []string      // known_hosts: a file or a list of files; nil for push's defaults
	Identity       []string      // identity: a private key file or a list; nil for the agent and ~/.ssh/id_*
	Apply          bool          // apply: push with --apply --target Target
	RemoteCommand  string        // remote_command: "" for push's default, "understudy"
	ConnectTimeout time.Duration // connect_timeout: 0 for push's default
	Keepalive      time.Duration // keepalive: 0 for push's default
}

// Check is a [[check]] table: a pre-flight check; any failure aborts a run.
type Check struct {
	Name    string        // name: "" in the file means the command line
	Command []string      // command: the program and its arguments, run without a shell
	Timeout time.Duration // timeout: default 1m
}

// Set is a [set.NAME] table: a selection with its schedule, standbys,
// retention and, for the standby side, its apply settings. A set without
// Paths only carries standby-side settings (ApplyDelay, Guard, Protect).
// On a host whose file names the set, those three are the set's, whatever
// `standby` and the state said: they are written into its standby state
// before every apply (standbyFromConfig), what the table leaves out as the
// default.
type Set struct {
	Name          string
	Paths         []string      // paths: absolute, as listed (selection.New cleans them)
	Exclude       []string      // exclude: rsync --exclude patterns
	OneFileSystem bool          // one_file_system
	TrustMtime    bool          // trust_mtime: snapshot --trust-mtime
	Every         Every         // every: a duration of at least 1m, or a cron expression
	To            []string      // to: names of standbys
	Keep          Keep          // keep: retention
	ApplyDelay    time.Duration // apply_delay: on the standby, apply a snapshot once it is this old
	Guard         Guard         // guard: on the standby, the mass-change guard
	Protect       []string      // protect: on the standby, patterns no apply touches
}

// lookupSet returns the set name of c; false when c is nil or has no such
// set.
func (c *Config) lookupSet(name string) (Set, bool) {
	if c == nil {
		return Set{}, false
	}
	s, ok := c.Sets[name]
	return s, ok
}

// Selection compiles the set's paths, exclude patterns and
// one_file_system; nil for a set without paths.
func (s Set) Selection() (*selection.Selection, error) {
	if len(s.Paths) == 0 {
		return nil, nil
	}
	return selection.New(s.Paths, s.Exclude, s.OneFileSystem)
}

// Keep is a set's retention policy, as forget's --keep-* flags.
type Keep struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
	Within                                       time.Duration
}

// Guard holds the mass-change guard's limits in percent (0 to 100) of the
// files and bytes in the scope; nil for the default (restore.DefaultMaxDeleted,
// DefaultMaxChanged).
type Guard struct {
	MaxDeleted *float64 // max_deleted
	MaxChanged *float64 // max_changed
}

// Every is when a set is snapshotted: an interval or a cron expression.
type Every struct {
	Interval time.Duration // every = "1h"; 0 for a cron expression
	Cron     string        // every = "0 3 * * *", as written; "" for an interval
}

// IsZero reports whether the set has no schedule.
func (e Every) IsZero() bool { return e.Interval == 0 && e.Cron == "" }

func (e Every) String() string {
	if e.Cron != "" {
		return e.Cron
	}
	return e.Interval.String()
}

// Next returns the time of the first run after last, the zero time for a
// set without a schedule.
func (e Every) Next(last time.Time) time.Time {
	switch {
	case e.Cron != "":
		s, err := ops.ParseCron(e.Cron)
		if err != nil {
			return time.Time{} // loadConfig checked it
		}
		return s.Next(last)
	case e.Interval > 0:
		return last.Add(e.Interval)
	}
	return time.Time{}
}

// parseEvery reads a set's every: a duration of at least minEvery, or a
// 5-field cron expression (or @hourly, @daily...), which may start with
// CRON_TZ=Zone.
func parseEvery(s string) (Every, error) {
	if d, err := parseDuration(s); err == nil {
		if d < minEvery {
			return Every{}, fmt.Errorf("%q is shorter than the shortest interval, 1m", s)
		}
		return Every{Interval: d}, nil
	}
	switch {
	case strings.HasPrefix(s, "@every"):
		return Every{}, fmt.Errorf("%q: write the interval itself, such as every = %q", s, strings.TrimSpace(strings.TrimPrefix(s, "@every")))
	case strings.ContainsAny(s, " \t") || strings.HasPrefix(s, "@"):
		sched, err := ops.ParseCron(s) // as the timers of systemd-units read it
		if err != nil {
			return Every{}, err
		}
		if sched.Next(time.Now()).IsZero() {
			// Such as "0 0 31 4 *": the parser takes any day of any month.
			return Every{}, fmt.Errorf("%q never comes: no such date in the next five years", s)
		}
		return Every{Cron: s}, nil
	}
	return Every{}, fmt.Errorf("%q is not a duration or a cron expression", s)
}

// parseDuration reads a duration as Go writes it ("90s", "1h30m") or
// with whole days in front ("7d", "1d12h").
func parseDuration(s string) (time.Duration, error) {
	bad := fmt.Errorf("%q is not a duration (such as 90s, 30m, 4h or 7d)", s)
	rest := s
	var days time.Duration
	if n, after, ok := strings.Cut(s, "d"); ok {
		if n == "" || len(n) > 5 || strings.Trim(n, "0123456789") != "" {
			return 0, bad
		}
		for _, c := range n {
			days = days*10 + time.Duration(c-'0')
		}
		days *= 24 * time.Hour
		if after == "" {
			return days, nil
		}
		rest = after
	}
	d, err := time.ParseDuration(rest)
	if err != nil || d < 0 {
		return 0, bad
	}
	return days + d, nil
}

// parseSize reads a byte count with an optional unit: "64MiB", "500KB".
func parseSize(s string) (int64, error) {
	num := strings.TrimRight(s, "KMGTiB")
	unit := s[len(num):]
	mult := map[string]int64{
		"": 1, "B": 1,
		"K": 1 << 10, "KiB": 1 << 10, "M": 1 << 20, "MiB": 1 << 20, "G": 1 << 30, "GiB": 1 << 30,
		"KB": 1e3, "MB": 1e6, "GB": 1e9,
	}[unit]
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || mult == 0 || n > math.MaxInt64/mult || strings.Trim(num, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a size (such as 64MiB)", s)
	}
	return n * mult, nil
}

// validName reports whether a set or standby name is made of [a-z0-9_-]:
// names appear in file names, the index and command lines.
func validName(name string) bool {
	return name != "" && strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789_-") == ""
}

// loadConfig reads the configuration file path and checks all of it. Its
// problems come back together in a *configError.
func loadConfig(path string) (*Config, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("configuration file %s does not exist", path)
	} else if err != nil {
		return nil, fmt.Errorf("configuration file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("configuration %s: %w", path, err)
	}
	if len(data) > maxConfigSize {
		return nil, fmt.Errorf("configuration %s: larger than %s, not a configuration file", path, humanBytes(maxConfigSize))
	}
	return parseConfig(path, data)
}

// sortedKeys returns the keys of m in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
