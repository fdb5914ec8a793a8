package cli_test

import (
	"strings"
	"testing"
)

// TestFilesOnTerminal: what a student's program wrote, its bytes and its
// file names, reaches an admin's terminal escaped, as a run's output does;
// --raw and a pipe get it as it is.
func TestFilesOnTerminal(t *testing.T) {
	env, sock := served(t)
	env.WriteScript(t, "alice", "evil\x1b]0;pwned\a.txt", "title\x1b]0;pwned\a clear\x1b[2J ok\n")

	out, errOut, code := onTerminal(t, "--socket", sock, "files", "ls", "--student", "alice")
	if code != 0 || !strings.Contains(out, `evil\x1b]0;pwned\a.txt`) || strings.Contains(out, "\x1b") {
		t.Fatalf("files ls on a terminal: exit %d\n%q\n%s", code, out, errOut)
	}
	out, errOut, code = onTerminal(t, "--socket", sock, "files", "cat", "--student", "alice", "evil\x1b]0;pwned\a.txt")
	if want := `title\x1b]0;pwned\a clear\x1b[2J ok` + "\n"; code != 0 || out != want {
		t.Fatalf("files cat on a terminal: exit %d\n%q, want\n%q\n%s", code, out, want, errOut)
	}
	raw := "title\x1b]0;pwned\a clear\x1b[2J ok\n"
	out, _, code = onTerminal(t, "--socket", sock, "files", "cat", "--raw", "--student", "alice", "evil\x1b]0;pwned\a.txt")
	if code != 0 || out != raw {
		t.Fatalf("files cat --raw on a terminal: exit %d, %q", code, out)
	}
	out, _, code = ctl(t, nil, "--socket", sock, "files", "cat", "--student", "alice", "evil\x1b]0;pwned\a.txt")
	if code != 0 || out != raw {
		t.Fatalf("files cat into a pipe: exit %d, %q", code, out)
	}
	_, errOut, code = ctl(t, nil, "--socket", sock, "files", "frob", "--student", "alice")
	if code != 1 || !strings.Contains(errOut, `unknown files command "frob"`) {
		t.Fatalf("files frob: exit %d %s", code, errOut)
	}
}
