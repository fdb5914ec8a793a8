package cli

import (
	"fmt"
	"io"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// isTerminal reports whether w is a terminal, where a program's output is
// escaped unless --raw.
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// escaper writes a program's output for a terminal that an admin reads:
// every character that could make the terminal do something (ESC and so
// OSC 52 clipboard writes, title changes and screen clears; CR, BS, BEL
// and the other C0 controls; DEL; C1 controls; bidirectional-text
// controls) and every byte that is not UTF-8 is written as a visible
// escape (\x1b, \r, \u202e, \xff). Newlines and tabs pass. A character
// split across two writes is held until the next write completes it.
type escaper struct {
	w    io.Writer
	hold []byte // the start of a UTF-8 character cut at the end of a write
	buf  []byte
}

func newEscaper(w io.Writer) *escaper { return &escaper{w: w} }

// Write escapes p. It reports len(p) written when the escaped form was
// written whole.
func (e *escaper) Write(p []byte) (int, error) {
	data := p
	if len(e.hold) > 0 {
		data = append(e.hold, p...)
		e.hold = nil
	}
	e.buf = e.buf[:0]
	for len(data) > 0 {
		r, size := utf8.DecodeRune(data)
		if r == utf8.RuneError && size <= 1 {
			if !utf8.FullRune(data) {
				// Possibly the start of a character whose rest comes in
				// the next write.
				e.hold = append([]byte(nil), data...)
				break
			}
			e.buf = fmt.Appendf(e.buf, `\x%02x`, data[0])
			data = data[1:]
			continue
		}
		e.buf = appendEscaped(e.buf, r, data[:size], true)
		data = data[size:]
	}
	if _, err := e.w.Write(e.buf); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes a held incomplete character, escaped: nothing completes it
// any more.
func (e *escaper) Flush() error {
	if len(e.hold) == 0 {
		return nil
	}
	var b []byte
	for _, c := range e.hold {
		b = fmt.Appendf(b, `\x%02x`, c)
	}
	e.hold = nil
	_, err := e.w.Write(b)
	return err
}

// escapeString escapes s whole, newlines and tabs too, for a name a
// student chose (a script path) in one of idexctl's own lines.
func escapeString(s string) string {
	var b []byte
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size <= 1 {
			b = fmt.Appendf(b, `\x%02x`, s[i])
			i++
			continue
		}
		b = appendEscaped(b, r, []byte(s[i:i+size]), false)
		i += size
	}
	return string(b)
}

var namedEscapes = map[rune]string{'\a': `\a`, '\b': `\b`, '\f': `\f`, '\r': `\r`, '\v': `\v`}

var namedLayout = map[rune]string{'\n': `\n`, '\t': `\t`}

// appendEscaped appends the character r (encoded as raw) as it may reach
// a terminal; layout keeps newlines and tabs.
func appendEscaped(b []byte, r rune, raw []byte, layout bool) []byte {
	switch {
	case r == '\n' || r == '\t':
		if layout {
			return append(b, byte(r))
		}
		return append(b, namedLayout[r]...)
	case r < 0x20 || r == 0x7f:
		if n, ok := namedEscapes[r]; ok {
			return append(b, n...)
		}
		return fmt.Appendf(b, `\x%02x`, r)
	case r >= 0x80 && r <= 0x9f, // C1 controls: CSI, OSC, ... on some terminals
		r >= 0x202a && r <= 0x202e,                // bidirectional embeddings and overrides
		r >= 0x2066 && r <= 0x2069,                // bidirectional isolates
		r == 0x200e || r == 0x200f || r == 0x061c: // direction marks
		return fmt.Appendf(b, `\u%04x`, r)
	}
	return append(b, raw...)
}
