package run

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/api"
)

// inputChanged is told by the sandbox when the program starts or
// stops waiting for input (sandbox/input.go watches its tasks). While it
// waits, the wall limit is paused (a student thinking is not the program
// running long) and the input limit runs instead: an abandoned program
// ends input_timeout after Config.InputWait.
func (r *Execution) inputChanged(waiting bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ending.Load() || r.info.State != api.StateRunning || waiting == r.info.WaitingInput {
		return
	}
	now := time.Now()
	r.info.WaitingInput = waiting
	if waiting {
		r.waitFrom = now
		if r.wallTimer != nil && r.wallTimer.Stop() {
			r.wallLeft -= now.Sub(r.wallFrom)
		}
		if r.inputTimer == nil {
			r.inputTimer = time.AfterFunc(r.e.cfg.InputWait, func() { r.kill(api.ReasonInputTimeout) })
		} else {
			r.inputTimer.Reset(r.e.cfg.InputWait)
		}
		r.log.appendEvent(api.Event{Type: api.EventInputWait})
		return
	}
	r.waited += now.Sub(r.waitFrom)
	if r.inputTimer != nil {
		r.inputTimer.Stop()
	}
	if r.wallTimer != nil {
		r.wallFrom = now
		r.wallTimer.Reset(max(r.wallLeft, 0))
	}
	r.log.appendEvent(api.Event{Type: api.EventInputResume})
}

// inputWaitedLocked is how long the program has waited for input so far.
func (r *Execution) inputWaitedLocked(now time.Time) time.Duration {
	if r.info.WaitingInput {
		return r.waited + now.Sub(r.waitFrom)
	}
	return r.waited
}

// readTerminal turns the pty's output into stdout events until the
// program's side is closed by every process of the run (EIO), or finish
// closes the master.
func (r *Execution) readTerminal(master *os.File) {
	defer r.readers.Done()
	buf := make([]byte, 4<<10)
	for {
		n, err := master.Read(buf)
		if n > 0 {
			r.appendOutput(api.EventStdout, buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// writeTerminal types p into the pty; eof is Ctrl-D, as in a terminal (a
// pty has no end of its own). Called with stdinMu held.
func (r *Execution) writeTerminal(ctx context.Context, p []byte, eof bool) error {
	if eof {
		p = append(p[:len(p):len(p)], 0x04)
	}
	deadline := time.Now().Add(10 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := r.master.SetWriteDeadline(deadline); err != nil {
		return fmt.Errorf("set terminal deadline of run %s: %w", r.id, err)
	}
	if _, err := r.master.Write(p); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return api.Errorf(api.CodeTimeout, "run %s is not reading its terminal", r.id)
		}
		return fmt.Errorf("write terminal of run %s: %w", r.id, err)
	}
	return nil
}

// interruptTerminal is Ctrl-C typed at the terminal: the line discipline
// sends SIGINT to the foreground process group (and drops pending input),
// as in a real one. False when the run has no terminal.
func (r *Execution) interruptTerminal() (bool, error) {
	r.stdinMu.Lock()
	defer r.stdinMu.Unlock()
	if r.master == nil {
		return r.Info().Terminal != nil, nil
	}
	if _, err := r.master.Write([]byte{0x03}); err != nil {
		return true, fmt.Errorf("interrupt run %s: %w", r.id, err)
	}
	return true, nil
}

// Resize sets the terminal's size; the program gets SIGWINCH.
func (r *Execution) Resize(t api.Terminal) error {
	if err := t.Check(); err != nil {
		return err
	}
	r.stdinMu.Lock()
	defer r.stdinMu.Unlock()
	if r.master == nil {
		if r.Info().Terminal == nil {
			return api.Errorf(api.CodeInvalidRequest, "run %s has no terminal (start it with \"terminal\")", r.id)
		}
		return api.Errorf(api.CodeRunEnded, "run %s has ended", r.id)
	}
	rc, err := r.master.SyscallConn()
	if err != nil {
		return fmt.Errorf("resize run %s: %w", r.id, err)
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: t.Rows, Col: t.Cols})
	}); err != nil {
		return fmt.Errorf("resize run %s: %w", r.id, err)
	}
	if ierr != nil {
		return fmt.Errorf("resize run %s: %w", r.id, ierr)
	}
	r.mu.Lock()
	r.info.Terminal = &t
	r.mu.Unlock()
	return nil
}
