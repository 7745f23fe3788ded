// Package index is the repository's bbolt database, index.db: where each blob
// lives, which packs exist, and the snapshot records. Everything in it can be
// rebuilt from the pack files alone (chunkstore.RebuildIndex); it exists so
// that no operation has to read the packs to find a blob.
//
// Terms:
//
//   - ID: the SHA-256 of a blob's uncompressed bytes, of a pack file's bytes,
//     or of a snapshot record.
//   - Location: the pack holding a blob, its offset and stored length there,
//     its uncompressed length, type and compression.
//
// Buckets (byte layouts in docs/design.md):
//
//	meta       "format" -> uint32 big endian, the index format version
//	blobs      blob ID (32 bytes) -> Location (46 bytes)
//	packs      pack ID (32 bytes) -> type (1) size (8) blob count (4)
//	snapshots  snapshot ID (32 bytes) -> the snapshot record, as stored in its pack
//	cache      the change-detection cache (cache.go)
//	standby    set name -> StandbyState, JSON: what this host applies as a standby
//	primary    set name -> PrimaryState, JSON: this host's last runs and pushes
//
// Write discipline: one write transaction per sealed pack (AddPack), committed
// only after the pack file is fsynced and renamed into place. A snapshot record
// is added in the same transaction as the pack that holds it, which is the
// last pack of the snapshot, so a snapshot is visible only once everything it
// references is indexed (the closure rule).
package index
