package testtree

import (
	"bytes"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
)

const (
	// rsyncPathLimit is the longest relative path Compare hands to rsync,
	// and the longest exclude pattern: rsync stops at its MAXPATHLEN (4096)
	// with "filename overflows max-path len" (older versions), and a longer
	// filter rule silently matches nothing (rsync 3.5).
	rsyncPathLimit = 3000

	// rsyncChecksumLimit is the largest file rsync --checksum gets to read:
	// it reads holes byte by byte, 80 s for a 100 GiB sparse file on a
	// 2-core machine.
	rsyncChecksumLimit = 1 << 30
)

// rsync runs the rsync comparison of a and b (see Compare); it skips t if
// rsync is not installed.
func (c *comparer) rsync(a, b string) {
	c.t.Helper()
	if _, err := exec.LookPath("rsync"); err != nil {
		c.t.Skip("rsync not installed: apt-get install rsync")
	}
	if len(c.long) > 0 {
		c.t.Logf("testtree.Compare: %d paths too long for rsync, compared by the walk only", len(c.long))
	}
	var skip []string
	for _, rel := range slices.Sorted(maps.Keys(c.skip)) {
		skip = append(skip, "- "+rsyncPattern(rel))
	}
	for _, rel := range slices.Concat(c.long, c.big) {
		skip = append(skip, "- "+rsyncPattern(rel))
	}
	c.runRsync(a, b, true, skip)
	if len(c.big) == 0 {
		return
	}
	// The big files alone, and the directories that lead to them: every
	// other path is excluded, which also keeps --delete off it.
	var only []string
	seen := make(map[string]bool)
	for _, rel := range c.big {
		comps := strings.Split(rel, "/")
		for i := 1; i < len(comps); i++ {
			if dir := strings.Join(comps[:i], "/"); !seen[dir] {
				seen[dir] = true
				only = append(only, "+ "+rsyncPattern(dir)+"/")
			}
		}
		only = append(only, "+ "+rsyncPattern(rel))
	}
	c.runRsync(a, b, false, append(only, "- *"))
}

// runRsync runs rsync with the filter rules given ("+ PATTERN" or
// "- PATTERN", first match wins).
func (c *comparer) runRsync(a, b string, checksum bool, rules []string) {
	c.t.Helper()
	args := []string{"-aHAXS", "--numeric-ids", "--dry-run", "--itemize-changes", "--delete"}
	if checksum {
		args = append(args, "--checksum")
	}
	if len(rules) > 0 {
		f, err := os.CreateTemp("", "testtree-rsync-filter-")
		if err != nil {
			c.t.Fatalf("testtree.Compare: %v", err)
		}
		defer os.Remove(f.Name())
		var buf bytes.Buffer
		for _, rule := range rules {
			buf.WriteString(rule)
			buf.WriteByte(0)
		}
		if _, err := f.Write(buf.Bytes()); err != nil {
			c.t.Fatalf("testtree.Compare: %v", err)
		}
		if err := f.Close(); err != nil {
			c.t.Fatalf("testtree.Compare: %v", err)
		}
		args = append(args, "--from0", "--filter=merge "+f.Name())
	}
	args = append(args, a+"/", b+"/")
	cmd := exec.Command("rsync", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if out := strings.TrimRight(stdout.String(), "\n"); out != "" {
		c.t.Errorf("testtree.Compare: rsync %s reports differences:\n%s", strings.Join(args[:len(args)-2], " "), out)
	}
	if err != nil {
		c.t.Errorf("testtree.Compare: rsync %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
}

// tooLongForRsync reports whether rel, or the pattern that would exclude it,
// is longer than rsyncPathLimit. Escaping wildcards can double a pattern's
// length.
func tooLongForRsync(rel string) bool {
	return len(rel) > rsyncPathLimit || (len(rel) >= rsyncPathLimit/2 && len(rsyncPattern(rel)) > rsyncPathLimit)
}

// rsyncPattern returns an exclude pattern that matches exactly the path rel
// from the transfer root. rsync treats a backslash as an escape only in a
// pattern that has wildcards, so escaping is needed only then.
func rsyncPattern(rel string) string {
	if strings.ContainsAny(rel, "*?[") {
		var b strings.Builder
		for i := 0; i < len(rel); i++ {
			if strings.IndexByte(`*?[\`, rel[i]) >= 0 {
				b.WriteByte('\\')
			}
			b.WriteByte(rel[i])
		}
		rel = b.String()
	}
	return "/" + rel
}
