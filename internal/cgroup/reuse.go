package cgroup

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/containerd/cgroups/v3/cgroup1"
)

// Warm groups are reused, on hybrid hosts: making a run's groups (a
// directory in five hierarchies, the memory controller's settings, the
// modes) and removing them cost idexd 0.72-0.77 ms of CPU per run here,
// about a seventh of its own, and each removed v1 memory group lingers in
// the kernel until its last charged page goes. A warm group whose run
// ended can serve the next warm helper or cold run instead, once nothing of the run is
// left in it: no process, at most keptChargeMax of memory charged (a
// group holding more is deleted, its page cache left in place), the OOM
// count carried as a base; and never killed. A group whose cgroup.kill was
// written kills every process later cloned into it on this kernel (6.18:
// cgroup_css_set_fork reads the kill sequence of the parent's group for
// CLONE_INTO_CGROUP, cgroup_post_fork compares it with the target's), so
// a run that was stopped, or had processes left when its PID 1 ended,
// leaves a group that is deleted.
// Its peak is reset when a run claims it (ResetPeak) and its CPU is
// counted from the claim, as for any warm group. Unified hosts delete
// them: v2's memory.peak cannot be reset before 6.12, so a reused group
// would report an earlier run's peak.

// keptChargeMax is the most memory a reused group may start with: what
// the last run left charged (page cache, kernel objects), which the next
// run's peak then includes, as it includes its own helper's memory
// (ResetPeak).
const keptChargeMax = 1 << 20

// KeepWarmGroups sets how many emptied warm groups may wait for the next
// warm helpers and cold runs (the sandbox keeps enough for a burst's cold
// starts too); 0 deletes those waiting and keeps none from now on, as
// before a clean stop.
func (m *Manager) KeepWarmGroups(n int) error {
	m.keptMu.Lock()
	m.keep = n
	var drop []*Group
	if len(m.kept) > n {
		drop = m.kept[n:]
		m.kept = m.kept[:n:n]
	}
	m.keptMu.Unlock()
	var errs []error
	for _, g := range drop {
		errs = append(errs, g.Delete())
	}
	return errors.Join(errs...)
}

// WarmGroupCounts counts the groups made beside the students' so far
// (CreateWarm: warm helpers', and cold runs' with a pool): reused from an
// ended run, or made.
func (m *Manager) WarmGroupCounts() (reused, made int64) {
	return m.warmReused.Load(), m.warmMade.Load()
}

// Kept is how many emptied warm groups wait for a helper now (each holds
// an fd of idexd's, its v2 directory).
func (m *Manager) Kept() int {
	m.keptMu.Lock()
	defer m.keptMu.Unlock()
	return len(m.kept)
}

// takeKept returns a kept warm group, or nil.
func (m *Manager) takeKept() *Group {
	m.keptMu.Lock()
	defer m.keptMu.Unlock()
	n := len(m.kept)
	if n == 0 {
		return nil
	}
	g := m.kept[n-1]
	m.kept = m.kept[:n-1]
	return g
}

// Release ends the group's use by its run, whose processes must be gone
// (KillAndWait). A warm group may be kept for the next warm helper or cold run (see
// KeepWarmGroups); any other is deleted. Either way g must not be used
// again: what a late holder still does to it (Kill, SetShare) does
// nothing, since its directories may be another run's.
func (g *Group) Release() error {
	if !g.release() {
		return nil
	}
	if g.warm && g.m != nil {
		next, err := g.m.reusable(g)
		if err != nil {
			return errors.Join(err, g.delete())
		}
		if next != nil && g.m.putKept(next) {
			return nil
		}
	}
	return g.delete()
}

// reusable returns the group's directories as a fresh Group for the next
// warm helper or cold run, or nil when they should go: not hybrid, no room, or
// something of the run is still there.
func (m *Manager) reusable(g *Group) (*Group, error) {
	if m.mode != ModeHybrid || g.killed.Load() || !m.room() {
		return nil, nil
	}
	if pop, err := g.populated(); err != nil || pop {
		return nil, err
	}
	oom, ok, err := g.leftLittle()
	if err != nil || !ok {
		return nil, err
	}
	return g.reused(m, oom), nil
}

// leftLittle says whether what the ended run left charged to the group
// (hybrid) lets the next run use it, and reads the OOM count that will be
// the next run's base.
func (g *Group) leftLittle() (oom uint64, ok bool, err error) {
	mem := g.v1Dirs[cgroup1.Memory]
	// A run leaves memory charged to its group: the page cache of files
	// it read or wrote, and kernel objects (dentries, inodes), 0.45-0.75
	// MiB after print('hi') here. Up to keptChargeMax stays with the
	// group. A group holding more is deleted, not emptied: v1 charges a
	// page of the cache to the group that read it first, so what a run
	// holds may be the interpreter's own files, which every run reads.
	// memory.force_empty evicted them; the next run read them again from
	// disk and was charged for them in turn, and once started that went
	// on for every run: 750-800 pages read again per print('hi'), and
	// idexd's CPU per run 7.4-8.4 ms instead of 5.0-5.7 (bench/README.md). A
	// deleted group's pages stay cached, charged to it until the kernel
	// reclaims them, as every group's were before groups were reused.
	over, err := g.chargedOver(mem)
	if err != nil || over {
		return 0, false, err
	}
	if oom, err = v1OOMKills(g.files, mem); err != nil {
		return 0, false, fmt.Errorf("read oom_kill of %s: %w", mem, err)
	}
	return oom, true, nil
}

// chargedOver says whether the group holds more than keptChargeMax of
// memory (with swap) or any socket buffer.
func (g *Group) chargedOver(mem string) (bool, error) {
	checks := []struct {
		name string
		max  int64
	}{{"memory.usage_in_bytes", keptChargeMax}, {"memory.kmem.tcp.usage_in_bytes", 0}}
	if g.v1Swap {
		checks = append(checks, struct {
			name string
			max  int64
		}{"memory.memsw.usage_in_bytes", keptChargeMax})
	}
	for _, f := range checks {
		v, err := g.files.readInt(filepath.Join(mem, f.name))
		if err != nil {
			return false, err
		}
		if v > f.max {
			return true, nil
		}
	}
	return false, nil
}

// reused is the group's directories as a fresh Group, with oom the base
// of the next run's OOM count.
func (g *Group) reused(m *Manager, oom uint64) *Group {
	return &Group{
		mode: g.mode, v2: g.v2, v2Path: g.v2Path, v1: g.v1, dir: g.dir,
		cpuacctDir: g.cpuacctDir, v1Dirs: g.v1Dirs, v1Swap: g.v1Swap, v2Missing: g.v2Missing,
		set: g.set, m: m, warm: true, oomBase: oom, files: g.files,
	}
}

func (m *Manager) room() bool {
	m.keptMu.Lock()
	defer m.keptMu.Unlock()
	return len(m.kept) < m.keep
}

// putKept keeps g for the next CreateWarm, unless the room went meanwhile.
func (m *Manager) putKept(g *Group) bool {
	m.keptMu.Lock()
	defer m.keptMu.Unlock()
	if len(m.kept) >= m.keep {
		return false
	}
	m.kept = append(m.kept, g)
	return true
}

// KeepForNextRun readies the group of a helper kept for another run
// (package sandbox): the run's processes are gone, the helper is not. As
// for a reused group, it says false when the group should go with its
// helper instead: killed, released, on a unified host (v2's peak cannot be
// reset), or holding more than keptChargeMax or any socket buffer. The OOM
// count becomes the next run's base; the peak and CPU base are the
// caller's to take (ResetPeak, CPUTime), as for any warm group.
func (g *Group) KeepForNextRun() (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.released || g.killed.Load() || g.mode != ModeHybrid {
		return false, nil
	}
	oom, ok, err := g.leftLittle()
	if ok {
		g.oomBase = oom
	}
	return ok, err
}
