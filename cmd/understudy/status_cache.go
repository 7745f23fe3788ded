package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/understudy/understudy/chunkstore"
)

// statusFile is the file in the repository where a writer leaves the
// status for the readers its lock keeps out: statusCache as JSON.
const statusFile = "status.json"

// maxStatusFile bounds what status reads of statusFile: a few hundred
// bytes per set and standby, so 16 MiB is far beyond any real one.
const maxStatusFile = 16 << 20

// statusCache is REPO/status.json.
type statusCache struct {
	Version int          `json:"version"` // 1
	Made    time.Time    `json:"made"`
	Sets    []*setStatus `json:"sets"` // as status --json prints them
}

// saveStatus is the BeforeClose hook of the exclusive opens (openRepoWith):
// it writes status.json with the standbys named as in the configuration
// file, or by DEST when there is none or it does not load.
func (g *globals) saveStatus(repo *chunkstore.Repo) {
	cfg, err := g.config()
	if err != nil {
		cfg = nil // the command or status itself says what is wrong with it
	}
	g.writeStatusCache(repo, cfg)
}

// writeStatusCache writes repo's status.json from its index, which the
// caller holds exclusively. It never fails the command: a failure, even a
// panic, is one warning on stderr.
func (g *globals) writeStatusCache(repo *chunkstore.Repo, cfg *Config) {
	name := filepath.Join(repo.Dir(), statusFile)
	defer func() {
		if v := recover(); v != nil {
			fmt.Fprintf(g.stderr, "understudy: warning: %s not written: %v\n", name, v)
		}
	}()
	if err := writeStatusFile(repo, cfg, time.Now()); err != nil {
		fmt.Fprintf(g.stderr, "understudy: warning: %s not written: %v; status shows nothing while the repository is busy\n", name, err)
	}
}

// writeStatusFile replaces status.json atomically: a reader sees the old
// file or the new one. The temporary file has a fixed name, as only the
// exclusive holder writes. 0640 as the repository's files are not
// world-readable: it names sets, targets and standbys.
func writeStatusFile(repo *chunkstore.Repo, cfg *Config, now time.Time) error {
	sets, err := collectStatus(repo.Index(), cfg, now)
	if err != nil {
		return err
	}
	data, err := json.MarshalIndent(statusCache{Version: 1, Made: now.Round(0), Sets: sets}, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(repo.Dir(), statusFile), append(data, '\n'), 0o640)
}

// readStatusFile reads the status.json of the repository dir.
func readStatusFile(dir string) (*statusCache, error) {
	name := filepath.Join(dir, statusFile)
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxStatusFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(data) > maxStatusFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, maxStatusFile)
	}
	var c statusCache
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if c.Version != 1 || c.Made.IsZero() {
		return nil, fmt.Errorf("%s: version %d made at %v, want version 1 and a time", name, c.Version, c.Made)
	}
	for _, ss := range c.Sets {
		if ss == nil {
			return nil, fmt.Errorf("%s: a set is null", name)
		}
	}
	if c.Sets == nil {
		c.Sets = []*setStatus{} // printed as [], as a live status prints no set
	}
	return &c, nil
}

// busyError is a repository locked by a writer that status cannot show a
// saved state for.
type busyError struct {
	locked *chunkstore.LockedError
	saved  error // why status.json could not be read
}

func (e *busyError) Error() string {
	return fmt.Sprintf("repository %s is locked by %s; retry when it is done (no saved state to show meanwhile: %v)",
		e.locked.Dir, e.locked.Holder, e.saved)
}

func (e *busyError) Unwrap() []error { return []error{e.locked, e.saved} }

// savedStatus shows the state saved in status.json while a writer holds
// the repository, with its ages and lags counted to now.
func (g *globals) savedStatus(locked *chunkstore.LockedError, metrics string, now time.Time) error {
	c, err := readStatusFile(locked.Dir)
	if err != nil {
		return &busyError{locked: locked, saved: err}
	}
	if !g.quiet {
		fmt.Fprintf(g.stderr, "understudy: repository busy: %s; showing the state as of %s (%s ago)\n",
			locked.Holder, c.Made.Local().Format(time.RFC3339), now.Sub(c.Made).Truncate(time.Second))
	}
	for _, ss := range c.Sets {
		ss.AsOf = c.Made
		ss.countLags(now)
	}
	return g.showStatus(c.Sets, metrics, now, c.Made)
}
