package cgroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"golang.org/x/sys/unix"
)

const syscallODirectory = syscall.O_DIRECTORY | syscall.O_CLOEXEC

// Group is one run's cgroups.
type Group struct {
	mode   Mode
	v2     *cgroup2.Manager
	v2Path string
	v1     cgroup1.Cgroup // hybrid only
	dir    *os.File       // the v2 directory, for clone into the group
	// cpuacctDir is the v1 cpuacct group (hybrid), polled for CPU time.
	cpuacctDir string
	v1Dirs     map[cgroup1.Name]string
	v1Swap     bool
	v2Missing  []string
	// set are the limits last written, so that a warm group claimed by a
	// run with the limits it was made with (the defaults, most runs) is
	// not written again: six writes on the start path (v1). Nil: unknown.
	set *Limits
	// m made the group; warm says it is a warm helper's, which Release
	// may hand back to m for the next one (Manager.KeepWarmGroups).
	m    *Manager
	warm bool
	// oomBase is the oom_kill count the directories had when this Group
	// took them over from an earlier run's (v1 never resets it).
	oomBase uint64
	// mu orders Release and Delete against what a late holder of the
	// group may still do to it (a stop's kill, a student's weighing):
	// once released, the directories may be another run's, so those do
	// nothing.
	mu       sync.RWMutex
	released bool
	// killed: cgroup.kill was written, and the group cannot be reused.
	killed atomic.Bool
	// unthrottled: the killed group's CPU quota was lifted (unthrottle).
	unthrottled atomic.Bool
	// files keeps a reusable warm group's files open, for this run and
	// the next ones in the same directories (nil: none kept).
	files *fileCache
}

// errReleased is what a released group's reads return.
var errReleased = errors.New("cgroup released: its run ended")

// Beside reports whether the group sits beside the students' groups
// (made by CreateWarm, named WarmPrefix+id) rather than under one: the
// run engine then weighs it as a part of its student's CPU share.
func (g *Group) Beside() bool { return g.warm }

// live runs f unless the group was released, and holds the release back
// meanwhile.
func (g *Group) live(f func() error) error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.released {
		return errReleased
	}
	return f()
}

// Update sets new limits, for a warm group claimed by a run; it writes
// nothing when they are the ones the group already has.
func (g *Group) Update(lim Limits) error {
	return g.live(func() error { return g.updateOnce(lim) })
}

func (g *Group) updateOnce(lim Limits) error {
	if g.set != nil && *g.set == lim {
		return nil
	}
	// Only the task limit differs: what a reused warm group has after its
	// run's Launch raised pids.max for the helper (SetPids), on every
	// reuse; one write, not six.
	if g.set != nil && lim.Pids > 0 && g.set.MemoryBytes == lim.MemoryBytes && g.set.CPUPercent == lim.CPUPercent {
		return g.setPids(lim.Pids)
	}
	// Unknown until every write below has succeeded.
	g.set = nil
	if err := g.update(lim); err != nil {
		return err
	}
	g.set = &lim
	return nil
}

func (g *Group) update(lim Limits) error {
	if g.v1 != nil {
		if err := g.updateV1Memory(lim); err != nil {
			return err
		}
		res := v1Resources(lim, g.v1Swap)
		res.Memory = nil // set above, in the order the kernel needs
		if err := g.v1.Update(res); err != nil {
			return fmt.Errorf("set limits of %s: %w", g.v2Path, err)
		}
		return nil
	}
	if err := g.v2.Update(v2Resources(lim, g.v2Missing)); err != nil {
		return fmt.Errorf("set limits of %s: %w", g.v2Path, err)
	}
	return setV2Swap(g.v2Path)
}

// updateV1Memory writes the v1 memory limits itself (setV1MemoryLimit),
// then the cap on socket buffers.
func (g *Group) updateV1Memory(lim Limits) error {
	dir := g.v1Dirs[cgroup1.Memory]
	if err := setV1MemoryLimit(g.files, dir, lim.MemoryBytes, g.v1Swap); err != nil {
		return err
	}
	tcp := strconv.FormatInt(socketBytes(lim), 10)
	if err := g.files.write(filepath.Join(dir, "memory.kmem.tcp.limit_in_bytes"), []byte(tcp)); err != nil {
		return fmt.Errorf("set memory.kmem.tcp.limit_in_bytes of %s to %s: %w", dir, tcp, err)
	}
	return nil
}

// ResetPeak forgets the peak memory so far (a warm helper's own), where
// the kernel allows it (v1); v2's memory.peak cannot be reset before 6.12.
func (g *Group) ResetPeak() error {
	return g.live(g.resetPeak)
}

func (g *Group) resetPeak() error {
	if g.v1 == nil {
		return nil
	}
	mem := g.v1Dirs[cgroup1.Memory]
	for _, f := range []string{"memory.max_usage_in_bytes", "memory.memsw.max_usage_in_bytes", "memory.kmem.tcp.max_usage_in_bytes"} {
		err := g.files.write(filepath.Join(mem, f), []byte("0"))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("reset %s of %s: %w", f, mem, err)
		}
	}
	return nil
}

// FD is the v2 group's directory fd for SysProcAttr.CgroupFD.
func (g *Group) FD() int { return int(g.dir.Fd()) }

// Path is the v2 group's directory.
func (g *Group) Path() string { return g.v2Path }

// NeedsJoin reports whether a process cloned into the group must still
// join v1 groups (hybrid) before it may run student code.
func (g *Group) NeedsJoin() bool { return g.v1 != nil }

// Join puts pid into the v1 groups. On a unified host it does nothing.
func (g *Group) Join(pid int) error {
	if g.v1 == nil {
		return nil
	}
	if err := g.live(func() error { return g.joinV1(pid) }); err != nil {
		return fmt.Errorf("move pid %d into v1 cgroups: %w", pid, err)
	}
	return nil
}

// joinV1 writes pid into cgroup.procs of each v1 group: cgroup1's AddProc
// does the same through os.WriteFile (see readFile).
func (g *Group) joinV1(pid int) error {
	b := []byte(strconv.Itoa(pid))
	for _, dir := range g.v1Dirs {
		if err := g.files.write(filepath.Join(dir, "cgroup.procs"), b); err != nil {
			return err
		}
	}
	return nil
}

// Kill sends SIGKILL to every process of the group at once (cgroup.kill),
// including any that called setsid and double-forked.
//
// A released group's processes are gone already (Release needs it
// empty): its directories may hold another run's now, so Kill leaves
// them alone.
func (g *Group) Kill() error {
	err := g.live(func() error {
		g.killed.Store(true)
		if err := g.v2.Kill(); err != nil {
			return fmt.Errorf("kill cgroup %s: %w", g.v2Path, err)
		}
		// Once it has worked: a kill that failed, or a lift that did, is
		// tried again by the next kill (KillAndWait's).
		if g.unthrottled.Load() {
			return nil
		}
		if err := g.unthrottle(); err != nil {
			return err
		}
		g.unthrottled.Store(true)
		return nil
	})
	if errors.Is(err, errReleased) {
		return nil
	}
	return err
}

// unthrottle lifts the CPU quota of a group whose processes were just
// killed. A SIGKILLed process still runs its exit in the kernel (unmaps,
// closes, tears its namespaces down), charged to its group: a group that
// had spent its quota for the period (a busy loop, or a tree just forked)
// sat throttled until the next period with nothing to do but die, and one
// stop of a 32-process tree in five took 50-60 ms instead of 13
// (bench/README.md). Killed processes run no user code any more, and a
// killed group is never reused, so the quota has nothing left to guard.
func (g *Group) unthrottle() error {
	dir, file, val := g.v2Path, "cpu.max", "max"
	if g.v1 != nil {
		dir, file, val = g.v1Dirs[cgroup1.Cpu], "cpu.cfs_quota_us", "-1"
	} else if slices.Contains(g.v2Missing, "cpu") {
		return nil
	}
	if err := g.files.write(filepath.Join(dir, file), []byte(val)); err != nil {
		return fmt.Errorf("lift the CPU quota of killed cgroup %s (%s = %s): %w", dir, file, val, err)
	}
	return nil
}

// Populated reports whether any process is still in the group. Zombies
// have already left it: the kernel removes a task at exit, before reaping.
// A released group's were gone before it was released.
func (g *Group) Populated() (pop bool, err error) {
	err = g.live(func() (err error) { pop, err = g.populated(); return err })
	if errors.Is(err, errReleased) {
		return false, nil
	}
	return pop, err
}

func (g *Group) populated() (bool, error) {
	b, err := g.files.read(filepath.Join(g.v2Path, "cgroup.events"))
	if err != nil {
		return false, fmt.Errorf("read cgroup.events of %s: %w", g.v2Path, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "populated "); ok {
			return v != "0", nil
		}
	}
	return false, fmt.Errorf("cgroup.events of %s has no populated line", g.v2Path)
}

// KillAndWait kills the group and waits until it is empty or ctx ends.
//
// An empty group is not killed: a run that ended by itself (its PID 1 gone
// takes its namespace's processes with it) leaves its group empty, and
// only a group never killed can be reused (see reuse.go).
func (g *Group) KillAndWait(ctx context.Context) error {
	delay := 200 * time.Microsecond
	for {
		pop, err := g.Populated()
		if err != nil {
			return err
		}
		if !pop {
			return nil
		}
		if err := g.Kill(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for cgroup %s to empty: %w", g.v2Path, ctx.Err())
		case <-time.After(delay):
		}
		// The tree usually dies within a few ms of cgroup.kill; a short
		// cap notices it soon, and costs at most 500 reads a second.
		delay = min(delay*2, 2*time.Millisecond)
	}
}

// Stats is what a run used.
type Stats struct {
	CPU         time.Duration
	PeakMemory  int64
	Memory      int64 // now, for a live run's figures
	OOMKills    uint64
	MemoryLimit int64
}

// Stats reads CPU time, peak memory and the OOM-kill counter. It runs on
// every run's end path, so it reads only the files it reports: in hybrid
// mode four small files instead of the ~30 of cgroup1's full Stat (0.7 ms
// of the end path, bench/README.md).
func (g *Group) Stats() (s Stats, err error) {
	err = g.live(func() (err error) { s, err = g.stats(); return err })
	return s, err
}

func (g *Group) stats() (Stats, error) {
	if g.v1 != nil {
		return g.v1Stats()
	}
	m, err := g.v2.StatFiltered(cgroup2.StatCPU | cgroup2.StatMemory | cgroup2.StatMemoryEvents)
	if err != nil {
		return Stats{}, fmt.Errorf("read stats of %s: %w", g.v2Path, err)
	}
	var s Stats
	if m.CPU != nil {
		s.CPU = time.Duration(m.CPU.UsageUsec) * time.Microsecond
	}
	if m.Memory != nil {
		s.PeakMemory = int64(m.Memory.MaxUsage)
		s.Memory = int64(m.Memory.Usage)
		s.MemoryLimit = int64(m.Memory.UsageLimit)
	}
	if m.MemoryEvents != nil {
		s.OOMKills = m.MemoryEvents.OomKill
	}
	return s, nil
}

func (g *Group) v1Stats() (Stats, error) {
	var s Stats
	cpu, err := g.cpuTime()
	if err != nil {
		return Stats{}, err
	}
	s.CPU = cpu
	mem := g.v1Dirs[cgroup1.Memory]
	var tcpPeak, tcpNow int64
	for _, f := range []struct {
		name string
		to   *int64
	}{
		{"memory.max_usage_in_bytes", &s.PeakMemory},
		{"memory.usage_in_bytes", &s.Memory},
		{"memory.kmem.tcp.usage_in_bytes", &tcpNow},
		{"memory.limit_in_bytes", &s.MemoryLimit},
		// Socket buffers are counted apart on v1; a run's peak is both.
		{"memory.kmem.tcp.max_usage_in_bytes", &tcpPeak},
	} {
		v, err := g.files.readInt(filepath.Join(mem, f.name))
		if err != nil {
			return Stats{}, fmt.Errorf("read v1 stats of %s: %w", g.v2Path, err)
		}
		*f.to = v
	}
	s.PeakMemory += tcpPeak
	s.Memory += tcpNow
	oom, err := v1OOMKills(g.files, mem)
	if err != nil {
		return Stats{}, fmt.Errorf("read v1 stats of %s: %w", g.v2Path, err)
	}
	s.OOMKills = oom - min(g.oomBase, oom)
	return s, nil
}

// v1OOMKills is the oom_kill count of a v1 memory group (0 on kernels
// before 4.13, which do not count).
func v1OOMKills(files *fileCache, mem string) (uint64, error) {
	b, err := files.read(filepath.Join(mem, "memory.oom_control"))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse oom_kill of %s: %w", mem, err)
			}
			return n, nil
		}
	}
	return 0, nil
}

// CPUTime is the group's CPU time so far: cheap enough to poll.
func (g *Group) CPUTime() (d time.Duration, err error) {
	err = g.live(func() (err error) { d, err = g.cpuTime(); return err })
	return d, err
}

func (g *Group) cpuTime() (time.Duration, error) {
	if g.v1 != nil {
		b, err := g.files.read(filepath.Join(g.cpuacctDir, "cpuacct.usage"))
		if err != nil {
			return 0, fmt.Errorf("read cpuacct.usage of %s: %w", g.cpuacctDir, err)
		}
		ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse cpuacct.usage of %s: %w", g.cpuacctDir, err)
		}
		return time.Duration(ns), nil
	}
	m, err := g.v2.StatFiltered(cgroup2.StatCPU)
	if err != nil {
		return 0, fmt.Errorf("read cpu.stat of %s: %w", g.v2Path, err)
	}
	return time.Duration(m.CPU.UsageUsec) * time.Microsecond, nil
}

// Delete removes the groups; the group must be empty. It is one rmdir per
// directory: cgroup1's Delete first walks each hierarchy's tree reading
// cgroup.procs, which cost ~1 ms on every run's end path (bench/README.md).
// A directory that still holds a process refuses with EBUSY, which is
// retried briefly (a task leaves its groups a moment after it was seen
// gone) and then reported.
//
// A group already released is left alone: its directories may be kept
// for another run.
func (g *Group) Delete() error {
	if !g.release() {
		return nil
	}
	return g.delete()
}

// release marks the group released, once the writes a late holder is
// making have ended (live); it reports whether this call did it.
func (g *Group) release() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	first := !g.released
	g.released = true
	return first
}

func (g *Group) delete() error {
	var errs []error
	if g.dir != nil {
		if err := g.dir.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close cgroup dir: %w", err))
		}
		g.dir = nil
	}
	if err := g.files.close(); err != nil {
		errs = append(errs, fmt.Errorf("close cgroup files: %w", err))
	}
	for _, dir := range g.v1Dirs {
		errs = append(errs, rmdir(dir))
	}
	errs = append(errs, rmdir(g.v2Path))
	return errors.Join(errs...)
}

func rmdir(dir string) error {
	delay := time.Millisecond
	for try := 0; ; try++ {
		err := unix.Rmdir(dir)
		switch {
		case err == nil, errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.EBUSY) && try < 5:
			time.Sleep(delay)
			delay *= 2
		default:
			return fmt.Errorf("delete cgroup %s: %w", dir, err)
		}
	}
}

// pidsDir is the directory of the group's pids controller, or "" when the
// host gives idexd none.
func (g *Group) pidsDir() string {
	if g.v1 != nil {
		return g.v1Dirs[cgroup1.Pids]
	}
	if slices.Contains(g.v2Missing, "pids") {
		return ""
	}
	return g.v2Path
}

// Tasks is how many tasks (threads included) the group holds now; 0 when
// there is no pids controller.
func (g *Group) Tasks() (int64, error) {
	dir := g.pidsDir()
	if dir == "" {
		return 0, nil
	}
	return g.files.readInt(filepath.Join(dir, "pids.current"))
}

// SetPids sets the group's task limit alone.
func (g *Group) SetPids(n int64) error {
	return g.live(func() error { return g.setPids(n) })
}

func (g *Group) setPids(n int64) error {
	dir := g.pidsDir()
	if dir == "" {
		return nil
	}
	set := g.set
	g.set = nil // unknown until written
	if err := g.files.write(filepath.Join(dir, "pids.max"), []byte(strconv.FormatInt(n, 10))); err != nil {
		return fmt.Errorf("set pids.max of %s to %d: %w", dir, n, err)
	}
	if set != nil {
		lim := *set
		lim.Pids = n
		g.set = &lim
	}
	return nil
}
