package harness

import (
	"fmt"
	"os/exec"
	"runtime"
)

// Process is a child started so that it dies with its starter however the
// starter dies, when its SysProcAttr.Pdeathsig is set: the parent-death
// signal follows the thread that forked the child, not the process, so
// the child is started and waited for from a goroutine locked to its own
// OS thread, which lives exactly as long as the child.
type Process struct {
	Cmd    *exec.Cmd
	exited chan struct{}
	err    error // Wait's result, set before exited is closed
}

// Launch starts cmd that way.
func Launch(cmd *exec.Cmd) (*Process, error) {
	p := &Process{Cmd: cmd, exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine, after the
		// child, which is harmless then.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- fmt.Errorf("start %s: %w", cmd.Path, err)
			close(p.exited)
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.exited)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// Exited is closed once the child has exited and been reaped.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Err is Wait's result once Exited is closed: nil for exit status 0.
func (p *Process) Err() error {
	<-p.exited
	return p.err
}

// Running reports whether the child has not exited.
func (p *Process) Running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// PID is the child's process id.
func (p *Process) PID() int { return p.Cmd.Process.Pid }
