package run_test

// Benchmarks of one run against a bare spawn of the same interpreter. They
// only run with -bench (nothing here is a timed test: `make test` must not
// depend on the machine's speed). Run them with
//
//	go test -run '^$' -bench . -benchtime 200x ./internal/run/
//
// and compare BenchmarkRunTrivial's ns/op with BenchmarkBareSpawn's: the
// difference is what the engine adds in-process (store, lock, cgroups,
// helper, end path), without the socket. cmd/idexbench measures the whole
// daemon through its socket.

import (
	"context"
	"log/slog"
	"os/exec"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/config"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/testutil"
)

// BenchmarkBareSpawn is the floor: the interpreter started and reaped
// straight from Go, as exec.Cmd does it.
func BenchmarkBareSpawn(b *testing.B) {
	for b.Loop() {
		if out, err := exec.Command(testutil.Interpreter, "-c", "pass").CombinedOutput(); err != nil {
			b.Fatalf("bare %s -c pass: %v\n%s", testutil.Interpreter, err, out)
		}
	}
}

// BenchmarkRunTrivial starts a script that does nothing through the engine
// and waits for its end, which is published only after the cgroup is
// empty and deleted, the lock released and the end recorded. The engine
// keeps the daemon's default number of warm helpers, as idexd does.
func BenchmarkRunTrivial(b *testing.B) {
	benchRunTrivial(b, config.Default().WarmRuns)
}

// BenchmarkRunTrivialCold is the same with no warm helpers: every run
// creates its cgroups, spawns its helper and moves it into the v1 groups
// on the path from Start to the interpreter (what a run costs when the
// warm pool is empty).
func BenchmarkRunTrivialCold(b *testing.B) {
	benchRunTrivial(b, 0)
}

func benchRunTrivial(b *testing.B, warm int) {
	var mu sync.Mutex
	var starts []time.Duration
	env := testutil.NewEnv(b, func(c *run.Config) {
		c.WarmRuns = warm
		// A run logs two lines; testing.B prints every b.Log, which would
		// bury the result and time the logger too.
		c.Log = slog.New(slog.DiscardHandler)
		c.Hooks.Started = func(_ *api.Run, latency time.Duration) {
			mu.Lock()
			starts = append(starts, latency)
			mu.Unlock()
		}
	})
	env.WriteScript(b, "bench", "trivial.py", "pass\n")
	req := api.RunRequest{Student: "bench", Script: "trivial.py"}
	ctx := context.Background()
	// The first run of a student creates its directory's groups (and
	// the warm pool may still be filling); that is not what a class sees
	// on every run.
	runOnce(ctx, b, env, req)
	mu.Lock()
	starts = starts[:0]
	mu.Unlock()

	for b.Loop() {
		runOnce(ctx, b, env, req)
	}

	// The engine's own start latency (request to child released) says
	// how much of ns/op is before the interpreter runs at all.
	mu.Lock()
	defer mu.Unlock()
	if len(starts) > 0 {
		sort.Slice(starts, func(i, j int) bool { return starts[i] < starts[j] })
		b.ReportMetric(float64(starts[len(starts)/2].Microseconds())/1000, "start-p50-ms")
	}
}

func runOnce(ctx context.Context, b *testing.B, env *testutil.Env, req api.RunRequest) {
	r, err := env.Engine.Start(ctx, req)
	if err != nil {
		b.Fatalf("start %s: %v", req.Script, err)
	}
	<-r.Done()
	if info := r.Info(); info.Reason != api.ReasonExited || info.ExitCode == nil || *info.ExitCode != 0 {
		b.Fatalf("run %s ended %s (exit %v, error %q), want exited 0", info.ID, info.Reason, info.ExitCode, info.Error)
	}
}
