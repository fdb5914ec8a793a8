package server

import (
	"context"
	"io"
	"os"

	"github.com/idexd/idexd/internal/api"
)

// Engine is all the server asks of idexd: the run engine (*run.Engine) as
// the daemon wires it. Every answer is a protocol type, whether it comes
// from a live run or from the store, so the server knows nothing of
// stores, cgroups or locks (tailscale's localapi talks to its backend the
// same way).
type Engine interface {
	StartRun(ctx context.Context, req api.RunRequest) (api.Run, error)
	GetRun(ctx context.Context, id string) (api.Run, error)
	ListRuns(ctx context.Context, f api.RunFilter) ([]api.Run, error)
	// StopRun returns the final run once its cgroup is empty and its lock
	// free; a run ended long ago as recorded.
	StopRun(ctx context.Context, id string) (api.Run, error)
	// Events returns a run's events after seq, a channel closed when more
	// arrive, and whether the run has ended (nothing more will come).
	Events(id string, after int64) (evs []api.Event, more <-chan struct{}, ended bool, err error)
	WriteStdin(ctx context.Context, id string, p []byte, eof bool) error
	// InterruptRun delivers Ctrl-C (SIGINT to the program's process
	// group); the run goes on if the program catches it.
	InterruptRun(ctx context.Context, id string) error
	// ResizeRun sets the size of a run's terminal (terminal mode).
	ResizeRun(ctx context.Context, id string, t api.Terminal) error
	// StopStudent stops every run of a student and refuses the student's
	// starts waiting in the admission queue.
	StopStudent(ctx context.Context, name string) (api.StudentStop, error)

	EnsureStudent(ctx context.Context, name string) (api.Student, error)
	GetStudent(ctx context.Context, name string) (api.Student, error)
	ListStudents(ctx context.Context) ([]api.Student, error)

	// Health is the self-check of /v1/health (and of the watchdog).
	Health(ctx context.Context) api.Health
	DebugState(ctx context.Context) (api.DebugState, error)
	// SetDraining refuses new runs (true) or accepts them again (false).
	SetDraining(bool)
	Active() int
}

// Files serves the file routes (*files.Service).
type Files interface {
	List(ctx context.Context, name, dir string) (api.FileList, error)
	Open(ctx context.Context, name, path string) (*os.File, api.FileInfo, error)
	Write(ctx context.Context, name, path string, body io.Reader, parents bool) (api.FileInfo, error)
	Remove(ctx context.Context, name, path string) error
	Move(ctx context.Context, name, from, to string, parents bool) (api.FileInfo, error)
	// Disk is a student's disk use and limits.
	Disk(ctx context.Context, st api.Student) api.Disk
	// MaxBytes is the most a file route reads or writes at once.
	MaxBytes() int64
}
