// Package snapshot takes a point-in-time snapshot of a filesystem tree:
// walk and select (package selection) → read → chunk → hash → compress →
// store (package chunkstore), recording one tree blob per directory (package
// tree) and finally a snapshot record.
//
// The pipeline, with the bound on what each stage holds:
//
//	listers (GOMAXPROCS)   getdents, lstat of every entry and the cache
//	                       record of directories the walker will
//	                       enter next, in its order                ≤ maxPrefetch directories
//	walker (1 goroutine)   depth-first, names in byte order, through
//	                       directory file descriptors; compares each
//	                       entry with the cache, reads metadata, opens
//	                       changed regular files and queues them   ≤ fileQueue files
//	readers (Readers)      SEEK_DATA/SEEK_HOLE, content-defined chunks,
//	                       SHA-256; known chunks are only referenced ≤ 1 chunk buffer each
//	savers (GOMAXPROCS)    compress and append new chunks to the
//	                       open data pack (chunkstore.Uploader)    ≤ saveQueue chunks
//	finisher (1)           directories in post-order: waits for its
//	                       files, encodes and saves the tree blob
//	                       (or keeps the cached one), queues the
//	                       directory's cache record                ≤ dirQueue directories
//	cache writer (1)       stores cache records in batches         ≤ cacheBatch bytes
//
// Memory is therefore bounded by the queues, the chunk size and the widest
// directory on the walker's stack, not by the size of the tree.
//
// Change detection (docs/design.md has the format and the crash-safety
// argument): index.db keeps, per set, one record per directory of the last
// snapshot with each entry's stat and node. An entry whose inode, size,
// mtime and ctime are as recorded is reused without being opened; a
// directory whose entries are all as recorded keeps its tree ID.
//
// Hard links: the first path of an inode with several links, in the walk's
// order, is stored as a file; every later path stores LinkTo, the first
// path relative to its own directory ("../bin/a"). Because the order is
// fixed by the names, the same tree always gives the same LinkTo values.
package snapshot
