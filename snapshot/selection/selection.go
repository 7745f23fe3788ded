package selection

import (
	"errors"
	"slices"
	"strconv"
	"strings"
)

// Class is what a selection makes of one path; see the package doc.
type Class uint8

const (
	Outside  Class = iota // not taken
	Ancestor              // only an ancestor of listed paths: created if missing, never modified; only its needed children are visited
	InScope               // taken with all its metadata; if a directory, all its children are candidates
)

func (c Class) String() string {
	switch c {
	case Outside:
		return "outside"
	case Ancestor:
		return "ancestor"
	case InScope:
		return "in scope"
	}
	return "Class(" + strconv.Itoa(int(c)) + ")"
}

// Literal patterns are looked up by name; the flags say for which kinds of
// entry the name is excluded.
const (
	litAny uint8 = 1 << iota // any entry
	litDir                   // directories only
)

// Selection is a compiled set of listed paths, exclude patterns and the
// one-file-system flag. It is immutable and safe for concurrent use.
type Selection struct {
	paths    []string
	excludes []string
	oneFS    bool

	listed map[string]struct{}
	needed map[string][]string // strict ancestor dir of a listed path → needed child names

	byBase map[string]uint8 // literal patterns matched on the final component
	byPath map[string]uint8 // anchored literal patterns, by relative path
	others []*pattern
}

// New compiles a selection. paths must be absolute; excludes are rsync
// --exclude patterns. The error names the offending path or pattern.
func New(paths, excludes []string, oneFileSystem bool) (*Selection, error) {
	if len(paths) == 0 {
		return nil, errors.New("no paths to take: list at least one absolute path")
	}
	s := &Selection{
		excludes: slices.Clone(excludes),
		oneFS:    oneFileSystem,
		listed:   make(map[string]struct{}, len(paths)),
		needed:   make(map[string][]string),
	}
	for _, p := range paths {
		c, err := cleanPath(p)
		if err != nil {
			return nil, err
		}
		if _, dup := s.listed[c]; dup {
			continue
		}
		s.listed[c] = struct{}{}
		s.paths = append(s.paths, c)
		for c != "/" {
			dir, name := parentDir(c)
			s.needed[dir] = append(s.needed[dir], name)
			c = dir
		}
	}
	slices.Sort(s.paths)
	for dir, names := range s.needed {
		slices.Sort(names)
		s.needed[dir] = slices.Compact(names)
	}
	for _, raw := range excludes {
		p, err := compilePattern(raw)
		if err != nil {
			return nil, err
		}
		s.addPattern(p)
	}
	return s, nil
}

func (s *Selection) addPattern(p *pattern) {
	flag := litAny
	if p.dirOnly {
		flag = litDir
	}
	switch {
	case p.literal && p.scope == scopeBase:
		if s.byBase == nil {
			s.byBase = make(map[string]uint8)
		}
		s.byBase[p.body] |= flag
	case p.literal && p.scope == scopeFull:
		if s.byPath == nil {
			s.byPath = make(map[string]uint8)
		}
		s.byPath[p.body] |= flag
	default:
		s.others = append(s.others, p)
	}
}

// Paths returns the listed paths: clean, sorted, unique, "/" for the root.
func (s *Selection) Paths() []string { return slices.Clone(s.paths) }

// Excludes returns the exclude patterns as given to New.
func (s *Selection) Excludes() []string { return slices.Clone(s.excludes) }

// HasExcludes reports whether there are exclude patterns: without them,
// every child of an InScope directory is InScope.
func (s *Selection) HasExcludes() bool { return len(s.excludes) > 0 }

// OneFileSystem reports whether the walk stays on the device of each
// listed path (enforced by the walker).
func (s *Selection) OneFileSystem() bool { return s.oneFS }

// Root returns the class of "/": InScope if "/" is listed, else Ancestor.
func (s *Selection) Root() Class {
	if _, ok := s.listed["/"]; ok {
		return InScope
	}
	return Ancestor
}

// Child returns the class of path p (absolute, clean) whose parent
// directory has class parent: InScope if p is listed, or if the parent is
// InScope and p is not excluded; Ancestor if p is a directory and a strict
// ancestor of a listed path; Outside otherwise.
func (s *Selection) Child(parent Class, p string, isDir bool) Class {
	if _, ok := s.listed[p]; ok {
		return InScope
	}
	if parent == InScope && !s.Excluded(p, isDir) {
		return InScope
	}
	if isDir {
		if _, ok := s.needed[p]; ok {
			return Ancestor
		}
	}
	return Outside
}

// Needed returns, for an Ancestor directory dir, the sorted unique names of
// its children that are listed paths or ancestors of listed paths, so that
// the walker can lstat just those instead of reading the directory. It
// returns nil for a directory that is no strict ancestor of a listed path.
func (s *Selection) Needed(dir string) []string {
	return slices.Clone(s.needed[dir])
}

// Excluded reports whether an exclude pattern matches the path p (absolute,
// clean), a directory if isDir. The root is never excluded. Whether p is
// listed does not matter here; Child gives listed paths precedence.
func (s *Selection) Excluded(p string, isDir bool) bool {
	rel := strings.TrimLeft(p, "/")
	if rel == "" {
		return false
	}
	base := rel[strings.LastIndexByte(rel, '/')+1:]
	if s.byBase != nil && hit(s.byBase[base], isDir) {
		return true
	}
	if s.byPath != nil && hit(s.byPath[rel], isDir) {
		return true
	}
	var abs string // "/" + rel, which the patterns that start with "**" need
	if len(rel) < len(p) {
		abs = p[len(p)-len(rel)-1:]
	} else {
		abs = "/" + rel
	}
	for _, pat := range s.others {
		if pat.matches(abs, isDir) {
			return true
		}
	}
	return false
}

func hit(flags uint8, isDir bool) bool {
	return flags&litAny != 0 || (isDir && flags&litDir != 0)
}
