// Package sandbox starts the process tree of a run and takes it down
// again. Each run gets a helper (package inside) cloned into fresh mount,
// IPC, PID and UTS namespaces and straight into the run's cgroup; the
// helper prepares the namespaces as root, then waits for the job, joins
// the network namespace that came with it, becomes the student and stays
// as the run's PID 1.
//
// Network namespaces come from package netns: made ahead, and kept after
// a run for the same student's next one, never for another student's.
//
// Preparing a helper is the expensive part (namespaces, mounts, the Go
// runtime's start-up, the v1 cgroup move on a hybrid host: 10-30 ms here),
// so a pool keeps WarmRuns of them ready, off the path from Run to first
// output. A run then claims one (Prepare), sets its limits, and Launch
// sends the job. When none is ready, Prepare makes one on the spot.
//
// Everything about a run's process lives behind Process: Launch, Wait,
// Kill, Stats, Close. The run engine (internal/run) drives it and can use
// a fake in tests that need no root.
package sandbox

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/netns"
	"github.com/idexd/idexd/internal/sandbox/inside"
)

// Start-up steps, named in errors (StepError) and used by failure
// injection (Config.FailAt).
const (
	StepCgroup     = "cgroup"
	StepSpawn      = "spawn"
	StepCgroupJoin = "cgroup_join"
)

// StepError says which start-up step failed.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return fmt.Sprintf("step %s: %v", e.Step, e.Err) }
func (e *StepError) Unwrap() error { return e.Err }

// Config wires a Sandbox.
type Config struct {
	Cgroups *cgroup.Manager
	// Helper is the binary a run's helper runs (the zero value: this
	// binary, re-executed).
	Helper Binary
	// Setup is how every helper prepares its namespaces.
	Setup inside.Setup
	// WarmRuns is how many helpers wait ready for the next runs (0: every
	// run starts cold), with WarmLimits until a run claims one.
	WarmRuns   int
	WarmLimits cgroup.Limits
	// HelperRuns is how many runs a helper serves at most, with a pool
	// (0: DefaultHelperRuns; 1: one each). After each it kills what the
	// run left and takes fresh namespaces; idexd keeps it for the next run
	// where the run's group can be kept too (cgroup.Group.KeepForNextRun:
	// hybrid hosts). A helper without this support (package inside)
	// serves one whatever this says.
	HelperRuns int
	// WarmKeep is how long helpers beyond WarmRuns, kept after their runs,
	// wait without a run taking one or one coming back before they end
	// (0: DefaultWarmKeep).
	WarmKeep time.Duration
	// KeptNetworks bounds the network namespaces kept after their runs
	// for their students' next runs (package netns); 0:
	// netns.DefaultMaxKept.
	KeptNetworks int
	Log          *slog.Logger
	// FailAt, when set (by tests), is called before each start-up step; an
	// error it returns fails that step as if the step itself had failed.
	FailAt func(step string) error
}

// Sandbox starts runs' processes on this host.
type Sandbox struct {
	cfg        Config
	helperArgs []string
	pool       *pool
	nets       *netns.Supply // nil with the host's network
	inputs     *inputWatcher
	warmStarts atomic.Int64
	// reused counts helpers kept for another run and back in the pool
	// (awaitKept).
	reused atomic.Int64
	// keeping tracks kept helpers between their run's end and their ready
	// (awaitKept).
	keeping sync.WaitGroup
}

// New returns a Sandbox and starts filling its warm pool.
func New(cfg Config) (*Sandbox, error) {
	if cfg.Cgroups == nil || cfg.Log == nil {
		return nil, errors.New("sandbox: Cgroups and Log are required")
	}
	switch cfg.Setup.Network {
	case "":
		cfg.Setup.Network = inside.NetworkNone
	case inside.NetworkNone, inside.NetworkHost:
	default:
		return nil, fmt.Errorf("sandbox: network %q: want %q or %q", cfg.Setup.Network, inside.NetworkNone, inside.NetworkHost)
	}
	if cfg.Setup.TmpBytes <= 0 {
		cfg.Setup.TmpBytes = 256 << 20
	}
	if cfg.HelperRuns <= 0 {
		cfg.HelperRuns = DefaultHelperRuns
	}
	if cfg.WarmKeep <= 0 {
		cfg.WarmKeep = DefaultWarmKeep
	}
	if cfg.Setup.TmpInodes <= 0 {
		cfg.Setup.TmpInodes = 16384
	}
	filter, err := compileFilter()
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	cfg.Setup.Filter = filter
	s := &Sandbox{cfg: cfg, helperArgs: append([]string{inside.Arg0}, cfg.Setup.Args()...), inputs: newInputWatcher(cfg.Log)}
	if cfg.Setup.Network == inside.NetworkNone {
		if cfg.KeptNetworks <= 0 {
			cfg.KeptNetworks = netns.DefaultMaxKept
		}
		// As many spares as warm helpers: a burst that takes the pool
		// finds a namespace for each.
		s.nets, err = netns.New(netns.Config{Spares: max(cfg.WarmRuns, 1), MaxKept: cfg.KeptNetworks, Log: cfg.Log})
		if err != nil {
			return nil, fmt.Errorf("sandbox: %w", err)
		}
	}
	if err := cfg.Cgroups.KeepWarmGroups(KeptGroups(cfg.WarmRuns)); err != nil {
		return nil, fmt.Errorf("sandbox: %w", errors.Join(err, s.closeNets()))
	}
	s.pool = newPool(s, cfg.WarmRuns, cfg.WarmKeep)
	return s, nil
}

// keptGroupsMin is how many ended runs' groups wait, at least, for the
// next warm helpers and cold runs (hybrid hosts), and how many helpers
// kept after their runs the pool holds. A run's end gives one back and
// the refill it caused takes it; but when a burst empties the pool, every
// start is cold and takes one too. It is a class: 60 and more students
// press Run, then again a minute later. With 32, the 64 helpers of a
// 64-client burst came back to 32 places, and each later burst started
// half its runs cold (a helper made for each, one thrown away at each
// end); with 80 (and warm_keep), none, and idexbench at 64 clients spent
// 0.89-0.90x the server CPU per run (bench/README.md, "Kept helpers
// across bursts").
// An idle kept helper costs the host about 170 kB (its pages, page
// tables and kernel stack) and idexd about 22 fds (its control socket,
// pidfd and its groups' open files): 80 of them, about 14 MB and 1,800 of
// the 524,288 fds systemd lets a service raise its soft limit to.
const keptGroupsMin = 80

// DefaultWarmKeep is how long a burst's helpers, beyond warm_runs, wait
// for the class's next runs: a class runs, reads and edits, and runs
// again within minutes; a quiet host is left with warm_runs.
const DefaultWarmKeep = 5 * time.Minute

// KeptGroups is how many ended runs' groups a sandbox with warm helpers
// keeps, at most: none without a pool (cold runs then sit under their
// students' groups).
func KeptGroups(warm int) int {
	if warm <= 0 {
		return 0
	}
	return max(warm, keptGroupsMin)
}

func (s *Sandbox) step(name string) error {
	if s.cfg.FailAt == nil {
		return nil
	}
	return s.cfg.FailAt(name)
}

// Prepare returns a helper ready for student's run id, in a cgroup with
// lim: a warm one when the pool has one, else a new one. On error nothing
// is left behind.
func (s *Sandbox) Prepare(student, id string, lim cgroup.Limits) (*Process, error) {
	var (
		p   *Process
		err error
	)
	if p = s.pool.take(); p != nil {
		p, err = s.claim(p, lim)
	} else {
		p, err = s.cold(student, id, lim)
	}
	if err != nil || s.nets == nil {
		return p, err
	}
	// The helper joins it when the job comes; until then it waits in
	// idexd's namespace, as root, running nothing of the student's.
	p.student = student
	if p.netNS, err = s.nets.Get(student); err != nil {
		return nil, errors.Join(&StepError{Step: StepSpawn, Err: fmt.Errorf("network namespace: %w", err)}, p.discard())
	}
	return p, nil
}

// claim gives a warm helper the run's limits. Its group stays where the
// pool made it, beside the students' groups: moving the helper into the
// student's group would cost the v1 cgroup move the pool exists to avoid.
// The run engine weighs the group as a part of its student's CPU share
// (cgroup.Group.SetShare).
func (s *Sandbox) claim(p *Process, lim cgroup.Limits) (*Process, error) {
	s.warmStarts.Add(1)
	p.warm = true
	// The peak was reset and the CPU base read when the helper was ready
	// (start): it has waited since, using neither.
	err := s.step(StepCgroup)
	if err == nil {
		err = p.group.Update(lim)
	}
	if err != nil {
		return nil, errors.Join(&StepError{Step: StepCgroup, Err: err}, p.discard())
	}
	// The steps a cold start takes, for failure injection on both paths.
	for _, st := range []string{StepSpawn, StepCgroupJoin} {
		if err := s.step(st); err != nil {
			return nil, errors.Join(&StepError{Step: st, Err: err}, p.discard())
		}
	}
	return p, nil
}

// cold makes a helper for the run now. With a warm pool its group sits
// beside the students', as a warm helper's does, and may be one an earlier
// run left (KeepWarmGroups): no v1 directories are made and removed for
// it. A pool rules out a student's totals (config), which alone need the
// run's group under the student's: without one it is <student>/<id>.
func (s *Sandbox) cold(student, id string, lim cgroup.Limits) (*Process, error) {
	if err := s.step(StepCgroup); err != nil {
		return nil, &StepError{Step: StepCgroup, Err: err}
	}
	var g *cgroup.Group
	var err error
	if s.pool != nil {
		g, err = s.cfg.Cgroups.CreateWarm(id, lim)
	} else {
		g, err = s.cfg.Cgroups.Create(student, id, lim)
	}
	if err != nil {
		return nil, &StepError{Step: StepCgroup, Err: err}
	}
	return s.start(g, s.step)
}

// start spawns a helper into g, moves it into g's v1 groups (hybrid) and
// waits until it has prepared its namespaces. On error g is gone. step is
// the failure injection of a run's start (the pool's helpers have none).
func (s *Sandbox) start(g *cgroup.Group, step func(string) error) (*Process, error) {
	if err := step(StepSpawn); err != nil {
		return nil, errors.Join(&StepError{Step: StepSpawn, Err: err}, g.Delete())
	}
	p, err := s.spawn(g)
	if err != nil {
		return nil, errors.Join(&StepError{Step: StepSpawn, Err: err}, g.Delete())
	}
	err = step(StepCgroupJoin)
	if err == nil {
		err = g.Join(p.Pid())
	}
	if err != nil {
		return nil, errors.Join(&StepError{Step: StepCgroupJoin, Err: err}, p.discard())
	}
	if err := p.awaitReady(30 * time.Second); err != nil {
		return nil, errors.Join(&StepError{Step: StepSpawn, Err: err}, p.discard())
	}
	// A group beside the students' may be one an earlier run left, with
	// that run's peak; done here, off a warm start's path, since a ready
	// helper only waits. A group of the student's own is new.
	if g.Beside() {
		if err := g.ResetPeak(); err != nil {
			return nil, errors.Join(&StepError{Step: StepCgroup, Err: err}, p.discard())
		}
	}
	// Charged to the run from here: the helper's own start-up was not the
	// student's.
	cpu, err := g.CPUTime()
	if err != nil {
		return nil, errors.Join(&StepError{Step: StepCgroup, Err: err}, p.discard())
	}
	p.cpuBase = cpu
	return p, nil
}

// HelpersReused is how many times a helper was kept for another run.
func (s *Sandbox) HelpersReused() int64 { return s.reused.Load() }

// WarmReady is how many warm helpers wait for a run now.
func (s *Sandbox) WarmReady() int {
	if s.pool == nil {
		return 0
	}
	return len(s.pool.slots)
}

// WarmStarts is how many runs started on a warm helper.
func (s *Sandbox) WarmStarts() int64 { return s.warmStarts.Load() }

// Networks says where the network namespaces of runs came from (zero
// with the host's network).
func (s *Sandbox) Networks() netns.Stats {
	if s.nets == nil {
		return netns.Stats{}
	}
	return s.nets.Stats()
}

// NetworksKept is how many network namespaces wait for their students'
// next runs now (each an fd of idexd's).
func (s *Sandbox) NetworksKept() int {
	if s.nets == nil {
		return 0
	}
	return s.nets.Kept()
}

// Close stops refilling the pool, discards the waiting helpers and drops
// the network namespaces kept for students.
func (s *Sandbox) Close() error {
	err := s.pool.close()
	// Kept helpers still arming find the pool closed and are discarded.
	s.keeping.Wait()
	// The helpers just discarded gave their groups back; none waits for
	// a helper any more.
	return errors.Join(err, s.cfg.Cgroups.KeepWarmGroups(0), s.closeNets())
}

func (s *Sandbox) closeNets() error {
	if s.nets == nil {
		return nil
	}
	return s.nets.Close()
}
