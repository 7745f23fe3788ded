package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/cmd/understudy/ops"
)

// Settings of the units systemd-units writes.
const (
	unitRunWait     = 6 * time.Hour    // run --wait: as long as the daemon waits for the repository
	unitBootDelay   = 5 * time.Minute  // an interval timer's first run after boot, at most
	unitStopTimeout = 30 * time.Minute // SIGTERM lets the current step finish; SIGKILL after this
	daemonUnit      = "understudy-daemon.service"
)

// systemdSearchPath are the directories systemd loads system units from
// by name; units elsewhere are linked in by path.
var systemdSearchPath = []string{"/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
	"/usr/lib/systemd/system", "/lib/systemd/system"}

type systemdUnitsOptions struct {
	dir   string
	force bool
}

func newSystemdUnitsCmd(g *globals) *cobra.Command {
	var opts systemdUnitsOptions
	cmd := &cobra.Command{
		Use:   "systemd-units --dir DIR [--force]",
		Short: "Write systemd units: a timer per scheduled set, or one for the daemon",
		Long: `Write into DIR (such as /etc/systemd/system; made if missing) the systemd
units that run the sets of the configuration file (-c FILE) without cron:

  understudy-run-SET.service  runs "understudy run SET" once (Type=oneshot),
                              at a low CPU and I/O priority
  understudy-run-SET.timer    starts it on the set's schedule: an interval
                              as OnUnitActiveSec= (first run a few minutes
                              after boot), a cron expression as OnCalendar=
                              with Persistent=true (a missed time runs once)
  understudy-daemon.service   runs "understudy daemon", which runs every set
                              on its schedule; reload (SIGHUP) rereads the file

The timers and the daemon are alternatives: enable one or the other, never
both. Only sets with paths and "every" get a service and a timer. The units
name this binary and the configuration file by their absolute paths.

A unit file that exists with other contents is replaced only with --force;
one with the same contents is left alone. Each is written to a temporary file
then renamed. At the end the systemctl commands that enable the timers, or
the daemon, are printed. A cron expression that restricts both the day of
the month and the day of the week (cron runs on the days either matches)
gets two OnCalendar= lines.

--json prints dir, config, binary, and files: each file's path (file), unit,
set (none for the daemon's) and state (created, replaced or unchanged); and
stale: understudy-run-* files in DIR for sets no longer scheduled, which are
left alone.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSystemdUnits(g, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.dir, "dir", "", "write the units into `DIR`, such as /etc/systemd/system")
	f.BoolVar(&opts.force, "force", false, "replace unit files that exist with other contents")
	cmd.MarkFlagRequired("dir")
	return cmd
}

// unitFile is one unit systemd-units writes and, once written, its state.
type unitFile struct {
	Path  string `json:"file"`
	Unit  string `json:"unit"`
	Set   string `json:"set,omitempty"` // "" for the daemon's unit
	State string `json:"state"`         // created, replaced or unchanged
	data  []byte
}

// unitsReport is systemd-units' --json output.
type unitsReport struct {
	Dir    string     `json:"dir"`
	Config string     `json:"config"`
	Binary string     `json:"binary"`
	Files  []unitFile `json:"files"`
	// Stale are understudy-run-* unit files in Dir for sets the
	// configuration no longer schedules; they are left alone.
	Stale []string `json:"stale,omitempty"`
}

// unitEnv is what the units are made of: the command they run.
type unitEnv struct {
	binary string // absolute, symbolic links resolved
	config string // absolute
	repo   string // --repo for the command, "" when the configuration's
}

func runSystemdUnits(g *globals, opts systemdUnitsOptions) error {
	if opts.dir == "" {
		return usageErrorf("give --dir DIR, the directory to write the units into, such as /etc/systemd/system")
	}
	cfg, err := g.config()
	if err != nil {
		return err
	}
	if cfg == nil {
		return usageErrorf("no configuration file: the units run understudy with one; give -c FILE, or write %s", defaultConfigPath)
	}
	env, err := newUnitEnv(g, cfg)
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(opts.dir)
	if err != nil {
		return err
	}
	units, err := renderUnits(env, cfg)
	if err != nil {
		return err
	}
	if err := writeUnits(dir, units, opts.force); err != nil {
		return err
	}
	rep := unitsReport{Dir: dir, Config: env.config, Binary: env.binary, Files: units, Stale: staleUnits(dir, units)}
	if g.json {
		return printJSON(g.stdout, rep)
	}
	for _, u := range units {
		g.printf("%s %s\n", u.State, u.Path)
	}
	for _, s := range rep.Stale {
		fmt.Fprintf(g.stderr, "warning: %s is not for a set that %s schedules; disable it and remove it: systemctl disable --now %s; rm %s\n",
			s, env.config, filepath.Base(s), s)
	}
	g.printf("%s", enableHint(dir, units))
	return nil
}

// newUnitEnv finds the absolute paths of this binary, the configuration
// and the repository the units use.
func newUnitEnv(g *globals, cfg *Config) (unitEnv, error) {
	var env unitEnv
	exe, err := os.Executable()
	if err == nil {
		exe, err = filepath.EvalSymlinks(exe)
	}
	if err != nil {
		return env, fmt.Errorf("the path of this understudy binary: %w", err)
	}
	env.binary = exe
	if env.config, err = filepath.Abs(cfg.File); err != nil {
		return env, err
	}
	// --repo (or UNDERSTUDY_REPO) wins over the file's repo, as for any
	// command: the units then carry it.
	switch {
	case g.repo != "":
		if env.repo, err = filepath.Abs(g.repo); err != nil {
			return env, err
		}
		if env.repo == cfg.Repo {
			env.repo = ""
		}
	case cfg.Repo == "":
		return env, usageErrorf("%s names no repository: set repo in it, or give --repo DIR for the units to use", env.config)
	}
	return env, nil
}

// command returns the ExecStart= line running understudy with args.
func (e unitEnv) command(args ...string) (string, error) {
	words := []string{e.binary, "-c", e.config}
	if e.repo != "" {
		words = append(words, "--repo", e.repo)
	}
	words = append(words, args...)
	for i, w := range words {
		q, err := execWord(w, i == 0)
		if err != nil {
			return "", err
		}
		words[i] = q
	}
	return strings.Join(words, " "), nil
}

// execWord quotes w for a command line of a unit file: bare when it is
// made of safe characters, else in double quotes, and with systemd's
// specifiers (%) escaped. In an argument, variables ($) are escaped too;
// the program's path is not read for variables, and systemd refuses one
// with a quote or a backslash.
func execWord(w string, program bool) (string, error) {
	if strings.ContainsFunc(w, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", usageErrorf("%q has a control character: it cannot go in a unit file", w)
	}
	if program && strings.ContainsAny(w, `"'\`) {
		return "", usageErrorf("%s: systemd takes no quote or backslash in the path of a program; install understudy under another path", w)
	}
	if w != "" && strings.Trim(w, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._+-=:@,") == "" {
		return w, nil
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "%", "%%", "$", "$$")
	if program {
		r = strings.NewReplacer("%", "%%")
	}
	return `"` + r.Replace(w) + `"`, nil
}

// unitHeader opens every unit file.
func unitHeader(env unitEnv) string {
	return fmt.Sprintf(`# Written by "understudy systemd-units" for %s:
# write the units again when a set or its schedule changes.
# The timers (understudy-run-SET.timer) and the daemon
# (%s) are alternatives: enable one or the other, never both.
`, env.config, daemonUnit)
}

// lowPriority runs a unit's understudy in the background of the host.
const lowPriority = `Nice=10
IOSchedulingClass=best-effort
IOSchedulingPriority=7
`

// renderUnits returns the units for cfg: a service and a timer for each
// set with paths and a schedule, in name order, then the daemon's service.
func renderUnits(env unitEnv, cfg *Config) ([]unitFile, error) {
	header := unitHeader(env)
	var units []unitFile
	for _, name := range sortedKeys(cfg.Sets) {
		set := cfg.Sets[name]
		if len(set.Paths) == 0 || set.Every.IsZero() {
			continue
		}
		base := "understudy-run-" + name
		exec, err := env.command("run", "--wait", systemdSpan(unitRunWait), name)
		if err != nil {
			return nil, err
		}
		var svc bytes.Buffer
		svc.WriteString(header)
		fmt.Fprintf(&svc, "# Started by %s.timer; see understudy run --help.\n\n[Unit]\n", base)
		fmt.Fprintf(&svc, "Description=understudy run of set %s\n", name)
		if len(set.To) > 0 {
			svc.WriteString("Wants=network-online.target\nAfter=network-online.target\n")
		}
		fmt.Fprintf(&svc, "\n[Service]\nType=oneshot\nExecStart=%s\n", exec)
		fmt.Fprintf(&svc, "# A run waits up to %s for another (or a prune) holding the repository.\n", systemdSpan(unitRunWait))
		svc.WriteString("TimeoutStartSec=infinity\n")
		svc.WriteString(lowPriority)
		svc.WriteString(stopSettings())

		var tm bytes.Buffer
		tm.WriteString(header)
		when := "every " + systemdSpan(set.Every.Interval)
		if set.Every.Cron != "" {
			when = fmt.Sprintf("at %q", set.Every.Cron)
		}
		fmt.Fprintf(&tm, "\n[Unit]\nDescription=understudy run of set %s %s\n\n[Timer]\n", name, escapeSpecifiers(when))
		if set.Every.Cron != "" {
			events, err := ops.OnCalendars(set.Every.Cron)
			if err != nil {
				return nil, usageErrorf("set %s in %s: %v", name, env.config, err)
			}
			if len(events) > 1 {
				tm.WriteString("# Cron runs on the days that match the day of the month or the day of the week: one line each.\n")
			}
			for _, ev := range events {
				fmt.Fprintf(&tm, "OnCalendar=%s\n", ev)
			}
			tm.WriteString("# A time missed while the host was down runs once at boot, as the daemon does.\nPersistent=true\n")
		} else {
			delay := min(set.Every.Interval, unitBootDelay)
			fmt.Fprintf(&tm, "# First %s after boot (at once when enabled later), then %s after each run started.\n",
				systemdSpan(delay), systemdSpan(set.Every.Interval))
			fmt.Fprintf(&tm, "OnBootSec=%s\nOnUnitActiveSec=%s\n", systemdSpan(delay), systemdSpan(set.Every.Interval))
		}
		tm.WriteString("AccuracySec=1s\nRandomizedDelaySec=0\n\n[Install]\nWantedBy=timers.target\n")
		units = append(units,
			unitFile{Unit: base + ".service", Set: name, data: svc.Bytes()},
			unitFile{Unit: base + ".timer", Set: name, data: tm.Bytes()})
	}

	exec, err := env.command("daemon")
	if err != nil {
		return nil, err
	}
	var d bytes.Buffer
	d.WriteString(header)
	d.WriteString("# See understudy daemon --help.\n\n[Unit]\n")
	d.WriteString("Description=understudy daemon: runs the sets on their schedules\n")
	d.WriteString("Wants=network-online.target\nAfter=network-online.target\n\n[Service]\nType=exec\n")
	fmt.Fprintf(&d, "ExecStart=%s\n", exec)
	d.WriteString("# Rereads the configuration file; one with problems is logged and the old one kept.\n")
	d.WriteString("ExecReload=/bin/kill -HUP $MAINPID\n")
	d.WriteString(lowPriority)
	d.WriteString(stopSettings())
	d.WriteString("Restart=on-failure\nRestartSec=30s\n# A configuration error (exit 2) waits for a fix, not a restart.\nRestartPreventExitStatus=2\n")
	d.WriteString("\n[Install]\nWantedBy=multi-user.target\n")
	units = append(units, unitFile{Unit: daemonUnit, data: d.Bytes()})
	return units, nil
}

// stopSettings stop understudy with SIGTERM to it alone, which lets the
// step it is in finish (ssh and check commands are not cut off under
// it); what is left after the timeout is killed, which the repository
// survives.
func stopSettings() string {
	return fmt.Sprintf(`# SIGTERM to understudy alone: it stops after the current step, which
# may take long; what is left after %[1]s is killed.
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=%[1]s
`, systemdSpan(unitStopTimeout))
}

// escapeSpecifiers doubles the % of s, which systemd would read as a
// specifier.
func escapeSpecifiers(s string) string { return strings.ReplaceAll(s, "%", "%%") }

// systemdSpan writes d as a systemd time span: "1d 12h", "30min", "90s"
// is "1min 30s".
func systemdSpan(d time.Duration) string {
	if d <= 0 {
		return "0"
	}
	var parts []string
	for _, u := range []struct {
		name string
		d    time.Duration
	}{{"d", 24 * time.Hour}, {"h", time.Hour}, {"min", time.Minute}, {"s", time.Second}, {"ms", time.Millisecond}, {"us", time.Microsecond}} {
		if n := d / u.d; n > 0 {
			parts = append(parts, fmt.Sprintf("%d%s", n, u.name))
			d -= n * u.d
		}
	}
	return strings.Join(parts, " ")
}

// writeUnits writes the units into dir, each through a temporary file
// and a rename, and sets their Path and State. A file that exists with
// other contents is replaced only with force: otherwise nothing is
// written and the error names every such file.
func writeUnits(dir string, units []unitFile, force bool) error {
	var differ []string
	for i := range units {
		u := &units[i]
		u.Path = filepath.Join(dir, u.Unit)
		old, err := os.ReadFile(u.Path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			u.State = "created"
		case err != nil:
			return fmt.Errorf("unit file %s: %w", u.Path, err)
		case bytes.Equal(old, u.data):
			u.State = "unchanged"
		default:
			u.State = "replaced"
			differ = append(differ, u.Path)
		}
	}
	switch {
	case force:
	case len(differ) == 1:
		return usageErrorf("%s exists with other contents; give --force to replace it", differ[0])
	case len(differ) > 1:
		return usageErrorf("%s exist with other contents; give --force to replace them", strings.Join(differ, ", "))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("unit directory: %w", err)
	}
	wrote := false
	for _, u := range units {
		if u.State == "unchanged" {
			continue
		}
		if err := writeFileAtomic(u.Path, u.data, 0o644); err != nil {
			return fmt.Errorf("unit file %s: %w", u.Path, err)
		}
		wrote = true
	}
	if wrote {
		return syncDir(dir)
	}
	return nil
}

// syncDir makes the renames into dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("unit directory %s: %w", dir, err)
	}
	return nil
}

// staleUnits returns the understudy-run-* unit files in dir that units
// does not have: left from sets removed or no longer scheduled.
func staleUnits(dir string, units []unitFile) []string {
	var stale []string
	for _, ext := range []string{".service", ".timer"} {
		found, _ := filepath.Glob(filepath.Join(dir, "understudy-run-*"+ext))
		for _, p := range found {
			if !slices.ContainsFunc(units, func(u unitFile) bool { return u.Path == p }) {
				stale = append(stale, p)
			}
		}
	}
	slices.Sort(stale)
	return stale
}

// enableHint returns the systemctl commands that switch to the timers
// and those that switch to the daemon.
func enableHint(dir string, units []unitFile) string {
	inPath := slices.Contains(systemdSearchPath, filepath.Clean(dir))
	var timers, timerNames, services []string
	var daemon string
	for _, u := range units {
		ref := u.Unit
		if !inPath {
			ref = u.Path
		}
		switch {
		case u.Unit == daemonUnit:
			daemon = ref
		case strings.HasSuffix(u.Unit, ".timer"):
			timers, timerNames = append(timers, ref), append(timerNames, u.Unit)
		default:
			services = append(services, u.Path)
		}
	}
	var b strings.Builder
	if len(timers) == 0 {
		b.WriteString("No set has both paths and every: no timers. To run the daemon:\n")
	} else {
		b.WriteString("To run the sets by their timers:\n  systemctl daemon-reload\n")
		fmt.Fprintf(&b, "  systemctl disable --now %s\n", daemonUnit)
		if !inPath {
			fmt.Fprintf(&b, "  systemctl link %s\n", strings.Join(services, " "))
		}
		fmt.Fprintf(&b, "  systemctl enable --now %s\n", strings.Join(timers, " "))
		b.WriteString("Or to run them by the daemon instead:\n")
	}
	b.WriteString("  systemctl daemon-reload\n")
	if len(timers) > 0 {
		fmt.Fprintf(&b, "  systemctl disable --now %s\n", strings.Join(timerNames, " "))
	}
	fmt.Fprintf(&b, "  systemctl enable --now %s\n", daemon)
	return b.String()
}
