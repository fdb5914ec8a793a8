package run_test

import (
	"errors"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/testutil"
)

// TestQueries: what the server asks the engine. A run is found live, then
// as recorded once forgotten; stopping a forgotten run returns its record;
// a listing of running runs answers from memory when the store cannot.
func TestQueries(t *testing.T) {
	env := testutil.NewEnv(t, func(c *run.Config) { c.KeepEnded = 50 * time.Millisecond })
	ctx := ctxT(t, 60*time.Second)
	env.WriteScript(t, "alice", "quick.py", "print('hi')\n")
	env.WriteScript(t, "alice", "slow.py", "import time\nprint('up', flush=True)\ntime.sleep(60)\n")
	quick := runToEnd(t, env, api.RunRequest{Student: "alice", Script: "quick.py"}).Run
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, ok := env.Engine.Get(quick.ID); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("an ended run was never forgotten")
		}
	}
	if got, err := env.Engine.GetRun(ctx, quick.ID); err != nil || got.Reason != api.ReasonExited {
		t.Fatalf("GetRun of a forgotten run: %+v %v, want its record", got, err)
	}
	if got, err := env.Engine.StopRun(ctx, quick.ID); err != nil || got.Reason != api.ReasonExited {
		t.Fatalf("StopRun of a forgotten run: %+v %v, want its record", got, err)
	}
	if _, _, _, err := env.Engine.Events(quick.ID, 0); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("events of a forgotten run: %v, want not_found", err)
	}
	if _, err := env.Engine.GetRun(ctx, "nope"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("GetRun of an unknown run: %v", err)
	}
	slow, err := env.Engine.StartRun(ctx, api.RunRequest{Student: "alice", Script: "slow.py"})
	if err != nil {
		t.Fatal(err)
	}
	all, err := env.Engine.ListRuns(ctx, api.RunFilter{Student: "alice"})
	if err != nil || len(all) != 2 || all[0].ID != slow.ID || all[0].State != api.StateRunning || all[0].WallMS < 0 {
		t.Fatalf("ListRuns: %+v %v, want the live run first, as the engine knows it", all, err)
	}
	if err := env.Store.Close(); err != nil { // the store is gone
		t.Fatal(err)
	}
	running, err := env.Engine.ListRuns(ctx, api.RunFilter{State: api.StateRunning, Limit: 10})
	if err != nil || len(running) != 1 || running[0].ID != slow.ID {
		t.Fatalf("running runs without a store: %+v %v, want the live one from memory", running, err)
	}
	if _, err := env.Engine.ListRuns(ctx, api.RunFilter{}); !errors.Is(err, api.ErrStoreUnavailable) {
		t.Fatalf("every run without a store: %v, want store_unavailable", err)
	}
	if got, err := env.Engine.StopRun(ctx, slow.ID); err != nil || got.Reason != api.ReasonStopped {
		t.Fatalf("stop: %+v %v", got, err)
	}
}
