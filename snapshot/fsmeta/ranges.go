package fsmeta

import (
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Range is a run of bytes [Offset, Offset+Length) of a file.
type Range struct{ Offset, Length int64 }

// End returns the offset just past the range.
func (r Range) End() int64 { return r.Offset + r.Length }

// DataRanges returns the data (non-hole) ranges of the open regular file f,
// whose fstat or lstat is st, in order, found with lseek SEEK_DATA and
// SEEK_HOLE up to st.Size. Everything between and after the ranges is a hole.
//
// A filesystem without SEEK_DATA (EINVAL, as lseek(2) documents) gives one
// range covering the whole file. An empty file gives no ranges. The cost is
// two lseeks per data range, whatever the size of the holes. f's offset is
// restored before it returns.
//
// Every non-empty file is probed, even one whose st_blocks covers its size:
// st_blocks also counts metadata blocks (an external xattr block, extent tree
// or indirect blocks), so a file with holes can look dense.
func DataRanges(f *os.File, st *unix.Stat_t) ([]Range, error) {
	size := st.Size
	if size <= 0 {
		return nil, nil
	}
	whole := []Range{{Offset: 0, Length: size}}
	saved, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, err
	}
	defer f.Seek(saved, io.SeekStart) //nolint:errcheck // best effort; callers read with ReadAt

	var ranges []Range
	for off := int64(0); off < size; {
		data, err := f.Seek(off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				break // no data at or after off: the rest is a hole
			}
			if errors.Is(err, unix.EINVAL) && off == 0 {
				return whole, nil // no SEEK_DATA on this filesystem
			}
			return nil, err
		}
		if data >= size {
			break // data appended after st was taken
		}
		hole, err := f.Seek(data, unix.SEEK_HOLE)
		if err != nil {
			if errors.Is(err, unix.ENXIO) {
				break // truncated under us
			}
			return nil, err
		}
		hole = min(hole, size)
		ranges = append(ranges, Range{Offset: data, Length: hole - data})
		off = hole
	}
	return ranges, nil
}
