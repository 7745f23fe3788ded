package chunkstore

import (
	"bytes"
	"testing"

	"github.com/understudy/understudy/index"
)

// FuzzDecodeBlob feeds a blob's stored bytes, as a damaged pack or a
// hostile peer could give them, to the decoder every read goes through,
// with any compression byte and a declared raw length up to 4 MiB: it never
// panics, what it accepts has exactly the declared length and no more
// capacity than that (a bomb cannot grow it), and it decodes the same
// twice.
func FuzzDecodeBlob(f *testing.F) {
	c, err := newCodec("default")
	if err != nil {
		f.Fatal(err)
	}
	defer c.close()
	text := bytes.Repeat([]byte("a chunk of a file that compresses well "), 200)
	z := c.enc.EncodeAll(text, nil)
	f.Add(z, uint8(index.Zstd), uint32(len(text)))
	f.Add(z, uint8(index.Zstd), uint32(len(text)-1))
	f.Add(text, uint8(index.Raw), uint32(len(text)))
	f.Add(zstdBomb(8<<20, -1, 17), uint8(index.Zstd), uint32(64<<10))
	f.Add(zstdBomb(1<<20, 1<<20, 20), uint8(index.Zstd), uint32(1<<20))
	f.Fuzz(func(t *testing.T, stored []byte, comp uint8, rawLength uint32) {
		rawLength %= 4 << 20
		out, err := c.decode(stored, index.Compression(comp), rawLength, nil)
		if err != nil {
			return
		}
		if uint32(len(out)) != rawLength {
			t.Fatalf("accepted %d bytes for a raw length of %d", len(out), rawLength)
		}
		if index.Compression(comp) == index.Zstd && uint32(cap(out)) > rawLength {
			t.Fatalf("decoding grew the buffer to %d bytes for a raw length of %d", cap(out), rawLength)
		}
		again, err := c.decode(stored, index.Compression(comp), rawLength, nil)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("decoded differently the second time: %v", err)
		}
	})
}
