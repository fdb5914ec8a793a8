package run_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/store"
	"github.com/idexd/idexd/internal/testutil"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func startRun(t *testing.T, env *testutil.Env, req api.RunRequest) *run.Execution {
	t.Helper()
	r, err := env.Engine.Start(ctxT(t, 30*time.Second), req)
	if err != nil {
		t.Fatalf("start %s/%s: %v", req.Student, req.Script, err)
	}
	return r
}

func runToEnd(t *testing.T, env *testutil.Env, req api.RunRequest) testutil.Result {
	t.Helper()
	return testutil.Collect(ctxT(t, 60*time.Second), t, startRun(t, env, req))
}

// assertClean checks that nothing of any run is left: no lock, no cgroup.
func assertClean(t *testing.T, env *testutil.Env) {
	t.Helper()
	if n := env.Locks.Held(); n != 0 {
		t.Errorf("locks held after every run ended: %d, want 0", n)
	}
	groups, err := env.Cgroups.RunGroups()
	if err != nil {
		t.Fatalf("list run cgroups: %v", err)
	}
	if len(groups) != 0 {
		t.Errorf("run cgroups left: %v", groups)
	}
	acq, rel := env.Locks.Counts()
	if acq != rel {
		t.Errorf("locks acquired %d, released %d: want equal", acq, rel)
	}
}

func exitCode(r api.Run) string {
	if r.ExitCode == nil {
		return "none"
	}
	return strconv.Itoa(*r.ExitCode)
}

// TestChildIdentity reads the child's own /proc/self/status: the student's
// uid and gid, no supplementary groups, its workdir, none of our env.
func TestChildIdentity(t *testing.T) {
	t.Setenv("IDEXD_TEST_SECRET", "hunter2")
	env := testutil.NewEnv(t)
	env.WriteScript(t, "alice", "who.py", `import os
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
print("uid", status["Uid"].split())
print("gid", status["Gid"].split())
print("groups", status["Groups"].split())
print("cwd", os.getcwd())
print("env", sorted(os.environ))
print("nnp", status["NoNewPrivs"].strip())
print("sid", os.getsid(0) == os.getpid())
`)
	res := runToEnd(t, env, api.RunRequest{Student: "alice", Script: "who.py"})
	if res.Run.Reason != api.ReasonExited || exitCode(res.Run) != "0" {
		t.Fatalf("run ended %s (exit %s), want exited 0; stderr:\n%s", res.Run.Reason, exitCode(res.Run), res.Stderr)
	}
	uid := strconv.Itoa(int(res.Run.UID))
	gid := strconv.Itoa(int(res.Run.GID))
	wd := env.Dirs.Workdir("alice")
	want := []string{
		fmt.Sprintf("uid ['%s', '%s', '%s', '%s']", uid, uid, uid, uid),
		fmt.Sprintf("gid ['%s', '%s', '%s', '%s']", gid, gid, gid, gid),
		"groups []",
		"cwd " + wd,
		"env ['HOME', 'LANG', 'LC_ALL', 'LOGNAME', 'PATH', 'PYTHONIOENCODING', 'PYTHONUNBUFFERED', 'TMPDIR', 'USER']",
		"nnp 1",
		"sid True",
	}
	for _, w := range want {
		if !strings.Contains(res.Stdout, w+"\n") {
			t.Errorf("child output lacks %q; got:\n%s", w, res.Stdout)
		}
	}
	if res.Run.UID < 200000 || res.Run.UID == 0 {
		t.Errorf("uid %d: want one from the range 200000-299999", res.Run.UID)
	}
	assertClean(t, env)
}

// TestSixtyFourStudentsWriteOwnFiles is the old backend's os.chdir bug:
// every student's out.csv must land in that student's directory, owned by
// that student, and nowhere else.
func TestSixtyFourStudentsWriteOwnFiles(t *testing.T) {
	env := testutil.NewEnv(t, testutil.SharedLayout)
	const n = 64
	for i := range n {
		env.WriteScript(t, fmt.Sprintf("s%02d", i), "main.py",
			fmt.Sprintf("import time\ntime.sleep(0.05)\nopen('out.csv', 'w').write('student,s%02d\\n')\n", i))
	}
	var wg sync.WaitGroup
	results := make([]testutil.Result, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = runToEnd(t, env, api.RunRequest{Student: fmt.Sprintf("s%02d", i), Script: "main.py"})
		}()
	}
	wg.Wait()
	uids := map[uint32]string{}
	for i, res := range results {
		name := fmt.Sprintf("s%02d", i)
		if res.Run.Reason != api.ReasonExited || exitCode(res.Run) != "0" {
			t.Errorf("%s: ended %s exit %s, stderr %q", name, res.Run.Reason, exitCode(res.Run), res.Stderr)
			continue
		}
		if other, dup := uids[res.Run.UID]; dup {
			t.Errorf("%s and %s share uid %d", name, other, res.Run.UID)
		}
		uids[res.Run.UID] = name
		p := filepath.Join(env.Dirs.Workdir(name), "out.csv")
		b, err := os.ReadFile(p)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if string(b) != "student,"+name+"\n" {
			t.Errorf("%s: out.csv holds %q", name, b)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != res.Run.UID || st.Gid != testutil.ClientGID || st.Mode&0o777 != 0o660 {
			t.Errorf("%s: out.csv is %d:%d %o, want %d:%d 660 (umask 007, setgid dir)", name, st.Uid, st.Gid, st.Mode&0o777, res.Run.UID, testutil.ClientGID)
		}
	}
	// Nothing anywhere else: each directory holds exactly main.py and out.csv.
	entries, err := os.ReadDir(env.Dirs.Root)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != n {
		t.Errorf("workdir root holds %d entries, want %d", len(entries), n)
	}
	for _, e := range entries {
		files, err := os.ReadDir(filepath.Join(env.Dirs.Root, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, f := range files {
			names = append(names, f.Name())
		}
		if strings.Join(names, ",") != "main.py,out.csv" {
			t.Errorf("%s holds %v, want [main.py out.csv]", e.Name(), names)
		}
	}
	assertClean(t, env)
}

func TestSecondRunOfSameScriptIsLocked(t *testing.T) {
	env := testutil.NewEnv(t)
	env.WriteScript(t, "alice", "slow.py", "import time\ntime.sleep(30)\n")
	first := startRun(t, env, api.RunRequest{Student: "alice", Script: "slow.py"})
	// The same script by another spelling is the same lock.
	_, err := env.Engine.Start(ctxT(t, 10*time.Second), api.RunRequest{Student: "alice", Script: "./slow.py"})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeLocked || ae.RunID != first.ID() {
		t.Fatalf("second start: got %v, want locked naming run %s", err, first.ID())
	}
	// Another student's script of the same name is not locked.
	env.WriteScript(t, "bob", "slow.py", "print('bob')\n")
	if res := runToEnd(t, env, api.RunRequest{Student: "bob", Script: "slow.py"}); res.Run.Reason != api.ReasonExited {
		t.Fatalf("bob's run ended %s", res.Run.Reason)
	}
	final, err := first.Stop(ctxT(t, 10*time.Second))
	if err != nil || final.Reason != api.ReasonStopped {
		t.Fatalf("stop: %v, reason %s", err, final.Reason)
	}
	env.WriteScript(t, "alice", "slow.py", "print('again')\n")
	if res := runToEnd(t, env, api.RunRequest{Student: "alice", Script: "slow.py"}); res.Stdout != "again\n" {
		t.Fatalf("after stop, the script runs again: got %q", res.Stdout)
	}
	assertClean(t, env)
}

// TestFailureAtEachStartStep injects a failure at every step between lock
// and child start: the lock comes back, the cgroup goes, the run ends
// start_failed naming the step.
func TestFailureAtEachStartStep(t *testing.T) {
	steps := []string{run.StepCgroup, run.StepInterpreter, run.StepPipes, run.StepSpawn, run.StepCgroupJoin, run.StepExec}
	var failAt atomic.Value
	failAt.Store("")
	env := testutil.NewEnv(t, func(c *run.Config) {
		c.FailAt = func(step string) error {
			if v, _ := failAt.Load().(string); v == step {
				return fmt.Errorf("injected failure at %s", step)
			}
			return nil
		}
	})
	env.WriteScript(t, "alice", "main.py", "print('ran')\n")
	for _, step := range steps {
		t.Run(step, func(t *testing.T) {
			failAt.Store(step)
			_, err := env.Engine.Start(ctxT(t, 30*time.Second), api.RunRequest{Student: "alice", Script: "main.py"})
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Code != api.CodeStartFailed || !strings.Contains(ae.Message, "step "+step) || ae.RunID == "" {
				t.Fatalf("got %v, want start_failed naming step %s and the run", err, step)
			}
			assertClean(t, env)
			rec, err := env.Store.GetRun(ctxT(t, 5*time.Second), ae.RunID)
			if err != nil {
				t.Fatal(err)
			}
			if rec.State != api.StateEnded || rec.Reason != api.ReasonStartFailed || !strings.Contains(rec.Error, step+": injected") {
				t.Errorf("record: state %s reason %s error %q", rec.State, rec.Reason, rec.Error)
			}
			// The lock really is free: the same script runs now.
			failAt.Store("")
			if res := runToEnd(t, env, api.RunRequest{Student: "alice", Script: "main.py"}); res.Stdout != "ran\n" {
				t.Fatalf("run after failure printed %q (%s)", res.Stdout, res.Run.Reason)
			}
		})
	}
	t.Run(run.StepRecord, func(t *testing.T) {
		failAt.Store(run.StepRecord)
		defer failAt.Store("")
		_, err := env.Engine.Start(ctxT(t, 30*time.Second), api.RunRequest{Student: "alice", Script: "main.py"})
		if !errors.Is(err, api.ErrStoreUnavailable) {
			t.Fatalf("got %v, want store_unavailable", err)
		}
		assertClean(t, env)
	})
	assertClean(t, env)
}

func TestMissingInterpreter(t *testing.T) {
	env := testutil.NewEnv(t, func(c *run.Config) { c.Interpreter = "/nonexistent/python3" })
	env.WriteScript(t, "alice", "main.py", "print(1)\n")
	_, err := env.Engine.Start(ctxT(t, 30*time.Second), api.RunRequest{Student: "alice", Script: "main.py"})
	if !errors.Is(err, api.ErrStartFailed) || !strings.Contains(err.Error(), "step interpreter") || !strings.Contains(err.Error(), "/nonexistent/python3") {
		t.Fatalf("got %v, want start_failed at step interpreter naming the path", err)
	}
	assertClean(t, env)
}

func TestBadInput(t *testing.T) {
	env := testutil.NewEnv(t)
	wd := filepath.Dir(env.WriteScript(t, "alice", "ok.py", "print(1)\n"))
	env.WriteScript(t, "bob", "secret.py", "print('bob')\n")
	if err := os.Symlink(filepath.Join(env.Dirs.Workdir("bob"), "secret.py"), filepath.Join(wd, "abs-link.py")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../bob/secret.py", filepath.Join(wd, "rel-link.py")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("ok.py", filepath.Join(wd, "inside-link.py")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(wd, "fifo.py"), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(wd, "dir.py"), 0o777); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		req  api.RunRequest
		want *api.Error
	}{
		{"uppercase student", api.RunRequest{Student: "Alice", Script: "ok.py"}, api.ErrInvalidStudent},
		{"student with slash", api.RunRequest{Student: "a/b", Script: "ok.py"}, api.ErrInvalidStudent},
		{"student dotdot", api.RunRequest{Student: "..", Script: "ok.py"}, api.ErrInvalidStudent},
		{"empty student", api.RunRequest{Student: "", Script: "ok.py"}, api.ErrInvalidStudent},
		{"long student", api.RunRequest{Student: strings.Repeat("a", 33), Script: "ok.py"}, api.ErrInvalidStudent},
		{"missing script", api.RunRequest{Student: "alice", Script: "nope.py"}, api.ErrScriptNotFound},
		{"dotdot", api.RunRequest{Student: "alice", Script: "../bob/secret.py"}, api.ErrInvalidPath},
		{"absolute elsewhere", api.RunRequest{Student: "alice", Script: "/etc/passwd"}, api.ErrInvalidPath},
		{"absolute symlink out", api.RunRequest{Student: "alice", Script: "abs-link.py"}, api.ErrInvalidPath},
		{"relative symlink out", api.RunRequest{Student: "alice", Script: "rel-link.py"}, api.ErrInvalidPath},
		{"fifo", api.RunRequest{Student: "alice", Script: "fifo.py"}, api.ErrInvalidPath},
		{"directory", api.RunRequest{Student: "alice", Script: "dir.py"}, api.ErrInvalidPath},
		{"empty script", api.RunRequest{Student: "alice", Script: ""}, api.ErrInvalidPath},
		{"memory too high", api.RunRequest{Student: "alice", Script: "ok.py", Limits: api.Limits{MemoryMB: 1 << 20}}, api.ErrLimitTooHigh},
		{"timeout too high", api.RunRequest{Student: "alice", Script: "ok.py", Limits: api.Limits{WallSeconds: 1e6}}, api.ErrLimitTooHigh},
		{"negative limit", api.RunRequest{Student: "alice", Script: "ok.py", Limits: api.Limits{Pids: -1}}, api.ErrInvalidRequest},
		{"bad mode", api.RunRequest{Student: "alice", Script: "ok.py", Mode: "shell"}, api.ErrInvalidRequest},
		{"NUL in arg", api.RunRequest{Student: "alice", Script: "ok.py", Args: []string{"a\x00b"}}, api.ErrInvalidRequest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := env.Engine.Start(ctxT(t, 10*time.Second), c.req)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want code %s", err, c.want.Code)
			}
			if ae := api.AsError(err); ae.Message == "" {
				t.Errorf("error %s has no message", ae.Code)
			}
			assertClean(t, env)
		})
	}
	// A symlink that stays inside runs, and locks the file it points at.
	if res := runToEnd(t, env, api.RunRequest{Student: "alice", Script: "inside-link.py"}); res.Stdout != "1\n" {
		t.Fatalf("inside link printed %q", res.Stdout)
	}
	if runs, err := env.Store.ListRuns(ctxT(t, 5*time.Second), store.RunFilter{}); err != nil || len(runs) != 1 {
		t.Fatalf("records: %d (%v), want only the one run that started", len(runs), err)
	}
}

// TestWebTierAndRunShareFiles shows the shared layout: a process of the
// client group saves a file, the student's run reads and rewrites it, the
// web tier reads the result, and another student's run cannot open it.
func TestWebTierAndRunShareFiles(t *testing.T) {
	env := testutil.NewEnv(t, testutil.SharedLayout)
	st, err := env.Engine.EnsureStudent(ctxT(t, 5*time.Second), "alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Engine.EnsureStudent(ctxT(t, 5*time.Second), "bob"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(st.Workdir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModePerm != 0o770 || fi.Mode()&os.ModeSetgid == 0 {
		t.Fatalf("workdir mode %s, want drwxrws---", fi.Mode())
	}
	// The web tier: uid 5000 in the client group, umask 000, as documented.
	webTier := func(script string) string {
		cmd := exec.Command("/bin/sh", "-c", "umask 000; "+script)
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 5000, Gid: testutil.ClientGID, Groups: []uint32{}}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("web tier %q: %v: %s", script, err, out)
		}
		return string(out)
	}
	webTier(fmt.Sprintf("printf 'x = 1\\nprint(open(\"data.txt\").read().strip())\\nopen(\"data.txt\", \"w\").write(\"rewritten\\\\n\")\\n' > %s/main.py; echo saved > %s/data.txt", st.Workdir, st.Workdir))
	res := runToEnd(t, env, api.RunRequest{Student: "alice", Script: "main.py"})
	if res.Stdout != "saved\n" || exitCode(res.Run) != "0" {
		t.Fatalf("alice's run: stdout %q stderr %q exit %s", res.Stdout, res.Stderr, exitCode(res.Run))
	}
	if got := webTier("cat " + st.Workdir + "/data.txt"); got != "rewritten\n" {
		t.Fatalf("web tier reads %q after the run, want the rewritten file", got)
	}
	env.WriteScript(t, "bob", "peek.py", fmt.Sprintf(`
for p in ["../alice/data.txt", %q]:
    try:
        open(p).read()
        print("READ", p)
    except PermissionError:
        print("denied")
`, st.Workdir+"/data.txt"))
	res = runToEnd(t, env, api.RunRequest{Student: "bob", Script: "peek.py"})
	if res.Stdout != "denied\ndenied\n" {
		t.Fatalf("bob's run reading alice's file: %q %q", res.Stdout, res.Stderr)
	}
	assertClean(t, env)
}

// TestRandomStops runs 1000 short runs while three goroutines stop runs at
// random moments: every lock is released exactly once, every run ends
// exactly once with one reason, nothing is left.
func TestRandomStops(t *testing.T) {
	env := testutil.NewEnv(t)
	const students, scripts = 20, 5
	for s := range students {
		for k := range scripts {
			env.WriteScript(t, fmt.Sprintf("st%d", s), fmt.Sprintf("p%d.py", k),
				"import time, random\nprint('go')\ntime.sleep(random.random() * 0.05)\nprint('done')\n")
		}
	}
	total := 1000
	if testing.Short() {
		total = 200
	}
	var (
		mu      sync.Mutex
		live    []*run.Execution
		started atomic.Int64
		locked  atomic.Int64
		stops   atomic.Int64
	)
	stopCtx, stopAll := context.WithCancel(context.Background())
	var stoppers sync.WaitGroup
	for g := range 3 {
		stoppers.Add(1)
		go func() {
			defer stoppers.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 42))
			for stopCtx.Err() == nil {
				mu.Lock()
				var r *run.Execution
				if len(live) > 0 {
					r = live[rng.IntN(len(live))]
				}
				mu.Unlock()
				if r != nil {
					if _, err := r.Stop(ctxT(t, 30*time.Second)); err != nil {
						t.Errorf("stop %s: %v", r.ID(), err)
					}
					stops.Add(1)
				}
				time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
			}
		}()
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 24)
	var all []*run.Execution
	for i := range total {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			req := api.RunRequest{Student: fmt.Sprintf("st%d", i%students), Script: fmt.Sprintf("p%d.py", (i/students)%scripts)}
			r, err := env.Engine.Start(ctxT(t, 30*time.Second), req)
			if errors.Is(err, api.ErrLocked) {
				locked.Add(1)
				return
			}
			if err != nil {
				t.Errorf("start %d: %v", i, err)
				return
			}
			started.Add(1)
			mu.Lock()
			live = append(live, r)
			all = append(all, r)
			mu.Unlock()
			<-r.Done()
		}()
	}
	wg.Wait()
	stopAll()
	stoppers.Wait()
	reasons := map[api.Reason]int{}
	for _, r := range all {
		evs, _ := r.EventsAfter(0)
		ends := 0
		for _, ev := range evs {
			if ev.Type == api.EventEnd {
				ends++
			}
		}
		if ends != 1 {
			t.Errorf("run %s has %d end events, want 1", r.ID(), ends)
		}
		info := r.Info()
		reasons[info.Reason]++
		switch info.Reason {
		case api.ReasonExited, api.ReasonStopped:
		default:
			t.Errorf("run %s ended %s (%s), want exited or stopped", r.ID(), info.Reason, info.Error)
		}
		if info.Error != "" {
			t.Errorf("run %s ended with errors: %s", r.ID(), info.Error)
		}
	}
	acq, rel := env.Locks.Counts()
	t.Logf("started %d, refused locked %d, stops %d, reasons %v, locks acquired %d released %d",
		started.Load(), locked.Load(), stops.Load(), reasons, acq, rel)
	if acq != started.Load() || rel != acq {
		t.Errorf("locks acquired %d, released %d, runs started %d: want all equal", acq, rel, started.Load())
	}
	if reasons[api.ReasonStopped] == 0 {
		t.Errorf("no run was stopped: the test did not test stops")
	}
	assertClean(t, env)
	ended, err := env.Store.ListRuns(ctxT(t, 10*time.Second), store.RunFilter{State: api.StateRunning})
	if err != nil || len(ended) != 0 {
		t.Errorf("records still running: %d (%v)", len(ended), err)
	}
}

// TestStopIsSafeAnyTime stops a run concurrently from many goroutines and
// again after its end: all get the same final run.
func TestStopIsSafeAnyTime(t *testing.T) {
	env := testutil.NewEnv(t)
	env.WriteScript(t, "alice", "slow.py", "import time\nprint('up', flush=True)\ntime.sleep(30)\n")
	r := startRun(t, env, api.RunRequest{Student: "alice", Script: "slow.py"})
	var wg sync.WaitGroup
	finals := make([]api.Run, 10)
	for i := range finals {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := env.Engine.Stop(ctxT(t, 10*time.Second), r.ID())
			if err != nil {
				t.Errorf("stop: %v", err)
			}
			finals[i] = f
		}()
	}
	wg.Wait()
	again, err := r.Stop(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range finals {
		if f.Reason != api.ReasonStopped || f.State != api.StateEnded || *f.EndedAt != *again.EndedAt {
			t.Errorf("stop %d saw %s/%s at %v; after the end %v", i, f.State, f.Reason, f.EndedAt, again.EndedAt)
		}
	}
	if _, err := env.Engine.Stop(ctxT(t, time.Second), "nonexistent"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("stop of unknown run: %v, want not_found", err)
	}
	assertClean(t, env)
}

func TestShutdownEndsRunsWithReasonShutdown(t *testing.T) {
	env := testutil.NewEnv(t)
	var runs []*run.Execution
	for i := range 5 {
		env.WriteScript(t, fmt.Sprintf("u%d", i), "main.py", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n")
		runs = append(runs, startRun(t, env, api.RunRequest{Student: fmt.Sprintf("u%d", i), Script: "main.py"}))
	}
	if err := env.Engine.Shutdown(ctxT(t, 30*time.Second), 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for _, r := range runs {
		if info := r.Info(); info.Reason != api.ReasonShutdown {
			t.Errorf("run %s ended %s, want shutdown", r.ID(), info.Reason)
		}
	}
	_, err := env.Engine.Start(ctxT(t, 5*time.Second), api.RunRequest{Student: "u0", Script: "main.py"})
	if !errors.Is(err, api.ErrDraining) {
		t.Errorf("start after shutdown: %v, want draining", err)
	}
	assertClean(t, env)
}

// TestWhatTheStudentSees: input(), tracebacks, __file__, sys.argv and
// local imports as in a terminal run of `python3 SCRIPT ARGS`.
func TestWhatTheStudentSees(t *testing.T) {
	env := testutil.NewEnv(t)
	env.WriteScript(t, "alice", "helper.py", "def double(x):\n    return 2 * x\n")
	env.WriteScript(t, "alice", "sub/main.py", `import sys, os
sys.path.insert(0, os.getcwd())
from helper import double
name = input("name? ")
print("hello", name, double(21), sys.argv)
raise ValueError("boom")
`)
	r := startRun(t, env, api.RunRequest{Student: "alice", Script: "sub/main.py", Args: []string{"x y", "--z"}})
	if err := r.WriteStdin(ctxT(t, 5*time.Second), []byte("Ada\n"), true); err != nil {
		t.Fatal(err)
	}
	// Closing again is a no-op (a client's EOF may race its own data's);
	// data after EOF is refused, and after the end every write says so.
	if err := r.WriteStdin(ctxT(t, 5*time.Second), nil, true); err != nil {
		t.Errorf("second eof: %v, want nil", err)
	}
	if err := r.WriteStdin(ctxT(t, 5*time.Second), []byte("more\n"), false); !errors.Is(err, api.ErrStdinClosed) && !errors.Is(err, api.ErrRunEnded) {
		t.Errorf("data after eof: %v, want stdin_closed (or run_ended if it already ended)", err)
	}
	res := testutil.Collect(ctxT(t, 30*time.Second), t, r)
	for _, eof := range []bool{false, true} {
		if err := r.WriteStdin(ctxT(t, 5*time.Second), nil, eof); !errors.Is(err, api.ErrRunEnded) {
			t.Errorf("stdin (eof=%v) after the end: %v, want run_ended", eof, err)
		}
	}
	if want := "name? hello Ada 42 ['sub/main.py', 'x y', '--z']\n"; res.Stdout != want {
		t.Errorf("stdout %q, want %q", res.Stdout, want)
	}
	if !strings.Contains(res.Stderr, `main.py", line 6, in <module>`) || !strings.Contains(res.Stderr, "ValueError: boom") ||
		strings.Contains(res.Stderr, "/proc/") || strings.Contains(res.Stderr, "sandbox") {
		t.Errorf("traceback does not read as a terminal's:\n%s", res.Stderr)
	}
	if res.Run.Reason != api.ReasonExited || exitCode(res.Run) != "1" {
		t.Errorf("ended %s exit %s, want exited 1", res.Run.Reason, exitCode(res.Run))
	}
}

func TestReplModeKeepsVariables(t *testing.T) {
	env := testutil.NewEnv(t)
	env.WriteScript(t, "alice", "vars.py", "x = 21\n")
	r := startRun(t, env, api.RunRequest{Student: "alice", Script: "vars.py", Mode: api.ModeRepl})
	if err := r.WriteStdin(ctxT(t, 5*time.Second), []byte("print(x * 2)\n"), true); err != nil {
		t.Fatal(err)
	}
	res := testutil.Collect(ctxT(t, 30*time.Second), t, r)
	if !strings.Contains(res.Stdout, "42\n") || res.Run.Reason != api.ReasonExited {
		t.Fatalf("repl: stdout %q stderr %q reason %s", res.Stdout, res.Stderr, res.Run.Reason)
	}
}

func TestTimeoutsAndLimits(t *testing.T) {
	env := testutil.NewEnv(t)
	env.WriteScript(t, "alice", "sleep.py", "import time\ntime.sleep(30)\n")
	env.WriteScript(t, "alice", "spin.py", "while True: pass\n")
	env.WriteScript(t, "alice", "flood.py", "while True: print('x' * 100)\n")
	cases := []struct {
		script string
		lim    api.Limits
		want   api.Reason
	}{
		{"sleep.py", api.Limits{WallSeconds: 1}, api.ReasonTimedOut},
		{"spin.py", api.Limits{CPUSeconds: 1, WallSeconds: 20}, api.ReasonTimedOut},
		{"flood.py", api.Limits{OutputKB: 16}, api.ReasonOutputLimit},
	}
	for _, c := range cases {
		t.Run(c.script, func(t *testing.T) {
			res := runToEnd(t, env, api.RunRequest{Student: "alice", Script: c.script, Limits: c.lim})
			if res.Run.Reason != c.want {
				t.Fatalf("ended %s, want %s", res.Run.Reason, c.want)
			}
			if c.want == api.ReasonOutputLimit && (res.Run.OutputBytes != 16<<10 || !res.Run.Truncated || len(res.Stdout) != 16<<10) {
				t.Errorf("output %d bytes (seen %d), truncated %v: want exactly 16 KiB and truncated", res.Run.OutputBytes, len(res.Stdout), res.Run.Truncated)
			}
			if c.lim.CPUSeconds > 0 && (res.Run.CPUMS < 900 || res.Run.WallMS > 10000) {
				t.Errorf("cpu %d ms, wall %d ms: want the CPU limit (1 s) to end it, not the wall clock", res.Run.CPUMS, res.Run.WallMS)
			}
		})
	}
	assertClean(t, env)
}

var errInjected = errors.New("disk I/O error (injected)")

// TestErrorsKeepTheirCause: a store failure reaches the caller coded
// store_unavailable with its cause still testable, and a caller that hung
// up gets its own context.Canceled back, which the store's health does
// not count as a failed write.
func TestErrorsKeepTheirCause(t *testing.T) {
	var q *store.Queued
	failRecord := false
	env := testutil.NewEnv(t, func(c *run.Config) {
		var err error
		q, err = store.NewQueued(c.Store, filepath.Join(t.TempDir(), "spill"), 10, c.Log)
		if err != nil {
			t.Fatal(err)
		}
		c.Store = q
		c.FailAt = func(step string) error {
			if step == run.StepRecord && failRecord {
				return errInjected
			}
			return nil
		}
	})
	t.Cleanup(func() {
		if err := q.Close(); err != nil {
			t.Error(err)
		}
	})
	env.WriteScript(t, "alice", "main.py", "print(1)\n")
	failRecord = true
	_, err := env.Engine.Start(ctxT(t, 30*time.Second), api.RunRequest{Student: "alice", Script: "main.py"})
	failRecord = false
	if !errors.Is(err, api.ErrStoreUnavailable) || !errors.Is(err, errInjected) {
		t.Fatalf("start with a failing record: %v; want store_unavailable whose cause is the store's error", err)
	}
	assertClean(t, env)

	gone, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = env.Engine.EnsureStudent(gone, "zed")
	if !errors.Is(err, context.Canceled) || errors.Is(err, api.ErrStoreUnavailable) {
		t.Fatalf("ensure student for a caller that hung up: %v; want context.Canceled, not store_unavailable", err)
	}
	if n := q.Errors(); n != 0 {
		t.Fatalf("the store counted %d failed writes for a caller that hung up", n)
	}
	if err := q.Ping(ctxT(t, 5*time.Second)); err != nil {
		t.Fatalf("health after a hang-up: %v", err)
	}
}

// TestRunCreatesNoStudent: a run for a student nobody created (a typo) is
// refused with student_not_found and leaves no uid and no directory; the
// student's creation is its own request.
func TestRunCreatesNoStudent(t *testing.T) {
	env := testutil.NewEnv(t)
	_, err := env.Engine.Start(ctxT(t, 30*time.Second), api.RunRequest{Student: "bobb", Script: "main.py"})
	if !errors.Is(err, api.ErrStudentNotFound) || !strings.Contains(err.Error(), "create it first") {
		t.Fatalf("run for an unknown student: %v, want student_not_found saying how to create it", err)
	}
	if _, err := env.Store.GetStudent(ctxT(t, 5*time.Second), "bobb"); !errors.Is(err, api.ErrStudentNotFound) {
		t.Fatalf("the refused run created the student: %v", err)
	}
	if _, err := os.Stat(env.Dirs.Workdir("bobb")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the refused run created a directory: %v", err)
	}
	assertClean(t, env)
	env.WriteScript(t, "bobb", "main.py", "print('now')\n") // creates the student
	if res := runToEnd(t, env, api.RunRequest{Student: "bobb", Script: "main.py"}); res.Stdout != "now\n" {
		t.Fatalf("run once the student exists printed %q (%s)", res.Stdout, res.Run.Reason)
	}
}
