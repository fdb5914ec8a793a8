package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/client"
)

// daemon is one idexd started from the built binary with a temporary
// configuration, directories and cgroup parent of its own, as e2e does.
type daemon struct {
	dir    string
	sock   string
	log    string // idexd's stderr: the "run started ... steps=" lines are read back
	parent string // cgroup parent, removed after idexd exits
	conf   string // the configuration file, for the results
	keep   string // directory to copy the log into at stop, or ""
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // Wait's result, set before exited is closed
	c      *client.Client
}

// daemonConfig is what a section needs beyond the common configuration.
type daemonConfig struct {
	maxRuns     int
	maxOutputKB int64
	databaseURL string
}

func randHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random name: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// startDaemon starts idexd and waits until idexctl health answers.
func startDaemon(ctx context.Context, o Options, dc daemonConfig) (*daemon, error) {
	// Not under /tmp: each run gets a private one, which would hide the
	// students' directories there.
	dir, err := os.MkdirTemp("/var/lib", "idexbench-")
	if err != nil {
		return nil, fmt.Errorf("daemon directory: %w", err)
	}
	// Students' uids must traverse it to reach their directories.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, errors.Join(fmt.Errorf("chmod %s: %w", dir, err), os.RemoveAll(dir))
	}
	id, err := randHex(4)
	if err != nil {
		return nil, errors.Join(err, os.RemoveAll(dir))
	}
	d := &daemon{
		dir: dir, sock: filepath.Join(dir, "idexd.sock"), log: filepath.Join(dir, "idexd.log"),
		parent: "idexbench-" + id, exited: make(chan struct{}),
	}
	conf := fmt.Sprintf(`client_group = "root"
admin_group = "root"
shutdown_grace = "1s"
interpreter = %q
host = "idexbench"
max_runs = %d
log_level = "info"
`, o.Python, dc.maxRuns)
	if dc.databaseURL != "" {
		conf += fmt.Sprintf("database_url = %q\n", dc.databaseURL)
	}
	if dc.maxOutputKB > 0 {
		conf += fmt.Sprintf("\n[max]\noutput_kb = %d\n", dc.maxOutputKB)
	}
	d.conf, d.keep = conf, o.KeepLogs
	cfgPath := filepath.Join(dir, "idexd.toml")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o600); err != nil {
		return nil, errors.Join(fmt.Errorf("write config: %w", err), os.RemoveAll(dir))
	}
	logf, err := os.Create(d.log)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("daemon log: %w", err), os.RemoveAll(dir))
	}
	d.cmd = exec.Command(o.Idexd, "--config", cfgPath, "--socket", d.sock,
		"--workdir-root", filepath.Join(dir, "students"), "--state-dir", filepath.Join(dir, "state"),
		"--cgroup-parent", d.parent)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	// idexd goes when idexbench goes, however it goes.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	err = launch(d.cmd, d.exited, &d.err)
	if cerr := logf.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("close daemon log: %w", cerr)
	}
	if err != nil {
		return nil, errors.Join(err, os.RemoveAll(dir))
	}
	d.c = client.New(d.sock)
	if err := d.waitHealthy(ctx, o.Idexctl); err != nil {
		return nil, errors.Join(err, d.stop())
	}
	return d, nil
}

// launch starts cmd from a goroutine locked to its OS thread and waits
// for it there: the parent-death signal follows the thread that forked
// the child, so that thread must live as long as the child does.
func launch(cmd *exec.Cmd, exited chan struct{}, waitErr *error) error {
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- fmt.Errorf("start %s: %w", cmd.Path, err)
			close(exited)
			return
		}
		started <- nil
		*waitErr = cmd.Wait()
		close(exited)
	}()
	return <-started
}

// waitHealthy asks the built idexctl, as a sysadmin would, until idexd is
// healthy; idexd exiting first is an error that quotes its log.
func (d *daemon) waitHealthy(ctx context.Context, idexctl string) error {
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		select {
		case <-d.exited:
			if d.err == nil {
				return fmt.Errorf("idexd exited at start with status 0: %s", d.logTail(2000))
			}
			return fmt.Errorf("idexd exited at start (%w): %s", d.err, d.logTail(2000))
		case <-ctx.Done():
			return fmt.Errorf("wait for idexd: %w", ctx.Err())
		default:
		}
		out, err := exec.CommandContext(ctx, idexctl, "--socket", d.sock, "health").CombinedOutput()
		if err == nil {
			return nil
		}
		last = strings.TrimSpace(string(out))
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("idexd not healthy within 30s (idexctl health: %s): %s", last, d.logTail(2000))
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

// stop sends SIGTERM, waits, and removes the directory and cgroup parent.
func (d *daemon) stop() error {
	var errs []error
	select {
	case <-d.exited:
	default:
		if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, fmt.Errorf("signal idexd: %w", err))
		}
		select {
		case <-d.exited:
			if d.err != nil {
				errs = append(errs, fmt.Errorf("idexd exit after SIGTERM: %w: %s", d.err, d.logTail(2000)))
			}
		case <-time.After(60 * time.Second):
			errs = append(errs, errors.New("idexd did not exit within 60s of SIGTERM; killed"))
			if err := d.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
				errs = append(errs, fmt.Errorf("kill idexd: %w", err))
			}
			<-d.exited
		}
	}
	// The bench runs in idexd's cgroups (idexd is its child), so a
	// Manager for the same relative parent names the same groups.
	if m, err := cgroup.New(d.parent); err != nil {
		errs = append(errs, fmt.Errorf("find cgroup parent %s to remove it: %w", d.parent, err))
	} else if err := m.RemoveParent(); err != nil {
		errs = append(errs, fmt.Errorf("remove cgroup parent %s: %w", d.parent, err))
	}
	if d.keep != "" {
		if err := copyFile(d.log, filepath.Join(d.keep, d.parent+".log")); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(d.dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", d.dir, err))
	}
	return errors.Join(errs...)
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return fmt.Errorf("keep idexd's log: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return fmt.Errorf("keep idexd's log: %w", err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		return fmt.Errorf("keep idexd's log: %w", err)
	}
	return nil
}

func (d *daemon) logTail(n int) string {
	b, err := os.ReadFile(d.log)
	if err != nil {
		return fmt.Sprintf("(cannot read idexd's log: %v)", err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

var (
	levelRe = regexp.MustCompile(`level=(WARN|ERROR|warning|error)`)
	msgRe   = regexp.MustCompile(`msg=("(?:[^"\\]|\\.)*"|\S+)`)
)

// problems summarizes the warnings and errors in idexd's log: how a
// daemon behaved under the load is part of the results.
func (d *daemon) problems(name string) []string {
	b, err := os.ReadFile(d.log)
	if err != nil {
		return []string{fmt.Sprintf("%s: cannot read idexd's log: %v", name, err)}
	}
	counts := map[string]int{}
	example := map[string]string{}
	var order []string
	for _, l := range strings.Split(string(b), "\n") {
		lv := levelRe.FindStringSubmatch(l)
		if lv == nil {
			continue
		}
		key := lv[1]
		if m := msgRe.FindStringSubmatch(l); m != nil {
			key += " " + m[1]
		}
		if counts[key] == 0 {
			order = append(order, key)
			example[key] = l
		}
		counts[key]++
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		ex := example[k]
		if len(ex) > 400 {
			ex = ex[:400] + "..."
		}
		out = append(out, fmt.Sprintf("%s: idexd logged %d x %s; first: %s", name, counts[k], k, ex))
	}
	return out
}

// logSize marks where a section starts in idexd's log.
func (d *daemon) logSize() int64 {
	fi, err := os.Stat(d.log)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logSince returns idexd's log from offset on.
func (d *daemon) logSince(off int64) (string, error) {
	b, err := os.ReadFile(d.log)
	if err != nil {
		return "", fmt.Errorf("read idexd's log: %w", err)
	}
	if off > int64(len(b)) {
		off = 0
	}
	return string(b[off:]), nil
}

// script writes a script into a student's directory, as the web tier does
// (mode 0666), creating the student first.
func (d *daemon) script(ctx context.Context, student, name, src string) (string, error) {
	st, err := d.c.EnsureStudent(ctx, student)
	if err != nil {
		return "", fmt.Errorf("ensure student %s: %w", student, err)
	}
	p := filepath.Join(st.Workdir, name)
	if err := os.WriteFile(p, []byte(src), 0o666); err != nil {
		return "", fmt.Errorf("write script %s: %w", p, err)
	}
	if err := os.Chmod(p, 0o666); err != nil {
		return "", fmt.Errorf("chmod script %s: %w", p, err)
	}
	return st.Workdir, nil
}

var (
	stepsRe = regexp.MustCompile(`msg="run started".* steps="([^"]*)"`)
	stepRe  = regexp.MustCompile(`(\w+)=([0-9.]+)ms`)
)

// startSteps is what idexd's own "run started" lines say about one kind
// of start (warm: a prepared helper was claimed; cold: none was ready).
type startSteps struct {
	n     int
	names []string             // in the order they appear
	med   map[string]float64   // median per step, ms
	total float64              // median of the per-run sum of steps, ms
	vals  map[string][]float64 // every value, for the medians
	sums  []float64
}

// parseSteps reads idexd's "run started ... steps=" lines, split into
// warm and cold starts.
func parseSteps(log string) (warm, cold *startSteps) {
	warm = &startSteps{vals: map[string][]float64{}, med: map[string]float64{}}
	cold = &startSteps{vals: map[string][]float64{}, med: map[string]float64{}}
	for _, l := range strings.Split(log, "\n") {
		m := stepsRe.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		steps := stepRe.FindAllStringSubmatch(m[1], -1)
		k := cold
		for _, s := range steps {
			if s[1] == "claim" {
				k = warm
			}
		}
		k.n++
		var total float64
		for _, s := range steps {
			v, err := strconv.ParseFloat(s[2], 64)
			if err != nil {
				continue
			}
			if _, ok := k.vals[s[1]]; !ok {
				k.names = append(k.names, s[1])
			}
			k.vals[s[1]] = append(k.vals[s[1]], v)
			total += v
		}
		k.sums = append(k.sums, total)
	}
	for _, k := range []*startSteps{warm, cold} {
		for name, v := range k.vals {
			k.med[name] = percentile(v, 50)
		}
		k.total = percentile(k.sums, 50)
	}
	return warm, cold
}

func (k *startSteps) String() string {
	parts := make([]string, 0, len(k.names))
	for _, name := range k.names {
		parts = append(parts, fmt.Sprintf("%s %.2f", name, k.med[name]))
	}
	return fmt.Sprintf("%.2f ms (%s)", k.total, strings.Join(parts, ", "))
}

// stepsText formats what idexd's log says about the starts in it.
func stepsText(log string) string {
	warm, cold := parseSteps(log)
	if warm.n+cold.n == 0 {
		return "no \"run started\" lines with steps in idexd's log"
	}
	s := fmt.Sprintf("%d warm starts, %d cold", warm.n, cold.n)
	if warm.n > 0 {
		s += "; warm median " + warm.String()
	}
	if cold.n > 0 {
		s += "; cold median " + cold.String()
	}
	return s
}

// startShare says how much of a latency gap idexd's own start-up path
// explains, for the "why" of a miss.
func startShare(log string, gap float64) string {
	warm, cold := parseSteps(log)
	k := warm
	if cold.n > warm.n {
		k = cold
	}
	if k.n == 0 {
		return "idexd logged no step timings."
	}
	slow := k.names[0]
	for _, name := range k.names {
		if k.med[name] > k.med[slow] {
			slow = name
		}
	}
	kind := "warm"
	if k == cold {
		kind = "cold"
	}
	rest := fmt.Sprintf("the other %.2f ms are spent after the child was released (the interpreter's start-up next to bare's, "+
		"output delivery, the client's second request and, for start->end, the end path)", gap-k.total)
	if gap < k.total {
		rest = "that is more than the whole gap: the start-up includes the fork and exec that bare pays too"
	}
	return fmt.Sprintf("idexd's own start-up (request to child released; %d warm, %d cold starts) is a median %.2f ms of it, "+
		"the slowest step %s at %.2f ms (%s); %s.", warm.n, cold.n, k.total, slow, k.med[slow], kind, rest)
}

// runToEnd starts req and follows its events to the end. firstOut, when
// not nil, is called once at the first stdout byte.
func runToEnd(ctx context.Context, c *client.Client, req api.RunRequest, firstOut func()) (api.Run, int64, error) {
	// A run that never ends is a finding, not a reason to hang.
	ctx, cancel := context.WithTimeout(ctx, runTimeout)
	defer cancel()
	r, err := c.StartRun(ctx, req)
	if err != nil {
		return api.Run{}, 0, fmt.Errorf("start %s/%s: %w", req.Student, req.Script, err)
	}
	evs, err := c.Events(ctx, r.ID, 0)
	if err != nil {
		return api.Run{}, 0, fmt.Errorf("events of run %s: %w", r.ID, err)
	}
	defer evs.Close() //nolint:errcheck // a read stream, read to its end
	var out int64
	for {
		ev, err := evs.Next()
		if err != nil {
			return api.Run{}, out, fmt.Errorf("events of run %s: %w", r.ID, err)
		}
		switch ev.Type {
		case api.EventStdout:
			if out == 0 && firstOut != nil {
				firstOut()
			}
			out += int64(len(ev.Bytes()))
		case api.EventEnd:
			return *ev.Run, out, nil
		}
	}
}

// runTimeout bounds one run of the benchmark, from start request to end.
const runTimeout = 2 * time.Minute

// wantExit0 turns a run that did not exit 0 into an error.
func wantExit0(r api.Run) error {
	if r.Reason != api.ReasonExited || r.ExitCode == nil || *r.ExitCode != 0 {
		return fmt.Errorf("run %s ended %s (exit %v, signal %q, error %q), want exited 0", r.ID, r.Reason, r.ExitCode, r.Signal, r.Error)
	}
	return nil
}
