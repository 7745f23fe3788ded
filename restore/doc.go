// Package restore materialises a snapshot into a directory.
//
// Every write is relative to a directory file descriptor that was opened
// with O_NOFOLLOW, starting from the target: a symlink that exists in the
// target, or is planted there during the restore, is never followed, so
// nothing is ever written outside the target. Names come from tree blobs,
// whose decoder already rejects "", ".", "..", '/' and NUL; link paths
// between hard links are resolved within the snapshot, never in the target.
//
// The algorithm:
//
//	walk the snapshot's trees depth-first (one goroutine):
//	    for each entry in scope (and under --path):
//	        directory: reuse an existing directory, else replace what is
//	                   there; open it O_NOFOLLOW; recurse
//	        hard link to an entry restored in this run: linkat
//	        file: replace what is there by a new file; queue its content
//	        symlink, device, FIFO, socket: replace and create
//	    with --delete: remove target entries the snapshot lacks, inside the
//	    snapshot's scope only, never across a filesystem boundary
//	    queue the directory for its metadata
//	writers (several): load, verify and write each file's data extents at
//	    their offsets (holes stay holes), truncate to size, then metadata:
//	    owner, mode, xattrs, mtime, flags
//	finisher (one): directories in post-order, once their files are
//	    written: owner, mode, xattrs, mtime, flags
//
// Apply (apply.go, apply_write.go) makes a live tree equal to a snapshot
// in place: it skips the subtrees the snapshot shares with the snapshots
// the tree is made of (Refs), compares the rest entry by entry, writes
// changed files to a temporary file that is synced to disk (a syncfs per
// batch of files) and renamed over the old one (reusing the old file's chunks when their hashes match), makes
// hard links once every file is in place and gives directories their
// metadata last. Standby (standby.go) wraps it with the state kept in the
// index (applied, applying), the mass-change guard and its sanity checks
// (sanity.go), hold, delay and rollback. docs/design.md has the argument.
//
// Verify walks a snapshot's trees and a live tree side by side, read only,
// and reports every difference inside the snapshot's scope: content is
// checked by hashing each data extent of the live file against its blob ID
// (no blob is loaded), holes by reading the file's data regions for zeros.
package restore
