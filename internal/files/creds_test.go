package files_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/idexd/idexd/internal/files"
	"github.com/idexd/idexd/internal/testutil"
)

// threadStatus returns the lines of the calling thread's status. The
// goroutine stays on its thread meanwhile: the file shows the thread that
// opened it as it is when read, which may be another thread's by then.
func threadStatus(t testing.TB) map[string]string {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return status(t, "/proc/thread-self/status")
}

func status(t testing.TB, p string) map[string]string {
	b, err := os.ReadFile(p)
	if errors.Is(err, syscall.ESRCH) || errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if ok {
			out[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return out
}

// TestWorkersAct: a worker acts as the student with no effective
// capability while it runs a job, and as before once done; no other
// goroutine ever sees those credentials, and once the pool is closed no
// thread keeps them.
func TestWorkersAct(t *testing.T) {
	testutil.RequireRoot(t)
	root := threadStatus(t)
	if !strings.HasSuffix(root["Uid"], " 0") {
		t.Fatalf("test thread fsuid: %q", root["Uid"])
	}
	w, err := files.StartWorkers(4, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	var inside map[string]string
	err = w.As(201234, 201235, func() error {
		inside = threadStatus(t)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if inside["Uid"] != "0 0 0 201234" || inside["Gid"] != "0 0 0 201235" || inside["Groups"] != "" ||
		inside["CapEff"] != "0000000000000000" {
		t.Fatalf("student's worker: Uid %q Gid %q Groups %q CapEff %q", inside["Uid"], inside["Gid"], inside["Groups"], inside["CapEff"])
	}
	var stop atomic.Bool
	var wrong atomic.Value
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				st := threadStatus(t)
				if st["Uid"] != root["Uid"] || st["CapEff"] != root["CapEff"] || st["Groups"] != root["Groups"] {
					wrong.Store(fmt.Sprintf("uid %s caps %s groups %s", st["Uid"], st["CapEff"], st["Groups"]))
				}
			}
		}()
	}
	var jobs sync.WaitGroup
	for i := range 1000 {
		jobs.Add(1)
		go func() {
			defer jobs.Done()
			uid := uint32(201000 + i%7)
			err := w.As(uid, uid, func() error {
				st := threadStatus(t)
				if st["Uid"] != fmt.Sprintf("0 0 0 %d", uid) || st["CapEff"] != "0000000000000000" {
					return fmt.Errorf("job as %d ran with uid %s caps %s", uid, st["Uid"], st["CapEff"])
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	jobs.Wait()
	stop.Store(true)
	wg.Wait()
	if w := wrong.Load(); w != nil {
		t.Fatalf("another goroutine ran with %v", w)
	}
	if err := w.As(0, 201235, func() error { return nil }); err == nil {
		t.Fatal("a job as uid 0 was not refused")
	}
	w.Close()
	if left := studentThreads(t); len(left) > 0 {
		t.Fatalf("threads with a student's fsuid after the pool closed: %v", left)
	}
	if st := threadStatus(t); st["Groups"] != root["Groups"] {
		t.Fatalf("groups after the pool: %q, want %q", st["Groups"], root["Groups"])
	}
}

// TestWorkersKillNoChild: children started with Pdeathsig (as warm helpers
// and runs are) live on while pools of workers come and go: no thread
// that may have started one ever ends.
func TestWorkersKillNoChild(t *testing.T) {
	testutil.RequireRoot(t)
	before, err := filepath.Glob("/proc/self/task/*")
	if err != nil {
		t.Fatal(err)
	}
	var children []*exec.Cmd
	for range 16 {
		cmd := exec.Command("/bin/sleep", "600")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		children = append(children, cmd)
	}
	t.Cleanup(func() {
		for _, c := range children {
			c.Process.Kill()
			c.Wait()
		}
	})
	for range 20 {
		w, err := files.StartWorkers(8, testutil.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := w.As(201234, 201234, func() error { return nil }); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		w.Close()
	}
	for _, task := range before {
		if _, err := os.Stat(task); err != nil {
			t.Errorf("thread %s ended: %v", filepath.Base(task), err)
		}
	}
	for _, c := range children {
		// Signal 0: is it alive (a zombie would be killed and not reaped yet).
		if err := c.Process.Signal(syscall.Signal(0)); err != nil {
			t.Fatalf("child %d died: %v", c.Process.Pid, err)
		}
		st := status(t, fmt.Sprintf("/proc/%d/status", c.Process.Pid))
		if strings.HasPrefix(st["State"], "Z") {
			t.Fatalf("child %d was killed (zombie)", c.Process.Pid)
		}
	}
}

// studentThreads lists this process's threads whose fsuid is not 0.
func studentThreads(t *testing.T) []string {
	tasks, err := filepath.Glob("/proc/self/task/*/status")
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, p := range tasks {
		st := status(t, p)
		if st == nil {
			continue // ended meanwhile
		}
		if f := strings.Fields(st["Uid"]); len(f) == 4 && f[3] != "0" {
			left = append(left, p+": "+st["Uid"])
		}
	}
	return left
}

// BenchmarkAsStudent is the cost of one operation's hand-off to a worker
// and its credential switches; compare BenchmarkHelperProcess, the other
// way to write without root's capabilities.
func BenchmarkAsStudent(b *testing.B) {
	testutil.RequireRoot(b)
	w, err := files.StartWorkers(1, testutil.Logger(b))
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	for b.Loop() {
		if err := w.As(201234, 201235, func() error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHelperProcess(b *testing.B) {
	testutil.RequireRoot(b)
	for b.Loop() {
		cmd := exec.Command("/bin/true")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 201234, Gid: 201235, Groups: []uint32{}}}
		if err := cmd.Run(); err != nil {
			b.Fatal(err)
		}
	}
}
