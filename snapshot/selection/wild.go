package selection

import (
	"errors"
	"strings"
)

// tokKind is the kind of one element of a compiled wildcard body.
type tokKind uint8

const (
	tokLit   tokKind = iota // the bytes lit
	tokOne                  // "?": one byte, not '/'
	tokClass                // "[...]": one byte of set (never '/')
	tokStar                 // "*": any run of bytes without '/'
	tokAny                  // "**": any run of bytes
)

type token struct {
	kind tokKind
	lit  string
	set  *byteSet
}

// compileWild turns a wildcard body into tokens. Runs of literal bytes
// (escaped or not) become one tokLit; two or more stars one tokAny.
func compileWild(body string) ([]token, error) {
	var toks []token
	var lit []byte
	flush := func() {
		if len(lit) > 0 {
			toks = append(toks, token{kind: tokLit, lit: string(lit)})
			lit = lit[:0]
		}
	}
	for i := 0; i < len(body); {
		switch c := body[i]; c {
		case '\\':
			if i+1 >= len(body) {
				return nil, errors.New(`ends with a lone "\" (escape what?)`)
			}
			lit = append(lit, body[i+1])
			i += 2
		case '?':
			flush()
			toks = append(toks, token{kind: tokOne})
			i++
		case '*':
			flush()
			n := 1
			for i+n < len(body) && body[i+n] == '*' {
				n++
			}
			kind := tokStar
			if n > 1 {
				kind = tokAny
			}
			toks = append(toks, token{kind: kind})
			i += n
		case '[':
			flush()
			set, next, err := parseClass(body, i)
			if err != nil {
				return nil, err
			}
			toks = append(toks, token{kind: tokClass, set: set})
			i = next
		default:
			lit = append(lit, c)
			i++
		}
	}
	flush()
	return toks, nil
}

// Results of matchFrom. Besides a plain failure, a failure can tell the
// callers higher up that trying more lengths for their own stars is
// pointless: noMatchAll when the text ran out (every longer choice leaves
// even less text), noMatchSlash when a "*" stopped at a '/' (only a "**"
// further up can move past that '/').
const (
	noMatch = iota
	matched
	noMatchAll
	noMatchSlash
)

// wildMatch reports whether toks match all of s.
func wildMatch(toks []token, s string) bool {
	return matchFrom(toks, s) == matched
}

func matchFrom(toks []token, s string) int {
	for i := range toks {
		t := &toks[i]
		switch t.kind {
		case tokLit:
			if len(s) < len(t.lit) {
				return noMatchAll
			}
			if s[:len(t.lit)] != t.lit {
				return noMatch
			}
			s = s[len(t.lit):]
		case tokOne, tokClass:
			if s == "" {
				return noMatchAll
			}
			if s[0] == '/' || (t.kind == tokClass && !t.set.has(s[0])) {
				return noMatch
			}
			s = s[1:]
		case tokStar:
			rest := toks[i+1:]
			if len(rest) == 0 {
				if strings.IndexByte(s, '/') >= 0 {
					return noMatchSlash
				}
				return matched
			}
			for k := 0; ; k++ {
				if canStart(rest, s[k:]) {
					if r := matchFrom(rest, s[k:]); r != noMatch {
						return r
					}
				}
				if k == len(s) {
					return noMatchAll
				}
				if s[k] == '/' {
					return noMatchSlash
				}
			}
		case tokAny:
			rest := toks[i+1:]
			if len(rest) == 0 {
				return matched
			}
			for k := 0; ; k++ {
				if canStart(rest, s[k:]) {
					if r := matchFrom(rest, s[k:]); r == matched || r == noMatchAll {
						return r
					}
				}
				if k == len(s) {
					return noMatchAll
				}
			}
		}
	}
	if s != "" {
		return noMatch
	}
	return matched
}

// canStart is a cheap filter before recursing: a literal must begin
// with its first byte.
func canStart(toks []token, s string) bool {
	if toks[0].kind != tokLit {
		return true
	}
	return s == "" || s[0] == toks[0].lit[0]
}
