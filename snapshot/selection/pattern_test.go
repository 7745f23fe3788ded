package selection

import (
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
)

// excludedCase says whether the single exclude pattern pat excludes path,
// a directory if dir.
type excludedCase struct {
	pat  string
	path string
	dir  bool
	want bool
}

// excludedCases cover each rule of the package doc's pattern syntax. The
// expectations follow rsync 3's --exclude; TestPatternsMatchRsync checks
// the subtler scoping ones against rsync itself.
var excludedCases = []excludedCase{
	// Anchored literals: the whole relative path.
	{"/etc/", "/etc", true, true},
	{"/etc/", "/etc", false, false}, // directories only
	{"/etc/", "/usr/etc", true, false},
	{"/etc/", "/etc/passwd", false, false}, // Excluded is per entry; the walk prunes
	{"/etc", "/etc", false, true},
	{"/etc", "/etc", true, true},
	{"/kernel/drv/sd.conf", "/kernel/drv/sd.conf", false, true},
	{"/kernel/drv/sd.conf", "/x/kernel/drv/sd.conf", false, false},
	{"/kernel/drv/sd.conf", "/kernel/drv/sd.conf.orig", false, false},
	{"/kernel/drv/sd.conf", "/kernel/drv/sparcv9/sd.conf", false, false},
	{"/usr/emc/API/symapi/db", "/usr/emc/API/symapi/db", true, true},
	{"/usr/emc/API/symapi/db", "/usr/emc/API/symapi/db", false, true},
	{"/usr/emc/API/symapi/db", "/usr/emc/API/symapi/dbx", false, false},
	{"/usr/emc/API/symapi/db", "/usr/emc/API/symapi/db/x", false, false},
	{"//etc", "/etc", true, false}, // only one "/" anchors; no path starts with another
	// Unanchored literals: the final component, or the last N+1.
	{"core", "/core", false, true},
	{"core", "/var/tmp/core", false, true},
	{"core", "/var/tmp/core", true, true},
	{"core", "/var/core.1", false, false},
	{"core", "/xcore", false, false},
	{"core", "/core/x", false, false},
	{"core/", "/var/core", false, false},
	{"core/", "/var/core", true, true},
	{"tmp/core", "/var/tmp/core", false, true},
	{"tmp/core", "/tmp/core", false, true},
	{"tmp/core", "/var/xtmp/core", false, false},
	{"tmp/core", "/core", false, false},
	{"tmp/core", "/tmp/core/x", false, false},
	{"adm/sa/", "/var/adm/sa", true, true},
	{"adm/sa/", "/var/adm/sa", false, false},
	{"a//", "/a", true, false}, // one trailing "/" is stripped, the body "a/" matches nothing
	// The rsync "- " prefix; no other prefix is special.
	{"- core", "/var/core", false, true},
	{"- /etc/", "/etc", true, true},
	{"- /etc/", "/usr/etc", true, false},
	{"-core", "/core", false, false},
	{"-core", "/-core", false, true},
	{"-", "/-", false, true},
	// "\" is an ordinary byte in a literal, and escapes in a wildcard body.
	{`a\b`, `/a\b`, false, true},
	{`a\b`, "/ab", false, false},
	{`a\`, `/a\`, false, true},
	{`\*`, "/*", false, true},
	{`\*`, "/a", false, false},
	{`a\?c`, "/a?c", false, true},
	{`a\?c`, "/abc", false, false},
	{`\[x]`, "/[x]", false, true},
	{`\[x]`, "/x", false, false},
	{`a\\*`, `/a\bc`, false, true},
	{`*\\`, `/x\`, false, true},
	// "*": any run of bytes but "/".
	{"*", "/a", false, true},
	{"*", "/a/b/c", true, true}, // no "/": the final component
	{"*.log", "/var/x.log", false, true},
	{"*.log", "/.log", false, true},
	{"*.log", "/x.log/y", false, false},
	{"*.log", "/x.logs", false, false},
	{"/*", "/a", false, true},
	{"/*", "/a/b", false, false},
	{"/a*c", "/ac", false, true},
	{"/a*c", "/abbbc", false, true},
	{"/a*c", "/a/c", false, false},
	{"tmp/*.log", "/var/tmp/x.log", false, true},
	{"tmp/*.log", "/tmp/x.log", false, true},
	{"tmp/*.log", "/var/tmp/sub/x.log", false, false},
	{"*/b", "/a/b", false, true},
	{"*/b", "/x/a/b", false, true},
	{"*/b", "/b", false, false},
	{"/a/*/b", "/a/x/b", false, true},
	{"/a/*/b", "/a/x/y/b", false, false},
	{"x/*", "/q/x/y", false, true},
	// A path with fewer components than the body has "/" never matches,
	// even where a "/" is in a class (rsync's trailing_N_elements).
	{"[/a]b", "/ab", false, false},
	{"[/a]b", "/x/ab", false, false},
	{"y/[/a]b", "/y/ab", false, false},
	{"y/[/a]b", "/x/y/ab", false, false},
	{"a/[/x]/b", "/a/x/b", false, false},
	{"a*/b", "/ab/b", false, true},
	{"a*/b", "/ab", false, false},
	// "?": one byte but "/".
	{"?", "/a", false, true},
	{"?", "/ab", false, false},
	{"?", "/x/a", false, true},
	{"/?", "/x/a", false, false},
	{"/a?c", "/a/c", false, false},
	{"/a?c", "/abc", false, true},
	{"a?b", "/a\nb", false, true},
	{"?", "/\xff", false, true},
	{"??", "/\xc3\xa9", false, true}, // bytes, not runes
	{"?", "/\xc3\xa9", false, false},
	// "**": any run of bytes, "/" too.
	{"**", "/a/b", false, true},
	{"/a**c", "/a/b/c", false, true},
	{"/a**c", "/ac", false, true},
	{"cache/**", "/a/cache/x", false, true},
	{"cache/**", "/a/cache/x/y", false, true},
	{"cache/**", "/cache/x", false, true},
	{"cache/**", "/a/cache", true, false},
	{"cache/**", "/a/xcache/x", false, false},
	{"a/**/b", "/a/b", false, false},
	{"a/**/b", "/a/x/b", false, true},
	{"a/**/b", "/z/a/x/y/b", false, true},
	{"a/**/b", "/za/x/b", false, false},
	{"x/**", "/x", true, false},
	// A leading "**" is matched against "/" and the relative path.
	{"**/cache", "/a/cache", true, true},
	{"**/cache", "/a/b/cache", false, true},
	{"**/cache", "/cache", true, true},
	{"**/cache", "/xcache", true, false},
	{"**cache", "/xcache", true, true},
	{"**/", "/a", true, true},
	{"**/", "/a", false, false},
	{"/**/cache", "/cache", true, false},
	{"/**/cache", "/a/cache", true, true},
	{"**/a/*", "/a/x", false, true},
	{"**/a/*", "/a/x/y", false, false},
	// "/***": the directory itself and everything below it.
	{"dir/***", "/dir", true, true},
	{"dir/***", "/dir", false, false},
	{"dir/***", "/dir/x", false, true},
	{"dir/***", "/dir/x/y", true, true},
	{"dir/***", "/x/dir", true, true},
	{"dir/***", "/dirx", true, false},
	{"/dir/***", "/x/dir", true, false},
	{"/dir/***", "/x/dir/f", false, false},
	{"d*/***", "/dir", true, true},
	{"**/dir/***", "/dir", true, true},
	{`a\/***`, "/a", true, true},
	{`a\/***`, "/x/a/f", false, true},
	{"a***", "/a", false, true},
	{"a***", "/abc/d", false, true},
	{"***", "/a/b", false, true},
	{"dir/***/", "/dir/f", false, false},
	{"dir/***/", "/dir/d", true, true},
	// Classes.
	{"[ab]x", "/ax", false, true},
	{"[ab]x", "/cx", false, false},
	{"[!ab]x", "/cx", false, true},
	{"[!ab]x", "/ax", false, false},
	{"[^ab]x", "/cx", false, true},
	{"[^ab]x", "/bx", false, false},
	{"[]]x", "/]x", false, true},
	{"[]]x", "/ax", false, false},
	{"[]a]", "/a", false, true},
	{"[!]]*", "/]x", false, false},
	{"[!]]*", "/ax", false, true},
	{"[^]]", "/]", false, false},
	{"[a-c]", "/b", false, true},
	{"[a-c]", "/d", false, false},
	{"[c-a]", "/c", false, true}, // a reversed range is its first byte
	{"[c-a]", "/b", false, false},
	{"[a-]", "/-", false, true},
	{"[-a]", "/-", false, true},
	{"[a-c-e]", "/-", false, true},
	{"[a-c-e]", "/d", false, false},
	{"[--0]", "/.", false, true},
	{`[\]]x`, "/]x", false, true},
	{`[\\]`, `/\`, false, true},
	{`[a\-c]`, "/-", false, true},
	{`[a\-c]`, "/b", false, false},
	{`[a-\c]`, "/b", false, true},
	{"[[]x]", "/[x]", false, true},
	{"[[:]x]", "/:x]", false, true}, // no ":]": the class is "[" and ":", then "x]"
	{"[[:]x]", "/[x]", false, true},
	{"[[:]x]", "/:x", false, false},
	{"[[:alpha]", "/p", false, true}, // no ":]": "[" ":" "a" "l" "p" "h" "a"
	{"[[:digit:]]*", "/1abc", false, true},
	{"[[:digit:]]*", "/a1", false, false},
	{"[[:alpha:][:digit:]]", "/7", false, true},
	{"[![:alpha:]]", "/7", false, true},
	{"[![:alpha:]]", "/q", false, false},
	{"[[:digit:]-z]", "/-", false, true}, // "-" after a named class is literal
	{"[[:digit:]-z]", "/y", false, false},
	{"*[[:space:]]*", "/x y", false, true},
	{"*[[:space:]]*", "/new\nline", false, true},
	{"*[[:cntrl:]]*", "/tab\tname", false, true},
	{"[\xfe-\xff]*", "/\xffz", false, true},
	{"[\xfe-\xff]*", "/\xfd", false, false},
	{"*[\x80-\xff]", "/latin\xe9", false, true},
	{"x[/]y", "/x/y", false, false}, // a class never matches "/"
	{"/x[!a]y", "/x/y", false, false},
	{"/x[^a]y", "/xby", false, true},
	// Names with any byte but NUL.
	{"new\nline", "/new\nline", false, true},
	{"*\n*", "/new\nline", false, true},
	{"*\xff*", "/bad\xff\xfe", false, true},
	{"bad\xff\xfe", "/d/bad\xff\xfe", false, true},
	{"x y", "/x y", false, true},
}

func TestExcluded(t *testing.T) {
	for _, tc := range excludedCases {
		sel, err := New([]string{"/"}, []string{tc.pat}, false)
		if err != nil {
			t.Errorf("New(%q): %v", tc.pat, err)
			continue
		}
		if got := sel.Excluded(tc.path, tc.dir); got != tc.want {
			t.Errorf("exclude %q: Excluded(%q, dir=%v) = %v, want %v", tc.pat, tc.path, tc.dir, got, tc.want)
		}
	}
}

// TestExcludedSeveral checks that the fast paths for literal patterns and
// the wildcard patterns combine.
func TestExcludedSeveral(t *testing.T) {
	sel, err := New([]string{"/"}, []string{"core", "core/", "/etc/", "/etc", "/dev/", "tmp/x", "*.o", "/var/**/old/"}, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		dir  bool
		want bool
	}{
		{"/", true, false},
		{"/core", false, true},
		{"/core", true, true},
		{"/etc", false, true}, // "/etc" adds files to "/etc/"
		{"/dev", true, true},
		{"/dev", false, false},
		{"/a/tmp/x", false, true},
		{"/a/tmpx", false, false},
		{"/a/b.o", false, true},
		{"/var/x/old", true, true},
		{"/var/x/old", false, false},
		{"/usr/bin", true, false},
		{"/etc/passwd", false, false},
	} {
		if got := sel.Excluded(tc.path, tc.dir); got != tc.want {
			t.Errorf("Excluded(%q, dir=%v) = %v, want %v", tc.path, tc.dir, got, tc.want)
		}
	}
}

// TestExcludedLiteralFastPath checks that literal patterns, which skip the
// wildcard matcher, are compared byte for byte on the right part.
func TestExcludedLiteralFastPath(t *testing.T) {
	for _, tc := range []struct {
		pat     string
		literal bool
		scope   scope
	}{
		{"core", true, scopeBase},
		{"/core", true, scopeFull},
		{"tmp/core", true, scopeTail},
		{"/var/tmp/core/", true, scopeFull},
		{`a\b`, true, scopeBase},
		{"a]", true, scopeBase},
		{"*", false, scopeBase},
		{"a?", false, scopeBase},
		{"[a]", false, scopeBase},
		{"a/*", false, scopeTail},
		{"**/a", false, scopeFull},
		{"a/**", false, scopeSuffixes},
		{`\**`, false, scopeSuffixes}, // rsync looks for "**" in the text, escaped or not
		{"/a/**", false, scopeFull},
	} {
		p, err := compilePattern(tc.pat)
		if err != nil {
			t.Errorf("%q: %v", tc.pat, err)
			continue
		}
		if p.literal != tc.literal || p.scope != tc.scope {
			t.Errorf("%q: literal %v scope %d, want literal %v scope %d", tc.pat, p.literal, p.scope, tc.literal, tc.scope)
		}
	}
}

func TestPatternErrors(t *testing.T) {
	for _, tc := range []struct {
		pat, want string // want: a part of the error message
	}{
		{"", "empty pattern"},
		{"/", "empty pattern"},
		{"//", "empty pattern"},
		{"- ", "empty pattern"},
		{"- /", "empty pattern"},
		{"!", "clear-the-list"},
		{"+ /etc/passwd", "include rule"},
		{"a\x00b", "NUL"},
		{"[a", "unterminated character class"},
		{"a[", "unterminated character class"},
		{"[!", "unterminated character class"},
		{"[]", "unterminated character class"},
		{"[!]", "unterminated character class"},
		{`[\`, "unterminated character class"},
		{`[a\]`, "unterminated character class"},
		{`[a-\`, "unterminated character class"},
		{"[[:alpha:]", "unterminated character class"},
		{"[[:alpha", "unterminated character class"},
		{"[[:bogus:]]", "unknown character class [:bogus:]"},
		{"[[::]]", "unknown character class [::]"},
		{`*\`, `lone "\"`},
		{`a?\`, `lone "\"`},
	} {
		_, err := New([]string{"/"}, []string{"/ok", tc.pat}, false)
		if err == nil {
			t.Errorf("exclude %q: no error", tc.pat)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, tc.want) {
			t.Errorf("exclude %q: error %q does not say %q", tc.pat, msg, tc.want)
		}
		if !strings.Contains(msg, "exclude pattern "+strconv.Quote(tc.pat)) {
			t.Errorf("exclude %q: error %q does not name the pattern", tc.pat, msg)
		}
	}
}

// TestNamedClasses checks every byte against each named class, using the
// unicode package's ASCII classification as the reference.
func TestNamedClasses(t *testing.T) {
	ref := map[string]func(r rune) bool{
		"alnum":  func(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) },
		"alpha":  unicode.IsLetter,
		"blank":  func(r rune) bool { return r == ' ' || r == '\t' },
		"cntrl":  unicode.IsControl,
		"digit":  unicode.IsDigit,
		"graph":  func(r rune) bool { return unicode.IsGraphic(r) && r != ' ' },
		"lower":  unicode.IsLower,
		"print":  unicode.IsPrint,
		"punct":  func(r rune) bool { return unicode.IsPunct(r) || unicode.IsSymbol(r) },
		"space":  unicode.IsSpace,
		"upper":  unicode.IsUpper,
		"xdigit": func(r rune) bool { return strings.ContainsRune("0123456789abcdefABCDEF", r) },
	}
	if len(ref) != len(namedClasses) {
		t.Fatalf("%d named classes, the reference has %d", len(namedClasses), len(ref))
	}
	for name, is := range ref {
		for _, neg := range []string{"", "!"} {
			body := "x[" + neg + "[:" + name + ":]]"
			toks, err := compileWild(body)
			if err != nil {
				t.Fatalf("%q: %v", body, err)
			}
			for b := range 256 {
				// ASCII only, as in the C locale; never "/".
				want := b < 0x80 && is(rune(b))
				if neg != "" {
					want = !want
				}
				if b == '/' {
					want = false
				}
				if got := wildMatch(toks, "x"+string([]byte{byte(b)})); got != want {
					t.Errorf("%q on byte %#02x: %v, want %v", body, b, got, want)
				}
			}
		}
	}
}

func TestLastComponents(t *testing.T) {
	for _, tc := range []struct {
		rel  string
		n    int
		want string
		ok   bool
	}{
		{"a", 1, "a", true},
		{"a/b/c", 1, "c", true},
		{"a/b/c", 2, "b/c", true},
		{"a/b/c", 3, "a/b/c", true},
		{"a/b/c", 4, "", false},
		{"a", 2, "", false},
	} {
		got, ok := lastComponents(tc.rel, tc.n)
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("lastComponents(%q, %d) = %q, %v; want %q, %v", tc.rel, tc.n, got, ok, tc.want, tc.ok)
		}
	}
}

// TestWildMatchBacktracking checks that the matcher stays fast on the
// patterns that make naive backtracking exponential.
func TestWildMatchBacktracking(t *testing.T) {
	long := strings.Repeat("a", 2000)
	deep := strings.Repeat("a/", 1000) + "a"
	cases := []struct {
		body, s string
		want    bool
	}{
		{strings.Repeat("*a", 30) + "b", long, false},
		{strings.Repeat("**a", 30) + "b", long, false},
		{strings.Repeat("*a", 30), long, true},
		{strings.Repeat("**a", 30), long, true},
		{strings.Repeat("*/", 30) + "b", deep, false},
		{strings.Repeat("**/", 30) + "b", deep, false},
		{strings.Repeat("**/*a", 30) + "b", deep, false},
		{strings.Repeat("**/*a", 30), deep, true},
		{strings.Repeat("*?", 30) + "b", long, false},
		{strings.Repeat("**[a]", 30) + "b", long, false},
	}
	start := time.Now()
	for _, tc := range cases {
		toks, err := compileWild(tc.body)
		if err != nil {
			t.Fatal(err)
		}
		if got := wildMatch(toks, tc.s); got != tc.want {
			t.Errorf("%.20q... on %.20q...: %v, want %v", tc.body, tc.s, got, tc.want)
		}
	}
	// Polynomial is milliseconds here even under -race; exponential is
	// years.
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}
