package run

import (
	"log/slog"
	"os"
	"testing"

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
