// Package sysmon keeps the Go runtime's system monitor from polling every
// 20 µs while idexd is busy.
//
// sysmon (runtime/proc.go) sleeps deeply while every P is idle. The first
// syscall after such a spell wakes it with its delay reset to 20 µs, and it
// backs off only after 50 rounds (1 ms) in a row with nothing to retake
// while some P is busy. idexd's work comes in short spells (a request, a
// helper's reply, a run's end), each followed by idleness, so sysmon spent
// most of its life at 20 µs: here, with one client running print('hi') in
// a loop, 56 wakeups and 1.2 ms of CPU per run, a fifth of idexd's CPU. The
// tick is hardcoded (golang/go#18236).
//
// While runs are live, a Quieter keeps one P busy without using any CPU: a
// goroutine blocked in a raw ppoll (no entersyscall), which the runtime
// counts as running. sysmon then never sleeps deeply, is never woken with
// its delay reset, and backs off to 10 ms. That P is an extra one
// (GOMAXPROCS + 1), so the rest of idexd keeps as many as before. Any
// signal ends the ppoll with EINTR (ppoll is never restarted, whatever
// SA_RESTART says): the runtime's preemption (sysmon asks every 10 ms) or a
// stop-the-world of the GC reaches the goroutine at once, and it yields
// there, so it never holds the GC up. The ppoll's own timeout (9 ms) bounds
// that even with asynchronous preemption off, and how late the P's own
// timers can run.
package sysmon

import (
	"fmt"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Quieter pins one P while any hold is out, and for linger after the last.
type Quieter struct {
	linger time.Duration

	mu      sync.Mutex
	holds   int
	lastOut time.Time // when holds last fell to 0
	pinned  bool
	closed  bool

	wake chan struct{} // a hold for an unpinned loop
	efd  int           // eventfd: Close wakes a pinned loop
	done chan struct{}

	// Heap, not stack: the kernel reads them during the raw syscall.
	fds [1]unix.PollFd
	ts  unix.Timespec
}

// pollTimeout bounds one wait of the pinned goroutine. A wait that times
// out ends in the scheduler (Gosched), which is where a P runs its own
// timers: timers that other goroutines set on this P before it was pinned
// (a deadline, a flush) would otherwise wait for an idle P to take them
// over, late when every other P is busy. The pass through the scheduler
// also tells sysmon that the goroutine is not one that has run for 10 ms
// (it would preempt it, with a signal), and lets a stop-the-world in when
// no signal comes (GODEBUG=asyncpreemptoff=1). 9 ms stays under sysmon's
// 10 ms. Each Gosched wakes an idle thread (the runtime's wakep), which
// looks for work and sleeps again: at 5 ms, and after every signal too,
// that was 5.4 thread wake-ups a run, a third of idexd's, with one client.
const pollTimeout = 9 * time.Millisecond

// New raises GOMAXPROCS by one for the pinned goroutine and starts it,
// unpinned. (Setting GOMAXPROCS ends the runtime's own updates of it from
// the cgroup's CPU limit: idexd's unit sets no such limit.)
func New(linger time.Duration) (*Quieter, error) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("sysmon quieter: eventfd: %w", err)
	}
	q := &Quieter{linger: linger, wake: make(chan struct{}, 1), efd: efd, done: make(chan struct{})}
	q.fds[0] = unix.PollFd{Fd: int32(efd), Events: unix.POLLIN}
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 1)
	go q.loop()
	return q, nil
}

// Hold pins a P until release is called (once). A nil Quieter does nothing.
func (q *Quieter) Hold() (release func()) {
	if q == nil {
		return func() {}
	}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return func() {}
	}
	q.holds++
	if !q.pinned {
		select {
		case q.wake <- struct{}{}:
		default: // a wake is on its way
		}
	}
	q.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			q.mu.Lock()
			q.holds--
			if q.holds == 0 {
				q.lastOut = time.Now()
			}
			q.mu.Unlock()
		})
	}
}

// Pinned reports whether the goroutine holds its P now.
func (q *Quieter) Pinned() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.pinned
}

// Close unpins, ends the goroutine and gives the P back.
func (q *Quieter) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	close(q.wake)
	q.mu.Unlock()
	one := uint64(1)
	if _, err := unix.Write(q.efd, (*[8]byte)(unsafe.Pointer(&one))[:]); err != nil {
		return fmt.Errorf("sysmon quieter: wake: %w", err)
	}
	<-q.done
	runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) - 1)
	if err := unix.Close(q.efd); err != nil {
		return fmt.Errorf("sysmon quieter: close eventfd: %w", err)
	}
	return nil
}

func (q *Quieter) loop() {
	defer close(q.done)
	for range q.wake { // closed by Close
		q.mu.Lock()
		q.pinned = true
		q.mu.Unlock()
		for q.stayPinned() {
			q.ts = unix.NsecToTimespec(int64(pollTimeout)) // ppoll leaves what was left in it
			// Raw: the P stays the goroutine's, in the runtime's eyes
			// running. A signal (EINTR), the timeout or Close's write all
			// lead to the same look in stayPinned.
			n, _, errno := unix.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&q.fds[0])), 1,
				uintptr(unsafe.Pointer(&q.ts)), 0, 0, 0)
			if n == 0 && errno == 0 {
				// Timed out: through the scheduler (pollTimeout says why).
				runtime.Gosched()
			}
			// Otherwise a signal (EINTR) or Close: a preemption or a GC's
			// stack scan that a signal announced takes this goroutine in
			// stayPinned's prologue, where the runtime checks for it.
		}
	}
}

// stayPinned decides, and unpins, under one lock: a Hold that finds the
// goroutine pinned sends no wake, so it must not be about to unpin. Never
// inlined: its prologue is the loop's safe point after a signal.
//
//go:noinline
func (q *Quieter) stayPinned() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed && (q.holds > 0 || time.Since(q.lastOut) < q.linger) {
		return true
	}
	q.pinned = false
	return false
}
