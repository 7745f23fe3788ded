// Command manysnaps fills a repository with snapshots quickly, for
// bench/status.sh: taking 10,000 snapshots with the CLI costs a process
// start and several fsyncs each, most of an hour on a small machine.
//
//	manysnaps -repo R -n N [-every D]
//
// R must hold at least one snapshot of each set to fill (taken with
// `understudy snapshot`). The latest of each set is the template: manysnaps
// adds, shared among the sets until R holds N snapshots, a chain of copies
// of it before the set's oldest snapshot, one every D (default 1h), each
// the parent of the next. Every copy is a valid record of the same root tree, stored as
// `snapshot` stores a record: the last blob of a tree pack of its own,
// indexed with that pack in one transaction (Uploader.Flush), so the
// repository afterwards has the packs and index entries a repository with
// N real snapshots of an unchanging tree has.
package main

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/snapshot"
)

func main() {
	repoDir := flag.String("repo", "", "the repository `DIR`")
	n := flag.Int("n", 10000, "the number of snapshots the repository holds afterwards")
	every := flag.Duration("every", time.Hour, "time between two snapshots of a set")
	flag.Parse()
	if *repoDir == "" || flag.NArg() != 0 || *n < 1 || *every <= 0 {
		fmt.Fprintln(os.Stderr, "usage: manysnaps -repo DIR -n N [-every D]")
		os.Exit(2)
	}
	added, err := fill(context.Background(), *repoDir, *n, *every)
	if err != nil {
		fmt.Fprintf(os.Stderr, "manysnaps: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("manysnaps: added %d snapshots to %s, which holds %d\n", added, *repoDir, *n)
}

func fill(ctx context.Context, dir string, n int, every time.Duration) (int, error) {
	repo, err := chunkstore.Open(dir, chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: "manysnaps"})
	if err != nil {
		return 0, err
	}
	defer repo.Close()
	snaps, bad, err := snapshot.List(repo.Index(), "")
	if err != nil {
		return 0, err
	}
	if len(bad) > 0 {
		return 0, fmt.Errorf("%d records do not decode, the first: %w", len(bad), bad[0])
	}
	first := map[string]snapshot.Listed{} // per set, its oldest and latest
	latest := map[string]snapshot.Listed{}
	for _, s := range snaps { // oldest first
		if _, ok := first[s.Set]; !ok {
			first[s.Set] = s
		}
		latest[s.Set] = s
	}
	if len(latest) == 0 {
		return 0, fmt.Errorf("%s holds no snapshot to copy; take one per set first", dir)
	}
	sets := slices.Sorted(maps.Keys(latest))
	up := repo.NewUploader()
	defer up.Close()
	added := 0
	for i, set := range sets {
		// The sets share what is missing, the first ones one more.
		count := (n - len(snaps)) / len(sets)
		if i < (n-len(snaps))%len(sets) {
			count++
		}
		// A chain of count records of the set, one every D, the newest
		// D before the set's oldest, each the parent of the next.
		rec := *latest[set].Record
		rec.Parent = nil
		start := first[set].Time.Add(-time.Duration(count) * every)
		for j := range count {
			rec.Time = start.Add(time.Duration(j) * every)
			data, err := rec.Encode()
			if err != nil {
				return added, err
			}
			id, err := up.Flush(data)
			if err != nil {
				return added, err
			}
			rec.Parent = &id
			added++
			if added%1000 == 0 {
				fmt.Fprintf(os.Stderr, "manysnaps: %d added\n", added)
			}
			if ctx.Err() != nil {
				return added, ctx.Err()
			}
		}
	}
	return added, nil
}
