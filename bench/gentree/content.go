package main

import "math/rand/v2"

// vocabulary is the number of distinct words of the text source; with the
// skewed choice in fillText, zstd compresses the text about 3:1, near what
// it does to /usr.
const vocabulary = 4096

// textSource makes word-like text from a fixed vocabulary.
type textSource struct {
	words [][]byte
}

// newTextSource makes the vocabulary of seed: words of 2–11 lowercase
// letters.
func newTextSource(seed uint64) *textSource {
	r := rand.New(rand.NewPCG(seed, 0x766f636162)) // "vocab"
	t := &textSource{words: make([][]byte, vocabulary)}
	for i := range t.words {
		w := make([]byte, 2+r.IntN(10))
		for j := range w {
			w[j] = byte('a' + r.IntN(26))
		}
		t.words[i] = w
	}
	return t
}

// fillText fills b with words separated by spaces and, now and then, a
// newline. Words are picked with a skew towards the start of the
// vocabulary, as in real text.
func (t *textSource) fillText(r *rand.Rand, b []byte) {
	for i := 0; i < len(b); {
		// The minimum of two uniform picks favours small indexes.
		w := t.words[min(r.IntN(vocabulary), r.IntN(vocabulary))]
		i += copy(b[i:], w)
		if i < len(b) {
			if r.IntN(12) == 0 {
				b[i] = '\n'
			} else {
				b[i] = ' '
			}
			i++
		}
	}
}

// fillBinary fills b like an object file: runs of random bytes, runs of
// zeros and runs of a few repeated byte values.
func fillBinary(r *rand.Rand, b []byte) {
	for i := 0; i < len(b); {
		n := min(len(b)-i, 8+r.IntN(120))
		switch r.IntN(4) {
		case 0, 1:
			for j := i; j < i+n; j++ {
				b[j] = byte(r.Uint32())
			}
		case 2:
			clear(b[i : i+n])
		default:
			v := byte(r.IntN(4))
			for j := i; j < i+n; j++ {
				b[j] = v
			}
		}
		i += n
	}
}

// flipBytes changes every byte of b to a value that differs from the one
// before, so that a change is never a no-op.
func flipBytes(r *rand.Rand, b []byte) {
	for i := range b {
		b[i] ^= byte(1 + r.IntN(255))
	}
}
