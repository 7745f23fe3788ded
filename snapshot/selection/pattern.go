package selection

import (
	"errors"
	"fmt"
	"strings"
)

// scope is the part of a relative path a pattern body is matched against.
type scope uint8

const (
	scopeBase     scope = iota // the final component
	scopeTail                  // the last slashes+1 components
	scopeFull                  // the whole relative path
	scopeSuffixes              // the whole path or any suffix after a '/'
)

// pattern is one compiled exclude rule.
type pattern struct {
	raw     string // as given
	body    string // prefix, anchor and trailing slash stripped
	dirOnly bool   // trailing "/": directories only
	scope   scope
	slashes int // scopeTail: number of '/' in body

	literal bool    // body has no wildcard: compared as bytes
	toks    []token // wildcard body

	// rooted: an unanchored body that starts with "**" is matched, as
	// rsync does, against the relative path with a "/" in front, so that
	// "**/cache" also matches "cache" at the root.
	rooted bool
	// dirSlash: a body that ends with "***" is matched, for a directory,
	// against its path with a "/" appended, as rsync does, so that
	// "dir/***" ("dir/" then "**") also matches dir itself.
	dirSlash bool
}

// compilePattern parses raw, an rsync --exclude pattern.
func compilePattern(raw string) (*pattern, error) {
	p, err := parsePattern(raw)
	if err != nil {
		return nil, fmt.Errorf("exclude pattern %q: %w", raw, err)
	}
	return p, nil
}

func parsePattern(raw string) (*pattern, error) {
	s := raw
	switch {
	case s == "":
		return nil, errors.New("empty pattern")
	case strings.IndexByte(s, 0) >= 0:
		return nil, errors.New("contains a NUL byte")
	case s == "!":
		return nil, errors.New(`"!" (rsync's clear-the-list rule) is not an exclude pattern`)
	case strings.HasPrefix(s, "+ "):
		return nil, errors.New(`"+ " makes an include rule; only exclude patterns are supported, list the path instead`)
	case strings.HasPrefix(s, "- "):
		s = s[2:] // rsync's explicit exclude prefix
	}
	p := &pattern{raw: raw}
	anchored := strings.HasPrefix(s, "/")
	if anchored {
		s = s[1:]
	}
	if strings.HasSuffix(s, "/") {
		p.dirOnly = true
		s = s[:len(s)-1]
	}
	if s == "" {
		return nil, errors.New("empty pattern (nothing but slashes)")
	}
	p.body = s
	p.slashes = strings.Count(s, "/")
	p.literal = !strings.ContainsAny(s, "*?[")
	switch {
	case anchored:
		p.scope = scopeFull
	case p.literal && p.slashes == 0:
		p.scope = scopeBase
	case p.literal:
		p.scope = scopeTail
	case strings.HasPrefix(s, "**"):
		p.scope = scopeFull
	case strings.Contains(s, "**"):
		p.scope = scopeSuffixes
	case p.slashes == 0:
		p.scope = scopeBase
	default:
		p.scope = scopeTail
	}
	if p.literal {
		return p, nil
	}
	var err error
	if p.toks, err = compileWild(s); err != nil {
		return nil, err
	}
	p.rooted = !anchored && strings.HasPrefix(s, "**")
	p.dirSlash = strings.HasSuffix(s, "***")
	return p, nil
}

// matches reports whether the pattern excludes the entry with absolute
// path abs ("/" followed by the relative path, which is not empty).
func (p *pattern) matches(abs string, isDir bool) bool {
	if p.dirOnly && !isDir {
		return false
	}
	rel := abs[1:]
	if p.literal {
		return p.matchLiteral(rel)
	}
	s := rel
	if p.rooted {
		s = abs
	}
	if isDir && p.dirSlash {
		s += "/"
	}
	switch p.scope {
	case scopeBase:
		return wildMatch(p.toks, s[strings.LastIndexByte(s, '/')+1:])
	case scopeFull:
		return wildMatch(p.toks, s)
	case scopeTail:
		// A path with fewer components never matches, as in rsync, even
		// when some of the body's '/' are in classes ("[/a]b"), which
		// never match one.
		tail, ok := lastComponents(s, p.slashes+1)
		return ok && wildMatch(p.toks, tail)
	default: // scopeSuffixes: the whole path or a suffix starting after a '/'
		for {
			if wildMatch(p.toks, s) {
				return true
			}
			i := strings.IndexByte(s, '/')
			if i < 0 {
				return false
			}
			s = s[i+1:]
		}
	}
}

func (p *pattern) matchLiteral(rel string) bool {
	switch p.scope {
	case scopeBase:
		return rel[strings.LastIndexByte(rel, '/')+1:] == p.body
	case scopeFull:
		return rel == p.body
	default: // scopeTail: the whole path or a suffix starting after a '/'
		n := len(rel) - len(p.body)
		return n >= 0 && rel[n:] == p.body && (n == 0 || rel[n-1] == '/')
	}
}

// lastComponents returns the last n components of rel (n >= 1), and false
// if rel has fewer than n.
func lastComponents(rel string, n int) (string, bool) {
	for i := len(rel) - 1; i >= 0; i-- {
		if rel[i] == '/' {
			n--
			if n == 0 {
				return rel[i+1:], true
			}
		}
	}
	return rel, n == 1
}
