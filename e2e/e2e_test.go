// Package e2e drives the built idexd and idexctl binaries end to end, as a
// sysadmin and the web tier would.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/harness"
	"github.com/idexd/idexd/internal/testutil"
)

var binDir string

// envBin names a directory holding idexd, idexctl and idexd-sandbox
// already built (or installed): the tests then build nothing, as in
// make vm-test, which runs the hostile corpus where there is no Go.
const envBin = "IDEXD_E2E_BIN"

func TestMain(m *testing.M) {
	if dir := os.Getenv(envBin); dir != "" {
		binDir = dir
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "idexd-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	// idexd finds idexd-sandbox beside itself, as in the packages.
	for _, c := range []string{"idexd", "idexctl", "idexd-sandbox"} {
		cmd := exec.Command("go", "build", "-race", "-o", filepath.Join(dir, c), "../cmd/"+c)
		if c == "idexd-sandbox" {
			cmd = exec.Command("../cmd/idexd-sandbox/build.sh", "-o", filepath.Join(dir, c))
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", c, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}

// daemon is a real idexd (package harness) with the idexctl helpers of
// these tests.
type daemon struct {
	t            *testing.T
	h            *harness.Daemon
	students     string
	sock         string
	cgroupParent string
}

// daemonOpts vary a daemon: its host name, extra config lines, and a
// students' root shared with another daemon (EFS between hosts).
type daemonOpts struct {
	host     string
	extra    string
	students string
	maxRuns  int // 0: the harness's default
	// degraded: do not wait for health ok at start, only for an answer.
	degraded bool
}

func newDaemon(t *testing.T) *daemon { return newDaemonWith(t, daemonOpts{}) }

func newDaemonWith(t *testing.T, o daemonOpts) *daemon {
	testutil.RequireRoot(t)
	if o.host == "" {
		o.host = "e2e"
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h, err := harness.Start(ctx, harness.Config{
		Idexd: filepath.Join(binDir, "idexd"), Dir: testutil.TraversableDir(t), Students: o.students,
		Name: "idexd-e2e", Host: o.host, Interpreter: testutil.Interpreter, Extra: o.extra, Degraded: o.degraded,
		MaxRuns: o.maxRuns,
	})
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{t: t, h: h, sock: h.Socket, students: h.Workdir, cgroupParent: h.CgroupParent}
	t.Cleanup(func() {
		if h.Running() {
			if err := d.stop(syscall.SIGTERM); err != nil {
				t.Errorf("idexd exit after SIGTERM: %v; logs:\n%s", err, d.logs())
			}
		}
		if err := h.Cleanup(); err != nil {
			t.Errorf("clean up idexd: %v", err)
		}
	})
	return d
}

// start starts idexd again (after stop) and waits until it is healthy.
func (d *daemon) start() {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.h.Restart(ctx); err != nil {
		d.t.Fatal(err)
	}
}

// stop signals idexd and returns how it exited.
func (d *daemon) stop(sig syscall.Signal) error {
	d.t.Helper()
	if err := d.h.Signal(sig, 60*time.Second); err != nil {
		d.t.Fatalf("%v; logs:\n%s", err, d.logs())
	}
	return d.h.ExitErr()
}

// logs is the end of idexd's log, for failure messages.
func (d *daemon) logs() string { return d.h.LogTail(8000) }

func (d *daemon) ctlCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(binDir, "idexctl"), append([]string{"--socket", d.sock}, args...)...)
	return cmd
}

// ctl runs idexctl and returns its combined output and exit code.
func (d *daemon) ctl(args ...string) (string, int) {
	out, err := d.ctlCmd(args...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		d.t.Fatalf("idexctl %v: %v", args, err)
	}
	return string(out), 0
}

func (d *daemon) writeScript(student, name, src string) {
	d.t.Helper()
	if out, code := d.ctl("student", student); code != 0 {
		d.t.Fatalf("idexctl student: %d %s", code, out)
	}
	p := filepath.Join(d.students, student, name)
	if err := os.WriteFile(p, []byte(src), 0o666); err != nil {
		d.t.Fatal(err)
	}
}

func (d *daemon) runs(args ...string) []api.Run {
	d.t.Helper()
	out, code := d.ctl(append([]string{"--json", "ps"}, args...)...)
	if code != 0 {
		d.t.Fatalf("ps: %d %s", code, out)
	}
	var runs []api.Run
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var r api.Run
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			d.t.Fatalf("ps --json line %q: %v", line, err)
		}
		runs = append(runs, r)
	}
	return runs
}

func TestEndToEnd(t *testing.T) {
	d := newDaemon(t)
	d.writeScript("alice", "chat.py", `import sys, time
name = input("name? ")
print("hello", name)
for i in range(6000):
    print("tick", i)
    time.sleep(0.05)
sys.exit(7)
`)
	// The web tier's view: idexctl run with stdin answering input(). The
	// wall limit is far above the default 30 s so that the stop below, not
	// the clock, ends the run even when CI runs every package at once on two
	// cores (it once took 36 s to get there).
	runCmd := d.ctlCmd("run", "--student", "alice", "--timeout", "5m", "chat.py")
	runCmd.Stdin = strings.NewReader("Ada\n")
	stdout, err := runCmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := runCmd.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(stdout)
	line, err := br.ReadString('\n')
	if err != nil || line != "name? hello Ada\n" {
		t.Fatalf("first line %q %v", line, err)
	}
	running := d.runs("--student", "alice")
	if len(running) != 1 || running[0].State != api.StateRunning {
		t.Fatalf("ps: %+v", running)
	}
	id := running[0].ID

	// A second client follows the log mid-run, as JSON, up to tick 3.
	logs := d.ctlCmd("--json", "logs", "-f", id)
	lp, err := logs.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := logs.Start(); err != nil {
		t.Fatal(err)
	}
	var seen []api.Event
	var text string // print writes its pieces apart: one line may be two events
	sc := bufio.NewScanner(lp)
	for sc.Scan() {
		var ev api.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatal(err)
		}
		seen = append(seen, ev)
		text += ev.Data
		if strings.Contains(text, "tick 3\n") {
			break
		}
	}
	if err := logs.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = logs.Wait() // killed on purpose
	if len(seen) < 3 || seen[0].Seq != 1 {
		t.Fatalf("logs -f saw %+v", seen)
	}
	// Reattach after a sequence number: exactly the next events.
	after := seen[1].Seq
	out, code := d.ctl("--json", "logs", "--after", fmt.Sprint(after), id)
	if code != 0 {
		t.Fatalf("logs --after: %d %s", code, out)
	}
	var first api.Event
	if err := json.Unmarshal([]byte(strings.SplitN(out, "\n", 2)[0]), &first); err != nil {
		t.Fatal(err)
	}
	if first.Seq != after+1 || first.Data != seen[2].Data {
		t.Fatalf("reattach after %d began with %+v, want seq %d %q", after, first, after+1, seen[2].Data)
	}

	// A third client stops the run: idexctl run exits 130 (stopped).
	out, code = d.ctl("stop", id)
	if code != 0 || !strings.Contains(out, id+" stopped") {
		t.Fatalf("stop: %d %q", code, out)
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		t.Fatal(err)
	}
	err = runCmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("idexctl run after stop: %v, want exit 130", err)
	}

	// idexctl run exits with the script's own code.
	d.writeScript("alice", "seven.py", "import sys\nprint('bye')\nsys.exit(7)\n")
	if out, code := d.ctl("run", "--student", "alice", "seven.py"); code != 7 || out != "bye\n" {
		t.Fatalf("run seven.py: exit %d output %q, want 7 \"bye\\n\"", code, out)
	}
	d.writeScript("alice", "hog.py", "import time\ntime.sleep(30)\n")
	if _, code := d.ctl("run", "--student", "alice", "--timeout", "1s", "hog.py"); code != 124 {
		t.Fatalf("timed out run: exit %d, want 124", code)
	}
	if out, code := d.ctl("run", "--student", "alice", "--memory", "100GiB", "hog.py"); code != 1 || !strings.Contains(out, "limit_too_high") {
		t.Fatalf("too much memory: exit %d %q", code, out)
	}

	// health: 0 ok, 1 draining, 2 unreachable.
	if out, code := d.ctl("drain"); code != 0 {
		t.Fatalf("drain: %d %s", code, out)
	}
	if out, code := d.ctl("health"); code != 1 || !strings.Contains(out, "status draining") {
		t.Fatalf("health while draining: %d %q", code, out)
	}
	if out, code := d.ctl("run", "--student", "alice", "seven.py"); code != 1 || !strings.Contains(out, "(draining)") {
		t.Fatalf("run while draining: %d %q", code, out)
	}
	if _, code := d.ctl("resume"); code != 0 {
		t.Fatal("resume failed")
	}
	if err := d.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("idexd exit after SIGTERM: %v, want 0; logs:\n%s", err, d.logs())
	}
	out, code = d.ctl("health")
	if code != 2 || !strings.Contains(out, "is idexd running?") {
		t.Fatalf("health with idexd down: %d %q", code, out)
	}
}

// TestCrashRecovery: kill -9 of idexd mid-run, then restart: no process
// of the old run is alive, its record ends lost, its lock is free.
func TestCrashRecovery(t *testing.T) {
	d := newDaemon(t)
	d.writeScript("bob", "sleepy.py", "import os, time\nprint('up', flush=True)\ntime.sleep(300)\n")
	runCmd := d.ctlCmd("run", "--student", "bob", "--timeout", "5m", "sleepy.py")
	stdout, err := runCmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := runCmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "up\n" {
		t.Fatalf("first line %q %v", line, err)
	}
	old := d.runs()[0]
	id := old.ID
	// The run's processes as the host sees them (its own PID namespace
	// numbers them differently), in this daemon's cgroups (other tests'
	// students may have bob's uid): python as bob, and the helpers, root
	// (the run's, and the pool's, which must go with idexd too).
	pids := procsOf(old.UID, d.cgroupParent)
	if len(pids) != 1 {
		t.Fatalf("processes of bob's uid %d: %v, want the run's python", old.UID, pids)
	}
	helpers := procsOf(0, d.cgroupParent)
	if len(helpers) < 1 {
		t.Fatalf("no root process in %s: want the run's helper", d.cgroupParent)
	}
	pids = append(pids, helpers...)
	if err := d.stop(syscall.SIGKILL); err == nil {
		t.Fatal("idexd survived SIGKILL")
	}
	_ = runCmd.Wait() // its stream broke with the daemon
	d.start()
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %s of the old run is alive after restart", pid)
		}
	}
	out, code := d.ctl("--json", "show", id)
	var r api.Run
	if code != 0 || json.Unmarshal([]byte(out), &r) != nil || r.Reason != api.ReasonLost || r.State != api.StateEnded {
		t.Fatalf("old run after restart: %d %s", code, out)
	}
	d.writeScript("bob", "sleepy.py", "print('again')\n")
	if out, code := d.ctl("run", "--student", "bob", "sleepy.py"); code != 0 || out != "again\n" {
		t.Fatalf("same script after restart: %d %q (lock not free?)", code, out)
	}
}

// procsOf lists the pids of uid's processes in cgroups under parent.
func procsOf(uid uint32, parent string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		cg, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		if err != nil || !strings.Contains(string(cg), "/"+parent+"/") {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Uid:"); ok {
				if f := strings.Fields(v); len(f) > 0 && f[0] == strconv.FormatUint(uint64(uid), 10) {
					out = append(out, e.Name())
				}
			}
		}
	}
	return out
}

// alive treats a zombie as dead: PID 1 here reaps orphans late.
func alive(pid string) bool {
	b, err := os.ReadFile("/proc/" + strings.TrimSpace(pid) + "/stat")
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}
