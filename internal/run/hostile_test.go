package run_test

// Hostile programs: what students in a class of sixty try, on purpose or by
// accident, run through the real engine on real cgroups. Every case states
// the containment it expects, asserts the single reason the run ended with,
// and then proves nothing of the run is left: no lock, no cgroup, no live
// process of the student's uid, and no process the run told us about.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/store"
	"github.com/idexd/idexd/internal/testutil"
)

// hostileSmall are the limits of every case unless it says otherwise: small,
// so that limits are reached in well under a second.
var hostileSmall = api.Limits{MemoryMB: 64, Pids: 32, WallSeconds: 5, OutputKB: 64}

// hostileUIDs gives the engine a uid range of its own, far from the
// default one that other test binaries on this machine use at the same
// time, so that "no live process of this uid" means "none of our runs".
func hostileUIDs(c *run.Config) {
	base := uint32(2_000_000 + rand.IntN(100_000)*1_000)
	c.UIDMin, c.UIDMax = base, base+999
}

// pyAttempt is a Python helper prepended to scripts that try forbidden
// things: it prints "<what> ALLOWED" or "<what> <exception class>".
const pyAttempt = `import os, sys

def attempt(what, f):
    try:
        f()
        print(what, "ALLOWED", flush=True)
    except (OSError, ValueError) as e:
        print(what, type(e).__name__, flush=True)

`

// attempts is the output pyAttempt prints when every attempt ends with
// result, in order.
func attempts(result string, whats ...string) string {
	var b strings.Builder
	for _, w := range whats {
		b.WriteString(w + " " + result + "\n")
	}
	return b.String()
}

// pyCgroups prints the script's /proc/self/cgroup and a "--" line, so the
// test can find the run's groups while it runs.
const pyCgroups = `print(open("/proc/self/cgroup").read() + "--", flush=True)
`

func hostileCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func hostileStart(t *testing.T, env *testutil.Env, req api.RunRequest) *run.Execution {
	t.Helper()
	r, err := env.Engine.Start(hostileCtx(t, 30*time.Second), req)
	if err != nil {
		t.Fatalf("start %s/%s: got error %v, want a running run", req.Student, req.Script, err)
	}
	return r
}

// clip keeps failure messages readable when a run printed megabytes.
func clip(s string) string {
	const n = 2000
	if len(s) <= n {
		return s
	}
	return s[:n] + fmt.Sprintf("...(%d bytes more)", len(s)-n)
}

func describeEnd(res testutil.Result) string {
	code := "none"
	if res.Run.ExitCode != nil {
		code = strconv.Itoa(*res.Run.ExitCode)
	}
	return fmt.Sprintf("reason %s (exit %s, signal %q, error %q, wall %d ms, cpu %d ms); stdout %q; stderr %q",
		res.Run.Reason, code, res.Run.Signal, res.Run.Error, res.Run.WallMS, res.Run.CPUMS, clip(res.Stdout), clip(res.Stderr))
}

// waitOutput waits until the run's stdout contains want and returns the
// stdout so far. A run that ends first, or a timeout, fails the test.
func waitOutput(t *testing.T, r *run.Execution, want string, d time.Duration) string {
	t.Helper()
	deadline := time.After(d)
	for {
		evs, more := r.EventsAfter(0)
		var out, errOut strings.Builder
		ended := false
		for _, ev := range evs {
			switch ev.Type {
			case api.EventStdout:
				out.Write(ev.Bytes())
			case api.EventStderr:
				errOut.Write(ev.Bytes())
			case api.EventEnd:
				ended = true
			}
		}
		if strings.Contains(out.String(), want) {
			return out.String()
		}
		if ended {
			t.Fatalf("run %s ended (%s) before printing %q; stdout %q; stderr %q",
				r.ID(), r.Info().Reason, want, clip(out.String()), clip(errOut.String()))
		}
		select {
		case <-more:
		case <-deadline:
			t.Fatalf("run %s did not print %q within %s; stdout %q; stderr %q",
				r.ID(), want, d, clip(out.String()), clip(errOut.String()))
		}
	}
}

// procStatus reads a process's state letter and real uid from /proc.
func procStatus(pid int) (state string, uid uint32, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return "", 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, found := strings.CutPrefix(line, "State:"); found {
			state = strings.Fields(v)[0]
		}
		if v, found := strings.CutPrefix(line, "Uid:"); found {
			u, err := strconv.ParseUint(strings.Fields(v)[0], 10, 32)
			if err != nil {
				return "", 0, false
			}
			uid = uint32(u)
		}
	}
	return state, uid, state != ""
}

// procAlive reports whether pid is a live process of uid. A zombie counts
// as dead: it runs nothing, and PID 1 here reaps orphans only every 1.5-2 s.
// A pid now owned by another uid was reused by someone else: the run's
// process is gone.
func procAlive(pid int, uid uint32) bool {
	state, owner, ok := procStatus(pid)
	return ok && owner == uid && state != "Z" && state != "X"
}

// liveProcsOf lists the live (non-zombie) processes whose real uid is uid,
// as "pid (state)".
func liveProcsOf(uid uint32) []string {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return []string{"cannot list /proc: " + err.Error()}
	}
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if procAlive(pid, uid) {
			state, _, _ := procStatus(pid)
			comm, _ := os.ReadFile("/proc/" + e.Name() + "/comm")
			out = append(out, fmt.Sprintf("%d %s (%s)", pid, strings.TrimSpace(string(comm)), state))
		}
	}
	return out
}

// assertNothingHeld checks what must be true once every run of env ended:
// no lock, no run cgroup, no admitted run.
func assertNothingHeld(t *testing.T, env *testutil.Env) {
	t.Helper()
	if n := env.Locks.Held(); n != 0 {
		t.Errorf("locks held after every run ended: got %d, want 0", n)
	}
	groups, err := env.Cgroups.RunGroups()
	if err != nil {
		t.Errorf("list run cgroups: %v", err)
	}
	if len(groups) != 0 {
		t.Errorf("run cgroups left after every run ended: got %v, want none", groups)
	}
	// The slot is given back before the end is published, so right after
	// the end event nothing may count as active.
	if n := env.Engine.Active(); n != 0 {
		t.Errorf("active runs after every run ended: got %d, want 0", n)
	}
}

// assertGroupsLeft checks that the cgroup directories a run was seen in
// hold nothing of it once it ended: removed, or (a warm group kept for
// the next warm helper, cgroup/reuse.go) holding no process of the run's
// uid and no more than 1 MiB of memory charged.
func assertGroupsLeft(t *testing.T, dirs []string, uid uint32) {
	t.Helper()
	for _, d := range dirs {
		_, err := os.Stat(d)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil || !strings.HasPrefix(filepath.Base(d), cgroup.WarmPrefix) {
			t.Errorf("cgroup %s of an ended run: stat says %v, want it removed (only warm groups are kept)", d, err)
			continue
		}
		procs, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if errors.Is(err, os.ErrNotExist) {
			continue // removed since
		}
		if err != nil {
			t.Errorf("kept warm cgroup %s: %v", d, err)
			continue
		}
		for _, f := range strings.Fields(string(procs)) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				t.Fatalf("cgroup.procs of %s: %q", d, procs)
			}
			if _, u, ok := procStatus(pid); ok && u == uid {
				t.Errorf("kept warm cgroup %s still holds pid %d of the ended run's uid %d", d, pid, uid)
			}
		}
		usage, err := os.ReadFile(filepath.Join(d, "memory.usage_in_bytes"))
		if errors.Is(err, os.ErrNotExist) {
			continue // not the memory controller's, or removed since
		}
		if err != nil {
			t.Errorf("kept warm cgroup %s: %v", d, err)
			continue
		}
		// A next warm helper may have been cloned in meanwhile: its own
		// few MiB are not the run's, so only a group without one counts.
		if n, err := strconv.ParseInt(strings.TrimSpace(string(usage)), 10, 64); err != nil || (n > 1<<20 && len(strings.Fields(string(procs))) == 0) {
			t.Errorf("kept warm cgroup %s has %s bytes charged with no process in it, want at most 1 MiB", d, strings.TrimSpace(string(usage)))
		}
	}
}

// assertContained checks that an ended run left nothing: nothing held, no
// live process of its uid, and none of the pids it told us about alive.
func assertContained(t *testing.T, env *testutil.Env, ended api.Run, pids ...int) {
	t.Helper()
	if ended.State != api.StateEnded {
		t.Fatalf("run %s: state %s, want ended before checking what it left", ended.ID, ended.State)
	}
	if ended.Error != "" {
		t.Errorf("run %s ended with engine errors: got %q, want none", ended.ID, ended.Error)
	}
	assertNothingHeld(t, env)
	if live := liveProcsOf(ended.UID); len(live) != 0 {
		t.Errorf("processes of uid %d alive after run %s ended: got %v, want none", ended.UID, ended.ID, live)
	}
	for _, pid := range pids {
		if procAlive(pid, ended.UID) {
			state, _, _ := procStatus(pid)
			t.Errorf("pid %d of run %s is alive (state %s) after the run ended: want dead or zombie", pid, ended.ID, state)
		}
	}
}

// cgroupDir finds the directory of one controller's group from a
// /proc/<pid>/cgroup text: the v1 hierarchy on hybrid hosts, the v2 group
// on unified ones.
func cgroupDir(t *testing.T, env *testutil.Env, procCgroup, controller string) string {
	t.Helper()
	for _, line := range strings.Split(procCgroup, "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if env.Cgroups.Mode() == cgroup.ModeUnified {
			if parts[0] == "0" && parts[1] == "" {
				return filepath.Join("/sys/fs/cgroup", parts[2])
			}
			continue
		}
		if slices.Contains(strings.Split(parts[1], ","), controller) {
			return filepath.Join("/sys/fs/cgroup", parts[1], parts[2])
		}
	}
	t.Fatalf("no %s cgroup in the run's /proc/self/cgroup:\n%s", controller, procCgroup)
	return ""
}

func readTrimmed(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return strings.TrimSpace(string(b))
}

// hostPid finds the host pid of the process that has pid nsPid in run r's
// PID namespace, among the descendants of the run's PID 1.
func hostPid(t *testing.T, r *run.Execution, nsPid int) int {
	t.Helper()
	queue := []int{r.Pid()}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			// NSpid: the pid in each namespace, the run's last.
			if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
				f := strings.Fields(v)
				if f[len(f)-1] == strconv.Itoa(nsPid) {
					return pid
				}
			}
		}
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
		for _, tf := range tasks {
			c, _ := os.ReadFile(tf)
			for _, f := range strings.Fields(string(c)) {
				n, err := strconv.Atoi(f)
				if err == nil {
					queue = append(queue, n)
				}
			}
		}
	}
	t.Fatalf("no process of run %s has pid %d in its namespace", r.ID(), nsPid)
	return 0
}

// helperThreads counts the threads of run r's PID 1.
func helperThreads(t *testing.T, r *run.Execution) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.Pid()))
	if err != nil {
		t.Fatalf("read the helper's status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatalf("helper's threads %q: %v", v, err)
			}
			return n
		}
	}
	t.Fatal("the helper's status has no Threads line")
	return 0
}

func readPidFile(t *testing.T, path string) int {
	t.Helper()
	pid, err := strconv.Atoi(readTrimmed(t, path))
	if err != nil {
		t.Fatalf("pid file %s: %v", path, err)
	}
	return pid
}

func v2Mount(env *testutil.Env) string {
	if env.Cgroups.Mode() == cgroup.ModeHybrid {
		return "/sys/fs/cgroup/unified"
	}
	return "/sys/fs/cgroup"
}

// hostileRun is what a case's hooks see of its run.
type hostileRun struct {
	env     *testutil.Env
	r       *run.Execution
	student string
	workdir string
	// mustDie are pids the case learned about that must be dead once the
	// run ended (e.g. a double-forked grandchild).
	mustDie []int
	// groups are cgroup directories the run was seen in; they must be
	// gone once it ended.
	groups []string
}

// seeGroups records the run's v2 group and its group of controller, from
// the /proc/self/cgroup text the script printed, and returns the latter.
func (h *hostileRun) seeGroups(t *testing.T, procCgroup, controller string) string {
	t.Helper()
	dir := cgroupDir(t, h.env, procCgroup, controller)
	h.groups = append(h.groups, dir)
	for _, line := range strings.Split(procCgroup, "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			h.groups = append(h.groups, filepath.Join(v2Mount(h.env), p))
		}
	}
	return dir
}

type hostileCase struct {
	name    string
	student string
	// contain says, for the reader and for failure messages, what must
	// hold the program.
	contain string
	file    string // script name; "main.py" when empty
	script  string
	args    func(h *hostileRun) []string
	limits  api.Limits
	// setup runs before the run starts, e.g. to plant another student's file.
	setup func(t *testing.T, h *hostileRun)
	// during runs while the run is live: it drives the run (stdin, Stop)
	// and checks what can only be seen then.
	during func(t *testing.T, h *hostileRun)
	// want lists the acceptable reasons; almost always exactly one.
	want  []api.Reason
	check func(t *testing.T, h *hostileRun, res testutil.Result)
}

func reasons(r ...api.Reason) []api.Reason { return r }

// withLimits returns hostileSmall with the non-zero fields of l applied.
func withLimits(l api.Limits) api.Limits {
	out := hostileSmall
	for _, f := range []struct{ dst, src *int64 }{
		{&out.MemoryMB, &l.MemoryMB}, {&out.Pids, &l.Pids}, {&out.CPUPercent, &l.CPUPercent},
		{&out.WallSeconds, &l.WallSeconds}, {&out.CPUSeconds, &l.CPUSeconds}, {&out.OutputKB, &l.OutputKB},
	} {
		if *f.src != 0 {
			*f.dst = *f.src
		}
	}
	return out
}

func (c hostileCase) run(t *testing.T, env *testutil.Env) {
	file := c.file
	if file == "" {
		file = "main.py"
	}
	env.WriteScript(t, c.student, file, c.script)
	h := &hostileRun{env: env, student: c.student, workdir: env.Dirs.Workdir(c.student)}
	if c.setup != nil {
		c.setup(t, h)
	}
	var args []string
	if c.args != nil {
		args = c.args(h)
	}
	h.r = hostileStart(t, env, api.RunRequest{Student: c.student, Script: file, Args: args, Limits: withLimits(c.limits)})
	if c.during != nil {
		c.during(t, h)
	}
	res := testutil.Collect(hostileCtx(t, 60*time.Second), t, h.r)
	if !slices.Contains(c.want, res.Run.Reason) {
		t.Errorf("containment %q: got %s, want reason %v", c.contain, describeEnd(res), c.want)
	}
	if c.check != nil {
		c.check(t, h, res)
	}
	assertContained(t, env, res.Run, h.mustDie...)
	assertGroupsLeft(t, h.groups, res.Run.UID)
}

// outputLimitCheck asserts what output_limit promises: exactly output_kb
// KiB kept, truncated set, one truncated event right before the end.
func outputLimitCheck(t *testing.T, _ *hostileRun, res testutil.Result) {
	t.Helper()
	const capBytes = 64 << 10
	if res.Run.OutputBytes != capBytes || !res.Run.Truncated {
		t.Errorf("output_bytes %d, truncated %v: want exactly %d and true", res.Run.OutputBytes, res.Run.Truncated, capBytes)
	}
	if got := len(res.Stdout) + len(res.Stderr); got != capBytes {
		t.Errorf("output events carry %d bytes, want exactly %d", got, capBytes)
	}
	var truncated []int
	for i, ev := range res.Events {
		if ev.Type == api.EventTruncated {
			truncated = append(truncated, i)
		}
	}
	if len(truncated) != 1 || truncated[0] != len(res.Events)-2 {
		t.Errorf("truncated events at %v of %d events: want exactly one, right before the end event", truncated, len(res.Events))
	}
}

// hostileModes are the two ways a run's child starts: cold, spawned for
// the run as the student, and warm, a helper prepared ahead of time as root
// that drops to the student when launched (production's default).
var hostileModes = []struct {
	name string
	opt  testutil.Option
}{
	{"cold", func(c *run.Config) { c.WarmRuns = 0 }},
	{"warm", func(c *run.Config) { c.WarmRuns = 2 }},
}

// forHostileModes runs f once per start mode, as a subtest.
func forHostileModes(t *testing.T, f func(t *testing.T, mode testutil.Option)) {
	for _, m := range hostileModes {
		t.Run(m.name, func(t *testing.T) { f(t, m.opt) })
	}
}

// TestHostileScripts runs one hostile script per case, one after another
// (t.Setenv rules out parallel cases, and the CPU cases need the cores),
// once with cold starts and once with warm ones.
func TestHostileScripts(t *testing.T) {
	forHostileModes(t, runHostileScripts)
}

// runHostileScripts runs every case of hostileScriptCases on one engine
// in the given start mode.
func runHostileScripts(t *testing.T, mode testutil.Option) {
	// A secret in the daemon's environment that no run may see.
	t.Setenv("IDEXD_HOSTILE_SECRET", "hostile-secret-value")
	if os.Getenv("IDEXD_HOSTILE_SECRET") == "" {
		t.Fatal("the test's own environment lacks the secret: the environ case would test nothing")
	}
	// A 1 MiB file-size rlimit makes the huge-file case quick.
	env := testutil.NewEnv(t, hostileUIDs, mode, func(c *run.Config) { c.FileSizeBytes = 1 << 20 })
	for _, c := range hostileScriptCases(strconv.Itoa(os.Getpid())) {
		t.Run(c.name, func(t *testing.T) {
			t0 := time.Now()
			c.run(t, env)
			t.Logf("%s: %s", c.name, time.Since(t0).Round(time.Millisecond))
		})
	}
}

// hostileScriptCases are the single-script cases; daemonPid is this
// process's pid, which stands for the daemon's.
func hostileScriptCases(daemonPid string) []hostileCase {
	return []hostileCase{

		{
			name: "fork bomb", student: "forkbomb",
			contain: "the pids limit (32) holds the bomb: fork fails with EAGAIN; the host and other students still run; Stop ends it",
			// 256 MiB so that 32 Pythons fit and the pids limit, not the
			// OOM killer, is what holds the bomb.
			limits: api.Limits{MemoryMB: 256, Pids: 32, WallSeconds: 20},
			script: `import os, time
root = os.getpid()
` + pyCgroups + `told = False
while True:
    try:
        os.fork()
    except BlockingIOError as e:
        if os.getpid() == root and not told:
            print("EAGAIN errno", e.errno, flush=True)
            told = True
        time.sleep(0.05)
`,
			during: func(t *testing.T, h *hostileRun) {
				out := waitOutput(t, h.r, "EAGAIN errno 11", 15*time.Second)
				dir := h.seeGroups(t, out, "pids")
				// The run's PID 1 (idexd's helper, the student's uid) and
				// its threads come on top of the student's 32.
				helper := helperThreads(t, h.r)
				if got, want := readTrimmed(t, filepath.Join(dir, "pids.max")), strconv.Itoa(32+helper); got != want {
					t.Errorf("pids.max of the run: got %s, want %s (32 and the helper's %d threads)", got, want, helper)
				}
				if cur, _ := strconv.Atoi(readTrimmed(t, filepath.Join(dir, "pids.current"))); cur > 32+helper || cur < 2 {
					t.Errorf("pids.current of the run during the bomb: got %d, want 2..%d", cur, 32+helper)
				}
				uid := h.r.Info().UID
				if n := len(liveProcsOf(uid)); n > 32+1 {
					t.Errorf("live processes of the bomb's uid %d: got %d, want at most 32 and the helper", uid, n)
				}
				// The host is unharmed: the daemon still forks, and another
				// student's run starts and finishes normally meanwhile.
				if err := exec.Command("/bin/true").Run(); err != nil {
					t.Errorf("the daemon cannot start /bin/true during the bomb: %v", err)
				}
				h.env.WriteScript(t, "bystander", "main.py", "print('ok')\n")
				other := testutil.Collect(hostileCtx(t, 20*time.Second), t,
					hostileStart(t, h.env, api.RunRequest{Student: "bystander", Script: "main.py", Limits: hostileSmall}))
				if other.Run.Reason != api.ReasonExited || other.Stdout != "ok\n" {
					t.Errorf("another student's run during the bomb: got %s, want exited 0 printing ok", describeEnd(other))
				}
				t0 := time.Now()
				final, err := h.r.Stop(hostileCtx(t, 10*time.Second))
				if err != nil || final.Reason != api.ReasonStopped {
					t.Fatalf("stop the bomb: got %v, reason %s; want stopped", err, final.Reason)
				}
				if d := time.Since(t0); d > 3*time.Second {
					t.Errorf("stopping the bomb took %s, want under 3s", d)
				}
			},
			want: reasons(api.ReasonStopped),
		},
		{
			name: "memory hog", student: "memhog",
			contain: "the memory limit (64 MiB) holds a 256 MiB allocation: the kernel OOM-kills it and the cgroup's counter says so",
			script: `chunks = []
for i in range(256):
    chunks.append(b"x" * (1 << 20))
print("allocated", len(chunks), "MiB")
`,
			want: reasons(api.ReasonOOMKilled),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				if strings.Contains(res.Stdout, "allocated") || res.Run.Signal != "SIGKILL" {
					t.Errorf("got stdout %q, signal %q: want no 'allocated' line and SIGKILL", res.Stdout, res.Run.Signal)
				}
				if res.Run.PeakMemoryBytes > 64<<20 || res.Run.PeakMemoryBytes < 32<<20 {
					t.Errorf("peak memory %d bytes, want between 32 MiB and the 64 MiB limit", res.Run.PeakMemoryBytes)
				}
			},
		},
		{
			name: "memory hog relying on swap", student: "swaphog",
			contain: "memory+swap is limited to the memory limit, so pushing pages out (MADV_PAGEOUT) buys nothing: still oom_killed",
			script: `import mmap, sys
` + pyCgroups + `sys.stdin.readline()
size = 256 << 20
m = mmap.mmap(-1, size)
page = b"x" * 4096
MADV_PAGEOUT = getattr(mmap, "MADV_PAGEOUT", 21)
for off in range(0, size, 4096):
    m[off:off + 4096] = page
    if off and off % (8 << 20) == 0:
        # Ask the kernel to swap out what is written so far.
        m.madvise(MADV_PAGEOUT, 0, off)
print("survived")
`,
			during: func(t *testing.T, h *hostileRun) {
				out := waitOutput(t, h.r, "\n--\n", 10*time.Second)
				dir := h.seeGroups(t, out, "memory")
				limit := strconv.Itoa(64 << 20)
				if h.env.Cgroups.Mode() == cgroup.ModeHybrid {
					if got := readTrimmed(t, filepath.Join(dir, "memory.limit_in_bytes")); got != limit {
						t.Errorf("memory.limit_in_bytes: got %s, want %s", got, limit)
					}
					memsw := filepath.Join(dir, "memory.memsw.limit_in_bytes")
					if _, err := os.Stat(memsw); err != nil {
						t.Logf("no swap accounting on this kernel (%v): swap cannot be charged to the run", err)
					} else if got := readTrimmed(t, memsw); got != limit {
						t.Errorf("memory.memsw.limit_in_bytes: got %s, want %s (equal to the memory limit: no swap on top)", got, limit)
					}
				} else {
					if got := readTrimmed(t, filepath.Join(dir, "memory.max")); got != limit {
						t.Errorf("memory.max: got %s, want %s", got, limit)
					}
					if b, err := os.ReadFile(filepath.Join(dir, "memory.swap.max")); err == nil && strings.TrimSpace(string(b)) != "0" {
						t.Errorf("memory.swap.max: got %s, want 0", strings.TrimSpace(string(b)))
					}
				}
				if err := h.r.WriteStdin(hostileCtx(t, 5*time.Second), []byte("go\n"), true); err != nil {
					t.Fatalf("write stdin: %v", err)
				}
			},
			want: reasons(api.ReasonOOMKilled),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				if strings.Contains(res.Stdout, "survived") {
					t.Errorf("the hog printed 'survived': want it killed before touching 256 MiB")
				}
			},
		},
		{
			name: "output flood", student: "flood",
			contain: "output_kb (64) cuts a print loop at exactly 64 KiB, marks it truncated and ends the run",
			script:  "while True:\n    print('x' * 100)\n",
			want:    reasons(api.ReasonOutputLimit),
			check:   outputLimitCheck,
		},
		{
			name: "stderr flood", student: "errflood",
			contain: "stderr counts against the same cap as stdout",
			script:  "import sys\nwhile True:\n    print('e' * 100, file=sys.stderr)\n",
			want:    reasons(api.ReasonOutputLimit),
			check:   outputLimitCheck,
		},
		{
			name: "one huge line", student: "hugeline",
			contain: "a single 4 MiB write is cut at exactly 64 KiB",
			script:  "print('y' * (4 << 20))\n",
			want:    reasons(api.ReasonOutputLimit),
			check: func(t *testing.T, h *hostileRun, res testutil.Result) {
				outputLimitCheck(t, h, res)
				if res.Stdout != strings.Repeat("y", 64<<10) {
					t.Errorf("stdout is not 64 KiB of 'y' (got %d bytes, starting %q)", len(res.Stdout), clip(res.Stdout))
				}
			},
		},
		{
			name: "one write past the largest datagram", student: "hugewrite",
			contain: "a single write over 4 MiB + 64 KiB fails with EMSGSIZE (docs/protocol.md) and the run goes on",
			script:  "import sys\ntry:\n    sys.stdout.write('y' * (8 << 20)); sys.stdout.flush()\nexcept OSError as e:\n    print(e.errno, file=sys.stderr)\nprint('after')\n",
			want:    reasons(api.ReasonExited),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				if res.Stderr != "90\n" || res.Stdout != "after\n" {
					t.Errorf("stdout %q stderr %q: want EMSGSIZE (90) on stderr, then 'after'", clip(res.Stdout), res.Stderr)
				}
			},
		},
		{
			name: "output with no newline", student: "nonewline",
			contain: "output without a newline, one byte per write, is counted and cut all the same",
			script:  "import sys\nwhile True:\n    sys.stdout.write('x')\n",
			want:    reasons(api.ReasonOutputLimit),
			check:   outputLimitCheck,
		},
		{
			name: "setsid double fork, parent exits", student: "doublefork",
			contain: "a setsid()+double-forked grandchild dies when the main process exits and the run ends",
			script: `import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open("grandchild.tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename("grandchild.tmp", "grandchild.pid")
        time.sleep(60)
    os._exit(0)
os.wait()
while not os.path.exists("grandchild.pid"):
    time.sleep(0.01)
print("parent exits")
`,
			want: reasons(api.ReasonExited),
			check: func(t *testing.T, h *hostileRun, res testutil.Result) {
				if res.Run.ExitCode == nil || *res.Run.ExitCode != 0 || res.Stdout != "parent exits\n" {
					t.Errorf("got %s: want exit 0 after 'parent exits'", describeEnd(res))
				}
				h.mustDie = append(h.mustDie, readPidFile(t, filepath.Join(h.workdir, "grandchild.pid")))
			},
		},
		{
			name: "ignores SIGTERM", student: "sigterm",
			contain: "ignoring SIGTERM does not delay Stop: the cgroup is SIGKILLed",
			limits:  api.Limits{WallSeconds: 30},
			script: `import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ignoring SIGTERM", flush=True)
time.sleep(60)
`,
			during: func(t *testing.T, h *hostileRun) {
				waitOutput(t, h.r, "ignoring SIGTERM", 10*time.Second)
				t0 := time.Now()
				final, err := h.r.Stop(hostileCtx(t, 10*time.Second))
				if err != nil || final.Reason != api.ReasonStopped || final.Signal != "SIGKILL" {
					t.Errorf("stop: got %v, reason %s, signal %q; want stopped by SIGKILL", err, final.Reason, final.Signal)
				}
				if d := time.Since(t0); d > 2*time.Second {
					t.Errorf("Stop took %s, want under 2s", d)
				}
			},
			want: reasons(api.ReasonStopped),
		},
		{
			name: "SIGSTOPs itself", student: "sigstop",
			contain: "a stopped process still meets the wall clock (1 s): timed_out",
			limits:  api.Limits{WallSeconds: 1},
			script: `import os, signal
print("stopping myself", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
print("resumed")
`,
			want: reasons(api.ReasonTimedOut),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				if res.Stdout != "stopping myself\n" {
					t.Errorf("stdout %q, want only 'stopping myself' (never resumed)", res.Stdout)
				}
				if res.Run.WallMS < 950 || res.Run.WallMS > 4000 {
					t.Errorf("wall %d ms, want about the 1 s limit", res.Run.WallMS)
				}
			},
		},
		{
			name: "closes stdout and stderr and spins", student: "closestdio",
			contain: "closing its output does not end the run early nor hide it: the wall clock (1 s) ends it",
			limits:  api.Limits{WallSeconds: 1},
			script: `import os
open("spinning", "w").close()
os.close(1)
os.close(2)
while True:
    pass
`,
			want: reasons(api.ReasonTimedOut),
			check: func(t *testing.T, h *hostileRun, res testutil.Result) {
				if _, err := os.Stat(filepath.Join(h.workdir, "spinning")); err != nil {
					t.Errorf("the script never reached its loop (marker: %v): the case tested nothing", err)
				}
				if res.Run.WallMS < 950 {
					t.Errorf("wall %d ms, want the 1 s limit to end it, not the closed pipes", res.Run.WallMS)
				}
			},
		},
		{
			name: "writes a huge file", student: "hugefile",
			contain: "the file-size rlimit (1 MiB here) stops the file at 1 MiB: EFBIG (Python ignores SIGXFSZ) or death by SIGXFSZ",
			script: `import errno
chunk = b"z" * 65536
written = 0
try:
    with open("big.bin", "wb", buffering=0) as f:
        while True:
            written += f.write(chunk)
except OSError as e:
    print("EFBIG" if e.errno == errno.EFBIG else "other %r" % e, written)
`,
			want: reasons(api.ReasonExited, api.ReasonSignaled),
			check: func(t *testing.T, h *hostileRun, res testutil.Result) {
				efbig := res.Run.Reason == api.ReasonExited && strings.HasPrefix(res.Stdout, "EFBIG ")
				xfsz := res.Run.Reason == api.ReasonSignaled && res.Run.Signal == "SIGXFSZ"
				if !efbig && !xfsz {
					t.Errorf("got %s: want EFBIG reported by the script or death by SIGXFSZ", describeEnd(res))
				}
				fi, err := os.Stat(filepath.Join(h.workdir, "big.bin"))
				if err != nil {
					t.Fatalf("stat big.bin: %v", err)
				}
				if fi.Size() > 1<<20 {
					t.Errorf("big.bin is %d bytes, want at most the 1 MiB rlimit", fi.Size())
				}
			},
		},
		{
			name: "reads another student's files", student: "bob",
			contain: "alice's 2770 directory keeps bob out even of her 0666 files, by relative or absolute path; bob cannot list the students either",
			setup: func(t *testing.T, h *hostileRun) {
				p := h.env.WriteScript(t, "alice", "secret.txt", "alice's answers\n")
				if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o666 {
					t.Fatalf("alice's secret.txt: %v, mode %v; want 0666 so that only the directory protects it", err, fi.Mode())
				}
			},
			args: func(h *hostileRun) []string { return []string{h.env.Dirs.Workdir("alice")} },
			script: pyAttempt + `alice = sys.argv[1]
attempt("read relative", lambda: open("../alice/secret.txt").read())
attempt("read absolute", lambda: open(os.path.join(alice, "secret.txt")).read())
attempt("stat", lambda: os.stat(os.path.join(alice, "secret.txt")))
attempt("list alice", lambda: os.listdir(alice))
attempt("plant a file in alice's directory", lambda: open(os.path.join(alice, "planted.py"), "w"))
attempt("list every student", lambda: os.listdir(".."))
attempt("read /etc/shadow", lambda: open("/etc/shadow").read())
`,
			want: reasons(api.ReasonExited),
			check: func(t *testing.T, h *hostileRun, res testutil.Result) {
				want := attempts("PermissionError", "read relative", "read absolute", "stat", "list alice",
					"plant a file in alice's directory", "list every student", "read /etc/shadow")
				if res.Stdout != want {
					t.Errorf("stdout %q, want %q", res.Stdout, want)
				}
				if _, err := os.Stat(filepath.Join(h.env.Dirs.Workdir("alice"), "planted.py")); err == nil {
					t.Errorf("bob planted a file in alice's directory")
				}
			},
		},
		{
			name: "reads the daemon's environment", student: "environ",
			contain: "the daemon's /proc entries do not exist for a run (its own PID namespace), and the run's own environment has only the nine expected keys",
			args:    func(*hostileRun) []string { return []string{daemonPid} },
			script: pyAttempt + `daemon = sys.argv[1]
attempt("environ", lambda: open("/proc/%s/environ" % daemon).read())
attempt("fd", lambda: os.listdir("/proc/%s/fd" % daemon))
attempt("cwd", lambda: os.readlink("/proc/%s/cwd" % daemon))
attempt("mem", lambda: open("/proc/%s/mem" % daemon, "rb").read(1))
print("parent is daemon", os.getppid() == int(daemon))
print("env", sorted(os.environ))
print("secret", any("hostile-secret" in k + v for k, v in os.environ.items()))
`,
			want: reasons(api.ReasonExited),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				want := attempts("FileNotFoundError", "environ", "fd", "cwd", "mem") +
					"parent is daemon False\n" +
					"env ['HOME', 'LANG', 'LC_ALL', 'LOGNAME', 'PATH', 'PYTHONIOENCODING', 'PYTHONUNBUFFERED', 'TMPDIR', 'USER']\n" +
					"secret False\n"
				if res.Stdout != want {
					t.Errorf("stdout %q, want %q", res.Stdout, want)
				}
			},
		},
		{
			name: "reads the daemon's state database", student: "statedb",
			contain: "the store's directory (0750 root) is closed to runs: no other student's run records",
			args: func(h *hostileRun) []string {
				return []string{filepath.Join(h.env.Root, "state")}
			},
			script: pyAttempt + `state = sys.argv[1]
attempt("list state", lambda: os.listdir(state))
attempt("read db", lambda: open(os.path.join(state, "idexd.db"), "rb").read(16))
`,
			want: reasons(api.ReasonExited),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				if want := attempts("PermissionError", "list state", "read db"); res.Stdout != want {
					t.Errorf("stdout %q, want %q", res.Stdout, want)
				}
			},
		},
		{
			name: "a thousand threads", student: "threads",
			contain: "threads count as pids: the 32-pid limit stops thread creation with RuntimeError",
			script: `import threading
ev = threading.Event()
n = 0
try:
    for _ in range(1000):
        threading.Thread(target=ev.wait, daemon=True).start()
        n += 1
except RuntimeError as e:
    print("RuntimeError:", e)
ev.set()
print("threads", n)
`,
			want: reasons(api.ReasonExited),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				var n int
				if !strings.HasPrefix(res.Stdout, "RuntimeError: can't start new thread\nthreads ") {
					t.Fatalf("stdout %q, want RuntimeError \"can't start new thread\" then the count", res.Stdout)
				}
				if _, err := fmt.Sscanf(strings.TrimPrefix(res.Stdout, "RuntimeError: can't start new thread\n"), "threads %d", &n); err != nil || n >= 32 || n < 1 {
					t.Errorf("started %d threads (%v), want 1..31 under a 32-pid limit", n, err)
				}
			},
		},
		{
			name: "busy loop at half a CPU", student: "cpuhalf",
			contain: "cpu_seconds (1) ends a busy loop by CPU time, not by the 20 s wall clock; cpu_percent 50 makes it take about 2 s",
			limits:  api.Limits{CPUPercent: 50, CPUSeconds: 1, WallSeconds: 20},
			script:  "while True:\n    pass\n",
			want:    reasons(api.ReasonTimedOut),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				if res.Run.CPUMS < 1000 || res.Run.WallMS >= 10000 {
					t.Errorf("cpu %d ms, wall %d ms: want at least 1000 ms CPU and wall well under the 20 s limit", res.Run.CPUMS, res.Run.WallMS)
				}
				// At 50% of one CPU, 1 s of CPU takes at least ~2 s.
				if res.Run.WallMS < 1500 {
					t.Errorf("wall %d ms for %d ms CPU: want at least 1500 ms under cpu_percent 50", res.Run.WallMS, res.Run.CPUMS)
				}
			},
		},
		{
			name: "busy loop in four processes", student: "cpufork",
			contain: "CPU time is the whole cgroup's: four spinning processes reach cpu_seconds (1) together, long before any per-process rlimit",
			limits:  api.Limits{CPUPercent: 200, CPUSeconds: 1, WallSeconds: 20},
			script: `import os
for _ in range(3):
    if os.fork() == 0:
        break
while True:
    pass
`,
			want: reasons(api.ReasonTimedOut),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				if res.Run.CPUMS < 1000 || res.Run.WallMS >= 5000 {
					t.Errorf("cpu %d ms, wall %d ms: want at least 1000 ms CPU within a wall well under 5 s", res.Run.CPUMS, res.Run.WallMS)
				}
			},
		},
		{
			name: "temporary files", student: "tmpfiles",
			contain: "tempfile puts files in the run's own /tmp (TMPDIR), a private tmpfs that is gone when the run ends",
			script: `import tempfile, os
fd, p = tempfile.mkstemp()
os.write(fd, b"x" * 4096)
print(p)
print(tempfile.gettempdir())
print(os.listdir("/tmp") == [os.path.basename(p)])
`,
			want: reasons(api.ReasonExited),
			check: func(t *testing.T, h *hostileRun, res testutil.Result) {
				lines := strings.Split(strings.TrimSuffix(res.Stdout, "\n"), "\n")
				if len(lines) != 3 || !strings.HasPrefix(lines[0], "/tmp/") || lines[1] != "/tmp" || lines[2] != "True" {
					t.Fatalf("stdout %q: want a mkstemp path under /tmp/, gettempdir /tmp, and a /tmp holding that file only", res.Stdout)
				}
				if _, err := os.Stat(lines[0]); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("the run's temporary file %s is in the host's /tmp (%v): want it gone with the run", lines[0], err)
				}
			},
		},
		{
			name: "double-forked sleeper outlives a Stop", student: "sleeper",
			contain: "Stop kills a setsid()+double-forked sleeper too: dead by the time Stop returns",
			limits:  api.Limits{WallSeconds: 30},
			script: `import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open("sleeper.tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename("sleeper.tmp", "sleeper.pid")
        time.sleep(60)
    os._exit(0)
os.wait()
while not os.path.exists("sleeper.pid"):
    time.sleep(0.01)
print("sleeper up", flush=True)
time.sleep(60)
`,
			during: func(t *testing.T, h *hostileRun) {
				waitOutput(t, h.r, "sleeper up", 10*time.Second)
				// The pid file holds the sleeper's pid in the run's PID
				// namespace: find its host pid by that.
				pid := hostPid(t, h.r, readPidFile(t, filepath.Join(h.workdir, "sleeper.pid")))
				uid := h.r.Info().UID
				if !procAlive(pid, uid) {
					t.Fatalf("sleeper %d is not alive before Stop: the case would test nothing", pid)
				}
				final, err := h.r.Stop(hostileCtx(t, 10*time.Second))
				if err != nil || final.Reason != api.ReasonStopped {
					t.Errorf("stop: got %v, reason %s; want stopped", err, final.Reason)
				}
				if procAlive(pid, uid) {
					t.Errorf("sleeper %d alive right after Stop returned: want dead or zombie", pid)
				}
				h.mustDie = append(h.mustDie, pid)
			},
			want: reasons(api.ReasonStopped),
		},
		{
			name: "input() with stdin closed", student: "stdineof",
			contain: "closing stdin ends input() with EOFError, like Ctrl-D in a terminal: exited 1",
			script:  "name = input('name? ')\nprint('hello', name)\n",
			during: func(t *testing.T, h *hostileRun) {
				if err := h.r.WriteStdin(hostileCtx(t, 5*time.Second), nil, true); err != nil {
					t.Fatalf("close stdin: %v", err)
				}
			},
			want: reasons(api.ReasonExited),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				if res.Run.ExitCode == nil || *res.Run.ExitCode != 1 || !strings.Contains(res.Stderr, "EOFError") || res.Stdout != "name? " {
					t.Errorf("got %s: want exit 1, stdout 'name? ' and an EOFError traceback", describeEnd(res))
				}
			},
		},
		{
			name: "unicode script name and awkward args", student: "unicode",
			contain: "argv reaches the script exactly as passed: no shell, no splitting, no quoting",
			file:    "my script é 日本.py",
			args: func(*hostileRun) []string {
				return []string{"two words", `"double quoted"`, "it's", "", `back\slash`, "ünï ☃", "--flag=a b", "$HOME", "*", ";rm -rf ~", "`id`"}
			},
			script: "import json, sys\nprint(json.dumps(sys.argv))\n",
			want:   reasons(api.ReasonExited),
			check: func(t *testing.T, h *hostileRun, res testutil.Result) {
				var got []string
				if err := json.Unmarshal([]byte(res.Stdout), &got); err != nil {
					t.Fatalf("stdout %q is not a JSON argv: %v", res.Stdout, err)
				}
				want := append([]string{"my script é 日本.py"}, h.r.Info().Args...)
				if !slices.Equal(got, want) || len(want) != 12 {
					t.Errorf("sys.argv %q, want %q", got, want)
				}
			},
		},
		{
			name: "script named like an interpreter option", student: "dashname",
			contain: "a script named \"-c\" is a file to run, not an option: its first argument is not run as code",
			file:    "-c",
			args:    func(*hostileRun) []string { return []string{"print('argument ran as code')"} },
			script:  "import sys\nprint('file ran', sys.argv)\n",
			want:    reasons(api.ReasonExited),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				if want := "file ran ['-c', \"print('argument ran as code')\"]\n"; res.Stdout != want {
					t.Errorf("got %s: want stdout %q", describeEnd(res), want)
				}
			},
		},
		{
			name: "script named like a long option", student: "dashlong",
			contain: "\"--help.py\" runs as a file too",
			file:    "--help.py",
			script:  "import sys\nprint('file ran', sys.argv)\n",
			want:    reasons(api.ReasonExited),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				if want := "file ran ['--help.py']\n"; res.Stdout != want {
					t.Errorf("got %s: want stdout %q", describeEnd(res), want)
				}
			},
		},
		{
			name: "invalid UTF-8 and a character split across writes", student: "rawbytes",
			contain: "every byte written arrives, in order, unaltered; a character split across writes is not split across events",
			script: `import sys, time
out = sys.stdout.buffer
for part in [b"ok \xff\xfe bad\n", b"split \xe6\x97", b"\xa5 end\n", b"tail \xe6\x97"]:
    out.write(part)
    out.flush()
    time.sleep(0.2)
`,
			want: reasons(api.ReasonExited),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				if want := "ok \xff\xfe bad\nsplit \xe6\x97\xa5 end\ntail \xe6\x97"; res.Stdout != want {
					t.Errorf("stdout bytes %q, want exactly %q", res.Stdout, want)
				}
				whole := false
				for _, ev := range res.Events {
					if ev.Type == api.EventStdout && strings.Contains(string(ev.Bytes()), "日") {
						whole = true
					}
				}
				if !whole {
					t.Errorf("no stdout event holds 日 whole: the character was split across events")
				}
			},
		},
		// Cases beyond the two issues' lists: what else a class tries.
		{
			name: "memory spread over processes", student: "memspread",
			contain: "the memory limit is the group's: four 24 MiB children under 64 MiB are OOM-killed, and the counter says oom_killed even though the parent exits 0",
			script: `import os, time
kids = []
for i in range(4):
    pid = os.fork()
    if pid == 0:
        block = b"m" * (24 << 20)
        time.sleep(0.5)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
print("parent done")
`,
			want: reasons(api.ReasonOOMKilled),
		},
		{
			name: "kills itself with SIGKILL", student: "selfkill",
			contain: "a SIGKILL is not evidence of OOM: reason signaled, signal SIGKILL",
			script:  "import os, signal\nprint('bye', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n",
			want:    reasons(api.ReasonSignaled),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				if res.Run.Signal != "SIGKILL" || res.Stdout != "bye\n" {
					t.Errorf("got %s: want signal SIGKILL after 'bye'", describeEnd(res))
				}
			},
		},
		{
			name: "segfault", student: "segv",
			contain: "a crashing interpreter ends signaled SIGSEGV and leaves no core file (RLIMIT_CORE 0)",
			script:  "import ctypes\nctypes.string_at(0)\n",
			want:    reasons(api.ReasonSignaled),
			check: func(t *testing.T, h *hostileRun, res testutil.Result) {
				if res.Run.Signal != "SIGSEGV" {
					t.Errorf("got %s: want signal SIGSEGV", describeEnd(res))
				}
				cores, _ := filepath.Glob(filepath.Join(h.workdir, "core*"))
				if len(cores) != 0 {
					t.Errorf("core files in the workdir: %v, want none", cores)
				}
			},
		},
		{
			name: "opens files until it cannot", student: "fdhog",
			contain: "the open-files rlimit (4096) stops it with EMFILE",
			script: `import errno
fs = []
try:
    while True:
        fs.append(open("/dev/null"))
except OSError as e:
    print("EMFILE" if e.errno == errno.EMFILE else "other %r" % e, len(fs))
`,
			want: reasons(api.ReasonExited),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				var n int
				if _, err := fmt.Sscanf(res.Stdout, "EMFILE %d", &n); err != nil || n >= 4096 || n < 4000 {
					t.Errorf("stdout %q: want EMFILE after fewer than 4096 files", res.Stdout)
				}
			},
		},
		{
			name: "looks for inherited file descriptors", student: "fdleak",
			contain: "the run inherits stdin (a pipe), stdout and stderr (datagram sockets) and nothing else: no other socket, database, cgroup fd, nor what the daemon inherited",
			script: `import json, os
leaked = {}
for fd in range(3, 4096):
    try:
        os.fstat(fd)
        leaked[fd] = os.readlink("/proc/self/fd/%d" % fd)
    except OSError:
        pass
print(json.dumps({"leaked": leaked, "std": [os.readlink("/proc/self/fd/%d" % fd).split(":")[0] for fd in range(3)]}))
`,
			want: reasons(api.ReasonExited),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				var got struct {
					Leaked map[int]string
					Std    []string
				}
				if err := json.Unmarshal([]byte(res.Stdout), &got); err != nil {
					t.Fatalf("stdout %q: %v", res.Stdout, err)
				}
				if len(got.Leaked) != 0 || !slices.Equal(got.Std, []string{"pipe", "socket", "socket"}) {
					t.Errorf("fds above 2: %v, stdio %v; want none, and a pipe and two sockets", got.Leaked, got.Std)
				}
			},
		},
		{
			name: "tries to become root", student: "escalate",
			contain: "no capabilities, no_new_privs, hard rlimits: every attempt to gain privilege or lift a limit fails",
			script: pyAttempt + `import resource
attempt("setuid 0", lambda: os.setuid(0))
attempt("setgid 0", lambda: os.setgid(0))
attempt("setgroups", lambda: os.setgroups([0]))
attempt("nice -5", lambda: os.nice(-5))
attempt("chroot", lambda: os.chroot("."))
attempt("raise fsize", lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)))
attempt("raise nofile", lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536)))
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
for k in ["CapEff", "CapPrm", "NoNewPrivs"]:
    print(k, status[k].strip())
`,
			want: reasons(api.ReasonExited),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				want := attempts("PermissionError", "setuid 0", "setgid 0", "setgroups", "nice -5", "chroot") +
					attempts("ValueError", "raise fsize", "raise nofile") +
					"CapEff 0000000000000000\nCapPrm 0000000000000000\nNoNewPrivs 1\n"
				if res.Stdout != want {
					t.Errorf("stdout %q, want %q", res.Stdout, want)
				}
			},
		},
		{
			name: "tries to leave or loosen its cgroup", student: "cgescape",
			contain: "the cgroup files are root's, on a read-only mount: a run cannot raise its limits, move to another group, or kill its parent group",
			args:    func(h *hostileRun) []string { return []string{v2Mount(h.env)} },
			script: pyAttempt + `import glob
v2 = sys.argv[1]
for line in open("/proc/self/cgroup").read().splitlines():
    _, ctrls, path = line.split(":", 2)
    if ctrls.startswith("name="):
        continue
    mnt = v2 if ctrls == "" else "/sys/fs/cgroup/" + ctrls
    mine = mnt + path
    name = ctrls or "v2"
    for f in sorted(glob.glob(mine + "/*.max") + glob.glob(mine + "/*limit_in_bytes") + glob.glob(mine + "/cpu.cfs_quota_us")):
        attempt("write %s of %s" % (os.path.basename(f), name), lambda: open(f, "w").write("max"))
    attempt("move to the root of " + name, lambda: open(mnt + "/cgroup.procs", "w").write(str(os.getpid())))
    attempt("kill the parent of " + name, lambda: open(os.path.dirname(mine) + "/cgroup.kill", "w").write("1"))
`,
			want: reasons(api.ReasonExited),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				lines := strings.Split(strings.TrimSuffix(res.Stdout, "\n"), "\n")
				if len(lines) < 4 {
					t.Fatalf("stdout %q: want at least four attempts", res.Stdout)
				}
				for _, l := range lines {
					// PermissionError where the mode refuses first, OSError
					// (EROFS) where the read-only mount does.
					if !strings.HasSuffix(l, " PermissionError") && !strings.HasSuffix(l, " OSError") {
						t.Errorf("attempt %q: want PermissionError or OSError (read-only file system)", l)
					}
				}
				if !strings.Contains(res.Stdout, "write memory.") {
					t.Errorf("stdout %q: the script never tried the memory limit", res.Stdout)
				}
			},
		},
		{
			name: "root in a user namespace", student: "userns",
			contain: "a run cannot create a user namespace (EPERM): no root inside one, no kernel surface behind it",
			args: func(h *hostileRun) []string {
				return []string{h.env.Dirs.Workdir("alice"), daemonPid, v2Mount(h.env)}
			},
			setup: func(t *testing.T, h *hostileRun) {
				h.env.WriteScript(t, "alice", "secret.txt", "alice's answers\n")
			},
			script: pyAttempt + `import ctypes, signal
alice, daemon, v2 = sys.argv[1], int(sys.argv[2]), sys.argv[3]
uid, gid = os.getuid(), os.getgid()
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000
if libc.unshare(CLONE_NEWUSER) != 0:
    print("unshare refused", os.strerror(ctypes.get_errno()))
    sys.exit(0)
open("/proc/self/uid_map", "w").write("0 %d 1" % uid)
open("/proc/self/setgroups", "w").write("deny")
open("/proc/self/gid_map", "w").write("0 %d 1" % gid)
print("uid in namespace", os.getuid())
attempt("read alice", lambda: open(os.path.join(alice, "secret.txt")).read())
attempt("list alice", lambda: os.listdir(alice))
attempt("kill daemon", lambda: os.kill(daemon, signal.SIGTERM))
attempt("move to the v2 root", lambda: open(v2 + "/cgroup.procs", "w").write(str(os.getpid())))
attempt("read /etc/shadow", lambda: open("/etc/shadow").read())
`,
			want: reasons(api.ReasonExited),
			check: func(t *testing.T, _ *hostileRun, res testutil.Result) {
				// The seccomp filter refuses it: a user namespace would open
				// the whole kernel surface behind it (mounts, netfilter, ...).
				if want := "unshare refused Operation not permitted\n"; res.Stdout != want {
					t.Errorf("got %s: want stdout %q", describeEnd(res), want)
				}
			},
		},
	}
}

// TestHostileSignalsOtherProcesses: bob signals everything he can think
// of, kill(-1, SIGKILL) first, while carol's run waits: the daemon and
// carol are untouched and carol's run ends exited 0.
func TestHostileSignalsOtherProcesses(t *testing.T) { forHostileModes(t, hostileSignalsOtherProcesses) }

func hostileSignalsOtherProcesses(t *testing.T, mode testutil.Option) {
	env := testutil.NewEnv(t, hostileUIDs, mode)
	// A signal that reached the daemon would be caught here instead of
	// killing the test binary, so that it is reported, not just fatal.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGINT)
	defer signal.Stop(sigs)

	env.WriteScript(t, "carol", "main.py", "import os, sys\nprint(os.getpid(), flush=True)\nsys.stdin.readline()\nprint('alive')\n")
	carol := hostileStart(t, env, api.RunRequest{Student: "carol", Script: "main.py", Limits: hostileSmall})
	carolNsPid, err := strconv.Atoi(strings.TrimSpace(waitOutput(t, carol, "\n", 10*time.Second)))
	if err != nil {
		t.Fatalf("carol's pid: %v", err)
	}
	carolPid := hostPid(t, carol, carolNsPid)

	env.WriteScript(t, "bob", "main.py", pyAttempt+`import signal
daemon, carol = int(sys.argv[1]), int(sys.argv[2])
print("parent is daemon", os.getppid() == daemon)
try:
    # Linux reports success for kill(-1) even when every target refused
    # (EPERM is not counted), so only its effects tell: see carol below.
    os.kill(-1, signal.SIGKILL)
except OSError:
    pass
attempt("kill daemon TERM", lambda: os.kill(daemon, signal.SIGTERM))
# The parent is the run's own PID 1 (idexd's helper), root and so out of
# the student's reach (and the kernel would ignore a SIGKILL sent to it
# from inside): this line goes on.
attempt("kill parent KILL", lambda: os.kill(os.getppid(), signal.SIGKILL))
attempt("kill carol KILL", lambda: os.kill(carol, signal.SIGKILL))
attempt("kill carol STOP", lambda: os.kill(carol, signal.SIGSTOP))
attempt("killpg carol KILL", lambda: os.killpg(carol, signal.SIGKILL))
`)
	bob := testutil.Collect(hostileCtx(t, 30*time.Second), t, hostileStart(t, env, api.RunRequest{
		Student: "bob", Script: "main.py", Limits: hostileSmall,
		Args: []string{strconv.Itoa(os.Getpid()), strconv.Itoa(carolPid)},
	}))
	// Other processes do not exist in the run's PID namespace.
	want := "parent is daemon False\n" + attempts("ProcessLookupError", "kill daemon TERM") +
		"kill parent KILL PermissionError\n" + attempts("ProcessLookupError", "kill carol KILL", "kill carol STOP", "killpg carol KILL")
	if bob.Run.Reason != api.ReasonExited || bob.Stdout != want {
		t.Errorf("bob's run: got %s; want exited with stdout %q", describeEnd(bob), want)
	}

	if err := carol.WriteStdin(hostileCtx(t, 5*time.Second), []byte("\n"), true); err != nil {
		t.Fatalf("write carol's stdin: %v", err)
	}
	carolRes := testutil.Collect(hostileCtx(t, 30*time.Second), t, carol)
	if carolRes.Run.Reason != api.ReasonExited || carolRes.Run.ExitCode == nil || *carolRes.Run.ExitCode != 0 ||
		carolRes.Stdout != fmt.Sprintf("%d\nalive\n", carolNsPid) {
		t.Errorf("carol's run: got %s; want exited 0 printing her pid and 'alive'", describeEnd(carolRes))
	}
	select {
	case s := <-sigs:
		t.Errorf("the daemon received %v from a run, want no signal", s)
	default:
	}
	assertContained(t, env, bob.Run)
	assertContained(t, env, carolRes.Run, carolPid)
}

// TestHostilePtraceSibling: bob tries to debug carol's run and the daemon.
func TestHostilePtraceSibling(t *testing.T) { forHostileModes(t, hostilePtraceSibling) }

func hostilePtraceSibling(t *testing.T, mode testutil.Option) {
	env := testutil.NewEnv(t, hostileUIDs, mode)
	env.WriteScript(t, "carol", "main.py", "import os, sys\nprint(os.getpid(), flush=True)\nsys.stdin.readline()\nprint('alive')\n")
	carol := hostileStart(t, env, api.RunRequest{Student: "carol", Script: "main.py", Limits: hostileSmall})
	carolNsPid, err := strconv.Atoi(strings.TrimSpace(waitOutput(t, carol, "\n", 10*time.Second)))
	if err != nil {
		t.Fatalf("carol's pid: %v", err)
	}
	carolPid := hostPid(t, carol, carolNsPid)
	env.WriteScript(t, "bob", "main.py", pyAttempt+`import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.process_vm_readv.restype = ctypes.c_ssize_t

class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

PTRACE_ATTACH, PTRACE_SEIZE = 16, 0x4206
buf = ctypes.create_string_buffer(8)
local = iovec(ctypes.cast(buf, ctypes.c_void_p), 8)
remote = iovec(0x400000, 8)
for name, pid in [("carol", int(sys.argv[1])), ("daemon", int(sys.argv[2]))]:
    for req_name, req in [("attach", PTRACE_ATTACH), ("seize", PTRACE_SEIZE)]:
        ctypes.set_errno(0)
        r = libc.ptrace(req, pid, None, None)
        print("ptrace", req_name, name, "OK" if r == 0 else os.strerror(ctypes.get_errno()))
    ctypes.set_errno(0)
    n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    print("process_vm_readv", name, "OK" if n >= 0 else os.strerror(ctypes.get_errno()))
    attempt(name + " mem", lambda: open("/proc/%d/mem" % pid, "rb").read(1))
    attempt(name + " environ", lambda: open("/proc/%d/environ" % pid).read())
`)
	bob := testutil.Collect(hostileCtx(t, 30*time.Second), t, hostileStart(t, env, api.RunRequest{
		Student: "bob", Script: "main.py", Limits: hostileSmall,
		Args: []string{strconv.Itoa(carolPid), strconv.Itoa(os.Getpid())},
	}))
	var want strings.Builder
	for _, name := range []string{"carol", "daemon"} {
		// The seccomp filter refuses ptrace and process_vm_readv whatever
		// the pid; the others' /proc entries do not exist in the run's.
		fmt.Fprintf(&want, "ptrace attach %s Operation not permitted\nptrace seize %s Operation not permitted\n", name, name)
		fmt.Fprintf(&want, "process_vm_readv %s Operation not permitted\n", name)
		want.WriteString(attempts("FileNotFoundError", name+" mem", name+" environ"))
	}
	if bob.Run.Reason != api.ReasonExited || bob.Stdout != want.String() {
		t.Errorf("bob's run: got %s; want exited with stdout %q", describeEnd(bob), want.String())
	}
	// Had an attach worked, carol would be stopped and never answer.
	if err := carol.WriteStdin(hostileCtx(t, 5*time.Second), []byte("\n"), true); err != nil {
		t.Fatalf("write carol's stdin: %v", err)
	}
	carolRes := testutil.Collect(hostileCtx(t, 30*time.Second), t, carol)
	if carolRes.Run.Reason != api.ReasonExited || carolRes.Stdout != fmt.Sprintf("%d\nalive\n", carolNsPid) {
		t.Errorf("carol's run: got %s; want exited 0 printing her pid and 'alive'", describeEnd(carolRes))
	}
	assertContained(t, env, bob.Run)
	assertContained(t, env, carolRes.Run, carolPid)
}

// TestHostileUnixSocket: a run connects to root's Unix sockets, one like
// idexd's own control socket (group = the web tier's) and one of group root.
func TestHostileUnixSocket(t *testing.T) { forHostileModes(t, hostileUnixSocket) }

func hostileUnixSocket(t *testing.T, mode testutil.Option) {
	env := testutil.NewEnv(t, hostileUIDs, mode)
	dir := testutil.TraversableDir(t)
	var paths []string
	var lns []*net.UnixListener
	for i, gid := range []int{0, testutil.ClientGID} {
		p := filepath.Join(dir, fmt.Sprintf("s%d.sock", i))
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
		if err != nil {
			t.Fatalf("listen %s: %v", p, err)
		}
		t.Cleanup(func() { ln.Close() })
		if err := os.Chown(p, 0, gid); err != nil {
			t.Fatalf("chown %s: %v", p, err)
		}
		if err := os.Chmod(p, 0o660); err != nil {
			t.Fatalf("chmod %s: %v", p, err)
		}
		paths = append(paths, p)
		lns = append(lns, ln)
	}
	env.WriteScript(t, "bob", "main.py", pyAttempt+`import socket
for p in sys.argv[1:]:
    attempt("connect " + os.path.basename(p), lambda: socket.socket(socket.AF_UNIX).connect(p))
`)
	res := testutil.Collect(hostileCtx(t, 30*time.Second), t, hostileStart(t, env, api.RunRequest{
		Student: "bob", Script: "main.py", Limits: hostileSmall, Args: paths,
	}))
	if want := attempts("PermissionError", "connect s0.sock", "connect s1.sock"); res.Run.Reason != api.ReasonExited || res.Stdout != want {
		t.Errorf("got %s; want exited with stdout %q", describeEnd(res), want)
	}
	for i, ln := range lns {
		if err := ln.SetDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		c, err := ln.Accept()
		if err == nil {
			c.Close()
			t.Errorf("socket %s accepted a connection from the run, want none", paths[i])
		} else if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("accept on %s: got %v, want a deadline error (no connection)", paths[i], err)
		}
	}
	assertContained(t, env, res.Run)
}

// TestHostileRefusedScripts: requests to run something that is not a
// regular file inside the student's directory are refused before anything
// is held, promptly, even for a FIFO nobody writes to.
func TestHostileRefusedScripts(t *testing.T) {
	env := testutil.NewEnv(t, hostileUIDs)
	aliceScript := env.WriteScript(t, "alice", "main.py", "print('alice')\n")
	bobDir := filepath.Dir(env.WriteScript(t, "bob", "mine.py", "print('bob')\n"))
	links := map[string]string{
		"abs-to-alice.py": aliceScript,
		"rel-to-alice.py": "../alice/main.py",
		// Absolute links are refused even when they point inside: the
		// kernel's RESOLVE_BENEATH treats every absolute link as leading out.
		"abs-to-own.py": filepath.Join(bobDir, "mine.py"),
		"to-passwd.py":  "/etc/passwd",
		"to-dev-zero":   "/dev/zero",
		"alicedir":      "../alice",
		"loop.py":       "loop.py",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(bobDir, name)); err != nil {
			t.Fatalf("symlink %s: %v", name, err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(bobDir, "fifo.py"), 0o666); err != nil {
		t.Fatalf("mkfifo: %v", err)
	}
	for _, script := range []string{"abs-to-alice.py", "rel-to-alice.py", "abs-to-own.py", "to-passwd.py", "to-dev-zero", "alicedir/main.py", "loop.py", "fifo.py"} {
		t.Run(script, func(t *testing.T) {
			t0 := time.Now()
			r, err := env.Engine.Start(hostileCtx(t, 10*time.Second), api.RunRequest{Student: "bob", Script: script, Limits: hostileSmall})
			if r != nil {
				res := testutil.Collect(hostileCtx(t, 30*time.Second), t, r)
				t.Fatalf("request for %s started a run (%s), want it refused", script, describeEnd(res))
			}
			if !errors.Is(err, api.ErrInvalidPath) {
				t.Errorf("start %s: got %v, want invalid_path", script, err)
			}
			if d := time.Since(t0); d > 2*time.Second {
				t.Errorf("refusing %s took %s, want under 2s (no hang)", script, d)
			}
			assertNothingHeld(t, env)
		})
	}
	runs, err := env.Store.ListRuns(hostileCtx(t, 5*time.Second), store.RunFilter{})
	if err != nil || len(runs) != 0 {
		t.Errorf("run records after refused requests: got %d (%v), want none", len(runs), err)
	}
}

// TestHostileSharedTmp: /tmp, /var/tmp and /dev/shm are no channel
// between runs, nor between a run and the host: a 0666 file planted in
// the host's /tmp is invisible to runs, what alice's run writes there is
// invisible to bob's run while both are live, and it is gone from
// everywhere when her run ends.
func TestHostileSharedTmp(t *testing.T) { forHostileModes(t, hostileSharedTmp) }

func hostileSharedTmp(t *testing.T, mode testutil.Option) {
	env := testutil.NewEnv(t, hostileUIDs, mode)
	name := fmt.Sprintf("idexd-hostile-%d.txt", rand.Uint64())
	planted := filepath.Join(os.TempDir(), name)
	if err := os.WriteFile(planted, []byte("planted\n"), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(planted, 0o666); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(planted) })
	dirs := []string{"/tmp", "/var/tmp", "/dev/shm"}
	env.WriteScript(t, "alice", "main.py", `import os, sys
name = sys.argv[1]
print("planted visible", os.path.exists("/tmp/" + name))
for d in ("/tmp", "/var/tmp", "/dev/shm"):
    open(os.path.join(d, "alice-" + name), "w").write("answers\n")
print("written", flush=True)
sys.stdin.readline()
`)
	alice := hostileStart(t, env, api.RunRequest{Student: "alice", Script: "main.py", Limits: hostileSmall, Args: []string{name}})
	waitOutput(t, alice, "written\n", 10*time.Second)
	env.WriteScript(t, "bob", "main.py", pyAttempt+`name = sys.argv[1]
for d in ("/tmp", "/var/tmp", "/dev/shm"):
    print(d, sorted(os.listdir(d)))
attempt("write planted", lambda: open("/tmp/" + name, "a").write("bob was here"))
`)
	bob := testutil.Collect(hostileCtx(t, 30*time.Second), t, hostileStart(t, env, api.RunRequest{
		Student: "bob", Script: "main.py", Limits: hostileSmall, Args: []string{name},
	}))
	// Bob's own write lands in his own /tmp, which is gone with his run.
	want := "/tmp []\n/var/tmp []\n/dev/shm []\nwrite planted ALLOWED\n"
	if bob.Run.Reason != api.ReasonExited || bob.Stdout != want {
		t.Errorf("bob's run: got %s; want exited with stdout %q", describeEnd(bob), want)
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "alice-"+name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("alice's file is in the host's %s while her run lives (%v): want it in her run only", d, err)
		}
	}
	if err := alice.WriteStdin(hostileCtx(t, 5*time.Second), []byte("\n"), true); err != nil {
		t.Fatalf("write alice's stdin: %v", err)
	}
	aliceRes := testutil.Collect(hostileCtx(t, 30*time.Second), t, alice)
	if aliceRes.Run.Reason != api.ReasonExited || aliceRes.Stdout != "planted visible False\nwritten\n" {
		t.Errorf("alice's run: got %s; want exited, not seeing the planted file", describeEnd(aliceRes))
	}
	if b, err := os.ReadFile(planted); err != nil || string(b) != "planted\n" {
		t.Errorf("the host's planted file after the runs: %q (%v), want it unchanged", b, err)
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "alice-"+name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("alice's file in the host's %s after her run (%v): want it nowhere", d, err)
		}
	}
	assertContained(t, env, aliceRes.Run)
	assertContained(t, env, bob.Run)
}

// TestHostileInheritedFD: an fd the daemon inherited without close-on-exec
// (from a launcher, a shell, a supervisor) must not reach a run, or a
// student could read through it what the daemon's parent left open: here
// a root-only file.
func TestHostileInheritedFD(t *testing.T) { forHostileModes(t, hostileInheritedFD) }

func hostileInheritedFD(t *testing.T, mode testutil.Option) {
	env := testutil.NewEnv(t, hostileUIDs, mode)
	secret := filepath.Join(t.TempDir(), "root-only.txt")
	if err := os.WriteFile(secret, []byte("root-only secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(secret)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// What a parent that leaks an fd into idexd leaves: no FD_CLOEXEC.
	if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, f.Fd(), syscall.F_SETFD, 0); errno != 0 {
		t.Fatalf("clear close-on-exec: %v", errno)
	}
	env.WriteScript(t, "mallory", "main.py", `import os
for fd in range(3, 256):
    try:
        os.lseek(fd, 0, 0)
        print(fd, os.readlink("/proc/self/fd/%d" % fd), os.read(fd, 100))
    except OSError:
        pass
`)
	res := testutil.Collect(hostileCtx(t, 30*time.Second), t, hostileStart(t, env, api.RunRequest{Student: "mallory", Script: "main.py", Limits: hostileSmall}))
	if res.Run.Reason != api.ReasonExited || res.Stdout != "" {
		t.Errorf("got %s: want exited with no fd above 2 to read (the daemon's fd %d on %s must not reach runs)", describeEnd(res), f.Fd(), secret)
	}
	assertContained(t, env, res.Run)
}

// TestHostileCapacityFreedAtEnd: a client that starts a run the moment it
// sees the previous one end (the class re-running a script in a loop) must
// not be refused at_capacity for a slot that is no longer used.
func TestHostileCapacityFreedAtEnd(t *testing.T) { forHostileModes(t, hostileCapacityFreedAtEnd) }

func hostileCapacityFreedAtEnd(t *testing.T, mode testutil.Option) {
	env := testutil.NewEnv(t, hostileUIDs, mode, func(c *run.Config) {
		c.MaxRuns = 1
		c.WarmRuns = min(c.WarmRuns, 1)
	})
	env.WriteScript(t, "alice", "main.py", "pass\n")
	const n = 20
	refused, activeAfterEnd := 0, 0
	for range n {
		r, err := env.Engine.Start(hostileCtx(t, 10*time.Second), api.RunRequest{Student: "alice", Script: "main.py", Limits: hostileSmall})
		if errors.Is(err, api.ErrAtCapacity) {
			refused++
			continue
		}
		if err != nil {
			t.Fatalf("start: %v", err)
		}
		res := testutil.Collect(hostileCtx(t, 30*time.Second), t, r)
		if n := env.Engine.Active(); n != 0 {
			activeAfterEnd++
		}
		assertContained(t, env, res.Run)
	}
	if refused != 0 || activeAfterEnd != 0 {
		t.Errorf("of %d runs each started right after the previous end event: %d refused at_capacity, %d times Active() > 0 after the end event; want 0 and 0",
			n, refused, activeAfterEnd)
	}
}
