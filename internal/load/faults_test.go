package load

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite" // integrity_check of the store after the disk-full test

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/client"
	"github.com/idexd/idexd/internal/harness"
	"github.com/idexd/idexd/internal/testutil"
)

// ourProcs returns the live (non-zombie) processes of the given uids whose
// cwd is under root: other idexd instances on the host (tests running in
// parallel) hand out the same uids from the same range.
func ourProcs(t *testing.T, root string, uids map[int]bool) []Proc {
	t.Helper()
	alive, _, err := StudentsAlive(200000, 299999, func(p Proc) bool {
		return uids[p.UID] && strings.HasPrefix(p.Cwd, root+"/")
	})
	if err != nil {
		t.Fatal(err)
	}
	return alive
}

func script(t *testing.T, c *client.Client, student, name, src string) api.Student {
	t.Helper()
	st, err := c.EnsureStudent(context.Background(), student)
	if err != nil {
		t.Fatalf("student %s: %v", student, err)
	}
	if err := writeScript(st.Workdir, name, src); err != nil {
		t.Fatal(err)
	}
	return st
}

// noLeftovers asserts the daemon holds no run, lock or cgroup.
func noLeftovers(t *testing.T, c *client.Client) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := c.DebugState(context.Background())
		if err != nil {
			t.Fatalf("debug state: %v", err)
		}
		if s.RunsActive == 0 && s.LocksHeld == 0 && s.Cgroups == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon holds runs_active %d, locks %d, cgroups %d", s.RunsActive, s.LocksHeld, s.Cgroups)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

const crashSleeper = `import os, sys, time
# A grandchild in a session of its own, whose parent exits: it must die
# with the run's cgroup, not survive as an orphan.
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(600)
        os._exit(0)
    os._exit(0)
print("up", os.getpid(), flush=True)
time.sleep(600)
`

const crashChatter = `import time
i = 0
print("up", flush=True)
while True:
    print("tick", i, flush=True)
    i += 1
    time.sleep(0.01)
`

// TestKillUnderLoad: kill -9 of idexd with 50 runs running and more
// starting, then a restart on the same state, socket and cgroup parent:
// no process of a student alive, every record ended (the killed runs
// "lost"), every lock free (the same scripts start again).
func TestKillUnderLoad(t *testing.T) {
	d := startDaemon(t, harness.Config{})
	c := &client.Client{Socket: d.Socket, MaxIdleConns: 64}
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const students = 25
	uids := map[int]bool{}
	type held struct{ student, script, id string }
	var runs []held
	for i := 0; i < students; i++ {
		name := fmt.Sprintf("crash%02d", i)
		st := script(t, c, name, "sleeper.py", crashSleeper)
		script(t, c, name, "chatter.py", crashChatter)
		script(t, c, name, "quick.py", "print('quick')\n")
		uids[int(st.UID)] = true
		for _, s := range []string{"sleeper.py", "chatter.py"} {
			r, err := c.StartRun(ctx, api.RunRequest{Student: name, Script: s})
			if err != nil {
				t.Fatalf("start %s of %s: %v", s, name, err)
			}
			runs = append(runs, held{name, s, r.ID})
		}
	}
	// Each of the 50 has printed its first line: it is running.
	for _, h := range runs {
		st, err := c.Events(ctx, h.id, 0)
		if err != nil {
			t.Fatalf("events of %s: %v", h.id, err)
		}
		ev, err := st.Next()
		st.Close()
		if err != nil || !strings.HasPrefix(ev.Data, "up") {
			t.Fatalf("first event of %s (%s): %+v %v", h.id, h.script, ev, err)
		}
	}
	// More load while the daemon dies: quick runs starting and ending.
	var started sync.Map // run id -> true: every 201 answer
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; loadCtx.Err() == nil && i < 10000; i++ {
				name := fmt.Sprintf("crash%02d", (w*7+i)%students)
				r, err := c.StartRun(loadCtx, api.RunRequest{Student: name, Script: "quick.py"})
				if err == nil {
					started.Store(r.ID, true)
				}
				if err != nil && !errors.Is(err, api.ErrLocked) {
					time.Sleep(10 * time.Millisecond) // the daemon is gone: do not spin
				}
			}
		}(w)
	}
	time.Sleep(500 * time.Millisecond)
	if err := d.Kill(); err != nil {
		t.Fatal(err)
	}
	stopLoad()
	wg.Wait()
	t.Logf("processes of the students alive right after kill -9 (zombies excluded): %d", len(ourProcs(t, d.Workdir, uids)))
	if err := d.Restart(ctx); err != nil {
		t.Fatalf("restart: %v", err)
	}
	c.CloseIdleConnections()
	if ps := ourProcs(t, d.Workdir, uids); len(ps) > 0 {
		t.Errorf("%d processes of the students alive after the restart, e.g. %+v", len(ps), ps[0])
	}
	running, err := c.ListRuns(ctx, client.ListFilter{State: api.StateRunning, Limit: 10000})
	if err != nil || len(running) != 0 {
		t.Errorf("runs still recorded running after the restart: %d %v", len(running), err)
	}
	for _, h := range runs {
		r, err := c.GetRun(ctx, h.id)
		if err != nil || r.State != api.StateEnded || r.Reason != api.ReasonLost {
			t.Errorf("killed run %s (%s of %s): %s/%s %v, want ended lost", h.id, h.script, h.student, r.State, r.Reason, err)
		}
	}
	n := 0
	started.Range(func(k, _ any) bool {
		n++
		id, _ := k.(string) //nolint:errcheck // only strings are stored
		r, err := c.GetRun(ctx, id)
		if err != nil || r.State != api.StateEnded {
			t.Errorf("quick run %s: %s/%s %v, want ended", k, r.State, r.Reason, err)
		}
		return true
	})
	t.Logf("%d quick runs started around the kill, all ended", n)
	noLeftovers(t, c)
	// Every lock is free: the same 50 scripts start again, then stop.
	for _, h := range runs {
		r, err := c.StartRun(ctx, api.RunRequest{Student: h.student, Script: h.script})
		if err != nil {
			t.Errorf("%s of %s after the restart: %v (lock not free?)", h.script, h.student, err)
			continue
		}
		if f, err := c.StopRun(ctx, r.ID); err != nil || f.Reason != api.ReasonStopped {
			t.Errorf("stop %s: %s %v", r.ID, f.Reason, err)
		}
	}
	noLeftovers(t, c)
	if ps := ourProcs(t, d.Workdir, uids); len(ps) > 0 {
		t.Errorf("%d processes of the students alive at the end, e.g. %+v", len(ps), ps[0])
	}
}

// health returns the report and the named check.
func health(t *testing.T, c *client.Client, check string) (api.Health, api.Check) {
	t.Helper()
	h, err := c.Health(context.Background())
	if err != nil {
		t.Fatalf("health: %v", err)
	}
	for _, ch := range h.Checks {
		if ch.Name == check {
			return h, ch
		}
	}
	t.Fatalf("health has no check %q: %+v", check, h)
	return h, api.Check{}
}

// waitHealth waits (bounded) until health's status is want.
func waitHealth(t *testing.T, c *client.Client, want string, within time.Duration) api.Health {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		h, err := c.Health(context.Background())
		if err == nil && h.Status == want {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("health is not %s within %s: %+v %v", want, within, h, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func idexctlHealth(t *testing.T, socket string) (string, int) {
	t.Helper()
	out, err := exec.Command(filepath.Join(binDir, "idexctl"), "--socket", socket, "health").CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("idexctl health: %v", err)
	}
	return string(out), 0
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(to, mode); err != nil {
		t.Fatal(err)
	}
}

// TestInterpreterRemoved: the configured interpreter disappears. New runs
// are refused start_failed naming step interpreter, with a start_failed
// record; health is degraded (idexctl health exits 1); nothing is left
// held. Once the file is back, runs work and health is ok.
func TestInterpreterRemoved(t *testing.T) {
	dir := testutil.TraversableDir(t)
	interp := filepath.Join(dir, "python3")
	copyFile(t, testutil.Interpreter, interp, 0o755)
	d := startDaemon(t, harness.Config{Interpreter: interp})
	c := &client.Client{Socket: d.Socket, MaxIdleConns: 4}
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	script(t, c, "nopy", "hi.py", "print('hi')\n")
	req := api.RunRequest{Student: "nopy", Script: "hi.py"}
	if r, out, err := RunToEnd(ctx, c, req); err != nil || r.Reason != api.ReasonExited || out != "hi\n" {
		t.Fatalf("before: %s %q %v", r.Reason, out, err)
	}
	if err := os.Remove(interp); err != nil {
		t.Fatal(err)
	}
	// More than warm_runs (4): warm and cold starts both meet the fault.
	for i := 0; i < 6; i++ {
		_, err := c.StartRun(ctx, req)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != api.CodeStartFailed || !strings.Contains(ae.Message, "step interpreter") || ae.RunID == "" {
			t.Fatalf("start %d without interpreter: %v, want start_failed naming step interpreter", i, err)
		}
		rec, err := c.GetRun(ctx, ae.RunID)
		if err != nil || rec.Reason != api.ReasonStartFailed || !strings.Contains(rec.Error, "interpreter") {
			t.Fatalf("record of %s: %s %q %v", ae.RunID, rec.Reason, rec.Error, err)
		}
	}
	h, ch := health(t, c, "interpreter")
	if h.Status != api.HealthDegraded || ch.OK || !strings.Contains(ch.Message, interp) {
		t.Fatalf("health without interpreter: %s %+v", h.Status, ch)
	}
	if out, code := idexctlHealth(t, d.Socket); code != 1 {
		t.Fatalf("idexctl health without interpreter: exit %d, want 1: %s", code, out)
	}
	noLeftovers(t, c)
	copyFile(t, testutil.Interpreter, interp, 0o755)
	waitHealth(t, c, api.HealthOK, 10*time.Second)
	if out, code := idexctlHealth(t, d.Socket); code != 0 {
		t.Fatalf("idexctl health after restore: exit %d: %s", code, out)
	}
	if r, out, err := RunToEnd(ctx, c, req); err != nil || r.Reason != api.ReasonExited || out != "hi\n" {
		t.Fatalf("after restore: %s %q %v", r.Reason, out, err)
	}
	noLeftovers(t, c)
}

// v2Parent is the daemon's cgroup parent in the unified hierarchy: the
// daemon, this process's child, nests it under this process's own group.
// (cgroup.New would do, but it locks the parent, which the live daemon
// holds.)
func v2Parent(t *testing.T, parent string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(mountOf(""), cgroupPath(string(b)), parent)
}

// TestCgroupParentUnwritable: cgroupfs ignores file modes and chattr for
// root, but cgroup.max.descendants = 0 on the parent makes every mkdir
// under it fail (EAGAIN) for root too: the daemon cannot create a run's
// group. New runs end start_failed naming step cgroup, health is degraded
// (cgroup_parent_writable), and once the limit is lifted everything works.
// Warm helpers are off: a warm slot's group exists already and would
// (rightly) still serve a run or four.
func TestCgroupParentUnwritable(t *testing.T) {
	d := startDaemon(t, harness.Config{WarmRuns: -1})
	c := &client.Client{Socket: d.Socket, MaxIdleConns: 4}
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	script(t, c, "nocg", "hi.py", "print('hi')\n")
	req := api.RunRequest{Student: "nocg", Script: "hi.py"}
	if r, _, err := RunToEnd(ctx, c, req); err != nil || r.Reason != api.ReasonExited {
		t.Fatalf("before: %s %v", r.Reason, err)
	}
	limit := filepath.Join(v2Parent(t, d.CgroupParent), "cgroup.max.descendants")
	if err := os.WriteFile(limit, []byte("0"), 0o644); err != nil {
		t.Fatalf("set %s: %v", limit, err)
	}
	restored := false
	restore := func() {
		if !restored {
			if err := os.WriteFile(limit, []byte("max"), 0o644); err != nil {
				t.Errorf("restore %s: %v", limit, err)
			}
			restored = true
		}
	}
	defer restore()
	for i := 0; i < 3; i++ {
		_, err := c.StartRun(ctx, req)
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != api.CodeStartFailed || !strings.Contains(ae.Message, "step cgroup") {
			t.Fatalf("start %d with the parent full: %v, want start_failed naming step cgroup", i, err)
		}
		if rec, err := c.GetRun(ctx, ae.RunID); err != nil || rec.Reason != api.ReasonStartFailed {
			t.Fatalf("record of %s: %s %v", ae.RunID, rec.Reason, err)
		}
	}
	h, ch := health(t, c, "cgroup_parent_writable")
	if h.Status != api.HealthDegraded || ch.OK {
		t.Fatalf("health with the parent full: %s %+v", h.Status, ch)
	}
	if out, code := idexctlHealth(t, d.Socket); code != 1 {
		t.Fatalf("idexctl health with the parent full: exit %d, want 1: %s", code, out)
	}
	noLeftovers(t, c)
	restore()
	waitHealth(t, c, api.HealthOK, 10*time.Second)
	if r, out, err := RunToEnd(ctx, c, req); err != nil || r.Reason != api.ReasonExited || out != "hi\n" {
		t.Fatalf("after restore: %s %q %v", r.Reason, out, err)
	}
	noLeftovers(t, c)
}

// fill writes a file in dir until the filesystem is full.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for i := 0; i < 1<<16; i++ { // bounded: 256 MiB at most
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v", p, err)
			}
			break
		}
	}
	if err := f.Close(); err != nil && !errors.Is(err, syscall.ENOSPC) {
		t.Fatal(err)
	}
	return p
}

// TestStateDiskFull: the state directory's filesystem (a tmpfs of 8 MiB:
// SQLite's WAL grows to about 4 MiB before it is checkpointed, so a
// smaller disk would be full in normal operation already) fills up under
// the SQLite store. Runs are refused with a stable code
// (store_unavailable) or run; health is degraded from the first failed
// write, and a run that ends meanwhile keeps its end queued; after the
// space is freed, runs work, every run's record is
// there and ended with its reason, and the database passes
// integrity_check.
func TestStateDiskFull(t *testing.T) {
	testutil.RequireRoot(t)
	dir := testutil.TraversableDir(t)
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o750); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", state).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", state).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", state, err, out)
		}
	})
	d := startDaemon(t, harness.Config{Dir: dir, StateDir: state})
	c := &client.Client{Socket: d.Socket, MaxIdleConns: 4}
	defer c.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	script(t, c, "full", "hi.py", "print('hi')\n")
	req := api.RunRequest{Student: "full", Script: "hi.py"}
	ended := map[string]api.Reason{} // every run that started, and how it ended
	for i := 0; i < 3; i++ {
		r, _, err := RunToEnd(ctx, c, req)
		if err != nil || r.Reason != api.ReasonExited {
			t.Fatalf("before: %s %v", r.Reason, err)
		}
		ended[r.ID] = r.Reason
	}
	// A run that is running when the disk fills: its end record must not
	// be lost.
	script(t, c, "full", "sleep.py", "import time\nprint('up', flush=True)\ntime.sleep(600)\n")
	sleeper, err := c.StartRun(ctx, api.RunRequest{Student: "full", Script: "sleep.py"})
	if err != nil {
		t.Fatal(err)
	}
	filler := fill(t, state)
	refused, ran := map[api.Code]int{}, 0
	degraded := false
	for i := 0; i < 200 && refused[api.CodeStoreUnavailable] < 5; i++ {
		r, _, err := RunToEnd(ctx, c, req)
		var ae *api.Error
		switch {
		case err == nil:
			ran++
			ended[r.ID] = r.Reason
		case errors.As(err, &ae) && (ae.Code == api.CodeStoreUnavailable || ae.Code == api.CodeStartFailed):
			refused[ae.Code]++
			if ae.RunID != "" {
				ended[ae.RunID] = api.ReasonStartFailed
			}
		default:
			t.Fatalf("run %d with the disk full: %v, want a run or store_unavailable/start_failed", i, err)
		}
		if h, err := c.Health(ctx); err == nil && h.Status == api.HealthDegraded {
			degraded = true
		}
	}
	t.Logf("with the disk full: %d runs ran, refused %v, health degraded seen %v", ran, refused, degraded)
	if refused[api.CodeStoreUnavailable] == 0 {
		t.Fatalf("200 runs with the state disk full and none refused store_unavailable (ran %d)", ran)
	}
	// Before any run ended with the disk full: a refused write alone must
	// show in health.
	if h, ch := health(t, c, "store"); h.Status != api.HealthDegraded || ch.OK {
		t.Errorf("health with the disk full and every start refused: %s %+v, want degraded with the store check failing", h.Status, ch)
	} else {
		t.Logf("health with the disk full: %s, store check: %s", h.Status, ch.Message)
	}
	if r, err := c.StopRun(ctx, sleeper.ID); err != nil || r.Reason != api.ReasonStopped {
		t.Fatalf("stop the sleeper with the disk full: %s %v", r.Reason, err)
	}
	ended[sleeper.ID] = api.ReasonStopped
	if h, ch := health(t, c, "store"); h.Status != api.HealthDegraded || ch.OK {
		t.Errorf("health after a run ended with the disk full: %s %+v, want degraded", h.Status, ch)
	}
	noLeftovers(t, c)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, c, api.HealthOK, 30*time.Second)
	for i := 0; i < 3; i++ {
		r, out, err := RunToEnd(ctx, c, req)
		if err != nil || r.Reason != api.ReasonExited || out != "hi\n" {
			t.Fatalf("after freeing space: %s %q %v", r.Reason, out, err)
		}
		ended[r.ID] = r.Reason
	}
	hist, err := c.ListRuns(ctx, client.ListFilter{State: "", Limit: 10000})
	if err != nil {
		t.Fatalf("history after the disk was full: %v", err)
	}
	got := map[string]api.Run{}
	for _, r := range hist {
		got[r.ID] = r
	}
	for id, reason := range ended {
		r, ok := got[id]
		if !ok {
			if reason == api.ReasonStartFailed {
				continue // refused before its record could be written
			}
			t.Errorf("run %s (%s) is missing from the history", id, reason)
			continue
		}
		if r.State != api.StateEnded || r.Reason != reason {
			t.Errorf("run %s: history says %s/%s, its end said %s", id, r.State, r.Reason, reason)
		}
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(state, "idexd.db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var res string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&res); err != nil || res != "ok" {
		t.Fatalf("integrity_check: %q %v", res, err)
	}
	if _, err := os.Stat(filepath.Join(state, "pending-ends.jsonl")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("run ends still pending after the space came back: %v", err)
	}
}

// TestManyConnections: one client opens 1000 connections and holds them
// (half never send a byte, half sent one request and keep the connection
// alive), and 20 readers follow a flooding run's events without ever
// reading. Other students' runs still start and end normally, the flood
// ends output_limit regardless of its stuck readers, the daemon's RSS stays
// under 200 MiB, and the connections that never sent a request are cut
// (ReadHeaderTimeout). Idle keep-alive ones are cut after the daemon's
// IdleTimeout (2 min): too long for make test, measured by make soak.
func TestManyConnections(t *testing.T) {
	d := startDaemon(t, harness.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := Connections(ctx, ConnOptions{Socket: d.Socket, PID: d.PID(), Conns: 1000, StuckReaders: 20,
		Students: 10, RunsEach: 3, Wait: 13 * time.Second, Out: &tWriter{t: t}})
	if err != nil {
		t.Fatalf("connections: %v", err)
	}
	var sb strings.Builder
	rep.Print(&sb)
	t.Log(sb.String())
	if !rep.Pass() || rep.RunsOK != 30 {
		t.Fatalf("connection hog: %d runs ok, failed: %v", rep.RunsOK, rep.Failed)
	}
}
