package run

import (
	"time"

	"github.com/idexd/idexd/internal/api"
)

// inputChanged is told by the run's helper when the program starts or
// stops waiting for input (sandbox/inside watches its tasks). While it
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
