package testtree

import "time"

// Entry is one entry of a Dir: a File, Symlink, Hardlink, Dev, FIFO, Socket,
// Dir or Directory.
type Entry interface{ isEntry() }

// Dir is a directory with default metadata (mode 0755, root:root,
// DefaultMtime), by entry name. Names are single path components and may
// hold any byte but '/' and NUL.
type Dir map[string]Entry

// Directory is a directory with metadata. Flags are set after its mtime,
// which is set after all its entries exist.
type Directory struct {
	Entries Dir
	Mode    uint32 // permission, setuid, setgid, sticky; 0 means 0755, NoPerm means 0000
	UID     uint32
	GID     uint32
	Mtime   time.Time // zero means DefaultMtime
	Xattrs  map[string][]byte
	Flags   uint32 // FS_*_FL inode flags
}

// File is a regular file: Content at offset 0, then each of Sparse written at
// its offset with holes between, then extended with a hole up to Size if Size
// is larger. Flags are set last, after hard links to the file are made.
type File struct {
	Content []byte
	Sparse  []At
	Size    int64
	Mode    uint32 // 0 means 0644, NoPerm means 0000
	UID     uint32
	GID     uint32
	Mtime   time.Time // zero means DefaultMtime
	Xattrs  map[string][]byte
	Flags   uint32 // FS_*_FL inode flags
}

// At is data at an offset of a sparse File.
type At struct {
	Offset int64
	Data   []byte
}

// Symlink is a symbolic link. Its mode is always 0777 on Linux.
type Symlink struct {
	Target string
	UID    uint32
	GID    uint32
	Mtime  time.Time // zero means DefaultMtime
	Xattrs map[string][]byte
}

// Hardlink is another name for the non-directory at To, a slash-separated
// path relative to the root of the build. It shares To's metadata.
type Hardlink struct {
	To string
}

// Dev is a block (Block) or character device node.
type Dev struct {
	Block        bool
	Major, Minor uint32
	Mode         uint32 // 0 means 0644, NoPerm means 0000
	UID          uint32
	GID          uint32
	Mtime        time.Time // zero means DefaultMtime
	Xattrs       map[string][]byte
}

// FIFO is a named pipe.
type FIFO struct {
	Mode   uint32 // 0 means 0644, NoPerm means 0000
	UID    uint32
	GID    uint32
	Mtime  time.Time // zero means DefaultMtime
	Xattrs map[string][]byte
}

// Socket is a unix domain socket node, bound by a real socket that is then
// closed.
type Socket struct {
	Mode   uint32 // 0 means 0644, NoPerm means 0000
	UID    uint32
	GID    uint32
	Mtime  time.Time // zero means DefaultMtime
	Xattrs map[string][]byte
}

func (Dir) isEntry()       {}
func (Directory) isEntry() {}
func (File) isEntry()      {}
func (Symlink) isEntry()   {}
func (Hardlink) isEntry()  {}
func (Dev) isEntry()       {}
func (FIFO) isEntry()      {}
func (Socket) isEntry()    {}

// NoPerm is the Mode value for permission bits 0000 (a zero Mode means the
// default). It is outside the 07777 of a real mode.
const NoPerm = 0o100000

// DefaultMtime is the mtime of entries that do not set one, and of the root
// of a build, so that two builds of the same Dir are identical.
var DefaultMtime = time.Unix(1600000000, 111111111)

// meta is the metadata common to all entry types, defaults resolved.
type meta struct {
	mode    uint32
	chmod   bool // false for symlinks
	uid     uint32
	gid     uint32
	mtime   time.Time
	xattrs  map[string][]byte
	flags   uint32
	setTime bool // false for hard links: they share their target's
}

func resolve(mode, def uint32, uid, gid uint32, mtime time.Time, xattrs map[string][]byte, flags uint32) meta {
	switch {
	case mode == 0:
		mode = def
	case mode&NoPerm != 0:
		mode = 0
	}
	if mtime.IsZero() {
		mtime = DefaultMtime
	}
	return meta{mode: mode & 0o7777, chmod: true, uid: uid, gid: gid, mtime: mtime, xattrs: xattrs, flags: flags, setTime: true}
}

// metaOf returns the metadata of e.
func metaOf(e Entry) meta {
	switch e := e.(type) {
	case Dir:
		return resolve(0, 0o755, 0, 0, time.Time{}, nil, 0)
	case Directory:
		return resolve(e.Mode, 0o755, e.UID, e.GID, e.Mtime, e.Xattrs, e.Flags)
	case File:
		return resolve(e.Mode, 0o644, e.UID, e.GID, e.Mtime, e.Xattrs, e.Flags)
	case Symlink:
		m := resolve(0, 0o777, e.UID, e.GID, e.Mtime, e.Xattrs, 0)
		m.chmod = false
		return m
	case Dev:
		return resolve(e.Mode, 0o644, e.UID, e.GID, e.Mtime, e.Xattrs, 0)
	case FIFO:
		return resolve(e.Mode, 0o644, e.UID, e.GID, e.Mtime, e.Xattrs, 0)
	case Socket:
		return resolve(e.Mode, 0o644, e.UID, e.GID, e.Mtime, e.Xattrs, 0)
	}
	return meta{} // Hardlink
}

// entriesOf returns the entries of a directory entry, and false for other
// types.
func entriesOf(e Entry) (Dir, bool) {
	switch e := e.(type) {
	case Dir:
		return e, true
	case Directory:
		return e.Entries, true
	}
	return nil, false
}
