package run_test

import (
	"os"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/testutil"
)

func countFDs(t *testing.T) int {
	ds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ds)
}

// TestWarmPoolStaysFlat: 100 start/stop cycles on warm slots leave the
// daemon with the fds it had, the pool full again.
func TestWarmPoolStaysFlat(t *testing.T) {
	env := testutil.NewEnv(t, warm(4))
	env.WriteScript(t, "alice", "s.py", "import time\ntime.sleep(30)\n")
	waitWarm(t, env, 4)
	time.Sleep(200 * time.Millisecond)
	base := countFDs(t)
	for i := 0; i < 100; i++ {
		r := startRun(t, env, api.RunRequest{Student: "alice", Script: "s.py"})
		if _, err := r.Stop(ctxT(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	waitWarm(t, env, 4)
	time.Sleep(200 * time.Millisecond)
	t.Logf("fds with 4 warm slots: before %d, after 100 cycles %d", base, countFDs(t))
	if countFDs(t) != base {
		t.Errorf("fd leak: %d -> %d", base, countFDs(t))
	}
}
