package restore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/restore"
	"github.com/understudy/understudy/snapshot"
	"github.com/understudy/understudy/snapshot/testtree"
)

// failingLoader refuses one blob, closing failed as it does.
type failingLoader struct {
	snapshot.BlobLoader
	bad    index.ID
	once   sync.Once
	failed chan struct{}
}

var errRotten = errors.New("blob rotted away")

func (l *failingLoader) LoadBlob(id index.ID, buf []byte) ([]byte, error) {
	if id == l.bad {
		l.once.Do(func() { close(l.failed) })
		return nil, errRotten
	}
	return l.BlobLoader.LoadBlob(id, buf)
}

// A file whose content cannot be written stops the whole apply: the walker
// creates nothing after the writer has failed, and the error returned is
// the writer's, not a bare "context canceled".
func TestApplyStopsAtAWritersFatalError(t *testing.T) {
	testtree.NeedRoot(t)
	base := t.TempDir()
	r := openRepo(t)
	root := filepath.Join(base, "root")
	const later = 200
	must(t, os.MkdirAll(filepath.Join(root, "srv"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "srv/a"), []byte("the file whose blob is lost\n"), 0o644))
	for i := range later {
		must(t, os.Symlink(fmt.Sprint("target-", i), filepath.Join(root, fmt.Sprintf("srv/b%03d", i))))
	}
	snap := listed(t, r, takeAt(t, r, root, nil, "/srv"))
	n, _, err := snapshot.Resolve(r, snap.Record.Root, "/srv/a")
	must(t, err)
	if len(n.Content) != 1 {
		t.Fatalf("/srv/a has %d extents, want 1", len(n.Content))
	}

	loader := &failingLoader{BlobLoader: r, bad: n.Content[0].Blob, failed: make(chan struct{})}
	target := filepath.Join(base, "target")
	must(t, os.Mkdir(target, 0o755))
	var waited sync.Once
	_, err = restore.Apply(context.Background(), loader, snap.Record, restore.ApplyOptions{
		Target: target,
		Itemize: func(op byte, p string) {
			// Hold the walker at the first entry after /srv/a until
			// the writer has met the lost blob, so that what follows
			// does not depend on which goroutine runs first.
			if strings.HasPrefix(p, "/srv/b") {
				waited.Do(func() {
					<-loader.failed
					time.Sleep(200 * time.Millisecond)
				})
			}
		},
		Warn: func(p string, err error) { t.Errorf("warning: %s: %v", p, err) },
	})
	if !errors.Is(err, errRotten) {
		t.Fatalf("apply returned %v, want the lost blob's error", err)
	}
	entries, err := os.ReadDir(filepath.Join(target, "srv"))
	must(t, err)
	var made []string
	for _, e := range entries {
		made = append(made, e.Name())
	}
	// The walker may finish the entry it was held at, and the one after
	// if it was already past the check; not the other 198.
	if len(made) > 2 {
		t.Errorf("the walk went on after the writer failed: %d entries in %s/srv: %s", len(made), target, strings.Join(made[:min(len(made), 10)], " "))
	}
}
