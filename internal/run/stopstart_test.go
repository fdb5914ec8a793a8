package run_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/testutil"
)

// TestStopDuringStart stops a run at each of its start-up steps, cold and
// warm: Start returns the run (no error), which ends stopped, never having
// run student code, and nothing is held.
func TestStopDuringStart(t *testing.T) {
	steps := []string{run.StepCgroup, run.StepInterpreter, run.StepPipes, run.StepSpawn, run.StepCgroupJoin, run.StepExec}
	for _, warmN := range []int{0, 1} {
		var stopAt atomic.Value
		stopAt.Store("")
		var env *testutil.Env
		env = testutil.NewEnv(t, warm(warmN), func(c *run.Config) {
			c.FailAt = func(step string) error {
				if v, _ := stopAt.Load().(string); v != step {
					return nil
				}
				// The run being started is the only one live: stop it from
				// another goroutine, as a client would, and let the stop
				// land before the step goes on.
				for _, r := range env.Engine.List() {
					if r.Info().State == api.StateRunning {
						go func() { _, _ = r.Stop(context.Background()) }()
					}
				}
				time.Sleep(20 * time.Millisecond)
				return nil
			}
		})
		env.WriteScript(t, "alice", "mark.py", "open('ran', 'w').write('x')\nprint('ran')\n")
		for _, step := range steps {
			t.Run(fmt.Sprintf("warm=%d/%s", warmN, step), func(t *testing.T) {
				if warmN > 0 {
					waitWarm(t, env, 1)
				}
				stopAt.Store(step)
				r, err := env.Engine.Start(ctxT(t, 30*time.Second), api.RunRequest{Student: "alice", Script: "mark.py"})
				stopAt.Store("")
				if err != nil {
					t.Fatalf("start stopped at %s: %v, want the run (ended stopped)", step, err)
				}
				res := testutil.Collect(ctxT(t, 30*time.Second), t, r)
				if res.Run.Reason != api.ReasonStopped || res.Stdout != "" {
					t.Fatalf("ended %s printing %q (%s), want stopped before any output", res.Run.Reason, res.Stdout, res.Run.Error)
				}
				assertClean(t, env)
			})
		}
	}
}
