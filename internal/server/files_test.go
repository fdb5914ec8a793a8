package server_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
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

// TestFileRefusalsOverTheWire: what issue 11 asks of each refusal, as the
// web tier sees it on the socket: the status and code of each, no request
// blocked by a FIFO, nothing created for an unknown student, and a student
// over a measured quota refused 507 for writes and runs until a delete.
func TestFileRefusalsOverTheWire(t *testing.T) {
	env := testutil.NewEnv(t)
	srv := env.Serve(t)
	c := client.New(srv.Socket)
	ctx := ctxT(t, 120*time.Second)
	st, err := c.EnsureStudent(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	wd := st.Workdir
	if _, err := c.WriteFile(ctx, "alice", "keep.py", []byte("print('kept')\n"), false); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(wd+"/fifo", 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("keep.py", wd+"/link.py"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteFile(ctx, "alice", "dir/x.py", []byte("x"), true); err != nil {
		t.Fatal(err)
	}
	// Over file_max_mb (16 MiB by default), sparse: its size is refused
	// before a byte is read.
	big, err := os.Create(wd + "/big.bin")
	if err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(big.Truncate(16<<20+1), big.Close()); err != nil {
		t.Fatal(err)
	}
	raw := rawHTTP(srv.Socket)
	raw.Timeout = 60 * time.Second // a request that blocks fails rather than hangs
	do := func(method, p, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, "http://idexd"+p, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := raw.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, p, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s %s: %v", method, p, err)
		}
		var e struct {
			Error api.Error `json:"error"`
		}
		if resp.StatusCode >= 400 && json.Unmarshal(b, &e) != nil {
			t.Fatalf("%s %s: %d with body %q, not a coded error", method, p, resp.StatusCode, b)
		}
		return resp.StatusCode, string(e.Error.Code)
	}
	const f = "/v1/students/alice/files/"
	cases := []struct {
		method, path, body string
		status             int
		code               api.Code
	}{
		{"GET", f + "fifo", "", 400, api.CodeNotRegular},
		{"PUT", f + "fifo", "x", 400, api.CodeNotRegular},
		{"GET", f + "dir", "", 400, api.CodeNotRegular},
		{"PUT", f + "dir", "x", 400, api.CodeNotRegular},
		{"GET", f + "link.py", "", 400, api.CodeInvalidPath},
		{"PUT", f + "link.py", "x", 400, api.CodeInvalidPath},
		{"GET", f + "big.bin", "", 413, api.CodeFileTooLarge},
		{"GET", f + "keep.py/x", "", 400, api.CodeNotDirectory},
		{"GET", f + "%2e%2e/bob/x", "", 400, api.CodeInvalidPath},
		{"GET", f + "a%00b", "", 400, api.CodeInvalidPath},
		{"GET", f + strings.Repeat("n", 256), "", 400, api.CodeInvalidPath},
		{"GET", f + "missing.py", "", 404, api.CodeFileNotFound},
		{"DELETE", f + "dir", "", 409, api.CodeDirectoryNotEmpty},
		{"POST", f + "keep.py?move_to=dir/x.py", "", 409, api.CodeFileExists},
		{"POST", f + "keep.py?move_to=../bob/keep.py", "", 400, api.CodeInvalidPath},
		{"POST", f + "keep.py", "", 400, api.CodeInvalidRequest},
		{"GET", "/v1/students/carol/files/x.py", "", 404, api.CodeStudentNotFound},
		{"PUT", "/v1/students/carol/files/x.py?parents=1", "x", 404, api.CodeStudentNotFound},
		{"DELETE", "/v1/students/carol/files/x.py", "", 404, api.CodeStudentNotFound},
		{"GET", "/v1/students/carol/files?path=", "", 404, api.CodeStudentNotFound},
		{"GET", "/v1/students/carol", "", 404, api.CodeStudentNotFound},
	}
	for _, cs := range cases {
		if status, code := do(cs.method, cs.path, cs.body); status != cs.status || code != string(cs.code) {
			t.Errorf("%s %s: %d %s, want %d %s", cs.method, cs.path, status, code, cs.status, cs.code)
		}
	}
	if b, err := c.ReadFile(ctx, "alice", "keep.py"); err != nil || string(b) != "print('kept')\n" {
		t.Errorf("keep.py after the refusals: %q %v", b, err)
	}
	if sts, err := c.ListStudents(ctx); err != nil || len(sts) != 1 {
		t.Errorf("students after the refusals for carol: %+v %v, want alice only", sts, err)
	}
	if _, err := os.Lstat(env.Dirs.Workdir("carol")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("carol's directory: %v", err)
	}

	// Over quota_files (10,000 by default), measured: the files a run
	// would have left, made here as the student's process would.
	if env.Quota.EnforcedBy() != api.EnforcedByIdexd {
		t.Skipf("the test directory's filesystem enforces user quotas (%s): internal/files' TestKernelQuota covers it", env.Quota.Status())
	}
	for i := range 10000 {
		p := fmt.Sprintf("%s/dir/n%05d", wd, i)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	env.Quota.RunEnded(st)
	if got, err := c.GetStudent(ctx, "alice"); err != nil || !got.Disk.Over() || got.Disk.EnforcedBy != api.EnforcedByIdexd {
		t.Fatalf("alice over quota_files: %+v %v", got.Disk, err)
	}
	if status, code := do("PUT", f+"new.py", "x"); status != 507 || code != string(api.CodeQuotaExceeded) {
		t.Errorf("a write over quota: %d %s, want 507 quota_exceeded", status, code)
	}
	if status, code := do("POST", "/v1/runs", `{"student": "alice", "script": "keep.py"}`); status != 507 || code != string(api.CodeQuotaExceeded) {
		t.Errorf("a run over quota: %d %s, want 507 quota_exceeded", status, code)
	}
	if _, err := os.Lstat(wd + "/new.py"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("new.py after the refusal: %v", err)
	}
	for _, p := range []string{"dir/n00000", "dir/n00001", "dir/n00002", "dir/n00003", "dir/n00004", "dir/n00005", "dir/n00006", "dir/n00007"} {
		if status, code := do("DELETE", f+p, ""); status != 204 {
			t.Fatalf("a delete while over: %d %s", status, code)
		}
	}
	if got, err := c.GetStudent(ctx, "alice"); err != nil || got.Disk.Over() {
		t.Fatalf("alice after deletes: %+v %v", got.Disk, err)
	}
	r, err := c.StartRun(ctx, api.RunRequest{Student: "alice", Script: "keep.py"})
	if err != nil {
		t.Fatalf("a run back under quota: %v", err)
	}
	evs, err := c.Events(ctx, r.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if out, last, _ := collect(t, evs); out != "kept\n" || last.Run.Reason != api.ReasonExited {
		t.Fatalf("the run back under quota: %q %+v", out, last.Run)
	}
}

// TestRunPastQuotaRefusesTheNext: where idexd measures, a run that takes
// its student past quota_mb ends normally, and a start sent as soon as its
// end event arrives is refused 507 quota_exceeded, with no wait or poll in
// between: the end is measured before it is published.
func TestRunPastQuotaRefusesTheNext(t *testing.T) {
	env := testutil.NewEnv(t)
	if env.Quota.EnforcedBy() != api.EnforcedByIdexd {
		t.Skipf("the test directory's filesystem enforces user quotas (%s): internal/files' TestKernelQuota covers it", env.Quota.Status())
	}
	srv := env.Serve(t)
	c := client.New(srv.Socket)
	ctx := ctxT(t, 600*time.Second)
	if _, err := c.EnsureStudent(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	// quota_mb is 100 by default; a run's files are capped at 64 MiB each.
	src := "for n in ('a.bin', 'b.bin'):\n    open(n, 'wb').write(b'x' * (51 << 20))\nprint('made')\n"
	if _, err := c.WriteFile(ctx, "alice", "big.py", []byte(src), false); err != nil {
		t.Fatal(err)
	}
	// A wall limit for a loaded host: the run's end is what is tested.
	lim := api.Limits{WallSeconds: 600, CPUSeconds: 600}
	r, err := c.StartRun(ctx, api.RunRequest{Student: "alice", Script: "big.py", Limits: lim})
	if err != nil {
		t.Fatal(err)
	}
	evs, err := c.Events(ctx, r.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if out, last, _ := collect(t, evs); out != "made\n" || last.Run.Reason != api.ReasonExited {
		t.Fatalf("the run past the quota: %q %+v", out, last.Run)
	}
	_, err = c.StartRun(ctx, api.RunRequest{Student: "alice", Script: "big.py", Limits: lim})
	if !errors.Is(err, api.ErrQuotaExceeded) {
		t.Fatalf("a start on the end event of a run that went past quota_mb: %v, want quota_exceeded", err)
	}
}

// TestListingOnTheWire: GET .../files?path=DIR answers each entry's name,
// type, size and mtime under those JSON names, for what a run may leave
// (a file, a directory, a FIFO, a symlink, listed and never followed).
func TestListingOnTheWire(t *testing.T) {
	env := testutil.NewEnv(t)
	srv := env.Serve(t)
	c := client.New(srv.Socket)
	ctx := ctxT(t, 60*time.Second)
	st, err := c.EnsureStudent(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteFile(ctx, "alice", "src/main.py", []byte("print(1)\n"), true); err != nil {
		t.Fatal(err)
	}
	when := time.Date(2026, 9, 1, 8, 30, 0, 0, time.UTC)
	if err := os.Chtimes(st.Workdir+"/src/main.py", when, when); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(st.Workdir+"/src/pipe", 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/shadow", st.Workdir+"/src/link"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(st.Workdir+"/src/pkg", 0o700); err != nil {
		t.Fatal(err)
	}
	resp, err := rawHTTP(srv.Socket).Get("http://idexd/v1/students/alice/files?path=src")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct {
		Path    string           `json:"path"`
		Entries []map[string]any `json:"entries"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != 200 {
		t.Fatalf("listing: %d %v", resp.StatusCode, err)
	}
	var lines []string
	for _, e := range got.Entries {
		size := e["size"]
		if e["type"] == "dir" && size != nil {
			size = "n" // a directory's size is the filesystem's business
		}
		lines = append(lines, fmt.Sprintf("%v %v %v %v", e["name"], e["type"], size, e["mtime"] != nil))
		if e["name"] == "main.py" && e["mtime"] != "2026-09-01T08:30:00Z" {
			t.Errorf("main.py's mtime is %v, want 2026-09-01T08:30:00Z", e["mtime"])
		}
	}
	want := "link symlink 11 true|main.py file 9 true|pipe fifo 0 true|pkg dir n true"
	if strings.Join(lines, "|") != want || got.Path != "src" {
		t.Errorf("listing of %q:\n%s\nwant\n%s", got.Path, strings.Join(lines, "|"), want)
	}
}
