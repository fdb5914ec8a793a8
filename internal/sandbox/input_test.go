package sandbox

import (
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/sandbox/inside"
)

func TestStdinRead(t *testing.T) {
	for _, c := range []struct {
		line string
		fd   int
		ok   bool
	}{
		{"0 0x0 0x55d0c0a0 0x2000 0x0 0x0 0x0 0x7ffd 0x7f12", 0, true},
		{"0 0x7 0x55d0c0a0 0x2000 0x0 0x0 0x0 0x7ffd 0x7f12", 7, true},
		{strconv.Itoa(unix.SYS_READV) + " 0x3 0x1 0x1 0x0 0x0 0x0 0x7ffd 0x7f12", 3, true},
		{strconv.Itoa(unix.SYS_PSELECT6) + " 0x1 0x7ffd 0x0 0x0 0x0 0x0 0x7ffd 0x7f12", 0, true},
		// select on more than fd 0: a program that waits on a socket too.
		{strconv.Itoa(unix.SYS_PSELECT6) + " 0x5 0x7ffd 0x0 0x0 0x0 0x0 0x7ffd 0x7f12", 0, false},
		{strconv.Itoa(unix.SYS_NANOSLEEP) + " 0x7ffd 0x0 0x0 0x0 0x0 0x0 0x7ffd 0x7f12", 0, false},
		{"running", 0, false},
		{"-1 0x7ffd 0x7f12", 0, false},
		{"", 0, false},
	} {
		fd, ok := stdinRead([]byte(c.line + "\n"))
		if fd != c.fd || ok != c.ok {
			t.Errorf("stdinRead(%q) = %d, %v, want %d, %v", c.line, fd, ok, c.fd, c.ok)
		}
	}
}

func TestReadCount(t *testing.T) {
	p := filepath.Join(t.TempDir(), "io")
	if err := os.WriteFile(p, []byte("rchar: 9\nwchar: 3\nsyscr: 42\nsyscw: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if n := readCount(p); n != 42 {
		t.Errorf("readCount = %d, want 42", n)
	}
	if n := readCount(p + ".missing"); n != 0 {
		t.Errorf("readCount of a missing file = %d, want 0", n)
	}
}

// TestInputWatcher: a real program blocked reading its stdin pipe is seen
// waiting, seen resuming and waiting again after a line, and not waiting
// once it ended; no call comes after remove, and the poller stops when no
// run is watched. (The sandboxed path, helper and all, is judged in
// internal/run's console tests and the systemd test.)
func TestInputWatcher(t *testing.T) {
	w := newInputWatcher(slog.New(slog.NewTextHandler(io.Discard, nil)))
	r, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = wr.Close() }()
	// head reads a line, writes it, and blocks reading the next.
	cmd := exec.Command("head", "-n", "2")
	cmd.Stdin, cmd.Stdout = r, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(wr.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	threads := filepath.Join(t.TempDir(), "threads")
	if err := os.WriteFile(threads, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	calls := make(chan bool, 16)
	var removed atomic.Bool
	var late atomic.Int64
	x := &inputWatch{threads: threads, uid: uint32(os.Getuid()), gid: uint32(os.Getgid()),
		stdin: inside.FileID{Dev: st.Dev, Ino: st.Ino}, on: func(v bool) {
			if removed.Load() {
				late.Add(1)
			}
			calls <- v
		}}
	next := func(want bool, what string) {
		t.Helper()
		select {
		case v := <-calls:
			if v != want {
				t.Fatalf("%s: told %v, want %v", what, v, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: not told %v within 5s", what, want)
		}
	}
	w.add(x)
	next(true, "head blocked reading its empty stdin")
	if _, err := wr.WriteString("one\n"); err != nil {
		t.Fatal(err)
	}
	x.soon.Store(true) // what Process.InputSent does
	next(false, "a line came")
	next(true, "head blocked again for its second line")
	if err := wr.Close(); err != nil {
		t.Fatal(err)
	}
	next(false, "stdin closed: head ended")
	removed.Store(true)
	w.remove(x)
	time.Sleep(3 * inputPoll)
	if n := late.Load(); n != 0 {
		t.Errorf("%d calls after remove", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		w.mu.Lock()
		running := w.running
		w.mu.Unlock()
		if !running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the poller still runs 5s after the last run was removed")
		}
		time.Sleep(inputPoll)
	}
}
