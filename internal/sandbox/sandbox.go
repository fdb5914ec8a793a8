// Package sandbox starts one child process the way a run needs it: as the
// student's uid/gid with no supplementary groups, in the student's
// directory, in its own session, with a clean environment, rlimits and
// no_new_privs, cloned straight into its cgroup.
//
// The child is idexd itself re-executed in helper mode (see Helper). The
// helper is cloned into the run's v2 cgroup already running as the student;
// it then blocks on a pipe until the parent has also placed it in the v1
// groups (hybrid hosts), so not one instruction of student code runs outside
// the limits. Only then does it apply rlimits and execve() the interpreter.
// An exec failure comes back over a close-on-exec pipe, so the parent knows
// for certain whether the interpreter started.
package sandbox

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

// helperArg0 marks a process as the helper; Helper checks for it.
const helperArg0 = "idexd-sandbox-helper"

// Exit codes of the helper itself, chosen outside what Python uses.
const (
	exitAborted    = 125 // the parent gave up before release
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

// Spec is one child to start.
type Spec struct {
	Interpreter string
	// Argv is the interpreter's argv, argv[0] included.
	Argv     []string
	Dir      string
	Env      []string
	UID, GID uint32
	Rlimits  Rlimits
	// CgroupFD is the run's v2 cgroup directory, or -1.
	CgroupFD int
	Stdin    *os.File
	Stdout   *os.File
	Stderr   *os.File
}

// Child is a started, paused helper.
type Child struct {
	cmd     *exec.Cmd
	release *os.File // write end: one byte lets the helper exec
	execErr *os.File // read end: EOF with no bytes means exec succeeded
	settled bool     // Release or Abort ran: the pipes are closed
}

// Start spawns the helper, paused before exec.
func Start(s Spec) (_ *Child, err error) {
	relR, relW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("create release pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("create exec-error pipe: %w", err), relR.Close(), relW.Close())
	}
	// The child's copies are closed here whatever happens; ours stay open
	// until Release or Abort.
	defer func() {
		cerr := errors.Join(relR.Close(), errW.Close())
		if err != nil {
			err = errors.Join(err, relW.Close(), errR.Close())
		} else if cerr != nil {
			err = fmt.Errorf("close child ends of helper pipes: %w", cerr)
		}
	}()
	args := []string{
		helperArg0,
		s.Interpreter,
		strconv.FormatUint(s.Rlimits.FileSizeBytes, 10),
		strconv.FormatUint(s.Rlimits.OpenFiles, 10),
		strconv.FormatUint(s.Rlimits.CPUSeconds, 10),
	}
	args = append(args, s.Argv...)
	cmd := &exec.Cmd{
		// The magic link works even after idexd's binary was replaced on disk
		// by an upgrade, and it needs no search permission on the directories
		// above a test binary.
		Path:       "/proc/self/exe",
		Args:       args,
		Dir:        s.Dir,
		Env:        s.Env,
		Stdin:      s.Stdin,
		Stdout:     s.Stdout,
		Stderr:     s.Stderr,
		ExtraFiles: []*os.File{relR, errW},
		SysProcAttr: &syscall.SysProcAttr{
			Setsid:     true,
			Pdeathsig:  syscall.SIGKILL,
			Credential: &syscall.Credential{Uid: s.UID, Gid: s.GID, Groups: []uint32{}},
		},
	}
	if s.CgroupFD >= 0 {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = s.CgroupFD
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("spawn helper: %w", err)
	}
	return &Child{cmd: cmd, release: relW, execErr: errR}, nil
}

// Pid is the helper's pid, which becomes the interpreter's.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// Release lets the helper exec the interpreter and reports whether it did.
func (c *Child) Release() error {
	if c.settled {
		return errors.New("helper already released or aborted")
	}
	c.settled = true
	_, werr := c.release.Write([]byte{1})
	cerr := c.release.Close()
	if werr != nil {
		return errors.Join(fmt.Errorf("release helper %d: %w", c.Pid(), werr), c.execErr.Close())
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
// Release it does nothing. Release and Abort are called from one goroutine.
func (c *Child) Abort() error {
	if c.settled {
		return nil
	}
	c.settled = true
	return errors.Join(c.release.Close(), c.execErr.Close())
}

// Wait waits for the child and returns its state.
func (c *Child) Wait() (*os.ProcessState, error) {
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

// Kill sends SIGKILL to the child itself (not its group); the run engine
// uses the cgroup for that, this is for a child whose cgroup is unusable.
func (c *Child) Kill() error {
	if err := c.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill pid %d: %w", c.Pid(), err)
	}
	return nil
}
