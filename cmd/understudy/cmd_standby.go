package main

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/restore"
	"github.com/understudy/understudy/snapshot/selection"
)

// updateStandby changes the standby state of set under the repository's
// exclusive lock, so that a push being received finishes first.
func (g *globals) updateStandby(what, set string, fn func(*index.StandbyState) error) error {
	repo, err := g.openRepoWith(chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: what, Wait: time.Minute})
	if err != nil {
		return err
	}
	defer repo.Close()
	return repo.Index().UpdateStandby(set, fn)
}

// toggleStandby sets (on) or clears the time stamp field picks in the
// standby state of set, as updateStandby does; it returns the stamp it had
// before and the one set now. A stamp already set is kept.
func (g *globals) toggleStandby(what, set string, on bool, field func(*index.StandbyState) *time.Time) (was, now time.Time, err error) {
	now = time.Now().UTC().Truncate(time.Second)
	err = g.updateStandby(what, set, func(st *index.StandbyState) error {
		f := field(st)
		was = *f
		if on && was.IsZero() {
			*f = now
		} else if !on {
			*f = time.Time{}
		}
		return nil
	})
	return was, now, err
}

func newHoldCmd(g *globals, hold bool) *cobra.Command {
	var set string
	use, short := "release [--set S]", "Resume automatic applies of a set"
	if hold {
		use, short = "hold [--set S]", "Stop automatic applies of a set; pushes are still received"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			was, _, err := g.toggleStandby(cmd.Name(), set, hold, func(st *index.StandbyState) *time.Time { return &st.Held })
			if err != nil {
				return err
			}
			switch {
			case hold && !was.IsZero():
				g.printf("set %s was already held, since %s\n", set, was.Local().Format(time.RFC3339))
			case hold:
				g.printf("set %s held: snapshots are received but not applied automatically; apply by hand still works\n", set)
			case was.IsZero():
				g.printf("set %s was not held\n", set)
			default:
				g.printf("set %s released (held since %s): automatic applies resume\n", set, was.Local().Format(time.RFC3339))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&set, "set", "default", "the set")
	return cmd
}

func newProtectCmd(g *globals) *cobra.Command {
	var set string
	cmd := &cobra.Command{
		Use:   "protect (add|remove|list) [PATTERN]...",
		Short: "Keep host-specific paths of the standby out of every apply and rollback",
		Long: `Protected paths are never written, deleted or descended into by apply and
rollback on this host: its own identity and hardware. Patterns have the
exclude syntax (leading / anchors at the root, trailing / matches directories
only, *, **, ?, [...]). Examples:
  /etc/hostname  /etc/machine-id  /etc/fstab  /etc/network/  /etc/netplan/
  /etc/hostname.*  /etc/path_to_inst  (Solaris)

The set's protect list in the configuration file ([set.NAME] protect) counts
too. Its patterns are kept apart from these: list marks them
"(configuration)", and they come and go with the file, never through add or
remove.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			op, pats := args[0], args[1:]
			switch op {
			case "list":
				if len(pats) > 0 {
					return usageErrorf("protect list takes no patterns")
				}
				return g.listProtect(set)
			case "add", "remove":
				if len(pats) == 0 {
					return usageErrorf("protect %s: give at least one pattern", op)
				}
				if _, err := selection.New([]string{"/"}, pats, false); err != nil {
					return usageErrorf("protect %s: %v", op, err)
				}
			default:
				return usageErrorf("protect %q: want add, remove or list", op)
			}
			return g.updateStandby("protect", set, func(st *index.StandbyState) error {
				for _, p := range pats {
					has := slices.Contains(st.Protect, p)
					switch {
					case op == "add" && !has:
						st.Protect = append(st.Protect, p)
					case op == "remove" && has:
						st.Protect = slices.DeleteFunc(st.Protect, func(q string) bool { return q == p })
					case op == "remove" && slices.Contains(st.ConfigProtect, p):
						return usageErrorf("protect remove %s: the pattern of set %s comes from the configuration file: take it out of protect in [set.%s] there", p, set, set)
					case op == "remove":
						return fmt.Errorf("protect remove %s: set %s has no such pattern", p, set)
					}
				}
				g.printf("set %s protects: %s\n", set, strings.Join(st.Protect, " "))
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&set, "set", "default", "the set")
	return cmd
}

// readStandby returns the standby state of set, under a shared lock.
func (g *globals) readStandby(what, set string) (index.StandbyState, error) {
	repo, err := g.openRepo(chunkstore.Shared, what)
	if err != nil {
		return index.StandbyState{}, err
	}
	defer repo.Close()
	return repo.Index().Standby(set)
}

// protectedPattern is one pattern as `protect list --json` prints it.
type protectedPattern struct {
	Pattern string `json:"pattern"`
	// Config: the pattern is the configuration file's, not protect add's.
	Config bool `json:"config,omitempty"`
}

func (g *globals) listProtect(set string) error {
	g.configStandbyReading("protect list")
	st, err := g.readStandby("protect list", set)
	if err != nil {
		return err
	}
	list := []protectedPattern{}
	for _, p := range st.Protect {
		list = append(list, protectedPattern{Pattern: p})
	}
	for _, p := range st.ConfigProtect {
		list = append(list, protectedPattern{Pattern: p, Config: true})
	}
	if g.json {
		return printJSON(g.stdout, list)
	}
	for _, p := range list {
		if p.Config {
			fmt.Fprintf(g.stdout, "%s (configuration)\n", p.Pattern)
		} else {
			fmt.Fprintln(g.stdout, p.Pattern)
		}
	}
	return nil
}

type standbyOptions struct {
	set          string
	delay        string
	maxDeleted   float64
	maxChanged   float64
	addCheck     string
	checkCommand string
	checkPaths   []string
	checkTimeout time.Duration
	removeCheck  string
}

func newStandbyCmd(g *globals) *cobra.Command {
	var o standbyOptions
	cmd := &cobra.Command{
		Use:   "standby [--set S] [SETTING FLAGS]",
		Short: "Show or change how this standby applies a set: delay, guard, sanity checks",
		Long: `Without flags, print the set's standby settings and state. With flags, change
them:
  --apply-delay 4h      apply a snapshot automatically only once it is that old
                        ("0" for no delay)
  --max-deleted PCT     refuse an automatic apply deleting more than PCT% of the
  --max-changed PCT     files or bytes in the scope, or changing more (defaults
                        20 and 50)
  --add-check NAME --command CMD [--check-path P]... [--check-timeout D]
                        before an apply, restore the paths P of the snapshot into
                        a staging directory and run CMD (with sh -c) there, with
                        $UNDERSTUDY_STAGING naming it; a failure refuses the apply
  --remove-check NAME

For a set the configuration file names ([set.NAME]), the file holds the apply
delay and the guard limits on this host: its apply_delay and guard, or no
delay and the default limits when it says nothing, are written into the
set's state before every apply, rollback and status. --apply-delay,
--max-deleted and --max-changed are refused for such a set (exit 2): change
the file. A set the file does not name keeps what these flags set.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The global flags (-r, -c, --json) count in cmd.Flags() too.
			for _, name := range []string{"apply-delay", "max-deleted", "max-changed", "add-check", "command", "check-path", "check-timeout", "remove-check"} {
				if cmd.Flags().Changed(name) {
					return g.changeStandby(cmd, o)
				}
			}
			return g.showStandby(o.set)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.set, "set", "default", "the set")
	f.StringVar(&o.delay, "apply-delay", "", "how old a snapshot must be to be applied automatically")
	f.Float64Var(&o.maxDeleted, "max-deleted", restore.DefaultMaxDeleted, "mass-change guard: most files or bytes deleted, in percent")
	f.Float64Var(&o.maxChanged, "max-changed", restore.DefaultMaxChanged, "mass-change guard: most files or bytes changed, in percent")
	f.StringVar(&o.addCheck, "add-check", "", "add (or replace) the sanity check `NAME`")
	f.StringVar(&o.checkCommand, "command", "", "the check's shell command")
	f.StringArrayVar(&o.checkPaths, "check-path", nil, "snapshot `PATH` the check's staging view holds (repeatable)")
	f.DurationVar(&o.checkTimeout, "check-timeout", time.Minute, "how long the check may run")
	f.StringVar(&o.removeCheck, "remove-check", "", "remove the sanity check `NAME`")
	return cmd
}

func (g *globals) changeStandby(cmd *cobra.Command, o standbyOptions) error {
	f := cmd.Flags()
	if f.Changed("apply-delay") || f.Changed("max-deleted") || f.Changed("max-changed") {
		cfg, err := g.config()
		if err != nil {
			return err
		}
		if _, ok := cfg.lookupSet(o.set); ok {
			return usageErrorf("set %s is in the configuration file %s, which sets its apply delay and guard limits on this host before every apply: change apply_delay or guard = { max_deleted, max_changed } in [set.%s] there", o.set, cfg.File, o.set)
		}
	}
	if f.Changed("apply-delay") && o.delay != "0" {
		if d, err := time.ParseDuration(o.delay); err != nil || d < 0 {
			return usageErrorf("--apply-delay %q: want a duration such as 30m, 4h or 0", o.delay)
		}
	}
	for _, pct := range []float64{o.maxDeleted, o.maxChanged} {
		if pct < 0 || pct > 100 {
			return usageErrorf("guard limit %g%%: want 0 to 100", pct)
		}
	}
	if (o.addCheck == "") != (o.checkCommand == "") {
		return usageErrorf("--add-check NAME and --command CMD go together")
	}
	for _, p := range o.checkPaths {
		if !strings.HasPrefix(p, "/") {
			return usageErrorf("--check-path %q: must be absolute, as the snapshot lists it", p)
		}
	}
	return g.updateStandby("standby", o.set, func(st *index.StandbyState) error {
		if f.Changed("apply-delay") {
			st.ApplyDelay = o.delay
			if o.delay == "0" {
				st.ApplyDelay = ""
			}
		}
		if f.Changed("max-deleted") {
			st.MaxDeleted = &o.maxDeleted
		}
		if f.Changed("max-changed") {
			st.MaxChanged = &o.maxChanged
		}
		if o.removeCheck != "" {
			n := len(st.Checks)
			st.Checks = slices.DeleteFunc(st.Checks, func(c index.GuardCheck) bool { return c.Name == o.removeCheck })
			if len(st.Checks) == n {
				return fmt.Errorf("set %s has no sanity check %q", o.set, o.removeCheck)
			}
		}
		if o.addCheck != "" {
			st.Checks = slices.DeleteFunc(st.Checks, func(c index.GuardCheck) bool { return c.Name == o.addCheck })
			st.Checks = append(st.Checks, index.GuardCheck{
				Name: o.addCheck, Command: []string{"/bin/sh", "-c", o.checkCommand},
				Paths: o.checkPaths, Timeout: o.checkTimeout.String(),
			})
		}
		return nil
	})
}

func (g *globals) showStandby(set string) error {
	g.configStandbyReading("standby")
	st, err := g.readStandby("standby", set)
	if err != nil {
		return err
	}
	if g.json {
		return printJSON(g.stdout, st)
	}
	from := ""
	if cfg, err := g.config(); err == nil {
		if _, ok := cfg.lookupSet(set); ok {
			from = " (apply delay, limits and marked patterns from " + cfg.File + ")"
		}
	}
	pct := func(p *float64, def float64) string {
		if p == nil {
			return fmt.Sprintf("%g%% (default)", def)
		}
		return fmt.Sprintf("%g%%", *p)
	}
	delay := st.ApplyDelay
	if delay == "" {
		delay = "none"
	}
	fmt.Fprintf(g.stdout, "set %s%s\n  apply delay  %s\n  max deleted  %s\n  max changed  %s\n", set, from, delay,
		pct(st.MaxDeleted, restore.DefaultMaxDeleted), pct(st.MaxChanged, restore.DefaultMaxChanged))
	for _, c := range st.Checks {
		fmt.Fprintf(g.stdout, "  check        %s: %s (paths %s, timeout %s)\n", c.Name, strings.Join(c.Command[2:], " "), strings.Join(c.Paths, " "), c.Timeout)
	}
	protect := slices.Clone(st.Protect)
	for _, p := range st.ConfigProtect {
		protect = append(protect, p+" (configuration)")
	}
	fmt.Fprintf(g.stdout, "  protect      %s\n", strings.Join(protect, " "))
	return nil
}

// The standby settings of the configuration file.
//
// For each set the configuration file names ([set.NAME]), the file is the
// source of truth on this host for the set's apply delay, guard limits and
// its own protect patterns: what the table leaves out means no delay, the
// default limits, no patterns. Before every apply decision (apply, apply
// --pending, rollback, serve's apply) and before status, standby and
// protect list show the state, each set whose state differs gets the
// file's values in one UpdateStandby; a set that already agrees is not
// written. The file's patterns go to ConfigProtect, apart from protect
// add's, so that taking one out of the file takes it out of the state and
// leaves the administrator's alone. A set the file does not name keeps the
// delay and limits it has (the standby command's to change, then) and
// loses its configured patterns. Without a configuration file nothing is
// written: the state keeps what the last file said.

// configureStandby makes st say what the configuration says of the set:
// s is the set's table, nil if the file does not name it. It returns what
// it changed, one phrase each; nothing if st already agrees.
func configureStandby(st *index.StandbyState, s *Set) []string {
	var changes []string
	if s != nil {
		cur, err := st.Delay()
		if err != nil || cur != s.ApplyDelay {
			want := ""
			if s.ApplyDelay > 0 {
				want = shortDuration(s.ApplyDelay)
			}
			changes = append(changes, fmt.Sprintf("apply delay %s -> %s", cmp.Or(st.ApplyDelay, "none"), cmp.Or(want, "none")))
			st.ApplyDelay = want
		}
		for _, l := range []struct {
			name     string
			cur      **float64
			want     *float64
			fallback float64
		}{
			{"max deleted", &st.MaxDeleted, s.Guard.MaxDeleted, restore.DefaultMaxDeleted},
			{"max changed", &st.MaxChanged, s.Guard.MaxChanged, restore.DefaultMaxChanged},
		} {
			if pctOr(*l.cur, -1) != pctOr(l.want, -1) {
				changes = append(changes, fmt.Sprintf("%s %g%% -> %g%%", l.name, pctOr(*l.cur, l.fallback), pctOr(l.want, l.fallback)))
				*l.cur = nil
				if l.want != nil {
					v := *l.want
					*l.cur = &v
				}
			}
		}
	}
	var want []string
	if s != nil && len(s.Protect) > 0 {
		want = slices.Clone(s.Protect)
	}
	if !slices.Equal(st.ConfigProtect, want) {
		changes = append(changes, fmt.Sprintf("protect (configuration) %s -> %s",
			cmp.Or(strings.Join(st.ConfigProtect, " "), "none"), cmp.Or(strings.Join(want, " "), "none")))
		st.ConfigProtect = want
	}
	return changes
}

func pctOr(p *float64, def float64) float64 {
	if p == nil {
		return def
	}
	return *p
}

// shortDuration writes d as time.Duration does, without the zero minutes
// and seconds: 4h, 1h30m, 90s as 1m30s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// configSets returns the sets whose state the configuration has a say in:
// those with a state, in order, then those the file names without one, each
// with its table in cfg (nil for none).
func configSets(cfg *Config, states map[string]index.StandbyState) (names []string, tables map[string]*Set) {
	names = slices.Sorted(maps.Keys(states))
	for _, name := range sortedKeys(cfg.Sets) {
		if _, ok := states[name]; !ok {
			names = append(names, name)
		}
	}
	tables = make(map[string]*Set, len(cfg.Sets))
	for name, s := range cfg.Sets {
		tables[name] = &s
	}
	return names, tables
}

// configDiffers reports whether cfg would change any of states.
func configDiffers(cfg *Config, states map[string]index.StandbyState) bool {
	names, tables := configSets(cfg, states)
	for _, name := range names {
		st := states[name] // a copy: configureStandby assigns fields, never changes what they point to
		if len(configureStandby(&st, tables[name])) > 0 {
			return true
		}
	}
	return false
}

// standbyFromConfig writes the standby settings of cfg into db, one
// UpdateStandby for each set whose state differs from what cfg says, and
// tells note what changed, a line per set. The caller holds the
// repository's exclusive lock.
func standbyFromConfig(db *index.DB, cfg *Config, note func(string)) error {
	states, err := db.StandbyStates()
	if err != nil {
		return err
	}
	names, tables := configSets(cfg, states)
	for _, name := range names {
		st := states[name]
		if len(configureStandby(&st, tables[name])) == 0 {
			continue
		}
		var changes []string
		if err := db.UpdateStandby(name, func(st *index.StandbyState) error {
			changes = configureStandby(st, tables[name])
			return nil
		}); err != nil {
			return fmt.Errorf("set %s: standby settings of %s: %w", name, cfg.File, err)
		}
		if note != nil && len(changes) > 0 {
			note(fmt.Sprintf("set %s: from %s: %s", name, cfg.File, strings.Join(changes, ", ")))
		}
	}
	return nil
}

// configStandby writes the standby settings of the configuration file, if
// one is loaded, into db before an apply decision (standbyFromConfig),
// saying on standard error what changed. A configuration with problems is
// the error: an apply that went ahead without it could write over what the
// file protects.
func (g *globals) configStandby(db *index.DB) error {
	cfg, err := g.config()
	if err != nil || cfg == nil {
		return err
	}
	return standbyFromConfig(db, cfg, func(line string) {
		if !g.quiet {
			fmt.Fprintf(g.stderr, "understudy: %s\n", line)
		}
	})
}

// configStandbyReading does configStandby for a command that only reads
// the state (status, standby, protect list), so that it shows what the next
// apply will use: under a shared lock it looks whether the file changes
// anything, and only then takes the exclusive lock to write. What stops it
// is a warning, and the command shows the state as recorded; a repository
// that cannot be opened is left to the command to report.
func (g *globals) configStandbyReading(what string) {
	named := g.repo != ""
	cfg, err := g.config()
	switch {
	case err != nil && !named:
		return // the repository was to come from the file: the command says why it cannot
	case err == nil && cfg != nil:
		err = g.configStandbyLocked(what, cfg)
	}
	if err != nil && !errors.Is(err, errNotOpened) {
		fmt.Fprintf(g.stderr, "warning: the standby settings of the configuration file are not recorded: %v\n", err)
	}
}

// errNotOpened marks the repository configStandbyLocked could not open.
var errNotOpened = errors.New("repository not opened")

func (g *globals) configStandbyLocked(what string, cfg *Config) error {
	repo, err := g.openRepo(chunkstore.Shared, what)
	if err != nil {
		return fmt.Errorf("%w: %w", errNotOpened, err)
	}
	states, err := repo.Index().StandbyStates()
	repo.Close()
	if err != nil || !configDiffers(cfg, states) {
		return err
	}
	repo, err = g.openRepoWith(chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: what, Wait: 10 * time.Second})
	if err != nil {
		return err
	}
	defer repo.Close()
	return g.configStandby(repo.Index())
}
