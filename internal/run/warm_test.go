package run_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/testutil"
)

func warm(n int) testutil.Option { return func(c *run.Config) { c.WarmRuns = n } }

// waitWarm waits until the pool has prepared n slots.
func waitWarm(t *testing.T, env *testutil.Env, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ready := env.Engine.WarmReady()
		if ready >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d warm slots after 30s, want %d", ready, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWarmRunIsTheStudent: a run on a warm slot (a helper that was root
// until launched) has the same identity, directory, environment and
// limits as a cold one.
func TestWarmRunIsTheStudent(t *testing.T) {
	t.Setenv("IDEXD_TEST_SECRET", "hunter2")
	env := testutil.NewEnv(t, warm(2))
	env.WriteScript(t, "alice", "who.py", `import os, resource
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
print("uid", status["Uid"].split())
print("gid", status["Gid"].split())
print("groups", status["Groups"].split())
print("cwd", os.getcwd())
print("env", sorted(os.environ))
print("nnp", status["NoNewPrivs"].strip())
print("sid", os.getsid(0) == os.getpid())
print("fsize", resource.getrlimit(resource.RLIMIT_FSIZE)[0])
print("fds", sorted(os.listdir("/proc/self/fd")))
`)
	waitWarm(t, env, 2)
	res := runToEnd(t, env, api.RunRequest{Student: "alice", Script: "who.py"})
	if env.Engine.WarmStarts() != 1 {
		t.Fatalf("warm starts %d, want 1: the test did not test the warm path", env.Engine.WarmStarts())
	}
	if res.Run.Reason != api.ReasonExited || exitCode(res.Run) != "0" {
		t.Fatalf("ended %s exit %s: %s", res.Run.Reason, exitCode(res.Run), res.Stderr)
	}
	uid := strconv.Itoa(int(res.Run.UID))
	for _, w := range []string{
		fmt.Sprintf("uid ['%s', '%s', '%s', '%s']", uid, uid, uid, uid),
		fmt.Sprintf("gid ['%s', '%s', '%s', '%s']", uid, uid, uid, uid),
		"groups []", "cwd " + env.Dirs.Workdir("alice"),
		"env ['HOME', 'LANG', 'LC_ALL', 'LOGNAME', 'PATH', 'PYTHONIOENCODING', 'PYTHONUNBUFFERED', 'TMPDIR', 'USER']",
		"nnp 1", "sid True", "fsize 67108864", "fds ['0', '1', '2', '3']",
	} {
		if !strings.Contains(res.Stdout, w+"\n") {
			t.Errorf("warm child output lacks %q; got:\n%s", w, res.Stdout)
		}
	}
	if res.Run.CPUMS > 1000 {
		t.Errorf("cpu %d ms for a trivial script: the helper's own time was charged", res.Run.CPUMS)
	}
}

func TestWarmLimits(t *testing.T) {
	env := testutil.NewEnv(t, warm(3))
	env.WriteScript(t, "alice", "hog.py", "x = bytearray(400 << 20)\nprint('survived')\n")
	env.WriteScript(t, "alice", "spin.py", "while True: pass\n")
	env.WriteScript(t, "alice", "bomb.py", "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(30)\n        n += 1\nexcept OSError as e:\n    print('forks', n, e.errno)\n")
	cases := []struct {
		script string
		lim    api.Limits
		want   api.Reason
		out    string
	}{
		{"hog.py", api.Limits{MemoryMB: 64}, api.ReasonOOMKilled, ""},
		{"spin.py", api.Limits{CPUSeconds: 1, WallSeconds: 20}, api.ReasonTimedOut, ""},
		{"bomb.py", api.Limits{Pids: 8, WallSeconds: 20}, api.ReasonExited, "forks 7 11\n"},
	}
	for _, c := range cases {
		t.Run(c.script, func(t *testing.T) {
			waitWarm(t, env, 1)
			before := env.Engine.WarmStarts()
			res := runToEnd(t, env, api.RunRequest{Student: "alice", Script: c.script, Limits: c.lim})
			if env.Engine.WarmStarts() != before+1 {
				t.Fatal("the run did not start warm")
			}
			if res.Run.Reason != c.want || (c.out != "" && res.Stdout != c.out) {
				t.Fatalf("ended %s printing %q (%s), want %s printing %q", res.Run.Reason, res.Stdout, res.Stderr, c.want, c.out)
			}
		})
	}
	assertClean(t, env)
}

func TestWarmFailureAtEachStartStep(t *testing.T) {
	var failAt atomic.Value
	failAt.Store("")
	env := testutil.NewEnv(t, warm(1), func(c *run.Config) {
		c.FailAt = func(step string) error {
			if v, _ := failAt.Load().(string); v == step {
				return fmt.Errorf("injected failure at %s", step)
			}
			return nil
		}
	})
	env.WriteScript(t, "alice", "main.py", "print('ran')\n")
	for _, step := range []string{run.StepCgroup, run.StepInterpreter, run.StepPipes, run.StepSpawn, run.StepCgroupJoin, run.StepExec} {
		t.Run(step, func(t *testing.T) {
			waitWarm(t, env, 1)
			failAt.Store(step)
			_, err := env.Engine.Start(ctxT(t, 30*time.Second), api.RunRequest{Student: "alice", Script: "main.py"})
			failAt.Store("")
			if !errors.Is(err, api.ErrStartFailed) || !strings.Contains(err.Error(), "step "+step) {
				t.Fatalf("got %v, want start_failed at step %s", err, step)
			}
			assertClean(t, env)
			waitWarm(t, env, 1)
			if res := runToEnd(t, env, api.RunRequest{Student: "alice", Script: "main.py"}); res.Stdout != "ran\n" {
				t.Fatalf("run after failure printed %q", res.Stdout)
			}
		})
	}
}

// TestWarmConcurrentStudents: more concurrent runs than warm slots, some
// warm and some cold, all correct, the pool refilled, nothing left.
func TestWarmConcurrentStudents(t *testing.T) {
	env := testutil.NewEnv(t, warm(4))
	const n = 32
	for i := range n {
		env.WriteScript(t, fmt.Sprintf("w%02d", i), "main.py", fmt.Sprintf("import os\nopen('out.txt', 'w').write('w%02d')\nprint(os.getuid())\n", i))
	}
	waitWarm(t, env, 4)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := runToEnd(t, env, api.RunRequest{Student: fmt.Sprintf("w%02d", i), Script: "main.py"})
			if res.Stdout != strconv.Itoa(int(res.Run.UID))+"\n" || res.Run.Reason != api.ReasonExited {
				t.Errorf("w%02d: %q %s %s", i, res.Stdout, res.Run.Reason, res.Stderr)
			}
		}()
	}
	wg.Wait()
	if ws := env.Engine.WarmStarts(); ws < 4 {
		t.Errorf("warm starts %d of %d, want at least the 4 prepared", ws, n)
	}
	assertClean(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := env.Engine.Shutdown(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if gs, err := env.Cgroups.WarmGroups(); err != nil || len(gs) != 0 {
		t.Fatalf("warm groups after shutdown: %v %v", gs, err)
	}
}

// cpuWeight reads the CPU weight (v1 cpu.shares, v2 cpu.weight) of the
// group that holds run r's PID 1, or of that group's parent (up = 1).
func cpuWeight(t *testing.T, env *testutil.Env, r *run.Execution, up int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", r.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	dir, file := cgroupDir(t, env, string(b), "cpu"), "cpu.shares"
	if env.Cgroups.Mode() == cgroup.ModeUnified {
		file = "cpu.weight"
	}
	for range up {
		dir = filepath.Dir(dir)
	}
	w, err := strconv.Atoi(readTrimmed(t, filepath.Join(dir, file)))
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// TestRunsWeighAsTheirStudent: a student's runs share one student's CPU
// weight wherever they run: each warm helper's group (a sibling of the
// students' groups) weighs one run's part, the student's own group the
// parts of its cold runs; as runs end, the parts grow back.
func TestRunsWeighAsTheirStudent(t *testing.T) {
	env := testutil.NewEnv(t, warm(1))
	unit := 1024.0
	if env.Cgroups.Mode() == cgroup.ModeUnified {
		unit = 100
	}
	for i := range 3 {
		env.WriteScript(t, "alice", fmt.Sprintf("s%d.py", i), "import time\ntime.sleep(60)\n")
	}
	env.WriteScript(t, "bob", "s.py", "import time\ntime.sleep(60)\n")
	waitWarm(t, env, 1)
	// The first run is warm; the pool refills at once when empty, and the
	// next two start on whatever is ready: warm, cold or both.
	var runs []*run.Execution
	for i := range 3 {
		runs = append(runs, startRun(t, env, api.RunRequest{Student: "alice", Script: fmt.Sprintf("s%d.py", i)}))
	}
	check := func(live []*run.Execution) {
		t.Helper()
		cold := 0
		for i, r := range live {
			if w := cpuWeight(t, env, r, 0); isWarm(t, r) {
				if want := int(math.Round(unit / float64(len(live)))); w != want {
					t.Errorf("warm run %d of %d weighs %d, want %d", i, len(live), w, want)
				}
			} else {
				cold++
			}
		}
		for _, r := range live {
			if !isWarm(t, r) {
				want := int(math.Round(unit * float64(cold) / float64(len(live))))
				if w := cpuWeight(t, env, r, 1); w != want {
					t.Errorf("alice's group, holding %d of her %d runs, weighs %d, want %d", cold, len(live), w, want)
				}
				break
			}
		}
		t.Logf("%d runs, %d of them cold: weights as one student's", len(live), cold)
	}
	check(runs)
	waitWarm(t, env, 1)
	bob := startRun(t, env, api.RunRequest{Student: "bob", Script: "s.py"})
	if w := cpuWeight(t, env, bob, 0); w != int(unit) {
		t.Errorf("bob's only run (warm) weighs %d, want a whole student's %v", w, unit)
	}
	for len(runs) > 0 {
		if _, err := runs[0].Stop(ctxT(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		runs = runs[1:]
		if len(runs) > 0 {
			check(runs)
		}
	}
	if _, err := bob.Stop(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	assertClean(t, env)
}

// TestColdRunsBesideStudents: with a warm pool, a run that finds it empty
// starts cold in a group beside the students' groups, as a warm one runs,
// not under its student's group: a group that a run left can serve it.
func TestColdRunsBesideStudents(t *testing.T) {
	env := testutil.NewEnv(t, warm(1))
	const n = 4
	for i := range n {
		env.WriteScript(t, "alice", fmt.Sprintf("s%d.py", i), "import time\ntime.sleep(60)\n")
	}
	waitWarm(t, env, 1)
	before := env.Engine.WarmStarts()
	// At once: one slot, so at most one or two of them find a helper ready.
	runs := startAtOnce(t, env, "alice", "s%d.py", n)
	if cold := n - int(env.Engine.WarmStarts()-before); cold == 0 {
		t.Fatalf("all %d runs started warm: the test did not test the cold path", n)
	}
	for i, r := range runs {
		if !isWarm(t, r) {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", r.Pid()))
			t.Errorf("run %d is not in a group beside the students': %s", i, b)
		}
	}
	for _, r := range runs {
		if _, err := r.Stop(ctxT(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	assertClean(t, env)
}

// startAtOnce starts n runs of student's scripts (script is a format for
// the run's index) from n goroutines at once.
func startAtOnce(t *testing.T, env *testutil.Env, student, script string, n int) []*run.Execution {
	t.Helper()
	runs := make([]*run.Execution, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			runs[i], errs[i] = env.Engine.Start(ctxT(t, 30*time.Second), api.RunRequest{Student: student, Script: fmt.Sprintf(script, i)})
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return runs
}

// isWarm reports whether run r runs in a warm helper's group.
func isWarm(t *testing.T, r *run.Execution) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", r.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), "/"+cgroup.WarmPrefix)
}

// TestMemoryAboveWarmDefault: limits above the warm pool's 256 MiB (the
// defaults its helpers wait with) take effect, warm and cold: raising a v1
// group's memory limit must raise memsw first (it failed with
// memory.limit_in_bytes: invalid argument). The run allocates most of its
// limit and survives; the kernel's limit, read from inside, is the one
// asked for.
func TestMemoryAboveWarmDefault(t *testing.T) {
	for _, n := range []int{0, 1} {
		env := testutil.NewEnv(t, warm(n))
		env.WriteScript(t, "alice", "big.py", `import sys
mb = int(sys.argv[1])
x = bytearray((mb - 96) << 20)
for i in range(0, len(x), 4096):
    x[i] = 1
groups = dict(l.split(":", 2)[1:] for l in open("/proc/self/cgroup").read().splitlines())
if "memory" in groups:
    print(int(open("/sys/fs/cgroup/memory" + groups["memory"] + "/memory.limit_in_bytes").read()) >> 20)
else:
    print(int(open("/sys/fs/cgroup" + groups[""] + "/memory.max").read()) >> 20)
`)
		for _, mb := range []int64{512, 1024} {
			t.Run(fmt.Sprintf("warm=%d/%dMiB", n, mb), func(t *testing.T) {
				if n > 0 {
					waitWarm(t, env, 1)
				}
				before := env.Engine.WarmStarts()
				res := runToEnd(t, env, api.RunRequest{Student: "alice", Script: "big.py",
					Args: []string{strconv.FormatInt(mb, 10)}, Limits: api.Limits{MemoryMB: mb}})
				if got := env.Engine.WarmStarts() - before; got != int64(n) {
					t.Fatalf("warm starts %d, want %d", got, n)
				}
				if res.Run.Reason != api.ReasonExited || exitCode(res.Run) != "0" || res.Stdout != fmt.Sprintf("%d\n", mb) {
					t.Fatalf("ended %s exit %s printing %q (%s; %s), want exited 0 printing the limit %d",
						res.Run.Reason, exitCode(res.Run), res.Stdout, res.Stderr, res.Run.Error, mb)
				}
				if res.Run.PeakMemoryBytes < (mb-96)<<20 {
					t.Errorf("peak memory %d MiB, want at least the %d MiB the run touched", res.Run.PeakMemoryBytes>>20, mb-96)
				}
			})
		}
		assertClean(t, env)
	}
}

// TestBurstGroupsKept: on a hybrid host the groups of a burst of runs
// that ended by themselves wait for the next burst's cold runs, more of
// them than the pool has helpers: with only a pool's worth kept, a burst
// made and removed a group for nearly every cold start.
func TestBurstGroupsKept(t *testing.T) {
	// Helpers that serve one run each: kept ones would take the first
	// burst's groups with them, and serve the second burst warm.
	env := testutil.NewEnv(t, warm(1), func(c *run.Config) { c.HelperRuns = 1 })
	const n = 6
	for i := range n {
		env.WriteScript(t, "alice", fmt.Sprintf("b%d.py", i), "print('x')\n")
	}
	burst := func() {
		t.Helper()
		waitWarm(t, env, 1)
		for i, r := range startAtOnce(t, env, "alice", "b%d.py", n) {
			if res := testutil.Collect(ctxT(t, 30*time.Second), t, r); res.Run.Reason != api.ReasonExited {
				t.Fatalf("run %d ended %s (%s), want exited", i, res.Run.Reason, res.Run.Error)
			}
		}
	}
	burst()
	before, _ := env.Cgroups.WarmGroupCounts()
	warmBefore := env.Engine.WarmStarts()
	burst()
	// The refill the warm start caused has taken its group too.
	waitWarm(t, env, 1)
	reused, _ := env.Cgroups.WarmGroupCounts()
	cold := n - int(env.Engine.WarmStarts()-warmBefore)
	assertClean(t, env)
	if env.Cgroups.Mode() != cgroup.ModeHybrid {
		if reused != 0 {
			t.Errorf("%d groups reused on a unified host, want 0", reused)
		}
		return
	}
	if cold < 2 {
		t.Fatalf("%d of the second burst's %d runs started cold: the test did not test a burst", cold, n)
	}
	// Each cold run, and the pool's refill, took a group the first
	// burst left.
	if got := int(reused - before); got < cold {
		t.Errorf("the second burst reused %d groups for %d cold starts and a refill, want at least %d", got, cold, cold)
	}
}

// TestReusedGroupPeakIsTheRunsOwn: a warm run in a group an earlier run
// left reports its own peak memory, not the earlier run's (hybrid hosts,
// where groups are reused). The peak is reset when the pool's helper is
// ready, off the start's path: the helper only waits from then on.
func TestReusedGroupPeakIsTheRunsOwn(t *testing.T) {
	env := testutil.NewEnv(t, warm(1))
	env.WriteScript(t, "alice", "big.py", "b = b'x' * (96 << 20)\nprint(len(b))\n")
	env.WriteScript(t, "alice", "small.py", "print('small')\n")
	run := func(script string) api.Run {
		t.Helper()
		waitWarm(t, env, 1)
		res := testutil.Collect(ctxT(t, 30*time.Second), t, startRun(t, env, api.RunRequest{Student: "alice", Script: script}))
		if res.Run.Reason != api.ReasonExited {
			t.Fatalf("%s ended %s (%s), want exited", script, res.Run.Reason, res.Run.Error)
		}
		return res.Run
	}
	before, _ := env.Cgroups.WarmGroupCounts()
	if p := run("big.py").PeakMemoryBytes; p < 96<<20 {
		t.Fatalf("big.py's peak %d bytes, want at least 96 MiB", p)
	}
	// The big run's group is kept when it ends; the refill after the
	// next start takes it, and the start after that runs in it.
	for i := range 4 {
		if p := run("small.py").PeakMemoryBytes; p > 48<<20 {
			t.Errorf("small run %d: peak %d bytes, the big run's counted again", i, p)
		}
	}
	assertClean(t, env)
	// A kept helper keeps its group for the next run too.
	reused, _ := env.Cgroups.WarmGroupCounts()
	if kept := env.Engine.HelpersReused(); env.Cgroups.Mode() == cgroup.ModeHybrid && reused-before+kept < 2 {
		t.Fatalf("%d groups reused and %d helpers kept with theirs: the test did not test a reused group", reused-before, kept)
	}
}
