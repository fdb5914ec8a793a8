// Package netns supplies the network namespaces that runs join: each has
// only lo, up, so a program can serve and connect on 127.0.0.1 and reach
// nothing else.
//
// Making a namespace costs idexd about 0.5 ms of CPU here, and tearing it
// down more, in a kernel worker that no run's cgroup is charged for: 0.6
// to 1.8 ms of all CPUs' busy time per run (bench/README.md). So a namespace
// outlives its run: it goes back to the student whose run it was, and that
// student's next run joins it again; fresh ones are made ahead, off the
// path from Run to first output, for students who have none.
//
// A namespace never goes to another student. A student's programs can pass
// a socket of their namespace, over a Unix socket in the student's
// directory, to the student's other run, and keep it after their own run
// ended: a socket that is neither bound nor connected shows nowhere, so no
// check could prove the namespace free of it, and another student's run
// must never share a loopback with it. Within one student, a namespace
// comes back only with no socket left in it (TIME_WAIT included): each run
// starts as on a fresh one, and a port its last run closed can be bound.
package netns

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultMaxKept is how many used namespaces idexd keeps for students by
// default: a class's worth, about 16 MiB of kernel memory.
const DefaultMaxKept = 64

// FDsPerNS is how many of idexd's fds a namespace holds: its own, and the
// three proc/net files that list its sockets.
const FDsPerNS = 1 + len(sockFiles)

// Config sizes a Supply.
type Config struct {
	// Spares is how many fresh namespaces wait for students who have none.
	Spares int
	// MaxKept bounds the used namespaces kept for their students, all
	// students together (each holds about 250 KiB of kernel memory here);
	// beyond it the least recently used goes.
	MaxKept int
	// Idle is how long a kept namespace may wait for its student's next run.
	Idle time.Duration
	Log  *slog.Logger
}

// NS is one network namespace, held open by idexd.
type NS struct {
	f *os.File
	// socks are its sockstat, sockstat6 and unix files, opened from
	// inside it when it was made: a proc/net file opened once stays the
	// namespace's, from any thread, so a run's end reads them without
	// entering the namespace through the worker's thread: a setns there
	// and back and two thread hand-offs made BenchmarkGetPut take 204-228
	// us a cycle, against 24-25 us now.
	socks [3]int
	used  time.Time
}

// FD is the namespace's fd, to send to a run's helper (setns).
func (n *NS) FD() int { return int(n.f.Fd()) }

// Close drops the namespace; the kernel tears it down once nothing else
// holds it.
func (n *NS) Close() error {
	var errs []error
	for _, fd := range n.socks {
		if err := unix.Close(fd); err != nil {
			errs = append(errs, fmt.Errorf("close a network namespace's socket list: %w", err))
		}
	}
	if err := n.f.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close network namespace: %w", err))
	}
	return errors.Join(errs...)
}

// Stats count where the namespaces that Get handed out came from.
type Stats struct {
	Kept, Spare, Made int64
}

// Supply hands out network namespaces and takes them back.
type Supply struct {
	cfg  Config
	wmu  sync.Mutex
	w    *worker // through worker()
	kick chan struct{}
	stop chan struct{}
	done chan struct{}

	mu     sync.Mutex
	spares []*NS
	kept   map[string][]*NS // each student's, most recently used last
	nkept  int
	closed bool

	nKept, nSpare, nMade atomic.Int64
}

// New starts a Supply and begins making its spares. It fails when this
// process cannot make a network namespace (no CAP_SYS_ADMIN, or a unit
// that forbids it).
func New(cfg Config) (*Supply, error) {
	if cfg.Log == nil {
		return nil, errors.New("netns: Log is required")
	}
	if cfg.Idle <= 0 {
		cfg.Idle = 10 * time.Minute
	}
	w, err := startWorker()
	if err != nil {
		return nil, err
	}
	s := &Supply{cfg: cfg, w: w, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		kept: map[string][]*NS{}}
	// One made now: a host where it fails says so at start, not at the
	// first run.
	n, err := s.w.make()
	if err != nil {
		s.w.close()
		return nil, err
	}
	s.spares = append(s.spares, n)
	go s.loop()
	return s, nil
}

// Get returns a namespace for a run of student: the student's own kept
// one, else a spare, else a new one made now.
func (s *Supply) Get(student string) (*NS, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errClosed
	}
	if l := s.kept[student]; len(l) > 0 {
		n := l[len(l)-1]
		if len(l) == 1 {
			delete(s.kept, student)
		} else {
			s.kept[student] = l[:len(l)-1]
		}
		s.nkept--
		s.mu.Unlock()
		s.nKept.Add(1)
		return n, nil
	}
	var n *NS
	if k := len(s.spares); k > 0 {
		n, s.spares = s.spares[k-1], s.spares[:k-1]
	}
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	if n != nil {
		s.nSpare.Add(1)
		return n, nil
	}
	w, err := s.worker()
	if err != nil {
		return nil, err
	}
	n, err = w.make()
	if err != nil {
		return nil, err
	}
	s.nMade.Add(1)
	return n, nil
}

// Put takes back the namespace of student's run once every process of
// the run is gone. It keeps it for the student's next run when no socket
// is left in it, and drops it otherwise.
func (s *Supply) Put(student string, n *NS) {
	err := n.clean()
	if err == nil {
		n.used = time.Now()
		s.mu.Lock()
		if !s.closed {
			s.kept[student] = append(s.kept[student], n)
			s.nkept++
			n = s.evictLocked(s.cfg.MaxKept)
		}
		s.mu.Unlock()
	} else if !errors.Is(err, errSockets) && !errors.Is(err, errClosed) {
		s.cfg.Log.Error("check a run's network namespace; dropping it", "student", student, "err", err)
	}
	if n != nil {
		if err := n.Close(); err != nil {
			s.cfg.Log.Error("drop a run's network namespace", "student", student, "err", err)
		}
	}
}

// evictLocked removes the least recently used kept namespace while more
// than max are kept, and returns it (at most one is over after a Put).
func (s *Supply) evictLocked(max int) *NS {
	if s.nkept <= max {
		return nil
	}
	var (
		who    string
		oldest *NS
	)
	for st, l := range s.kept {
		if oldest == nil || l[0].used.Before(oldest.used) {
			who, oldest = st, l[0]
		}
	}
	s.drop(who, 0)
	return oldest
}

// drop removes the i-th kept namespace of student from the map.
func (s *Supply) drop(student string, i int) {
	l := s.kept[student]
	l = append(l[:i], l[i+1:]...)
	if len(l) == 0 {
		delete(s.kept, student)
	} else {
		s.kept[student] = l
	}
	s.nkept--
}

// Stats says where handed-out namespaces came from so far.
func (s *Supply) Stats() Stats {
	return Stats{Kept: s.nKept.Load(), Spare: s.nSpare.Load(), Made: s.nMade.Load()}
}

// Kept is how many used namespaces wait for their students now.
func (s *Supply) Kept() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nkept
}

// loop keeps the spares made and drops namespaces kept too long.
func (s *Supply) loop() {
	defer close(s.done)
	tick := time.NewTicker(min(s.cfg.Idle/4, time.Minute))
	defer tick.Stop()
	backoff := time.Duration(0)
	for {
		s.mu.Lock()
		short := len(s.spares) < s.cfg.Spares
		s.mu.Unlock()
		if short && backoff == 0 {
			w, err := s.worker()
			var n *NS
			if err == nil {
				n, err = w.make()
			}
			if errors.Is(err, errClosed) {
				return
			}
			if err != nil {
				backoff = 10 * time.Second
				s.cfg.Log.Error("make a spare network namespace; runs make theirs on the spot meanwhile", "err", err, "retry_in", backoff)
			} else {
				s.mu.Lock()
				if s.closed {
					s.mu.Unlock()
					s.closeLogged(n)
					return
				}
				s.spares = append(s.spares, n)
				s.mu.Unlock()
				continue
			}
		}
		var wait <-chan time.Time
		if backoff > 0 {
			wait = time.After(backoff)
		}
		select {
		case <-s.stop:
			return
		case <-s.kick:
		case <-wait:
			backoff = 0
		case <-tick.C:
			s.expire(time.Now().Add(-s.cfg.Idle))
		}
	}
}

// expire drops the kept namespaces last used before t.
func (s *Supply) expire(t time.Time) {
	var old []*NS
	s.mu.Lock()
	for st, l := range s.kept {
		for i := len(l) - 1; i >= 0; i-- {
			if l[i].used.Before(t) {
				old = append(old, l[i])
				s.drop(st, i)
				l = s.kept[st]
			}
		}
	}
	s.mu.Unlock()
	for _, n := range old {
		s.closeLogged(n)
	}
}

func (s *Supply) closeLogged(n *NS) {
	if err := n.Close(); err != nil {
		s.cfg.Log.Error("drop a network namespace", "err", err)
	}
}

// Close drops every namespace the supply holds; those of live runs go
// when their runs Put them back.
func (s *Supply) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	all := s.spares
	s.spares = nil
	for _, l := range s.kept {
		all = append(all, l...)
	}
	s.kept, s.nkept = map[string][]*NS{}, 0
	s.mu.Unlock()
	close(s.stop)
	<-s.done
	s.wmu.Lock()
	s.w.close()
	s.wmu.Unlock()
	var errs []error
	for _, n := range all {
		errs = append(errs, n.Close())
	}
	return errors.Join(errs...)
}

// errSockets: a namespace still holds sockets.
var errSockets = errors.New("sockets left")

// errClosed: the supply is closed.
var errClosed = errors.New("netns: supply closed")

// worker returns the worker, started again if its thread was lost (it
// could not return to idexd's namespace): a run should not fail for it.
func (s *Supply) worker() (*worker, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	select {
	case <-s.w.gone:
	default:
		return s.w, nil
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, errClosed
	}
	w, err := startWorker()
	if err != nil {
		return nil, err
	}
	s.cfg.Log.Warn("netns: a worker thread could not return to idexd's network namespace; started another")
	s.w = w
	return w, nil
}

// worker runs namespace operations on one OS thread, which enters other
// network namespaces and must always come back to idexd's own: setns and
// unshare change the calling thread only.
type worker struct {
	reqs chan request
	done chan struct{} // closed by close
	gone chan struct{} // closed when the thread has left
}

func startWorker() (*worker, error) {
	w := &worker{reqs: make(chan request), done: make(chan struct{}), gone: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		defer close(w.gone)
		// Never unlocked: a thread that cannot get back to idexd's
		// namespace leaves with this goroutine.
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- fmt.Errorf("netns: open idexd's network namespace: %w", err)
			return
		}
		defer func() { _ = home.Close() }()
		errc <- nil
		for {
			select {
			case r := <-w.reqs:
				err := r.fn()
				back := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET)
				// Answered only once home: nothing of idexd's, not even
				// /proc/self/ns/net when this is the main thread, sees
				// the thread elsewhere between operations.
				r.errc <- err
				if back != nil {
					return
				}
			case <-w.done:
				return
			}
		}
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return w, nil
}

func (w *worker) close() {
	close(w.done)
	<-w.gone
}

var errWorkerGone = errors.New("netns: the supply is closed, or its thread could not return to idexd's network namespace")

type request struct {
	fn   func() error
	errc chan error
}

// do runs fn on the worker's thread and returns once the thread is back
// in idexd's namespace.
func (w *worker) do(fn func() error) error {
	r := request{fn: fn, errc: make(chan error, 1)}
	select {
	case w.reqs <- r:
	case <-w.gone:
		return errWorkerGone
	}
	// Once taken, fn has run and its result comes, even if the thread is
	// lost right after.
	return <-r.errc
}

// make creates a namespace with lo up.
func (w *worker) make() (*NS, error) {
	var n *NS
	err := w.do(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("netns: unshare a network namespace: %w", err)
		}
		f, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			return fmt.Errorf("netns: open the new network namespace: %w", err)
		}
		m := &NS{f: f, socks: [3]int{-1, -1, -1}}
		for i, name := range sockFiles {
			fd, err := unix.Open("/proc/thread-self/net/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return errors.Join(fmt.Errorf("netns: open the new namespace's %s: %w", name, err), m.closeOpened())
			}
			m.socks[i] = fd
		}
		if err := loopbackUp(); err != nil {
			return errors.Join(err, m.closeOpened())
		}
		n = m
		return nil
	})
	return n, err
}

// sockFiles are the proc/net files that list a namespace's sockets, in
// NS.socks' order.
var sockFiles = [3]string{"sockstat", "sockstat6", "unix"}

// closeOpened closes what make opened before it failed.
func (n *NS) closeOpened() error {
	for i, fd := range n.socks {
		if fd < 0 {
			continue
		}
		n.socks[i] = -1
		if err := unix.Close(fd); err != nil {
			return errors.Join(fmt.Errorf("netns: close %s: %w", sockFiles[i], err), n.closeOpened())
		}
	}
	return n.f.Close()
}

// clean reports errSockets when n still holds a socket: any TCP, UDP or
// raw socket bound or connected (TIME_WAIT too), or any Unix socket. It
// reads the files make opened inside n (pread from offset 0 generates a
// proc/net file anew), so it needs no thread of n's.
func (n *NS) clean() error {
	var buf [4096]byte
	for i, name := range sockFiles {
		m, err := unix.Pread(n.socks[i], buf[:], 0)
		if err != nil {
			return fmt.Errorf("netns: read a run's %s: %w", name, err)
		}
		if name == "unix" {
			// The header, then a line per socket; one is enough to tell.
			if bytes.Count(buf[:m], []byte{'\n'}) > 1 {
				return errSockets
			}
			continue
		}
		if m == len(buf) {
			return fmt.Errorf("netns: a run's %s is longer than %d bytes", name, len(buf))
		}
		if u, err := inUse(string(buf[:m])); err != nil {
			return fmt.Errorf("netns: %s: %w", name, err)
		} else if u > 0 {
			return errSockets
		}
	}
	return nil
}

// inUse sums the per-namespace counts of a sockstat file: "inuse" of each
// protocol and "tw" (TIME_WAIT). The file's other figures (sockets used,
// orphans, alloc, mem) are the whole host's.
func inUse(sockstat string) (int, error) {
	sum := 0
	for _, line := range strings.Split(sockstat, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] == "sockets:" {
			continue
		}
		for i := 1; i+1 < len(f); i += 2 {
			if f[i] != "inuse" && f[i] != "tw" {
				continue
			}
			v, err := strconv.Atoi(f[i+1])
			if err != nil {
				return 0, fmt.Errorf("line %q: %w", line, err)
			}
			sum += v
		}
	}
	return sum, nil
}

// loopbackUp brings lo up in this thread's network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns: socket for lo: %w", err)
	}
	ifr, err := unix.NewIfreq("lo")
	if err == nil {
		err = unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr)
	}
	if err == nil {
		ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
		err = unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
	}
	if cerr := unix.Close(fd); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("netns: bring lo up: %w", err)
	}
	return nil
}
