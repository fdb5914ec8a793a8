package sysmon

import (
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// spells is idexd's shape of work: every P idle until the netpoller has
// something (here a timerfd every 2 ms, where idexd has a request or a
// helper's reply), then a short spell of syscalls (through entersyscall, as
// the net and os packages make them) and computation. A Go timer would not
// do: sysmon sleeps until the next one and wakes for it with its delay
// kept.
func spells(t *testing.T, n int) {
	t.Helper()
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	every := unix.NsecToTimespec(int64(2 * time.Millisecond))
	if err := unix.TimerfdSettime(fd, 0, &unix.ItimerSpec{Interval: every, Value: every}, nil); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "timerfd") // non-blocking: read through the netpoller
	defer f.Close()
	buf := make([]byte, 8)
	for range n {
		if _, err := f.Read(buf); err != nil {
			t.Fatal(err)
		}
		// A syscall that blocks for a while (idexd's clone of a helper,
		// a cgroup's mkdir), then quick ones.
		nap := unix.NsecToTimespec(int64(time.Millisecond))
		_, _, _ = syscall.Syscall(syscall.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&nap)), 0, 0)
		end := time.Now().Add(100 * time.Microsecond)
		for time.Now().Before(end) {
			_, _, _ = syscall.Syscall(syscall.SYS_GETPID, 0, 0, 0)
		}
	}
}

// switches is how many times the process's threads gave up the CPU while
// f ran: sysmon's wakeups are most of them.
func switches(t *testing.T, f func()) int64 {
	t.Helper()
	var a, b unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &a); err != nil {
		t.Fatal(err)
	}
	f()
	if err := unix.Getrusage(unix.RUSAGE_SELF, &b); err != nil {
		t.Fatal(err)
	}
	return b.Nvcsw - a.Nvcsw
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	// A bound on a hang, not a measure of speed.
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not %s after 10 s", what)
		}
	}
}

// TestQuietsSysmon: the same spells of work, without a hold and with one,
// from the kernel's count of the process's voluntary context switches.
func TestQuietsSysmon(t *testing.T) {
	spells(t, 20) // warm up: threads made, timers set
	free := switches(t, func() { spells(t, 150) })
	q, err := New(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := q.Close(); err != nil {
			t.Error(err)
		}
	}()
	release := q.Hold()
	waitFor(t, "pinned", q.Pinned)
	held := switches(t, func() { spells(t, 150) })
	release()
	t.Logf("voluntary context switches over 150 spells: %d without a hold, %d with one", free, held)
	if held*2 > free {
		t.Errorf("with a hold the process switched %d times, without %d: want less than half", held, free)
	}
}

// TestGCWhilePinned: the pinned goroutine yields to stop-the-world and to
// the GC's per-P work, and the rest of the program keeps its Ps.
func TestGCWhilePinned(t *testing.T) {
	procs := runtime.GOMAXPROCS(0)
	q, err := New(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got := runtime.GOMAXPROCS(0); got != procs+1 {
		t.Errorf("GOMAXPROCS %d with a quieter, want %d", got, procs+1)
	}
	release := q.Hold()
	waitFor(t, "pinned", q.Pinned)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ms runtime.MemStats
		for range 5 {
			runtime.GC()
			runtime.ReadMemStats(&ms) // a stop-the-world of its own
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("GC did not finish in 30 s while a P was pinned")
	}
	if !q.Pinned() {
		t.Error("the GC unpinned the goroutine")
	}
	release()
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if q.Pinned() {
		t.Error("pinned after Close")
	}
	if got := runtime.GOMAXPROCS(0); got != procs {
		t.Errorf("GOMAXPROCS %d after Close, want %d back", got, procs)
	}
	q.Hold()() // after Close: nothing, no panic
}

// TestLingerAndHolds: the P is let go linger after the last hold, taken
// again by the next, and many holders at once keep it pinned until the
// last lets go.
func TestLingerAndHolds(t *testing.T) {
	q, err := New(50 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := q.Close(); err != nil {
			t.Error(err)
		}
	}()
	if q.Pinned() {
		t.Fatal("pinned before any hold")
	}
	for round := range 3 {
		var wg sync.WaitGroup
		gate := make(chan struct{})
		for i := range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				release := q.Hold()
				defer release()
				<-gate
				time.Sleep(time.Duration(i%5) * time.Millisecond)
				release() // twice: the second does nothing
			}()
		}
		waitFor(t, "pinned", q.Pinned)
		close(gate)
		wg.Wait()
		waitFor(t, "unpinned after the linger", func() bool { return !q.Pinned() })
		q.mu.Lock()
		holds := q.holds
		q.mu.Unlock()
		if holds != 0 {
			t.Fatalf("round %d: %d holds left after every release", round, holds)
		}
	}
}
