// Package selection decides which paths of a filesystem tree a snapshot
// takes, and therefore what a set's scope is for apply, restore and delete.
//
// # Terms
//
// Path: an absolute path inside the tree being snapshotted, whose root is
// "/". The walker may map that root onto any directory (a test tree under
// /tmp, a mounted image); this package only ever sees "/"-rooted paths. A
// path is a Go string of arbitrary bytes: non-UTF-8 names and names with
// newlines are fine, only NUL is impossible. Clean form: no empty, "." or
// trailing components ("/etc//./init.d/" is "/etc/init.d").
//
// Relative path: the path without its leading "/" ("etc/init.d"). Patterns
// are matched against it, as rsync matches against names relative to the
// root of the transfer.
//
// Listed path: one of the set's paths. A trailing "/" only says that the
// path is meant to be a directory; it is cleaned away. ".." is refused.
//
// Ancestor: a directory that is a strict ancestor of a listed path but is
// not itself in scope. It is created if missing and never modified, and the
// walker visits only its needed children (see [Selection.Needed]).
//
// Pattern: an exclude rule in the syntax of rsync's --exclude:
//
//   - "- " at the start is the rsync exclude prefix and is dropped; "+ "
//     (an include rule) and "!" (clear the list) are refused.
//   - One leading "/" anchors the pattern at the root: it must match the
//     whole relative path. One trailing "/" makes it match directories only.
//     Both are stripped before matching; what is left is the body, which
//     must not be empty.
//   - A body with none of "*", "?", "[" is a literal, compared byte for
//     byte ("\" is then an ordinary character).
//   - Otherwise it is a wildcard body: "*" matches any run of bytes except
//     "/"; "**" (or more stars) matches any run including "/"; "?" matches
//     one byte except "/"; "[...]" is a class of bytes with ranges ("a-z"),
//     named classes ("[:digit:]"), "!" or "^" negation and "]" allowed
//     first; a class never matches "/". "\" makes the next byte literal.
//     An unterminated class, an unknown named class or a trailing lone "\"
//     is an error.
//   - A body ending in "/***" matches its directory part when that is a
//     directory, and everything below it ("dir/***" is "dir/" plus
//     "dir/**"): as in rsync, a body ending in "***" is matched, for a
//     directory, against its path with a "/" appended.
//
// Which part of the relative path a body must match:
//
//	anchored                         the whole relative path
//	starts with "**"                 the whole relative path with a "/"
//	                                 in front (as rsync does)
//	contains "**" elsewhere          the whole path, or any suffix that
//	                                 starts right after a "/"
//	no "/" (and no "**")             the final component only
//	N inner "/" (and no "**")        the last N+1 components (nothing
//	                                 if the path has fewer; a "/" in a
//	                                 class counts, as in rsync)
//
// Thus "core" matches "/core" and "/var/tmp/core"; "/core" only "/core";
// "tmp/*.log" matches "/var/tmp/x.log"; "cache/**" matches every path below
// any directory named cache; "**/cache" every cache, the one at the root
// too (it is matched as "/cache"), while the anchored "/**/cache" matches
// every cache except the one at the root, whose relative path "cache" has
// no "/".
//
// # Classes
//
//	Outside   not taken
//	Ancestor  only an ancestor of listed paths: created, never modified;
//	          only its needed children are visited
//	InScope   taken with all its metadata; a directory's children are all
//	          candidates
//
// # The algorithm
//
// The walker starts at "/" with class Root() and classifies every entry it
// meets from its parent's class:
//
//	walk(dir, class):
//	    if class == Ancestor: names = Needed(dir)     // lstat just those
//	    else:                 names = readdir(dir)
//	    for name in names:
//	        p = dir + "/" + name
//	        c = Child(class, p, isDir(p))
//	        if c == Outside: continue                 // nothing below either
//	        take p (an Ancestor is created, never modified)
//	        if isDir(p): walk(p, c)
//
//	Child(parent, p, isDir):
//	    if p is listed:                               return InScope
//	    if parent == InScope and not Excluded(p, isDir): return InScope
//	    if isDir and p is a strict ancestor of a listed path: return Ancestor
//	    return Outside
//
//	Excluded(p, isDir):
//	    if p == "/": return false
//	    rel = p without its leading "/"
//	    for each pattern:
//	        if pattern is directory-only and not isDir: next
//	        s = rel
//	        if pattern is unanchored and body starts with "**": s = "/" + s
//	        if isDir and body ends in "***": s = s + "/"
//	        for t in the parts of s the table above names:
//	            if body matches t: return true
//	    return false
//
//	match(body, s):                                  // wildcard bodies
//	    walk body and s together; "?" and classes take one byte (never "/");
//	    "*" tries every length up to the next "/", "**" every length;
//	    a failed "*" that reached a "/" cannot be rescued by an earlier "*",
//	    and one that reached the end of s cannot be rescued at all, which
//	    keeps backtracking polynomial.
//
// So once a directory is excluded nothing below it is taken, because the
// walk does not descend into it, except listed paths: a listed path and
// everything under it (subject to the patterns, evaluated on each entry) is
// always taken even below an excluded directory, and a listed path itself
// is never excluded. Its excluded ancestors become Ancestor directories.
//
// # One file system
//
// The one_file_system flag is carried here and enforced by the walker, which
// compares st_dev: as with rsync -x, a mount point met inside an InScope
// directory is taken (its own entry, with its metadata) but not descended
// into. A listed path is always descended into, whatever device it is on.
//
// # Compared with rsync
//
// The classic script runs rsync once per listed path with all the excludes.
// For the whole tree ("/") this package selects what rsync lists, and the
// tests check that against /usr/bin/rsync. Two differences are deliberate:
// rsync anchors patterns at each run's own transfer root (so "/dev/" would
// also drop /etc/init.d/dev in the run for "/etc/init.d/"), while here every
// pattern is anchored at "/" whatever listed path an entry is under; and
// rsync drops a listed file whose own name matches a pattern, while here a
// listed path is never excluded.
package selection
