package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/client"
)

// Thresholds say how flat "flat" is for the cycles. Every sample is taken
// at rest (no run active, the warm pool full: rest.go), so fds and
// goroutines are exact there. The defaults:
//
//   - RSS: a least-squares slope of at most 1 MiB per 10,000 cycles
//     (102.4 KiB per 1000) after warm-up. A leak of one 100-byte object per
//     run is ~1 MiB per 10k cycles, so this catches per-run leaks of that
//     size and up, while the Go heap's own steps (GC pacing, the kept runs
//     reaching their plateau at keep_ended) are taken by the warm-up.
//   - fds and goroutines: the slope must be at most 0.05 per 1000 cycles
//     (one fd or goroutine per 20,000 cycles), and the last sample may
//     exceed the first (before any cycle, at rest too) by at most
//     FinalTolerance.
//   - idexd's namespaces and mounts (Census.OwnNS, OwnMounts): none more
//     in the last sample than in the first, the network namespaces kept
//     for students' next runs aside (discountKeptNetworks), themselves
//     held to netns.DefaultMaxKept.
//   - the host's: per namespace type at most HostNamespaces more, and at
//     most HostMounts more lines in the daemon's mount table, HostNSFS
//     more nsfs mounts. Other work on a shared host moves these (a test's
//     live runs each in namespaces of their own, a test's tmpfs); a leak
//     per run moves them by thousands over a soak (docs/load.md).
type Thresholds struct {
	RSSKiBPer1000     float64
	FDsPer1000        float64
	GoroutinesPer1000 float64
	FinalTolerance    int
	HostNamespaces    int
	HostMounts        int
	HostNSFS          int
}

// DefaultThresholds are the documented ones (docs/load.md).
var DefaultThresholds = Thresholds{RSSKiBPer1000: 102.4, FDsPer1000: 0.05, GoroutinesPer1000: 0.05, FinalTolerance: 2,
	HostNamespaces: 128, HostMounts: 16, HostNSFS: 4}

// CycleOptions configure the start/stop cycles.
type CycleOptions struct {
	Socket string
	PID    int
	Cycles int
	// SampleEvery cycles, the workers pause, the daemon quiets down and is
	// sampled (default 1000).
	SampleEvery int
	// Concurrency workers, each with a student and script of its own
	// (default 4).
	Concurrency int
	Prefix      string // default "cycle"
	// Warmup is the share of cycles left out of the slopes (default 0.1;
	// see fit for the floor).
	Warmup float64
	// WarmRuns is the daemon's warm_runs, as in harness.Config (0: the
	// daemon's default, < 0: none): samples wait until that many warm
	// helpers are ready.
	WarmRuns int
	// Duration bounds the whole thing (default 4h).
	Duration   time.Duration
	Thresholds Thresholds
	Out        io.Writer
}

// Sample is the daemon at one moment at rest.
type Sample struct {
	Cycles     int
	At         time.Duration
	RSSKiB     int64
	FDs        int
	Goroutines int
	Threads    int
	RunsKept   int
	// NetworksKept are idexd's network namespaces kept for students'
	// next runs, already taken out of FDs and Census (discountKeptNetworks).
	NetworksKept int
	// Rest is false when the daemon did not come to rest in time: the
	// sample is not comparable and the check fails.
	Rest   bool
	Census Census
}

// CycleReport is what the cycles found.
type CycleReport struct {
	PID      int
	Cycles   int // done
	Samples  []Sample
	Fitted   int // samples in the fit
	Warmup   int // cycles left out of the fit
	Reasons  map[api.Reason]int
	Errors   int
	Wrong    int
	Problems []string
	// Slopes per 1000 cycles.
	RSSKiBSlope, FDSlope, GoroutineSlope float64
	Thresholds                           Thresholds
	Failed                               []string
}

// Cycles runs the start/stop cycles of a sleeping script against the
// daemon and fits the slopes of its RSS, fds and goroutines.
func Cycles(ctx context.Context, o CycleOptions) (*CycleReport, error) {
	if o.Cycles <= 0 {
		return nil, errors.New("cycles must be > 0")
	}
	if o.SampleEvery <= 0 {
		o.SampleEvery = 1000
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.Prefix == "" {
		o.Prefix = "cycle"
	}
	if o.Warmup <= 0 {
		o.Warmup = 0.1
	}
	if o.Duration <= 0 {
		o.Duration = 4 * time.Hour
	}
	if o.Thresholds == (Thresholds{}) {
		o.Thresholds = DefaultThresholds
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	ctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	c := &client.Client{Socket: o.Socket, MaxIdleConns: o.Concurrency + 4}
	defer c.CloseIdleConnections()
	pid := o.PID
	if pid == 0 {
		var err error
		if pid, err = FindDaemonPID(o.Socket); err != nil {
			return nil, err
		}
	}
	rep := &CycleReport{PID: pid, Reasons: map[api.Reason]int{}, Thresholds: o.Thresholds}
	names := make([]string, o.Concurrency)
	uids := map[int]bool{}
	root := ""
	for i := range names {
		names[i] = fmt.Sprintf("%s%02d", o.Prefix, i)
		st, err := c.EnsureStudent(ctx, names[i])
		if err != nil {
			return nil, fmt.Errorf("create student %s: %w", names[i], err)
		}
		if err := writeScript(st.Workdir, sleeperSpec.kind.File(), sleeperSpec.src); err != nil {
			return nil, err
		}
		uids[int(st.UID)], root = true, filepath.Dir(st.Workdir)
	}
	rs := newRestSampler(o.Socket, c, censusScope{pid: pid, dirs: ownDirs(root, filepath.Dir(o.Socket)), match: studentsMatch(uids, root)}, o.WarmRuns)
	defer rs.close()
	t0 := time.Now()
	sample := func(done int) error {
		ds, rest, err := rs.sample(ctx, restTimeout)
		if err != nil {
			return err
		}
		s := Sample{Cycles: done, At: time.Since(t0), RSSKiB: ds.Proc.RSSKiB, FDs: ds.Debug.FDs, Goroutines: ds.Debug.Goroutines,
			Threads: ds.Proc.Threads, RunsKept: ds.Debug.RunsKept, NetworksKept: ds.Debug.NetworksKept, Rest: rest, Census: ds.Census}
		rep.Samples = append(rep.Samples, s)
		rate := 0.0
		if s.At > 0 {
			rate = float64(done) / s.At.Seconds()
		}
		cs := s.Census
		fmt.Fprintf(o.Out, "idexload: cycles %d: RSS %.1f MiB, fds %d, goroutines %d, threads %d, runs_kept %d, networks_kept %d (not in fds or namespaces), warm helpers %d; "+
			"namespaces idexd %d host %d, mounts %d (idexd %d, nsfs %d) (%.1f cycles/s)\n",
			done, float64(s.RSSKiB)/1024, s.FDs, s.Goroutines, s.Threads, s.RunsKept, s.NetworksKept, cs.Children,
			cs.OwnNS.total(), cs.HostNS.total(), cs.Mounts, cs.OwnMounts, cs.NSFS, rate)
		if !rest {
			fmt.Fprintf(o.Out, "idexload: cycles %d: the daemon did not come to rest within %s: %s\n", done, restTimeout, rs.unrest(ds))
		}
		return nil
	}
	if err := sample(0); err != nil {
		return nil, err
	}
	first := rep.Samples[0]
	fmt.Fprintf(o.Out, "idexload: at rest before the cycles: daemon fds by kind: %s; namespaces of idexd: %s; host namespaces: %s\n",
		first.Census.FDs, first.Census.OwnNS, first.Census.HostNS)
	var mu sync.Mutex
	problem := func(counter *int, format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		*counter++
		if len(rep.Problems) < maxProblems {
			rep.Problems = append(rep.Problems, fmt.Sprintf(format, args...))
		}
	}
	for done := 0; done < o.Cycles && ctx.Err() == nil; {
		batch := min(o.SampleEvery, o.Cycles-done)
		var next atomic.Int64
		var wg sync.WaitGroup
		for w := 0; w < o.Concurrency; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for ctx.Err() == nil {
					i := next.Add(1)
					if i > int64(batch) {
						return
					}
					// Every other cycle waits for the script's first line,
					// so the interpreter really ran; the others stop a run
					// that may still be starting.
					reason, err := cycle(ctx, c, names[w], (done+int(i))%2 == 0)
					mu.Lock()
					if err == nil {
						rep.Reasons[reason]++
					}
					mu.Unlock()
					switch {
					case err != nil:
						problem(&rep.Errors, "cycle of %s: %v", names[w], err)
					case reason != api.ReasonStopped:
						problem(&rep.Wrong, "cycle of %s ended %s, want stopped", names[w], reason)
					}
				}
			}(w)
		}
		wg.Wait()
		done += batch
		rep.Cycles = done
		if err := sample(done); err != nil {
			return rep, err
		}
	}
	rep.fit(o.Cycles, o.Warmup)
	return rep, nil
}

// cycle starts the sleeper, optionally waits for its first line, stops it
// and returns the reason of its end.
func cycle(ctx context.Context, c *client.Client, student string, waitOutput bool) (api.Reason, error) {
	r, err := c.StartRun(ctx, api.RunRequest{Student: student, Script: sleeperSpec.kind.File(), Limits: sleeperSpec.limits})
	if err != nil {
		return "", fmt.Errorf("start: %w", err)
	}
	if waitOutput {
		st, err := c.Events(ctx, r.ID, 0)
		if err != nil {
			return "", fmt.Errorf("events of run %s: %w", r.ID, err)
		}
		ev, err := st.Next()
		cerr := st.Close()
		if err != nil || ev.Type != api.EventStdout {
			return "", fmt.Errorf("first event of run %s: %+v %w", r.ID, ev, errors.Join(err, cerr))
		}
	}
	final, err := c.StopRun(ctx, r.ID)
	if err != nil {
		return "", fmt.Errorf("stop run %s: %w", r.ID, err)
	}
	if final.State != api.StateEnded {
		return "", fmt.Errorf("stop of run %s answered state %s", r.ID, final.State)
	}
	return final.Reason, nil
}

// slope is the least-squares slope of ys over xs.
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	if n < 2 {
		return 0
	}
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d
}

// minWarmup is the floor of the warm-up. A fresh daemon's RSS climbs for
// its first few thousand runs and then levels (here: 25.5 MiB at cycle
// 2000, 28.1 at 5000, 27.8 to 30.5 afterwards), likely SQLite's page
// cache (2000 KiB by default) filling until the run table outgrows it,
// at ~4500 runs, and the kept runs reaching their high-water mark. With
// 10 % of 20,000 cycles as warm-up, that climb was in the fit and read
// +89 to +94 KiB per 1000 cycles on a flat daemon (docs/load.md).
const minWarmup = 5000

// fit computes the slopes over the samples past the warm-up (the share
// warmup of the cycles, at least minWarmup but at most half of them; at
// least the last three samples) and decides.
func (r *CycleReport) fit(total int, warmup float64) {
	r.Warmup = min(max(int(math.Round(float64(total)*warmup)), minWarmup), total/2)
	var fitted []Sample
	for _, s := range r.Samples {
		if s.Cycles >= r.Warmup {
			fitted = append(fitted, s)
		}
	}
	if len(fitted) < 3 && len(r.Samples) >= 3 {
		fitted = r.Samples[len(r.Samples)-3:]
	}
	r.Fitted = len(fitted)
	xs := make([]float64, len(fitted))
	rss := make([]float64, len(fitted))
	fds := make([]float64, len(fitted))
	gs := make([]float64, len(fitted))
	for i, s := range fitted {
		xs[i] = float64(s.Cycles) / 1000
		rss[i], fds[i], gs[i] = float64(s.RSSKiB), float64(s.FDs), float64(s.Goroutines)
	}
	r.RSSKiBSlope, r.FDSlope, r.GoroutineSlope = slope(xs, rss), slope(xs, fds), slope(xs, gs)
	t := r.Thresholds
	if r.Errors > 0 || r.Wrong > 0 {
		r.Failed = append(r.Failed, fmt.Sprintf("%d failed cycles, %d wrong reasons", r.Errors, r.Wrong))
	}
	var restless []string
	for _, s := range r.Samples {
		if !s.Rest {
			restless = append(restless, fmt.Sprintf("cycle %d (%d live children)", s.Cycles, s.Census.Children))
		}
	}
	if len(restless) > 0 {
		r.Failed = append(r.Failed, fmt.Sprintf("%d samples not at rest, not comparable: %s", len(restless), strings.Join(restless, ", ")))
	}
	if len(fitted) < 3 {
		r.Failed = append(r.Failed, fmt.Sprintf("only %d samples to fit: run more cycles or sample more often", len(fitted)))
		return
	}
	if r.RSSKiBSlope > t.RSSKiBPer1000 {
		r.Failed = append(r.Failed, fmt.Sprintf("RSS grows %.1f KiB per 1000 cycles (limit %.1f)", r.RSSKiBSlope, t.RSSKiBPer1000))
	}
	if r.FDSlope > t.FDsPer1000 {
		r.Failed = append(r.Failed, fmt.Sprintf("fds grow %.3f per 1000 cycles (limit %.3f); by kind, last fitted sample against the first: %s",
			r.FDSlope, t.FDsPer1000, fitted[len(fitted)-1].Census.FDs.Diff(fitted[0].Census.FDs)))
	}
	if r.GoroutineSlope > t.GoroutinesPer1000 {
		r.Failed = append(r.Failed, fmt.Sprintf("goroutines grow %.3f per 1000 cycles (limit %.3f)", r.GoroutineSlope, t.GoroutinesPer1000))
	}
	first, last := r.Samples[0], r.Samples[len(r.Samples)-1]
	if last.FDs > first.FDs+t.FinalTolerance {
		r.Failed = append(r.Failed, fmt.Sprintf("fds %d before the cycles, %d after (tolerance %d); by kind: %s",
			first.FDs, last.FDs, t.FinalTolerance, last.Census.FDs.Diff(first.Census.FDs)))
	}
	if last.Goroutines > first.Goroutines+t.FinalTolerance {
		r.Failed = append(r.Failed, fmt.Sprintf("goroutines %d before the cycles, %d after (tolerance %d)", first.Goroutines, last.Goroutines, t.FinalTolerance))
	}
	for _, s := range r.Samples {
		if p := checkKeptNetworks(api.DebugState{NetworksKept: s.NetworksKept}); p != "" {
			r.Failed = append(r.Failed, fmt.Sprintf("after %d cycles: %s", s.Cycles, p))
		}
	}
	g := compareCensus(first.Census, last.Census, t)
	r.Failed = append(r.Failed, g.Problems...)
}

// Pass reports whether the cycles stayed flat.
func (r *CycleReport) Pass() bool { return len(r.Failed) == 0 }

// Print writes the summary; the last line says PASS or FAIL.
func (r *CycleReport) Print(w io.Writer) {
	fmt.Fprintf(w, "idexload: %d start/stop cycles against pid %d, ended by reason: %s; errors %d, wrong reasons %d\n",
		r.Cycles, r.PID, reasons(r.Reasons), r.Errors, r.Wrong)
	if len(r.Samples) > 0 {
		first, last := r.Samples[0], r.Samples[len(r.Samples)-1]
		fmt.Fprintf(w, "  daemon: RSS %.1f -> %.1f MiB, fds %d -> %d, goroutines %d -> %d, threads %d -> %d, in %s\n",
			float64(first.RSSKiB)/1024, float64(last.RSSKiB)/1024, first.FDs, last.FDs, first.Goroutines, last.Goroutines,
			first.Threads, last.Threads, last.At.Round(time.Second))
		b, a := first.Census, last.Census
		fmt.Fprintf(w, "  at rest, first -> last sample: namespaces of idexd %d -> %d, its mounts %d -> %d; host: namespaces %d -> %d (%s), mount table %d -> %d lines, nsfs mounts %d -> %d\n",
			b.OwnNS.total(), a.OwnNS.total(), b.OwnMounts, a.OwnMounts, b.HostNS.total(), a.HostNS.total(), a.HostNS.Diff(b.HostNS),
			b.Mounts, a.Mounts, b.NSFS, a.NSFS)
	}
	t := r.Thresholds
	fmt.Fprintf(w, "  slopes per 1000 cycles over %d samples after %d warm-up cycles: RSS %+.1f KiB (limit %.1f), fds %+.3f (limit %.3f), goroutines %+.3f (limit %.3f)\n",
		r.Fitted, r.Warmup, r.RSSKiBSlope, t.RSSKiBPer1000, r.FDSlope, t.FDsPer1000, r.GoroutineSlope, t.GoroutinesPer1000)
	for _, p := range r.Problems {
		fmt.Fprintf(w, "  problem: %s\n", p)
	}
	if !r.Pass() {
		for _, f := range r.Failed {
			fmt.Fprintf(w, "  fail: %s\n", f)
		}
		fmt.Fprintf(w, "FAIL: the daemon is not flat over %d cycles\n", r.Cycles)
		return
	}
	fmt.Fprintf(w, "PASS: %d cycles, RSS, fds and goroutines flat, no namespace or mount left\n", r.Cycles)
}
