package cgroup_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/testutil"
)

// TestOneIdexdPerParent: a second idexd on the same cgroup parent is
// refused before it could sweep the first one's runs as leftovers.
func TestOneIdexdPerParent(t *testing.T) {
	testutil.RequireRoot(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	parent := "idexd-test/lock-" + hex.EncodeToString(b[:])
	first, err := cgroup.New(parent)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cgroup.New(parent); err == nil || !strings.Contains(err.Error(), "in use by another idexd") {
		t.Fatalf("second manager on %s: %v, want refused", parent, err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := cgroup.New(parent)
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	if err := again.RemoveParent(); err != nil {
		t.Fatal(err)
	}
}

// TestGroupsReadableByTheirRun: under systemd's UMask=0027 mkdir in
// cgroupfs would make a run's group root-only; the run itself must still
// reach it (0755) through ancestors that others can search but not list
// (0711). The umask is process-wide, so this test must not run in parallel.
func TestGroupsReadableByTheirRun(t *testing.T) {
	testutil.RequireRoot(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	// A parent of two components, made under the umask like the rest.
	parent := "idexd-test/modes-" + hex.EncodeToString(b[:])
	old := syscall.Umask(0o027)
	m, err := cgroup.New(parent)
	if err != nil {
		syscall.Umask(old)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.RemoveParent(); err != nil {
			t.Error(err)
		}
	})
	g, err := m.Create("alice", "run1", cgroup.Limits{MemoryBytes: 64 << 20, Pids: 16, CPUPercent: 100})
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Delete(); err != nil {
			t.Error(err)
		}
	})
	dirs := append([]string{g.Path()}, g.V1Dirs()...)
	if m.Mode() == cgroup.ModeHybrid && len(dirs) < 5 {
		t.Fatalf("hybrid group has dirs %v, want v2 + 4 v1", dirs)
	}
	for _, dir := range dirs {
		// run, student, modes-…, idexd-test: every directory idexd made.
		want := []os.FileMode{0o755, 0o711, 0o711, 0o711}
		for _, w := range want {
			fi, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode().Perm(); got != w {
				t.Errorf("%s: mode %#o, want %#o", dir, got, w)
			}
			dir = filepath.Dir(dir)
		}
	}
}

// TestCheckConcurrent: health and the watchdog probe the parent at the
// same moments; no probe may see another's mkdir or rmdir.
func TestCheckConcurrent(t *testing.T) {
	m := testManager(t, "probe")
	const workers, each = 8, 300
	errs := make(chan error, workers*each)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if err := m.Check(); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n == 0 {
			t.Errorf("first failed check: %v", err)
		}
		n++
	}
	if n > 0 {
		t.Fatalf("%d of %d concurrent checks failed", n, workers*each)
	}
}

// TestLimitsFollowUpdates: a group's limit files say the limits last set,
// through Update (which skips writing what the group already has) and
// SetPids, in every order a run's start uses them.
func TestLimitsFollowUpdates(t *testing.T) {
	m := testManager(t, "limits")
	a := cgroup.Limits{MemoryBytes: 64 << 20, Pids: 16, CPUPercent: 100}
	bb := cgroup.Limits{MemoryBytes: 32 << 20, Pids: 8, CPUPercent: 50}
	g := warmGroup(t, m, "w1", a)
	// The files, read as the kernel has them.
	file := func(ctrl, v1, v2 string) string {
		dir := g.Path()
		name := v2
		if m.Mode() == cgroup.ModeHybrid {
			name = v1
			for _, d := range g.V1Dirs() {
				if strings.Contains(d, "/"+ctrl+"/") {
					dir = d
				}
			}
		}
		out, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	check := func(when string, mem, pids, cpu int64) {
		t.Helper()
		gotMem := file("memory", "memory.limit_in_bytes", "memory.max")
		gotPids := file("pids", "pids.max", "pids.max")
		gotCPU := strings.Fields(file("cpu", "cpu.cfs_quota_us", "cpu.max"))[0]
		if gotMem != strconv.FormatInt(mem, 10) || gotPids != strconv.FormatInt(pids, 10) || gotCPU != strconv.FormatInt(cpu*1000, 10) {
			t.Errorf("%s: memory %s, pids %s, cpu quota %s; want %d, %d, %d", when, gotMem, gotPids, gotCPU, mem, pids, cpu*1000)
		}
	}
	check("made with a", a.MemoryBytes, a.Pids, a.CPUPercent)
	steps := []struct {
		name string
		do   func() error
		want cgroup.Limits
	}{
		{"update to a again", func() error { return g.Update(a) }, a},
		{"update to b", func() error { return g.Update(bb) }, bb},
		{"pids raised for the helper", func() error { return g.SetPids(bb.Pids + 3) }, cgroup.Limits{MemoryBytes: bb.MemoryBytes, Pids: bb.Pids + 3, CPUPercent: bb.CPUPercent}},
		{"update to b after SetPids", func() error { return g.Update(bb) }, bb},
		{"update back to a", func() error { return g.Update(a) }, a},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		check(s.name, s.want.MemoryBytes, s.want.Pids, s.want.CPUPercent)
	}
}

// TestKilledGroupExitsUnthrottled: processes killed while their group is
// throttled (quota spent for the period) run their exits at once instead
// of waiting for the next period. The kernel counts a period in which the
// group sat throttled (cpu.stat nr_throttled): no period may be counted
// between the kill and the group's last exit.
func TestKilledGroupExitsUnthrottled(t *testing.T) {
	m := testManager(t, "unthrottle")
	g := warmGroup(t, m, "w1", cgroup.Limits{MemoryBytes: 256 << 20, Pids: 64, CPUPercent: 100})
	cpuDir := g.Path()
	for _, d := range g.V1Dirs() {
		if strings.Contains(d, "/cpu,") || strings.Contains(d, "/cpu/") {
			cpuDir = d
		}
	}
	throttled := func() int64 {
		t.Helper()
		out, err := os.ReadFile(filepath.Join(cpuDir, "cpu.stat"))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(l, "nr_throttled "); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
		}
		t.Fatalf("%s/cpu.stat has no nr_throttled: %q", cpuDir, out)
		return 0
	}
	// Eight busy processes: started at a full CPU (python's own start
	// would take seconds at 1%), then held to 1% of one.
	cmd, goOn := inGroup(t, g, "import os\nfor _ in range(7):\n    if os.fork() == 0:\n        break\nwhile True:\n    pass\n")
	t.Cleanup(func() { _ = cmd.Wait() }) // reaped only: killed, its error is the kill's
	goOn()
	deadline := time.Now().Add(20 * time.Second)
	for {
		procs, err := os.ReadFile(filepath.Join(g.Path(), "cgroup.procs"))
		if err != nil {
			t.Fatal(err)
		}
		if len(strings.Fields(string(procs))) == 8 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the tree did not reach 8 processes: %q", procs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := g.Update(cgroup.Limits{MemoryBytes: 256 << 20, Pids: 64, CPUPercent: 1}); err != nil {
		t.Fatal(err)
	}
	base := throttled()
	for throttled() < base+2 {
		if time.Now().After(deadline) {
			t.Fatalf("the group was not throttled at 1%% of a CPU: nr_throttled %d", throttled())
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := throttled()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.KillAndWait(ctx); err != nil {
		t.Fatal(err)
	}
	if after := throttled(); after != before {
		t.Errorf("nr_throttled went from %d to %d between the kill and the group's last exit: the killed processes waited for a period's quota", before, after)
	}
}

// testManager is a cgroup manager of its own, its parent removed with
// the test.
func testManager(t *testing.T, name string) *cgroup.Manager {
	t.Helper()
	testutil.RequireRoot(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	m, err := cgroup.New("idexd-test/" + name + "-" + hex.EncodeToString(b[:]))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.RemoveParent(); err != nil {
			t.Error(err)
		}
	})
	return m
}

// warmGroup is a warm group of m, deleted with the test.
func warmGroup(t *testing.T, m *cgroup.Manager, name string, lim cgroup.Limits) *cgroup.Group {
	t.Helper()
	g, err := m.CreateWarm(name, lim)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Delete(); err != nil {
			t.Error(err)
		}
	})
	return g
}
