package snapshot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/index"
	"github.com/understudy/understudy/snapshot/selection"
	"github.com/understudy/understudy/snapshot/tree"
)

// The change-detection cache (see the package doc) keeps one record per
// directory of the set's last snapshot, under the directory's path:
//
//	version   1 byte, cacheVersion
//	flags     1 byte: bit 0 complete (every name the directory had is an
//	          entry here or was outside the selection)
//	tree      32 bytes, the ID of the directory's tree blob
//	count     uvarint, the number of entries
//	entries   count times, sorted by name:
//	  key     the entry's stat at the last snapshot: uvarint inode, uvarint
//	          device, varint size, varint mtime seconds, uvarint mtime
//	          nanoseconds, varint ctime seconds, uvarint ctime nanoseconds,
//	          uvarint st_mode, uvarint uid, uvarint gid, 1 byte flags
//	  node    uvarint length, then the node as encoded in the tree blob
//	          (tree.AppendNode): metadata, xattrs, flags and content
//
// The index stamps every record with the attempt that wrote it and hands
// out only records of committed attempts (index.Cache).
const cacheVersion = 1

// cacheMeta is the cache state's meta: the record format, a digest of the
// host's user and group names, a digest of the selection, and the root the
// snapshot was taken of. A cache of another root is not used; with another
// selection, directory listings are not taken from it.
type cacheMeta struct {
	root      string
	owners    [32]byte
	selection [32]byte
}

func (m *cacheMeta) encode() []byte {
	b := append([]byte{cacheVersion}, m.owners[:]...)
	b = append(b, m.selection[:]...)
	return append(b, m.root...)
}

func parseCacheMeta(b []byte) (m cacheMeta, ok bool) {
	if len(b) < 1+64 || b[0] != cacheVersion {
		return m, false
	}
	copy(m.owners[:], b[1:])
	copy(m.selection[:], b[33:])
	m.root = string(b[65:])
	return m, true
}

// selectionDigest identifies a selection: listed paths, excludes and
// one-file-system.
func selectionDigest(sel *selection.Selection) [32]byte {
	h := sha256.New()
	for _, p := range sel.Paths() {
		h.Write(append([]byte(p), 0))
	}
	h.Write([]byte{1})
	for _, x := range sel.Excludes() {
		h.Write(append([]byte(x), 0))
	}
	if sel.OneFileSystem() {
		h.Write([]byte{1})
	}
	return [32]byte(h.Sum(nil))
}

// racyWindow: an entry whose ctime is this close to the snapshot's start (or
// later) is recorded as racy and never matches. A file changed again within
// the same timestamp tick after it was read would otherwise keep its ctime
// and mtime, and its old content would be reused. (A future mtime does not
// matter: any change moves the ctime to the present.)
const racyWindow = 2 // seconds

// statKey is what the cache compares with a fresh lstat.
type statKey struct {
	ino, dev             uint64
	size                 int64
	mtimeSec, ctimeSec   int64
	mtimeNsec, ctimeNsec uint32
	mode                 uint32 // st_mode, type included
	uid, gid             uint32
	racy                 bool
}

const keyRacy = 1 // flag bit

func keyOf(st *unix.Stat_t, cutoff int64) statKey {
	return statKey{
		ino: st.Ino, dev: uint64(st.Dev), size: st.Size,
		mtimeSec: st.Mtim.Sec, mtimeNsec: uint32(st.Mtim.Nsec), ctimeSec: st.Ctim.Sec, ctimeNsec: uint32(st.Ctim.Nsec),
		mode: st.Mode, uid: st.Uid, gid: st.Gid,
		racy: st.Ctim.Sec >= cutoff,
	}
}

// unchanged reports whether st is the same version of the entry as k: same
// inode, size, mtime, ctime, type, mode and owner. The device is not
// compared: some device numbers change at every boot.
func (k *statKey) unchanged(st *unix.Stat_t) bool {
	return !k.racy && k.ino == st.Ino && k.size == st.Size &&
		k.mtimeSec == st.Mtim.Sec && int64(k.mtimeNsec) == st.Mtim.Nsec &&
		k.ctimeSec == st.Ctim.Sec && int64(k.ctimeNsec) == st.Ctim.Nsec &&
		k.mode == st.Mode && k.uid == st.Uid && k.gid == st.Gid
}

// sameData reports whether st has the inode, size and mtime of k: with
// trust_mtime, its content is taken to be unchanged.
func (k *statKey) sameData(st *unix.Stat_t) bool {
	return !k.racy && k.ino == st.Ino && k.size == st.Size &&
		k.mtimeSec == st.Mtim.Sec && int64(k.mtimeNsec) == st.Mtim.Nsec &&
		k.mode&unix.S_IFMT == st.Mode&unix.S_IFMT
}

func appendKey(buf []byte, k *statKey) []byte {
	buf = binary.AppendUvarint(buf, k.ino)
	buf = binary.AppendUvarint(buf, k.dev)
	buf = binary.AppendVarint(buf, k.size)
	buf = binary.AppendVarint(buf, k.mtimeSec)
	buf = binary.AppendUvarint(buf, uint64(k.mtimeNsec))
	buf = binary.AppendVarint(buf, k.ctimeSec)
	buf = binary.AppendUvarint(buf, uint64(k.ctimeNsec))
	buf = binary.AppendUvarint(buf, uint64(k.mode))
	buf = binary.AppendUvarint(buf, uint64(k.uid))
	buf = binary.AppendUvarint(buf, uint64(k.gid))
	var flags byte
	if k.racy {
		flags |= keyRacy
	}
	return append(buf, flags)
}

// dirRecord is a decoded cache record. Node encodings alias the record.
type dirRecord struct {
	tree     index.ID
	complete bool
	entries  []cacheEntry
}

const recordComplete = 1 // flag bit

// names returns the entries' names, in order.
func (r *dirRecord) names() []string {
	names := make([]string, len(r.entries))
	for i := range r.entries {
		names[i] = r.entries[i].name
	}
	return names
}

type cacheEntry struct {
	name string
	key  statKey
	node []byte
}

// errBadRecord is wrapped by cache record decoding errors.
var errBadRecord = errors.New("corrupt change-cache record")

// decodeRecord parses a cache record. It distrusts its input like every
// decoder: a damaged index must not make a snapshot wrong, only slower.
//
// The names alias data, which the caller must not change.
func decodeRecord(data []byte) (*dirRecord, error) {
	fail := func(what string) (*dirRecord, error) { return nil, fmt.Errorf("%w: %s", errBadRecord, what) }
	if len(data) < 2+index.IDSize || data[0] != cacheVersion || data[1]&^recordComplete != 0 {
		return fail("bad version or flags, or truncated")
	}
	r := &dirRecord{complete: data[1]&recordComplete != 0}
	copy(r.tree[:], data[2:])
	data = data[2+index.IDSize:]
	count, n := binary.Uvarint(data)
	// An entry is at least 11 key bytes, a length byte and a node of 12.
	if n <= 0 || count > uint64(len(data))/24 {
		return fail("bad entry count")
	}
	data = data[n:]
	r.entries = make([]cacheEntry, 0, count)
	for i := uint64(0); i < count; i++ {
		var e cacheEntry
		var ok bool
		if data, ok = readKey(data, &e.key); !ok {
			return fail("bad stat key")
		}
		l, n := binary.Uvarint(data)
		if n <= 0 || l > uint64(len(data)-n) {
			return fail("bad node length")
		}
		e.node = data[n : n+int(l) : n+int(l)]
		data = data[n+int(l):]
		name, ok := nodeName(e.node)
		if !ok {
			return fail("bad node name")
		}
		e.name = name
		if err := tree.CheckName(e.name); err != nil {
			return fail(err.Error())
		}
		if i > 0 && r.entries[i-1].name >= e.name {
			return fail("entries out of order")
		}
		r.entries = append(r.entries, e)
	}
	if len(data) != 0 {
		return fail("trailing bytes")
	}
	return r, nil
}

// nodeName returns the name an encoded node starts with, aliasing it.
func nodeName(node []byte) (string, bool) {
	l, n := binary.Uvarint(node)
	if n <= 0 || l == 0 || l > tree.MaxNameLen || l > uint64(len(node)-n) {
		return "", false
	}
	return unsafe.String(&node[n], int(l)), true
}

func readKey(data []byte, k *statKey) ([]byte, bool) {
	ok := true
	u := func(max uint64) uint64 {
		v, n := binary.Uvarint(data)
		if n <= 0 || v > max {
			ok = false
			return 0
		}
		data = data[n:]
		return v
	}
	s := func() int64 {
		v, n := binary.Varint(data)
		if n <= 0 {
			ok = false
			return 0
		}
		data = data[n:]
		return v
	}
	k.ino = u(math.MaxUint64)
	k.dev = u(math.MaxUint64)
	k.size = s()
	k.mtimeSec = s()
	k.mtimeNsec = uint32(u(1e9 - 1))
	k.ctimeSec = s()
	k.ctimeNsec = uint32(u(1e9 - 1))
	k.mode = uint32(u(math.MaxUint32))
	k.uid = uint32(u(math.MaxUint32))
	k.gid = uint32(u(math.MaxUint32))
	if !ok || len(data) == 0 || data[0]&^keyRacy != 0 {
		return nil, false
	}
	k.racy = data[0]&keyRacy != 0
	return data[1:], true
}

// find returns the entry named name at or after *pos, moving *pos past the
// entries before it: the walker asks in name order.
func (r *dirRecord) find(name string, pos *int) *cacheEntry {
	if r == nil {
		return nil
	}
	for *pos < len(r.entries) && r.entries[*pos].name < name {
		*pos++
	}
	if *pos < len(r.entries) && r.entries[*pos].name == name {
		return &r.entries[*pos]
	}
	return nil
}

// recordBuilder encodes a new record.
type recordBuilder struct{ buf []byte }

func newRecord(id index.ID, count int, complete bool) *recordBuilder {
	b := &recordBuilder{buf: make([]byte, 0, 64+count*128)}
	var flags byte
	if complete {
		flags |= recordComplete
	}
	b.buf = append(b.buf, cacheVersion, flags)
	b.buf = append(b.buf, id[:]...)
	b.buf = binary.AppendUvarint(b.buf, uint64(count))
	return b
}

func (b *recordBuilder) add(k *statKey, node []byte) {
	b.buf = appendKey(b.buf, k)
	b.buf = binary.AppendUvarint(b.buf, uint64(len(node)))
	b.buf = append(b.buf, node...)
}

// Cache writes are batched: one transaction per cacheBatch bytes of records.
const cacheBatch = 1 << 20

// cacheWriter stores new records in batches while the snapshot runs.
func cacheWriter(ctx context.Context, c *index.Cache, recs <-chan index.CacheRecord) error {
	var batch []index.CacheRecord
	size := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := c.Put(batch)
		batch, size = batch[:0], 0
		if err != nil {
			return fmt.Errorf("write change cache: %w", err)
		}
		return nil
	}
	for r := range recs {
		batch = append(batch, r)
		size += len(r.Key) + len(r.Value)
		if size >= cacheBatch {
			if err := flush(); err != nil {
				for range recs {
				}
				return err
			}
		}
		if ctx.Err() != nil {
			for range recs {
			}
			return ctx.Err()
		}
	}
	return flush()
}

// sameOwners reports whether the owner names an encoded node carries are
// still the names of its uid and gid.
func (w *walker) sameOwners(node []byte) bool {
	h, err := tree.PeekNode(node)
	return err == nil && string(h.User) == w.owners.User(h.UID) && string(h.Group) == w.owners.Group(h.GID)
}

// reuseNode decodes a cached node into n, keeping n's name.
func reuseNode(n *tree.Node, enc []byte) error {
	d, err := tree.DecodeNode(enc)
	if err != nil {
		return err
	}
	if d.Name != n.Name {
		return fmt.Errorf("%w: node %q under name %q", errBadRecord, d.Name, n.Name)
	}
	*n = d
	return nil
}

// equalNode reports whether n encodes to enc; it returns n's encoding.
func equalNode(n *tree.Node, enc []byte) ([]byte, bool, error) {
	mine, err := tree.AppendNode(nil, n)
	if err != nil {
		return nil, false, err
	}
	return mine, enc != nil && bytes.Equal(mine, enc), nil
}
