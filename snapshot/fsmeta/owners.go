package fsmeta

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Owners maps numeric user and group IDs to names, from the running host's
// /etc/passwd and /etc/group, read once on first use. Only those local files
// are consulted (no NSS, so no LDAP): a name is informational, restore works
// with the numeric IDs. An unknown ID has the name "". Owners is safe for
// concurrent use; a nil *Owners knows no names.
type Owners struct {
	passwdPath, groupPath string

	once   sync.Once
	users  map[uint32]string
	groups map[uint32]string
}

// NewOwners returns an Owners for the running host.
func NewOwners() *Owners {
	return &Owners{passwdPath: "/etc/passwd", groupPath: "/etc/group"}
}

func (o *Owners) load() {
	o.once.Do(func() {
		o.users = parseIDFile(o.passwdPath)
		o.groups = parseIDFile(o.groupPath)
	})
}

// User returns the name of uid, or "".
func (o *Owners) User(uid uint32) string {
	if o == nil {
		return ""
	}
	o.load()
	return o.users[uid]
}

// Group returns the name of gid, or "".
func (o *Owners) Group(gid uint32) string {
	if o == nil {
		return ""
	}
	o.load()
	return o.groups[gid]
}

// Digest is a hash of every ID-to-name mapping Owners knows: equal digests
// mean that every ID has the same name.
func (o *Owners) Digest() [32]byte {
	h := sha256.New()
	if o != nil {
		o.load()
		for _, m := range []map[uint32]string{o.users, o.groups} {
			ids := slices.Sorted(maps.Keys(m))
			for _, id := range ids {
				fmt.Fprintf(h, "%d:%s\n", id, m[id])
			}
			h.Write([]byte{0})
		}
	}
	return [32]byte(h.Sum(nil))
}

// parseIDFile reads a passwd(5) or group(5) file: name:password:id:...
// The first name listed for an ID wins, as getpwuid(3) does. A missing or
// unreadable file gives no names.
func parseIDFile(path string) map[uint32]string {
	names := make(map[uint32]string)
	f, err := os.Open(path)
	if err != nil {
		return names
	}
	defer f.Close()
	parseIDs(f, names)
	return names
}

func parseIDs(r io.Reader, names map[uint32]string) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || line[0] == '+' || line[0] == '-' {
			continue // comments and NIS compat entries
		}
		fields := strings.SplitN(line, ":", 4)
		if len(fields) < 3 || fields[0] == "" {
			continue
		}
		id, err := strconv.ParseUint(fields[2], 10, 32)
		if err != nil {
			continue
		}
		if _, ok := names[uint32(id)]; !ok {
			names[uint32(id)] = fields[0]
		}
	}
}
