package cli

import (
	"bytes"
	"testing"
)

// TestEscaperAcrossWrites: a character cut between two events is shown
// whole, an escape sequence cut the same way is still escaped, and bytes
// that never become a character are shown as \x.. at the end.
func TestEscaperAcrossWrites(t *testing.T) {
	for _, tc := range []struct {
		writes []string
		want   string
	}{
		{[]string{"caf\xc3", "\xa9\n"}, "caf\u00e9\n"},
		{[]string{"\xe2\x80", "\xae!"}, `\u202e!`},
		{[]string{"a\x1b", "]52;c;eA==\x07"}, `a\x1b]52;c;eA==\a`},
		{[]string{"x\xe2\x82"}, `x\xe2\x82`},
		{[]string{"\xf0\x9f\x98", "A"}, `\xf0\x9f\x98A`},
		{[]string{"tab\tnl\ncr\r\n"}, "tab\tnl\ncr\\r\n"},
		{[]string{"\x00\x1f\x7f\u0085\u2066"}, `\x00\x1f\x7f\u0085\u2066`},
	} {
		var b bytes.Buffer
		e := newEscaper(&b)
		for _, w := range tc.writes {
			if n, err := e.Write([]byte(w)); err != nil || n != len(w) {
				t.Fatalf("write %q: %d, %v", w, n, err)
			}
		}
		if err := e.Flush(); err != nil {
			t.Fatal(err)
		}
		if b.String() != tc.want {
			t.Errorf("%q: got %q, want %q", tc.writes, b.String(), tc.want)
		}
	}
	if got := escapeString("a\nb\tc\x1b"); got != `a\nb\tc\x1b` {
		t.Errorf("escapeString: %q", got)
	}
}
