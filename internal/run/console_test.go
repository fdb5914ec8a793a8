package run_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/testutil"
)

// merged is a run's output across streams, in event order, each piece
// tagged o| or e| at a change of stream.
func merged(evs []api.Event) string {
	var b strings.Builder
	var last api.EventType
	for _, ev := range evs {
		if ev.Type != api.EventStdout && ev.Type != api.EventStderr {
			continue
		}
		if ev.Type != last {
			b.WriteString(map[api.EventType]string{api.EventStdout: "o|", api.EventStderr: "e|"}[ev.Type])
			last = ev.Type
		}
		b.Write(ev.Bytes())
	}
	return b.String()
}

// hostMerged runs src on the host with stdout and stderr on one pipe:
// what a terminal shows, in write order.
func hostMerged(t *testing.T, dir, script string) string {
	t.Helper()
	cmd := exec.Command("/usr/bin/python3", script)
	cmd.Dir = dir
	cmd.Env = []string{"PYTHONUNBUFFERED=1", "LC_ALL=C.UTF-8", "PATH=/usr/bin:/bin"}
	out, _ := cmd.CombinedOutput() // a traceback exits 1: the bytes are what matter
	if len(out) == 0 {
		t.Fatalf("host run of %s printed nothing", script)
	}
	return string(out)
}

func plain(evs []api.Event) string {
	var b strings.Builder
	for _, ev := range evs {
		if ev.Type == api.EventStdout || ev.Type == api.EventStderr {
			b.Write(ev.Bytes())
		}
	}
	return b.String()
}

// TestOutputInWriteOrder: stdout and stderr reach the events in the order
// the program wrote them (issue 13): order.py in 100 of 100 runs, 1000
// alternations, threads, and the REPL's results before the next prompt.
func TestOutputInWriteOrder(t *testing.T) {
	env := testutil.NewEnv(t, warm(2))
	order := "for i in range(3): print(\"line\", i)\nprint(1/0)\n"
	dir := env.WriteScript(t, "alice", "order.py", order)
	env.WriteScript(t, "alice", "alternate.py", `import sys
for i in range(1000):
    sys.stdout.write("o%d\n" % i); sys.stdout.flush()
    sys.stderr.write("e%d\n" % i); sys.stderr.flush()
`)
	env.WriteScript(t, "alice", "threads.py", `import sys, threading
lock = threading.Lock()
def w(n):
    for i in range(200):
        with lock:
            s = sys.stdout if i % 2 else sys.stderr
            s.write("%d-%d\n" % (n, i)); s.flush()
ts = [threading.Thread(target=w, args=(n,)) for n in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
`)
	if got := hostMerged(t, strings.TrimSuffix(dir, "/order.py"), "order.py"); !strings.HasPrefix(got, "line 0\nline 1\nline 2\nTraceback") {
		t.Fatalf("order.py on the host: %q", got)
	}
	// One run per (student, script) at a time: four students run it at
	// once; each compared with the host's run in the same directory.
	var wants [4]string
	for k := 0; k < 4; k++ {
		d := env.WriteScript(t, fmt.Sprintf("s%d", k), "order.py", order)
		wants[k] = hostMerged(t, strings.TrimSuffix(d, "/order.py"), "order.py")
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	bad := 0
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res := runToEnd(t, env, api.RunRequest{Student: fmt.Sprintf("s%d", i%4), Script: "order.py"})
			if got, want := plain(res.Events), wants[i%4]; got != want {
				mu.Lock()
				bad++
				if bad == 1 {
					t.Errorf("order.py out of order:\n%q\nwant (host, one pipe):\n%q", got, want)
				}
				mu.Unlock()
			}
		}(i)
		if i%4 == 3 {
			wg.Wait()
		}
	}
	wg.Wait()
	t.Logf("order.py: %d of 100 runs in write order", 100-bad)

	res := runToEnd(t, env, api.RunRequest{Student: "alice", Script: "alternate.py", Limits: api.Limits{OutputKB: 64}})
	var b strings.Builder
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&b, "o|o%d\ne|e%d\n", i, i)
	}
	if got := merged(res.Events); got != b.String() {
		t.Errorf("alternate.py: not 1000 alternations in order (%d bytes, want %d); first 200: %q", len(got), b.Len(), got[:min(200, len(got))])
	}

	res = runToEnd(t, env, api.RunRequest{Student: "alice", Script: "threads.py"})
	// Under the lock, each thread's lines are written in its own order; the
	// streams must carry them in that order too.
	next := map[string]int{}
	for _, line := range strings.Split(strings.TrimSuffix(plain(res.Events), "\n"), "\n") {
		var n, i int
		if _, err := fmt.Sscanf(line, "%d-%d", &n, &i); err != nil {
			t.Fatalf("threads.py printed %q: %v", line, err)
		}
		k := fmt.Sprint(n)
		if i != next[k] {
			t.Fatalf("threads.py: thread %d's line %d came when %d was due", n, i, next[k])
		}
		next[k]++
	}
	if len(next) != 4 {
		t.Errorf("threads.py: lines of %d threads, want 4", len(next))
	}
}

// TestReplResultsBeforePrompt: in repl mode each result is shown before the
// next ">>> " prompt (the prompt is on stderr), lines sent 250 ms apart.
func TestReplResultsBeforePrompt(t *testing.T) {
	env := testutil.NewEnv(t, warm(1))
	env.WriteScript(t, "bob", "start.py", "x = 0\n")
	r := startRun(t, env, api.RunRequest{Student: "bob", Script: "start.py", Mode: api.ModeRepl})
	ctx := ctxT(t, 60*time.Second)
	for i := 1; i <= 15; i++ {
		time.Sleep(250 * time.Millisecond)
		if err := r.WriteStdin(ctx, []byte(fmt.Sprintf("%d * 1000\n", i)), false); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.WriteStdin(ctx, nil, true); err != nil {
		t.Fatal(err)
	}
	res := testutil.Collect(ctx, t, r)
	got := plain(res.Events)
	ok := 0
	for i := 1; i <= 15; i++ {
		if strings.Contains(got, fmt.Sprintf("%d\n>>> ", i*1000)) {
			ok++
		}
	}
	if ok != 15 {
		t.Errorf("%d of 15 results before the next prompt; output:\n%s", ok, got)
	}
}

// TestTrickleIsBounded: a program writing one byte at a time makes few
// events, not one per byte (issue 14.9), even with a reader following.
func TestTrickleIsBounded(t *testing.T) {
	env := testutil.NewEnv(t, warm(1))
	env.WriteScript(t, "carol", "trickle.py", `import os, time
for i in range(3000):
    os.write(1, b".")
    time.sleep(0.0011)
`)
	r := startRun(t, env, api.RunRequest{Student: "carol", Script: "trickle.py"})
	res := testutil.Collect(ctxT(t, 60*time.Second), t, r)
	if res.Stdout != strings.Repeat(".", 3000) {
		t.Fatalf("trickle.py printed %d bytes, want 3000", len(res.Stdout))
	}
	// 3000 writes over about 3.3 s (more on a slow machine), one follower:
	// at most one event per wake-up interval (10 ms), plus the end.
	n := len(res.Events)
	wall := time.Duration(res.Run.WallMS) * time.Millisecond
	if limit := int(wall/(10*time.Millisecond)) + 2; n > limit {
		t.Errorf("%d events for 3000 one-byte writes in %s, want at most %d (one per 10 ms)", n, wall, limit)
	}
	if n > 1000 {
		t.Errorf("%d events for 3000 one-byte writes: not coalesced", n)
	}
	t.Logf("3000 one-byte writes in %s: %d events", wall, n)
}

// TestInterrupt: Ctrl-C reaches the program as KeyboardInterrupt, which
// it may catch and go on; in the REPL it ends the computation, not the
// session.
func TestInterrupt(t *testing.T) {
	env := testutil.NewEnv(t, warm(1))
	// "ready" is printed inside the try: a Ctrl-C sent as soon as it is
	// read can arrive before print returns.
	env.WriteScript(t, "dave", "bye.py", `import time
try:
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
except KeyboardInterrupt:
    print("Goodbye!")
`)
	r := startRun(t, env, api.RunRequest{Student: "dave", Script: "bye.py"})
	waitOutput(t, r, "ready\n", 30*time.Second)
	if err := r.Interrupt(); err != nil {
		t.Fatal(err)
	}
	res := testutil.Collect(ctxT(t, 30*time.Second), t, r)
	if res.Stdout != "ready\nGoodbye!\n" || res.Run.Reason != api.ReasonExited || exitCode(res.Run) != "0" {
		t.Errorf("bye.py: %q, ended %s exit %s; want Goodbye! and exit 0", res.Stdout, res.Run.Reason, exitCode(res.Run))
	}
	if err := r.Interrupt(); !errors.Is(err, api.ErrRunEnded) {
		t.Errorf("interrupt of an ended run: %v, want run_ended", err)
	}

	env.WriteScript(t, "dave", "calc.py", "n = 0\n")
	r = startRun(t, env, api.RunRequest{Student: "dave", Script: "calc.py", Mode: api.ModeRepl})
	ctx := ctxT(t, 30*time.Second)
	// "spin" is printed from inside the loop: a Ctrl-C sent as soon as it
	// is read must not reach the REPL still compiling the loop (under
	// load it once did, and n stayed 0).
	loop := "while True:\n    n += 1\n    if n == 1: print('spin', flush=True)\n\n"
	if err := r.WriteStdin(ctx, []byte(loop), false); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, r, "spin\n", 30*time.Second)
	if err := r.Interrupt(); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteStdin(ctx, []byte("print('still here', n > 0)\n"), true); err != nil {
		t.Fatal(err)
	}
	res = testutil.Collect(ctx, t, r)
	if !strings.Contains(res.Stderr, "KeyboardInterrupt") || !strings.Contains(res.Stdout, "still here True") || res.Run.Reason != api.ReasonExited {
		t.Errorf("repl after Ctrl-C: stdout %q stderr %q reason %s; want KeyboardInterrupt, then the session going on", res.Stdout, res.Stderr, res.Run.Reason)
	}
}

// TestEndsExplained: an end other than exit 0 carries a sentence for the
// student, in the end event and in the record; a live run shows what it
// uses now.
func TestEndsExplained(t *testing.T) {
	env := testutil.NewEnv(t, warm(1))
	env.WriteScript(t, "erin", "hog.py", `import time
x = bytearray(40 << 20)
for i in range(0, len(x), 4096):
    x[i] = 1
print("allocated", flush=True)
time.sleep(60)
`)
	r := startRun(t, env, api.RunRequest{Student: "erin", Script: "hog.py", Limits: api.Limits{WallSeconds: 10}})
	waitOutput(t, r, "allocated\n", 30*time.Second)
	live, err := env.Engine.GetRun(ctxT(t, 10*time.Second), r.ID())
	if err != nil {
		t.Fatal(err)
	}
	if live.MemoryBytes < 40<<20 || live.MemoryBytes > 400<<20 {
		t.Errorf("live run's memory_bytes %d, want about 40 MiB and more", live.MemoryBytes)
	}
	if live.Message != "" {
		t.Errorf("live run has message %q", live.Message)
	}
	res := testutil.Collect(ctxT(t, 30*time.Second), t, r)
	want := "Your program ran for more than 10 seconds and was stopped."
	if res.Run.Reason != api.ReasonTimedOut || res.Run.Message != want {
		t.Errorf("ended %s with message %q, want timed_out and %q", res.Run.Reason, res.Run.Message, want)
	}
	if res.Run.MemoryBytes != 0 {
		t.Errorf("ended run's memory_bytes %d, want 0 (peak_memory_bytes is the figure then)", res.Run.MemoryBytes)
	}
	got, err := env.Engine.ListRuns(ctxT(t, 10*time.Second), api.RunFilter{Student: "erin", State: api.StateEnded})
	if err != nil || len(got) != 1 || got[0].Message != want {
		t.Errorf("listed: %+v %v, want one run with message %q", got, err, want)
	}
}

// TestCwdAndArgv: a run may start in a directory beneath the student's
// (an IDE runs a script from its own folder), the script is found
// relative to it, and sys.argv[0] is the path as the student gave it.
func TestCwdAndArgv(t *testing.T) {
	env := testutil.NewEnv(t, warm(1))
	src := "import os, sys\nprint(sys.argv[0], os.path.basename(os.getcwd()), open('data.txt').read())\n"
	env.WriteScript(t, "frank", "project1/main.py", src)
	env.WriteScript(t, "frank", "project1/data.txt", "p1")
	top := env.WriteScript(t, "frank", "main.py", src)
	env.WriteScript(t, "frank", "data.txt", "top")
	// A symlink planted by a run, out of the directory or not, is no cwd.
	if err := os.Symlink("/etc", filepath.Join(filepath.Dir(top), "out")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("project1", filepath.Join(filepath.Dir(top), "in")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cwd, script, want string
	}{
		{"project1", "./main.py", "./main.py project1 p1\n"},
		{"project1", "main.py", "main.py project1 p1\n"},
		{"project1", "../main.py", "../main.py project1 p1\n"},
		{"", "./main.py", "./main.py frank top\n"},
		{"", "project1/main.py", "project1/main.py frank top\n"},
	} {
		res := runToEnd(t, env, api.RunRequest{Student: "frank", Script: c.script, Cwd: c.cwd})
		if res.Stdout != c.want || res.Run.Reason != api.ReasonExited {
			t.Errorf("cwd %q script %q: %q (%s, stderr %q), want %q", c.cwd, c.script, res.Stdout, res.Run.Reason, res.Stderr, c.want)
		}
	}
	ctx := ctxT(t, 10*time.Second)
	for _, cwd := range []string{"..", "/tmp", "project1/../..", "nope", "main.py", "out", "in"} {
		_, err := env.Engine.Start(ctx, api.RunRequest{Student: "frank", Script: "main.py", Cwd: cwd})
		if !errors.Is(err, api.ErrInvalidPath) {
			t.Errorf("cwd %q: %v, want invalid_path", cwd, err)
		}
	}
	assertClean(t, env)
}

// TestUserName: inside a run the student's uid and gid have the student's
// name (pwd, grp, whoami, Path.owner), through the run's own /etc/passwd
// and /etc/group; the host's files are untouched and the run's /tmp holds
// nothing of it.
func TestUserName(t *testing.T) {
	env := testutil.NewEnv(t, warm(1))
	before := map[string][]byte{}
	for _, f := range []string{"/etc/passwd", "/etc/group"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		before[f] = b
	}
	env.WriteScript(t, "grace", "who.py", `import grp, os, pathlib, pwd, subprocess
open("mine.txt", "w").close()
print(pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name, pathlib.Path("mine.txt").owner())
print(subprocess.run(["whoami"], capture_output=True, text=True).stdout.strip())
print(pwd.getpwnam("grace").pw_dir == os.environ["HOME"], os.listdir("/tmp"))
try:
    open("/etc/passwd", "a").write("evil::0:0::/:/bin/sh\n")
except OSError as e:
    print(type(e).__name__)
`)
	res := runToEnd(t, env, api.RunRequest{Student: "grace", Script: "who.py"})
	want := "grace grace grace\ngrace\nTrue []\nPermissionError\n"
	if res.Stdout != want || res.Run.Reason != api.ReasonExited {
		t.Errorf("who.py: %q (%s, stderr %q), want %q", res.Stdout, res.Run.Reason, res.Stderr, want)
	}
	for f, b := range before {
		after, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if string(after) != string(b) {
			t.Errorf("the host's %s changed during the run", f)
		}
	}
}

// TestInputWaits: a program blocked reading its empty stdin is waiting for
// input (waiting_input, input_wait / input_resume events), the wall limit
// does not count that time, an abandoned program ends input_timeout, and
// a program that sleeps, reads a file or reads a closed stdin is never
// said to wait.
func TestInputWaits(t *testing.T) {
	env := testutil.NewEnv(t, warm(1), func(c *run.Config) { c.InputWait = 2 * time.Second })
	env.WriteScript(t, "heidi", "calc.py", `for i in range(3):
    n = int(input("n? "))
    print(n * 2, flush=True)
`)
	// Three answers 1.5 s apart: 4.5 s in all under a 3 s wall limit.
	r := startRun(t, env, api.RunRequest{Student: "heidi", Script: "calc.py", Limits: api.Limits{WallSeconds: 3}})
	ctx := ctxT(t, 60*time.Second)
	for i := 1; i <= 3; i++ {
		deadline := time.Now().Add(20 * time.Second)
		for !r.Info().WaitingInput {
			if time.Now().After(deadline) {
				t.Fatalf("answer %d: the run never said it waits for input; events %+v", i, r.Info())
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(1500 * time.Millisecond)
		if err := r.WriteStdin(ctx, []byte(fmt.Sprintf("%d\n", i)), false); err != nil {
			t.Fatal(err)
		}
	}
	res := testutil.Collect(ctx, t, r)
	if res.Run.Reason != api.ReasonExited || res.Stdout != "n? 2\nn? 4\nn? 6\n" {
		t.Fatalf("calc.py ended %s printing %q (stderr %q), want exited with three answers", res.Run.Reason, res.Stdout, res.Stderr)
	}
	var kinds []string
	for _, ev := range res.Events {
		if ev.Type == api.EventInputWait || ev.Type == api.EventInputResume {
			kinds = append(kinds, string(ev.Type))
		}
	}
	if want := strings.Repeat("input_wait input_resume ", 3); strings.Join(kinds, " ")+" " != want {
		t.Errorf("input events %v, want %s", kinds, want)
	}
	if res.Run.InputWaitMS < 4000 || res.Run.WallMS < 4500 || res.Run.WaitingInput {
		t.Errorf("input_wait_ms %d, wall_ms %d, waiting %v: want >= 4000 of waits in >= 4500 ms, not waiting", res.Run.InputWaitMS, res.Run.WallMS, res.Run.WaitingInput)
	}

	env.WriteScript(t, "heidi", "abandoned.py", "input('name? ')\n")
	res = runToEnd(t, env, api.RunRequest{Student: "heidi", Script: "abandoned.py"})
	if res.Run.Reason != api.ReasonInputTimeout || res.Run.Message != "Your program waited too long for input and was stopped." {
		t.Errorf("abandoned.py ended %s (%q), want input_timeout after 2 s", res.Run.Reason, res.Run.Message)
	}

	env.WriteScript(t, "heidi", "busy.py", `import time, sys
time.sleep(0.5)
open(__file__).read()
sum(range(3_000_000))
print(sys.stdin.read() == "", flush=True)
time.sleep(0.5)
`)
	r = startRun(t, env, api.RunRequest{Student: "heidi", Script: "busy.py"})
	if err := r.WriteStdin(ctx, nil, true); err != nil {
		t.Fatal(err)
	}
	res = testutil.Collect(ctx, t, r)
	for _, ev := range res.Events {
		if ev.Type == api.EventInputWait {
			t.Errorf("busy.py never waits for input, yet: %+v", res.Events)
			break
		}
	}
	if res.Stdout != "True\n" || res.Run.InputWaitMS != 0 {
		t.Errorf("busy.py: %q, input_wait_ms %d", res.Stdout, res.Run.InputWaitMS)
	}
}

// TestTerminalMode: with "terminal", the program runs on a pty: isatty,
// TERM, the size, echo of what is typed, SIGWINCH on resize, Ctrl-C
// through the line discipline, and Ctrl-D as the end of input.
func TestTerminalMode(t *testing.T) {
	env := testutil.NewEnv(t, warm(1))
	env.WriteScript(t, "ivan", "tty.py", `import os, signal, sys
print(sys.stdin.isatty(), sys.stdout.isatty(), os.environ.get("TERM"), tuple(os.get_terminal_size()))
resized = []
signal.signal(signal.SIGWINCH, lambda *a: resized.append(tuple(os.get_terminal_size())))
print("ready", flush=True)
while not resized:
    signal.pause()
print("resized", resized[0])
name = input("name? ")
print("hello", name)
try:
    input("ctrl-c me ")
except KeyboardInterrupt:
    print("interrupted")
print("rest", repr(sys.stdin.read()))
`)
	r := startRun(t, env, api.RunRequest{Student: "ivan", Script: "tty.py", Terminal: &api.Terminal{Rows: 24, Cols: 80}})
	ctx := ctxT(t, 60*time.Second)
	waitOutput(t, r, "ready", 30*time.Second)
	if err := r.Resize(api.Terminal{Rows: 30, Cols: 100}); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, r, "name? ", 30*time.Second)
	if err := r.WriteStdin(ctx, []byte("Ada\r"), false); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, r, "ctrl-c me ", 30*time.Second)
	// A ^C typed before readline has set the terminal up can be lost, as
	// in a real terminal: type it once the program waits for input (which
	// also shows the wait is seen on a terminal: select on fd 0).
	for deadline := time.Now().Add(30 * time.Second); !r.Info().WaitingInput; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the run never said it waits for input at its terminal")
		}
	}
	if err := r.Interrupt(); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, r, "interrupted", 30*time.Second)
	if err := r.WriteStdin(ctx, []byte("last\r"), true); err != nil {
		t.Fatal(err)
	}
	res := testutil.Collect(ctx, t, r)
	want := "True True xterm-256color (80, 24)\r\nready\r\nresized (100, 30)\r\nname? Ada\r\nhello Ada\r\nctrl-c me ^Cinterrupted\r\nlast\r\nrest 'last\\n'\r\n"
	if res.Stdout != want || res.Stderr != "" || res.Run.Reason != api.ReasonExited {
		t.Errorf("tty.py: stdout %q stderr %q (%s),\nwant %q", res.Stdout, res.Stderr, res.Run.Reason, want)
	}
	if res.Run.Terminal == nil || *res.Run.Terminal != (api.Terminal{Rows: 30, Cols: 100}) {
		t.Errorf("run's terminal %+v, want the resized 30x100", res.Run.Terminal)
	}
	if err := r.Resize(api.Terminal{Rows: 30, Cols: 100}); !errors.Is(err, api.ErrRunEnded) {
		t.Errorf("resize of an ended run: %v, want run_ended", err)
	}
	if _, err := env.Engine.Start(ctx, api.RunRequest{Student: "ivan", Script: "tty.py", Terminal: &api.Terminal{Rows: 0, Cols: 80}}); !errors.Is(err, api.ErrInvalidRequest) {
		t.Errorf("a 0-row terminal: %v, want invalid_request", err)
	}
}
