package load

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/client"
	"github.com/idexd/idexd/internal/config"
	"github.com/idexd/idexd/internal/netns"
	"github.com/idexd/idexd/internal/sandbox"
)

// The daemon is compared with itself only at rest: no run active and its
// warm pool full, that is as many live children as warm helpers. Each
// ready helper holds 7 of the daemon's fds (docs/load.md), and the pool
// refills one helper at a time: a fresh daemon is still filling it when
// it first answers, and after a burst of runs the first quiet look finds
// it nearly empty. Looks taken then differ by whole helpers, which is how
// a fresh machine's first sample read 24 fds and later ones 31 to 45.

// restLooks is how many looks in a row, restGap apart, must find the
// daemon at rest before a sample counts.
const (
	restLooks = 3
	restGap   = 200 * time.Millisecond
	// restTimeout bounds the wait for rest; a daemon that does not come
	// to rest in it fails the check rather than be compared half-full.
	restTimeout = 30 * time.Second
)

// WarmHelpers is the number of warm helpers a daemon configured with
// warm (harness.Config.WarmRuns' convention: 0 the daemon's default, < 0
// none) keeps ready.
func WarmHelpers(warm int) int {
	switch {
	case warm < 0:
		return 0
	case warm == 0:
		return config.Default().WarmRuns
	}
	return warm
}

// restSampler looks at one daemon.
type restSampler struct {
	// c is the sampler's own connection, kept open from look to look:
	// one closed just before a look may still be open on the daemon's
	// side (it notices the close when it is next scheduled), and on a
	// busy host that was seen in every look of a sample.
	c *client.Client
	// load is the load's client: its idle connections are closed when a
	// sample begins, a gap before the first look.
	load  *client.Client
	scope censusScope
	warm  int // live children expected at rest (WarmHelpers)
}

func newRestSampler(socket string, load *client.Client, scope censusScope, warm int) *restSampler {
	return &restSampler{c: &client.Client{Socket: socket, MaxIdleConns: 1}, load: load, scope: scope, warm: WarmHelpers(warm)}
}

// close drops the sampler's connection.
func (r *restSampler) close() { r.c.CloseIdleConnections() }

// look is one look at the daemon: its live children, then its debug
// state, /proc and the census. The children come first: a helper counted
// then was spawned before the fds are read, so a full count means the
// pool's fds are all in the table read after it. (Counted after, in the
// census's scan of /proc, a helper spawned while the fds were being read
// once made a pool of 3 read as full: 37 fds where 44 were due.)
func (r *restSampler) look(ctx context.Context) (s DaemonState, children int, err error) {
	if children, err = liveChildren(r.scope.pid); err != nil {
		return s, 0, err
	}
	if s, err = daemonState(ctx, r.c, r.scope.pid); err != nil {
		return s, 0, err
	}
	if s.Census, err = takeCensus(r.scope); err != nil {
		return s, 0, err
	}
	s.discountKeptNetworks()
	s.discountKeptCgroups()
	s.discountCgroupFiles()
	return s, children, nil
}

// discountKeptNetworks takes the network namespaces idexd keeps for
// students' next runs (internal/netns, at most netns.DefaultMaxKept) out
// of its fds and namespaces: they come and go with the students a load
// uses, by design. An fd or namespace leaked outside that count still
// shows; the count itself is held to its bound (checkKeptNetworks).
func (s *DaemonState) discountKeptNetworks() {
	k := s.Debug.NetworksKept
	s.Debug.FDs -= k * netns.FDsPerNS
	if s.Census.FDs != nil {
		s.Census.FDs["ns:net"] -= k
		s.Census.FDs["netns socket list"] -= k * (netns.FDsPerNS - 1)
	}
	if s.Census.OwnNS != nil {
		s.Census.OwnNS["net"] -= k
	}
}

// discountKeptCgroups takes the warm groups idexd keeps for its next warm
// helpers (internal/cgroup's reuse, at most sandbox.KeptGroups) out of its fds:
// how many wait depends on how the last runs ended. An fd leaked outside
// that count still shows; the count is held to its bound (checkKeptCgroups).
func (s *DaemonState) discountKeptCgroups() {
	k := s.Debug.CgroupsKept
	s.Debug.FDs -= k
	if s.Census.FDs != nil {
		s.Census.FDs["warm cgroup"] -= k
	}
}

// discountCgroupFiles takes the files warm groups keep open (the kept
// groups' and the warm helpers', internal/cgroup's fileCache) out of
// idexd's fds: how many depends on what the groups' last runs read. A
// cgroup fd leaked outside that count still shows.
func (s *DaemonState) discountCgroupFiles() {
	k := s.Debug.CgroupFiles
	s.Debug.FDs -= k
	if s.Census.FDs != nil {
		s.Census.FDs["warm cgroup file"] -= k
	}
}

// checkKeptCgroups says what is wrong with the count of kept warm groups,
// or "".
func checkKeptCgroups(d api.DebugState, warm int) string {
	if bound := sandbox.KeptGroups(warm); d.CgroupsKept > bound {
		return fmt.Sprintf("idexd keeps %d warm cgroups, above its bound (%d for %d warm helpers)", d.CgroupsKept, bound, warm)
	}
	return ""
}

// checkKeptNetworks says what is wrong with the count of kept network
// namespaces, or "".
func checkKeptNetworks(d api.DebugState) string {
	if d.NetworksKept > netns.DefaultMaxKept {
		return fmt.Sprintf("idexd keeps %d network namespaces for students, above its bound %d", d.NetworksKept, netns.DefaultMaxKept)
	}
	return ""
}

func (r *restSampler) atRest(s DaemonState, children int) bool {
	return s.Debug.RunsActive == 0 && children == r.warm && s.Census.Children == r.warm
}

// unrest says why a look is not at rest.
func (r *restSampler) unrest(s DaemonState) string {
	return fmt.Sprintf("runs_active %d, %d live children of the daemon where %d warm helpers are expected (--warm-runs; "+
		"the helpers a burst leaves beyond them wait warm_keep, 5m by default, before they go)",
		s.Debug.RunsActive, s.Census.Children, r.warm)
}

// sample waits, at most timeout, for restLooks looks in a row at rest
// that agree on the daemon's fds and goroutines (a connection still being
// torn down, a helper's pipes being closed, is in one look, a leak in
// all) and folds them: the least of each census count (another process's
// short-lived namespace is in one look), the rest of the last look. rest
// is false when the daemon did not come to rest in time; the last look is
// returned then.
func (r *restSampler) sample(ctx context.Context, timeout time.Duration) (s DaemonState, rest bool, err error) {
	deadline := time.Now().Add(timeout)
	r.load.CloseIdleConnections()
	if err := sleepCtx(ctx, restGap); err != nil {
		return s, false, err
	}
	var folded DaemonState
	n := 0
	for {
		cur, children, err := r.look(ctx)
		if err != nil {
			return cur, false, err
		}
		switch {
		case !r.atRest(cur, children):
			n = 0
		case n > 0 && (cur.Debug.FDs != folded.Debug.FDs || cur.Debug.Goroutines != folded.Debug.Goroutines):
			folded, n = cur, 1
		case n == 0:
			folded, n = cur, 1
		default:
			folded = fold(folded, cur)
			n++
		}
		if n == restLooks {
			return folded, true, nil
		}
		if time.Now().After(deadline) {
			return cur, false, nil
		}
		if err := sleepCtx(ctx, restGap); err != nil {
			return cur, false, err
		}
	}
}

// fold keeps the least of each census count of two looks at rest, and
// the rest of the later one.
func fold(a, b DaemonState) DaemonState {
	out := b
	ca, cb := a.Census, b.Census
	out.Census.OwnNS, out.Census.HostNS = NSCounts{}, NSCounts{}
	for _, t := range nsTypes {
		out.Census.OwnNS[t], out.Census.HostNS[t] = min(ca.OwnNS[t], cb.OwnNS[t]), min(ca.HostNS[t], cb.HostNS[t])
	}
	out.Census.OwnMounts, out.Census.Mounts, out.Census.NSFS = min(ca.OwnMounts, cb.OwnMounts), min(ca.Mounts, cb.Mounts), min(ca.NSFS, cb.NSFS)
	out.Census.OwnProcs = min(ca.OwnProcs, cb.OwnProcs)
	return out
}

// liveChildren counts pid's children that are not zombies, from the
// children lists of its threads.
func liveChildren(pid int) (int, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, fmt.Errorf("list threads of pid %d: %w", pid, err)
	}
	n := 0
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		if err != nil {
			continue // the thread is gone
		}
		for _, f := range strings.Fields(string(b)) {
			k, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			if p, ok := readProc(k); ok && !p.Zombie() {
				n++
			}
		}
	}
	return n, nil
}
