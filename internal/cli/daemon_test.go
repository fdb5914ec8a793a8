package cli_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/testutil"
)

// served is a real engine and server (real cgroups, real processes) for
// idexctl to talk to.
func served(t *testing.T) (*testutil.Env, string) {
	t.Helper()
	env := testutil.NewEnv(t)
	return env, env.Serve(t).Socket
}

// endOf returns the run object of the end event in idexctl run --json
// output.
func endOf(t *testing.T, out string) api.Run {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev api.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("--json line %q: %v", line, err)
		}
		if ev.Type == api.EventEnd {
			return *ev.Run
		}
	}
	t.Fatalf("no end event in:\n%s", out)
	return api.Run{}
}

// TestRunArgsAndLimits: "--" ends idexctl's flags and is not the script's
// argument; flags after the script and global flags after the command
// work; every limit has a flag that reaches idexd.
func TestRunArgsAndLimits(t *testing.T) {
	env, sock := served(t)
	env.WriteScript(t, "alice", "argv.py", "import sys\nprint(sys.argv)\n")

	out, errOut, code := ctl(t, nil, "--socket", sock, "run", "--student", "alice", "argv.py", "plain", "--", "--n", "3", "--", "-v")
	if code != 0 || out != "['argv.py', 'plain', '--n', '3', '--', '-v']\n" {
		t.Fatalf("run with --: exit %d, stdout %q, stderr %q; want argv ['argv.py', 'plain', '--n', '3', '--', '-v']", code, out, errOut)
	}
	out, errOut, code = ctl(t, nil, "run", "argv.py", "a", "--student", "alice", "--socket", sock, "--", "b")
	if code != 0 || out != "['argv.py', 'a', 'b']\n" {
		t.Fatalf("run with flags after the script: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	out, errOut, code = ctl(t, nil, "run", "--socket", sock, "--json", "--student=alice", "--memory", "100MiB", "--timeout", "1m30s",
		"--cpu", "1500ms", "--pids", "17", "--cpu-percent", "50", "--output", "2MiB", "argv.py")
	if code != 0 {
		t.Fatalf("run with limits: exit %d, stderr %s", code, errOut)
	}
	got := endOf(t, out).Limits
	want := api.Limits{MemoryMB: 100, WallSeconds: 90, CPUSeconds: 2, Pids: 17, CPUPercent: 50, OutputKB: 2048}
	if got != want {
		t.Fatalf("limits of the run: %+v, want %+v", got, want)
	}
}

// TestPsShowsStartDate: the STARTED column has a date, not only a time;
// completion offers the running run and its student.
func TestPsShowsStartDate(t *testing.T) {
	env, sock := served(t)
	env.WriteScript(t, "alice", "sleep.py", "import time\ntime.sleep(300)\n")
	start := exec.Command(filepath.Join(binDir, "idexctl"), "--socket", sock, "run", "--student", "alice", "sleep.py")
	if err := start.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = start.Process.Kill()
		_ = start.Wait()
	})
	var id string
	deadline := time.Now().Add(30 * time.Second)
	for id == "" {
		out, _, _ := ctl(t, nil, "--socket", sock, "ps", "--json")
		if out != "" {
			var r api.Run
			if err := json.Unmarshal([]byte(strings.Split(out, "\n")[0]), &r); err != nil {
				t.Fatalf("ps --json: %v: %q", err, out)
			}
			id = r.ID
		}
		if time.Now().After(deadline) {
			t.Fatal("the run never showed in ps")
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, errOut, code := ctl(t, []string{"TZ=UTC"}, "ps", "--socket", sock)
	row := regexp.MustCompile(`(?m)^` + id + `\s+alice\s+sleep\.py\s+running\s+-\s+-\s+\S+\s+\S+\s+[0-9.]+MiB\s+(\d{4}-\d{2}-\d{2}) \d{2}:\d{2}:\d{2}$`).FindStringSubmatch(out)
	if code != 0 || row == nil {
		t.Fatalf("ps: exit %d, stderr %q, stdout:\n%s\nwant run %s with a start date and time", code, errOut, out, id)
	}
	if today := time.Now().UTC().Format("2006-01-02"); row[1] != today && row[1] != time.Now().Add(-time.Hour).UTC().Format("2006-01-02") {
		t.Fatalf("ps shows start date %s, want %s", row[1], today)
	}
	// Completion asks idexd for students and runs.
	if got := complete(t, "bash", "--socket", sock, "stop", ""); len(got) != 2 || got[1] != id {
		t.Errorf("completion of stop: %q, want the running run %s", got, id)
	}
	if got := complete(t, "zsh", "run", "--socket="+sock, "--student", "al"); len(got) != 2 || !strings.HasPrefix(got[1], "alice:uid ") {
		t.Errorf("completion of --student: %q, want alice", got)
	}
	// An admin's stop of every run of a student (root is admin).
	out, errOut, code = ctl(t, nil, "--socket", sock, "stop", "--student", "alice")
	if code != 0 || out != "alice: 1 runs stopped, 0 waiting starts refused\n"+id+" stopped\n" {
		t.Fatalf("stop --student: exit %d, stdout %q, stderr %q; want the run %s stopped", code, out, errOut, id)
	}
	if _, errOut, code := ctl(t, nil, "--socket", sock, "stop"); code != 1 || !strings.Contains(errOut, "--student NAME") {
		t.Errorf("stop without ids or --student: exit %d, stderr %q", code, errOut)
	}
}

// hostile prints what a program could use to drive an admin's terminal,
// on stdout and on stderr, around plain text, tabs and newlines.
const hostile = `import sys
out = sys.stdout.buffer
out.write(b"copy\x1b]52;c;ZXZpbA==\x07 title\x1b]0;pwned\x07 clear\x1b[2J\x1b[H\ttab\r\n")
out.write(b"bell\x07 bs\x08 del\x7f c1\xc2\x9b31m bidi\xe2\x80\xae bad\xff ok \xc3\xa9\n")
out.flush()
sys.stderr.buffer.write(b"err\x1b[31mred\x1bc\n")
`

const hostileEscaped = `copy\x1b]52;c;ZXZpbA==\a title\x1b]0;pwned\a clear\x1b[2J\x1b[H` + "\ttab\\r\n" +
	`bell\a bs\b del\x7f c1\u009b31m bidi\u202e bad\xff ok ` + "\u00e9\n"

const hostileStderrEscaped = `err\x1b[31mred\x1bc` + "\n"

// pty opens a pseudo-terminal without output processing (no \n -> \r\n),
// so that what idexctl writes arrives as it is.
func pty(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pty slave: %v", err)
	}
	tio, err := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	tio.Oflag &^= unix.OPOST
	if err := unix.IoctlSetTermios(int(s.Fd()), unix.TCSETS, tio); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(); _ = s.Close() })
	return m, s
}

// onTerminal runs idexctl with stdout on one terminal and stderr on
// another, as an admin's shell would, and returns what each showed.
func onTerminal(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	om, os1 := pty(t)
	em, es := pty(t)
	cmd := exec.Command(filepath.Join(binDir, "idexctl"), args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os1, es
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Only the child holds the terminals now: reading the masters ends
	// (EIO) once it exits.
	_ = os1.Close()
	_ = es.Close()
	read := func(m *os.File, into *bytes.Buffer, done chan<- struct{}) {
		_, err := io.Copy(into, m)
		if err != nil && !errors.Is(err, syscall.EIO) {
			t.Errorf("read terminal: %v", err)
		}
		close(done)
	}
	var o, e bytes.Buffer
	od, ed := make(chan struct{}), make(chan struct{})
	go read(om, &o, od)
	go read(em, &e, ed)
	err := cmd.Wait()
	<-od
	<-ed
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

// TestTerminalOutputEscaped: on a terminal, run and logs show a program's
// control characters escaped (newlines and tabs kept); --raw and a pipe
// get the bytes as they are.
func TestTerminalOutputEscaped(t *testing.T) {
	env, sock := served(t)
	env.WriteScript(t, "alice", "hostile.py", hostile)

	out, errOut, code := onTerminal(t, "--socket", sock, "run", "--student", "alice", "hostile.py")
	if code != 0 || out != hostileEscaped || errOut != hostileStderrEscaped {
		t.Fatalf("run on a terminal: exit %d\nstdout %q\nwant   %q\nstderr %q\nwant   %q", code, out, hostileEscaped, errOut, hostileStderrEscaped)
	}

	cmd := exec.Command(filepath.Join(binDir, "idexctl"), "--socket", sock, "run", "--student", "alice", "--json", "hostile.py")
	raw, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	id := endOf(t, string(raw)).ID

	out, errOut, code = onTerminal(t, "--socket", sock, "logs", id)
	if code != 0 || out != hostileEscaped || errOut != hostileStderrEscaped {
		t.Fatalf("logs on a terminal: exit %d\nstdout %q\nwant   %q\nstderr %q", code, out, hostileEscaped, errOut)
	}

	wantRaw := "copy\x1b]52;c;ZXZpbA==\x07 title\x1b]0;pwned\x07 clear\x1b[2J\x1b[H\ttab\r\n" +
		"bell\x07 bs\x08 del\x7f c1\xc2\x9b31m bidi\xe2\x80\xae bad\xff ok \xc3\xa9\n"
	out, _, code = onTerminal(t, "--socket", sock, "logs", "--raw", id)
	if code != 0 || out != wantRaw {
		t.Fatalf("logs --raw on a terminal: exit %d, %q, want %q", code, out, wantRaw)
	}
	out, _, code = ctl(t, nil, "--socket", sock, "logs", id)
	if code != 0 || out != wantRaw {
		t.Fatalf("logs into a pipe: exit %d, %q, want the bytes as they are: %q", code, out, wantRaw)
	}
}

// TestCtrlC: in idexctl run, the first Ctrl-C interrupts the program (it
// may catch KeyboardInterrupt and go on), a second one within 2 s stops the
// run; an end other than exiting is explained on stderr.
func TestCtrlC(t *testing.T) {
	env, sock := served(t)
	// "ready" is printed inside the try: a Ctrl-C sent as soon as it is
	// read can arrive before print returns (CI saw it once).
	env.WriteScript(t, "alice", "bye.py", `import time
try:
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
except KeyboardInterrupt:
    print("Goodbye!")
`)
	env.WriteScript(t, "alice", "stubborn.py", `import time
ready = False
while True:
    try:
        if not ready:
            ready = True
            print("ready", flush=True)
        while True:
            time.sleep(0.05)
    except KeyboardInterrupt:
        print("caught", flush=True)
`)
	// runUntil starts idexctl run, waits for "ready", sends it SIGINT
	// n times 200 ms apart, and returns its output and exit code.
	runUntil := func(script string, n int) (string, string, int) {
		cmd := exec.Command(filepath.Join(binDir, "idexctl"), "--socket", sock, "run", "--student", "alice", script)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var stdout bytes.Buffer
		buf := make([]byte, 4096)
		for !strings.Contains(stdout.String(), "ready\n") {
			k, err := out.Read(buf)
			stdout.Write(buf[:k])
			if err != nil {
				t.Fatalf("%s: %v before ready; stdout %q stderr %q", script, err, stdout.String(), stderr.String())
			}
		}
		for i := 0; i < n; i++ {
			if err := cmd.Process.Signal(os.Interrupt); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		rest, err := io.ReadAll(out)
		if err != nil {
			t.Fatal(err)
		}
		stdout.Write(rest)
		err = cmd.Wait()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
	}
	if out, errOut, code := runUntil("bye.py", 1); out != "ready\nGoodbye!\n" || code != 0 || errOut != "" {
		t.Errorf("one Ctrl-C to bye.py: stdout %q stderr %q exit %d; want Goodbye! and exit 0", out, errOut, code)
	}
	out, errOut, code := runUntil("stubborn.py", 2)
	if !strings.HasPrefix(out, "ready\ncaught\n") || code != 130 || errOut != "Your program was stopped.\n" {
		t.Errorf("two Ctrl-C to stubborn.py: stdout %q stderr %q exit %d; want caught once, then stopped (130) with its message", out, errOut, code)
	}
}

// TestRunOnTerminal: idexctl run on a terminal runs the program on a
// terminal of its own: isatty, echo of typed keys, Ctrl-C as a key the
// program sees as KeyboardInterrupt, a clipboard write (OSC 52) dropped
// while colours pass.
func TestRunOnTerminal(t *testing.T) {
	env, sock := served(t)
	env.WriteScript(t, "alice", "tty.py", `import sys, time
print(sys.stdin.isatty(), sys.stdout.isatty(), "\x1b]52;c;c2VjcmV0\x07\x1b[31mred\x1b[0m")
name = input("name? ")
print("hello", name, flush=True)
try:
    while True:
        time.sleep(0.05)
except KeyboardInterrupt:
    print("caught")
`)
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: 80}); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	slave, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "idexctl"), "--socket", sock, "run", "--student", "alice", "tty.py")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := slave.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	got := make(chan struct{}, 1)
	var mu sync.Mutex
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := master.Read(buf)
			mu.Lock()
			out.Write(buf[:k])
			mu.Unlock()
			select {
			case got <- struct{}{}:
			default:
			}
			if err != nil {
				return
			}
		}
	}()
	waitFor := func(s string) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			mu.Lock()
			ok := strings.Contains(out.String(), s)
			mu.Unlock()
			if ok {
				return
			}
			select {
			case <-got:
			case <-deadline:
				mu.Lock()
				defer mu.Unlock()
				t.Fatalf("no %q on the terminal within 30 s; it shows %q", s, out.String())
			}
		}
	}
	waitFor("name? ")
	if _, err := master.Write([]byte("Ada\r")); err != nil {
		t.Fatal(err)
	}
	waitFor("hello Ada")
	if _, err := master.Write([]byte{0x03}); err != nil {
		t.Fatal(err)
	}
	waitFor("caught")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("idexctl run: %v; terminal showed %q", err, out.String())
	}
	mu.Lock()
	defer mu.Unlock()
	shown := out.String()
	if !strings.Contains(shown, "True True \x1b[31mred\x1b[0m") || strings.Contains(shown, "]52;") || !strings.Contains(shown, "name? Ada\r\nhello Ada") {
		t.Errorf("terminal showed %q: want isatty True True, the colour, no OSC 52, the echoed name", shown)
	}
}
