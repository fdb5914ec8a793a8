package run

import (
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestOutputQueueIsLong: the output sockets queue far more than the
// kernel's default of 10 datagrams, so a program writing tiny pieces does
// not wait for idexd's reader after every tenth write.
func TestOutputQueueIsLong(t *testing.T) {
	if os.Geteuid() != 0 {
		// testutil (which would say so for CI) imports this package.
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (a network namespace); CI runs as root, so this is a failure")
		}
		t.Skip("needs root")
	}
	f := newSocketFactory(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	defer f.close()
	s, err := newStdio(f)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.closeAll(); err != nil {
			t.Error(err)
		}
	}()
	fd := int(s.outW.Fd())
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	sent := 0
	for ; sent < 1000; sent++ {
		if _, err := unix.Write(fd, []byte("x")); err != nil {
			break
		}
	}
	if sent < 1000 {
		t.Errorf("%d one-byte writes queued before the sender would block, want 1000 (max_dgram_qlen %d in idexd's socket namespace)", sent, dgramQueue)
	}
}

// openFDs is testutil.OpenFDs, which this package's own tests cannot
// import (testutil imports run).
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestStdioStock: runs' standard streams are made ahead; a burst larger
// than the stock still gets a set each, all different; the stock is full
// again after it; closing the factory closes what is left in it.
func TestStdioStock(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (a network namespace); CI runs as root, so this is a failure")
		}
		t.Skip("needs root")
	}
	before := openFDs(t)
	f := newSocketFactory(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if got := len(f.stock); got != stockSize {
		t.Fatalf("%d sets in stock at start, want %d", got, stockSize)
	}
	const n = stockSize + 4
	sets := make([]*stdio, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { sets[i], errs[i] = newStdio(f) })
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, s := range sets {
		if errs[i] != nil {
			t.Fatalf("set %d: %v", i, errs[i])
		}
		if seen[s.outAddr] {
			t.Fatalf("set %d: sender %q handed out twice", i, s.outAddr)
		}
		seen[s.outAddr] = true
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(f.stock) < stockSize && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := len(f.stock); got != stockSize {
		t.Errorf("%d sets in stock after the burst, want it refilled to %d", got, stockSize)
	}
	for _, s := range sets {
		if err := s.closeAll(); err != nil {
			t.Error(err)
		}
	}
	f.close()
	if after := openFDs(t); after != before {
		t.Errorf("%d fds open after the factory closed, %d before", after, before)
	}
}
