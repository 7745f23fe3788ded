package testtree

import (
	"bytes"
	"os"
	"os/exec"
	"slices"
	"strings"
)

const (
	// rsyncPathLimit is the longest relative path Compare hands to rsync,
	// which stops at its MAXPATHLEN (4096) with "filename overflows
	// max-path len"; the margin leaves room for the exclude pattern.
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
	c.runRsync(a, b, true, slices.Concat(c.long, c.big))
	if len(c.big) > 0 {
		c.runRsync(a, b, false, c.long)
	}
}

func (c *comparer) runRsync(a, b string, checksum bool, exclude []string) {
	c.t.Helper()
	args := []string{"-aHAXS", "--numeric-ids", "--dry-run", "--itemize-changes", "--delete"}
	if checksum {
		args = append(args, "--checksum")
	}
	if len(exclude) > 0 {
		f, err := os.CreateTemp("", "testtree-rsync-exclude-")
		if err != nil {
			c.t.Fatalf("testtree.Compare: %v", err)
		}
		defer os.Remove(f.Name())
		var rules bytes.Buffer
		for _, rel := range exclude {
			rules.WriteString(rsyncPattern(rel))
			rules.WriteByte(0)
		}
		if _, err := f.Write(rules.Bytes()); err != nil {
			c.t.Fatalf("testtree.Compare: %v", err)
		}
		if err := f.Close(); err != nil {
			c.t.Fatalf("testtree.Compare: %v", err)
		}
		args = append(args, "--from0", "--exclude-from="+f.Name())
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
