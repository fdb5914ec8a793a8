// Package run is the run engine: it takes a request to run a student's
// script and carries it through its whole life — lock, durable record,
// cgroup, sandboxed child, output events, stdin, limits, stop — to exactly
// one end, after which the cgroup is empty and gone and the lock is free.
//
// Every path out of a run, from a failed start-up step to a daemon
// shutdown, goes through Execution.finish, which runs once (sync.Once). That is
// the one place the lock is released.
package run

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/lock"
	"github.com/idexd/idexd/internal/sandbox"
	"github.com/idexd/idexd/internal/sandbox/inside"
	"github.com/idexd/idexd/internal/store"
	"github.com/idexd/idexd/internal/students"
	"github.com/idexd/idexd/internal/sysmon"
)

// Start-up steps, named in start_failed errors and used by failure injection.
const (
	StepCgroup      = sandbox.StepCgroup
	StepInterpreter = "interpreter"
	StepPipes       = "pipes"
	StepSpawn       = sandbox.StepSpawn
	StepCgroupJoin  = sandbox.StepCgroupJoin
	StepExec        = "exec"
	// StepRecord is the durable "started" record; a failure there refuses
	// the run with store_unavailable, since no record of it could be kept.
	StepRecord = "record"
)

// Hooks are told about runs; metrics use them. Nil fields are skipped.
type Hooks struct {
	Started func(r *api.Run, latency time.Duration)
	Ended   func(r *api.Run, stopLatency time.Duration)
	// Admission is told what became of each start request (admit.go):
	// AdmittedAtOnce, Queued, AdmittedAfterWait (with the wait), or
	// Refused (with the code).
	Admission func(outcome string, code api.Code, waited time.Duration)
}

// Config wires an Engine.
type Config struct {
	Host        string
	Interpreter string
	Defaults    api.Limits
	Max         api.Limits
	MaxRuns     int
	UIDSource   string
	UIDMin      uint32
	UIDMax      uint32
	KeepEnded   time.Duration
	// InputWait ends a program that waits for input longer than this
	// (input_timeout); the wall limit does not count such waits.
	InputWait time.Duration
	// KeepEndedBytes bounds the output (and events) of ended runs kept in
	// memory together; past it the oldest are forgotten before KeepEnded.
	KeepEndedBytes int64
	// FileSizeBytes and OpenFiles are the children's rlimits.
	FileSizeBytes uint64
	OpenFiles     uint64
	// WarmRuns is how many helpers wait, already in their cgroups and
	// namespaces, for the next runs (0: every run starts cold).
	WarmRuns int
	// HelperRuns is how many runs a helper may serve, with a pool on a
	// hybrid host (sandbox.Config.HelperRuns; 0: its default).
	HelperRuns int
	// WarmKeep is how long helpers kept after a burst, beyond WarmRuns,
	// wait for the next runs (sandbox.Config.WarmKeep; 0: its default).
	WarmKeep time.Duration
	// Helper is the binary each run's helper runs (the zero value: this
	// binary, re-executed).
	Helper sandbox.Binary
	// Umask is what the layout of students' directories needs runs to use:
	// 077 for the private layout, 007 for the shared one, where the web
	// tier (the directory's group) must read what runs write. 0 is 007.
	Umask uint32
	// AdmitStudent, when set, may refuse a student's new run before it is
	// locked (quota_exceeded while the student is over a disk limit that
	// idexd measures).
	AdmitStudent func(ctx context.Context, st api.Student) error
	// HealthChecks, when set, adds checks of parts beside the engine to
	// Health (disk quotas).
	HealthChecks func(ctx context.Context) []api.Check
	// Setup is how each run's namespaces are prepared: the network, the
	// size of its private tmpfs.
	Setup inside.Setup
	// Quiet, when set, is held while runs are live (package sysmon: the Go
	// runtime's monitor then backs off instead of polling every 20 µs).
	Quiet *sysmon.Quieter
	// Sandbox starts runs' processes; nil builds the real one from
	// Cgroups, Helper, WarmRuns, Setup and the default limits.
	Sandbox Sandbox

	Log     *slog.Logger
	Cgroups *cgroup.Manager
	Dirs    *students.Dirs
	Store   store.Store
	Locks   lock.Locker
	Hooks   Hooks

	// FailAt, when set (by tests), is called before each start-up step; an
	// error it returns fails that step as if the step itself had failed.
	FailAt func(step string) error

	// Fair is the fair share between students: per-student cap, start
	// rate, admission queue (admit.go).
	Fair Fair
}

// Engine owns the live runs of this host.
type Engine struct {
	cfg Config
	log *slog.Logger

	sb Sandbox

	mu       sync.Mutex
	runs     map[string]*Execution
	active   int // admitted and not yet ended
	draining bool
	live     sync.WaitGroup

	shutdownOnce sync.Once
	// sockets makes the runs' output sockets (sockets.go).
	sockets     *socketFactory
	socketsOnce sync.Once

	// kept are the ended runs still in runs, oldest first, for late readers.
	kept      []keptRun
	keptBytes int64

	created time.Time // for Health's uptime

	// fair is admission's state (admit.go), under mu.
	fair fairState
}

type keptRun struct {
	id    string
	bytes int64
	until time.Time
}

// eventOverhead is what an event costs in memory beyond its payload.
const eventOverhead = 128

// keep holds an ended run's events for late readers, within KeepEnded and
// KeepEndedBytes, and forgets what falls out of either. toCome events are
// still to be appended (the end event: finish keeps the run before it
// publishes its end).
func (e *Engine) keep(r *Execution, toCome int) {
	r.mu.Lock()
	bytes := r.log.bytes() + int64(toCome)*eventOverhead
	r.mu.Unlock()
	e.mu.Lock()
	e.kept = append(e.kept, keptRun{id: r.id, bytes: bytes, until: time.Now().Add(e.cfg.KeepEnded)})
	e.keptBytes += bytes
	e.trimLocked(time.Now())
	e.mu.Unlock()
	time.AfterFunc(e.cfg.KeepEnded, func() {
		e.mu.Lock()
		e.trimLocked(time.Now())
		e.mu.Unlock()
	})
}

func (e *Engine) trimLocked(now time.Time) {
	for len(e.kept) > 0 && (!e.kept[0].until.After(now) || e.keptBytes > e.cfg.KeepEndedBytes) {
		k := e.kept[0]
		delete(e.runs, k.id)
		e.keptBytes -= k.bytes
		e.kept = e.kept[1:]
	}
}

// KeptBytes is what ended runs hold in memory now (debug state, tests).
func (e *Engine) KeptBytes() int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.keptBytes
}

// umask is the runs' umask: Config.Umask, 007 when unset.
func (e *Engine) umask() uint32 {
	if e.cfg.Umask == 0 {
		return 0o007
	}
	return e.cfg.Umask
}

// Network is what network runs get ("none" or "host").
func (e *Engine) Network() string {
	if e.cfg.Setup.Network == "" {
		return string(inside.NetworkNone)
	}
	return string(e.cfg.Setup.Network)
}

// WarmReady is how many warm helpers wait for a run now.
func (e *Engine) WarmReady() int { return e.sb.WarmReady() }

// WarmStarts is how many runs started on a warm helper.
func (e *Engine) WarmStarts() int64 { return e.sb.WarmStarts() }

// HelpersReused is how many times a run's helper was kept for another run.
func (e *Engine) HelpersReused() int64 { return e.sb.HelpersReused() }

// Networks says where runs' network namespaces came from: kept from the
// student's last run, a spare made ahead, or made on the spot.
func (e *Engine) Networks() (kept, spare, made int64) {
	s := e.sb.Networks()
	return s.Kept, s.Spare, s.Made
}

// New returns an engine; it starts no run, and fills the warm pool.
func New(cfg Config) (*Engine, error) {
	if cfg.Log == nil || cfg.Dirs == nil || cfg.Store == nil || cfg.Locks == nil || (cfg.Cgroups == nil && cfg.Sandbox == nil) {
		return nil, errors.New("run engine: Log, Dirs, Store, Locks and Cgroups (or a Sandbox) are required")
	}
	if cfg.FileSizeBytes == 0 {
		cfg.FileSizeBytes = 64 << 20
	}
	if cfg.OpenFiles == 0 {
		// A program that opens 1,000 files (or a thread pool's sockets) runs
		// as in a terminal; the pids limit bounds what a run can hold.
		cfg.OpenFiles = 4096
	}
	if cfg.InputWait == 0 {
		cfg.InputWait = 15 * time.Minute
	}
	if cfg.KeepEnded == 0 {
		cfg.KeepEnded = 10 * time.Minute
	}
	if cfg.KeepEndedBytes == 0 {
		cfg.KeepEndedBytes = 256 << 20
	}
	e := &Engine{cfg: cfg, log: cfg.Log, runs: make(map[string]*Execution), sb: cfg.Sandbox, created: time.Now(),
		sockets: newSocketFactory(cfg.Log)}
	e.fair.init(e)
	if e.sb == nil {
		sb, err := sandbox.New(sandbox.Config{
			Cgroups: cfg.Cgroups, Helper: cfg.Helper, Setup: cfg.Setup, WarmRuns: cfg.WarmRuns,
			WarmLimits: cgroup.Limits{
				MemoryBytes: cfg.Defaults.MemoryMB << 20, Pids: cfg.Defaults.Pids, CPUPercent: cfg.Defaults.CPUPercent,
			},
			HelperRuns: cfg.HelperRuns, WarmKeep: cfg.WarmKeep, Log: cfg.Log, FailAt: cfg.FailAt,
		})
		if err != nil {
			e.sockets.close()
			return nil, fmt.Errorf("run engine: %w", err)
		}
		e.sb = Real(sb)
	}
	return e, nil
}

// Start admits, prepares and starts one run. When it returns without
// error the child is running student code; when it returns an error
// nothing is left held.
func (e *Engine) Start(ctx context.Context, req api.RunRequest) (*Execution, error) {
	t0 := time.Now()
	if err := students.ValidName(req.Student); err != nil {
		return nil, err
	}
	switch req.Mode {
	case "":
		req.Mode = api.ModeScript
	case api.ModeScript, api.ModeRepl:
	default:
		return nil, api.Errorf(api.CodeInvalidRequest, "mode must be %q or %q, got %q", api.ModeScript, api.ModeRepl, req.Mode)
	}
	if req.Terminal != nil {
		if err := req.Terminal.Check(); err != nil {
			return nil, err
		}
	}
	if len(req.Args) > 256 {
		return nil, api.Errorf(api.CodeInvalidRequest, "at most 256 args, got %d", len(req.Args))
	}
	for i, a := range req.Args {
		if strings.ContainsRune(a, 0) {
			return nil, api.Errorf(api.CodeInvalidRequest, "args[%d] contains a NUL byte", i)
		}
	}
	e.mu.Lock()
	def, max := e.cfg.Defaults, e.cfg.Max
	e.mu.Unlock()
	lim, err := req.Limits.Effective(def, max)
	if err != nil {
		return nil, err
	}
	epoch, err := e.admit(ctx, req.Student, req.WaitSeconds)
	if err != nil {
		return nil, err
	}
	admitted := true
	defer func() {
		if admitted {
			e.unadmit(req.Student)
		}
	}()
	st, err := e.runStudent(ctx, req.Student)
	if err != nil {
		return nil, err
	}
	if e.cfg.AdmitStudent != nil {
		if err := e.cfg.AdmitStudent(ctx, st); err != nil {
			return nil, err
		}
	}
	cwd, cwdRel := st.Workdir, ""
	if req.Cwd != "" && req.Cwd != "." {
		if cwd, cwdRel, err = students.ResolveDir(st.Workdir, req.Cwd); err != nil {
			return nil, err
		}
	}
	// The script is where the program will find it: relative to its cwd.
	scriptPath := req.Script
	if !filepath.IsAbs(scriptPath) {
		scriptPath = filepath.Join(cwdRel, scriptPath)
	}
	script, err := students.ResolveScript(st.Workdir, scriptPath)
	if err != nil {
		return nil, err
	}
	id := newID()
	lease, err := e.cfg.Locks.Acquire(ctx, lock.Key{Student: req.Student, Script: script.Canonical}, id)
	if err != nil {
		// A lock that cannot be checked (a shared lock in an unreachable
		// database) cannot be promised: refuse rather than risk two runs.
		return nil, storeError(ctx, err, "take the lock of %s for %s", script.Canonical, req.Student)
	}
	r := newRun(e, id, lim, lease)
	r.info = api.Run{
		ID: id, Host: e.cfg.Host, Student: st.Name, UID: st.UID, GID: st.GID,
		Script: script.Rel, ScriptSHA256: script.SHA256, Args: req.Args, Cwd: cwdRel, Terminal: req.Terminal, Mode: req.Mode,
		State: api.StateRunning, Limits: lim, StartedAt: t0.UTC(),
	}
	err = e.step(StepRecord)
	if err == nil {
		err = e.cfg.Store.RecordStart(ctx, &r.info)
	}
	if err != nil {
		e.log.Error("record run start", "run", id, "student", st.Name, "err", err)
		return nil, errors.Join(storeError(ctx, err, "start run %s: cannot record it", id), releaseLease(lease, e.log, id))
	}
	admitted = false // from here on, finish gives the slot back
	e.live.Add(1)
	r.quiet = e.cfg.Quiet.Hold()
	e.mu.Lock()
	e.runs[id] = r
	e.mu.Unlock()
	r.watchLease()
	// The program gets the script's path as the student gave it
	// (sys.argv[0] == "./main.py"), as a terminal would.
	r.argv0 = req.Script
	if err := r.start(st.Workdir, cwd, t0, time.Now()); err != nil {
		return nil, err
	}
	e.place(r, epoch)
	return r, nil
}

// storeError says what failed in the store (or the shared locks) and
// keeps the cause. An error that already has a code (locked, a store that
// is known to be down) says enough and passes as it is; a caller that hung
// up or ran out of time gets that back, not a store failure.
func storeError(ctx context.Context, err error, format string, args ...any) error {
	what := fmt.Sprintf(format, args...)
	var ae *api.Error
	switch {
	case errors.As(err, &ae):
		return err
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		return fmt.Errorf("%s: the caller went away: %w", what, err)
	case ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded):
		return api.Wrap(api.CodeTimeout, err, "%s: the request's time ran out", what)
	}
	return api.Wrap(api.CodeStoreUnavailable, err, "%s", what)
}

func releaseLease(l lock.Lease, log *slog.Logger, id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.Release(ctx); err != nil {
		log.Error("release lock", "run", id, "err", err)
		return fmt.Errorf("release lock of run %s: %w", id, err)
	}
	return nil
}

func (e *Engine) step(name string) error {
	if e.cfg.FailAt == nil {
		return nil
	}
	return e.cfg.FailAt(name)
}

// SetLimits replaces the default and maximum limits for new runs (SIGHUP);
// running runs keep theirs.
func (e *Engine) SetLimits(defaults, max api.Limits) {
	e.mu.Lock()
	e.cfg.Defaults, e.cfg.Max = defaults, max
	e.mu.Unlock()
}

// Workdir is a student's directory.
func (e *Engine) Workdir(student string) string { return e.cfg.Dirs.Workdir(student) }

// Get returns a live or recently ended run.
func (e *Engine) Get(id string) (*Execution, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.runs[id]
	return r, ok
}

// List returns the runs in memory, newest first.
func (e *Engine) List() []*Execution {
	e.mu.Lock()
	out := make([]*Execution, 0, len(e.runs))
	for _, r := range e.runs {
		out = append(out, r)
	}
	e.mu.Unlock()
	slices.SortFunc(out, func(a, b *Execution) int { return b.startedAt().Compare(a.startedAt()) })
	return out
}

// Active is how many runs are admitted and not ended.
func (e *Engine) Active() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.active
}

// Stop stops a run and returns its final object once its cgroup is empty
// and its lock released. Stopping an ended run just returns it.
func (e *Engine) Stop(ctx context.Context, id string) (api.Run, error) {
	r, ok := e.Get(id)
	if !ok {
		return api.Run{}, api.Errorf(api.CodeNotFound, "run %s is not live on this host", id)
	}
	return r.Stop(ctx)
}

// Draining reports whether new runs are refused.
func (e *Engine) Draining() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.draining
}

// SetDraining refuses (true) or accepts again (false) new runs. Starts
// waiting in the queue are refused too (draining).
func (e *Engine) SetDraining(v bool) {
	e.mu.Lock()
	e.draining = v
	if v {
		e.failWaitersLocked("", api.Errorf(api.CodeDraining, "idexd is draining: no new runs on this host"))
	}
	e.mu.Unlock()
}

// Shutdown refuses new runs, lets running ones go on for grace, then ends
// the rest with reason shutdown and waits until every run has finished.
// It discards the warm slots.
func (e *Engine) Shutdown(ctx context.Context, grace time.Duration) error {
	e.SetDraining(true)
	e.shutdownOnce.Do(func() {
		if err := e.sb.Close(); err != nil {
			e.log.Error("discard warm helpers", "err", err)
		}
	})
	// Runs that end close their sockets themselves; none starts from here.
	defer e.socketsOnce.Do(e.sockets.close)
	defer e.fair.refusals.flushAll()
	done := make(chan struct{})
	go func() {
		e.live.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-time.After(grace):
	case <-ctx.Done():
	}
	for _, r := range e.List() {
		r.kill(api.ReasonShutdown)
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("shutdown: runs still ending: %w", ctx.Err())
	}
}

func newID() string {
	var b [8]byte
	// crypto/rand.Read never fails on Linux (Go 1.24+ guarantees it).
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
