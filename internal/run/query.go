package run

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/lock"
	"github.com/idexd/idexd/internal/version"
)

// The engine as the control API sees it: every answer a protocol type,
// whether it comes from a live run, from memory or from the store, so
// that the server knows nothing of stores, cgroups or locks.

// StartRun starts a run (Start) and returns its object.
func (e *Engine) StartRun(ctx context.Context, req api.RunRequest) (api.Run, error) {
	r, err := e.Start(ctx, req)
	if err != nil {
		return api.Run{}, err
	}
	return r.Info(), nil
}

// GetRun returns a run: a live or recently ended one from memory, which
// knows more than its start record, else its record.
func (e *Engine) GetRun(ctx context.Context, id string) (api.Run, error) {
	if r, ok := e.Get(id); ok {
		return r.Live(), nil
	}
	info, err := e.cfg.Store.GetRun(ctx, id)
	if err != nil && !errors.Is(err, api.ErrNotFound) {
		return api.Run{}, storeError(ctx, err, "read run %s", id)
	}
	return withMessage(info), err
}

// ListRuns returns the runs f selects, newest first, live ones as the
// engine knows them. When the store cannot answer, this host's running
// runs are still known: a listing of running runs (idexctl ps) answers
// from memory through a database outage.
func (e *Engine) ListRuns(ctx context.Context, f api.RunFilter) ([]api.Run, error) {
	runs, err := e.cfg.Store.ListRuns(ctx, f)
	if err != nil && f.State == api.StateRunning && ctx.Err() == nil {
		e.log.Warn("list runs: store unavailable, answering from memory", "err", err)
		return e.liveRuns(f), nil
	}
	if err != nil {
		return nil, storeError(ctx, err, "list runs")
	}
	for i := range runs {
		if r, ok := e.Get(runs[i].ID); ok {
			runs[i] = r.Live()
			continue
		}
		runs[i] = withMessage(runs[i])
	}
	if runs == nil {
		runs = []api.Run{}
	}
	return runs, nil
}

// withMessage gives a stored run its end message: the store keeps the
// fields it is made of (reason, limits, exit code), not the sentence.
func withMessage(info api.Run) api.Run {
	if info.Ended() && info.Message == "" {
		info.Message = api.EndMessage(&info)
	}
	return info
}

// liveRuns is this host's running runs that match f, newest first.
func (e *Engine) liveRuns(f api.RunFilter) []api.Run {
	out := []api.Run{}
	for _, r := range e.List() {
		info := r.Info()
		if info.State != api.StateRunning || (f.Student != "" && info.Student != f.Student) {
			continue
		}
		out = append(out, r.Live())
		if len(out) == f.Limit {
			break
		}
	}
	return out
}

// StopRun stops a run and returns its final object once its cgroup is
// empty and its lock free. A run ended long ago (no longer in memory) is
// returned as recorded: stopping is idempotent.
func (e *Engine) StopRun(ctx context.Context, id string) (api.Run, error) {
	info, err := e.Stop(ctx, id)
	if errors.Is(err, api.ErrNotFound) {
		return e.GetRun(ctx, id)
	}
	return info, err
}

// liveRun returns a run in memory, or not_found saying why.
func (e *Engine) liveRun(id string) (*Execution, error) {
	r, ok := e.Get(id)
	if !ok {
		return nil, api.Errorf(api.CodeNotFound, "run %s is not live on this host (its events are kept for keep_ended after its end)", id)
	}
	return r, nil
}

// Events returns the events of run id after seq, a channel closed when
// more arrive, and whether the run has ended: then every event up to its
// end is in memory, and nothing more will come.
func (e *Engine) Events(id string, after int64) (evs []api.Event, more <-chan struct{}, ended bool, err error) {
	r, err := e.liveRun(id)
	if err != nil {
		return nil, nil, false, err
	}
	evs, more, ended = r.eventsAfter(after)
	return evs, more, ended, nil
}

// InterruptRun delivers Ctrl-C to run id's program.
func (e *Engine) InterruptRun(ctx context.Context, id string) error {
	r, err := e.liveRun(id)
	if err != nil {
		return err
	}
	return r.Interrupt()
}

// ResizeRun sets the size of run id's terminal.
func (e *Engine) ResizeRun(ctx context.Context, id string, t api.Terminal) error {
	r, err := e.liveRun(id)
	if err != nil {
		return err
	}
	return r.Resize(t)
}

// WriteStdin feeds run id's stdin; eof closes it after p.
func (e *Engine) WriteStdin(ctx context.Context, id string, p []byte, eof bool) error {
	r, err := e.liveRun(id)
	if err != nil {
		return err
	}
	return r.WriteStdin(ctx, p, eof)
}

// Health runs the self-checks, for GET /v1/health and, the same, for the
// watchdog: the cgroup parent takes a new group, the interpreter is there,
// the store answers (and writes, after a failed write).
func (e *Engine) Health(ctx context.Context) api.Health {
	h := api.Health{
		Status: api.HealthOK, Version: version.Version,
		UptimeS:    int64(time.Since(e.created).Seconds()),
		RunsActive: e.Active(),
		CgroupMode: string(e.cfg.Cgroups.Mode()),
		Store:      e.cfg.Store.Kind(),
		Network:    e.Network(),
		Queue:      e.queueHealth(),
	}
	check := func(name string, err error) {
		c := api.Check{Name: name, OK: err == nil}
		if err != nil {
			c.Message = err.Error()
			h.Status = api.HealthDegraded
		}
		h.Checks = append(h.Checks, c)
	}
	check(CheckCgroupParent, e.cfg.Cgroups.Check())
	if missing := e.cfg.Cgroups.Missing(); len(missing) > 0 {
		// Only reachable with allow_unlimited = true: said, not degraded.
		h.Checks = append(h.Checks, api.Check{Name: "cgroup_limits", OK: true,
			Message: fmt.Sprintf("not enforced: no %s controller (allow_unlimited = true)", strings.Join(missing, ", "))})
	}
	check("interpreter", CheckInterpreter(e.cfg.Interpreter))
	if e.cfg.HealthChecks != nil {
		for _, c := range e.cfg.HealthChecks(ctx) {
			if !c.OK {
				h.Status = api.HealthDegraded
			}
			h.Checks = append(h.Checks, c)
		}
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	check("store", e.cfg.Store.Ping(pctx))
	if e.Draining() {
		h.Status = api.HealthDraining
	}
	return h
}

// CheckCgroupParent names Health's check that the cgroup parent takes a
// new group: without it no run can start, so the watchdog minds it.
const CheckCgroupParent = "cgroup_parent_writable"

// DebugState counts what a leak would grow: goroutines, fds, runs in
// memory, locks held, run cgroups.
func (e *Engine) DebugState(context.Context) (api.DebugState, error) {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return api.DebugState{}, fmt.Errorf("count fds: %w", err)
	}
	cgs, err := e.cfg.Cgroups.RunGroups()
	if err != nil {
		return api.DebugState{}, err
	}
	e.mu.Lock()
	kept := len(e.runs)
	e.mu.Unlock()
	st := api.DebugState{
		Goroutines: runtime.NumGoroutine(), FDs: len(fds),
		RunsActive: e.Active(), RunsKept: kept, Cgroups: len(cgs), NetworksKept: e.sb.NetworksKept(),
		CgroupsKept: e.cfg.Cgroups.Kept(), CgroupFiles: e.cfg.Cgroups.OpenFiles(),
	}
	if s, ok := e.cfg.Locks.(lock.Stats); ok {
		st.LocksHeld = s.Held()
	}
	return st, nil
}
