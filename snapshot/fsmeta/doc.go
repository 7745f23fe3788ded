// Package fsmeta reads and writes the restorable metadata of one inode: type,
// owner, mode, modification time, device number, symlink target, extended
// attributes (which carry POSIX ACLs, file capabilities and SELinux labels)
// and the inode flags of chattr(1). It also finds the data ranges of sparse
// files.
//
// Every call names its entry as a directory file descriptor plus one path
// component, and never follows a symlink in that component: fstatat,
// fchownat and utimensat get AT_SYMLINK_NOFOLLOW, opens get O_NOFOLLOW, and
// calls that only exist for paths (the l*xattr family, chmod) go through
// /proc/self/fd/<dirfd>/<name> (the kernel resolves the directory from the
// descriptor, and the l* calls do not follow the final name) or through an
// O_PATH descriptor of the entry. So a symlink planted in the tree can never
// redirect a read or a write, and paths longer than PATH_MAX work. /proc must
// be mounted. Where the caller holds a descriptor of a regular file or
// directory (the file just written, an entry opened and checked by inode),
// owner, mode, times, xattrs and flags are all set through it (fchown,
// fchmod, futimens, f*xattr, the flags ioctl), so a name swapped for a hard
// link to another file after the open changes nothing of that file.
//
// The xattr calls are golang.org/x/sys/unix's, not github.com/pkg/xattr's:
// that library takes paths or *os.File, and wrapping the raw descriptors
// that openat gives us in an *os.File attaches a finalizer that closes them;
// what it would add (growing the buffer on ERANGE) is a few lines here.
//
// Only regular files and directories are ever opened (for inode flags and
// xattrs): opening a device or a FIFO can have side effects (a tape rewinds,
// a FIFO blocks). To open an entry that the caller has not opened, fsmeta
// takes an O_PATH descriptor, checks with fstat that it is still the regular
// file or directory that was listed, and reopens that very inode through
// /proc/self/fd.
//
// # Order of metadata writes
//
// Restore creates an entry, writes its content, and then calls Apply, which
// sets the metadata in this order:
//
//	clear immutable/append-only  they forbid every change below
//	owner                        chown clears setuid/setgid of non-directories
//	                             and drops security.capability
//	mode                         after chown, so setuid/setgid survive; chmod
//	                             touches no xattr
//	xattrs                       after chown, so security.capability survives;
//	                             after chmod, because writing
//	                             system.posix_acl_access rewrites the group
//	                             bits from the ACL mask (the recorded ACL and
//	                             mode agree, so the result is the recorded mode)
//	mtime                        after every change that moves it; owner, mode,
//	                             xattrs and flags only move ctime
//	flags                        last: immutable and append-only forbid all of
//	                             the above
//
// Writing content also clears setuid/setgid and security.capability, which is
// why content comes first. A directory's metadata is applied after all its
// entries exist, since creating an entry moves the directory's mtime and an
// immutable directory accepts no new entries; hard links must be made before
// their target is made immutable or append-only.
//
// # Errors that name a filesystem
//
// MountOf finds the mount point and type of the filesystem holding a path
// (from /proc/self/mountinfo), and NoSpace turns an ENOSPC into a
// NoSpaceError that names it, so that a full disk says which one is full;
// ErrChanged marks a file that changed while it was being read.
package fsmeta
