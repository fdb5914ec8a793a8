package run_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/testutil"
)

func fair(f run.Fair) testutil.Option { return func(c *run.Config) { c.Fair = f } }

func maxRuns(n int) testutil.Option { return func(c *run.Config) { c.MaxRuns = n } }

// waitQueue waits until n starts wait in the admission queue.
func waitQueue(t *testing.T, env *testutil.Env, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, _ := env.Engine.Queue()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d starts wait in the queue after 30s, want %d", got, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// holdSlot starts a run that waits on its stdin: it holds one slot until
// the returned function ends it.
func holdSlot(t *testing.T, env *testutil.Env, student string) (*run.Execution, func()) {
	t.Helper()
	env.WriteScript(t, student, "hold.py", "print('holding', flush=True)\ninput()\n")
	r := startRun(t, env, api.RunRequest{Student: student, Script: "hold.py", Limits: api.Limits{WallSeconds: 300}})
	waitOutput(t, r, "holding\n", 30*time.Second)
	return r, func() {
		t.Helper()
		if err := r.WriteStdin(ctxT(t, 10*time.Second), []byte("\n"), true); err != nil {
			t.Fatalf("release the slot: %v", err)
		}
	}
}

func apiCode(err error) api.Code {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	return ""
}

// TestStudentCap: a student's runs beyond max_runs_per_student are
// refused student_busy, naming the running runs; another student is not
// touched, and once one run ends the student may start again.
func TestStudentCap(t *testing.T) {
	env := testutil.NewEnv(t, fair(run.Fair{MaxPerStudent: 2}))
	for i := range 3 {
		env.WriteScript(t, "alice", fmt.Sprintf("w%d.py", i), "print('up', flush=True)\ninput()\n")
	}
	env.WriteScript(t, "bob", "w0.py", "print('bob')\n")
	var ids []string
	var runs []*run.Execution
	for i := range 2 {
		r := startRun(t, env, api.RunRequest{Student: "alice", Script: fmt.Sprintf("w%d.py", i), Limits: api.Limits{WallSeconds: 300}})
		runs, ids = append(runs, r), append(ids, r.ID())
	}
	_, err := env.Engine.Start(ctxT(t, 30*time.Second), api.RunRequest{Student: "alice", Script: "w2.py"})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeStudentBusy {
		t.Fatalf("third run of alice: %v, want student_busy", err)
	}
	if !slices.Equal(ae.RunIDs, ids) {
		t.Errorf("student_busy names runs %v, want the running %v, oldest first", ae.RunIDs, ids)
	}
	if res := runToEnd(t, env, api.RunRequest{Student: "bob", Script: "w0.py"}); res.Stdout != "bob\n" {
		t.Errorf("bob's run printed %q (%s), want bob", res.Stdout, res.Run.Reason)
	}
	if _, err := runs[0].Stop(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	r := startRun(t, env, api.RunRequest{Student: "alice", Script: "w2.py"})
	for _, r := range []*run.Execution{runs[1], r} {
		if _, err := r.Stop(ctxT(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	assertClean(t, env)
}

// TestStartRate: a student may start student_starts_per_minute runs at
// once, then is refused rate_limited with the seconds until the next;
// another student has a bucket of its own.
func TestStartRate(t *testing.T) {
	env := testutil.NewEnv(t, fair(run.Fair{StartsPerMinute: 3}))
	env.WriteScript(t, "alice", "quick.py", "pass\n")
	env.WriteScript(t, "bob", "quick.py", "pass\n")
	for range 3 {
		if res := runToEnd(t, env, api.RunRequest{Student: "alice", Script: "quick.py"}); res.Run.Reason != api.ReasonExited {
			t.Fatalf("ended %s", res.Run.Reason)
		}
	}
	_, err := env.Engine.Start(ctxT(t, 30*time.Second), api.RunRequest{Student: "alice", Script: "quick.py"})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeRateLimited {
		t.Fatalf("fourth start within a minute: %v, want rate_limited", err)
	}
	// One start comes back every 20 s.
	if ae.RetryAfterS < 1 || ae.RetryAfterS > 20 {
		t.Errorf("retry after %d s, want 1..20", ae.RetryAfterS)
	}
	if res := runToEnd(t, env, api.RunRequest{Student: "bob", Script: "quick.py"}); res.Run.Reason != api.ReasonExited {
		t.Errorf("bob: ended %s", res.Run.Reason)
	}
	assertClean(t, env)
}

// TestQueueRoundRobin: with the host full, waiting starts get the slots
// in turn per student: alice's five queued starts do not delay bob's and
// carol's, which came after them.
func TestQueueRoundRobin(t *testing.T) {
	var mu sync.Mutex
	var order []string
	env := testutil.NewEnv(t, maxRuns(1), fair(run.Fair{MaxWait: time.Minute, QueueMax: 100}),
		func(c *run.Config) {
			c.Hooks.Started = func(r *api.Run, _ time.Duration) {
				mu.Lock()
				order = append(order, r.Student+"/"+strings.TrimSuffix(r.Script, ".py"))
				mu.Unlock()
			}
		})
	_, release := holdSlot(t, env, "holder")
	type start struct{ student, script string }
	var starts []start
	for i := range 5 {
		starts = append(starts, start{"alice", fmt.Sprintf("a%d", i)})
	}
	starts = append(starts, start{"bob", "b0"}, start{"carol", "c0"})
	for _, s := range starts {
		env.WriteScript(t, s.student, s.script+".py", "pass\n")
	}
	var wg sync.WaitGroup
	for i, s := range starts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := env.Engine.Start(ctxT(t, 90*time.Second), api.RunRequest{Student: s.student, Script: s.script + ".py", WaitSeconds: 60})
			if err != nil {
				t.Errorf("start %s/%s: %v", s.student, s.script, err)
				return
			}
			testutil.Collect(ctxT(t, 60*time.Second), t, r)
		}()
		// One at a time, so the queue's order is the order above.
		waitQueue(t, env, i+1)
	}
	if n, oldest := env.Engine.Queue(); n != 7 || oldest <= 0 {
		t.Errorf("queue %d long, oldest wait %v: want 7 and more than 0", n, oldest)
	}
	if h := env.Engine.Health(ctxT(t, 10*time.Second)); h.Queue.Length != 7 || h.Queue.Max != 100 {
		t.Errorf("health's queue %+v, want 7 waiting of at most 100", h.Queue)
	}
	release()
	wg.Wait()
	want := []string{"holder/hold", "alice/a0", "bob/b0", "carol/c0", "alice/a1", "alice/a2", "alice/a3", "alice/a4"}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(order, want) {
		t.Errorf("runs started in the order %v, want %v", order, want)
	}
	assertClean(t, env)
}

// TestQueueRefusals: a start that may not wait, or waited its time,
// is refused at_capacity; a full queue refuses at once; a drain refuses
// every waiting start (draining) and leaves the queue empty; waiting
// starts count against the student's cap.
func TestQueueRefusals(t *testing.T) {
	env := testutil.NewEnv(t, maxRuns(1), fair(run.Fair{MaxWait: time.Minute, QueueMax: 3, MaxPerStudent: 2}))
	holder, _ := holdSlot(t, env, "holder")
	for _, s := range []string{"alice", "bob", "carol", "dave"} {
		env.WriteScript(t, s, "q.py", "pass\n")
		env.WriteScript(t, s, "q2.py", "pass\n")
	}
	start := func(student, script string, wait int) error {
		_, err := env.Engine.Start(ctxT(t, 90*time.Second), api.RunRequest{Student: student, Script: script, WaitSeconds: wait})
		return err
	}
	if err := start("alice", "q.py", 0); apiCode(err) != api.CodeAtCapacity {
		t.Errorf("a start that may not wait: %v, want at_capacity", err)
	}
	if err := start("alice", "q.py", 1); apiCode(err) != api.CodeAtCapacity || !strings.Contains(err.Error(), "no slot came free within 1s") {
		t.Errorf("a start that waited 1 s: %v, want at_capacity after its wait", err)
	}
	errs := make(chan error, 3)
	for i, s := range []string{"alice", "alice", "bob"} {
		script := []string{"q.py", "q2.py", "q.py"}[i]
		go func() { errs <- start(s, script, 60) }()
		waitQueue(t, env, i+1)
	}
	if err := start("alice", "q.py", 60); apiCode(err) != api.CodeStudentBusy {
		t.Errorf("alice's third start, two waiting: %v, want student_busy", err)
	}
	if err := start("carol", "q.py", 60); apiCode(err) != api.CodeAtCapacity || !strings.Contains(err.Error(), "queue_max") {
		t.Errorf("a start beyond queue_max: %v, want at_capacity naming queue_max", err)
	}
	env.Engine.SetDraining(true)
	for range 3 {
		if err := <-errs; apiCode(err) != api.CodeDraining {
			t.Errorf("a waiting start at the drain: %v, want draining", err)
		}
	}
	if n, _ := env.Engine.Queue(); n != 0 {
		t.Errorf("queue %d long after the drain, want empty", n)
	}
	if holder.Info().State != api.StateRunning {
		t.Errorf("the running run ended at the drain: %+v", holder.Info())
	}
	if _, err := holder.Stop(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	env.Engine.SetDraining(false)
	if res := runToEnd(t, env, api.RunRequest{Student: "dave", Script: "q.py"}); res.Run.Reason != api.ReasonExited {
		t.Errorf("after resume: ended %s", res.Run.Reason)
	}
	assertClean(t, env)
}

// TestStopStudent: an admin's stop of a student ends every run of that
// student and refuses its waiting starts (student_stopped); other
// students' runs go on.
func TestStopStudent(t *testing.T) {
	env := testutil.NewEnv(t, maxRuns(3), fair(run.Fair{MaxWait: time.Minute, QueueMax: 10}))
	for i := range 3 {
		env.WriteScript(t, "mallory", fmt.Sprintf("hog%d.py", i), "print('up', flush=True)\nwhile True:\n    pass\n")
	}
	var hogs []*run.Execution
	for i := range 2 {
		r := startRun(t, env, api.RunRequest{Student: "mallory", Script: fmt.Sprintf("hog%d.py", i), Limits: api.Limits{WallSeconds: 300, CPUSeconds: 300}})
		waitOutput(t, r, "up\n", 30*time.Second)
		hogs = append(hogs, r)
	}
	alice, _ := holdSlot(t, env, "alice")
	waited := make(chan error, 1)
	go func() {
		_, err := env.Engine.Start(ctxT(t, 90*time.Second), api.RunRequest{Student: "mallory", Script: "hog2.py", WaitSeconds: 60})
		waited <- err
	}()
	waitQueue(t, env, 1)
	out, err := env.Engine.StopStudent(ctxT(t, 30*time.Second), "mallory")
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Stopped) != 2 || out.QueuedCancelled != 1 {
		t.Fatalf("stopped %d runs and %d waiting starts, want 2 and 1: %+v", len(out.Stopped), out.QueuedCancelled, out)
	}
	for i, r := range out.Stopped {
		if r.ID != hogs[i].ID() || r.Reason != api.ReasonStopped || r.State != api.StateEnded {
			t.Errorf("stopped[%d] = %s %s %s, want %s stopped and ended", i, r.ID, r.State, r.Reason, hogs[i].ID())
		}
	}
	if err := <-waited; apiCode(err) != api.CodeStudentStopped {
		t.Errorf("mallory's waiting start: %v, want student_stopped", err)
	}
	if alice.Info().State != api.StateRunning {
		t.Errorf("alice's run ended with mallory's: %+v", alice.Info())
	}
	if _, err := alice.Stop(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Engine.StopStudent(ctxT(t, 10*time.Second), "Not A Name"); apiCode(err) != api.CodeInvalidStudent {
		t.Errorf("stop of a bad name: %v, want invalid_student", err)
	}
	assertClean(t, env)
}

// TestRefusalsLoggedOncePerBurst: twenty refusals within a burst make
// two lines: the first refusal at once (who and why), then one line that
// sums up the rest per student.
func TestRefusalsLoggedOncePerBurst(t *testing.T) {
	logs := &testutil.LogBuffer{}
	env := testutil.NewEnv(t, fair(run.Fair{MaxPerStudent: 1, BurstWindow: 300 * time.Millisecond}),
		func(c *run.Config) { c.Log = logs.Logger() })
	var held []*run.Execution
	for _, s := range []string{"alice", "bob"} {
		env.WriteScript(t, s, "w.py", "input()\n")
		env.WriteScript(t, s, "x.py", "pass\n")
		held = append(held, startRun(t, env, api.RunRequest{Student: s, Script: "w.py", Limits: api.Limits{WallSeconds: 300}}))
	}
	for i := range 20 {
		s := []string{"alice", "bob"}[min(i%3, 1)]
		if _, err := env.Engine.Start(context.Background(), api.RunRequest{Student: s, Script: "x.py"}); apiCode(err) != api.CodeStudentBusy {
			t.Fatalf("start %d of %s: %v, want student_busy", i, s, err)
		}
	}
	first := logs.Lines("run start refused")
	if len(first) != 1 || !strings.Contains(first[0], "code=student_busy") || !strings.Contains(first[0], "student=alice") {
		t.Errorf("lines at once: %q, want one naming alice and student_busy", first)
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(logs.Lines("run starts refused in a burst")) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	sum := logs.Lines("run starts refused in a burst")
	if len(sum) != 1 || !strings.Contains(sum[0], "more=19") || !strings.Contains(sum[0], "bob:13 alice:6") {
		t.Errorf("summary lines: %q, want one with the 19 more refusals, bob 13 and alice 6", sum)
	}
	for _, r := range held {
		if _, err := r.Stop(ctxT(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	assertClean(t, env)
}

// TestStopStudentWhileGrantedStartWakes: an admin's stop of a student
// that comes after one of the student's waiting starts got a slot, but
// before that start's goroutine took it up, still stops the run the
// start makes: the stop must not be lost in that window (the start was no
// longer in the queue for the stop to refuse, and its run not yet live
// for the stop to end).
func TestStopStudentWhileGrantedStartWakes(t *testing.T) {
	env := testutil.NewEnv(t, maxRuns(1), fair(run.Fair{MaxWait: time.Minute, QueueMax: 10}))
	holder, _ := holdSlot(t, env, "holder")
	env.WriteScript(t, "mallory", "wait.py", "print('up', flush=True)\ninput()\n")
	started := make(chan *run.Execution, 1)
	go func() {
		r, err := env.Engine.Start(ctxT(t, 90*time.Second), api.RunRequest{Student: "mallory", Script: "wait.py",
			WaitSeconds: 60, Limits: api.Limits{WallSeconds: 300}})
		if err != nil {
			t.Errorf("mallory's start: %v, want a run (stopped once it started)", err)
		}
		started <- r
	}()
	waitQueue(t, env, 1)
	env.Engine.GrantThenCountStop("mallory")
	if r := <-started; r != nil {
		select {
		case <-r.Done():
		case <-time.After(60 * time.Second):
			t.Fatalf("mallory's run %s still runs 60 s after an admin stopped mallory's runs: %+v", r.ID(), r.Info())
		}
		if info := r.Info(); info.Reason != api.ReasonStopped {
			t.Errorf("mallory's run ended %s, want stopped", info.Reason)
		}
	}
	if _, err := holder.Stop(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	assertClean(t, env)
}

// TestQueueWaitCapped: a start's wait_seconds is cut to the configured
// max_wait_seconds; with no queue configured (0) nothing waits, whatever
// the request asks; a negative wait is a bad request.
func TestQueueWaitCapped(t *testing.T) {
	for _, c := range []struct {
		name    string
		maxWait time.Duration
		want    string
	}{
		{"capped", time.Second, "no slot came free within 1s"},
		{"no queue", 0, "wait_seconds lets a start wait for a slot"},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := testutil.NewEnv(t, maxRuns(1), fair(run.Fair{MaxWait: c.maxWait, QueueMax: 10}))
			holder, _ := holdSlot(t, env, "holder")
			env.WriteScript(t, "alice", "q.py", "pass\n")
			_, err := env.Engine.Start(ctxT(t, 90*time.Second), api.RunRequest{Student: "alice", Script: "q.py", WaitSeconds: 50})
			if apiCode(err) != api.CodeAtCapacity || !strings.Contains(err.Error(), c.want) {
				t.Errorf("a start asking to wait 50 s with max_wait %v: %v, want at_capacity saying %q", c.maxWait, err, c.want)
			}
			_, err = env.Engine.Start(ctxT(t, 30*time.Second), api.RunRequest{Student: "alice", Script: "q.py", WaitSeconds: -1})
			if apiCode(err) != api.CodeInvalidRequest {
				t.Errorf("wait_seconds -1: %v, want invalid_request", err)
			}
			if n, _ := env.Engine.Queue(); n != 0 {
				t.Errorf("queue %d long after the refusals, want empty", n)
			}
			if _, err := holder.Stop(ctxT(t, 10*time.Second)); err != nil {
				t.Fatal(err)
			}
			assertClean(t, env)
		})
	}
}

// TestAdmissionOutcomes: the engine tells its Admission hook (metrics:
// idexd_admissions_total, idexd_admissions_refused_total) what became of
// every start, by outcome and by the code of each refusal: started at
// once, queued, started after its wait, refused student_busy and
// rate_limited.
func TestAdmissionOutcomes(t *testing.T) {
	var mu sync.Mutex
	got := map[string]int{}
	var waited []time.Duration
	env := testutil.NewEnv(t, maxRuns(1), fair(run.Fair{MaxPerStudent: 1, StartsPerMinute: 2, MaxWait: time.Minute, QueueMax: 10}),
		func(c *run.Config) {
			c.Hooks.Admission = func(outcome string, code api.Code, w time.Duration) {
				mu.Lock()
				defer mu.Unlock()
				got[outcome+" "+string(code)]++
				if outcome == run.AdmittedAfterWait {
					waited = append(waited, w)
				}
			}
		})
	_, release := holdSlot(t, env, "holder")
	env.WriteScript(t, "alice", "q.py", "pass\n")
	env.WriteScript(t, "bob", "q.py", "pass\n")
	queued := make(chan error, 1)
	go func() {
		r, err := env.Engine.Start(ctxT(t, 90*time.Second), api.RunRequest{Student: "alice", Script: "q.py", WaitSeconds: 60})
		if err == nil {
			testutil.Collect(ctxT(t, 60*time.Second), t, r)
		}
		queued <- err
	}()
	waitQueue(t, env, 1)
	if _, err := env.Engine.Start(ctxT(t, 30*time.Second), api.RunRequest{Student: "holder", Script: "hold.py"}); apiCode(err) != api.CodeStudentBusy {
		t.Errorf("a second run of holder: %v, want student_busy", err)
	}
	release()
	if err := <-queued; err != nil {
		t.Fatalf("alice's waiting start: %v", err)
	}
	for range 2 {
		if res := runToEnd(t, env, api.RunRequest{Student: "bob", Script: "q.py", WaitSeconds: 60}); res.Run.Reason != api.ReasonExited {
			t.Fatalf("bob's run ended %s", res.Run.Reason)
		}
	}
	if _, err := env.Engine.Start(ctxT(t, 30*time.Second), api.RunRequest{Student: "bob", Script: "q.py"}); apiCode(err) != api.CodeRateLimited {
		t.Errorf("bob's third start within a minute: %v, want rate_limited", err)
	}
	assertClean(t, env)
	mu.Lock()
	defer mu.Unlock()
	// bob's two runs may each find the slot still held by the run before
	// (a run's slot comes back when its end is recorded), and then wait
	// for it: each is admitted at once or queued and started after its
	// wait.
	bobWaited := got[run.Queued+" "] - 1
	want := map[string]int{
		run.AdmittedAtOnce + " ":                        1 + 2 - bobWaited,
		run.Queued + " ":                                1 + bobWaited,
		run.AdmittedAfterWait + " ":                     1 + bobWaited,
		run.Refused + " " + string(api.CodeStudentBusy): 1,
		run.Refused + " " + string(api.CodeRateLimited): 1,
	}
	if !maps.Equal(got, want) || bobWaited < 0 || bobWaited > 2 {
		t.Errorf("admission outcomes %v, want %v", got, want)
	}
	if len(waited) == 0 || waited[0] <= 0 {
		t.Errorf("the waits told of starts admitted after waiting: %v, want alice's above 0", waited)
	}
}
