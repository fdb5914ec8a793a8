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
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/netns"
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
	// netNS is the run's network namespace, sent with the job; it goes back
	// to student's kept ones at Close (nil with the host's network).
	netNS   *netns.NS
	student string

	// mu serializes reads of ctl: Launch waits for the program's pid on
	// it, Wait reads the program's exit status after the helper is gone.
	mu      sync.Mutex
	ctl     *net.UnixConn
	settled bool // Launch or Abort ran
	// settledCh is closed once Launch or Abort has done its reads: from
	// then on Wait alone reads ctl.
	settledCh   chan struct{}
	settledOnce sync.Once
	launched    bool
	// received is an fd the last reply carried (the terminal's master).
	received *os.File
	closed   bool
	// input is what the input watcher needs, once the program runs.
	input atomic.Pointer[inputWatch]
	// reusable: the helper said clean after the program's exit (a kept
	// helper, see DefaultHelperRuns); Close gives it to the pool when
	// nothing else of the run is left.
	reusable atomic.Bool
	// unreaped: Wait returned without reaping the helper, which neither
	// said clean nor exited in time after the exit; Close reaps it once
	// its group was killed.
	unreaped bool
	// handedOver: Close gave the helper to the pool for another run, and
	// this Process no longer speaks for it.
	handedOver atomic.Bool
}

// DefaultHelperRuns is how many runs a helper serves at most when its
// group can be kept with it (a pool; cgroup.Group.KeepForNextRun): each
// later run saves a helper process, its address space and its namespaces,
// 0.84-1.03 ms of CPU here (bench/README.md, "What a helper costs as a
// process"). The bound keeps anything that grows slowly in a helper from
// growing for ever. The helper of internal/sandbox/inside ignores it and
// serves one.
const DefaultHelperRuns = 500

// cleanupWait bounds how long a kept helper may take, after the program's
// exit, to kill what the run left and say so (clean), and then to arm the
// next run's namespaces (ready); past it the helper is killed with its
// group, as one that serves one run would have been.
const cleanupWait = 2 * time.Second

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
	// No CLONE_NEWNET: the network namespace comes with the job, from
	// the student's kept ones (package netns).
	flags := uintptr(unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS)
	env := helperEnv
	// A pool to keep it in, and groups that can be kept with it (hybrid:
	// cgroup.Group.KeepForNextRun).
	if s.cfg.WarmRuns > 0 && s.cfg.HelperRuns > 1 && s.cfg.Cgroups.Mode() == cgroup.ModeHybrid {
		env = append(env[:len(env):len(env)], "IDEXD_HELPER_RUNS="+strconv.Itoa(s.cfg.HelperRuns))
	}
	cmd := &exec.Cmd{
		Path:       s.cfg.Helper.exe(),
		Args:       s.helperArgs,
		Dir:        "/",
		Env:        env,
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
	return &Process{sb: s, group: g, cmd: cmd, ctl: ctl, settledCh: make(chan struct{})}, nil
}

// Pid is the helper's pid on the host: the run's PID 1.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Warm reports whether the helper came from the warm pool.
func (p *Process) Warm() bool { return p.warm }

// Group is the run's cgroup.
func (p *Process) Group() *cgroup.Group { return p.group }

// Reply sizes: the ready and pid replies may carry a long error; once the
// program runs, only its exit status comes, a few dozen bytes. Wait parks a
// read for the run's whole life, and its buffer with it: 64 KiB each were
// 12.5 MiB of idexd's RSS at 200 live runs.
const (
	startReplyMax   = 64 << 10
	runningReplyMax = 512
)

// replyBufs are the buffers of the start's reads (startReplyMax each), only
// held during one: two made per run were 130 of the 200 KB a run allocated,
// and so most of idexd's GC cycles.
var replyBufs sync.Pool

func replyBuf() *[]byte {
	if b, ok := replyBufs.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, startReplyMax)
	return &b
}

func (p *Process) read(timeout time.Duration, size int) (inside.Reply, error) {
	var r inside.Reply
	deadline := time.Time{} // 0: none
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	if err := p.ctl.SetReadDeadline(deadline); err != nil {
		return r, fmt.Errorf("set deadline on control socket: %w", err)
	}
	var buf []byte
	if size == startReplyMax {
		pooled := replyBuf()
		defer replyBufs.Put(pooled)
		buf = *pooled
	} else {
		buf = make([]byte, size)
	}
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, flags, _, err := p.ctl.ReadMsgUnix(buf, oob)
	if errors.Is(err, io.EOF) || (err == nil && n == 0) {
		return r, errHelperGone
	}
	if err != nil {
		return r, err
	}
	if flags&unix.MSG_TRUNC != 0 {
		return r, fmt.Errorf("helper's reply is over %d bytes, starting %q", size, buf[:min(n, 80)])
	}
	if oobn > 0 {
		f, err := receivedFile(oob[:oobn])
		if err != nil {
			return r, fmt.Errorf("helper's reply: %w", err)
		}
		p.received = f
	}
	if err := json.Unmarshal(buf[:n], &r); err != nil {
		return r, fmt.Errorf("decode helper's reply %q: %w", buf[:n], err)
	}
	return r, nil
}

// receivedFile is the fd a reply carried (a terminal's master), made
// non-blocking so that reading it waits in the netpoller.
func receivedFile(oob []byte) (*os.File, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("parse fds: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			return nil, fmt.Errorf("parse fds: %w", err)
		}
		fds = append(fds, got...)
	}
	if len(fds) != 1 {
		for _, fd := range fds {
			_ = unix.Close(fd)
		}
		return nil, fmt.Errorf("%d fds, want 1", len(fds))
	}
	unix.CloseOnExec(fds[0])
	if err := unix.SetNonblock(fds[0], true); err != nil {
		_ = unix.Close(fds[0])
		return nil, fmt.Errorf("terminal: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "pty"), nil
}

var errHelperGone = errors.New("the helper exited")

// awaitReady waits for the helper to have prepared its namespaces.
func (p *Process) awaitReady(timeout time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, err := p.read(timeout, startReplyMax)
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
//
// With job.Terminal set, the program runs on a pty, and Launch returns its
// master: the caller reads the program's output from it, writes its input
// to it, and closes it.
func (p *Process) Launch(job inside.Job, pids int64, stdin, stdout, stderr *os.File) (*os.File, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	defer p.settle()
	master, err := p.launch(job, pids, stdin, stdout, stderr)
	if err != nil {
		// A reply that failed may still have carried a terminal.
		err = errors.Join(err, closeIf(p.received))
		p.received = nil
		return nil, err
	}
	if job.Terminal != nil && master == nil {
		return nil, fmt.Errorf("helper %d started the program without sending its terminal", p.Pid())
	}
	return master, nil
}

func closeIf(f *os.File) error {
	if f == nil {
		return nil
	}
	return f.Close()
}

func (p *Process) launch(job inside.Job, pids int64, stdin, stdout, stderr *os.File) (*os.File, error) {
	if p.settled {
		return nil, errors.New("helper already launched or aborted")
	}
	p.settled = true
	b, err := job.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("encode job for helper %d: %w", p.Pid(), err)
	}
	if len(b) > inside.MaxMessage {
		return nil, fmt.Errorf("job for helper %d: %d bytes of arguments and environment, at most %d", p.Pid(), len(b), inside.MaxMessage)
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
		return nil, fmt.Errorf("pids limit of helper %d: %w", p.Pid(), err)
	}
	fds := []int{int(stdin.Fd()), int(stdout.Fd()), int(stderr.Fd())}
	if p.netNS != nil {
		fds = append(fds, p.netNS.FD())
	}
	rights := unix.UnixRights(fds...)
	if _, _, err := p.ctl.WriteMsgUnix(b, rights, nil); err != nil {
		return nil, fmt.Errorf("send job to helper %d: %w", p.Pid(), err)
	}
	p.launched = true
	r, err := p.read(30*time.Second, startReplyMax)
	switch {
	case errors.Is(err, errHelperGone) || errors.Is(err, net.ErrClosed):
		return nil, fmt.Errorf("helper %d exited before starting the program", p.Pid())
	case err != nil:
		return nil, fmt.Errorf("helper %d: %w", p.Pid(), err)
	case r.Error != "":
		return nil, errors.New(r.Error)
	case r.Pid == 0:
		return nil, fmt.Errorf("helper %d: unexpected reply %+v to the job", p.Pid(), r)
	}
	if int64(r.Threads) != own {
		// The runtime started a thread during the launch after all: the
		// limit follows, or the student would be short of it.
		if err := p.group.SetPids(pids + int64(max(r.Threads, 1))); err != nil {
			return nil, fmt.Errorf("pids limit of helper %d: %w", p.Pid(), err)
		}
	}
	if r.Stdin != nil {
		p.input.Store(&inputWatch{threads: p.group.Path() + "/cgroup.threads", helper: p.Pid(),
			uid: job.UID, gid: job.GID, stdin: *r.Stdin})
	}
	master := p.received
	p.received = nil
	return master, nil
}

// Abort makes a helper that has no job exit without running anything.
// After Launch it does nothing.
func (p *Process) Abort() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	defer p.settle()
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

func (p *Process) settle() { p.settledOnce.Do(func() { close(p.settledCh) }) }

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

// Wait follows the helper until it has exited and returns how the program
// ended. While the program runs, onInput (may be nil) is told when it
// starts and stops waiting for input (input.go), never after Wait
// returned. It reads the control socket in Go's netpoller (the helper's
// exit closes it) and only then reaps: a waitid that blocks would hold an
// OS thread per live run (207 threads at 200 runs, bench/README.md).
func (p *Process) Wait(onInput func(waiting bool)) (Exit, error) {
	<-p.settledCh
	var (
		exit *Exit
		errs []error
	)
	if in := p.input.Load(); in != nil && onInput != nil {
		in.on = onInput
		p.sb.inputs.add(in)
		defer p.sb.inputs.remove(in)
	}
	for {
		var timeout time.Duration
		if exit != nil {
			timeout = cleanupWait
		}
		r, err := p.read(timeout, runningReplyMax)
		if exit != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			// A kept helper still cleaning up: the run's end kills its
			// group (KillAndWait), and Close reaps it.
			p.unreaped = true
			return *exit, nil
		}
		if err != nil {
			// EOF: the helper is gone. Closed: the run's end deleted the
			// process while its helper was killed; the reap says how.
			if !errors.Is(err, errHelperGone) && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, fmt.Errorf("read helper %d: %w", p.Pid(), err))
			}
			break
		}
		if r.Exit != nil {
			exit = &Exit{Code: r.Exit.Code, Signal: syscall.Signal(r.Exit.Signal)}
		}
		if r.Clean && exit != nil {
			// A kept helper: nothing of the run is left, and its ready
			// for the next run comes after the run's end (keep).
			p.reusable.Store(true)
			return *exit, nil
		}
	}
	ps, err := p.reap()
	if err != nil {
		errs = append(errs, err)
	}
	if exit != nil {
		return *exit, errors.Join(errs...)
	}
	ex := Exit{Helper: true}
	if ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok {
			switch {
			case ws.Exited():
				ex.Code = ws.ExitStatus()
			case ws.Signaled():
				ex.Signal = ws.Signal()
			}
		}
	}
	return ex, errors.Join(errs...)
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

// InputSent says the program was given input or a signal: the input
// watcher, which looks less often at a run that stays as it was, looks at
// this one at its next tick, when the program may wait again.
func (p *Process) InputSent() {
	if in := p.input.Load(); in != nil {
		in.soon.Store(true)
	}
}

// Interrupt sends sig to the program's process group, through the helper
// (Ctrl-C is SIGINT): the program may catch it and go on.
func (p *Process) Interrupt(sig syscall.Signal) error {
	if p.handedOver.Load() {
		// The helper serves another run now.
		return fmt.Errorf("signal run's helper %d: %w", p.Pid(), os.ErrProcessDone)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal run's helper %d: %w", p.Pid(), err)
	}
	return nil
}

// Kill sends SIGKILL to every process of the run at once (cgroup.kill),
// including any that called setsid and double-forked.
func (p *Process) Kill() error { return p.group.Kill() }

// KillAndWait kills the run's processes and waits until its cgroup is
// empty or ctx ends. A kept helper that said clean has killed and reaped
// what its run left: when its group holds only the helper, nothing
// is killed and the helper stays for the next run.
func (p *Process) KillAndWait(ctx context.Context) error {
	if p.reusable.Load() {
		n, err := p.group.Tasks()
		if err == nil && n == 1 {
			return nil
		}
		if err != nil {
			p.sb.cfg.Log.Warn("count a kept helper's tasks; its group is killed instead", "helper", p.Pid(), "err", err)
		}
		p.reusable.Store(false)
	}
	return p.group.KillAndWait(ctx)
}

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

// Close releases the run's cgroup, which must be empty (KillAndWait):
// deleted, or kept for the next warm helper or cold run (cgroup.Group.Release). It
// also closes the control socket.
func (p *Process) Close() error {
	p.mu.Lock()
	closed := p.closed
	p.closed = true
	p.mu.Unlock()
	if closed {
		return nil
	}
	var errs []error
	if p.reusable.Load() {
		kept, err := p.keep()
		if kept {
			return err
		}
		errs = append(errs, err)
	}
	if p.unreaped {
		// The group is empty (KillAndWait): the helper is dead.
		if _, err := p.reap(); err != nil {
			errs = append(errs, err)
		}
	}
	err := errors.Join(append(errs, p.group.Release())...)
	if p.netNS != nil {
		if err == nil {
			// Every process of the run is gone with its group.
			p.sb.nets.Put(p.student, p.netNS)
		} else {
			err = errors.Join(err, p.netNS.Close())
		}
		p.netNS = nil
	}
	return errors.Join(err, p.ctl.Close())
}

// keep hands a kept helper, clean after its run, to the pool as a new
// Process once it is ready (awaitKept), with its group
// (cgroup.Group.KeepForNextRun); the run's network namespace goes back to
// the student's. When the helper should end with its run instead, it ends
// it (endKept) and returns false; the group is then the caller's to
// release, as any run's.
func (p *Process) keep() (bool, error) {
	ok, err := p.group.KeepForNextRun()
	if err != nil || !ok {
		// KeepForNextRun changed nothing: the helper ends as any other.
		p.reusable.Store(false)
		if err != nil {
			p.sb.cfg.Log.Warn("keep a helper for another run; it ends instead", "helper", p.Pid(), "err", err)
		}
		return false, p.endKept()
	}
	if p.netNS != nil {
		// The helper went back to its template's network namespace and
		// nothing else of the run is left: the namespace is free.
		p.sb.nets.Put(p.student, p.netNS)
		p.netNS = nil
	}
	next := &Process{sb: p.sb, group: p.group, cmd: p.cmd, ctl: p.ctl, settledCh: make(chan struct{})}
	p.handedOver.Store(true)
	p.sb.keeping.Add(1)
	go p.sb.awaitKept(next)
	return true, nil
}

// awaitKept waits for a kept helper to have armed its next run's
// namespaces, then gives it to the pool with its group's peak reset and
// CPU counted from here (what the helper did for the next run is not the
// run's); anything else discards it.
func (s *Sandbox) awaitKept(p *Process) {
	defer s.keeping.Done()
	err := p.awaitReady(cleanupWait)
	if err == nil {
		err = p.group.ResetPeak()
	}
	if err == nil {
		p.cpuBase, err = p.group.CPUTime()
	}
	if err == nil {
		if s.pool.put(p) {
			s.reused.Add(1)
			return
		}
	} else {
		s.cfg.Log.Warn("keep a helper for another run; it ends instead", "helper", p.Pid(), "err", err)
	}
	if err := p.discard(); err != nil {
		s.cfg.Log.Error("discard a kept helper", "helper", p.Pid(), "err", err)
	}
}

// endKept ends a kept helper that said clean but will serve no other run:
// it exits on EOF (ExitAborted), and is reaped.
func (p *Process) endKept() error {
	if err := p.ctl.CloseWrite(); err != nil {
		return fmt.Errorf("end kept helper %d: %w", p.Pid(), err)
	}
	if _, err := p.reap(); err != nil {
		return err
	}
	return nil
}

// discard ends a helper that no run will use: it exits without running
// anything, and its group is removed.
func (p *Process) discard() error {
	errs := []error{p.Abort()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errs = append(errs, p.KillAndWait(ctx))
	if _, err := p.Wait(nil); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, p.Close())
	return errors.Join(errs...)
}
