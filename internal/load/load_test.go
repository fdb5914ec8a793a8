package load

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/harness"
)

// TestLoadShort is the short form of the soak inside make test: 60
// students, up to 2000 runs of the whole mix at concurrency 32 with
// random stops and reattaching readers, bounded at 50 s of starting; then
// every leftover check must read zero.
func TestLoadShort(t *testing.T) {
	d := startDaemon(t, harness.Config{KeepEnded: "5m"})
	seed := uint64(time.Now().UnixNano())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Options{
		Socket: d.Socket, PID: d.PID(), Students: 60, Runs: 2000, Concurrency: 32,
		Duration: 50 * time.Second, DrainTimeout: time.Minute,
		StopRate: 0.15, ReattachRate: 0.4, Seed: seed, Out: &tWriter{t: t},
	})
	if err != nil {
		t.Fatalf("load (seed %d): %v", seed, err)
	}
	var sb strings.Builder
	rep.Print(&sb)
	t.Logf("seed %d\n%s", seed, sb.String())
	if rep.Failures() > 0 {
		t.Fatalf("the load left %d leftovers or errors (seed %d); see the summary above", rep.Failures(), seed)
	}
	// A daemon that started almost nothing would pass the leftover checks
	// trivially; this one must have carried a real load, with every kind
	// ending and the hostile ones contained. The floor is a count, not a
	// rate: how many start in 50 s is the machine's speed (562 alone on a
	// quiet 2-core VM, 445 beside the other packages' tests in CI), which
	// make bench measures, not make test.
	if rep.Started < 200 {
		t.Fatalf("only %d runs started in 50 s: not a load", rep.Started)
	}
	for _, want := range []api.Reason{api.ReasonExited, api.ReasonSignaled, api.ReasonOOMKilled, api.ReasonOutputLimit, api.ReasonStopped, api.ReasonTimedOut} {
		if rep.Ended[want] == 0 {
			t.Errorf("no run ended %s: the mix did not exercise it", want)
		}
	}
	if rep.Reattached == 0 || rep.CgroupHierarchies == 0 {
		t.Errorf("reattached readers %d, cgroup hierarchies checked %d: both must be > 0", rep.Reattached, rep.CgroupHierarchies)
	}
}

// TestCyclesShort runs the cycles form briefly against a daemon with its
// default warm pool: every cycle ends stopped, and at rest the daemon's
// fds, goroutines, namespaces and mounts come back exactly. The RSS slope
// needs tens of thousands of cycles to mean anything (make soak).
func TestCyclesShort(t *testing.T) {
	d := startDaemon(t, harness.Config{KeepEnded: "1s"})
	rep := shortCycles(t, d)
	if !rep.Pass() || rep.Cycles != 240 {
		t.Fatalf("cycles: %d done, failed: %v", rep.Cycles, rep.Failed)
	}
	first, last := rep.Samples[0], rep.Samples[len(rep.Samples)-1]
	if last.FDs != first.FDs || last.Goroutines != first.Goroutines {
		t.Errorf("fds %d -> %d, goroutines %d -> %d: want them back exactly at rest", first.FDs, last.FDs, first.Goroutines, last.Goroutines)
	}
	if first.Census.Children != WarmHelpers(0) {
		t.Errorf("the first sample has %d warm helpers, want the pool full (%d)", first.Census.Children, WarmHelpers(0))
	}
	if first.Census.FDs["warm cgroup"] != WarmHelpers(0) || first.Census.FDs.Diff(last.Census.FDs) != "same kinds" {
		t.Errorf("fds by kind %v -> %v: want one warm cgroup per helper and the same kinds", first.Census.FDs, last.Census.FDs)
	}
}

// shortCycles runs 240 cycles sampled every 60, RSS left unchecked.
func shortCycles(t *testing.T, d *harness.Daemon) *CycleReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	th := DefaultThresholds
	th.RSSKiBPer1000 = 1 << 30
	rep, err := Cycles(ctx, CycleOptions{Socket: d.Socket, PID: d.PID(), Cycles: 240, SampleEvery: 60, Concurrency: 4,
		Duration: 150 * time.Second, Thresholds: th, Out: &tWriter{t: t}})
	if err != nil {
		t.Fatalf("cycles: %v", err)
	}
	var sb strings.Builder
	rep.Print(&sb)
	t.Log(sb.String())
	return rep
}

func TestSlope(t *testing.T) {
	xs := []float64{1, 2, 3, 4}
	if s := slope(xs, []float64{3, 5, 7, 9}); s != 2 {
		t.Errorf("slope of 2x+1 = %v", s)
	}
	if s := slope(xs, []float64{5, 5, 5, 5}); s != 0 {
		t.Errorf("slope of a constant = %v", s)
	}
	if s := slope([]float64{1}, []float64{1}); s != 0 {
		t.Errorf("slope of one point = %v", s)
	}
}

func TestParseMix(t *testing.T) {
	m, err := ParseMix("quick=3,memhog=0")
	if err != nil || m[KindQuick] != 3 || m[KindMemHog] != 0 || len(m) != 2 {
		t.Fatalf("ParseMix: %v %v", m, err)
	}
	for _, bad := range []string{"quick", "quick=-1", "nope=1", "quick=x"} {
		if _, err := ParseMix(bad); err == nil {
			t.Errorf("ParseMix(%q) accepted", bad)
		}
	}
	def, err := ParseMix("")
	if err != nil || len(def) != len(specs) {
		t.Fatalf("default mix: %v %v", def, err)
	}
}
