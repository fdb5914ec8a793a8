package run_test

// The fidelity suite's hooks into the console features of issue 13.
// fidelity_test.go calls only these for them; whoever implements or
// changes a feature changes the body here and nothing else. A hook whose
// feature is missing fails the program's test with "... not implemented
// yet", so the suite compiles and runs and says what is missing; today
// every hook has its feature. In terminal mode WriteStdin types into the
// pty's master and Interrupt types Ctrl-C there.

import (
	"context"
	"testing"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/testutil"
)

// startTerminal starts req on a pseudo-terminal of rows x cols (issue 13:
// "terminal": {"rows": R, "cols": C} in the start request) and returns the
// running run. The program's stdin, stdout and stderr are the pty's slave,
// it is its session's leader with the pty as its controlling terminal (so
// /dev/tty, getpass, job-control signals and SIGWINCH work), TERM is
// xterm-256color, and the pty's termios are the kernel's defaults for a new
// pty (ECHO, ICANON, ISIG, ICRNL, OPOST|ONLCR, ...), as the reference's are.
// Every byte the master reads becomes output events, in order (any output
// event type that outputStream maps).
func startTerminal(ctx context.Context, t *testing.T, env *testutil.Env, req api.RunRequest, rows, cols int) *run.Execution {
	t.Helper()
	req.Terminal = &api.Terminal{Rows: uint16(rows), Cols: uint16(cols)}
	r, err := env.Engine.Start(ctx, req)
	if err != nil {
		t.Fatalf("start %s/%s on a %dx%d terminal: %v", req.Student, req.Script, rows, cols, err)
	}
	return r
}

// typeKeys writes p to a terminal-mode run as keys typed at its terminal
// (the pty master: the line discipline echoes, edits and turns ^C into
// SIGINT). Today the run's stdin is the only way in; terminal mode may
// route WriteStdin to the master, or need a call of its own here.
func typeKeys(ctx context.Context, t *testing.T, r *run.Execution, p []byte) {
	t.Helper()
	if err := r.WriteStdin(ctx, p, false); err != nil {
		t.Fatalf("type %q into run %s: %v", p, r.ID(), err)
	}
}

// interruptRun delivers Ctrl-C to r as POST /v1/runs/{id}/interrupt does
// (issue 13). Pipe mode: SIGINT to the program's foreground process group,
// as the reference does with kill(-pgid, SIGINT). Terminal mode: through
// the pty as if Ctrl-C were typed (the reference writes 0x03 to its
// master), so the terminal echoes ^C exactly as in the reference. It
// returns once the signal or byte is delivered; the run goes on if the
// program catches it. Execution.Interrupt does the pipe-mode half; in
// terminal mode it must go through the pty too.
func interruptRun(ctx context.Context, t *testing.T, env *testutil.Env, r *run.Execution) {
	t.Helper()
	_, _ = ctx, env
	if err := r.Interrupt(); err != nil {
		t.Fatalf("interrupt run %s: %v", r.ID(), err)
	}
}

// awaitInputWait returns once r's program is blocked reading an empty
// stdin: the run's waiting_input (issue 13), which its input_wait event
// announces. The suite uses it only after awaiting a program's first
// prompt, so a waiting_input left from an earlier read cannot answer.
func awaitInputWait(ctx context.Context, t *testing.T, r *run.Execution) {
	t.Helper()
	var seq int64
	for {
		if r.Info().WaitingInput {
			return
		}
		evs, more := r.EventsAfter(seq)
		for _, ev := range evs {
			seq = ev.Seq
			if ev.Type == api.EventEnd {
				t.Fatalf("run %s ended (%s) without waiting for input", r.ID(), ev.Run.Reason)
			}
		}
		if len(evs) > 0 {
			continue
		}
		select {
		case <-more:
		case <-ctx.Done():
			t.Fatalf("run %s never waited for input: %v", r.ID(), ctx.Err())
		}
	}
}

// resizeTerminal sets a terminal-mode run's window size (POST
// /v1/runs/{id}/resize): TIOCSWINSZ on the master, which sends SIGWINCH to
// the pty's foreground process group, as the reference does.
func resizeTerminal(ctx context.Context, t *testing.T, env *testutil.Env, r *run.Execution, rows, cols int) {
	t.Helper()
	_, _ = ctx, env
	if err := r.Resize(api.Terminal{Rows: uint16(rows), Cols: uint16(cols)}); err != nil {
		t.Fatalf("resize run %s to %dx%d: %v", r.ID(), rows, cols, err)
	}
}

// requestCwd sets req's working directory to cwd, a directory beneath the
// student's (issue 13: "cwd": "project1"); req.Script is then relative to
// cwd, as a path typed after `cd cwd` is.
func requestCwd(t *testing.T, req *api.RunRequest, cwd string) {
	t.Helper()
	req.Cwd = cwd
}

// outputStream says which stream an event's bytes belong to: 0 stdout, 1
// stderr, ok false for events that carry no output (end, truncated, and
// issue 13's input_wait/input_resume). A terminal-mode run's output may use
// either type (or a new one mapped here): the suite compares only the
// concatenation in that mode.
func outputStream(ev api.Event) (stream int, ok bool) {
	switch ev.Type {
	case api.EventStdout:
		return 0, true
	case api.EventStderr:
		return 1, true
	}
	return 0, false
}

// referenceEnv is the environment of the suite's reference runs: what the
// engine gives a run (run.ChildEnv), TERM=xterm-256color in terminal mode
// included.
func referenceEnv(st api.Student, terminal bool) []string {
	return run.ChildEnv(st.Name, st.Workdir, terminal)
}
