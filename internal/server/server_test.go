package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/client"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/server"
	"github.com/idexd/idexd/internal/testutil"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// rawHTTP is an http.Client on the socket for requests the Go client
// would never send.
func rawHTTP(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
}

func collect(t *testing.T, evs *client.Events) (out string, last api.Event, all []api.Event) {
	t.Helper()
	for {
		ev, err := evs.Next()
		if errors.Is(err, io.EOF) {
			return out, last, all
		}
		if err != nil {
			t.Fatalf("events: %v", err)
		}
		all = append(all, ev)
		last = ev
		if ev.Type == api.EventStdout || ev.Type == api.EventStderr {
			out += string(ev.Bytes())
		}
	}
}

// TestRunThroughSocket: a script whose input() is answered through stdin,
// a second reader mid-run, a reattach with after=SEQ that gets exactly the
// missing events, and a stop from a third client.
func TestRunThroughSocket(t *testing.T) {
	env := testutil.NewEnv(t)
	srv := env.Serve(t)
	c1, c2, c3 := client.New(srv.Socket), client.New(srv.Socket), client.New(srv.Socket)
	ctx := ctxT(t, 60*time.Second)

	st, err := c1.EnsureStudent(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if st.UID < 200000 || st.Workdir != env.Dirs.Workdir("alice") {
		t.Fatalf("student %+v", st)
	}
	if got, err := c2.GetStudent(ctx, "alice"); err != nil || got != st {
		t.Fatalf("get student: %+v %v, want %+v", got, err, st)
	}
	env.WriteScript(t, "alice", "chat.py", `import time
name = input("name? ")
print("hello", name)
for i in range(5):
    print("tick", i)
    time.sleep(0.05)
time.sleep(60)
`)
	r, err := c1.StartRun(ctx, api.RunRequest{Student: "alice", Script: "chat.py"})
	if err != nil {
		t.Fatal(err)
	}
	if r.State != api.StateRunning || r.ID == "" {
		t.Fatalf("started run %+v", r)
	}
	// Locked while it runs, naming the run.
	_, err = c2.StartRun(ctx, api.RunRequest{Student: "alice", Script: "chat.py"})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeLocked || ae.RunID != r.ID {
		t.Fatalf("second start: %v, want locked naming %s", err, r.ID)
	}
	if err := c1.WriteStdin(ctx, r.ID, []byte("Ada\n"), false); err != nil {
		t.Fatal(err)
	}
	// A second client follows the run until "tick 4".
	evs, err := c2.Events(ctx, r.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	var seen []api.Event
	var text string
	for !strings.Contains(text, "tick 4\n") {
		ev, err := evs.Next()
		if err != nil {
			t.Fatalf("follow: %v (seen %q)", err, text)
		}
		seen = append(seen, ev)
		text += string(ev.Bytes())
	}
	if err := evs.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(text, "name? hello Ada\ntick 0\n") {
		t.Fatalf("followed output %q", text)
	}
	// Reattach after the third event: exactly the rest, no gap, no repeat.
	cut := seen[len(seen)/2].Seq
	again, err := c1.Events(ctx, r.ID, cut)
	if err != nil {
		t.Fatal(err)
	}
	// A third client stops the run; both streams end with the same end.
	final, err := c3.StopRun(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if final.Reason != api.ReasonStopped || final.State != api.StateEnded {
		t.Fatalf("stop returned %s/%s", final.State, final.Reason)
	}
	_, last, rest := collect(t, again)
	if len(rest) == 0 || rest[0].Seq != cut+1 {
		t.Fatalf("reattach after %d started at %+v", cut, rest)
	}
	for i := 1; i < len(rest); i++ {
		if rest[i].Seq != rest[i-1].Seq+1 {
			t.Fatalf("gap in reattached events: %d then %d", rest[i-1].Seq, rest[i].Seq)
		}
	}
	for _, ev := range seen {
		if ev.Seq > cut && ev.Seq <= rest[len(rest)-1].Seq {
			got := rest[ev.Seq-cut-1]
			if got.Data != ev.Data || got.Type != ev.Type {
				t.Fatalf("event %d differs between readers: %+v vs %+v", ev.Seq, got, ev)
			}
		}
	}
	if last.Type != api.EventEnd || last.Run == nil || last.Run.Reason != api.ReasonStopped {
		t.Fatalf("stream ended with %+v", last)
	}
	// Stop is idempotent; stdin after the end is refused with a code.
	if again, err := c2.StopRun(ctx, r.ID); err != nil || again.EndedAt == nil || !again.EndedAt.Equal(*final.EndedAt) {
		t.Fatalf("second stop: %+v %v", again, err)
	}
	if err := c1.WriteStdin(ctx, r.ID, []byte("x"), false); !errors.Is(err, api.ErrRunEnded) {
		t.Fatalf("stdin after end: %v, want run_ended", err)
	}
	runs, err := c1.ListRuns(ctx, client.ListFilter{Student: "alice"})
	if err != nil || len(runs) != 1 || runs[0].ID != r.ID || runs[0].Reason != api.ReasonStopped {
		t.Fatalf("list: %+v %v", runs, err)
	}
	if got, err := c1.GetRun(ctx, r.ID); err != nil || got.Reason != api.ReasonStopped {
		t.Fatalf("get: %+v %v", got, err)
	}
}

// asUID runs python3 as uid:gid against the socket and returns what it
// prints: the HTTP status and error code of GET path, or the connect error.
func asUID(t *testing.T, sock string, uid, gid uint32, groups []uint32, method, path string) string {
	t.Helper()
	script := fmt.Sprintf(`
import http.client, json, socket
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(%q)
try:
    c = C("idexd")
    c.request(%q, %q)
    r = c.getresponse()
    body = json.loads(r.read() or b"{}")
    print(r.status, body.get("error", {}).get("code", "-"))
except PermissionError:
    print("EACCES")
`, sock, method, path)
	cmd := exec.Command(testutil.Interpreter, "-c", script)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: append([]uint32{}, groups...)}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("peer %d:%d: %v: %s", uid, gid, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestRolesFromPeerCredentials(t *testing.T) {
	env := testutil.NewEnv(t)
	srv := env.Serve(t)
	cases := []struct {
		name     string
		uid, gid uint32
		groups   []uint32
		method   string
		path     string
		want     string
	}{
		{"client reads health", 5000, testutil.ClientGID, nil, "GET", "/v1/health", "200 -"},
		{"client in supplementary group", 5000, 5000, []uint32{testutil.ClientGID}, "GET", "/v1/health", "200 -"},
		{"client may not drain", 5000, testutil.ClientGID, nil, "POST", "/v1/drain", "403 forbidden"},
		{"client may not list students", 5000, testutil.ClientGID, nil, "GET", "/v1/students", "403 forbidden"},
		{"client may not stop a student", 5000, testutil.ClientGID, nil, "POST", "/v1/students/alice/stop", "403 forbidden"},
		{"admin group stops a student", 5001, testutil.AdminGID, []uint32{testutil.ClientGID}, "POST", "/v1/students/alice/stop", "200 -"},
		// Admins reach the socket through the client group, like everyone.
		{"admin group resumes", 5001, testutil.AdminGID, []uint32{testutil.ClientGID}, "POST", "/v1/resume", "200 -"},
		{"admin without client group cannot connect", 5001, testutil.AdminGID, nil, "GET", "/v1/health", "EACCES"},
		{"outsider cannot connect", 5002, 5002, nil, "GET", "/v1/health", "EACCES"},
		{"a student uid cannot connect", 200000, 200000, nil, "GET", "/v1/health", "EACCES"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := asUID(t, srv.Socket, c.uid, c.gid, c.groups, c.method, c.path); got != c.want {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
	// With the socket opened to all, the role check itself refuses.
	if err := os.Chmod(srv.Socket, 0o666); err != nil {
		t.Fatal(err)
	}
	if got := asUID(t, srv.Socket, 5002, 5002, nil, "GET", "/v1/health"); got != "403 forbidden" {
		t.Fatalf("outsider on an open socket: %q, want 403 forbidden", got)
	}
}

func TestBadRequests(t *testing.T) {
	env := testutil.NewEnv(t)
	srv := env.Serve(t)
	env.WriteScript(t, "alice", "ok.py", "print(1)\n")
	hc := rawHTTP(srv.Socket)
	huge := `{"student":"alice","script":"ok.py","args":["` + strings.Repeat("a", 2<<20) + `"]}`
	cases := []struct {
		name, method, path, body string
		status                   int
		code                     api.Code
	}{
		{"malformed json", "POST", "/v1/runs", `{"student":`, 400, api.CodeInvalidRequest},
		{"wrong type", "POST", "/v1/runs", `{"student":"alice","script":42}`, 400, api.CodeInvalidRequest},
		{"unknown field", "POST", "/v1/runs", `{"student":"alice","script":"ok.py","shell":true}`, 400, api.CodeInvalidRequest},
		{"trailing data", "POST", "/v1/runs", `{"student":"alice","script":"ok.py"} {}`, 400, api.CodeInvalidRequest},
		{"huge body", "POST", "/v1/runs", huge, 413, api.CodeBodyTooLarge},
		{"limit too high", "POST", "/v1/runs", `{"student":"alice","script":"ok.py","limits":{"memory_mb":999999}}`, 400, api.CodeLimitTooHigh},
		{"bad student", "POST", "/v1/runs", `{"student":"Robert'); DROP","script":"ok.py"}`, 400, api.CodeInvalidStudent},
		{"path out", "POST", "/v1/runs", `{"student":"alice","script":"../../etc/passwd"}`, 400, api.CodeInvalidPath},
		{"missing script", "POST", "/v1/runs", `{"student":"alice","script":"nope.py"}`, 404, api.CodeScriptNotFound},
		{"bad follow", "POST", "/v1/runs?follow=yes", `{"student":"alice","script":"ok.py"}`, 400, api.CodeInvalidRequest},
		{"followed start refused", "POST", "/v1/runs?follow=1", `{"student":"alice","script":"nope.py"}`, 404, api.CodeScriptNotFound},
		{"unknown run", "GET", "/v1/runs/deadbeef", "", 404, api.CodeNotFound},
		{"unknown run events", "GET", "/v1/runs/deadbeef/events", "", 404, api.CodeNotFound},
		{"unknown run stdin", "POST", "/v1/runs/deadbeef/stdin", "x", 404, api.CodeNotFound},
		{"unknown run stop", "POST", "/v1/runs/deadbeef/stop", "", 404, api.CodeNotFound},
		{"bad after", "GET", "/v1/runs/deadbeef/events?after=-3", "", 400, api.CodeInvalidRequest},
		{"bad state", "GET", "/v1/runs?state=zombie", "", 400, api.CodeInvalidRequest},
		{"bad limit", "GET", "/v1/runs?limit=0", "", 400, api.CodeInvalidRequest},
		{"unknown student", "GET", "/v1/students/nobody", "", 404, api.CodeStudentNotFound},
		{"run of an unknown student", "POST", "/v1/runs", `{"student":"nobody","script":"ok.py"}`, 404, api.CodeStudentNotFound},
		{"bad student put", "PUT", "/v1/students/Bad", "", 400, api.CodeInvalidStudent},
		{"unknown route", "GET", "/v2/runs", "", 404, api.CodeNotFound},
		{"wrong method", "DELETE", "/v1/runs", "", 405, api.CodeMethodNotAllowed},
		{"wrong method on a run", "GET", "/v1/runs/deadbeef/stop", "", 405, api.CodeMethodNotAllowed},
		{"double slash", "POST", "/v1/runs//stop", "", 400, api.CodeInvalidPath},
		{"dot segment", "GET", "/v1/runs/./x", "", 400, api.CodeInvalidPath},
		{"trailing slash", "GET", "/v1/runs/", "", 404, api.CodeNotFound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(ctxT(t, 10*time.Second), c.method, "http://idexd"+c.path, strings.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var eb api.ErrorBody
			if err := json.NewDecoder(resp.Body).Decode(&eb); err != nil || eb.Error == nil {
				t.Fatalf("status %d, body not an error body: %v", resp.StatusCode, err)
			}
			if resp.StatusCode != c.status || eb.Error.Code != c.code || eb.Error.Message == "" {
				t.Fatalf("got %d %s %q, want %d %s", resp.StatusCode, eb.Error.Code, eb.Error.Message, c.status, c.code)
			}
		})
	}
	h, err := client.New(srv.Socket).Health(ctxT(t, 5*time.Second))
	if err != nil || h.Status != api.HealthOK || h.RunsActive != 0 {
		t.Fatalf("daemon after bad input: %+v %v", h, err)
	}
	if n := env.Locks.Held(); n != 0 {
		t.Fatalf("locks held after bad input: %d", n)
	}
	if _, err := os.Stat(env.Dirs.Workdir("nobody")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused run made the directory of a student nobody created: %v", err)
	}
}

// TestReaderThatNeverReads: a client opens a flooding run's stream and
// never reads. Another student's run is not slowed, the flood run still
// ends by its output limit, and the stuck stream is cut off.
func TestReaderThatNeverReads(t *testing.T) {
	env := testutil.NewEnv(t)
	srv := env.Serve(t, func(c *server.Config) { c.StreamWriteTimeout = time.Second })
	c := client.New(srv.Socket)
	ctx := ctxT(t, 60*time.Second)
	env.WriteScript(t, "flood", "f.py", "import sys\nwhile True: sys.stdout.write('y' * 4096)\n")
	env.WriteScript(t, "quiet", "q.py", "print('fine')\n")
	r, err := c.StartRun(ctx, api.RunRequest{Student: "flood", Script: "f.py", Limits: api.Limits{OutputKB: 8192}})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("unix", srv.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "GET /v1/runs/%s/events HTTP/1.1\r\nHost: idexd\r\n\r\n", r.ID); err != nil {
		t.Fatal(err)
	}
	// Never read conn. Meanwhile another run starts and ends normally.
	q, err := c.StartRun(ctx, api.RunRequest{Student: "quiet", Script: "q.py"})
	if err != nil {
		t.Fatal(err)
	}
	evs, err := c.Events(ctx, q.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	out, last, _ := collect(t, evs)
	if out != "fine\n" || last.Run.Reason != api.ReasonExited {
		t.Fatalf("quiet run: %q %s", out, last.Run.Reason)
	}
	// The test's own reader is cut off too when the host starves it for
	// longer than the stream timeout (seen at a load average over 60): it
	// then resumes after the last event it got, as a web tier would.
	out, last = "", api.Event{}
	for after := int64(0); last.Type != api.EventEnd; {
		evs, err := c.Events(ctx, r.ID, after)
		if err != nil {
			t.Fatal(err)
		}
		for {
			ev, err := evs.Next()
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("events of the flood run: %v", err)
				}
				break
			}
			if ev.Type == api.EventStdout || ev.Type == api.EventStderr {
				out += string(ev.Bytes())
			}
			last, after = ev, ev.Seq
		}
		evs.Close()
	}
	if last.Run.Reason != api.ReasonOutputLimit || len(out) != 8192<<10 {
		t.Fatalf("flood run ended %s with %d bytes, want output_limit with 8 MiB", last.Run.Reason, len(out))
	}
	// The stuck reader has not read for longer than the stream timeout
	// (whatever the speed of the steps above), so the server has given up
	// on it: reading now drains what was buffered and then meets EOF.
	time.Sleep(3 * time.Second)
	if err := conn.SetReadDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, conn)
	if err != nil {
		t.Fatalf("stuck reader: %v after %d bytes, want the server to close the stream", err, n)
	}
	if n >= 8192<<10 {
		t.Fatalf("stuck reader got the whole stream (%d bytes): it was not cut off", n)
	}
}

var pythonBlock = regexp.MustCompile("(?s)```python\n(.*?)```")
var outputBlock = regexp.MustCompile("(?s)It prints:\n\n```\n(.*?)```")

// TestPythonExample runs the Python-stdlib example of docs/protocol.md as
// printed and compares what it prints with what the document says.
func TestPythonExample(t *testing.T) {
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	code := pythonBlock.FindSubmatch(doc)
	want := outputBlock.FindSubmatch(doc)
	if code == nil || want == nil {
		t.Fatal("docs/protocol.md has no python example or no expected output")
	}
	env := testutil.NewEnv(t)
	srv := env.Serve(t)
	cmd := exec.CommandContext(ctxT(t, 60*time.Second), testutil.Interpreter, "-c", string(code[1]))
	cmd.Env = []string{"IDEX_SOCKET=" + srv.Socket, "PATH=/usr/bin:/bin"}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("example failed: %v\n%s", err, stderr.String())
	}
	if string(out) != string(want[1]) {
		t.Fatalf("example printed:\n%s\nthe document says:\n%s", out, want[1])
	}
}

func FuzzDecodeRunRequest(f *testing.F) {
	for _, s := range []string{
		`{"student":"alice","script":"main.py"}`,
		`{"student":"alice","script":"main.py","args":["a","b"],"mode":"repl","limits":{"memory_mb":64}}`,
		`{"student":1}`, `[]`, `null`, `{"student":"a"} x`, `{"limits":{"pids":-1}}`, "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := server.DecodeRunRequest(bytes.NewReader(body))
		if err != nil {
			e := api.AsError(err)
			if e.Code != api.CodeInvalidRequest && e.Code != api.CodeBodyTooLarge {
				t.Fatalf("decode error with code %s: %v", e.Code, err)
			}
			return
		}
		// What decodes must survive a round trip unchanged.
		again, err := server.DecodeRunRequest(bytes.NewReader(api.MustJSON(req)))
		if err != nil {
			t.Fatalf("re-decode of %+v: %v", req, err)
		}
		if fmt.Sprint(again) != fmt.Sprint(req) {
			t.Fatalf("round trip changed %+v into %+v", req, again)
		}
	})
}

// TestStreamOutlivesReadTimeout: a follower of a run longer than the
// server's read timeout gets every event to the end.
func TestStreamOutlivesReadTimeout(t *testing.T) {
	env := testutil.NewEnv(t)
	srv := env.Serve(t, func(c *server.Config) { c.ReadTimeout = time.Second })
	c := client.New(srv.Socket)
	ctx := ctxT(t, 30*time.Second)
	env.WriteScript(t, "alice", "slow.py", "import time\nfor i in range(6):\n    print(i)\n    time.sleep(0.5)\n")
	r, err := c.StartRun(ctx, api.RunRequest{Student: "alice", Script: "slow.py"})
	if err != nil {
		t.Fatal(err)
	}
	evs, err := c.Events(ctx, r.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	out, last, _ := collect(t, evs)
	if out != "0\n1\n2\n3\n4\n5\n" || last.Type != api.EventEnd {
		t.Fatalf("stream gave %q ending with %s", out, last.Type)
	}
}

// TestEventStreamEdges: a stream's headers come at once, before the
// program prints anything (it waits for input here), and a reader that
// reconnects after the end event gets an empty stream that ends, not one
// that waits for ever.
func TestEventStreamEdges(t *testing.T) {
	env := testutil.NewEnv(t)
	srv := env.Serve(t)
	c := client.New(srv.Socket)
	ctx := ctxT(t, 60*time.Second)
	env.WriteScript(t, "alice", "ask.py", "print('got', input())\n")
	r, err := c.StartRun(ctx, api.RunRequest{Student: "alice", Script: "ask.py", Limits: api.Limits{WallSeconds: 600}})
	if err != nil {
		t.Fatal(err)
	}
	// The program prints nothing until it gets a line: the headers must
	// not wait for it. (The guard only ends a hang; it measures nothing.)
	opened := make(chan *client.Events, 1)
	go func() {
		evs, err := c.Events(ctx, r.ID, 0)
		if err != nil {
			t.Errorf("events: %v", err)
		}
		opened <- evs
	}()
	var evs *client.Events
	select {
	case evs = <-opened:
	case <-time.After(20 * time.Second):
		t.Fatal("the event stream sent no headers while the program waited for input")
	}
	if evs == nil {
		t.Fatal("no stream")
	}
	if err := c.WriteStdin(ctx, r.ID, []byte("x\n"), true); err != nil {
		t.Fatal(err)
	}
	out, last, _ := collect(t, evs)
	if out != "got x\n" || last.Type != api.EventEnd {
		t.Fatalf("stream gave %q ending with %+v", out, last)
	}
	// Reconnecting with the end's seq: nothing is missing, and the stream
	// says so by ending.
	actx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	again, err := c.Events(actx, r.ID, last.Seq)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if ev, err := again.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("events after the end: %+v %v, want io.EOF at once", ev, err)
	}
}

// TestStartAndFollow: POST /v1/runs?follow=1 answers at once with the run
// (before the program prints anything), then streams exactly the events
// GET events?after=0 gives, to the end; the wire has the started event
// first, at seq 0.
func TestStartAndFollow(t *testing.T) {
	env := testutil.NewEnv(t)
	srv := env.Serve(t)
	c := client.New(srv.Socket)
	ctx := ctxT(t, 60*time.Second)
	env.WriteScript(t, "alice", "ask.py", "import sys\nprint('got', input())\nprint('oops', file=sys.stderr)\n")
	type started struct {
		r   api.Run
		evs *client.Events
		err error
	}
	got := make(chan started, 1)
	go func() {
		r, evs, err := c.StartRunFollow(ctx, api.RunRequest{Student: "alice", Script: "ask.py", Limits: api.Limits{WallSeconds: 600}})
		got <- started{r, evs, err}
	}()
	var st started
	select {
	case st = <-got:
	case <-time.After(20 * time.Second):
		t.Fatal("no answer to a followed start while the program waited for input")
	}
	if st.err != nil {
		t.Fatal(st.err)
	}
	if st.r.ID == "" || st.r.State != api.StateRunning || st.r.Student != "alice" {
		t.Fatalf("followed start answered %+v, want the running run", st.r)
	}
	if err := c.WriteStdin(ctx, st.r.ID, []byte("x\n"), true); err != nil {
		t.Fatal(err)
	}
	out, last, all := collect(t, st.evs)
	if err := st.evs.Close(); err != nil {
		t.Fatal(err)
	}
	if out != "got x\noops\n" || last.Type != api.EventEnd || last.Run == nil || last.Run.ID != st.r.ID || last.Run.Reason != api.ReasonExited {
		t.Fatalf("followed stream gave %q ending with %+v", out, last)
	}
	again, err := c.AllEvents(ctx, st.r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != len(all) {
		t.Fatalf("followed stream had %d events, GET events %d", len(all), len(again))
	}
	for i := range all {
		if all[i].Seq != int64(i+1) || all[i].Seq != again[i].Seq || all[i].Type != again[i].Type || string(all[i].Bytes()) != string(again[i].Bytes()) {
			t.Fatalf("event %d: followed %+v, GET events %+v", i, all[i], again[i])
		}
	}

	// On the wire: 201, NDJSON, the started event at seq 0, then the rest.
	env.WriteScript(t, "alice", "hi.py", "print('hi')\n")
	req, err := http.NewRequestWithContext(ctx, "POST", "http://idexd/v1/runs?follow=1", strings.NewReader(`{"student":"alice","script":"hi.py"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := rawHTTP(srv.Socket).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("followed start: %d %q, want 201 application/x-ndjson", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	dec := json.NewDecoder(resp.Body)
	var lines []api.Event
	for {
		var ev api.Event
		if err := dec.Decode(&ev); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, ev)
	}
	if len(lines) < 3 {
		t.Fatalf("followed start on the wire: %+v, want started, output and end", lines)
	}
	// Python may write "hi" and "\n" apart: the output is what the stdout
	// events between the first and the last say together.
	var stdout string
	for _, ev := range lines[1 : len(lines)-1] {
		if ev.Type == api.EventStdout {
			stdout += string(ev.Bytes())
		}
	}
	if lines[0].Seq != 0 || lines[0].Type != api.EventStarted || lines[0].Run == nil ||
		stdout != "hi\n" || lines[len(lines)-1].Type != api.EventEnd || lines[len(lines)-1].Run.ID != lines[0].Run.ID {
		t.Fatalf("followed start on the wire: %+v (stdout %q)", lines, stdout)
	}
	// Run after run through one client, one connection: the end event and
	// the body's end come together, and Close reads to the end, so the
	// transport keeps the connection. A new one per run costs the daemon
	// an accept, a goroutine and its buffers each time.
	var conns, reused atomic.Int32
	trace := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		conns.Add(1)
		if info.Reused {
			reused.Add(1)
		}
	}})
	one := client.New(srv.Socket)
	for range 4 {
		_, evs, err := one.StartRunFollow(trace, api.RunRequest{Student: "alice", Script: "hi.py"})
		if err != nil {
			t.Fatal(err)
		}
		if _, last, _ := collect(t, evs); last.Type != api.EventEnd {
			t.Fatalf("followed run ended with %+v", last)
		}
		if err := evs.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if conns.Load() != 4 || reused.Load() != 3 {
		t.Fatalf("4 followed runs through one client: %d connections taken, %d of them reused; want 4 and 3", conns.Load(), reused.Load())
	}
	if n := env.Locks.Held(); n != 0 {
		t.Fatalf("locks held after the runs: %d", n)
	}
}

// TestEndComesWithTheBodysEnd: the end event and the chunked body's
// terminator reach a waiting reader in one read. Apart, a client that
// closes the stream after the end event, before the terminator came,
// loses its connection, and its next run costs the daemon a new one.
func TestEndComesWithTheBodysEnd(t *testing.T) {
	env := testutil.NewEnv(t)
	srv := env.Serve(t)
	// The reader is already waiting when the program ends.
	env.WriteScript(t, "alice", "late.py", "import time\ntime.sleep(0.3)\nprint('hi')\n")
	conn, err := net.Dial("unix", srv.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"student":"alice","script":"late.py"}`
	if _, err := fmt.Fprintf(conn, "POST /v1/runs?follow=1 HTTP/1.1\r\nHost: idexd\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body); err != nil {
		t.Fatal(err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	var all []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("read after %q: %v", all, err)
		}
		all = append(all, buf[:n]...)
		if bytes.Contains(buf[:n], []byte(`"type":"end"`)) {
			if !bytes.HasSuffix(buf[:n], []byte("\r\n0\r\n\r\n")) {
				t.Fatalf("the read with the end event was %q: want the body's terminator in it", buf[:n])
			}
			return
		}
	}
}

// TestRoleFromGroupsAtConnect: a peer's role comes from the groups it had
// when it connected, read with the connection (SO_PEERGROUPS), not from
// /proc/<pid> afterwards, which may be gone or another process's by then.
// A client (client group as a supplementary group only) connects, hands
// its end of the connection over and exits before the server accepts.
func TestRoleFromGroupsAtConnect(t *testing.T) {
	env := testutil.NewEnv(t)
	sock := filepath.Join(testutil.TraversableDir(t), "idexd.sock")
	srv := server.New(server.Config{Engine: env.Engine, Log: env.Config.Log, ClientGID: testutil.ClientGID, AdminGID: testutil.AdminGID})
	ln, err := server.Listen(sock, testutil.ClientGID)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs := os.NewFile(uintptr(pair[0]), "mine"), os.NewFile(uintptr(pair[1]), "theirs")
	defer mine.Close()
	cmd := exec.Command(testutil.Interpreter, "-c", fmt.Sprintf(`
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(%q)
socket.send_fds(socket.socket(fileno=3), [b"x"], [s.fileno()])
`, sock))
	cmd.Dir = "/"
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 5000, Gid: 5000, Groups: []uint32{testutil.ClientGID}}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("peer: %v: %s", err, out)
	}
	if err := theirs.Close(); err != nil {
		t.Fatal(err)
	}
	// The peer is gone (reaped); only now does the server accept.
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(int(mine.Fd()), buf, oob, 0)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control message: %v %d", err, len(msgs))
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("passed fd: %v %v", err, fds)
	}
	cf := os.NewFile(uintptr(fds[0]), "peer")
	conn, err := net.FileConn(cf)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := cf.Close(); err != nil {
		t.Fatal(err)
	}
	hs := srv.HTTPServer()
	go func() { _ = hs.Serve(ln) }() // ends with Close below
	defer hs.Close()
	if _, err := fmt.Fprint(conn, "GET /v1/health HTTP/1.1\r\nHost: idexd\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("a client whose process is gone got %d %s: its role must come from the connection", resp.StatusCode, body)
	}
}

// TestLogSaysWho: the daemon's log says when a student and its uid are
// created (once), and which peer stopped a run, drained or resumed; a
// refusal names the peer without an empty error.
func TestLogSaysWho(t *testing.T) {
	logs := &testutil.LogBuffer{}
	env := testutil.NewEnv(t, func(c *run.Config) { c.Log = logs.Logger() })
	srv := env.Serve(t)
	c := client.New(srv.Socket)
	ctx := ctxT(t, 60*time.Second)
	for range 2 {
		if _, err := c.EnsureStudent(ctx, "alice"); err != nil {
			t.Fatal(err)
		}
	}
	created := logs.Lines("student created")
	if len(created) != 1 || !strings.Contains(created[0], "student=alice uid=200000") {
		t.Fatalf("student created lines: %q, want one naming alice and uid 200000", created)
	}
	env.WriteScript(t, "alice", "s.py", "import time\ntime.sleep(60)\n")
	r, err := c.StartRun(ctx, api.RunRequest{Student: "alice", Script: "s.py"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.StopRun(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	for msg, want := range map[string]string{
		"stop requested":             "run=" + r.ID,
		"draining: new runs refused": "peer_uid=0",
		"resumed: accepting runs":    "peer_uid=0",
	} {
		got := logs.Lines(msg)
		if len(got) != 1 || !strings.Contains(got[0], want) || !strings.Contains(got[0], "peer_uid=0") || !strings.Contains(got[0], "peer_pid=") {
			t.Errorf("%q lines: %q, want one naming the peer (uid 0, its pid) and %s", msg, got, want)
		}
	}
	if err := os.Chmod(srv.Socket, 0o666); err != nil {
		t.Fatal(err)
	}
	if got := asUID(t, srv.Socket, 5002, 5002, nil, "GET", "/v1/health"); got != "403 forbidden" {
		t.Fatalf("outsider: %q", got)
	}
	refused := logs.Lines("request refused")
	if len(refused) != 1 || !strings.Contains(refused[0], "peer_uid=5002") || strings.Contains(refused[0], "peer_err") {
		t.Fatalf("refusal lines: %q, want one naming uid 5002 and no peer_err", refused)
	}
}

// TestFairAdmissionOverTheSocket: the fair-share refusals as the web tier
// sees them: 429 with the student's running runs (student_busy) and with
// Retry-After (rate_limited); an admin's stop of a student, logged with
// who asked.
func TestFairAdmissionOverTheSocket(t *testing.T) {
	logs := &testutil.LogBuffer{}
	env := testutil.NewEnv(t, func(c *run.Config) {
		c.Log = logs.Logger()
		c.Fair = run.Fair{MaxPerStudent: 1, StartsPerMinute: 2}
	})
	srv := env.Serve(t)
	c := client.New(srv.Socket)
	ctx := ctxT(t, 60*time.Second)
	env.WriteScript(t, "alice", "w.py", "input()\n")
	env.WriteScript(t, "alice", "x.py", "pass\n")
	r, err := c.StartRun(ctx, api.RunRequest{Student: "alice", Script: "w.py", Limits: api.Limits{WallSeconds: 300}})
	if err != nil {
		t.Fatal(err)
	}
	// post answers the status, the Retry-After header and the error.
	post := func() (int, string, *api.Error) {
		t.Helper()
		resp, err := rawHTTP(srv.Socket).Post("http://idexd/v1/runs", "application/json", strings.NewReader(`{"student":"alice","script":"x.py"}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close() //nolint:errcheck // test
		var eb api.ErrorBody
		if err := json.NewDecoder(resp.Body).Decode(&eb); err != nil || eb.Error == nil {
			t.Fatalf("decode error body (HTTP %d): %v", resp.StatusCode, err)
		}
		return resp.StatusCode, resp.Header.Get("Retry-After"), eb.Error
	}
	status, _, e := post()
	if status != http.StatusTooManyRequests || e.Code != api.CodeStudentBusy || len(e.RunIDs) != 1 || e.RunIDs[0] != r.ID {
		t.Errorf("a second run of alice: HTTP %d %+v, want 429 student_busy naming %s", status, e, r.ID)
	}
	out, err := c.StopStudent(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Stopped) != 1 || out.Stopped[0].ID != r.ID || out.Stopped[0].Reason != api.ReasonStopped {
		t.Errorf("stop of alice's runs: %+v, want %s stopped", out, r.ID)
	}
	for _, msg := range []string{"stop of every run of a student requested", "stopped every run of a student"} {
		if got := logs.Lines(msg); len(got) != 1 || !strings.Contains(got[0], "student=alice") || !strings.Contains(got[0], "peer_uid=0") {
			t.Errorf("%q lines: %q, want one naming alice and the peer", msg, got)
		}
	}
	// Two starts of alice's bucket are spent (w.py, then x.py refused
	// student_busy took none): one more fits, the next is refused.
	if _, err := c.StartRun(ctx, api.RunRequest{Student: "alice", Script: "x.py"}); err != nil {
		t.Fatal(err)
	}
	// Once it ended, the cap lets alice start again: the rate does not.
	deadline := time.Now().Add(30 * time.Second)
	for env.Engine.Active() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	status, retry, e := post()
	if status != http.StatusTooManyRequests || e.Code != api.CodeRateLimited || e.RetryAfterS < 1 || retry != fmt.Sprint(e.RetryAfterS) {
		t.Errorf("a third start within a minute: HTTP %d Retry-After %q %+v, want 429 rate_limited with Retry-After", status, retry, e)
	}
	if _, err := c.StartRun(ctx, api.RunRequest{Student: "alice", Script: "x.py"}); !errors.Is(err, api.ErrRateLimited) {
		t.Errorf("the Go client: %v, want rate_limited", err)
	}
}
