package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/sandbox/inside"
)

// Process is one run's process tree: its helper (the run's PID 1), what
// the helper starts, and the cgroup that holds them all.
type Process struct {
	sb      *Sandbox
	group   *cgroup.Group
	cmd     *exec.Cmd
	warm    bool
	cpuBase time.Duration

	// mu serializes reads of ctl: Launch waits for the program's pid on
	// it, Wait reads the program's exit status after the helper is gone.
	mu       sync.Mutex
	ctl      *net.UnixConn
	settled  bool // Launch or Abort ran
	launched bool
	closed   bool
}

// helperEnv is the helper's own environment; the program gets the job's.
// One P and no GC: the helper allocates a few KiB before the job and
// nothing much after, and each runtime thread is one more to signal on
// setresuid.
var helperEnv = []string{"GOMAXPROCS=1", "GOGC=off"}

func (s *Sandbox) spawn(g *cgroup.Group) (_ *Process, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("create control socket: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "ctl"), os.NewFile(uintptr(fds[1]), "ctl-helper")
	defer func() {
		// The helper's end is closed here whatever happens; a copy lives
		// in the helper only, so its exit reads as EOF.
		cerr := theirs.Close()
		if err == nil && cerr != nil {
			err = fmt.Errorf("close helper's end of control socket: %w", cerr)
		}
	}()
	fc, err := net.FileConn(ours)
	if cerr := ours.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ctl, ok := fc.(*net.UnixConn)
	if !ok {
		return nil, errors.Join(fmt.Errorf("control socket is a %T, want a Unix socket", fc), fc.Close())
	}
	flags := uintptr(unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS)
	if s.cfg.Setup.Network != inside.NetworkHost {
		flags |= unix.CLONE_NEWNET
	}
	cmd := &exec.Cmd{
		Path:       s.cfg.Helper.exe(),
		Args:       []string{inside.Arg0, s.setupArg},
		Dir:        "/",
		Env:        helperEnv,
		ExtraFiles: []*os.File{theirs},
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags: flags,
			Setsid:     true,
			Pdeathsig:  syscall.SIGKILL,
			// Cloned straight into the run's group: no moment outside it.
			UseCgroupFD: true,
			CgroupFD:    g.FD(),
		},
	}
	if err := cmd.Start(); err != nil {
		return nil, errors.Join(fmt.Errorf("spawn helper: %w", err), ctl.Close())
	}
	return &Process{sb: s, group: g, cmd: cmd, ctl: ctl}, nil
}

// Pid is the helper's pid on the host: the run's PID 1.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Warm reports whether the helper came from the warm pool.
func (p *Process) Warm() bool { return p.warm }

// Group is the run's cgroup.
func (p *Process) Group() *cgroup.Group { return p.group }

func (p *Process) read(timeout time.Duration) (inside.Reply, error) {
	var r inside.Reply
	if err := p.ctl.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return r, fmt.Errorf("set deadline on control socket: %w", err)
	}
	buf := make([]byte, 64<<10)
	n, err := p.ctl.Read(buf)
	if errors.Is(err, io.EOF) || (err == nil && n == 0) {
		return r, errHelperGone
	}
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(buf[:n], &r); err != nil {
		return r, fmt.Errorf("decode helper's reply %q: %w", buf[:n], err)
	}
	return r, nil
}

var errHelperGone = errors.New("the helper exited")

// awaitReady waits for the helper to have prepared its namespaces.
func (p *Process) awaitReady(timeout time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, err := p.read(timeout)
	switch {
	case err != nil:
		return fmt.Errorf("helper %d before ready: %w", p.Pid(), err)
	case r.Error != "":
		return errors.New(r.Error)
	case !r.Ready:
		return fmt.Errorf("helper %d: unexpected reply %+v before ready", p.Pid(), r)
	}
	return nil
}

// Launch sends the job with the program's stdio and returns once the
// program was exec'd, or why it was not. pids is the program's task limit:
// the helper's own threads (it stays as the run's PID 1) are added to it.
// The caller closes its copies of the stdio files afterwards. Launch and
// Abort are called once between them.
func (p *Process) Launch(job inside.Job, pids int64, stdin, stdout, stderr *os.File) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.settled {
		return errors.New("helper already launched or aborted")
	}
	p.settled = true
	b, err := json.Marshal(job)
	if err != nil {
		return fmt.Errorf("encode job for helper %d: %w", p.Pid(), err)
	}
	if len(b) > inside.MaxMessage {
		return fmt.Errorf("job for helper %d: %d bytes of arguments and environment, at most %d", p.Pid(), len(b), inside.MaxMessage)
	}
	// The helper's threads are idexd's, not the student's: they come on
	// top of the limit. It has them all by now (inside.helper starts the
	// runtime's signal thread early), and says so again once the program
	// runs.
	own, err := p.group.Tasks()
	if err == nil {
		err = p.group.SetPids(pids + own)
	}
	if err != nil {
		return fmt.Errorf("pids limit of helper %d: %w", p.Pid(), err)
	}
	rights := unix.UnixRights(int(stdin.Fd()), int(stdout.Fd()), int(stderr.Fd()))
	if _, _, err := p.ctl.WriteMsgUnix(b, rights, nil); err != nil {
		return fmt.Errorf("send job to helper %d: %w", p.Pid(), err)
	}
	p.launched = true
	r, err := p.read(30 * time.Second)
	switch {
	case errors.Is(err, errHelperGone) || errors.Is(err, net.ErrClosed):
		return fmt.Errorf("helper %d exited before starting the program", p.Pid())
	case err != nil:
		return fmt.Errorf("helper %d: %w", p.Pid(), err)
	case r.Error != "":
		return errors.New(r.Error)
	case r.Pid == 0:
		return fmt.Errorf("helper %d: unexpected reply %+v to the job", p.Pid(), r)
	}
	if int64(r.Threads) != own {
		// The runtime started a thread during the launch after all: the
		// limit follows, or the student would be short of it.
		if err := p.group.SetPids(pids + int64(max(r.Threads, 1))); err != nil {
			return fmt.Errorf("pids limit of helper %d: %w", p.Pid(), err)
		}
	}
	return nil
}

// Abort makes a helper that has no job exit without running anything.
// After Launch it does nothing.
func (p *Process) Abort() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.settled {
		return nil
	}
	p.settled = true
	// EOF on the control socket: the helper exits ExitAborted.
	if err := p.ctl.CloseWrite(); err != nil {
		return fmt.Errorf("abort helper %d: %w", p.Pid(), err)
	}
	return nil
}

// Exit is how a run's program ended.
type Exit struct {
	// Code is the exit status when Signal is 0.
	Code   int
	Signal syscall.Signal
	// Helper is true when the status is the helper's own, because the
	// program never started or the helper died before it could report
	// (killed with its cgroup, for one).
	Helper bool
}

// Wait waits until the helper has exited and returns how the program
// ended. It waits on a pidfd in Go's netpoller and only then reaps: a
// waitid that blocks holds an OS thread for the whole run, one thread
// per live run (207 threads at 200 runs, bench/README.md).
func (p *Process) Wait() (Exit, error) {
	var errs []error
	if err := p.awaitExit(); err != nil {
		// Reaping below still works, only on a blocked thread.
		errs = append(errs, fmt.Errorf("wait for pid %d on a pidfd: %w", p.Pid(), err))
	}
	ps, err := p.reap()
	if err != nil {
		errs = append(errs, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// The helper is gone: what it sent is buffered, then EOF.
	for !p.closed {
		r, err := p.read(time.Second)
		if err != nil {
			break
		}
		if r.Exit != nil {
			return Exit{Code: r.Exit.Code, Signal: syscall.Signal(r.Exit.Signal)}, errors.Join(errs...)
		}
	}
	ex := Exit{Helper: true}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok {
		switch {
		case ws.Exited():
			ex.Code = ws.ExitStatus()
		case ws.Signaled():
			ex.Signal = ws.Signal()
		}
	}
	return ex, errors.Join(errs...)
}

// awaitExit returns once the helper has exited, without reaping it.
func (p *Process) awaitExit() error {
	fd, err := unix.PidfdOpen(p.Pid(), unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) {
		// A kernel before 5.10 (no pidfd, or no PIDFD_NONBLOCK): the
		// reap that follows waits on a blocked thread instead, correctly.
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd_open: %w", err)
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	rc, err := f.SyscallConn()
	if err != nil {
		return errors.Join(fmt.Errorf("pidfd: %w", err), f.Close())
	}
	var werr error
	err = rc.Read(func(fd uintptr) bool {
		var info unix.Siginfo
		// WNOWAIT: look, leave the zombie for exec.Cmd.Wait to reap.
		if e := unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); e != nil {
			if errors.Is(e, unix.EINTR) {
				return false
			}
			werr = fmt.Errorf("waitid: %w", e)
			return true
		}
		return info.Signo == int32(unix.SIGCHLD)
	})
	return errors.Join(err, werr, f.Close())
}

func (p *Process) reap() (*os.ProcessState, error) {
	err := p.cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ProcessState, nil
	}
	if err != nil {
		return p.cmd.ProcessState, fmt.Errorf("wait for pid %d: %w", p.Pid(), err)
	}
	return p.cmd.ProcessState, nil
}

// Interrupt sends sig to the program's process group, through the helper
// (Ctrl-C is SIGINT): the program may catch it and go on.
func (p *Process) Interrupt(sig syscall.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal run's helper %d: %w", p.Pid(), err)
	}
	return nil
}

// Kill sends SIGKILL to every process of the run at once (cgroup.kill),
// including any that called setsid and double-forked.
func (p *Process) Kill() error { return p.group.Kill() }

// KillAndWait kills the run's processes and waits until its cgroup is
// empty or ctx ends.
func (p *Process) KillAndWait(ctx context.Context) error { return p.group.KillAndWait(ctx) }

// CPUTime is the run's CPU time so far, without the helper's own start-up.
func (p *Process) CPUTime() (time.Duration, error) {
	cpu, err := p.group.CPUTime()
	return max(cpu-p.cpuBase, 0), err
}

// Stats reads what the run used: CPU time (without the helper's start-up),
// peak memory (with socket buffers) and OOM kills.
func (p *Process) Stats() (cgroup.Stats, error) {
	s, err := p.group.Stats()
	s.CPU = max(s.CPU-p.cpuBase, 0)
	return s, err
}

// Close deletes the run's cgroup, which must be empty (KillAndWait), and
// releases the control socket.
func (p *Process) Close() error {
	p.mu.Lock()
	closed := p.closed
	p.closed = true
	p.mu.Unlock()
	if closed {
		return nil
	}
	return errors.Join(p.group.Delete(), p.ctl.Close())
}

// discard ends a helper that no run will use: it exits without running
// anything, and its group is removed.
func (p *Process) discard() error {
	errs := []error{p.Abort()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errs = append(errs, p.KillAndWait(ctx))
	if _, err := p.Wait(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, p.Close())
	return errors.Join(errs...)
}
