package bench

import (
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// burn spends d of this process's CPU time.
func burn(t *testing.T, d time.Duration) {
	t.Helper()
	self := func() time.Duration {
		var u unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_SELF, &u); err != nil {
			t.Fatal(err)
		}
		return time.Duration(u.Utime.Nano() + u.Stime.Nano())
	}
	for start := self(); self()-start < d; {
		for range 100000 {
		}
	}
}

// TestSpanCountsTheServerBetweenWindows: what the server spends outside
// its own samples' windows (idexd's warm pool refilling during the
// floor's sample) is charged to its runs.
func TestSpanCountsTheServerBetweenWindows(t *testing.T) {
	m := &cpuMeter{pid: os.Getpid()}
	start := m.spanStart()
	m.begin()
	m.end(true, 1) // the server's own window: next to nothing spent
	burn(t, 80*time.Millisecond)
	m.spanEnd(start)
	if m.err != nil {
		t.Fatal(m.err)
	}
	// /proc/PID/stat counts in 10 ms ticks.
	if m.idexd.daemon < 60*time.Millisecond {
		t.Errorf("server CPU over the span %v, want at least 60ms of the 80ms spent between windows", m.idexd.daemon)
	}
	if got, ok := m.serverPerRun(); !ok || got < 60 {
		t.Errorf("server CPU per run %.2f ms (ok %v), want at least 60", got, ok)
	}
}
