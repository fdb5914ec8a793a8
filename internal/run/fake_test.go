package run_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/config"
	"github.com/idexd/idexd/internal/lock"
	"github.com/idexd/idexd/internal/netns"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/sandbox"
	"github.com/idexd/idexd/internal/sandbox/inside"
	"github.com/idexd/idexd/internal/store"
	"github.com/idexd/idexd/internal/students"
	"github.com/idexd/idexd/internal/testutil"
)

// The fake sandbox runs no process: a "program" is a Go function chosen
// by the script's name, which writes to the run's real stdout and stderr
// pipes and ends as told. It needs no root, so the run's lifecycle, its
// lock and its end reasons are tested here on any machine, fast enough
// for thousands of runs with random stops and injected failures.

// fakeProgram is what a fake run does; it returns how it ended, or waits
// for kill (closed by Kill) and ends by SIGKILL.
type fakeProgram func(stdout, stderr io.Writer, kill <-chan struct{}) (sandbox.Exit, cgroup.Stats)

var fakePrograms = map[string]fakeProgram{
	"hello.py": func(out, _ io.Writer, _ <-chan struct{}) (sandbox.Exit, cgroup.Stats) {
		fmt.Fprint(out, "hello\n")
		return sandbox.Exit{}, cgroup.Stats{CPU: 20 * time.Millisecond, PeakMemory: 8 << 20}
	},
	"exit3.py": func(_, errw io.Writer, _ <-chan struct{}) (sandbox.Exit, cgroup.Stats) {
		fmt.Fprint(errw, "bye\n")
		return sandbox.Exit{Code: 3}, cgroup.Stats{}
	},
	"segv.py": func(_, _ io.Writer, _ <-chan struct{}) (sandbox.Exit, cgroup.Stats) {
		return sandbox.Exit{Signal: syscall.SIGSEGV}, cgroup.Stats{}
	},
	"oom.py": func(_, _ io.Writer, _ <-chan struct{}) (sandbox.Exit, cgroup.Stats) {
		// A SIGKILL alone is not evidence of OOM; the cgroup's counter is.
		return sandbox.Exit{Signal: syscall.SIGKILL}, cgroup.Stats{OOMKills: 1}
	},
	"xcpu.py": func(_, _ io.Writer, _ <-chan struct{}) (sandbox.Exit, cgroup.Stats) {
		return sandbox.Exit{Signal: syscall.SIGXCPU}, cgroup.Stats{}
	},
	"killed.py": func(_, _ io.Writer, _ <-chan struct{}) (sandbox.Exit, cgroup.Stats) {
		return sandbox.Exit{Signal: syscall.SIGKILL}, cgroup.Stats{}
	},
	"sleep.py": func(out, _ io.Writer, kill <-chan struct{}) (sandbox.Exit, cgroup.Stats) {
		fmt.Fprint(out, "up\n")
		<-kill
		return sandbox.Exit{Signal: syscall.SIGKILL}, cgroup.Stats{}
	},
	"flood.py": func(out, _ io.Writer, kill <-chan struct{}) (sandbox.Exit, cgroup.Stats) {
		line := strings.Repeat("x", 1023) + "\n"
		for {
			select {
			case <-kill:
				return sandbox.Exit{Signal: syscall.SIGKILL}, cgroup.Stats{}
			default:
			}
			if _, err := io.WriteString(out, line); err != nil {
				<-kill
				return sandbox.Exit{Signal: syscall.SIGKILL}, cgroup.Stats{}
			}
		}
	},
}

type fakeSandbox struct {
	// failPrepare and failLaunch, when set, fail those calls.
	failPrepare func(student string) error
	failLaunch  func(job inside.Job) error

	mu       sync.Mutex
	procs    []*fakeProc
	prepared atomic.Int64
}

func (s *fakeSandbox) Prepare(student, id string, lim cgroup.Limits) (run.Process, error) {
	if s.failPrepare != nil {
		if err := s.failPrepare(student); err != nil {
			return nil, err
		}
	}
	s.prepared.Add(1)
	p := &fakeProc{sb: s, kill: make(chan struct{}), done: make(chan struct{})}
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	return p, nil
}

func (s *fakeSandbox) WarmReady() int    { return 0 }
func (s *fakeSandbox) WarmStarts() int64 { return 0 }

func (s *fakeSandbox) HelpersReused() int64 { return 0 }

func (s *fakeSandbox) NetworksKept() int { return 0 }

func (s *fakeSandbox) Networks() netns.Stats { return netns.Stats{} }
func (s *fakeSandbox) Close() error          { return nil }

// closedOnce fails the test unless every process was closed exactly once.
func (s *fakeSandbox) closedOnce(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, p := range s.procs {
		if n := p.closed.Load(); n != 1 {
			t.Errorf("process %d closed %d times, want once", i, n)
		}
	}
}

type fakeProc struct {
	sb       *fakeSandbox
	mu       sync.Mutex
	settled  bool
	killOnce sync.Once
	kill     chan struct{}
	done     chan struct{}
	exit     sandbox.Exit
	stats    cgroup.Stats
	closed   atomic.Int32
}

func (p *fakeProc) Launch(job inside.Job, pids int64, stdin, stdout, stderr *os.File) (*os.File, error) {
	return nil, p.launch(job, pids, stdin, stdout, stderr)
}

func (p *fakeProc) launch(job inside.Job, _ int64, _, stdout, stderr *os.File) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.settled {
		return errors.New("launched twice")
	}
	p.settled = true
	if p.sb != nil && p.sb.failLaunch != nil {
		if err := p.sb.failLaunch(job); err != nil {
			p.exit = sandbox.Exit{Code: inside.ExitFailed, Helper: true}
			close(p.done)
			return err
		}
	}
	prog, ok := fakePrograms[filepath.Base(job.Argv[len(job.Argv)-1])]
	if !ok {
		p.exit = sandbox.Exit{Code: inside.ExitFailed, Helper: true}
		close(p.done)
		return fmt.Errorf("no fake program %q", job.Argv[len(job.Argv)-1])
	}
	// The run closes its copies once Launch returns; the program keeps its own.
	out, err1 := dupFile(stdout)
	errw, err2 := dupFile(stderr)
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	go func() {
		ex, st := prog(out, errw, p.kill)
		_ = out.Close()
		_ = errw.Close()
		p.mu.Lock()
		p.exit, p.stats = ex, st
		p.mu.Unlock()
		close(p.done)
	}()
	return nil
}

func dupFile(f *os.File) (*os.File, error) {
	fd, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

func (p *fakeProc) Abort() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.settled {
		p.settled = true
		p.exit = sandbox.Exit{Code: inside.ExitAborted, Helper: true}
		close(p.done)
	}
	return nil
}

func (p *fakeProc) Wait(func(bool)) (sandbox.Exit, error) {
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit, nil
}

func (p *fakeProc) Interrupt(syscall.Signal) error { return nil }

func (p *fakeProc) Kill() error {
	p.killOnce.Do(func() { close(p.kill) })
	return nil
}

func (p *fakeProc) KillAndWait(ctx context.Context) error {
	if err := p.Kill(); err != nil {
		return err
	}
	p.mu.Lock()
	settled := p.settled
	p.mu.Unlock()
	if !settled {
		// Never launched nor aborted: a killed helper exits all the same.
		if err := p.Abort(); err != nil {
			return err
		}
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *fakeProc) CPUTime() (time.Duration, error) { return 0, nil }

func (p *fakeProc) Stats() (cgroup.Stats, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats, nil
}

func (p *fakeProc) Close() error {
	p.closed.Add(1)
	return nil
}

func (p *fakeProc) Pid() int   { return 4242 }
func (p *fakeProc) Warm() bool { return false }

// fakeEnv is an engine on the fake sandbox. Without root, the one
// student is the caller's own uid (the directory needs no chown).
func fakeEnv(t *testing.T, sb *fakeSandbox) (*run.Engine, *lock.Table, string) {
	t.Helper()
	root := t.TempDir()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(root, "state"), nil)
	if err != nil {
		t.Fatal(err)
	}
	def := config.Default()
	uidMin, uidMax, gid := def.UIDMin, def.UIDMax, uint32(testutil.ClientGID)
	if os.Geteuid() != 0 {
		uidMin, uidMax, gid = uint32(os.Geteuid()), uint32(os.Geteuid()), uint32(os.Getegid())
	}
	dirs := &students.Dirs{Root: filepath.Join(root, "students"), ClientGroup: gid}
	if err := dirs.EnsureRoot(); err != nil && os.Geteuid() == 0 {
		t.Fatal(err)
	} else if err != nil {
		if err := os.MkdirAll(dirs.Root, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	locks := lock.NewTable()
	eng, err := run.New(run.Config{
		Host: "test", Interpreter: testutil.Interpreter,
		Defaults: def.Defaults, Max: def.Max, MaxRuns: 1000,
		UIDSource: students.UIDSourceRange, UIDMin: uidMin, UIDMax: uidMax,
		KeepEnded: time.Minute, Log: testutil.Logger(t), Dirs: dirs, Store: st, Locks: locks,
		Sandbox: sb,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := eng.Shutdown(ctx, 0); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	st1, err := eng.EnsureStudent(context.Background(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	for name := range fakePrograms {
		if err := os.WriteFile(filepath.Join(st1.Workdir, name), []byte("# fake\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return eng, locks, st1.Workdir
}

func fakeAssertClean(t *testing.T, sb *fakeSandbox, locks *lock.Table) {
	t.Helper()
	if n := locks.Held(); n != 0 {
		t.Errorf("locks held after every run ended: %d", n)
	}
	if acq, rel := locks.Counts(); acq != rel {
		t.Errorf("locks acquired %d, released %d", acq, rel)
	}
	sb.closedOnce(t)
}

// TestFakeEndReasons: each way a program can end maps to one reason,
// exit code or signal, with the lock released and the process closed
// once; no root needed.
func TestFakeEndReasons(t *testing.T) {
	sb := &fakeSandbox{}
	eng, locks, _ := fakeEnv(t, sb)
	for _, c := range []struct {
		script, stdout, stderr string
		reason                 api.Reason
		exit                   string
		signal                 string
	}{
		{"hello.py", "hello\n", "", api.ReasonExited, "0", ""},
		{"exit3.py", "", "bye\n", api.ReasonExited, "3", ""},
		{"segv.py", "", "", api.ReasonSignaled, "none", "SIGSEGV"},
		{"killed.py", "", "", api.ReasonSignaled, "none", "SIGKILL"},
		{"oom.py", "", "", api.ReasonOOMKilled, "none", "SIGKILL"},
		{"xcpu.py", "", "", api.ReasonTimedOut, "none", "SIGXCPU"},
	} {
		t.Run(c.script, func(t *testing.T) {
			r, err := eng.Start(ctxT(t, 10*time.Second), api.RunRequest{Student: "alice", Script: c.script})
			if err != nil {
				t.Fatal(err)
			}
			res := testutil.Collect(ctxT(t, 10*time.Second), t, r)
			if res.Run.Reason != c.reason || exitCode(res.Run) != c.exit || res.Run.Signal != c.signal ||
				res.Stdout != c.stdout || res.Stderr != c.stderr {
				t.Errorf("got %s exit %s signal %q out %q err %q; want %s exit %s signal %q out %q err %q",
					res.Run.Reason, exitCode(res.Run), res.Run.Signal, res.Stdout, res.Stderr,
					c.reason, c.exit, c.signal, c.stdout, c.stderr)
			}
		})
	}
	fakeAssertClean(t, sb, locks)
}

// TestFakeStartFailures: a failing Prepare (naming its step) or Launch
// ends the run start_failed with the step in its error; the lock is free
// and a process that existed is closed once.
func TestFakeStartFailures(t *testing.T) {
	for _, step := range []string{run.StepCgroup, run.StepSpawn, run.StepCgroupJoin, run.StepExec} {
		t.Run(step, func(t *testing.T) {
			sb := &fakeSandbox{}
			boom := errors.New("injected")
			if step == run.StepExec {
				sb.failLaunch = func(inside.Job) error { return boom }
			} else {
				sb.failPrepare = func(string) error { return &sandbox.StepError{Step: step, Err: boom} }
			}
			eng, locks, _ := fakeEnv(t, sb)
			_, err := eng.Start(ctxT(t, 10*time.Second), api.RunRequest{Student: "alice", Script: "hello.py"})
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Code != api.CodeStartFailed || !strings.Contains(ae.Message, "step "+step+":") {
				t.Fatalf("start: %v, want start_failed naming step %s", err, step)
			}
			runs := eng.List()
			if len(runs) != 1 {
				t.Fatalf("%d runs in memory, want the failed one", len(runs))
			}
			info := runs[0].Info()
			if info.Reason != api.ReasonStartFailed || !strings.Contains(info.Error, "injected") {
				t.Errorf("run ended %s (%q), want start_failed with the cause", info.Reason, info.Error)
			}
			fakeAssertClean(t, sb, locks)
		})
	}
}

// TestFakeRandomStops: 2000 runs of every kind, 16 at a time, stopped at
// random moments, some failing to start: every run ends exactly once, the
// lock of every one is released exactly once, and every process that
// existed is closed exactly once.
func TestFakeRandomStops(t *testing.T) {
	sb := &fakeSandbox{}
	var n atomic.Int64
	sb.failPrepare = func(string) error {
		if n.Add(1)%17 == 0 {
			return &sandbox.StepError{Step: run.StepSpawn, Err: errors.New("injected")}
		}
		return nil
	}
	sb.failLaunch = func(inside.Job) error {
		if n.Add(1)%23 == 0 {
			return errors.New("injected")
		}
		return nil
	}
	eng, locks, _ := fakeEnv(t, sb)
	scripts := make([]string, 0, len(fakePrograms))
	for s := range fakePrograms {
		scripts = append(scripts, s)
	}
	var ended, failed atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range 2000 {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			r, err := eng.Start(ctx, api.RunRequest{Student: "alice", Script: scripts[rng.IntN(len(scripts))]})
			if errors.Is(err, api.ErrLocked) {
				return
			}
			if err != nil {
				failed.Add(1)
				return
			}
			if rng.IntN(2) == 0 {
				time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
				if _, err := r.Stop(ctx); err != nil {
					t.Errorf("stop: %v", err)
				}
			} else if _, err := r.Stop(ctx); err != nil {
				t.Errorf("stop: %v", err)
			}
			<-r.Done()
			ended.Add(1)
		}()
	}
	wg.Wait()
	t.Logf("ended %d, failed to start %d, processes %d", ended.Load(), failed.Load(), sb.prepared.Load())
	if ended.Load()+failed.Load() < 100 {
		t.Fatalf("only %d runs ran: the test tested little", ended.Load()+failed.Load())
	}
	if failed.Load() == 0 {
		t.Errorf("no start failed: the injected failures were not exercised")
	}
	fakeAssertClean(t, sb, locks)
	if a := eng.Active(); a != 0 {
		t.Errorf("active runs %d after all ended, want 0", a)
	}
}
