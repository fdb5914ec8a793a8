package run

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// Output sockets are made in a network namespace of idexd's own. A unix
// datagram socket's receive queue holds at most net.unix.max_dgram_qlen
// datagrams (10 by default), fixed when the socket is made, from its
// network namespace: with 10, a program writing one byte at a time waits
// for idexd's reader after every tenth write. Raising the sysctl in a
// namespace of our own leaves the host's setting alone. Its abstract
// addresses are also out of reach of every process on the host.

// dgramQueue is the receive queue length of the output sockets: the
// sender's 4 MiB send buffer bounds their memory before this does.
const dgramQueue = 4096

// stockSize is how many runs' standard streams wait, made ahead by the
// factory. Taking a set is a channel receive on the start's path; making
// one there was a hand-off to the factory's locked thread and back, most
// of the claim step: its p50 was 0.20 ms with it, 0.05 ms without
// (bench/README.md). The factory refills after
// each take, once for several takes under a burst.
const stockSize = 8

// socketFactory runs socket creation on one OS thread that lives in its
// own network namespace.
type socketFactory struct {
	log   *slog.Logger
	reqs  chan func()
	stock chan *stdio
	kick  chan struct{}
	done  chan struct{}
	gone  chan struct{} // closed once the stock is closed and the thread left
}

// newSocketFactory starts the thread. When a namespace cannot be made
// (no CAP_SYS_ADMIN, a unit that forbids it), sockets are made in idexd's
// own namespace, with the host's queue length, and the log says so.
func newSocketFactory(log *slog.Logger) *socketFactory {
	f := &socketFactory{log: log, reqs: make(chan func()), stock: make(chan *stdio, stockSize),
		kick: make(chan struct{}, 1), done: make(chan struct{}), gone: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		defer close(f.gone)
		// Never unlocked: the thread leaves with this goroutine, and its
		// namespace with it.
		runtime.LockOSThread()
		if err := privateQueueNS(); err != nil {
			log.Warn("output sockets in idexd's own network namespace: programs that write in tiny pieces wait for idexd more often", "err", err)
		}
		f.fill()
		close(ready)
		for {
			select {
			case fn := <-f.reqs:
				fn()
			case <-f.kick:
				f.fill()
			case <-f.done:
				f.drain()
				return
			}
		}
	}()
	<-ready
	return f
}

// fill makes sets until the stock is full; only the factory's thread
// puts sets in it, so none is made for nothing.
func (f *socketFactory) fill() {
	for len(f.stock) < cap(f.stock) {
		s, err := makeStdio()
		if err != nil {
			// A start makes its own, and says what fails.
			f.log.Warn("make a run's standard streams ahead", "err", err)
			return
		}
		f.stock <- s
	}
}

// drain closes the sets left in the stock.
func (f *socketFactory) drain() {
	for {
		select {
		case s := <-f.stock:
			if err := s.closeAll(); err != nil {
				f.log.Error("close a run's standard streams made ahead", "err", err)
			}
		default:
			return
		}
	}
}

// take returns a set from the stock, or nil when it is empty, and has the
// factory refill it.
func (f *socketFactory) take() *stdio {
	var s *stdio
	select {
	case s = <-f.stock:
	default:
	}
	select {
	case f.kick <- struct{}{}:
	default: // a refill is due already
	}
	return s
}

func privateQueueNS() error {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("unshare a network namespace: %w", err)
	}
	// /proc/sys/net is the namespace of the thread that opens it: this one.
	const qlen = "/proc/sys/net/unix/max_dgram_qlen"
	err := os.WriteFile(qlen, []byte(strconv.Itoa(dgramQueue)), 0)
	if !errors.Is(err, unix.EROFS) {
		return err
	}
	// systemd's ProtectKernelTunables= makes /proc/sys read-only: a proc of
	// this thread's own, in a mount namespace of its own, is not.
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare a mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount proc: %w", err)
	}
	if err := os.WriteFile(qlen, []byte(strconv.Itoa(dgramQueue)), 0); err != nil {
		return fmt.Errorf("set max_dgram_qlen: %w", err)
	}
	return nil
}

// do runs fn on the factory's thread.
func (f *socketFactory) do(fn func()) error {
	done := make(chan struct{})
	select {
	case f.reqs <- func() { fn(); close(done) }:
	case <-f.done:
		return errors.New("socket factory closed")
	}
	<-done
	return nil
}

// close ends the factory's thread once the sets still in its stock are
// closed.
func (f *socketFactory) close() {
	close(f.done)
	<-f.gone
}
