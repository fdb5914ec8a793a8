package run_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/testutil"
)

// netFDs counts the fds a kept network namespace holds among this
// process's: the namespace, and the proc/net files that list its sockets
// (opened from inside it, so they name a thread's /proc/TID/net).
func netFDs(t *testing.T) int {
	ds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, d := range ds {
		l, err := os.Readlink("/proc/self/fd/" + d.Name())
		if err == nil && (strings.HasPrefix(l, "net:[") || strings.Contains(l, "/net/")) {
			n++
		}
	}
	return n
}

// TestWarmPoolStaysFlat: 100 start/stop cycles on warm slots leave the
// daemon with the fds it had, the pool full again, and one network
// namespace more (its fd and its three socket lists): alice's, kept for
// her next run.
func TestWarmPoolStaysFlat(t *testing.T) {
	env := testutil.NewEnv(t, warm(4))
	env.WriteScript(t, "alice", "s.py", "import time\ntime.sleep(30)\n")
	waitWarm(t, env, 4)
	time.Sleep(200 * time.Millisecond)
	base, baseNet := testutil.OpenFDs(t), netFDs(t)
	for i := 0; i < 100; i++ {
		r := startRun(t, env, api.RunRequest{Student: "alice", Script: "s.py"})
		if _, err := r.Stop(ctxT(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	waitWarm(t, env, 4)
	time.Sleep(200 * time.Millisecond)
	fds, nets := testutil.OpenFDs(t), netFDs(t)
	t.Logf("fds with 4 warm slots: before %d (%d network namespaces), after 100 cycles %d (%d)", base, baseNet, fds, nets)
	if nets != baseNet+4 {
		t.Errorf("network namespace fds %d -> %d, want four more: alice's namespace and its socket lists, kept for her next run", baseNet, nets)
	}
	// Fewer is no leak: what an earlier test of the package still had
	// open (its engine's last closes) can count in the base.
	if fds-nets > base-baseNet {
		t.Errorf("fd leak: %d -> %d, network namespaces aside", base-baseNet, fds-nets)
	}
}

func countThreads(t *testing.T) int {
	ts, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	return len(ts)
}

// TestLiveRunsHoldNoThreads: a live run waits for its child in the
// netpoller, not in a blocking waitid that would hold an OS thread per
// run (it did: 207 threads at 200 live runs).
func TestLiveRunsHoldNoThreads(t *testing.T) {
	env := testutil.NewEnv(t)
	const n = 40
	for i := range n {
		env.WriteScript(t, fmt.Sprintf("t%02d", i), "s.py", "import time\nprint('up', flush=True)\ntime.sleep(60)\n")
	}
	base := countThreads(t)
	var runs []*run.Execution
	for i := range n {
		r := startRun(t, env, api.RunRequest{Student: fmt.Sprintf("t%02d", i), Script: "s.py"})
		runs = append(runs, r)
	}
	// Each run's child has started; its waiter has had time to block.
	time.Sleep(300 * time.Millisecond)
	live := countThreads(t)
	t.Logf("threads: %d before, %d with %d live runs", base, live, n)
	for _, r := range runs {
		if _, err := r.Stop(ctxT(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if live-base >= n/2 {
		t.Errorf("threads grew from %d to %d with %d live runs: a waiter holds a thread per run", base, live, n)
	}
}
