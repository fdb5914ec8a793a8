// Package sandbox starts one child process the way a run needs it: as the
// student's uid/gid with no supplementary groups, in the student's
// directory, in its own session, with a clean environment, rlimits and
// no_new_privs, inside its cgroup before it runs any student code.
//
// The child is a helper (see Helper): the dedicated idexd-sandbox binary
// when idexd finds it beside itself, else idexd re-executed. It is
// cloned straight into the run's v2 cgroup and then blocks on a pipe until
// the parent sends it a Job; only then does it apply rlimits and execve()
// the interpreter. An exec failure comes back over a close-on-exec pipe, so
// the parent knows for certain whether the interpreter started.
//
// Two ways to get a helper:
//   - Start (cold): cloned already as the student, in the student's
//     directory; on a hybrid host the parent moves it into the v1 groups
//     while it waits.
//   - StartWarm: cloned as root in "/", ahead of time, into a prepared group
//     (and moved into its v1 groups) off the path of any request. Launch
//     later sends the job; the helper then drops to the student's uid/gid
//     with no groups and enters the directory itself before it execs. This
//     takes the v1 cgroup move (an RCU grace period, ~8-15 ms when the host
//     was idle) off the path from Run to first output.
package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// helperArg0 marks a process as the helper; Helper checks for it.
const helperArg0 = "idexd-sandbox-helper"

// Exit codes of the helper itself, chosen outside what Python uses.
const (
	exitAborted    = 125 // the parent gave up before sending a job
	exitExecFailed = 127
)

// Rlimits bound one process of the run.
type Rlimits struct {
	FileSizeBytes uint64
	OpenFiles     uint64
	// CPUSeconds, when non-zero, is a per-process backstop; the run engine
	// polls the whole cgroup's CPU time for the real limit.
	CPUSeconds uint64
}

// Job is what the helper execs, and as whom.
type Job struct {
	Interpreter string
	// Argv is the interpreter's argv, argv[0] included.
	Argv     []string
	Env      []string
	Dir      string
	UID, GID uint32
	Rlimits  Rlimits
}

// Stdio are the child's standard files.
type Stdio struct {
	Stdin, Stdout, Stderr *os.File
}

// Child is a started helper, paused until Launch or Abort.
type Child struct {
	cmd     *exec.Cmd
	release *os.File // write end: the job, then EOF
	execErr *os.File // read end: EOF with no bytes means exec succeeded
	settled bool     // Launch or Abort ran: the pipes are closed
}

// Binary is the program a helper runs. The zero value re-executes the
// current binary, whose main (or TestMain) must call Helper first. Open
// gives a dedicated helper binary (cmd/idexd-sandbox), which starts in a
// third of the time: it links none of the daemon's packages.
type Binary struct {
	path string
	f    *os.File
}

// Self is the current binary, re-executed.
func Self() Binary { return Binary{} }

// Open pins the helper binary at path: the file is held open and executed
// through /proc/self/fd, so an upgrade that replaces it on disk cannot
// hand a running idexd a helper of another version, and the helper needs
// no search permission on the directories above it.
func Open(path string) (Binary, error) {
	f, err := os.Open(path)
	if err != nil {
		return Binary{}, fmt.Errorf("open sandbox helper: %w", err)
	}
	fi, err := f.Stat()
	if err == nil && (!fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0) {
		err = fmt.Errorf("not an executable file (mode %v)", fi.Mode())
	}
	if err != nil {
		return Binary{}, errors.Join(fmt.Errorf("sandbox helper %s: %w", path, err), f.Close())
	}
	// Above the helper's fds 0-4, which the child's dup2s would overwrite
	// before the exec that needs this one.
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 10)
	cerr := f.Close()
	if err != nil {
		return Binary{}, errors.Join(fmt.Errorf("pin sandbox helper %s: %w", path, err), cerr)
	}
	pinned := os.NewFile(uintptr(fd), path)
	if cerr != nil {
		return Binary{}, errors.Join(fmt.Errorf("pin sandbox helper %s: %w", path, cerr), pinned.Close())
	}
	return Binary{path: fmt.Sprintf("/proc/self/fd/%d", fd), f: pinned}, nil
}

// Close releases a pinned helper binary.
func (b Binary) Close() error {
	if b.f == nil {
		return nil
	}
	return b.f.Close()
}

// String names the helper for logs.
func (b Binary) String() string {
	if b.f == nil {
		return "idexd itself (re-executed)"
	}
	return b.f.Name()
}

// Start spawns a helper as job's uid/gid in job's directory, cloned into
// the cgroup directory cgroupFD (-1: none), paused until Launch.
func (b Binary) Start(job Job, cgroupFD int, stdio Stdio) (*Child, error) {
	attr := &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: job.UID, Gid: job.GID, Groups: []uint32{}},
	}
	return b.spawn(attr, job.Dir, cgroupFD, stdio)
}

// StartWarm spawns a root helper in "/" with an empty environment, cloned
// into cgroupFD, paused until Launch says whom to become.
func (b Binary) StartWarm(cgroupFD int, stdio Stdio) (*Child, error) {
	return b.spawn(&syscall.SysProcAttr{}, "/", cgroupFD, stdio)
}

// helperEnv is the helper's own environment; the interpreter gets the
// job's. One P and no GC: the helper allocates a few KiB before it execs,
// and each extra runtime thread is one more to signal on setresuid and to
// tear down on execve, on the path from Run to first output.
var helperEnv = []string{"GOMAXPROCS=1", "GOGC=off"}

func (b Binary) spawn(attr *syscall.SysProcAttr, dir string, cgroupFD int, stdio Stdio) (_ *Child, err error) {
	relR, relW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("create release pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("create exec-error pipe: %w", err), relR.Close(), relW.Close())
	}
	// The child's copies are closed here whatever happens; ours stay open
	// until Launch or Abort.
	defer func() {
		cerr := errors.Join(relR.Close(), errW.Close())
		if err != nil {
			err = errors.Join(err, relW.Close(), errR.Close())
		} else if cerr != nil {
			err = fmt.Errorf("close child ends of helper pipes: %w", cerr)
		}
	}()
	attr.Setsid = true
	attr.Pdeathsig = syscall.SIGKILL
	if cgroupFD >= 0 {
		attr.UseCgroupFD = true
		attr.CgroupFD = cgroupFD
	}
	path := b.path
	if path == "" {
		// The magic link works even after idexd's binary was replaced on
		// disk by an upgrade, and it needs no search permission on the
		// directories above a test binary.
		path = "/proc/self/exe"
	}
	cmd := &exec.Cmd{
		Path:        path,
		Args:        []string{helperArg0},
		Dir:         dir,
		Env:         helperEnv,
		Stdin:       stdio.Stdin,
		Stdout:      stdio.Stdout,
		Stderr:      stdio.Stderr,
		ExtraFiles:  []*os.File{relR, errW},
		SysProcAttr: attr,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("spawn helper: %w", err)
	}
	return &Child{cmd: cmd, release: relW, execErr: errR}, nil
}

// Pid is the helper's pid, which becomes the interpreter's.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// Launch sends the job and reports whether the interpreter was exec'd.
// Launch and Abort are called from one goroutine, once between them.
func (c *Child) Launch(job Job) error {
	if c.settled {
		return errors.New("helper already launched or aborted")
	}
	c.settled = true
	b, err := json.Marshal(job)
	if err != nil {
		return errors.Join(fmt.Errorf("encode job for helper %d: %w", c.Pid(), err), c.release.Close(), c.execErr.Close())
	}
	_, werr := c.release.Write(b)
	cerr := c.release.Close()
	if werr != nil {
		return errors.Join(fmt.Errorf("send job to helper %d: %w", c.Pid(), werr), c.execErr.Close())
	}
	if cerr != nil {
		return errors.Join(fmt.Errorf("close release pipe of helper %d: %w", c.Pid(), cerr), c.execErr.Close())
	}
	msg, rerr := io.ReadAll(c.execErr)
	if err := c.execErr.Close(); err != nil && rerr == nil {
		rerr = err
	}
	if rerr != nil {
		return fmt.Errorf("read exec result of helper %d: %w", c.Pid(), rerr)
	}
	if len(msg) > 0 {
		return errors.New(string(msg))
	}
	return nil
}

// Abort makes a paused helper exit without running anything. After
// Launch it does nothing.
func (c *Child) Abort() error {
	if c.settled {
		return nil
	}
	c.settled = true
	return errors.Join(c.release.Close(), c.execErr.Close())
}

// Wait waits for the child and returns its state. It waits for the exit
// on a pidfd in Go's netpoller and only then reaps: a waitid that blocks
// holds an OS thread for the whole run, one thread per live run (207
// threads at 200 runs, ~20 KiB of RSS each, bench/README.md).
func (c *Child) Wait() (*os.ProcessState, error) {
	if err := c.awaitExit(); err != nil {
		// Reaping below still works, only on a blocked thread.
		err = fmt.Errorf("wait for pid %d on a pidfd: %w", c.Pid(), err)
		ps, werr := c.reap()
		return ps, errors.Join(err, werr)
	}
	return c.reap()
}

// awaitExit returns once the child has exited, without reaping it.
func (c *Child) awaitExit() error {
	fd, err := unix.PidfdOpen(c.Pid(), unix.PIDFD_NONBLOCK)
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

func (c *Child) reap() (*os.ProcessState, error) {
	err := c.cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ProcessState, nil
	}
	if err != nil {
		return c.cmd.ProcessState, fmt.Errorf("wait for pid %d: %w", c.Pid(), err)
	}
	return c.cmd.ProcessState, nil
}
