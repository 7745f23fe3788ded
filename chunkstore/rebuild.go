package chunkstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/understudy/understudy/index"
)

// RebuildStats say what RebuildIndex found.
type RebuildStats struct {
	Packs     int `json:"packs"`
	Blobs     int `json:"blobs"`
	Snapshots int `json:"snapshots"`
	Skipped   int `json:"skipped"` // packs and snapshots left out, each reported
}

// KeepSnapshot decides whether a snapshot found in the packs goes into the
// rebuilt index. It gets the new index, which already holds every blob of
// every sound pack, and a loader over it; it returns an error saying why a
// snapshot must be left out (the closure rule: a tree or blob it needs is
// missing).
type KeepSnapshot func(idx *index.DB, load func(index.ID) ([]byte, error), id index.ID, record []byte) error

// RebuildIndex replaces the index with one built from the pack files alone.
// Every pack is read whole and must hash to its name and have a valid
// trailer; a pack that does not is reported and left out. Snapshot records
// found in the packs are indexed last, those that keep rejects reported and
// left out. The old index is kept as index.db.old. The repository must be
// open exclusively, with NoIndex when its index cannot be opened.
func (r *Repo) RebuildIndex(ctx context.Context, keep KeepSnapshot, report func(Problem)) (RebuildStats, error) {
	var st RebuildStats
	if r.lock.mode != Exclusive {
		return st, errors.New("rebuilding the index needs the repository open exclusively")
	}
	newPath := filepath.Join(r.dir, "index.db.rebuild")
	if err := os.Remove(newPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return st, err
	}
	idx, err := index.Open(newPath, index.Options{})
	if err != nil {
		return st, err
	}
	defer func() {
		if idx != nil {
			idx.Close()
			os.Remove(newPath)
		}
	}()

	type found struct {
		id  index.ID
		loc index.Location
	}
	var snaps []found
	err = r.forEachPackFile(func(id index.ID, name string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		entries, size, err := readPackFile(name, id)
		if err != nil {
			st.Skipped++
			report(Problem{Pack: id, Err: fmt.Errorf("left out of the index: %w", err)})
			return nil
		}
		p := index.Pack{ID: id, Type: index.DataBlob, Size: uint64(size), Count: uint32(len(entries))}
		blobs := make([]index.Blob, 0, len(entries))
		for _, e := range entries {
			if e.Type != index.DataBlob {
				p.Type = index.TreeBlob
			}
			blobs = append(blobs, index.Blob{ID: e.ID, Location: e.Location(id)})
			if e.Type == index.SnapshotBlob {
				snaps = append(snaps, found{e.ID, e.Location(id)})
			}
		}
		if err := idx.AddPack(p, blobs, nil); err != nil {
			return err
		}
		st.Packs++
		st.Blobs += len(blobs)
		return nil
	}, nil)
	if err != nil {
		return st, err
	}

	load := func(id index.ID) ([]byte, error) {
		loc, ok, err := idx.Lookup(id)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, &BlobError{ID: id, Err: errors.New("not in any sound pack")}
		}
		return r.LoadAt(id, loc, nil)
	}
	for _, s := range snaps {
		rec, err := r.LoadAt(s.id, s.loc, nil)
		if err == nil {
			err = keep(idx, load, s.id, rec)
		}
		if err != nil {
			st.Skipped++
			report(Problem{Pack: s.loc.Pack, Blob: s.id, Err: fmt.Errorf("snapshot left out of the index: %w", err)})
			continue
		}
		if err := idx.AddSnapshots([]index.Snapshot{{ID: s.id, Record: rec}}); err != nil {
			return st, err
		}
		st.Snapshots++
	}

	// The standby state (promotions) is in no pack: carry it over from the
	// old index when that can still be read.
	if err := r.carryStandbyState(idx); err != nil {
		report(Problem{Err: fmt.Errorf("the standby state (promoted sets) or the primary state could not be carried over from the old index: %w; promote those sets again", err)})
	}

	// Swap: the new index is complete and synced (bbolt syncs each commit).
	if err := idx.Close(); err != nil {
		return st, err
	}
	idx = nil
	cur := filepath.Join(r.dir, "index.db")
	if r.idx != nil {
		if err := r.idx.Close(); err != nil {
			return st, err
		}
		r.idx = nil
	}
	if err := os.Rename(cur, cur+".old"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return st, err
	}
	if err := os.Rename(newPath, cur); err != nil {
		return st, err
	}
	if err := syncDir(r.dir); err != nil {
		return st, err
	}
	r.idx, err = index.Open(cur, index.Options{})
	return st, err
}

// carryStandbyState copies every set's standby and primary state from the
// current index,
// open or (when it could not be opened) opened read-only here, into idx.
func (r *Repo) carryStandbyState(idx *index.DB) (err error) {
	// bbolt reads the old file through a memory mapping: a fault on a
	// damaged page becomes a panic of this goroutine, recovered below,
	// instead of killing the process.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		// A damaged bbolt file can make bbolt panic while reading.
		if p := recover(); p != nil {
			err = fmt.Errorf("reading the old index: %v", p)
		}
	}()
	old := r.idx
	if old == nil {
		path := filepath.Join(r.dir, "index.db")
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if old, err = index.Open(path, index.Options{ReadOnly: true, Timeout: time.Second}); err != nil {
			return err
		}
		defer old.Close()
	}
	states, err := old.StandbyStates()
	if err != nil {
		return err
	}
	for set, st := range states {
		if err := idx.UpdateStandby(set, func(s *index.StandbyState) error { *s = st; return nil }); err != nil {
			return err
		}
	}
	// What this host did as a primary (last runs, pushes) is only for
	// status, but losing it would show every standby as never pushed.
	primary, err := old.PrimaryStates()
	if err != nil {
		return err
	}
	for set, st := range primary {
		if err := idx.UpdatePrimary(set, func(s *index.PrimaryState) error { *s = st; return nil }); err != nil {
			return err
		}
	}
	return nil
}

// readPackFile reads a whole pack, checks that it hashes to id, and returns
// its trailer entries and size.
func readPackFile(name string, id index.ID) ([]PackEntry, int64, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	entries, err := ReadTrailer(f, fi.Size())
	if err != nil {
		return nil, 0, err
	}
	if err := verifyPackHash(f, fi.Size(), id); err != nil {
		return nil, 0, err
	}
	return entries, fi.Size(), nil
}

// verifyPackHash reads the pack f of the given size and checks that it hashes
// to its name id.
func verifyPackHash(f *os.File, size int64, id index.ID) error {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, size)); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if index.ID(h.Sum(nil)) != id {
		return errors.New("file content does not match its name (hash)")
	}
	return nil
}

// forEachPackFile calls fn for every file in packs/xx/ named by a pack ID,
// and unexpected (if not nil) with the path below packs/ of any other file in
// those directories.
func (r *Repo) forEachPackFile(fn func(id index.ID, name string) error, unexpected func(rel string)) error {
	root := filepath.Join(r.dir, "packs")
	dirs, err := os.ReadDir(root)
	if err != nil {
		return err
	}
	for _, d := range dirs {
		if !d.IsDir() || len(d.Name()) != 2 {
			continue
		}
		files, err := os.ReadDir(filepath.Join(root, d.Name()))
		if err != nil {
			return err
		}
		for _, f := range files {
			id, err := index.ParseID(f.Name())
			if err != nil || id.String()[:2] != d.Name() {
				if unexpected != nil {
					unexpected(d.Name() + "/" + f.Name())
				}
				continue
			}
			if err := fn(id, filepath.Join(root, d.Name(), f.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}
