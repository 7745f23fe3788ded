// Package chunkstore is the repository on disk: its config, its lock, and the
// pack files that hold compressed, content-addressed blobs. It writes packs,
// reads and verifies blobs, and keeps the index (package index) in step with
// the packs.
//
// Terms:
//
//   - Repository: a directory holding config, packs/ and index.db.
//   - Blob: a data chunk, a tree or a snapshot record; its ID is the SHA-256 of
//     its uncompressed bytes. Each blob is compressed with zstd on its own, or
//     stored raw when compression does not pay.
//   - Pack: an immutable file of blobs followed by a trailer that lists them,
//     named by the SHA-256 of its bytes. Data blobs and tree blobs (with
//     snapshot records) go to separate packs, so that walking trees reads
//     little.
//
// Writing (Uploader), in the order that keeps the repository valid at every
// instant:
//
//	claim blob ID (skip if indexed or already pending)
//	compress, append to the open pack of its kind (a temporary file)
//	when a pack reaches PackSize or PackMaxBlobs: seal it in the background:
//	    write trailer, fsync, rename to packs/xx/<id>, fsync the directory,
//	    then commit its blob locations to the index in one transaction
//	before a tree pack is sealed, the open data pack is sealed first; seals
//	commit in order, so a tree is indexed only after the blobs it names.
//	Flush (end of snapshot) seals the data pack, then the tree pack holding
//	the snapshot record, whose transaction also records the snapshot.
//
// A crash at any point leaves at worst a temporary file (removed at the next
// exclusive open) or a sealed pack that is not indexed (reported by check,
// reused by repair, removed by prune).
package chunkstore
