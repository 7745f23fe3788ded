package selection

import (
	"errors"
	"fmt"
	"strings"
)

// byteSet is a set of bytes, one bit each.
type byteSet [4]uint64

func (s *byteSet) has(c byte) bool { return s[c>>6]&(1<<(c&63)) != 0 }
func (s *byteSet) add(c byte)      { s[c>>6] |= 1 << (c & 63) }

func (s *byteSet) addRange(lo, hi byte) {
	for c := int(lo); c <= int(hi); c++ {
		s.add(byte(c))
	}
}

func (s *byteSet) invert() {
	for i := range s {
		s[i] = ^s[i]
	}
}

func (s *byteSet) remove(c byte) { s[c>>6] &^= 1 << (c & 63) }

// namedClasses are the POSIX classes allowed as "[:name:]" inside a
// bracket expression, over ASCII (as in the C locale).
var namedClasses = map[string]func(c byte) bool{
	"alnum":  func(c byte) bool { return isAlpha(c) || isDigit(c) },
	"alpha":  isAlpha,
	"blank":  func(c byte) bool { return c == ' ' || c == '\t' },
	"cntrl":  func(c byte) bool { return c < 0x20 || c == 0x7f },
	"digit":  isDigit,
	"graph":  func(c byte) bool { return c > 0x20 && c < 0x7f },
	"lower":  func(c byte) bool { return c >= 'a' && c <= 'z' },
	"print":  func(c byte) bool { return c >= 0x20 && c < 0x7f },
	"punct":  func(c byte) bool { return c > 0x20 && c < 0x7f && !isAlpha(c) && !isDigit(c) },
	"space":  func(c byte) bool { return c == ' ' || (c >= '\t' && c <= '\r') },
	"upper":  func(c byte) bool { return c >= 'A' && c <= 'Z' },
	"xdigit": func(c byte) bool { return isDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') },
}

func isAlpha(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }

var errUnterminatedClass = errors.New("unterminated character class (missing ])")

// parseClass parses the bracket expression that starts at body[i] == '['
// and returns its set and the index just past its closing ']'.
//
// Inside the brackets: a leading "!" or "^" negates; a "]" right after
// the opening (and negation) is literal; "\" makes the next byte literal;
// "x-y" is a range (x itself always belongs, so a reversed range is just
// x; a "-" first, last or right after a range or named class is literal);
// "[:name:]" is a named class. The set never holds "/", negated or not.
func parseClass(body string, i int) (*byteSet, int, error) {
	set := new(byteSet)
	j := i + 1
	negate := false
	if j < len(body) && (body[j] == '!' || body[j] == '^') {
		negate = true
		j++
	}
	prev := -1 // the last single byte added, which may start a range
	for first := true; ; first = false {
		if j >= len(body) {
			return nil, 0, errUnterminatedClass
		}
		c := body[j]
		switch {
		case c == ']' && !first:
			if negate {
				set.invert()
			}
			set.remove('/')
			return set, j + 1, nil
		case c == '\\':
			if j+1 >= len(body) {
				return nil, 0, errUnterminatedClass
			}
			set.add(body[j+1])
			prev = int(body[j+1])
			j += 2
		case c == '[' && j+1 < len(body) && body[j+1] == ':':
			end := strings.IndexByte(body[j+2:], ']')
			if end < 0 {
				return nil, 0, errUnterminatedClass
			}
			end += j + 2 // index of the ']'
			if end-1 < j+2 || body[end-1] != ':' {
				// "[:" not closed by ":]": an ordinary '['.
				set.add('[')
				prev = '['
				j++
				continue
			}
			name := body[j+2 : end-1]
			is, ok := namedClasses[name]
			if !ok {
				return nil, 0, fmt.Errorf("unknown character class [:%s:]", name)
			}
			for b := 0; b < 256; b++ {
				if is(byte(b)) {
					set.add(byte(b))
				}
			}
			prev = -1
			j = end + 1
		case c == '-' && prev >= 0 && j+1 < len(body) && body[j+1] != ']':
			hi := body[j+1]
			j += 2
			if hi == '\\' {
				if j >= len(body) {
					return nil, 0, errUnterminatedClass
				}
				hi = body[j]
				j++
			}
			if byte(prev) < hi {
				set.addRange(byte(prev), hi)
			}
			prev = -1
		default:
			set.add(c)
			prev = int(c)
			j++
		}
	}
}
