package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/client"
	"github.com/idexd/idexd/internal/harness"
)

// daemon is one idexd started from the built binary (package harness),
// with what the benchmark reads of it.
type daemon struct {
	h    *harness.Daemon
	sock string
	log  string // idexd's stderr: the "run started ... steps=" lines are read back
	conf string // the configuration file, for the results
	keep string // directory to copy the log into at stop, or ""
	c    *client.Client
}

// daemonConfig is what a section needs beyond the common configuration.
type daemonConfig struct {
	maxRuns     int
	maxOutputKB int64
	databaseURL string
	// fairDefaults keeps idexd's per-student cap and start rate (issue
	// 12) as shipped; the other sections start one student's runs far
	// more often than a class does, and turn them off.
	fairDefaults bool
	// warmKeep overrides warm_keep ("": the daemon's default).
	warmKeep string
}

// startDaemon starts idexd and waits until it is healthy.
func startDaemon(ctx context.Context, o Options, dc daemonConfig) (*daemon, error) {
	extra := ""
	if o.Config != "" {
		extra += o.Config + "\n"
	}
	if dc.databaseURL != "" {
		extra += fmt.Sprintf("database_url = %q\n", dc.databaseURL)
	}
	if dc.maxOutputKB > 0 {
		extra += fmt.Sprintf("\n[max]\noutput_kb = %d\n", dc.maxOutputKB)
	}
	h, err := harness.Start(ctx, harness.Config{
		Idexd: o.Idexd, Name: "idexbench", Host: "idexbench", Interpreter: o.Python, MaxRuns: dc.maxRuns,
		LogLevel: "info", Extra: extra, NoStudentLimits: !dc.fairDefaults,
		// What a host runs with (kept helpers wait for the next burst),
		// unless the section says otherwise.
		WarmKeep: cmp.Or(dc.warmKeep, harness.WarmKeepDefault),
		// SIGTERM: idexd drains when idexbench goes, however it goes.
		Pdeathsig: syscall.SIGTERM,
	})
	if err != nil {
		return nil, err
	}
	return &daemon{h: h, sock: h.Socket, log: h.Log, conf: h.Conf, keep: o.KeepLogs, c: h.Client}, nil
}

func (d *daemon) pid() int { return d.h.PID() }

// stop stops idexd (SIGTERM; killed after 60 s), keeps its log when asked
// and removes its directory and cgroup parent.
func (d *daemon) stop() error {
	err := d.h.Stop()
	if d.keep != "" {
		err = errors.Join(err, copyFile(d.log, filepath.Join(d.keep, d.h.CgroupParent+".log")))
	}
	return errors.Join(err, d.h.Cleanup())
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
	// One request, as a web tier would do it (an idexd without follow is
	// asked twice by the client).
	r, evs, err := c.StartRunFollow(ctx, req)
	if err != nil {
		return api.Run{}, 0, fmt.Errorf("start %s/%s: %w", req.Student, req.Script, err)
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
