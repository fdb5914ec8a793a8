package run

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/students"
)

// Fair share when a class presses Run at once (issue 12). A start is
// admitted, in this order, unless the host drains (draining); the
// student has MaxPerStudent runs running or waiting (student_busy,
// naming the running ones); the student's start rate is spent
// (rate_limited, with how long to wait); the host runs max_runs and the
// request does not wait, or waited its time, or the queue is full
// (at_capacity). A request that may wait joins a queue that serves
// students in turn, so that one student's many waiting starts do not
// delay another's single one. Every slot a run gives back goes straight
// to the next waiting start.
//
// Once a run is placed, its student's runs are weighed so that together
// they get one student's share of the CPU (weigh).

// Fair configures admission. The zero value admits as many as MaxRuns
// allows, at once or never.
type Fair struct {
	// MaxPerStudent caps one student's runs, running or waiting for a
	// slot; 0: no cap.
	MaxPerStudent int
	// StartsPerMinute is each student's start rate: a bucket of this many
	// starts, refilled at this many a minute; 0: no limit.
	StartsPerMinute int
	// MaxWait caps a request's wait_seconds; 0: nothing waits.
	MaxWait time.Duration
	// QueueMax is how many starts may wait at once.
	QueueMax int
	// BurstWindow is how long a burst of refusals of one code is summed
	// up before it is logged (default 10 s): the first refusal is logged
	// at once, the rest once per window.
	BurstWindow time.Duration
}

// Admission outcomes, for Hooks.Admission.
const (
	// AdmittedAtOnce: a slot was free.
	AdmittedAtOnce = "admitted"
	// Queued: the start joined the queue to wait for a slot.
	Queued = "queued"
	// AdmittedAfterWait: a start that waited got a slot.
	AdmittedAfterWait = "waited"
	// Refused: the start was refused; the code says why.
	Refused = "refused"
)

// fairState is admission's state, under Engine.mu.
type fairState struct {
	students map[string]*studentState
	// ring names the students with waiting starts, in the order they are
	// served; a student served goes to the back.
	ring    []string
	waiting int
	buckets map[string]*bucket
	pruned  time.Time
	// weighing serializes weigh, so that the last weights written are
	// those of the latest state.
	weighing sync.Mutex
	refusals *burstLog
}

// studentState is what admission knows of one student.
type studentState struct {
	// inflight counts the student's slots held (admitted, not ended) and
	// starts waiting for one.
	inflight int
	waiters  []*waiter
	// placed are the student's started runs by id, each with the warm
	// helper's group it runs in, or nil when it runs in the student's own
	// group (a cold start).
	placed map[string]*cgroup.Group
	// stops counts admin stops of the student: a run admitted before one
	// and placed after it is stopped at once.
	stops int
}

type waiter struct {
	student string
	since   time.Time
	ready   chan struct{} // closed once granted or failed
	granted bool
	err     error
}

type bucket struct {
	tokens float64
	at     time.Time
}

func (f *fairState) init(e *Engine) {
	f.students = map[string]*studentState{}
	f.buckets = map[string]*bucket{}
	window := e.cfg.Fair.BurstWindow
	if window <= 0 {
		window = 10 * time.Second
	}
	f.refusals = newBurstLog(e.log, window)
}

func (e *Engine) studentLocked(name string) *studentState {
	st := e.fair.students[name]
	if st == nil {
		st = &studentState{placed: map[string]*cgroup.Group{}}
		e.fair.students[name] = st
	}
	return st
}

// forgetLocked drops a student that holds and waits for nothing.
func (e *Engine) forgetLocked(name string) {
	if st := e.fair.students[name]; st != nil && st.inflight == 0 && len(st.waiters) == 0 && len(st.placed) == 0 {
		delete(e.fair.students, name)
	}
}

// refuse counts and logs a refused start (once per burst) and returns err.
func (e *Engine) refuse(student string, err *api.Error) error {
	e.fair.refusals.refused(student, err)
	if h := e.cfg.Hooks.Admission; h != nil {
		h(Refused, err.Code, 0)
	}
	return err
}

func (e *Engine) admitted(outcome string, waited time.Duration) {
	if h := e.cfg.Hooks.Admission; h != nil {
		h(outcome, "", waited)
	}
}

// admit takes a slot for a start of student's, waiting up to waitSeconds
// (capped at Fair.MaxWait) when the host is full. It returns the
// student's stop count at admission, for place.
func (e *Engine) admit(ctx context.Context, student string, waitSeconds int) (int, error) {
	if waitSeconds < 0 {
		return 0, api.Errorf(api.CodeInvalidRequest, "wait_seconds must not be negative, got %d", waitSeconds)
	}
	f := e.cfg.Fair
	wait := min(time.Duration(waitSeconds)*time.Second, f.MaxWait)
	now := time.Now()
	e.mu.Lock()
	if e.draining {
		e.mu.Unlock()
		return 0, e.refuse(student, api.Errorf(api.CodeDraining, "idexd is draining: no new runs on this host"))
	}
	st := e.studentLocked(student)
	if f.MaxPerStudent > 0 && st.inflight >= f.MaxPerStudent {
		running := e.runningLocked(student)
		waiting := len(st.waiters)
		e.forgetLocked(student)
		e.mu.Unlock()
		ids := runIDs(running)
		msg := fmt.Sprintf("student %s has %d runs running or waiting already (max_runs_per_student %d): stop one first", student, st.inflight, f.MaxPerStudent)
		if waiting > 0 {
			msg += fmt.Sprintf(" (%d of them wait for a slot)", waiting)
		}
		return 0, e.refuse(student, &api.Error{Code: api.CodeStudentBusy, Message: msg, RunIDs: ids})
	}
	if retry, ok := e.takeStartLocked(student, now); !ok {
		e.forgetLocked(student)
		e.mu.Unlock()
		secs := max(int(math.Ceil(retry.Seconds())), 1)
		return 0, e.refuse(student, &api.Error{Code: api.CodeRateLimited, RetryAfterS: secs,
			Message: fmt.Sprintf("student %s started %d runs in the last minute (student_starts_per_minute): the next may start in %d s", student, f.StartsPerMinute, secs)})
	}
	epoch := st.stops
	if e.active < e.cfg.MaxRuns && e.fair.waiting == 0 {
		e.active++
		st.inflight++
		e.mu.Unlock()
		e.admitted(AdmittedAtOnce, 0)
		return epoch, nil
	}
	switch {
	case wait <= 0:
		e.forgetLocked(student)
		e.mu.Unlock()
		return 0, e.refuse(student, api.Errorf(api.CodeAtCapacity, "this host runs %d runs already (max_runs); wait_seconds lets a start wait for a slot", e.cfg.MaxRuns))
	case e.fair.waiting >= f.QueueMax:
		e.forgetLocked(student)
		e.mu.Unlock()
		return 0, e.refuse(student, api.Errorf(api.CodeAtCapacity, "this host runs %d runs already (max_runs) and %d starts wait for a slot (queue_max)", e.cfg.MaxRuns, e.fair.waiting))
	}
	w := &waiter{student: student, since: now, ready: make(chan struct{})}
	st.inflight++
	if len(st.waiters) == 0 {
		e.fair.ring = append(e.fair.ring, student)
	}
	st.waiters = append(st.waiters, w)
	e.fair.waiting++
	e.dispatchLocked()
	e.mu.Unlock()
	e.admitted(Queued, 0)

	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-w.ready:
	case <-t.C:
	case <-ctx.Done():
	}
	e.mu.Lock()
	switch {
	case w.granted:
		// epoch stays the stop count from before the wait: a stop while
		// the start waited refused it (w.err), so a count that moved
		// since is a stop that came after the grant, before this
		// goroutine woke, and must still end the run once it started.
		e.mu.Unlock()
		e.admitted(AdmittedAfterWait, time.Since(now))
		return epoch, nil
	case w.err != nil:
		// Whoever failed it took it out of the queue.
		e.mu.Unlock()
		return 0, e.refuse(student, api.AsError(w.err))
	}
	e.unqueueLocked(st, w)
	st.inflight--
	e.forgetLocked(student)
	e.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("wait for a slot for student %s: the caller went away: %w", student, err)
	}
	return 0, e.refuse(student, api.Errorf(api.CodeAtCapacity, "this host runs %d runs already (max_runs): no slot came free within %s", e.cfg.MaxRuns, wait))
}

// runningLocked lists the student's runs that have not begun to end.
func (e *Engine) runningLocked(student string) []*Execution {
	var rs []*Execution
	for _, r := range e.runs {
		if r.info.Student == student && !r.ending.Load() {
			rs = append(rs, r)
		}
	}
	return rs
}

// runIDs are the runs' ids, oldest run first.
func runIDs(rs []*Execution) []string {
	slices.SortFunc(rs, func(a, b *Execution) int { return a.startedAt().Compare(b.startedAt()) })
	ids := make([]string, len(rs))
	for i, r := range rs {
		ids[i] = r.id
	}
	return ids
}

// takeStartLocked takes one start from the student's bucket, or says how
// long until there is one.
func (e *Engine) takeStartLocked(student string, now time.Time) (time.Duration, bool) {
	n := float64(e.cfg.Fair.StartsPerMinute)
	if n <= 0 {
		return 0, true
	}
	perSecond := n / 60
	if now.Sub(e.fair.pruned) > time.Minute {
		// A full bucket is the same as none: memory holds only the
		// students who started within the last minute.
		for s, b := range e.fair.buckets {
			if b.tokens+now.Sub(b.at).Seconds()*perSecond >= n {
				delete(e.fair.buckets, s)
			}
		}
		e.fair.pruned = now
	}
	b := e.fair.buckets[student]
	if b == nil {
		b = &bucket{tokens: n, at: now}
		e.fair.buckets[student] = b
	}
	b.tokens = min(n, b.tokens+now.Sub(b.at).Seconds()*perSecond)
	b.at = now
	if b.tokens >= 1 {
		b.tokens--
		return 0, true
	}
	return time.Duration((1 - b.tokens) / perSecond * float64(time.Second)), false
}

// dispatchLocked gives free slots to waiting starts, one student at a time.
func (e *Engine) dispatchLocked() {
	for !e.draining && e.active < e.cfg.MaxRuns && len(e.fair.ring) > 0 {
		name := e.fair.ring[0]
		e.fair.ring = e.fair.ring[1:]
		st := e.fair.students[name]
		w := st.waiters[0]
		st.waiters = st.waiters[1:]
		if len(st.waiters) > 0 {
			e.fair.ring = append(e.fair.ring, name)
		}
		e.fair.waiting--
		e.active++
		w.granted = true
		close(w.ready)
	}
}

// unqueueLocked takes a waiter that gave up out of the queue.
func (e *Engine) unqueueLocked(st *studentState, w *waiter) {
	i := slices.Index(st.waiters, w)
	if i < 0 {
		return
	}
	st.waiters = slices.Delete(st.waiters, i, i+1)
	e.fair.waiting--
	if len(st.waiters) == 0 {
		e.fair.ring = slices.DeleteFunc(e.fair.ring, func(s string) bool { return s == w.student })
	}
}

// failWaitersLocked refuses every waiting start of student (all students
// when student is ""), with err, and returns how many there were.
func (e *Engine) failWaitersLocked(student string, err *api.Error) int {
	n := 0
	for name, st := range e.fair.students {
		if student != "" && name != student {
			continue
		}
		for _, w := range st.waiters {
			w.err = err
			close(w.ready)
			st.inflight--
			n++
		}
		e.fair.waiting -= len(st.waiters)
		st.waiters = nil
		e.fair.ring = slices.DeleteFunc(e.fair.ring, func(s string) bool { return s == name })
		e.forgetLocked(name)
	}
	return n
}

// unadmit gives back a slot that no run took (the start failed before
// the run existed).
func (e *Engine) unadmit(student string) { e.freeSlot(student, "") }

// release gives back the slot of run r, which has ended: the next waiting
// start takes it, and the student's other runs are weighed again.
func (e *Engine) release(r *Execution) {
	e.freeSlot(r.info.Student, r.id)
	e.weigh(r.info.Student)
}

func (e *Engine) freeSlot(student, id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.active--
	if st := e.fair.students[student]; st != nil {
		st.inflight--
		delete(st.placed, id)
		e.forgetLocked(student)
	}
	e.dispatchLocked()
}

// place records where run r runs once it started, weighs its student's
// runs, and stops it when an admin stopped the student's runs since it
// was admitted (epoch).
func (e *Engine) place(r *Execution, epoch int) {
	r.mu.Lock()
	proc := r.proc
	r.mu.Unlock()
	var g *cgroup.Group
	if gp, ok := proc.(Grouped); ok && gp.Group().Beside() {
		g = gp.Group()
	}
	student := r.info.Student
	e.mu.Lock()
	st := e.fair.students[student]
	if r.ending.Load() || st == nil {
		// Ended already: release has been (or is being) told.
		e.mu.Unlock()
		return
	}
	st.placed[r.id] = g
	stopped := st.stops != epoch
	e.mu.Unlock()
	e.weigh(student)
	if stopped {
		e.log.Info("run stopped: its student's runs were stopped while it started", "run", r.id, "student", student)
		r.kill(api.ReasonStopped)
	}
}

// weigh gives each of the student's runs an equal part of one student's
// CPU share: a group beside the students' its part, the student's own group the
// parts of the runs in it (see package cgroup, share.go).
func (e *Engine) weigh(student string) {
	if e.cfg.Cgroups == nil {
		return
	}
	e.fair.weighing.Lock()
	defer e.fair.weighing.Unlock()
	e.mu.Lock()
	var warm []*cgroup.Group
	cold, n := 0, 0
	if st := e.fair.students[student]; st != nil {
		for _, g := range st.placed {
			n++
			if g == nil {
				cold++
			} else {
				warm = append(warm, g)
			}
		}
	}
	e.mu.Unlock()
	if n == 0 {
		return
	}
	part := 1 / float64(n)
	for _, g := range warm {
		if err := g.SetShare(part); err != nil {
			e.log.Warn("weigh a warm run's CPU", "student", student, "err", err)
		}
	}
	if cold > 0 {
		if err := e.cfg.Cgroups.SetStudentShare(student, float64(cold)*part); err != nil {
			e.log.Warn("weigh a student's CPU", "student", student, "err", err)
		}
	}
}

// Queue is the admission queue now: how many starts wait, and how long
// the one that waits longest has waited.
func (e *Engine) Queue() (length int, oldest time.Duration) {
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, name := range e.fair.ring {
		if st := e.fair.students[name]; st != nil && len(st.waiters) > 0 {
			oldest = max(oldest, now.Sub(st.waiters[0].since))
		}
	}
	return e.fair.waiting, oldest
}

func (e *Engine) queueHealth() api.QueueHealth {
	n, oldest := e.Queue()
	q := api.QueueHealth{Length: n, OldestWaitMS: oldest.Milliseconds()}
	if e.cfg.Fair.MaxWait > 0 {
		q.Max = e.cfg.Fair.QueueMax
	}
	return q
}

// StopStudent stops every run of the student on this host and refuses
// the student's starts that wait in the queue (student_stopped); a start
// admitted meanwhile is stopped as soon as it started. It returns once
// every run's processes are gone, with the runs as they ended.
func (e *Engine) StopStudent(ctx context.Context, student string) (api.StudentStop, error) {
	if err := students.ValidName(student); err != nil {
		return api.StudentStop{}, err
	}
	out := api.StudentStop{Student: student, Stopped: []api.Run{}}
	e.mu.Lock()
	e.studentLocked(student).stops++
	out.QueuedCancelled = e.failWaitersLocked(student, api.Errorf(api.CodeStudentStopped,
		"an admin stopped every run of student %s while this start waited for a slot", student))
	live := e.runningLocked(student)
	e.forgetLocked(student)
	e.mu.Unlock()
	type result struct {
		info api.Run
		err  error
	}
	done := make(chan result, len(live))
	for _, r := range live {
		go func() {
			info, err := r.Stop(ctx)
			done <- result{info, err}
		}()
	}
	var errs []error
	for range live {
		res := <-done
		if res.err != nil {
			errs = append(errs, res.err)
			continue
		}
		out.Stopped = append(out.Stopped, res.info)
	}
	slices.SortFunc(out.Stopped, func(a, b api.Run) int { return a.StartedAt.Compare(b.StartedAt) })
	if len(errs) > 0 {
		return out, fmt.Errorf("stop the runs of student %s: %w", student, errs[0])
	}
	return out, nil
}
