package run

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/api"
)

// Output in write order (issue 13). Two pipes read by two goroutines cannot
// say which of two writes on different pipes came first. So the program's
// stdout and stderr are two datagram sockets connected to one receiving
// socket: each write(2) is one datagram, and the receiver's single queue
// holds them in the order the kernel took them, whichever stream they
// came from. The sender's address says which stream a datagram is. That
// is a guarantee, not a likelihood: two writes are shown in the order in
// which their write(2) calls returned.
//
// The cost, documented in docs/protocol.md: one write(2) may carry at most
// maxWrite bytes (larger ones fail with EMSGSIZE; Python's print of a
// larger string does one write), and open("/dev/stdout") fails with ENXIO
// as for any socket.

// maxWrite is the largest single write a program can make to stdout or
// stderr: the default output cap (1 MiB) several times over.
const maxWrite = 4<<20 + 64<<10

// stdio is a run's standard streams: stdin a pipe, stdout and stderr
// datagram sockets into one receiver.
type stdio struct {
	stdinR, stdinW *os.File
	outW, errW     *os.File // the program's ends
	recv           *os.File // idexd's end, non-blocking, in the netpoller
	outAddr        string
	errAddr        string
}

func newStdio(f *socketFactory) (*stdio, error) {
	if s := f.take(); s != nil {
		return s, nil
	}
	// The stock ran out (a burst): made now.
	var (
		s   *stdio
		err error
	)
	if ferr := f.do(func() { s, err = makeStdio() }); ferr != nil {
		return nil, ferr
	}
	return s, err
}

func makeStdio() (*stdio, error) {
	s := &stdio{}
	var err error
	if s.stdinR, s.stdinW, err = os.Pipe(); err != nil {
		return nil, fmt.Errorf("create stdin pipe: %w", err)
	}
	recvFD, recvAddr, err := boundDgram()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("create output socket: %w", err), s.closeAll())
	}
	if err := unix.SetNonblock(recvFD, true); err != nil {
		return nil, errors.Join(fmt.Errorf("output socket: %w", err), unix.Close(recvFD), s.closeAll())
	}
	// Non-blocking before os.NewFile, so the file is in the netpoller and
	// its reader can be woken by a deadline.
	s.recv = os.NewFile(uintptr(recvFD), "output")
	if s.outW, s.outAddr, err = sender("stdout", recvAddr); err != nil {
		return nil, errors.Join(err, s.closeAll())
	}
	if s.errW, s.errAddr, err = sender("stderr", recvAddr); err != nil {
		return nil, errors.Join(err, s.closeAll())
	}
	return s, nil
}

// boundDgram is a datagram socket bound to a kernel-chosen abstract address.
func boundDgram() (int, *unix.SockaddrUnix, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, nil, fmt.Errorf("socket: %w", err)
	}
	// An empty name autobinds: a unique abstract address in idexd's network
	// namespace, which no run can reach (each has its own).
	if err := unix.Bind(fd, &unix.SockaddrUnix{}); err != nil {
		return -1, nil, errors.Join(fmt.Errorf("bind: %w", err), unix.Close(fd))
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return -1, nil, errors.Join(fmt.Errorf("getsockname: %w", err), unix.Close(fd))
	}
	ua, ok := sa.(*unix.SockaddrUnix)
	if !ok {
		return -1, nil, errors.Join(fmt.Errorf("getsockname: %T", sa), unix.Close(fd))
	}
	return fd, ua, nil
}

// sender is one of the program's output streams, connected to the receiver.
func sender(name string, to *unix.SockaddrUnix) (*os.File, string, error) {
	fd, addr, err := boundDgram()
	if err != nil {
		return nil, "", fmt.Errorf("create %s socket: %w", name, err)
	}
	// A datagram may be as large as the send buffer: raise it past the
	// default (about 200 KiB) so that ordinary large prints fit.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, maxWrite/2); err != nil {
		return nil, "", errors.Join(fmt.Errorf("%s socket: SO_SNDBUFFORCE: %w", name, err), unix.Close(fd))
	}
	if err := unix.Connect(fd, to); err != nil {
		return nil, "", errors.Join(fmt.Errorf("connect %s socket: %w", name, err), unix.Close(fd))
	}
	return os.NewFile(uintptr(fd), name), addr.Name, nil
}

// childFiles are the program's stdin, stdout and stderr.
func (s *stdio) childFiles() (stdin, stdout, stderr *os.File) { return s.stdinR, s.outW, s.errW }

// closeChildEnds closes the program's ends; a second call does nothing.
func (s *stdio) closeChildEnds() error {
	err := closeFiles(s.stdinR, s.outW, s.errW)
	s.stdinR, s.outW, s.errW = nil, nil, nil
	return err
}

func (s *stdio) closeAll() error {
	err := errors.Join(s.closeChildEnds(), closeFiles(s.stdinW, s.recv))
	s.stdinW, s.recv = nil, nil
	return err
}

// readOutput turns datagrams into events until the run's finish sets a
// read deadline on recv (its cgroup is empty, so nothing more can be
// sent), then takes what is still queued.
func (r *Execution) readOutput(s *stdio) {
	defer r.readers.Done()
	// finish closes recv once this returns.
	rc, err := s.recv.SyscallConn()
	if err != nil {
		r.e.log.Error("output socket", "run", r.id, "err", err)
		return
	}
	buf := make([]byte, 4<<10)
	var (
		p    []byte
		from unix.Sockaddr
		rerr error
	)
	// recvOne reads one datagram without blocking; false when none is queued.
	recvOne := func(fd int) bool {
		size, _, err := unix.Recvfrom(fd, nil, unix.MSG_PEEK|unix.MSG_TRUNC|unix.MSG_DONTWAIT)
		if err == unix.EAGAIN {
			return false
		}
		b := buf
		if err == nil && size > len(b) {
			// A big write: a buffer for it alone, so a quiet run keeps 4 KiB.
			b = make([]byte, size)
		}
		n, sa, err := unix.Recvfrom(fd, b, unix.MSG_DONTWAIT)
		if err == unix.EAGAIN {
			return false
		}
		p, from, rerr = b[:max(n, 0)], sa, err
		return true
	}
	deliver := func() bool {
		if rerr != nil {
			r.e.log.Error("read output", "run", r.id, "err", rerr)
			return false
		}
		ua, _ := from.(*unix.SockaddrUnix)
		switch {
		case ua == nil:
		case ua.Name == s.outAddr:
			r.appendOutput(api.EventStdout, p)
		case ua.Name == s.errAddr:
			r.appendOutput(api.EventStderr, p)
		}
		// Anything else is not the program's: dropped.
		return true
	}
	for {
		err := rc.Read(func(fd uintptr) bool { return recvOne(int(fd)) })
		if err != nil {
			break // the deadline finish set, or the socket is gone
		}
		if !deliver() {
			return
		}
	}
	// Drain: the senders are gone, every datagram sent is queued.
	for {
		got := false
		if err := rc.Control(func(fd uintptr) { got = recvOne(int(fd)) }); err != nil || !got {
			return
		}
		if !deliver() {
			return
		}
	}
}

// endOutput tells readOutput that nothing more can be sent.
func (s *stdio) endOutput() error {
	if s == nil || s.recv == nil {
		return nil
	}
	if err := s.recv.SetReadDeadline(time.Now()); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("end output: %w", err)
	}
	return nil
}
