package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/snapshot/selection"
)

// configSource is the -c/--config flag and the configuration it names,
// read the first time a command needs it.
type configSource struct {
	path        string
	explicit    bool   // -c given: the file must exist; -c "" for no file at all
	defaultPath string // "" for defaultConfigPath
	loaded      bool
	cfg         *Config
	err         error
}

func (s *configSource) String() string {
	if s.explicit {
		return s.path
	}
	return ""
}

func (s *configSource) Set(v string) error {
	s.path, s.explicit = v, true
	return nil
}

func (s *configSource) Type() string { return "file" }

// load returns the configuration: the -c file, else the default file when
// it exists; nil, nil when there is none. Its errors exit 2.
func (s *configSource) load() (*Config, error) {
	if s.loaded {
		return s.cfg, s.err
	}
	s.loaded = true
	path := s.path
	if !s.explicit {
		path = cmp.Or(s.defaultPath, defaultConfigPath)
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
	}
	if path == "" {
		return nil, nil
	}
	s.cfg, s.err = loadConfig(path)
	if s.err != nil {
		s.err = &codedError{code: exitUsage, err: s.err}
	}
	return s.cfg, s.err
}

// config returns the configuration file's contents, nil if there is no
// file; see configSource.load.
func (g *globals) config() (*Config, error) { return g.conf.load() }

// repoFromConfig takes the repository from the configuration when neither
// --repo nor UNDERSTUDY_REPO named one. Only then is the file read, so that
// a command given --repo does not fail on a bad configuration.
func (g *globals) repoFromConfig() error {
	if g.repo != "" {
		return nil
	}
	cfg, err := g.config()
	if err != nil {
		return err
	}
	if cfg != nil {
		g.repo = cfg.Repo
	}
	return nil
}

type configCheckOptions struct {
	list bool
	root string
	sets []string
}

func newConfigCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Work with the configuration file",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErrorf("unknown command \"config %s\"; see understudy config --help", args[0])
			}
			return cmd.Help()
		},
	}
	var opts configCheckOptions
	check := &cobra.Command{
		Use:   "check [--list] [SET]...",
		Short: "Validate the configuration file and show what each set selects here",
		Long: `Read the configuration file (-c FILE, default ` + defaultConfigPath + `) and
report every problem in it, each as FILE:LINE: KEY: what is wrong. Exit status
2 means the file is not valid.

For a valid file, walk the paths of each SET (default: all sets) with the
set's exclude patterns and one_file_system, as snapshot would, without
reading any file, and print how many files, directories and other entries
(symlinks, devices, FIFOs, sockets) it selects on this host, and the bytes of
its files. As in snapshot's statistics, the ancestor directories of listed
paths count, the root does not. --list prints every selected path instead,
one per line.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.sets = args
			return runConfigCheck(cmd.Context(), g, opts)
		},
	}
	f := check.Flags()
	f.BoolVar(&opts.list, "list", false, "print every selected path, one per line")
	f.StringVar(&opts.root, "root", "/", "the directory that stands for / (check another root filesystem mounted there)")
	cmd.AddCommand(check)
	return cmd
}

// configReport is config check's --json output.
type configReport struct {
	File     string          `json:"file"`
	Valid    bool            `json:"valid"`
	Problems []configProblem `json:"problems,omitempty"` // when not valid
	Sets     []setSelection  `json:"sets,omitempty"`     // when valid
}

// setSelection is what a set selects on this host.
type setSelection struct {
	Set      string   `json:"set"`
	Files    int64    `json:"files"`
	Dirs     int64    `json:"dirs"`
	Others   int64    `json:"others"` // symlinks, devices, FIFOs, sockets
	Bytes    int64    `json:"bytes"`  // of the files, as their sizes say
	Warnings []string `json:"warnings,omitempty"`
	Paths    []string `json:"paths,omitempty"` // with --list
}

func runConfigCheck(ctx context.Context, g *globals, opts configCheckOptions) error {
	cfg, err := g.config()
	var ce *configError
	switch {
	case errors.As(err, &ce):
		return reportProblems(g, ce)
	case err != nil:
		return err
	case cfg == nil:
		return usageErrorf("no configuration file: give -c FILE, or write %s", defaultConfigPath)
	}
	names := opts.sets
	if len(names) == 0 {
		names = sortedKeys(cfg.Sets)
	}
	for _, n := range names {
		if _, ok := cfg.Sets[n]; !ok {
			return usageErrorf("no set %q in %s (its sets: %s)", n, cfg.File, strings.Join(sortedKeys(cfg.Sets), ", "))
		}
	}
	root, err := filepath.Abs(opts.root)
	if err != nil {
		return err
	}
	text := !g.json && !opts.list
	if text {
		g.printf("configuration %s is valid: %s, %s, %s\n", cfg.File, plural(len(cfg.Sets), "set", "sets"),
			plural(len(cfg.Standbys), "standby", "standbys"), plural(len(cfg.Checks), "check", "checks"))
	}
	rep := configReport{File: cfg.File, Valid: true}
	for _, n := range names {
		res, err := checkSet(ctx, g, cfg.Sets[n], root, cmp.Or(g.repo, cfg.Repo), opts.list)
		if err != nil {
			return err
		}
		switch {
		case !text:
		case len(cfg.Sets[n].Paths) == 0:
			g.printf("set %s: no paths (settings for the standby side only)\n", n)
		default:
			g.printf("set %s: %s, %s, %s, %s\n", n, plural(res.Files, "file", "files"),
				plural(res.Dirs, "directory", "directories"), plural(res.Others, "other", "others"), humanBytes(res.Bytes))
		}
		rep.Sets = append(rep.Sets, res)
	}
	if g.json {
		return printJSON(g.stdout, rep)
	}
	return nil
}

// reportProblems prints the problems of an invalid configuration, one per
// line on stderr (as JSON on stdout with --json), and returns exit 2.
func reportProblems(g *globals, ce *configError) error {
	if g.json {
		if err := printJSON(g.stdout, configReport{File: ce.File, Problems: ce.Problems}); err != nil {
			return err
		}
		return &codedError{code: exitUsage, err: errReported}
	}
	for _, p := range ce.Problems {
		fmt.Fprintln(g.stderr, p.format(ce.File))
	}
	return usageErrorf("configuration %s is not valid: %s", ce.File, plural(len(ce.Problems), "problem", "problems"))
}

// checkSet walks what set selects in the tree at root, printing each path
// with list (into the result with --json).
func checkSet(ctx context.Context, g *globals, set Set, root, repo string, list bool) (setSelection, error) {
	res := setSelection{Set: set.Name}
	sel, err := set.Selection()
	if err != nil || sel == nil {
		return res, err
	}
	prog := &progress{} // inactive: --list prints on stdout
	if !list {
		prog = g.newProgress()
	}
	l := &selectionLister{ctx: ctx, sel: sel, root: root}
	var st unix.Stat_t
	if repo != "" && unix.Stat(repo, &st) == nil {
		l.repo = [2]uint64{uint64(st.Dev), st.Ino}
	}
	l.warn = func(p string, err error) {
		prog.done()
		w := fmt.Sprintf("%s: %v", showPath(p), err)
		fmt.Fprintf(g.stderr, "warning: set %s: %s\n", set.Name, w)
		res.Warnings = append(res.Warnings, w)
	}
	l.take = func(p string) {
		switch {
		case list && g.json:
			res.Paths = append(res.Paths, p)
		case list:
			fmt.Fprintln(g.stdout, showPath(p))
		}
		if c := l.count; (c.Files+c.Dirs+c.Others)%1024 == 0 {
			prog.show("set %s: %d files, %d directories, %d others, %s", set.Name, c.Files, c.Dirs, c.Others, humanBytes(c.Bytes))
		}
	}
	err = l.run()
	prog.done()
	res.Files, res.Dirs, res.Others, res.Bytes = l.count.Files, l.count.Dirs, l.count.Others, l.count.Bytes
	return res, err
}

// plural returns n and the noun: one if n is 1, else many.
func plural[N int | int64](n N, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// selectionLister walks a tree by the classes of a selection, as snapshot
// does, but only lstat's what it meets: no file is opened. It takes what a
// snapshot records below the root: the entries in scope and the ancestor
// directories of listed paths.
type selectionLister struct {
	ctx  context.Context
	sel  *selection.Selection
	root string    // the directory standing for "/"
	repo [2]uint64 // device and inode of the repository directory, never taken
	take func(p string)
	warn func(p string, err error)

	count struct{ Files, Dirs, Others, Bytes int64 }
}

func (l *selectionLister) run() error {
	fd, err := unix.Open(l.root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", l.root, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("%s: %w", l.root, err)
	}
	return l.dir(fd, "/", l.sel.Root(), uint64(st.Dev))
}

func (l *selectionLister) add(p string, st *unix.Stat_t) {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		l.count.Dirs++
	case unix.S_IFREG:
		l.count.Files++
		l.count.Bytes += st.Size
	default:
		l.count.Others++
	}
	l.take(p)
}

// dir visits the directory p, open as fd, of class class, on device dev.
// Entries are looked up relative to fd, so that no path length limit
// applies and no symbolic link is followed.
func (l *selectionLister) dir(fd int, p string, class selection.Class, dev uint64) error {
	if err := l.ctx.Err(); err != nil {
		return err
	}
	names := l.sel.Needed(p)
	if class == selection.InScope {
		var err error
		if names, err = readDirNames(fd); err != nil {
			l.warn(p, fmt.Errorf("read directory: %w", err))
			return nil
		}
	}
	for _, name := range names {
		cp := joinSnapPath(p, name)
		listed := l.sel.Child(selection.Outside, cp, true) == selection.InScope
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			switch {
			case class == selection.Ancestor && errors.Is(err, unix.ENOENT) && listed:
				err = errors.New("listed path does not exist")
			case class == selection.Ancestor && errors.Is(err, unix.ENOENT):
				err = errors.New("does not exist: the listed paths below it are missing")
			}
			l.warn(cp, err)
			continue
		}
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		c := l.sel.Child(class, cp, isDir)
		switch {
		case c == selection.Outside && class == selection.Ancestor:
			l.warn(cp, errors.New("not a directory: the listed paths below it are not taken"))
			continue
		case c == selection.Outside:
			continue
		case isDir && l.repo == [2]uint64{uint64(st.Dev), st.Ino}:
			continue
		}
		l.add(cp, &st)
		// With one_file_system, a mount point met in scope is taken but
		// not entered, unless it is listed (as snapshot does).
		if !isDir || l.sel.OneFileSystem() && class == selection.InScope && uint64(st.Dev) != dev && !listed {
			continue
		}
		sub, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			l.warn(cp, fmt.Errorf("open directory: %w", err))
			continue
		}
		err = l.dir(sub, cp, c, uint64(st.Dev))
		unix.Close(sub)
		if err != nil {
			return err
		}
	}
	return nil
}

// readDirNames returns the names in the directory fd, sorted.
func readDirNames(fd int) ([]string, error) {
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), "dir")
	defer f.Close()
	names, err := f.Readdirnames(-1)
	slices.Sort(names)
	return names, err
}
