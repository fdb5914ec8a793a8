package load

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/client"
)

// check runs every end-of-load check into the report.
func (m *mix) check(ctx context.Context, rootBefore map[string]bool) {
	rep := m.rep
	after, err := m.settle(ctx)
	if err != nil {
		rep.problem(&rep.Left.Errors, "daemon state after the load: %v", err)
	}
	rep.After = after
	b, a := rep.Before.Debug, after.Debug
	over := func(counter *int, what string, before, after int) {
		if after > before {
			*counter = after - before
			rep.problem(nil, "daemon %s: %d before the load, %d after (waited up to %s)", what, before, after, m.o.Settle)
		}
	}
	over(&rep.Left.Cgroups, "run cgroups", b.Cgroups, a.Cgroups)
	over(&rep.Left.FDs, "fds", b.FDs, a.FDs)
	if a.FDs > b.FDs {
		rep.problem(nil, "daemon fds by kind, after against before: %s", after.Census.FDs.Diff(rep.Before.Census.FDs))
	}
	over(&rep.Left.Goroutines, "goroutines", b.Goroutines, a.Goroutines)
	over(&rep.Left.Locks, "locks held", b.LocksHeld, a.LocksHeld)
	over(&rep.Left.RunsActive, "active runs", b.RunsActive, a.RunsActive)
	g := compareCensus(rep.Before.Census, after.Census, DefaultThresholds)
	rep.Left.Namespaces, rep.Left.Mounts, rep.Left.Host = g.OwnNS, g.OwnMounts, g.HostOver
	for _, p := range g.Problems {
		rep.problem(nil, "%s", p)
	}
	if p := checkKeptNetworks(a); p != "" {
		rep.problem(&rep.Left.Namespaces, "%s", p)
	}
	if p := checkKeptCgroups(a, WarmHelpers(m.o.WarmRuns)); p != "" {
		rep.problem(&rep.Left.Cgroups, "%s", p)
	}

	running, err := m.c.ListRuns(ctx, client.ListFilter{State: api.StateRunning, Limit: 10000})
	if err != nil {
		rep.problem(&rep.Left.Errors, "list running runs: %v", err)
	}
	for _, r := range running {
		if _, ours := m.byName[r.Student]; ours {
			rep.problem(&rep.Left.RunningRecords, "run %s of %s (%s) is still recorded as running after the load", r.ID, r.Student, r.Script)
		}
	}
	m.checkProcs()
	m.checkFiles(rootBefore)
	n, dirs, err := m.cg.leftovers(m.students)
	if err != nil {
		rep.problem(&rep.Left.Errors, "cgroup directories: %v", err)
	}
	rep.Left.CgroupDirs = n
	rep.CgroupHierarchies = m.cg.learnt()
	for _, d := range dirs {
		rep.problem(nil, "run cgroup directory left: %s", d)
	}
}

// settle waits, up to Settle, until the daemon is at rest (rest.go) with
// its counts back to (or below) the baseline, and returns that sample, or
// the last look when that does not happen in time.
func (m *mix) settle(ctx context.Context) (DaemonState, error) {
	b := m.rep.Before.Debug
	deadline := time.Now().Add(m.o.Settle)
	for {
		s, rest, err := m.rs.sample(ctx, max(time.Until(deadline), 0))
		if err != nil {
			return s, err
		}
		d := s.Debug
		if rest && d.FDs <= b.FDs && d.Goroutines <= b.Goroutines && d.Cgroups <= b.Cgroups && d.LocksHeld <= b.LocksHeld {
			return s, nil
		}
		if time.Now().After(deadline) {
			if !rest {
				m.rep.problem(nil, "the daemon did not come to rest within %s after the load: %s", m.o.Settle, m.rs.unrest(s))
			}
			return s, nil
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return s, err
		}
	}
}

// checkProcs counts the processes of the load's students still alive.
// Zombies are dead (PID 1 reaps orphans late here) and only counted for
// the summary. Other idexd instances on the host (tests in parallel) may
// hand out the same uids, so a process counts only when its cwd is under
// this daemon's students' root, unless AllUIDs.
func (m *mix) checkProcs() {
	uids := map[int]bool{}
	for _, s := range m.students {
		uids[int(s.uid)] = true
	}
	match := studentsMatch(uids, m.root)
	n, zombies, err := StudentsAlive(m.o.UIDMin, m.o.UIDMax, func(p Proc) bool { return m.o.AllUIDs || match(p) })
	m.rep.Zombies = len(zombies)
	if err != nil {
		m.rep.problem(&m.rep.Left.Errors, "list processes: %v", err)
	}
	for _, p := range n {
		m.rep.problem(&m.rep.Left.Processes, "process %d (%s, uid %d, state %s, cwd %s, cgroup %s) is alive after every run ended", p.PID, p.Comm, p.UID, p.State, p.Cwd, p.Cgroup)
	}
}

// studentsMatch picks the processes of the load's students: their uid,
// and a cwd under this daemon's students' root (other idexd instances on
// the host hand out the same uids).
func studentsMatch(uids map[int]bool, root string) func(Proc) bool {
	return func(p Proc) bool {
		return uids[p.UID] && (p.Cwd == root || strings.HasPrefix(p.Cwd, root+"/"))
	}
}

// StudentsAlive returns the processes in the uid range that match (alive)
// and the zombies among them, looking twice 2 s apart when some are
// alive: a process killed a moment ago may still be on its way out.
func StudentsAlive(uidMin, uidMax int, match func(Proc) bool) (alive, zombies []Proc, err error) {
	for look := 0; look < 2; look++ {
		alive, zombies = nil, nil
		ps, err := StudentProcs(uidMin, uidMax)
		if err != nil {
			return nil, nil, err
		}
		for _, p := range ps {
			switch {
			case p.Zombie():
				zombies = append(zombies, p)
			case match(p):
				alive = append(alive, p)
			}
		}
		if len(alive) == 0 {
			return alive, zombies, nil
		}
		time.Sleep(2 * time.Second)
	}
	return alive, zombies, nil
}

// checkFiles proves every run wrote only into its own student's
// directory: no new file at the students' root, in each student's
// directory only the load's scripts and markers of that student's own
// runs, no escape file anywhere, nothing of the load's in the shared
// temporary directories.
func (m *mix) checkFiles(rootBefore map[string]bool) {
	rep := m.rep
	names, err := listNames(m.root)
	if err != nil {
		rep.problem(&rep.Left.Errors, "%v", err)
		return
	}
	for name, isDir := range names {
		if _, ours := m.byName[name]; ours || rootBefore[name] {
			continue
		}
		if !isDir {
			rep.problem(&rep.Left.FilesOutside, "new file at the students' root: %s", filepath.Join(m.root, name))
		}
	}
	for name := range names {
		dir := filepath.Join(m.root, name)
		s, ours := m.byName[name]
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return fmt.Errorf("walk %s: %w", p, err)
			}
			if p == dir || d.IsDir() {
				return nil // files are what runs leave; walk on into directories
			}
			base := d.Name()
			switch {
			case strings.HasPrefix(base, escapePrefix):
				rep.problem(&rep.Left.FilesOutside, "a run wrote outside its directory: %s", p)
			case strings.HasPrefix(base, markerPrefix):
				tok := strings.TrimPrefix(base, markerPrefix)
				owner, _, _ := strings.Cut(tok, ".")
				if owner != name || filepath.Dir(p) != dir {
					rep.problem(&rep.Left.FilesOutside, "marker of a run of %s found at %s", owner, p)
				}
			case ours && filepath.Dir(p) == s.workdir && strings.HasPrefix(base, scriptPrefix) && strings.HasSuffix(base, ".py"):
			case ours:
				rep.problem(&rep.Left.FilesOutside, "unexpected file in %s's directory: %s", name, p)
			}
			return nil
		})
		if err != nil {
			rep.problem(&rep.Left.Errors, "%v", err)
		}
	}
	for _, tmp := range []string{os.TempDir(), "/var/tmp", "/dev/shm"} {
		ents, err := os.ReadDir(tmp)
		if err != nil {
			continue // not there on this host
		}
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), markerPrefix) || strings.HasPrefix(e.Name(), escapePrefix) {
				rep.problem(&rep.Left.FilesOutside, "a run's file in a shared directory: %s", filepath.Join(tmp, e.Name()))
			}
		}
	}
}

// listNames maps each entry of dir to whether it is a directory.
func listNames(dir string) (map[string]bool, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	out := make(map[string]bool, len(ents))
	for _, e := range ents {
		out[e.Name()] = e.IsDir()
	}
	return out, nil
}

// cgroupDirs learns, from a live run's /proc/PID/cgroup, where the daemon
// puts run groups in every hierarchy, so that the end of the load can
// count the directories left there: the debug state sees only the
// unified hierarchy's groups, a v1 group left behind would escape it.
type cgroupDirs struct {
	mu      sync.Mutex
	parents map[string]string // hierarchy -> absolute directory of the cgroup parent
}

// learn records the parent from a run's cgroups (its /proc/self/cgroup,
// as the run printed it): its path in a hierarchy ends with
// /<student>/<run id> (a cold start) or /warm.<slot> (a warm start).
func (c *cgroupDirs) learn(cgroups, student, runID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.parents) > 1 {
		return
	}
	for h, p := range parseCgroups(cgroups) {
		var parent string
		switch {
		case strings.HasSuffix(p, "/"+student+"/"+runID):
			parent = strings.TrimSuffix(p, "/"+student+"/"+runID)
		case strings.HasPrefix(filepath.Base(p), cgroup.WarmPrefix):
			parent = filepath.Dir(p)
		default:
			continue
		}
		if c.parents == nil {
			c.parents = map[string]string{}
		}
		c.parents[h] = filepath.Join(mountOf(h), parent)
	}
}

// parseCgroups reads a run's /proc/self/cgroup printed on one line,
// entries separated by ";", into hierarchy -> path.
func parseCgroups(s string) map[string]string {
	out := map[string]string{}
	for _, l := range strings.Split(s, ";") {
		if parts := strings.SplitN(l, ":", 3); len(parts) == 3 {
			out[parts[1]] = parts[2]
		}
	}
	return out
}

// groupPids lists the host pids in the run's unified-hierarchy group.
func groupPids(cgroups string) []int {
	path, ok := parseCgroups(cgroups)[""]
	if !ok {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(mountOf(""), path, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func mountOf(hierarchy string) string {
	if hierarchy == "" {
		if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.procs"); err == nil {
			return "/sys/fs/cgroup/unified"
		}
		return "/sys/fs/cgroup"
	}
	return filepath.Join("/sys/fs/cgroup", hierarchy)
}

// leftovers counts run group directories of the students in every
// hierarchy learnt. Nothing learnt (no run lived long enough to be seen)
// counts nothing.
func (c *cgroupDirs) leftovers(students []student) (int, []string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var left []string
	var errs []error
	for _, parent := range c.parents {
		for _, s := range students {
			d := filepath.Join(parent, s.name)
			ents, err := os.ReadDir(d)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("list %s: %w", d, err))
				continue
			}
			for _, e := range ents {
				if e.IsDir() {
					left = append(left, filepath.Join(d, e.Name()))
				}
			}
		}
	}
	// Idle warm helpers' groups: every hierarchy must hold as many as the
	// unified one, or a v1 group outlived its run.
	ref, hasRef := -1, false
	if p, ok := c.parents[""]; ok {
		ref, hasRef = countWarm(p), true
	}
	for h, p := range c.parents {
		if n := countWarm(p); hasRef && h != "" && n != ref {
			left = append(left, fmt.Sprintf("%s holds %d warm groups (%s*), the unified hierarchy %d", p, n, cgroup.WarmPrefix, ref))
		}
	}
	return len(left), left, errors.Join(errs...)
}

// countWarm counts the warm helpers' groups in the cgroup parent dir.
func countWarm(dir string) int {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), cgroup.WarmPrefix) {
			n++
		}
	}
	return n
}

// Learnt reports the hierarchies whose cgroup parent was found.
func (c *cgroupDirs) learnt() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.parents)
}
