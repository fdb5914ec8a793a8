package run

import (
	"context"
	"os"
	"syscall"
	"time"

	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/netns"
	"github.com/idexd/idexd/internal/sandbox"
	"github.com/idexd/idexd/internal/sandbox/inside"
)

// Sandbox starts the processes of runs. The real one is *sandbox.Sandbox
// (through Real); tests of the lifecycle use a fake that needs no root.
type Sandbox interface {
	// Prepare returns a process ready to launch, in a cgroup with lim; on
	// error nothing is left behind and the error names the step
	// (*sandbox.StepError).
	Prepare(student, id string, lim cgroup.Limits) (Process, error)
	WarmReady() int
	WarmStarts() int64
	// HelpersReused is how many times a helper was kept for another run.
	HelpersReused() int64
	// NetworksKept is how many network namespaces the sandbox keeps for
	// students' next runs; Networks, where those of runs came from.
	NetworksKept() int
	Networks() netns.Stats
	Close() error
}

// Process is one run's process tree (see sandbox.Process).
type Process interface {
	// Launch starts the program; with job.Terminal it returns the pty's
	// master.
	Launch(job inside.Job, pids int64, stdin, stdout, stderr *os.File) (*os.File, error)
	Abort() error
	// Wait returns once the process has exited; onInput hears when the
	// program starts and stops waiting for input.
	Wait(onInput func(waiting bool)) (sandbox.Exit, error)
	Interrupt(sig syscall.Signal) error
	Kill() error
	KillAndWait(ctx context.Context) error
	CPUTime() (time.Duration, error)
	Stats() (cgroup.Stats, error)
	Close() error
	Pid() int
	Warm() bool
}

// Grouped is a Process that can name its cgroup (*sandbox.Process): a
// group beside the students' groups (cgroup.Group.Beside: a warm one's, or
// with a pool a cold one's) is weighed as a part of its student's share
// (Engine.place). The fake of the lifecycle tests has
// none.
type Grouped interface {
	Group() *cgroup.Group
}

// The real process must stay Grouped: were it not, runs beside the students would go
// unweighed without a word (the assertion in place is optional).
var _ Grouped = (*sandbox.Process)(nil)

// Real adapts a *sandbox.Sandbox to Sandbox.
func Real(sb *sandbox.Sandbox) Sandbox { return realSandbox{sb} }

type realSandbox struct{ *sandbox.Sandbox }

func (s realSandbox) Prepare(student, id string, lim cgroup.Limits) (Process, error) {
	p, err := s.Sandbox.Prepare(student, id, lim)
	if err != nil {
		return nil, err
	}
	return p, nil
}
