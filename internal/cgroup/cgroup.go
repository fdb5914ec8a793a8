// Package cgroup gives each run a cgroup of its own and takes it away again.
//
// Two layouts are supported, both over github.com/containerd/cgroups/v3:
//
//   - unified (cgroup v2 with controllers, production under systemd): one
//     group per run holds the limits and is the unit of tracking and killing;
//   - hybrid (v1 controllers, plus cgroup2 at /sys/fs/cgroup/unified with no
//     controllers, as on the CI machines): v1 memory/pids/cpu/cpuacct groups
//     hold the limits, and a v2 group tracks the processes, kills them all at
//     once with cgroup.kill and says when the group is empty.
//
// In both layouts the child is cloned straight into the v2 group
// (SysProcAttr.UseCgroupFD); in hybrid mode it must also join the v1 groups
// (Group.Join) before it runs any student code, which the sandbox ensures.
// Plain v1 without a cgroup2 mount is refused: nothing there can kill a
// process tree race-free without freezing it, and no supported host lacks it.
package cgroup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	cgroups "github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Mode is the cgroup layout of the host.
type Mode string

const (
	ModeUnified Mode = "unified"
	ModeHybrid  Mode = "hybrid"
)

const (
	v2Root      = "/sys/fs/cgroup"
	v2HybridDir = "/sys/fs/cgroup/unified"
	// cpuPeriod is the CFS period the CPU quota is expressed in.
	cpuPeriod = 100000
)

// v1Controllers are the v1 hierarchies a run joins in hybrid mode: the
// ones that hold its limits and account its CPU time. Fewer groups mean
// fewer cgroup.procs writes on the start path.
var v1Controllers = []cgroup1.Name{cgroup1.Memory, cgroup1.Pids, cgroup1.Cpu, cgroup1.Cpuacct}

// Limits are what a run's cgroup enforces.
type Limits struct {
	MemoryBytes int64
	Pids        int64
	CPUPercent  int64
}

// Manager creates run groups under one parent.
type Manager struct {
	mode     Mode
	v2Mount  string
	v2Parent string       // absolute group path under v2Mount, e.g. /idexd
	v1Parent cgroup1.Path // hybrid only
	// v1Subs are the v1 controllers' hierarchies, found once: cgroup1's
	// Default parses /proc/self/mountinfo, and per run that was about 3%
	// of idexd's CPU under a burst (bench/README.md).
	v1Subs []cgroup1.Subsystem
	v1Swap bool // memory.memsw.* exists: swap can be limited
	// parentDepth counts the components of the configured parent: the
	// directories above a run's student group that idexd itself made.
	parentDepth int
	// lock is the parent directory, flock'ed: one idexd per parent, so
	// that no instance sweeps another's live runs as leftovers.
	lock *os.File
	// probes numbers Check's probe groups.
	probes atomic.Uint64
	// missing are the limit controllers a unified host does not give us
	// (a container that delegates none): runs there are tracked and
	// killed, but not limited.
	missing []string
	// studentTotals bound all of a student's runs together, in the
	// student's group (SetStudentTotals); zero fields: no bound.
	studentTotals Limits
	// kept are warm groups whose runs ended, emptied for the next warm
	// helper; at most keep of them (KeepWarmGroups, reuse.go).
	keptMu sync.Mutex
	kept   []*Group
	keep   int
	// warmReused and warmMade count the warm groups CreateWarm handed out.
	warmReused, warmMade atomic.Int64
	// openFiles counts the cgroup files warm groups keep open (fileCache).
	openFiles atomic.Int64
}

// limitControllers are the v2 controllers that hold a run's limits.
var limitControllers = []string{"cpu", "memory", "pids"}

// New finds the host's layout and prepares parent. A relative parent is
// placed under idexd's own cgroup (v1: per hierarchy), an absolute one under
// the root of each hierarchy. On a unified host where idexd runs in a
// cgroup of its own (systemd's Delegate=yes), idexd first moves itself into
// a leaf "<own>/daemon", because cgroup v2 lets no process live in a group
// whose children have controllers.
func New(parent string) (*Manager, error) {
	if strings.Contains(parent, "..") || parent == "" {
		return nil, fmt.Errorf("cgroup parent %q: must be non-empty and without '..'", parent)
	}
	m := &Manager{parentDepth: len(strings.Split(strings.Trim(filepath.Clean(parent), "/"), "/"))}
	switch cgroups.Mode() {
	case cgroups.Unified:
		m.mode, m.v2Mount = ModeUnified, v2Root
	case cgroups.Hybrid:
		m.mode, m.v2Mount = ModeHybrid, v2HybridDir
	case cgroups.Legacy:
		return nil, errors.New("cgroup v1 without a cgroup2 mount is not supported: mount cgroup2 (hybrid) or boot with the unified hierarchy")
	default:
		return nil, errors.New("no cgroup filesystem is mounted at /sys/fs/cgroup")
	}
	own, err := ownV2Group()
	if err != nil {
		return nil, err
	}
	top := "/"
	if filepath.IsAbs(parent) {
		m.v2Parent = filepath.Clean(parent)
	} else {
		if m.mode == ModeUnified && own != "/" {
			if own, err = moveSelfToLeaf(own); err != nil {
				return nil, err
			}
		}
		m.v2Parent = filepath.Join(own, parent)
		top = own
	}
	if m.mode == ModeUnified {
		if m.missing, err = missingControllers(filepath.Join(m.v2Mount, top)); err != nil {
			return nil, err
		}
	}
	dir := filepath.Join(m.v2Mount, m.v2Parent)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup parent %s: %w", m.v2Parent, err)
	}
	if m.lock, err = os.Open(dir); err != nil {
		return nil, fmt.Errorf("open cgroup parent %s: %w", m.v2Parent, err)
	}
	if err := unix.Flock(int(m.lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		cerr := m.lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, errors.Join(fmt.Errorf("cgroup parent %s is in use by another idexd: give each instance its own cgroup_parent", m.v2Parent), cerr)
		}
		return nil, errors.Join(fmt.Errorf("lock cgroup parent %s: %w", m.v2Parent, err), cerr)
	}
	if m.mode == ModeHybrid {
		if filepath.IsAbs(parent) {
			m.v1Parent = cgroup1.StaticPath(m.v2Parent)
		} else {
			m.v1Parent = cgroup1.NestedPath(parent)
		}
		memRoot, err := m.v1Parent(cgroup1.Memory)
		if err != nil {
			return nil, fmt.Errorf("find v1 memory cgroup: %w", err)
		}
		_, err = os.Stat(filepath.Join("/sys/fs/cgroup/memory", filepath.Dir(memRoot), "memory.memsw.limit_in_bytes"))
		m.v1Swap = err == nil
		if m.v1Subs, err = v1Hierarchy(); err != nil {
			return nil, errors.Join(err, m.Close())
		}
	}
	if err := m.Check(); err != nil {
		return nil, errors.Join(err, m.Close())
	}
	return m, nil
}

// Close gives up the parent, for the next idexd.
func (m *Manager) Close() error {
	if err := m.lock.Close(); err != nil {
		return fmt.Errorf("unlock cgroup parent %s: %w", m.v2Parent, err)
	}
	return nil
}

// Mode is the host's layout.
func (m *Manager) Mode() Mode { return m.mode }

// Missing names the limit controllers this host does not give idexd; runs
// are then not limited by them.
func (m *Manager) Missing() []string { return m.missing }

// missingControllers reads which limit controllers dir may hand down.
func missingControllers(dir string) ([]string, error) {
	b, err := readFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return nil, fmt.Errorf("read controllers of %s: %w", dir, err)
	}
	have := map[string]bool{}
	for _, c := range strings.Fields(string(b)) {
		have[c] = true
	}
	var missing []string
	for _, c := range limitControllers {
		if !have[c] {
			missing = append(missing, c)
		}
	}
	return missing, nil
}

// Parent is the v2 path under which run groups are created.
func (m *Manager) Parent() string { return m.v2Parent }

// Check proves the parent is usable by creating and removing a group in it;
// health and the watchdog call it, at the same moments too, so each probe
// has a name of its own (the dot keeps it apart from students' names).
func (m *Manager) Check() error {
	probe := filepath.Join(m.v2Mount, m.v2Parent, fmt.Sprintf(".probe-%d", m.probes.Add(1)))
	if err := os.Mkdir(probe, 0o755); err != nil {
		return fmt.Errorf("cgroup parent %s is not writable: %w", m.v2Parent, err)
	}
	if err := os.Remove(probe); err != nil {
		return fmt.Errorf("remove cgroup probe %s: %w", probe, err)
	}
	return nil
}

// WarmPrefix starts the name of each group prepared ahead of time for a
// warm helper, <parent>/warm.<id>; the dot keeps it apart from every
// student's name. The groups sit beside the students' groups, not in a
// directory of their own: a claimed helper's group must weigh its CPU as
// a part of its student's share (SetShare), which only a sibling of the
// students' groups can do (see SetShare).
const WarmPrefix = "warm."

// Create makes the groups of one run with its limits applied, under the
// student's group (which gets the student's totals first, when set).
func (m *Manager) Create(student, id string, lim Limits) (*Group, error) {
	if err := m.prepareStudent(student); err != nil {
		return nil, err
	}
	return m.create(filepath.Join(student, id), lim)
}

// CreateWarm makes a group beside the students' groups: a warm helper's,
// with lim until a run claims it and sets its own, or with a pool a cold
// run's, with the run's lim.
//
// When an earlier warm run's group waits emptied (KeepWarmGroups), that
// one is taken instead, under its old name.
func (m *Manager) CreateWarm(id string, lim Limits) (*Group, error) {
	if g := m.takeKept(); g != nil {
		if err := g.Update(lim); err != nil {
			return nil, errors.Join(fmt.Errorf("reuse warm cgroup %s: %w", g.v2Path, err), g.Delete())
		}
		m.warmReused.Add(1)
		return g, nil
	}
	g, err := m.create(WarmPrefix+id, lim)
	if err != nil {
		return nil, err
	}
	g.warm = true
	if m.mode == ModeHybrid {
		// Only a hybrid host reuses warm groups (reuse.go), the case
		// for keeping their files open.
		g.files = newFileCache(&m.openFiles)
	}
	m.warmMade.Add(1)
	return g, nil
}

// OpenFiles is how many cgroup files warm groups keep open now (fds of
// idexd's: those of groups that wait kept, and of live warm helpers and
// runs).
func (m *Manager) OpenFiles() int { return int(m.openFiles.Load()) }

func (m *Manager) create(rel string, lim Limits) (_ *Group, err error) {
	g := &Group{mode: m.mode, v1Swap: m.v1Swap, m: m}
	res := &cgroup2.Resources{}
	if m.mode == ModeUnified {
		res = v2Resources(lim, m.missing)
	}
	g.v2, err = cgroup2.NewManager(m.v2Mount, filepath.Join(m.v2Parent, rel), res)
	if err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", rel, err)
	}
	g.v2Path = filepath.Join(m.v2Mount, m.v2Parent, rel)
	defer func() {
		if err != nil {
			err = errors.Join(err, g.Delete())
		}
	}()
	g.v2Missing = m.missing
	if m.mode == ModeUnified {
		if err := setV2Swap(g.v2Path); err != nil {
			return nil, err
		}
	}
	if m.mode == ModeHybrid {
		base := m.v1Parent
		path := func(n cgroup1.Name) (string, error) {
			p, err := base(n)
			if err != nil {
				return "", err
			}
			return filepath.Join(p, rel), nil
		}
		subs := func() ([]cgroup1.Subsystem, error) { return m.v1Subs, nil }
		g.v1, err = cgroup1.New(path, v1Resources(lim, m.v1Swap), cgroup1.WithHierarchy(subs))
		if err != nil {
			return nil, fmt.Errorf("create v1 cgroups %s: %w", rel, err)
		}
		g.v1Dirs = make(map[cgroup1.Name]string)
		for _, s := range g.v1.Subsystems() {
			p, ok := s.(interface{ Path(string) string })
			if !ok {
				continue
			}
			rel, err := path(s.Name())
			if err != nil {
				return nil, fmt.Errorf("find v1 %s cgroup of %s: %w", s.Name(), rel, err)
			}
			g.v1Dirs[s.Name()] = p.Path(rel)
		}
		g.cpuacctDir = g.v1Dirs[cgroup1.Cpuacct]
		if g.cpuacctDir == "" {
			return nil, fmt.Errorf("create v1 cgroups %s: no cpuacct group", rel)
		}
	}
	// The student's group and the parent's own components, not the
	// hierarchy's directories above the parent (systemd's or the host's).
	above := strings.Count(rel, string(filepath.Separator)) + m.parentDepth
	if err := openToRun(g.v2Path, above); err != nil {
		return nil, err
	}
	for _, dir := range g.v1Dirs {
		if err := openToRun(dir, above); err != nil {
			return nil, err
		}
	}
	fd, err := os.OpenFile(g.v2Path, os.O_RDONLY|syscallODirectory, 0)
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", g.v2Path, err)
	}
	g.dir = fd
	g.set = &lim
	return g, nil
}

// openToRun lets the run read its own group: dir (the run's group) becomes
// 0755 and the `above` directories over it (the student's group, up to the
// first component of idexd's parent) 0711, searchable but not listable, so
// a run can read its limits through /proc/self/cgroup (runtimes size their
// thread pools from cpu.max) without learning which other students run.
// Needed because mkdir in cgroupfs honours the umask, and idexd.service
// sets UMask=0027, which would make the whole tree root-only.
func openToRun(dir string, above int) error {
	if err := os.Chmod(dir, 0o755); err != nil {
		return fmt.Errorf("open cgroup %s to its run: %w", dir, err)
	}
	for range above {
		dir = filepath.Dir(dir)
		if err := os.Chmod(dir, 0o711); err != nil {
			return fmt.Errorf("open cgroup %s to runs below it: %w", dir, err)
		}
	}
	return nil
}

func v1Hierarchy() ([]cgroup1.Subsystem, error) {
	all, err := cgroup1.Default()
	if err != nil {
		return nil, fmt.Errorf("list v1 controllers: %w", err)
	}
	var out []cgroup1.Subsystem
	for _, s := range all {
		for _, n := range v1Controllers {
			if s.Name() == n {
				out = append(out, s)
			}
		}
	}
	if len(out) != len(v1Controllers) {
		return nil, fmt.Errorf("v1 controllers: found %d of %v", len(out), v1Controllers)
	}
	return out, nil
}

func v1Resources(lim Limits, swap bool) *specs.LinuxResources {
	pids := lim.Pids
	mem := lim.MemoryBytes
	tcp := socketBytes(lim)
	quota := lim.CPUPercent * cpuPeriod / 100
	period := uint64(cpuPeriod)
	r := &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &mem, KernelTCP: &tcp}, //nolint:staticcheck // SA1019: v1 only, where it is what caps socket buffers
		Pids:   &specs.LinuxPids{Limit: &pids},
		CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
	}
	if swap {
		// memsw is memory+swap: equal to the memory limit, swap adds nothing.
		r.Memory.Swap = &mem
	}
	return r
}

// socketBytes caps a run's TCP socket buffers on cgroup v1, where the
// kernel counts them apart from memory.limit_in_bytes (v2 charges them to
// memory.max): without it 120 loopback connections with full buffers
// queued 1.35 GB of host memory under a 64 MiB limit. A quarter of the
// memory limit keeps a run's total within 1.25x of it and is far more
// than socket exercises use. Set before the run's first socket exists:
// the kernel charges only sockets created after accounting is on.
func socketBytes(lim Limits) int64 { return max(lim.MemoryBytes/4, 1<<20) }

func v2Resources(lim Limits, missing []string) *cgroup2.Resources {
	mem := lim.MemoryBytes
	quota := lim.CPUPercent * cpuPeriod / 100
	period := uint64(cpuPeriod)
	r := &cgroup2.Resources{
		Memory: &cgroup2.Memory{Max: &mem},
		Pids:   &cgroup2.Pids{Max: lim.Pids},
		CPU:    &cgroup2.CPU{Max: cgroup2.NewCPUMax(&quota, &period)},
	}
	for _, c := range missing {
		switch c {
		case "memory":
			r.Memory = nil
		case "pids":
			r.Pids = nil
		case "cpu":
			r.CPU = nil
		}
	}
	return r
}

// setV2Swap forbids swap where the kernel accounts it; without swap
// accounting the file does not exist and swap cannot be charged to the group.
func setV2Swap(path string) error {
	f := filepath.Join(path, "memory.swap.max")
	if _, err := os.Stat(f); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := writeFile(f, []byte("0")); err != nil {
		return fmt.Errorf("forbid swap in %s: %w", path, err)
	}
	return nil
}

// ownV2Group reads idexd's own cgroup v2 path from /proc/self/cgroup.
func ownV2Group() (string, error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("read own cgroup: %w", err)
	}
	defer f.Close() //nolint:errcheck // read-only file
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return p, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read own cgroup: %w", err)
	}
	return "", errors.New("read own cgroup: no cgroup v2 entry in /proc/self/cgroup")
}

func moveSelfToLeaf(own string) (string, error) {
	if filepath.Base(own) == "daemon" {
		return filepath.Dir(own), nil
	}
	leaf := filepath.Join(v2Root, own, "daemon")
	if err := os.MkdirAll(leaf, 0o755); err != nil {
		return "", fmt.Errorf("create daemon leaf cgroup %s: %w", leaf, err)
	}
	if err := writeFile(filepath.Join(leaf, "cgroup.procs"), []byte("0")); err != nil {
		return "", fmt.Errorf("move idexd into leaf cgroup %s: %w", leaf, err)
	}
	return own, nil
}

// RemoveParent removes the parent group and every group under it, which
// must hold no process, in every hierarchy, and closes the manager: the
// daemon after a clean stop, and tests. Groups a crash left in one
// hierarchy only (v1 after their v2 twin went) go too. The parent stays
// locked until it is gone, so no other idexd takes it meanwhile.
func (m *Manager) RemoveParent() error {
	dirs, err := m.dirsOf("")
	errs := []error{err}
	for _, d := range dirs {
		errs = append(errs, removeTree(d))
	}
	return errors.Join(append(errs, m.Close())...)
}

// dirsOf is the directories of group rel under the parent: on a hybrid
// host in each v1 hierarchy a run joins, then in v2. The v2 one comes last
// because a sweep finds leftovers by it: removed last, a group whose v1
// twin could not go is still found and tried again.
func (m *Manager) dirsOf(rel string) ([]string, error) {
	var dirs []string
	var errs []error
	if m.mode == ModeHybrid {
		for _, n := range v1Controllers {
			p, err := m.v1Parent(n)
			if err != nil {
				errs = append(errs, fmt.Errorf("find v1 %s parent: %w", n, err))
				continue
			}
			dirs = append(dirs, filepath.Join("/sys/fs/cgroup", string(n), p, rel))
		}
	}
	return append(dirs, filepath.Join(m.v2Mount, m.v2Parent, rel)), errors.Join(errs...)
}

// removeTree removes the group dir and those under it, deepest first. A
// cgroup's rmdir removes only a group without processes, so nothing that
// runs is touched: such a group is an error.
func removeTree(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read cgroup %s: %w", dir, err)
	}
	var errs []error
	for _, e := range ents {
		if e.IsDir() {
			errs = append(errs, removeTree(filepath.Join(dir, e.Name())))
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
	}
	return errors.Join(errs...)
}

// removeGroup removes the (empty) group rel under the parent in every hierarchy.
func (m *Manager) removeGroup(rel string) error {
	dirs, err := m.dirsOf(rel)
	errs := []error{err}
	for _, d := range dirs {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// RunGroups lists the run groups under the parent as "student/run".
func (m *Manager) RunGroups() ([]string, error) {
	dir := filepath.Join(m.v2Mount, m.v2Parent)
	studs, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list cgroup parent %s: %w", dir, err)
	}
	var out []string
	for _, s := range studs {
		// Students' names have no dot; probes and warm groups do.
		if !s.IsDir() || strings.Contains(s.Name(), ".") {
			continue
		}
		runs, err := os.ReadDir(filepath.Join(dir, s.Name()))
		if err != nil {
			return nil, fmt.Errorf("list cgroups of %s: %w", s.Name(), err)
		}
		for _, r := range runs {
			if r.IsDir() {
				out = append(out, s.Name()+"/"+r.Name())
			}
		}
	}
	return out, nil
}

// WarmGroups lists the groups of warm helpers, idle or claimed by a run.
func (m *Manager) WarmGroups() ([]string, error) {
	dir := filepath.Join(m.v2Mount, m.v2Parent)
	ds, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list warm cgroups: %w", err)
	}
	var out []string
	for _, d := range ds {
		if d.IsDir() && strings.HasPrefix(d.Name(), WarmPrefix) {
			out = append(out, d.Name())
		}
	}
	return out, nil
}

// Sweep kills and removes every run group (and warm group) a previous
// instance left, and returns their names. It runs at start-up, before any
// new run exists.
func (m *Manager) Sweep(ctx context.Context) ([]string, error) {
	groups, err := m.RunGroups()
	if err != nil {
		return nil, err
	}
	warm, err := m.WarmGroups()
	if err != nil {
		return nil, err
	}
	groups = append(groups, warm...)
	var ids []string
	var errs []error
	for _, rel := range groups {
		g := &Group{mode: m.mode, v2Path: filepath.Join(m.v2Mount, m.v2Parent, rel)}
		g.v2, err = cgroup2.Load(filepath.Join(m.v2Parent, rel), cgroup2.WithMountpoint(m.v2Mount))
		if err != nil {
			errs = append(errs, fmt.Errorf("load leftover cgroup %s: %w", rel, err))
			continue
		}
		if err := g.KillAndWait(ctx); err != nil {
			errs = append(errs, fmt.Errorf("kill leftover cgroup %s: %w", rel, err))
			continue
		}
		if err := m.removeGroup(rel); err != nil {
			errs = append(errs, err)
			continue
		}
		ids = append(ids, filepath.Base(rel))
	}
	return ids, errors.Join(errs...)
}
