package server_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/client"
	"github.com/idexd/idexd/internal/testutil"
)

// TestFileRoutes: the file routes through the socket with the Go client,
// the web tier's role, a request path that is not clean (refused, never
// redirected) and a body over the cap (the client gets the refusal).
func TestFileRoutes(t *testing.T) {
	env := testutil.NewEnv(t)
	srv := env.Serve(t)
	c := client.New(srv.Socket)
	ctx := ctxT(t, 60*time.Second)
	st, err := c.EnsureStudent(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if st.Disk.EnforcedBy == "" || st.Disk.LimitBytes != 100<<20 || st.Disk.LimitFiles != 10000 {
		t.Fatalf("student's disk: %+v", st.Disk)
	}
	if _, err := c.WriteFile(ctx, "alice", "my dir/a?b#c%.py", []byte("print('hi')\n"), true); err != nil {
		t.Fatal(err)
	}
	if b, err := c.ReadFile(ctx, "alice", "my dir/a?b#c%.py"); err != nil || string(b) != "print('hi')\n" {
		t.Fatalf("read back: %q %v", b, err)
	}
	l, err := c.ListFiles(ctx, "alice", "my dir")
	if err != nil || len(l.Entries) != 1 || l.Entries[0].Name != "a?b#c%.py" {
		t.Fatalf("list: %+v %v", l, err)
	}
	if _, err := c.MoveFile(ctx, "alice", "my dir/a?b#c%.py", "main.py", false); err != nil {
		t.Fatal(err)
	}
	r, err := c.StartRun(ctx, api.RunRequest{Student: "alice", Script: "main.py"})
	if err != nil {
		t.Fatal(err)
	}
	evs, err := c.Events(ctx, r.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if out, last, _ := collect(t, evs); out != "hi\n" || last.Run.Reason != api.ReasonExited {
		t.Fatalf("run of the saved script: %q %+v", out, last.Run)
	}
	if err := c.RemoveFile(ctx, "alice", "my dir"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadFile(ctx, "alice", "../bob/x"); !errors.Is(err, api.ErrInvalidPath) {
		t.Fatalf("a path with ..: %v", err)
	}

	raw := rawHTTP(srv.Socket)
	for _, p := range []string{"/v1/students/alice/files/../../bob/files/x", "/v1/students/alice/files//etc/passwd", "/v1/students/alice/files/./main.py"} {
		resp, err := raw.Get("http://idexd" + p)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), `"invalid_path"`) {
			t.Errorf("GET %s: %d %s, want 400 invalid_path", p, resp.StatusCode, b)
		}
	}
	big := bytes.Repeat([]byte("x"), 17<<20)
	req, err := http.NewRequest("PUT", "http://idexd/v1/students/alice/files/big.bin", bytes.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := raw.Do(req)
	if err != nil {
		t.Fatalf("a body over the cap: %v (the refusal must reach the client)", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(b), `"file_too_large"`) {
		t.Fatalf("a body over the cap: %d %s", resp.StatusCode, b)
	}
	if _, err := os.Lstat(env.Dirs.Workdir("alice") + "/big.bin"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("big.bin: %v", err)
	}

	// The web tier's role may use the file routes; with the socket open to
	// all, an outsider may not.
	if got := asUID(t, srv.Socket, 5000, testutil.ClientGID, nil, "GET", "/v1/students/alice/files?path="); got != "200 -" {
		t.Fatalf("web tier lists files: %q", got)
	}
	if err := os.Chmod(srv.Socket, 0o666); err != nil {
		t.Fatal(err)
	}
	if got := asUID(t, srv.Socket, 5002, 5002, nil, "GET", "/v1/students/alice/files?path="); got != "403 forbidden" {
		t.Fatalf("outsider lists files: %q", got)
	}
	h, err := c.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ch := range h.Checks {
		found = found || (ch.Name == "disk_quota" && ch.OK && strings.Contains(ch.Message, "enforced by"))
	}
	if !found {
		t.Fatalf("health has no disk_quota check: %+v", h.Checks)
	}
}

var curlFilesBlock = regexp.MustCompile("(?s)\nFiles with curl .*?```sh\n(.*?)```\n\nThey print:\n\n```\n(.*?)```")

// TestCurlFilesExample runs the file routes' curl lines of
// docs/protocol.md as printed, after the curl example before them, and
// compares what they print with the document ("…" stands for anything).
func TestCurlFilesExample(t *testing.T) {
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	first, files := curlBlock.FindSubmatch(doc), curlFilesBlock.FindSubmatch(doc)
	if first == nil || files == nil {
		t.Fatal("docs/protocol.md has no curl example, or none for files with what it prints")
	}
	env := testutil.NewEnv(t)
	srv := env.Serve(t)
	script := "{\n" + string(first[1]) + "} > /dev/null\n" + string(files[1])
	cmd := exec.CommandContext(ctxT(t, 60*time.Second), "bash", "--norc", "--noprofile", "-euo", "pipefail", "-c", script)
	cmd.Env = []string{"IDEX_SOCKET=" + srv.Socket, "PATH=/usr/bin:/bin"}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("the curl example failed: %v\n%s\n%s", err, out, stderr.String())
	}
	got := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	want := strings.Split(strings.TrimSuffix(string(files[2]), "\n"), "\n")
	if len(got) != len(want) {
		t.Fatalf("printed %d lines, the document shows %d:\n%s", len(got), len(want), out)
	}
	for i := range want {
		re := "^" + strings.ReplaceAll(regexp.QuoteMeta(want[i]), "…", ".*") + "$"
		if !regexp.MustCompile(re).MatchString(got[i]) {
			t.Errorf("line %d: %s\nthe document says: %s", i+1, got[i], want[i])
		}
	}
}
