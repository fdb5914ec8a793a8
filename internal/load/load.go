package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/client"
)

// Options configure a mix.
type Options struct {
	Socket string
	// PID is the daemon's pid; 0 finds it from the socket.
	PID int
	// Students is how many simulated students (Prefix00, Prefix01, ...).
	Students int
	Prefix   string
	// Runs is how many runs of the mix to start.
	Runs        int
	Concurrency int
	// Duration bounds the time spent starting the mix's runs; runs in
	// flight then get DrainTimeout to end.
	Duration     time.Duration
	DrainTimeout time.Duration
	// Hold, when > 0, first starts this many runs that wait on stdin,
	// checks they are all alive at once, then ends them (half by stdin,
	// half by stop).
	Hold int
	// Mix weighs the kinds; nil is the default mix.
	Mix map[Kind]int
	// StopRate is the share of runs stopped at a random moment;
	// ReattachRate the share whose reader disconnects and reattaches.
	StopRate     float64
	ReattachRate float64
	Seed         uint64
	// UIDMin..UIDMax is the students' uid range for the process check.
	// Only processes whose cwd is under the students' root count, unless
	// AllUIDs: then every process in the range does.
	UIDMin, UIDMax int
	AllUIDs        bool
	// Settle bounds how long the checks wait for the daemon's counts to
	// come back to what they were before the load.
	Settle time.Duration
	// WarmRuns is the daemon's warm_runs, as in harness.Config (0: the
	// daemon's default, < 0: none): the daemon is at rest, and compared,
	// only with that many warm helpers ready.
	WarmRuns int
	// Out receives progress and the summary; nil discards them.
	Out io.Writer
}

func (o *Options) defaults() {
	if o.Students <= 0 {
		o.Students = 60
	}
	if o.Prefix == "" {
		o.Prefix = "load"
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 32
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Minute
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 2 * time.Minute
	}
	if o.Mix == nil {
		o.Mix, _ = ParseMix("") //nolint:errcheck // the default mix always parses
	}
	if o.UIDMin == 0 && o.UIDMax == 0 {
		o.UIDMin, o.UIDMax = 200000, 299999
	}
	if o.Settle <= 0 {
		o.Settle = 30 * time.Second
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
}

// DaemonState is one look at the daemon.
type DaemonState struct {
	Debug  api.DebugState
	Proc   ProcSample
	Census Census // empty in a look taken under load
}

// Leftovers are the failure counts of a mix: each must be zero.
type Leftovers struct {
	Cgroups        int // debug state's run cgroups above the baseline
	CgroupDirs     int // run cgroup directories of the load's students, any hierarchy
	FDs            int // daemon fds above the baseline
	Goroutines     int // daemon goroutines above the baseline
	Locks          int // locks held above the baseline
	RunsActive     int // active runs above the baseline
	RunningRecords int // records of the load's students still "running"
	Namespaces     int // namespaces held by idexd, its runs or its mounts above the baseline
	Mounts         int // mounts under the daemon's directories (or nsfs of its namespaces) above the baseline
	Host           int // host namespaces, mount lines, nsfs mounts above the baseline by more than their tolerance
	Processes      int // processes of the load's students alive (zombies excluded)
	FilesOutside   int // files where a run should not have written
	MissingMarkers int // runs that ended normally without their marker file
	EventsLost     int
	EventsDup      int
	WrongOutcomes  int // wrong reason, output, exit code or record
	Errors         int // requests that failed (not counting at_capacity retries)
}

func (l Leftovers) total() int {
	return l.Cgroups + l.CgroupDirs + l.FDs + l.Goroutines + l.Locks + l.RunsActive + l.RunningRecords +
		l.Namespaces + l.Mounts + l.Host + l.Processes + l.FilesOutside + l.MissingMarkers + l.EventsLost + l.EventsDup + l.WrongOutcomes + l.Errors
}

// Report is what a mix did and found.
type Report struct {
	mu         sync.Mutex
	PID        int
	Started    int
	Ended      map[api.Reason]int
	ByKind     map[Kind]map[api.Reason]int
	Refused    map[api.Code]int // at_capacity answers, retried
	Stopped    int              // stop requests sent
	Reattached int              // runs whose reader disconnected at least once
	Reconnects int
	Events     int // events compared with the full stream
	HoldPeak   int // runs_active seen with every held run alive
	HoldAlive  int // held runs' processes seen alive at once
	// CgroupHierarchies is how many hierarchies the cgroup directory
	// check looked into (learnt from a live run).
	CgroupHierarchies int
	Zombies           int // zombies of the students seen at the end (not failures)
	Elapsed           time.Duration
	Before            DaemonState
	After             DaemonState
	Left              Leftovers
	// Problems holds the first problems in words.
	Problems []string
	problems int
}

const maxProblems = 40

func newReport() *Report {
	return &Report{Ended: map[api.Reason]int{}, ByKind: map[Kind]map[api.Reason]int{}, Refused: map[api.Code]int{}}
}

func (r *Report) problem(counter *int, format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if counter != nil {
		*counter++
	}
	r.problems++
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

// Failures is the number of non-zero checks' counts; 0 means the load passed.
func (r *Report) Failures() int { return r.Left.total() }

// student is one simulated student.
type student struct {
	name    string
	uid     uint32
	workdir string
}

type mix struct {
	o        Options
	c        *client.Client
	rep      *Report
	students []student
	byName   map[string]*student
	root     string
	rs       *restSampler
	kinds    []kindSpec // with weight > 0
	weights  int
	seq      atomic.Int64
	cg       cgroupDirs

	busyMu sync.Mutex
	busy   map[string]bool // student/script running now: the lock is theirs
}

// Run drives one mix and its checks. The error is for a load that could
// not be carried out (daemon unreachable); what the checks found is in
// the report (Failures).
func Run(ctx context.Context, o Options) (*Report, error) {
	o.defaults()
	m := &mix{o: o, c: &client.Client{Socket: o.Socket, MaxIdleConns: o.Concurrency + 8}, rep: newReport(), byName: map[string]*student{}, busy: map[string]bool{}}
	defer m.c.CloseIdleConnections()
	for _, sp := range specs {
		if w := o.Mix[sp.kind]; w > 0 {
			sp.weight = w
			m.kinds = append(m.kinds, sp)
			m.weights += w
		}
	}
	if m.weights == 0 && o.Runs > 0 {
		return nil, errors.New("the mix has no kind with a weight above 0")
	}
	pid := o.PID
	if pid == 0 {
		var err error
		if pid, err = FindDaemonPID(o.Socket); err != nil {
			return nil, err
		}
	}
	m.rep.PID = pid
	if err := m.setup(ctx); err != nil {
		return nil, err
	}
	uids := map[int]bool{}
	for _, s := range m.students {
		uids[int(s.uid)] = true
	}
	m.rs = newRestSampler(o.Socket, m.c, censusScope{pid: pid, dirs: ownDirs(m.root, filepath.Dir(o.Socket)), match: studentsMatch(uids, m.root)}, o.WarmRuns)
	defer m.rs.close()
	before, rest, err := m.rs.sample(ctx, restTimeout)
	if err != nil {
		return nil, err
	}
	if !rest {
		m.rep.problem(&m.rep.Left.Errors, "the daemon did not come to rest before the load within %s (%s): counts after it are not comparable",
			restTimeout, m.rs.unrest(before))
	}
	m.rep.Before = before
	rootBefore, err := listNames(m.root)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if o.Hold > 0 {
		m.hold(ctx)
	}
	if o.Runs > 0 {
		m.runMix(ctx)
	}
	m.rep.Elapsed = time.Since(start)
	m.check(ctx, rootBefore)
	return m.rep, nil
}

func (m *mix) logf(format string, args ...any) {
	fmt.Fprintf(m.o.Out, "idexload: "+format+"\n", args...)
}

// setup creates the students and writes every script into their directories.
func (m *mix) setup(ctx context.Context) error {
	holdFiles := 0
	if m.o.Hold > 0 {
		holdFiles = (m.o.Hold + m.o.Students - 1) / m.o.Students
	}
	for i := 0; i < m.o.Students; i++ {
		name := fmt.Sprintf("%s%02d", m.o.Prefix, i)
		st, err := m.c.EnsureStudent(ctx, name)
		if err != nil {
			return fmt.Errorf("create student %s: %w", name, err)
		}
		s := student{name: name, uid: st.UID, workdir: st.Workdir}
		for _, sp := range specs {
			if err := writeScript(s.workdir, sp.kind.File(), sp.src); err != nil {
				return err
			}
		}
		for k := 0; k < holdFiles; k++ {
			if err := writeScript(s.workdir, holdFile(k), holdSpec.src); err != nil {
				return err
			}
		}
		m.students = append(m.students, s)
	}
	for i := range m.students {
		m.byName[m.students[i].name] = &m.students[i]
	}
	m.root = filepath.Dir(m.students[0].workdir)
	return nil
}

func holdFile(k int) string { return fmt.Sprintf("%shold_%d.py", scriptPrefix, k) }

// writeScript saves a script as the web tier does: mode 0666, so that the
// student's runs may rewrite it.
func writeScript(dir, name, src string) error {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(src), 0o666); err != nil {
		return fmt.Errorf("write script %s: %w", p, err)
	}
	// WriteFile's mode passes through the umask.
	if err := os.Chmod(p, 0o666); err != nil {
		return fmt.Errorf("chmod script %s: %w", p, err)
	}
	return nil
}

func daemonState(ctx context.Context, c *client.Client, pid int) (DaemonState, error) {
	var s DaemonState
	var err error
	if s.Debug, err = c.DebugState(ctx); err != nil {
		return s, fmt.Errorf("daemon state: %w", err)
	}
	if s.Proc, err = SampleProc(pid); err != nil {
		return s, err
	}
	return s, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait: %w", ctx.Err())
	}
}

// claim picks a student whose copy of file is not running, so that the
// load never meets its own locks; it gives up (false) after many tries.
func (m *mix) claim(rng *rand.Rand, file string) (*student, bool) {
	m.busyMu.Lock()
	defer m.busyMu.Unlock()
	for try := 0; try < 4*len(m.students); try++ {
		s := &m.students[rng.IntN(len(m.students))]
		key := s.name + "/" + file
		if !m.busy[key] {
			m.busy[key] = true
			return s, true
		}
	}
	return nil, false
}

func (m *mix) release(s *student, file string) {
	m.busyMu.Lock()
	delete(m.busy, s.name+"/"+file)
	m.busyMu.Unlock()
}

func (m *mix) pick(rng *rand.Rand) kindSpec {
	n := rng.IntN(m.weights)
	for _, k := range m.kinds {
		if n < k.weight {
			return k
		}
		n -= k.weight
	}
	return m.kinds[len(m.kinds)-1]
}

// runMix starts o.Runs runs from o.Concurrency workers, no new one after
// o.Duration, and waits (DrainTimeout) for those in flight.
func (m *mix) runMix(ctx context.Context) {
	startCtx, cancelStart := context.WithTimeout(ctx, m.o.Duration)
	defer cancelStart()
	runCtx, cancelRun := context.WithTimeout(ctx, m.o.Duration+m.o.DrainTimeout)
	defer cancelRun()
	var next atomic.Int64
	var done atomic.Int64
	var wg sync.WaitGroup
	progress := time.NewTicker(10 * time.Second)
	defer progress.Stop()
	stopProgress := make(chan struct{})
	go func() {
		t0 := time.Now()
		for {
			select {
			case <-progress.C:
				m.logf("%d/%d runs ended after %s", done.Load(), m.o.Runs, time.Since(t0).Round(time.Second))
			case <-stopProgress:
				return
			}
		}
	}()
	for w := 0; w < m.o.Concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(m.o.Seed, uint64(w)+1))
			for startCtx.Err() == nil {
				i := next.Add(1)
				if i > int64(m.o.Runs) {
					return
				}
				// With few students, every copy of a kind may be running:
				// pick again rather than meet the load's own lock.
				var sp kindSpec
				var s *student
				ok := false
				for try := 0; try < 200 && !ok && startCtx.Err() == nil; try++ {
					sp = m.pick(rng)
					if s, ok = m.claim(rng, sp.kind.File()); !ok {
						time.Sleep(5 * time.Millisecond)
					}
				}
				if !ok {
					m.rep.problem(&m.rep.Left.Errors, "no student free to run anything after 200 tries: more students than concurrency, please")
					continue
				}
				m.one(startCtx, runCtx, rng, sp, s)
				m.release(s, sp.kind.File())
				done.Add(1)
			}
		}(w)
	}
	wg.Wait()
	close(stopProgress)
	if int(next.Load()) <= m.o.Runs {
		m.logf("duration %s reached: %d of %d runs started", m.o.Duration, m.rep.Started, m.o.Runs)
		m.stopUnseen(runCtx)
	}
}

// stopUnseen stops the runs whose start the daemon answered after the
// load's duration had cancelled the request: the load never learnt their
// ids, so nobody answers their input. An input kind would wait for it
// until input_wait_seconds (the wall limit does not count that wait) and
// the daemon would not come to rest. Every run the load knows has ended
// by now, so whatever still runs is such a run.
func (m *mix) stopUnseen(ctx context.Context) {
	runs, err := m.c.ListRuns(ctx, client.ListFilter{State: api.StateRunning})
	if err != nil {
		m.rep.problem(&m.rep.Left.Errors, "list runs after the load: %v", err)
		return
	}
	for _, r := range runs {
		if _, err := m.c.StopRun(ctx, r.ID); err != nil {
			m.rep.problem(&m.rep.Left.Errors, "stop run %s started after the load's duration: %v", r.ID, err)
		}
	}
	if len(runs) > 0 {
		m.logf("stopped %d runs whose start was answered after the duration ran out", len(runs))
	}
}

// runRec is one run as the load saw it.
type runRec struct {
	sp       kindSpec
	s        *student
	tok      string
	id       string
	stop     bool
	stopDone chan stopResult
	seen     []api.Event
	cuts     int
}

type stopResult struct {
	run api.Run
	err error
}

func (m *mix) token(s *student) string {
	return fmt.Sprintf("%s.%d", s.name, m.seq.Add(1))
}

// start starts a run, retrying at_capacity answers (counted) for at most a
// minute; other refusals are problems.
func (m *mix) start(ctx context.Context, req api.RunRequest) (api.Run, error) {
	backoff := 20 * time.Millisecond
	deadline := time.Now().Add(time.Minute)
	for {
		r, err := m.c.StartRun(ctx, req)
		if err == nil {
			m.rep.mu.Lock()
			m.rep.Started++
			m.rep.mu.Unlock()
			return r, nil
		}
		if !errors.Is(err, api.ErrAtCapacity) || time.Now().After(deadline) {
			return r, err
		}
		m.rep.mu.Lock()
		m.rep.Refused[api.CodeAtCapacity]++
		m.rep.mu.Unlock()
		if serr := sleepCtx(ctx, backoff); serr != nil {
			return r, errors.Join(err, serr)
		}
		backoff = min(2*backoff, time.Second)
	}
}

// one carries one run of the mix from start to judgement.
func (m *mix) one(startCtx, ctx context.Context, rng *rand.Rand, sp kindSpec, s *student) {
	rec := &runRec{sp: sp, s: s, tok: m.token(s)}
	args := []string{rec.tok}
	stopMax := 300 * time.Millisecond
	switch sp.kind {
	case KindQuick:
		// Another student's directory: writing there must fail.
		other := m.students[rng.IntN(len(m.students))].name
		for other == s.name && len(m.students) > 1 {
			other = m.students[rng.IntN(len(m.students))].name
		}
		args = append(args, other)
	case KindSlow:
		d := 200*time.Millisecond + time.Duration(rng.Int64N(int64(1300*time.Millisecond)))
		args = append(args, strconv.FormatFloat(d.Seconds(), 'f', 3, 64))
		stopMax = d
	case KindForkBomb:
		stopMax = 2 * time.Second
	}
	r, err := m.start(startCtx, api.RunRequest{Student: s.name, Script: sp.kind.File(), Args: args, Limits: sp.limits})
	if err != nil {
		if startCtx.Err() != nil {
			return // the duration ran out while starting: not the daemon's fault
		}
		m.rep.problem(&m.rep.Left.Errors, "start %s for %s: %v", sp.kind, s.name, err)
		return
	}
	rec.id = r.ID
	if sp.kind == KindInput {
		if err := m.c.WriteStdin(ctx, r.ID, []byte(rec.tok+"\n"), true); err != nil {
			m.rep.problem(&m.rep.Left.Errors, "stdin of run %s (%s): %v", r.ID, sp.kind, err)
		}
	}
	if rng.Float64() < m.o.StopRate {
		m.stopLater(ctx, rec, time.Duration(rng.Int64N(int64(stopMax)+1)))
	}
	reattach := rng.Float64() < m.o.ReattachRate
	var onOutput func(api.Event)
	if sp.kind == KindSlow && m.cg.learnt() < 2 {
		onOutput = firstLine(func(line string) {
			if f := strings.Fields(line); len(f) == 2 && f[0] == "start" {
				m.cg.learn(f[1], s.name, r.ID)
			}
		})
	}
	m.follow(ctx, rng, rec, reattach, onOutput)
	m.judge(ctx, rec)
}

func (m *mix) stopLater(ctx context.Context, rec *runRec, after time.Duration) {
	rec.stop = true
	rec.stopDone = make(chan stopResult, 1)
	m.rep.mu.Lock()
	m.rep.Stopped++
	m.rep.mu.Unlock()
	go func() {
		if err := sleepCtx(ctx, after); err != nil {
			rec.stopDone <- stopResult{err: err}
			return
		}
		r, err := m.c.StopRun(ctx, rec.id)
		rec.stopDone <- stopResult{run: r, err: err}
	}()
}

// follow reads the run's events to its end into rec.seen. A reattaching
// reader is cut off (up to 3 times) after a random 0-300 ms or after its
// first one or two events, possibly in the middle of a line, and comes
// back with after= the last whole event it read. onOutput, if set, sees
// each output event as it arrives.
func (m *mix) follow(ctx context.Context, rng *rand.Rand, rec *runRec, reattach bool, onOutput func(api.Event)) {
	var after int64
	for conns := 0; conns < 20; conns++ {
		st, err := m.c.Events(ctx, rec.id, after)
		if err != nil {
			m.rep.problem(&m.rep.Left.Errors, "events of run %s after %d: %v", rec.id, after, err)
			return
		}
		cutAfter := -1
		var timer *time.Timer
		var cutByTimer atomic.Bool
		if reattach && rec.cuts < 3 {
			if rng.IntN(2) == 0 {
				timer = time.AfterFunc(time.Duration(rng.Int64N(int64(300*time.Millisecond))), func() {
					cutByTimer.Store(true)
					_ = st.Close() //nolint:errcheck // cutting the reader off is the point
				})
			} else {
				cutAfter = 1 + rng.IntN(2)
			}
		}
		n := 0
		ended := false
		var readErr error
		for {
			ev, err := st.Next()
			if err != nil {
				readErr = err
				break
			}
			rec.seen = append(rec.seen, ev)
			after = ev.Seq
			n++
			if onOutput != nil && (ev.Type == api.EventStdout || ev.Type == api.EventStderr) {
				onOutput(ev)
			}
			if ev.Type == api.EventEnd {
				ended = true
				break
			}
			if cutAfter > 0 && n >= cutAfter {
				break
			}
		}
		if timer != nil {
			timer.Stop()
		}
		if err := st.Close(); err != nil && !cutByTimer.Load() {
			m.rep.problem(&m.rep.Left.Errors, "close events of run %s: %v", rec.id, err)
		}
		if ended {
			return
		}
		cut := cutByTimer.Load() || (cutAfter > 0 && n >= cutAfter)
		if !cut {
			// The daemon ended the stream without an end event.
			m.rep.problem(&m.rep.Left.Errors, "events of run %s stopped after seq %d without an end event: %v", rec.id, after, readErr)
		}
		if rec.cuts == 0 {
			m.rep.mu.Lock()
			m.rep.Reattached++
			m.rep.mu.Unlock()
		}
		rec.cuts++
		m.rep.mu.Lock()
		m.rep.Reconnects++
		m.rep.mu.Unlock()
		if err := sleepCtx(ctx, time.Duration(rng.Int64N(int64(100*time.Millisecond)))); err != nil {
			m.rep.problem(&m.rep.Left.Errors, "events of run %s: %v", rec.id, err)
			return
		}
	}
	m.rep.problem(&m.rep.Left.Errors, "events of run %s: no end after 20 connections", rec.id)
}

// firstLine calls f once with the first whole line of output. print()
// writes its pieces separately when Python is unbuffered, and a loaded
// daemon may send them as separate events.
func firstLine(f func(string)) func(api.Event) {
	var buf []byte
	done := false
	return func(ev api.Event) {
		if done {
			return
		}
		buf = append(buf, ev.Bytes()...)
		if i := strings.IndexByte(string(buf), '\n'); i >= 0 {
			done = true
			f(string(buf[:i]))
		}
	}
}

// judge compares what the reader saw with the full stream, and the run's
// end with what its script must do.
func (m *mix) judge(ctx context.Context, rec *runRec) {
	var stop stopResult
	if rec.stop {
		stop = <-rec.stopDone
		if stop.err != nil {
			m.rep.problem(&m.rep.Left.Errors, "stop run %s (%s): %v", rec.id, rec.sp.kind, stop.err)
		}
	}
	full, err := m.c.AllEvents(ctx, rec.id)
	if err != nil {
		m.rep.problem(&m.rep.Left.Errors, "full stream of run %s: %v", rec.id, err)
		return
	}
	m.compareEvents(rec, full)
	if len(full) == 0 || full[len(full)-1].Type != api.EventEnd || full[len(full)-1].Run == nil {
		m.rep.problem(&m.rep.Left.EventsLost, "run %s (%s): the full stream does not end with an end event", rec.id, rec.sp.kind)
		return
	}
	final := *full[len(full)-1].Run
	m.rep.mu.Lock()
	m.rep.Ended[final.Reason]++
	if m.rep.ByKind[rec.sp.kind] == nil {
		m.rep.ByKind[rec.sp.kind] = map[api.Reason]int{}
	}
	m.rep.ByKind[rec.sp.kind][final.Reason]++
	m.rep.mu.Unlock()

	if rec.stop && stop.err == nil && (stop.run.Reason != final.Reason || stop.run.State != api.StateEnded) {
		m.rep.problem(&m.rep.Left.WrongOutcomes, "run %s (%s): stop answered %s/%s, the end event says %s", rec.id, rec.sp.kind, stop.run.State, stop.run.Reason, final.Reason)
	}
	stored, err := m.c.GetRun(ctx, rec.id)
	switch {
	case err != nil:
		m.rep.problem(&m.rep.Left.Errors, "record of run %s: %v", rec.id, err)
	case stored.State != api.StateEnded || stored.Reason != final.Reason || fmt.Sprint(intp(stored.ExitCode)) != fmt.Sprint(intp(final.ExitCode)):
		m.rep.problem(&m.rep.Left.WrongOutcomes, "run %s (%s): record %s/%s exit %v, end event %s exit %v", rec.id, rec.sp.kind,
			stored.State, stored.Reason, intp(stored.ExitCode), final.Reason, intp(final.ExitCode))
	}
	switch {
	case final.Reason == rec.sp.natural:
		if rec.sp.check != nil {
			out, errOut := outputs(full)
			if err := rec.sp.check(rec.tok, &final, out, errOut); err != nil {
				m.rep.problem(&m.rep.Left.WrongOutcomes, "run %s (%s of %s) ended %s: %v", rec.id, rec.sp.kind, rec.s.name, final.Reason, err)
			}
		}
		// Every script writes its marker before anything else it does.
		mark := filepath.Join(rec.s.workdir, markerPrefix+rec.tok)
		if _, err := os.Stat(mark); err != nil && !rec.sp.mayNotMark {
			m.rep.problem(&m.rep.Left.MissingMarkers, "run %s (%s) ended %s but its marker is missing: %v", rec.id, rec.sp.kind, final.Reason, err)
		}
	case rec.stop && final.Reason == api.ReasonStopped:
	default:
		out, errOut := outputs(full)
		m.rep.problem(&m.rep.Left.WrongOutcomes, "run %s (%s of %s, stop sent %v) ended %s (exit %v signal %q error %q), want %s; stdout %q stderr %q",
			rec.id, rec.sp.kind, rec.s.name, rec.stop, final.Reason, intp(final.ExitCode), final.Signal, final.Error, rec.sp.natural, clip(out), clip(errOut))
	}
}

func clip(s string) string {
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}

// compareEvents checks that what the reader saw across its connections is
// exactly the full stream: contiguous from 1, nothing missing, nothing
// twice, nothing altered.
func (m *mix) compareEvents(rec *runRec, full []api.Event) {
	m.rep.mu.Lock()
	m.rep.Events += len(full)
	m.rep.mu.Unlock()
	for i, ev := range full {
		if ev.Seq != int64(i+1) {
			m.rep.problem(&m.rep.Left.EventsLost, "run %s: the full stream has seq %d at position %d", rec.id, ev.Seq, i+1)
			return
		}
	}
	lost, dup, altered := 0, 0, 0
	seenAt := map[int64]int{}
	var firsts []int64 // seqs in the order first seen
	for i, ev := range rec.seen {
		if _, ok := seenAt[ev.Seq]; ok {
			dup++
			continue
		}
		seenAt[ev.Seq] = i
		firsts = append(firsts, ev.Seq)
		if ev.Seq < 1 || ev.Seq > int64(len(full)) {
			dup++ // an event the stream does not have
			continue
		}
		f := full[ev.Seq-1]
		if f.Type != ev.Type || string(f.Bytes()) != string(ev.Bytes()) {
			altered++
		}
	}
	for _, f := range full {
		if _, ok := seenAt[f.Seq]; !ok {
			lost++
		}
	}
	// In order, too: the concatenation must be the stream itself (a
	// repeat is counted above, not again here).
	for i := 1; i < len(firsts); i++ {
		if firsts[i] != firsts[i-1]+1 {
			altered++
			break
		}
	}
	if lost+altered > 0 {
		m.rep.problem(&m.rep.Left.EventsLost, "run %s (%s, %d reconnects): reader saw %d events, stream has %d: %d missing, %d altered or out of order",
			rec.id, rec.sp.kind, rec.cuts, len(rec.seen), len(full), lost, altered)
		m.rep.mu.Lock()
		m.rep.Left.EventsLost += lost + altered - 1 // problem counted one
		m.rep.mu.Unlock()
	}
	if dup > 0 {
		m.rep.problem(&m.rep.Left.EventsDup, "run %s (%s, %d reconnects): %d events seen twice", rec.id, rec.sp.kind, rec.cuts, dup)
		m.rep.mu.Lock()
		m.rep.Left.EventsDup += dup - 1
		m.rep.mu.Unlock()
	}
}

func outputs(evs []api.Event) (string, string) {
	var out, errOut strings.Builder
	for i := range evs {
		switch evs[i].Type {
		case api.EventStdout:
			out.Write(evs[i].Bytes())
		case api.EventStderr:
			errOut.Write(evs[i].Bytes())
		}
	}
	return out.String(), errOut.String()
}

// hold starts o.Hold runs that wait on stdin, checks that they are all
// alive at once, then ends half through stdin and half by stop.
func (m *mix) hold(ctx context.Context) {
	bound := 2*time.Minute + time.Duration(m.o.Hold)*100*time.Millisecond
	ctx, cancel := context.WithTimeout(ctx, bound+m.o.DrainTimeout)
	defer cancel()
	m.logf("holding %d runs at once", m.o.Hold)
	t0 := time.Now()
	ready := make(chan []int, m.o.Hold) // host pids of each held run, nil if it never got ready
	release := make(chan struct{})
	var wg sync.WaitGroup
	sem := make(chan struct{}, m.o.Concurrency)
	for i := 0; i < m.o.Hold; i++ {
		s := &m.students[i%len(m.students)]
		rec := &runRec{sp: holdSpec, s: s, tok: m.token(s)}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sem <- struct{}{}
			r, err := m.start(ctx, api.RunRequest{Student: s.name, Script: holdFile(i / len(m.students)), Args: []string{rec.tok}, Limits: holdSpec.limits})
			<-sem
			if err != nil {
				m.rep.problem(&m.rep.Left.Errors, "start held run %d of %s: %v", i, s.name, err)
				ready <- nil
				return
			}
			rec.id = r.ID
			rng := rand.New(rand.NewPCG(m.o.Seed, uint64(1000000+i)))
			once := sync.Once{}
			var readers sync.WaitGroup
			readers.Add(1)
			go func() {
				defer readers.Done()
				m.follow(ctx, rng, rec, false, firstLine(func(line string) {
					once.Do(func() {
						var pids []int
						if f := strings.Fields(line); len(f) == 2 && f[0] == "ready" {
							m.cg.learn(f[1], s.name, r.ID)
							// The helper (the run's PID 1) and python.
							pids = groupPids(f[1])
						}
						ready <- pids
					})
				}))
				once.Do(func() { ready <- nil }) // ended before its first line
			}()
			select {
			case <-release:
			case <-ctx.Done():
			}
			if i%2 == 0 {
				if err := m.c.WriteStdin(ctx, rec.id, []byte(rec.tok+"\n"), true); err != nil {
					m.rep.problem(&m.rep.Left.Errors, "stdin of held run %s: %v", rec.id, err)
				}
			} else {
				m.stopLater(ctx, rec, 0)
			}
			readers.Wait()
			m.judge(ctx, rec)
		}(i)
	}
	var runs [][]int
wait:
	for i := 0; i < m.o.Hold; i++ {
		select {
		case pids := <-ready:
			if len(pids) > 0 {
				runs = append(runs, pids)
			}
		case <-ctx.Done():
			break wait
		}
	}
	alive := 0
	var heldRSS int64
	for _, pids := range runs {
		live := false
		for _, pid := range pids {
			if p, ok := readProc(pid); ok && !p.Zombie() {
				live = true
				if s, err := SampleProc(pid); err == nil {
					heldRSS += s.RSSKiB
				}
			}
		}
		if live {
			alive++
		}
	}
	ds, err := daemonState(ctx, m.c, m.rep.PID)
	if err != nil {
		m.rep.problem(&m.rep.Left.Errors, "daemon state with %d runs held: %v", m.o.Hold, err)
	}
	st := ds.Debug
	m.rep.HoldPeak, m.rep.HoldAlive = st.RunsActive, alive
	m.logf("held %d runs at once after %s: %d ready, %d of their processes alive (RSS %.0f MiB in all); daemon runs_active %d, fds %d, goroutines %d, threads %d, RSS %.1f MiB",
		m.o.Hold, time.Since(t0).Round(time.Millisecond), len(runs), alive, float64(heldRSS)/1024, st.RunsActive, st.FDs, st.Goroutines,
		ds.Proc.Threads, float64(ds.Proc.RSSKiB)/1024)
	if alive < m.o.Hold {
		m.rep.problem(&m.rep.Left.Errors, "only %d of %d held runs were alive at once", alive, m.o.Hold)
	}
	close(release)
	wg.Wait()
	m.logf("held runs ended after %s", time.Since(t0).Round(time.Millisecond))
}

// Print writes the summary; the last line says PASS or FAIL.
func (r *Report) Print(w io.Writer) {
	ended := 0
	for _, n := range r.Ended {
		ended += n
	}
	rate := 0.0
	if r.Elapsed > 0 {
		rate = float64(ended) / r.Elapsed.Seconds()
	}
	fmt.Fprintf(w, "idexload: %d runs started, %d ended in %s (%.1f runs/s); %d stop requests; at_capacity retries %d\n",
		r.Started, ended, r.Elapsed.Round(time.Millisecond), rate, r.Stopped, r.Refused[api.CodeAtCapacity])
	fmt.Fprintf(w, "  ended by reason: %s\n", reasons(r.Ended))
	kinds := make([]string, 0, len(r.ByKind))
	for k := range r.ByKind {
		kinds = append(kinds, string(k))
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		fmt.Fprintf(w, "    %-9s %s\n", k, reasons(r.ByKind[Kind(k)]))
	}
	if r.HoldPeak > 0 || r.HoldAlive > 0 {
		fmt.Fprintf(w, "  held at once: %d processes alive, daemon runs_active %d\n", r.HoldAlive, r.HoldPeak)
	}
	fmt.Fprintf(w, "  cgroup directories checked in %d hierarchies\n", r.CgroupHierarchies)
	fmt.Fprintf(w, "  readers: %d reattached (%d reconnects), %d events compared with the full streams\n", r.Reattached, r.Reconnects, r.Events)
	b, a := r.Before, r.After
	fmt.Fprintf(w, "  daemon pid %d: fds %d -> %d (/proc: %d -> %d), goroutines %d -> %d, threads %d -> %d, RSS %.1f -> %.1f MiB, cgroups %d -> %d, locks %d -> %d, runs_active %d -> %d, runs_kept %d -> %d\n",
		r.PID, b.Debug.FDs, a.Debug.FDs, b.Proc.FDs, a.Proc.FDs, b.Debug.Goroutines, a.Debug.Goroutines, b.Proc.Threads, a.Proc.Threads,
		float64(b.Proc.RSSKiB)/1024, float64(a.Proc.RSSKiB)/1024, b.Debug.Cgroups, a.Debug.Cgroups,
		b.Debug.LocksHeld, a.Debug.LocksHeld, b.Debug.RunsActive, a.Debug.RunsActive, b.Debug.RunsKept, a.Debug.RunsKept)
	bc, ac := b.Census, a.Census
	fmt.Fprintf(w, "  at rest before -> after: warm helpers %d -> %d, namespaces of idexd %d -> %d, its mounts %d -> %d; host: namespaces %d -> %d (%s), mount table %d -> %d lines, nsfs mounts %d -> %d\n",
		bc.Children, ac.Children, bc.OwnNS.total(), ac.OwnNS.total(), bc.OwnMounts, ac.OwnMounts, bc.HostNS.total(), ac.HostNS.total(),
		ac.HostNS.Diff(bc.HostNS), bc.Mounts, ac.Mounts, bc.NSFS, ac.NSFS)
	l := r.Left
	fmt.Fprintf(w, "  leftovers: cgroups %d, cgroup dirs %d, fds %d, goroutines %d, locks %d, runs_active %d, running records %d, "+
		"namespaces %d, mounts %d, host over tolerance %d, "+
		"student processes %d (zombies, counted dead: %d), files outside %d, missing markers %d, events lost %d, events duplicated %d, wrong outcomes %d, errors %d\n",
		l.Cgroups, l.CgroupDirs, l.FDs, l.Goroutines, l.Locks, l.RunsActive, l.RunningRecords, l.Namespaces, l.Mounts, l.Host,
		l.Processes, r.Zombies, l.FilesOutside, l.MissingMarkers, l.EventsLost, l.EventsDup, l.WrongOutcomes, l.Errors)
	for _, p := range r.Problems {
		fmt.Fprintf(w, "  problem: %s\n", p)
	}
	if r.problems > len(r.Problems) {
		fmt.Fprintf(w, "  ... and %d more problems\n", r.problems-len(r.Problems))
	}
	if n := r.Failures(); n > 0 {
		fmt.Fprintf(w, "FAIL: %d leftovers or errors (see above)\n", n)
		return
	}
	fmt.Fprintf(w, "PASS: %d runs, no leftovers, no event lost or duplicated\n", r.Started)
}

func reasons(m map[api.Reason]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, string(k))
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[api.Reason(k)])
	}
	return strings.Join(parts, ", ")
}
