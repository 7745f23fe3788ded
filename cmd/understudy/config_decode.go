package main

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"

	"github.com/understudy/understudy/snapshot/selection"
	usync "github.com/understudy/understudy/sync"
)

// configError is a configuration file with problems; it lists them all.
type configError struct {
	File     string
	Problems []configProblem
}

// configProblem is one problem: an unknown key or a bad value.
type configProblem struct {
	Line int    `json:"line,omitempty"` // 0 if unknown
	Key  string `json:"key,omitempty"`  // full key: set.os.exclude[2]
	Msg  string `json:"message"`
}

func (p configProblem) format(file string) string {
	var b strings.Builder
	b.WriteString(file)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	if p.Key != "" {
		b.WriteString(": " + p.Key)
	}
	return b.String() + ": " + p.Msg
}

func (e *configError) Error() string {
	if len(e.Problems) == 1 {
		return e.Problems[0].format(e.File)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "configuration %s has %d problems:", e.File, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  " + p.format(e.File))
	}
	return b.String()
}

// suggest returns the known name closest to an unknown one, "" if none is
// close: "exlude" gives "exclude", "one-file-system" "one_file_system". A
// name may be one edit away from what it suggests, and one more per four
// bytes after the first four.
func suggest(name string, known []string) string {
	best, bestD := "", max(1, len(name)/4)+1
	for _, k := range known {
		if strings.ReplaceAll(strings.ToLower(name), "-", "_") == k {
			return k
		}
		if d := editDistance(name, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// parseConfig decodes and checks a configuration file's contents.
//
// The document is read twice: by toml.Unmarshal into plain maps, slices and
// scalars, and by the go-toml parser for the line of every key and array
// element (keyLines). The maps are then walked field by field against the
// schema below, so that one pass reports every unknown key and every bad
// value with its line, instead of stopping at the first as decoding into a
// struct does. Only a TOML syntax error stops the reading at once.
func parseConfig(file string, data []byte) (*Config, error) {
	var doc map[string]any
	if err := toml.Unmarshal(data, &doc); err != nil {
		p := configProblem{Msg: strings.TrimPrefix(err.Error(), "toml: ")}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			p.Line, _ = de.Position()
			p.Key = strings.Join(de.Key(), ".")
		}
		return nil, &configError{File: file, Problems: []configProblem{p}}
	}
	d := &configDecoder{lines: keyLines(data)}
	cfg := d.config(doc)
	cfg.File = file
	d.crossCheck(cfg)
	if len(d.problems) > 0 {
		slices.SortStableFunc(d.problems, func(a, b configProblem) int { return a.Line - b.Line })
		return nil, &configError{File: file, Problems: d.problems}
	}
	return cfg, nil
}

// joinKey appends a key part to a dotted key, quoting it as TOML would
// when it is not a bare key.
func joinKey(parent, part string) string {
	if part == "" || strings.Trim(part, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != "" {
		part = strconv.Quote(part)
	}
	if parent == "" {
		return part
	}
	return parent + "." + part
}

func indexKey(parent string, i int) string { return parent + "[" + strconv.Itoa(i) + "]" }

// keyLines maps every key of a TOML document, and every element of its
// arrays, written as joinKey and indexKey write them ("set.os.exclude",
// "set.os.paths[2]", "check[1].name"), to the line where it first appears.
// The document must have parsed.
func keyLines(data []byte) map[string]int {
	lines := make(map[string]int)
	var p unstable.Parser
	p.Reset(data)
	note := func(key string, n *unstable.Node) {
		if _, ok := lines[key]; !ok && n.Raw.Length > 0 {
			lines[key] = p.Shape(n.Raw).Start.Line
		}
	}
	var value func(key string, n *unstable.Node)
	keyval := func(table string, kv *unstable.Node) {
		key := table
		for it := kv.Key(); it.Next(); {
			key = joinKey(key, string(it.Node().Data))
			note(key, it.Node())
		}
		value(key, kv.Value())
	}
	value = func(key string, n *unstable.Node) {
		switch n.Kind {
		case unstable.Array:
			i := 0
			for it := n.Children(); it.Next(); {
				if e := it.Node(); e.Kind != unstable.Comment {
					note(indexKey(key, i), e)
					value(indexKey(key, i), e)
					i++
				}
			}
		case unstable.InlineTable:
			for it := n.Children(); it.Next(); {
				if it.Node().Kind == unstable.KeyValue {
					keyval(key, it.Node())
				}
			}
		}
	}
	table := ""
	arrays := make(map[string]int) // array of tables → elements so far
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.KeyValue:
			keyval(table, e)
		case unstable.Table, unstable.ArrayTable:
			table = ""
			for it := e.Key(); it.Next(); {
				table = joinKey(table, string(it.Node().Data))
				note(table, it.Node())
				if it.IsLast() && e.Kind == unstable.ArrayTable {
					n := arrays[table]
					arrays[table] = n + 1
					table = indexKey(table, n)
					note(table, it.Node())
				} else if n, ok := arrays[table]; ok {
					table = indexKey(table, n-1)
				}
			}
		}
	}
	return lines
}

// configDecoder walks a decoded document against the schema, collecting
// problems.
type configDecoder struct {
	lines    map[string]int
	problems []configProblem
}

// problem records a problem with key, at the line of key or, if the key is
// not in the file (a missing one), of the table holding it.
func (d *configDecoder) problem(key, format string, args ...any) {
	line := 0
	for k := key; k != "" && line == 0; {
		line = d.lines[k]
		if i := strings.LastIndexAny(k, ".["); i >= 0 {
			k = k[:i]
		} else {
			k = ""
		}
	}
	d.problems = append(d.problems, configProblem{Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// field decodes the value v of key.
type field func(key string, v any)

// table decodes the table v at key with fields, reporting the keys it does
// not know.
func (d *configDecoder) table(key string, v any, fields map[string]field) {
	m, ok := v.(map[string]any)
	if !ok {
		d.problem(key, "want a table, not %s", describe(v))
		return
	}
	for _, name := range sortedKeys(m) {
		k := joinKey(key, name)
		if f, ok := fields[name]; ok {
			f(k, m[name])
		} else if s := suggest(name, sortedKeys(fields)); s != "" {
			d.problem(k, "unknown key (did you mean %s?)", s)
		} else {
			d.problem(k, "unknown key (known here: %s)", strings.Join(sortedKeys(fields), ", "))
		}
	}
}

// named decodes a table of tables such as [set.NAME], checking each NAME.
func (d *configDecoder) named(what string, fn func(key, name string, v any)) field {
	return func(key string, v any) {
		m, ok := v.(map[string]any)
		if !ok {
			d.problem(key, "want tables [%s.NAME], not %s", key, describe(v))
			return
		}
		for _, name := range sortedKeys(m) {
			k := joinKey(key, name)
			if !validName(name) {
				d.problem(k, "%s name %q: use lowercase letters, digits, _ and -", what, name)
			}
			fn(k, name, m[name])
		}
	}
}

// describe names the TOML type of a decoded value, for messages.
func describe(v any) string {
	switch v := v.(type) {
	case string:
		return "a string (" + strconv.Quote(v) + ")"
	case int64:
		return fmt.Sprintf("an integer (%d)", v)
	case float64:
		return fmt.Sprintf("a float (%g)", v)
	case bool:
		return fmt.Sprintf("a boolean (%t)", v)
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return "a date or time"
}

func (d *configDecoder) wrongType(key, want string, v any) {
	d.problem(key, "want %s, not %s", want, describe(v))
}

// text decodes a string, then check: a non-nil error is the problem.
func (d *configDecoder) text(check func(string) error) field {
	return func(key string, v any) {
		s, ok := v.(string)
		if !ok {
			d.wrongType(key, "a string", v)
			return
		}
		if err := check(s); err != nil {
			d.problem(key, "%v", err)
		}
	}
}

func (d *configDecoder) str(dst *string) field {
	return d.text(func(s string) error { *dst = s; return nil })
}

func (d *configDecoder) absPath(dst *string) field {
	return d.text(func(s string) error {
		if !strings.HasPrefix(s, "/") {
			return fmt.Errorf("%q: want an absolute path", s)
		}
		*dst = s
		return nil
	})
}

func (d *configDecoder) duration(dst *time.Duration) field {
	return d.text(func(s string) error {
		v, err := parseDuration(s)
		if err == nil {
			*dst = v
		}
		return err
	})
}

func (d *configDecoder) boolean(dst *bool) field {
	return func(key string, v any) {
		if b, ok := v.(bool); ok {
			*dst = b
		} else {
			d.wrongType(key, "true or false", v)
		}
	}
}

// count decodes an integer of at least 0.
func (d *configDecoder) count(dst *int) field {
	return func(key string, v any) {
		switch n, ok := v.(int64); {
		case !ok:
			d.wrongType(key, "a whole number", v)
		case n < 0:
			d.problem(key, "%d: want 0 or more", n)
		case n > math.MaxInt32:
			d.problem(key, "%d: too large", n)
		default:
			*dst = int(n)
		}
	}
}

// percent decodes a number from 0 to 100.
func (d *configDecoder) percent(dst **float64) field {
	return func(key string, v any) {
		var f float64
		switch n := v.(type) {
		case int64:
			f = float64(n)
		case float64:
			f = n
		default:
			d.wrongType(key, "a percentage", v)
			return
		}
		if !(f >= 0 && f <= 100) {
			d.problem(key, "%g: want a percentage from 0 to 100", f)
			return
		}
		*dst = &f
	}
}

// list decodes an array of strings, each checked by check (nil for none).
// With single, one string stands for a list of one.
func (d *configDecoder) list(dst *[]string, single bool, check func(string) error) field {
	return func(key string, v any) {
		if s, ok := v.(string); ok && single {
			v = []any{s}
		}
		a, ok := v.([]any)
		if !ok {
			d.wrongType(key, "an array of strings", v)
			return
		}
		out := make([]string, 0, len(a))
		for i, e := range a {
			s, ok := e.(string)
			if !ok {
				d.wrongType(indexKey(key, i), "a string", e)
				continue
			}
			if check != nil {
				if err := check(s); err != nil {
					d.problem(indexKey(key, i), "%v", err)
					continue
				}
			}
			out = append(out, s)
		}
		*dst = out
	}
}

func checkAbs(s string) error {
	if !strings.HasPrefix(s, "/") {
		return fmt.Errorf("%q: want an absolute path", s)
	}
	return nil
}

func checkListed(s string) error {
	_, err := selection.New([]string{s}, nil, false)
	return err
}

func checkPattern(s string) error {
	_, err := selection.New([]string{"/"}, []string{s}, false)
	return err
}

// config decodes the whole document.
func (d *configDecoder) config(doc map[string]any) *Config {
	c := &Config{LogKeepDays: defaultLogKeepDays, Standbys: map[string]Standby{}, Sets: map[string]Set{}}
	d.table("", doc, map[string]field{
		"repo":          d.absPath(&c.Repo),
		"log_file":      d.absPath(&c.LogFile),
		"log_keep_days": d.count(&c.LogKeepDays),
		"log_rotate":    d.text(func(s string) error { return c.LogRotate.parse(s) }),
		"syslog":        d.boolean(&c.Syslog),
		"standby": d.named("standby", func(key, name string, v any) {
			c.Standbys[name] = d.standby(key, name, v)
		}),
		"check": func(key string, v any) { c.Checks = d.checks(key, v) },
		"set": d.named("set", func(key, name string, v any) {
			c.Sets[name] = d.set(key, name, v)
		}),
	})
	return c
}
func (d *configDecoder) standby(key, name string, v any) Standby {
	s := Standby{Name: name}
	d.table(key, v, map[string]field{
		"url": d.text(func(u string) error {
			if !strings.Contains(u, "://") && !strings.HasPrefix(u, "/") {
				return fmt.Errorf("%q: want an absolute repository path or ssh://[user@]host[:port]/path", u)
			}
			if _, err := usync.ParseDest(u); err != nil {
				return err
			}
			s.URL = u
			return nil
		}),
		"target":          d.absPath(&s.Target),
		"known_hosts":     d.list(&s.KnownHosts, true, checkAbs),
		"identity":        d.list(&s.Identity, true, checkAbs),
		"apply":           d.boolean(&s.Apply),
		"remote_command":  d.str(&s.RemoteCommand),
		"connect_timeout": d.duration(&s.ConnectTimeout),
		"keepalive":       d.duration(&s.Keepalive),
	})
	if m, ok := v.(map[string]any); ok {
		if _, ok := m["url"]; !ok {
			d.problem(joinKey(key, "url"), "missing: the standby's repository, a path or ssh://[user@]host[:port]/path")
		}
		if s.Apply && s.Target == "" {
			d.problem(joinKey(key, "apply"), "apply = true needs target, the live tree on the standby to apply to")
		}
	}
	return s
}

func (d *configDecoder) checks(key string, v any) []Check {
	a, ok := v.([]any)
	if !ok {
		d.problem(key, "want an array of tables, [[%s]], not %s", key, describe(v))
		return nil
	}
	var checks []Check
	for i, e := range a {
		k := indexKey(key, i)
		c := Check{Timeout: defaultCheckTimeout}
		d.table(k, e, map[string]field{
			"name":    d.str(&c.Name),
			"command": d.list(&c.Command, false, nil),
			"timeout": d.duration(&c.Timeout),
		})
		if len(c.Command) == 0 || c.Command[0] == "" {
			d.problem(joinKey(k, "command"), "missing: the program and its arguments, such as [\"/usr/sbin/vxdg\", \"list\", \"database\"]")
		}
		if c.Timeout <= 0 {
			d.problem(joinKey(k, "timeout"), "want a timeout above 0")
		}
		if c.Name == "" {
			c.Name = strings.Join(c.Command, " ")
		}
		if slices.ContainsFunc(checks, func(o Check) bool { return o.Name == c.Name }) {
			d.problem(joinKey(k, "name"), "%q is the name of an earlier check", c.Name)
		}
		checks = append(checks, c)
	}
	return checks
}

func (d *configDecoder) set(key, name string, v any) Set {
	s := Set{Name: name}
	d.table(key, v, map[string]field{
		"paths":           d.list(&s.Paths, false, checkListed),
		"exclude":         d.list(&s.Exclude, false, checkPattern),
		"one_file_system": d.boolean(&s.OneFileSystem),
		"trust_mtime":     d.boolean(&s.TrustMtime),
		"every":           d.text(func(e string) (err error) { s.Every, err = parseEvery(e); return err }),
		"to":              d.list(&s.To, false, nil),
		"keep": func(k string, v any) {
			d.table(k, v, map[string]field{
				"last":    d.count(&s.Keep.Last),
				"hourly":  d.count(&s.Keep.Hourly),
				"daily":   d.count(&s.Keep.Daily),
				"weekly":  d.count(&s.Keep.Weekly),
				"monthly": d.count(&s.Keep.Monthly),
				"yearly":  d.count(&s.Keep.Yearly),
				"within":  d.duration(&s.Keep.Within),
			})
		},
		"apply_delay": d.duration(&s.ApplyDelay),
		"guard": func(k string, v any) {
			d.table(k, v, map[string]field{
				"max_deleted": d.percent(&s.Guard.MaxDeleted),
				"max_changed": d.percent(&s.Guard.MaxChanged),
			})
		},
		"protect": d.list(&s.Protect, false, checkPattern),
	})
	// Paths given but bad are reported as such, not as missing.
	if m, ok := v.(map[string]any); ok && !s.Every.IsZero() {
		if p, isArray := m["paths"].([]any); m["paths"] == nil || isArray && len(p) == 0 {
			d.problem(joinKey(key, "every"), "the set has a schedule but no paths to take")
		}
	}
	return s
}

// crossCheck checks what spans tables: the standbys named in sets.
func (d *configDecoder) crossCheck(c *Config) {
	for _, name := range sortedKeys(c.Sets) {
		for i, to := range c.Sets[name].To {
			if _, ok := c.Standbys[to]; ok {
				continue
			}
			key := indexKey(joinKey(joinKey("set", name), "to"), i)
			if s := suggest(to, sortedKeys(c.Standbys)); s != "" {
				d.problem(key, "no standby %q (did you mean %s?)", to, s)
			} else {
				d.problem(key, "no standby %q: define it in a [standby.%s] table", to, to)
			}
		}
	}
}
