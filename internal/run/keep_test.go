package run_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/testutil"
)

// TestEndedRunsMemoryIsBounded: ended runs' output is kept for late
// readers only within keep_ended_bytes; the oldest go first.
func TestEndedRunsMemoryIsBounded(t *testing.T) {
	env := testutil.NewEnv(t, func(c *run.Config) { c.KeepEndedBytes = 3 << 20 })
	env.WriteScript(t, "alice", "mb.py", "import sys\nsys.stdout.write('x' * (1 << 20))\n")
	var ids []string
	for range 6 {
		res := runToEnd(t, env, api.RunRequest{Student: "alice", Script: "mb.py"})
		if res.Run.OutputBytes != 1<<20 {
			t.Fatalf("run wrote %d bytes", res.Run.OutputBytes)
		}
		ids = append(ids, res.Run.ID)
	}
	if kb := env.Engine.KeptBytes(); kb > 3<<20 {
		t.Fatalf("ended runs hold %d bytes, over the 3 MiB bound", kb)
	}
	for i, id := range ids {
		_, kept := env.Engine.Get(id)
		if want := i >= 4; kept != want {
			t.Errorf("run %d (%s) kept %v, want %v (the newest that fit)", i, id, kept, want)
		}
	}
}

// TestEndedRunsForgottenAfterKeepEnded: after keep_ended a run's events
// are gone from memory (its record stays in the store).
func TestEndedRunsForgottenAfterKeepEnded(t *testing.T) {
	env := testutil.NewEnv(t, func(c *run.Config) { c.KeepEnded = 200 * time.Millisecond })
	env.WriteScript(t, "alice", "hi.py", "print('hi')\n")
	res := runToEnd(t, env, api.RunRequest{Student: "alice", Script: "hi.py"})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, kept := env.Engine.Get(res.Run.ID); !kept {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("run still in memory 10s after keep_ended (200ms)")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if env.Engine.KeptBytes() != 0 {
		t.Fatalf("kept bytes %d after every run was forgotten", env.Engine.KeptBytes())
	}
	if rec, err := env.Store.GetRun(ctxT(t, 5*time.Second), res.Run.ID); err != nil || rec.Reason != api.ReasonExited {
		t.Fatal(fmt.Sprint("record after forgetting: ", rec.Reason, err))
	}
}
