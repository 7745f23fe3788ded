package fsmeta

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/understudy/understudy/snapshot/testtree"
)

func data(n int) []byte { return bytes.Repeat([]byte{0xa5}, n) }

func TestDataRanges(t *testing.T) {
	const (
		gib = int64(1) << 30
		mib = int64(1) << 20
		kib = int64(1) << 10
	)
	for _, tc := range []struct {
		name string
		file testtree.File
		want []Range // exact data; DataRanges may widen each to whole blocks
	}{
		{"empty", testtree.File{}, nil},
		{"dense", testtree.File{Content: data(10000)}, []Range{{0, 10000}}},
		{"all hole", testtree.File{Size: gib}, nil},
		{"start, middle and end of 1 GiB", testtree.File{
			Content: data(64 << 10),
			Sparse:  []testtree.At{{Offset: gib / 2, Data: data(64 << 10)}, {Offset: gib - 100, Data: data(100)}},
		}, []Range{{0, 64 * kib}, {gib / 2, 64 * kib}, {gib - 100, 100}}},
		{"trailing hole", testtree.File{Content: data(int(mib)), Size: 4 * mib}, []Range{{0, mib}}},
		{"leading hole", testtree.File{Sparse: []testtree.At{{Offset: 8 * mib, Data: data(4096)}}}, []Range{{8 * mib, 4096}}},
		{"unaligned data in a hole", testtree.File{Sparse: []testtree.At{{Offset: 5000, Data: data(10)}}, Size: mib},
			[]Range{{5000, 10}}},
		{"one-block hole", testtree.File{Content: data(4096), Sparse: []testtree.At{{Offset: 8192, Data: data(4096)}}},
			[]Range{{0, 4096}, {8192, 4096}}},
		{"small file with a hole and a big xattr", testtree.File{Content: data(4096), Size: 2 * 4096,
			Xattrs: map[string][]byte{"user.big": data(3000)}}, []Range{{0, 4096}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testtree.NeedRoot(t) // testtree.Build
			root := t.TempDir()
			testtree.Build(t, root, testtree.Dir{"f": tc.file})
			f, err := os.Open(filepath.Join(root, "f"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var st unix.Stat_t
			if err := unix.Fstat(int(f.Fd()), &st); err != nil {
				t.Fatal(err)
			}
			if _, err := f.Seek(12345, io.SeekStart); err != nil {
				t.Fatal(err)
			}
			got, err := DataRanges(f, &st)
			if err != nil {
				t.Fatal(err)
			}
			checkRanges(t, got, tc.want, int64(st.Blksize), st.Size)
			if off, _ := f.Seek(0, io.SeekCurrent); off != 12345 {
				t.Errorf("the file offset is %d after DataRanges, want 12345 as before", off)
			}
			if st.Size > 0 && st.Blocks*512 >= st.Size && len(tc.want) > 0 && tc.want[0] != (Range{0, st.Size}) {
				t.Logf("st_blocks (%d bytes) >= size (%d) though the file has holes", st.Blocks*512, st.Size)
			}
		})
	}
}

// checkRanges checks got against the exact data ranges want: each range may
// be widened to the filesystem's blocks, not beyond the size.
func checkRanges(t *testing.T, got, want []Range, block, size int64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("DataRanges = %v, want %v (to the block of %d bytes)", got, want, block)
	}
	for i, w := range want {
		g := got[i]
		lo, hi := w.Offset/block*block, min((w.End()+block-1)/block*block, size)
		if g.Offset < lo || g.Offset > w.Offset || g.End() < w.End() || g.End() > hi {
			t.Errorf("range %d is %v, want %v widened at most to [%d, %d)", i, g, w, lo, hi)
		}
	}
}

// TestDataRangesSizeFromStat: the ranges stop at the size the caller's stat
// saw, also when the file has grown since.
func TestDataRangesSizeFromStat(t *testing.T) {
	testtree.NeedRoot(t)
	root := t.TempDir()
	testtree.Build(t, root, testtree.Dir{"f": testtree.File{Content: data(4096), Size: 1 << 20}})
	f, err := os.OpenFile(filepath.Join(root, "f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data(4096), 2<<20); err != nil { // grows the file
		t.Fatal(err)
	}
	got, err := DataRanges(f, &st)
	if err != nil {
		t.Fatal(err)
	}
	checkRanges(t, got, []Range{{0, 4096}}, int64(st.Blksize), st.Size)

	// Truncated below the data since the stat: no range past the new end.
	if err := f.Truncate(0); err != nil {
		t.Fatal(err)
	}
	got, err = DataRanges(f, &st)
	if err != nil || len(got) != 0 {
		t.Fatalf("DataRanges of a truncated file = %v, %v; want none", got, err)
	}
}

func TestRangeEnd(t *testing.T) {
	if got := (Range{Offset: 10, Length: 5}).End(); got != 15 {
		t.Errorf("End = %d", got)
	}
}
