package selection

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// refPattern is a reference model of one rsync 3 --exclude rule, written
// from rsync's exclude.c (rule_matches) and lib/wildmatch.c (dowild)
// rather than from this package: the body becomes a regexp over bytes
// (each byte mapped to the rune of the same value, so that "." and classes
// see bytes), and the texts it is tried on are built the way rsync builds
// its strings array. It has no backtracking shortcuts to get wrong.
type refPattern struct {
	anchored, dirOnly bool
	body              string
	slashes           int // '/' in the body, as rsync's slash_cnt (anchor aside)

	literal     bool
	re          *regexp.Regexp
	wild2       bool // "**" anywhere in the text of the body
	wild2Prefix bool // unanchored body starting with "**"
	wild3       bool // body ending with "***"
}

var errRef = errors.New("refused")

func refCompile(raw string) (*refPattern, error) {
	switch {
	case raw == "", raw == "!", strings.IndexByte(raw, 0) >= 0, strings.HasPrefix(raw, "+ "):
		return nil, errRef
	}
	s := strings.TrimPrefix(raw, "- ")
	r := &refPattern{}
	if strings.HasPrefix(s, "/") {
		r.anchored, s = true, s[1:]
	}
	if strings.HasSuffix(s, "/") {
		r.dirOnly, s = true, s[:len(s)-1]
	}
	if s == "" {
		return nil, errRef
	}
	r.body = s
	r.slashes = strings.Count(s, "/")
	if !strings.ContainsAny(s, "*?[") {
		r.literal = true
		return r, nil
	}
	r.wild2 = strings.Contains(s, "**")
	r.wild2Prefix = !r.anchored && strings.HasPrefix(s, "**")
	r.wild3 = strings.HasSuffix(s, "***")
	expr, err := refRegexp(s)
	if err != nil {
		return nil, err
	}
	r.re = regexp.MustCompile(`\A(?s:` + expr + `)\z`)
	return r, nil
}

// latin1 maps each byte of s to the rune of the same value.
func latin1(s string) string {
	rs := make([]rune, len(s))
	for i := range len(s) {
		rs[i] = rune(s[i])
	}
	return string(rs)
}

func refRegexp(body string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(body); {
		switch c := body[i]; c {
		case '\\':
			if i+1 == len(body) {
				return "", errRef
			}
			b.WriteString(regexp.QuoteMeta(latin1(body[i+1 : i+2])))
			i += 2
		case '?':
			b.WriteString(`[^/]`)
			i++
		case '*':
			n := len(body[i:]) - len(strings.TrimLeft(body[i:], "*"))
			if n == 1 {
				b.WriteString(`[^/]*`)
			} else {
				b.WriteString(`.*`)
			}
			i += n
		case '[':
			set, next, err := refClass(body, i)
			if err != nil {
				return "", err
			}
			b.WriteString("(?:")
			sep := ""
			for c := range 256 {
				if set[c] {
					fmt.Fprintf(&b, `%s\x{%x}`, sep, c)
					sep = "|"
				}
			}
			if sep == "" {
				b.WriteString(`[^\x00-\x{ff}]`) // matches nothing
			}
			b.WriteString(")")
			i = next
		default:
			b.WriteString(regexp.QuoteMeta(latin1(body[i : i+1])))
			i++
		}
	}
	return b.String(), nil
}

// refClass follows dowild's bracket loop on the NUL-terminated pattern p
// from the '[' at p[i], and returns the bytes the class matches and the
// index after its ']'.
func refClass(p string, i int) (set [256]bool, next int, err error) {
	at := func(k int) byte {
		if k < len(p) {
			return p[k]
		}
		return 0
	}
	i++
	ch := at(i)
	negate := ch == '!' || ch == '^'
	if negate {
		i++
		ch = at(i)
	}
	var prev byte
	for { // do { ... } while (prev_ch = p_ch, (p_ch = *++p) != ']')
		if ch == 0 {
			return set, 0, errRef
		}
		switch {
		case ch == '\\':
			i++
			if ch = at(i); ch == 0 {
				return set, 0, errRef
			}
			set[ch] = true
		case ch == '-' && prev != 0 && at(i+1) != 0 && at(i+1) != ']':
			i++
			ch = at(i)
			if ch == '\\' {
				i++
				if ch = at(i); ch == 0 {
					return set, 0, errRef
				}
			}
			for c := int(prev); c <= int(ch); c++ {
				set[c] = true
			}
			ch = 0
		case ch == '[' && at(i+1) == ':':
			s := i + 2
			j := s
			for at(j) != 0 && at(j) != ']' {
				j++
			}
			if at(j) == 0 {
				return set, 0, errRef
			}
			if j-s-1 < 0 || p[j-1] != ':' {
				set['['] = true // no ":]": an ordinary '['
				break
			}
			is, ok := map[string]func(byte) bool{
				"alnum":  func(c byte) bool { return refIn(c, "09az", "AZ") },
				"alpha":  func(c byte) bool { return refIn(c, "azAZ") },
				"blank":  func(c byte) bool { return c == ' ' || c == '\t' },
				"cntrl":  func(c byte) bool { return c < ' ' || c == 0x7f },
				"digit":  func(c byte) bool { return refIn(c, "09") },
				"graph":  func(c byte) bool { return refIn(c, "!~") },
				"lower":  func(c byte) bool { return refIn(c, "az") },
				"print":  func(c byte) bool { return refIn(c, " ~") },
				"punct":  func(c byte) bool { return refIn(c, "!/", ":@", "[`", "{~") },
				"space":  func(c byte) bool { return c == ' ' || refIn(c, "\t\r") },
				"upper":  func(c byte) bool { return refIn(c, "AZ") },
				"xdigit": func(c byte) bool { return refIn(c, "09afAF") },
			}[p[s:j-1]]
			if !ok {
				return set, 0, errRef
			}
			for c := range 256 {
				if is(byte(c)) {
					set[c] = true
				}
			}
			i, ch = j, 0
		default:
			set[ch] = true
		}
		prev = ch
		i++
		if ch = at(i); ch == ']' {
			break
		}
	}
	if negate {
		for c := range set {
			set[c] = !set[c]
		}
	}
	set['/'] = false
	return set, i + 1, nil
}

// refIn reports whether c is in one of the inclusive ranges given as pairs
// of bytes ("az", "AZ", or "09afAF" for three ranges).
func refIn(c byte, ranges ...string) bool {
	for _, r := range ranges {
		for k := 0; k+1 < len(r); k += 2 {
			if c >= r[k] && c <= r[k+1] {
				return true
			}
		}
	}
	return false
}

// excluded is rule_matches for the relative path rel (not empty).
func (r *refPattern) excluded(rel string, isDir bool) bool {
	if r.dirOnly && !isDir {
		return false
	}
	base := rel[strings.LastIndexByte(rel, '/')+1:]
	if r.literal {
		switch {
		case r.anchored:
			return rel == r.body
		case r.slashes == 0:
			return base == r.body
		default:
			return rel == r.body || strings.HasSuffix(rel, "/"+r.body)
		}
	}
	name := rel
	switch {
	case !r.anchored && r.slashes == 0 && !r.wild2:
		name = base
	case r.wild2Prefix:
		name = "/" + name
	}
	if isDir && r.wild3 {
		name += "/"
	}
	match := func(s string) bool { return r.re.MatchString(latin1(s)) }
	switch {
	case !r.anchored && r.slashes > 0 && !r.wild2:
		// trailing_N_elements: the last slashes+1 elements, or none.
		comps := strings.Split(name, "/")
		if len(comps) < r.slashes+1 {
			return false
		}
		return match(strings.Join(comps[len(comps)-r.slashes-1:], "/"))
	case !r.anchored && !r.wild2Prefix && r.wild2:
		// Try at the start and after every '/'.
		for s := name; ; {
			if match(s) {
				return true
			}
			k := strings.IndexByte(s, '/')
			if k < 0 {
				return false
			}
			s = s[k+1:]
		}
	default:
		return match(name)
	}
}

// fuzzRel turns arbitrary bytes into a relative path the walker could
// produce: no NUL, no empty, "." or ".." component.
func fuzzRel(s string) string {
	var comps []string
	for _, c := range strings.Split(strings.ReplaceAll(s, "\x00", "0"), "/") {
		if c != "" && c != "." && c != ".." {
			comps = append(comps, c)
		}
	}
	return strings.Join(comps, "/")
}

func TestReference(t *testing.T) {
	// The reference agrees with the unit table, which agrees with rsync.
	for _, tc := range excludedCases {
		r, err := refCompile(tc.pat)
		if err != nil {
			t.Errorf("refCompile(%q): %v", tc.pat, err)
			continue
		}
		if got := r.excluded(tc.path[1:], tc.dir); got != tc.want {
			t.Errorf("reference: exclude %q: %q dir=%v: %v, want %v", tc.pat, tc.path, tc.dir, got, tc.want)
		}
	}
}

// FuzzPattern compiles an arbitrary exclude pattern and matches it against
// an arbitrary path: it must not panic, must refuse exactly what the rsync
// reference refuses, and must decide as the reference does.
func FuzzPattern(f *testing.F) {
	for _, tc := range excludedCases {
		f.Add(tc.pat, tc.path, tc.dir)
	}
	f.Fuzz(func(t *testing.T, pat, path string, isDir bool) {
		if len(pat) > 200 || len(path) > 1000 {
			t.Skip("long input: the regexp reference would be slow, not wrong")
		}
		sel, err := New([]string{"/"}, []string{pat}, false)
		ref, refErr := refCompile(pat)
		if (err == nil) != (refErr == nil) {
			t.Fatalf("exclude %q: error %v, reference error %v", pat, err, refErr)
		}
		if err != nil {
			return
		}
		if sel.Excluded("/", true) {
			t.Fatalf("exclude %q excludes the root", pat)
		}
		rel := fuzzRel(path)
		if rel == "" {
			return
		}
		got := sel.Excluded("/"+rel, isDir)
		if want := ref.excluded(rel, isDir); got != want {
			t.Fatalf("exclude %q: Excluded(%q, dir=%v) = %v, reference %v", pat, "/"+rel, isDir, got, want)
		}
	})
}
