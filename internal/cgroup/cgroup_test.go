package cgroup_test

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

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
	testutil.RequireRoot(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	m, err := cgroup.New("idexd-test/probe-" + hex.EncodeToString(b[:]))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := m.RemoveParent(); err != nil {
			t.Error(err)
		}
	}()
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
	testutil.RequireRoot(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	m, err := cgroup.New("idexd-test/limits-" + hex.EncodeToString(b[:]))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.RemoveParent(); err != nil {
			t.Error(err)
		}
	})
	a := cgroup.Limits{MemoryBytes: 64 << 20, Pids: 16, CPUPercent: 100}
	bb := cgroup.Limits{MemoryBytes: 32 << 20, Pids: 8, CPUPercent: 50}
	g, err := m.CreateWarm("w1", a)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Delete(); err != nil {
			t.Error(err)
		}
	})
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
