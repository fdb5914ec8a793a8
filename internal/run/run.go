package run

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"time"
	"unicode/utf8"

	"sync"
	"sync/atomic"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/lock"
	"github.com/idexd/idexd/internal/sandbox"
	"github.com/idexd/idexd/internal/sandbox/inside"
)

// Execution is one run: its child, its output events and its end.
type Execution struct {
	e     *Engine
	id    string
	lim   api.Limits
	lease lock.Lease
	quiet func() // releases the run's hold on the sysmon quieter

	mu        sync.Mutex
	info      api.Run
	argv0     string // the script as the request named it
	log       *eventLog
	out       *stdio // set once the process exists; finish ends its reader
	outBytes  int64
	truncated bool
	reason    api.Reason // the first requested end reason wins
	startErr  error
	proc      Process
	started   bool // the program may run; kill now goes to the cgroup
	killedAt  time.Time

	stdinMu sync.Mutex
	stdin   *os.File
	// master is the pty's master in terminal mode: input is written to it
	// and output read from it. Under stdinMu.
	master *os.File
	// stdinGone is set when the run's end closed stdin: from then on a
	// write is answered run_ended, not stdin_closed (which means eof=1).
	stdinGone bool

	// wallTimer and cpuTimer enforce the limits as timer callbacks, not a
	// goroutine per run (one less 8 KiB stack per live run); under mu.
	wallTimer *time.Timer
	cpuTimer  *time.Timer
	// The wall limit pauses while the program waits for input: wallLeft
	// is what is left of it as of wallFrom. inputTimer ends a program
	// that waits too long; waited sums the waits before waitFrom.
	wallLeft   time.Duration
	wallFrom   time.Time
	inputTimer *time.Timer
	waitFrom   time.Time
	waited     time.Duration

	readers sync.WaitGroup
	// settled is closed once the start path has decided (the program runs,
	// or the start failed or was stopped): only then may the process's
	// exit finish the run, or a helper that exits because its launch
	// failed would end the run "exited" before start_failed is recorded.
	settled    chan struct{}
	settleOnce sync.Once
	ending     atomic.Bool // finish has begun
	done       chan struct{}
	finished   sync.Once
}

func newRun(e *Engine, id string, lim api.Limits, lease lock.Lease) *Execution {
	r := &Execution{e: e, id: id, lim: lim, lease: lease, done: make(chan struct{}), settled: make(chan struct{})}
	r.log = newEventLog(&r.mu)
	return r
}

// ID is the run's id.
func (r *Execution) ID() string { return r.id }

// Pid is the host pid of the run's PID 1 (idexd's helper, the program's
// parent), 0 before it exists.
func (r *Execution) Pid() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return 0
	}
	return r.proc.Pid()
}

// Done is closed once the run has ended and its end event is published.
func (r *Execution) Done() <-chan struct{} { return r.done }

// Info returns a copy of the run object.
func (r *Execution) Info() api.Run {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.snapshot()
}

func (r *Execution) snapshot() api.Run {
	info := r.info
	info.Args = append([]string(nil), r.info.Args...)
	if t := r.info.Terminal; t != nil {
		c := *t
		info.Terminal = &c
	}
	if info.State == api.StateRunning {
		info.WallMS = time.Since(info.StartedAt).Milliseconds()
		info.OutputBytes = r.outBytes
		info.Truncated = r.truncated
	}
	return info
}

// Live is Info with what the run uses now: its cgroup's memory and CPU
// time, for GET /v1/runs and idexctl ps. Info alone reads no file.
func (r *Execution) Live() api.Run {
	info := r.Info()
	r.mu.Lock()
	proc, started := r.proc, r.started
	r.mu.Unlock()
	if info.State != api.StateRunning || !started || r.ending.Load() {
		return info
	}
	// A run that ends meanwhile has its group deleted: its figures are
	// then in its end record, and the live ones are left out.
	if s, err := proc.Stats(); err == nil {
		info.MemoryBytes, info.CPUMS = s.Memory, s.CPU.Milliseconds()
	}
	return info
}

func (r *Execution) startedAt() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.info.StartedAt
}

// start carries the run from its lock to a running program. On failure
// the run is finished with start_failed (naming the step) and the error
// says so. t0 is when the request arrived, admitted when the lock and
// record were done; the step timings start from admitted.
func (r *Execution) start(workdir, cwd string, t0, admitted time.Time) error {
	e := r.e
	var steps stepTimer
	steps.start(admitted)
	steps.b = fmt.Appendf(steps.b, "admit=%.2fms", float64(admitted.Sub(t0).Microseconds())/1000)
	lim := r.lim
	cgLim := cgroup.Limits{MemoryBytes: lim.MemoryMB << 20, Pids: lim.Pids, CPUPercent: lim.CPUPercent}
	argv := []string{e.cfg.Interpreter}
	if r.info.Mode == api.ModeRepl {
		argv = append(argv, "-i")
	}
	// "--" ends the interpreter's options: a script named "-c" or
	// "--help.py" is a file, and sys.argv still reads as the student wrote it.
	argv = append(argv, "--", r.argv0)
	argv = append(argv, r.info.Args...)
	job := inside.Job{
		Interpreter: e.cfg.Interpreter,
		Argv:        argv,
		Env:         childEnv(r.info.Student, workdir, r.info.Terminal != nil),
		Dir:         workdir,
		Cwd:         cwd,
		UID:         r.info.UID,
		GID:         r.info.GID,
		User:        r.info.Student,
		// What the layout of students' directories needs: private (077) or
		// shared with the web tier through the group (007).
		Umask: e.umask(),
		Rlimits: inside.Rlimits{
			FileSizeBytes: e.cfg.FileSizeBytes,
			OpenFiles:     e.cfg.OpenFiles,
			CPUSeconds:    uint64(lim.CPUSeconds) + 1,
		},
	}
	failed := func(step string, err error) error {
		r.mu.Lock()
		if r.reason == "" {
			r.reason = api.ReasonStartFailed
			r.startErr = fmt.Errorf("%s: %w", step, err)
		}
		r.mu.Unlock()
		return err
	}
	// endedBy is the error Start returns once the run has ended during
	// start-up: start_failed when a step failed first, nothing when a stop
	// or shutdown came first (the run is returned, ended with that reason).
	endedBy := func(step string, err error) error {
		if r.Info().Reason != api.ReasonStartFailed {
			return nil
		}
		return r.startFailedError(step, err)
	}
	// Before the process exists: finish directly.
	fail := func(step string, err error) error {
		ferr := failed(step, err)
		r.finish(nil)
		return endedBy(step, ferr)
	}
	if err := e.step(StepInterpreter); err != nil {
		return fail(StepInterpreter, err)
	}
	if err := CheckInterpreter(e.cfg.Interpreter); err != nil {
		return fail(StepInterpreter, err)
	}
	if err := e.step(StepPipes); err != nil {
		return fail(StepPipes, err)
	}
	p, err := newStdio(e.sockets)
	if err != nil {
		return fail(StepPipes, err)
	}
	proc, err := e.sb.Prepare(r.info.Student, r.id, cgLim)
	if err != nil {
		step := StepSpawn
		var se *sandbox.StepError
		if errors.As(err, &se) {
			step, err = se.Step, se.Err
		}
		return fail(step, errors.Join(err, p.closeAll()))
	}
	// From here the process exists: every path ends through wait -> finish.
	r.mu.Lock()
	r.proc, r.stdin, r.out = proc, p.stdinW, p
	r.mu.Unlock()
	r.readers.Add(1)
	go r.readOutput(p)
	go r.wait()
	if proc.Warm() {
		steps.mark("claim")
	} else {
		steps.mark("prepare")
	}
	settle := func() { r.settleOnce.Do(func() { close(r.settled) }) }
	abort := func(step string, err error) error {
		ferr := failed(step, err)
		settle()
		if cerr := p.closeChildEnds(); cerr != nil {
			e.log.Error("close child ends of pipes", "run", r.id, "err", cerr)
		}
		if aerr := proc.Abort(); aerr != nil {
			e.log.Error("abort helper", "run", r.id, "err", aerr)
		}
		r.kill(api.ReasonStartFailed)
		<-r.done
		return endedBy(step, ferr)
	}
	r.mu.Lock()
	r.started = true
	stopNow := r.reason != ""
	r.mu.Unlock()
	if stopNow {
		// Stopped (or shut down) while starting: the program never runs.
		settle()
		if err := errors.Join(p.closeChildEnds(), proc.Abort()); err != nil {
			e.log.Error("abort helper", "run", r.id, "err", err)
		}
		r.kill(api.ReasonStopped)
		return nil
	}
	if err := e.step(StepExec); err != nil {
		return abort(StepExec, err)
	}
	if t := r.info.Terminal; t != nil {
		job.Terminal = &inside.Winsize{Rows: t.Rows, Cols: t.Cols}
	}
	stdin, stdout, stderr := p.childFiles()
	master, err := proc.Launch(job, lim.Pids, stdin, stdout, stderr)
	// The program holds its own copies now (or never will): the end of its
	// output must be EOF for the readers.
	if cerr := p.closeChildEnds(); cerr != nil {
		e.log.Error("close child ends of pipes", "run", r.id, "err", cerr)
	}
	if err != nil {
		return abort(StepExec, err)
	}
	if master != nil {
		// Before settle: finish, which waits for the readers, cannot
		// have begun.
		r.stdinMu.Lock()
		r.master = master
		r.stdinMu.Unlock()
		r.readers.Add(1)
		go r.readTerminal(master)
	}
	settle()
	steps.mark(StepExec)
	r.supervise()
	if h := e.cfg.Hooks.Started; h != nil {
		info := r.Info()
		h(&info, time.Since(t0))
	}
	e.log.Info("run started", "run", r.id, "student", r.info.Student, "script", r.info.Script,
		"uid", r.info.UID, "pid", proc.Pid(), "warm", proc.Warm(), "start_ms", time.Since(t0).Milliseconds(), "steps", steps.String())
	return nil
}

func (r *Execution) startFailedError(step string, err error) error {
	return &api.Error{
		Code:    api.CodeStartFailed,
		Message: fmt.Sprintf("start run %s: step %s: %v", r.id, step, err),
		RunID:   r.id,
	}
}

// CheckInterpreter reports whether path is a file every student may execute.
func CheckInterpreter(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("interpreter %s: %w", path, err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o001 == 0 {
		return fmt.Errorf("interpreter %s is not a file that every user may execute (mode %s)", path, st.Mode())
	}
	return nil
}

// childEnv is the whole environment of a run: nothing of the daemon's own.
func childEnv(student, workdir string, terminal bool) []string {
	env := []string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"HOME=" + workdir,
		"USER=" + student,
		"LOGNAME=" + student,
		"LANG=C.UTF-8",
		"LC_ALL=C.UTF-8",
		"PYTHONUNBUFFERED=1",
		"PYTHONIOENCODING=utf-8",
		// The run's own /tmp, a private tmpfs gone when it ends.
		"TMPDIR=/tmp",
	}
	if terminal {
		// What xterm.js and the terminals idexctl runs in understand.
		env = append(env, "TERM=xterm-256color")
	}
	return env
}

// cpuPoll is how often, at most, a run's CPU time is read against its
// limit: the overshoot of the limit is within one cpuPoll of CPU.
const cpuPoll = 250 * time.Millisecond

// nextCPUCheck is how long the run needs at the least to spend the CPU time
// it has left: it cannot use more than every CPU of the host at once, so
// there is no point reading before. (Not its cpu_percent: a host without
// the cpu controller, such as a container's delegated tree, does not
// enforce it.) A program that waits for input or sleeps then costs a read
// every few seconds instead of four a second, which at 500 live runs was
// 2,000 reads a second.
func (r *Execution) nextCPUCheck(used time.Duration) time.Duration {
	left := time.Duration(r.lim.CPUSeconds)*time.Second - used
	return max(cpuPoll, left/time.Duration(runtime.NumCPU()))
}

// supervise arms the wall-clock limit and the CPU-time checks.
func (r *Execution) supervise() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ending.Load() {
		return // finish stops the timers; it has begun, so arm none
	}
	r.wallLeft, r.wallFrom = time.Duration(r.lim.WallSeconds)*time.Second, time.Now()
	r.wallTimer = time.AfterFunc(r.wallLeft, func() { r.kill(api.ReasonTimedOut) })
	r.cpuTimer = time.AfterFunc(r.nextCPUCheck(0), r.checkCPU)
}

// checkCPU ends the run once its group used its CPU time, else looks again
// when it could have (nextCPUCheck).
func (r *Execution) checkCPU() {
	if r.ending.Load() {
		return
	}
	next := cpuPoll
	cpu, err := r.proc.CPUTime()
	switch {
	case err != nil && r.ending.Load():
		return // finish is deleting the group: nothing to watch
	case err != nil:
		r.e.log.Warn("read cpu time", "run", r.id, "err", err)
	case cpu >= time.Duration(r.lim.CPUSeconds)*time.Second:
		r.kill(api.ReasonTimedOut)
		return
	default:
		next = r.nextCPUCheck(cpu)
	}
	r.mu.Lock()
	if !r.ending.Load() {
		r.cpuTimer.Reset(next)
	}
	r.mu.Unlock()
}

// stopLimits disarms the limit timers; finish calls it after setting ending.
func (r *Execution) stopLimits() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, t := range []*time.Timer{r.wallTimer, r.cpuTimer, r.inputTimer} {
		if t != nil {
			t.Stop()
		}
	}
}

// kill asks for the run to end with reason; the first reason asked wins.
func (r *Execution) kill(reason api.Reason) {
	r.mu.Lock()
	if r.reason == "" && r.info.State == api.StateRunning {
		r.reason = reason
	}
	if r.killedAt.IsZero() {
		r.killedAt = time.Now()
	}
	proc, started := r.proc, r.started
	r.mu.Unlock()
	if proc != nil && started {
		if err := proc.Kill(); err != nil {
			r.e.log.Warn("kill run cgroup", "run", r.id, "err", err)
		}
	}
}

// Interrupt is Ctrl-C: SIGINT to the helper, the run's PID 1, which passes
// it to the program's process group (sandbox/inside). The program decides
// what it does (KeyboardInterrupt in Python); the run is not ended here.
func (r *Execution) Interrupt() error {
	r.mu.Lock()
	proc, started := r.proc, r.started
	r.mu.Unlock()
	if !started || r.ending.Load() {
		return api.Errorf(api.CodeRunEnded, "run %s is not running its program (it is starting or has ended)", r.id)
	}
	defer inputSent(proc)
	if term, err := r.interruptTerminal(); term {
		return err
	}
	if err := proc.Interrupt(syscall.SIGINT); err != nil {
		if r.ending.Load() {
			return api.Errorf(api.CodeRunEnded, "run %s has ended", r.id)
		}
		return fmt.Errorf("interrupt run %s: %w", r.id, err)
	}
	return nil
}

// Stop ends the run with reason stopped (unless it already ends for
// another reason) and returns its final object.
func (r *Execution) Stop(ctx context.Context) (api.Run, error) {
	r.kill(api.ReasonStopped)
	select {
	case <-r.done:
		return r.Info(), nil
	case <-ctx.Done():
		return api.Run{}, fmt.Errorf("stop run %s: %w", r.id, ctx.Err())
	}
}

// wait reaps the run's process, then finishes the run.
func (r *Execution) wait() {
	ex, err := r.proc.Wait(r.inputChanged)
	if err != nil {
		r.e.log.Error("wait for run", "run", r.id, "err", err)
	}
	<-r.settled
	r.finish(&ex)
}

// finish is the one way a run ends. It runs once: kill whatever is left in
// the cgroup, wait until it is empty, read the stats, delete it, release
// the lock, write the final record, and only then publish the end.
func (r *Execution) finish(ex *sandbox.Exit) {
	r.finished.Do(func() { r.doFinish(ex) })
}

func (r *Execution) doFinish(ex *sandbox.Exit) {
	r.ending.Store(true)
	r.stopLimits()
	e := r.e
	log := e.log.With("run", r.id, "student", r.info.Student)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error

	r.mu.Lock()
	proc := r.proc
	// Nothing may start in the group any more; kill now goes nowhere.
	r.started = false
	// Where the end's time goes, in the log: from a stop's kill when
	// there was one (its latency is what a student waits for).
	var steps stepTimer
	steps.start(time.Now())
	if !r.killedAt.IsZero() {
		steps.start(r.killedAt)
		steps.mark("exit")
	}
	r.mu.Unlock()

	var stats cgroup.Stats
	if proc != nil {
		if err := proc.KillAndWait(ctx); err != nil {
			errs = append(errs, err)
		}
		steps.mark("empty")
		s, err := proc.Stats()
		if err != nil {
			log.Warn("read run stats", "err", err)
		}
		stats = s
	}
	r.closeStdin(log)
	// Every writer is dead once the cgroup is empty: what they sent is
	// queued, and the reader takes it and returns. The bound only guards
	// against a reader stuck elsewhere.
	r.mu.Lock()
	out := r.out
	r.mu.Unlock()
	if err := out.endOutput(); err != nil {
		errs = append(errs, err)
	}
	readersDone := make(chan struct{})
	go func() { r.readers.Wait(); close(readersDone) }()
	select {
	case <-readersDone:
	case <-time.After(5 * time.Second):
		errs = append(errs, errors.New("output readers did not finish within 5s"))
	}
	if out != nil {
		if err := closeFiles(out.recv); err != nil {
			errs = append(errs, err)
		}
	}
	steps.mark("output")
	r.stdinMu.Lock()
	if err := closeFiles(r.master); err != nil {
		errs = append(errs, err)
	}
	r.master = nil
	r.stdinMu.Unlock()
	if proc != nil {
		if err := proc.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	steps.mark("cgroup")
	if err := r.lease.Release(ctx); err != nil {
		errs = append(errs, fmt.Errorf("release lock: %w", err))
	}
	steps.mark("lock")

	r.mu.Lock()
	end := time.Now()
	reason := r.reason
	if reason == "" {
		reason = classify(ex, stats)
	}
	info := &r.info
	info.Reason = reason
	// A start that failed ran no program: the helper's own exit status is
	// not the student's exit code.
	if ex != nil && reason != api.ReasonStartFailed {
		if ex.Signal != 0 {
			info.Signal = unixSignalName(ex.Signal)
		} else {
			c := ex.Code
			info.ExitCode = &c
		}
	}
	if r.startErr != nil {
		errs = append([]error{r.startErr}, errs...)
	}
	if len(errs) > 0 {
		info.Error = errors.Join(errs...).Error()
	}
	info.State = api.StateEnded
	info.EndedAt = &end
	info.WallMS = end.Sub(info.StartedAt).Milliseconds()
	info.CPUMS = stats.CPU.Milliseconds()
	info.PeakMemoryBytes = stats.PeakMemory
	info.OutputBytes = r.outBytes
	info.Truncated = r.truncated
	info.MemoryBytes = 0
	info.InputWaitMS = r.inputWaitedLocked(end).Milliseconds()
	if info.WaitingInput {
		// Every wait has its resume, the end's included, so a client
		// that shows an input box between them always hides it.
		r.log.appendEvent(api.Event{Type: api.EventInputResume})
	}
	info.WaitingInput = false
	info.Message = api.EndMessage(info)
	final := r.snapshot()
	killedAt := r.killedAt
	r.mu.Unlock()

	if err := e.cfg.Store.RecordEnd(ctx, &final); err != nil {
		log.Error("record run end", "err", err)
	}
	steps.mark("store")
	var stopLatency time.Duration
	if !killedAt.IsZero() {
		stopLatency = end.Sub(killedAt)
	}
	// The hooks are told before anyone can see the end: a client that
	// starts again on the end event finds the metrics counted and the
	// student's disk use due for measuring (a student the run took past a
	// measured quota is refused quota_exceeded, not admitted once more).
	if h := e.cfg.Hooks.Ended; h != nil {
		h(&final, stopLatency)
	}
	// The capacity slot is free before anyone can see the end, so a client
	// that starts again on the end event is never refused at_capacity.
	e.release(r)
	// Shutdown waits for this, so nothing logs after it returns.
	defer e.live.Done()
	if r.quiet != nil {
		r.quiet()
	}
	// Kept (and the oldest ended runs let go) before anyone sees the end,
	// so that a reader of the end finds the memory of ended runs already
	// bounded (TestEndedRunsMemoryIsBounded). The end event is counted.
	e.keep(r, 1)
	r.mu.Lock()
	r.log.appendEvent(api.Event{Type: api.EventEnd, Run: &final})
	r.log.stop()
	r.mu.Unlock()
	close(r.done)
	steps.mark("event")

	attrs := []any{"reason", final.Reason, "wall_ms", final.WallMS, "cpu_ms", final.CPUMS,
		"peak_memory_bytes", final.PeakMemoryBytes, "output_bytes", final.OutputBytes, "end_steps", steps.String()}
	if final.ExitCode != nil {
		attrs = append(attrs, "exit_code", *final.ExitCode)
	}
	if final.Signal != "" {
		attrs = append(attrs, "signal", final.Signal)
	}
	if final.Error != "" {
		log.Warn("run ended with errors", append(attrs, "err", final.Error)...)
		return
	}
	log.Info("run ended", attrs...)
}

// classify names the end of a run that nobody asked to end.
func classify(ex *sandbox.Exit, s cgroup.Stats) api.Reason {
	switch {
	case s.OOMKills > 0:
		// The kernel's own counter, not a guess from SIGKILL.
		return api.ReasonOOMKilled
	case ex == nil:
		return api.ReasonSignaled
	case ex.Signal == syscall.SIGXCPU:
		return api.ReasonTimedOut
	case ex.Signal != 0:
		return api.ReasonSignaled
	}
	return api.ReasonExited
}

func (r *Execution) closeStdin(log interface{ Warn(string, ...any) }) {
	r.stdinMu.Lock()
	defer r.stdinMu.Unlock()
	r.stdinGone = true
	if r.stdin == nil {
		return
	}
	if err := r.stdin.Close(); err != nil {
		log.Warn("close stdin", "err", err)
	}
	r.stdin = nil
}

// WriteStdin feeds the run's stdin; eof closes it after p is written.
func (r *Execution) WriteStdin(ctx context.Context, p []byte, eof bool) error {
	r.stdinMu.Lock()
	defer r.stdinMu.Unlock()
	r.mu.Lock()
	proc := r.proc
	r.mu.Unlock()
	defer inputSent(proc)
	if r.master != nil {
		return r.writeTerminal(ctx, p, eof)
	}
	if r.stdin == nil {
		switch {
		case r.stdinGone:
			return api.Errorf(api.CodeRunEnded, "run %s has ended", r.id)
		case eof && len(p) == 0:
			return nil // closing a closed stdin again is a no-op, like stop
		}
		return api.Errorf(api.CodeStdinClosed, "stdin of run %s is closed", r.id)
	}
	deadline := time.Now().Add(10 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := r.stdin.SetWriteDeadline(deadline); err != nil {
		return fmt.Errorf("set stdin deadline of run %s: %w", r.id, err)
	}
	if len(p) > 0 {
		if _, err := r.stdin.Write(p); err != nil {
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded):
				return api.Errorf(api.CodeTimeout, "run %s is not reading its stdin", r.id)
			case errors.Is(err, syscall.EPIPE):
				return api.Errorf(api.CodeStdinClosed, "run %s closed its stdin", r.id)
			}
			return fmt.Errorf("write stdin of run %s: %w", r.id, err)
		}
	}
	if eof {
		err := r.stdin.Close()
		r.stdin = nil
		if err != nil {
			return fmt.Errorf("close stdin of run %s: %w", r.id, err)
		}
	}
	return nil
}

// inputSent tells the sandbox's input watcher that the program was given
// input or a signal, so that it looks again soon (sandbox/input.go); the
// fake processes of the lifecycle tests have no watcher.
func inputSent(proc Process) {
	if p, ok := proc.(interface{ InputSent() }); ok {
		p.InputSent()
	}
}

// incompleteTail is the length of a UTF-8 sequence cut off at p's end.
func incompleteTail(p []byte) int {
	for i := len(p) - 1; i >= 0 && i >= len(p)-3; i-- {
		if utf8.RuneStart(p[i]) {
			if !utf8.FullRune(p[i:]) {
				return len(p) - i
			}
			return 0
		}
	}
	return 0
}

func (r *Execution) appendOutput(t api.EventType, p []byte) {
	capBytes := r.lim.OutputKB << 10
	r.mu.Lock()
	if r.truncated {
		r.mu.Unlock()
		return
	}
	over := false
	if r.outBytes+int64(len(p)) > capBytes {
		p = p[:capBytes-r.outBytes]
		over = true
	}
	r.outBytes += int64(len(p))
	r.log.appendOutput(t, p)
	if over {
		r.truncated = true
		r.log.appendEvent(api.Event{Type: api.EventTruncated, Data: fmt.Sprintf("output cut at %d KiB (output_kb)", r.lim.OutputKB)})
	}
	r.mu.Unlock()
	if over {
		r.kill(api.ReasonOutputLimit)
	}
}

// EventsAfter returns the events after seq, and a channel closed when more
// arrive.
func (r *Execution) EventsAfter(seq int64) ([]api.Event, <-chan struct{}) {
	evs, more, _ := r.eventsAfter(seq)
	return evs, more
}

// eventsAfter is EventsAfter, and whether the end event is in the log:
// read with the events, so that a reader that saw the end is never told
// the run goes on (Done closes a moment after the end is appended, and
// nothing wakes a reader that waits after that).
func (r *Execution) eventsAfter(seq int64) ([]api.Event, <-chan struct{}, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	evs, more := r.log.after(seq)
	return evs, more, r.log.ended
}

func closeFiles(fs ...*os.File) error {
	var errs []error
	for _, f := range fs {
		if f != nil {
			if err := f.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close %s: %w", filepath.Base(f.Name()), err))
			}
		}
	}
	return errors.Join(errs...)
}

// stepTimer records when each start-up step ended, for the log line that
// tells an operator where a slow start spent its time.
type stepTimer struct {
	last time.Time
	b    []byte
}

func (s *stepTimer) start(t0 time.Time) { s.last = t0 }

func (s *stepTimer) mark(step string) {
	now := time.Now()
	if len(s.b) > 0 {
		s.b = append(s.b, ' ')
	}
	s.b = fmt.Appendf(s.b, "%s=%.2fms", step, float64(now.Sub(s.last).Microseconds())/1000)
	s.last = now
}

func (s *stepTimer) String() string { return string(s.b) }
