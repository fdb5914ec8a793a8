package files

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/fsid"
)

// workers run file operations as students, on a few OS threads that the
// pool holds (each locked to its worker goroutine) while it is open.
//
// For each operation a worker takes the student's filesystem identity
// (fsuid and fsgid; it has no supplementary groups) and drops every
// effective capability, runs the operation, then takes root's back. So the
// kernel checks permissions as for the student's own programs, creates
// files owned by the student (no chown afterwards, nothing root-owned in
// between), and charges and enforces the student's disk quota: root would
// bypass it with CAP_SYS_RESOURCE. On NFS the server sees the student's
// uid too. Credentials are per thread in Linux, so only the worker's
// thread changes, and no other goroutine runs on it meanwhile.
//
// No thread ever ends here: a child started with Pdeathsig is killed when
// the thread that started it ends, and any Go thread may have started one
// (a warm helper, a run) before a worker locked it. So when the pool
// closes, each thread gets back what the worker changed (umask, groups)
// and returns to the Go scheduler; one that cannot is parked for ever,
// never ended. A helper process per operation would cost ~1.5 ms against
// microseconds here (BenchmarkAsStudent).
type workers struct {
	log  *slog.Logger
	jobs chan job
	quit chan struct{} // closed by close
	wg   sync.WaitGroup
	once sync.Once
}

type job struct {
	uid, gid uint32
	fn       func() error
	done     chan error
}

// numWorkers bounds the file operations in progress at once. Each is
// short: a request's body is read by the handler, not by a worker.
const numWorkers = 8

func startWorkers(n int, log *slog.Logger) (*workers, error) {
	s := &workers{log: log, jobs: make(chan job), quit: make(chan struct{})}
	ready := make(chan error, n)
	for range n {
		s.wg.Add(1)
		go s.worker(ready)
	}
	var errs []error
	for range n {
		errs = append(errs, <-ready)
	}
	if err := errors.Join(errs...); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// close stops the workers once the jobs in progress are done; a job
// asked for afterwards is refused.
func (s *workers) close() {
	s.once.Do(func() { close(s.quit) })
	s.wg.Wait()
}

// as runs fn on a worker acting as the student uid, gid.
func (s *workers) as(uid, gid uint32, fn func() error) error {
	if uid == 0 || gid == 0 {
		return fmt.Errorf("act as student: refusing uid %d gid %d", uid, gid)
	}
	j := job{uid: uid, gid: gid, fn: fn, done: make(chan error, 1)}
	select {
	case s.jobs <- j:
		return <-j.done
	case <-s.quit:
		return errors.New("act as student: idexd is shutting down")
	}
}

func (s *workers) worker(ready chan<- error) {
	runtime.LockOSThread()
	restore, err := prepareWorker()
	if err != nil {
		ready <- err
		s.release(restore)
		return
	}
	ready <- nil
	for {
		var j job
		select {
		case j = <-s.jobs:
		case <-s.quit:
			s.release(restore)
			return
		}
		err := becomeStudent(j.uid, j.gid)
		if err == nil {
			err = j.fn()
		}
		if rerr := becomeRoot(); rerr != nil {
			// This thread's state is unknown: it runs nothing more.
			j.done <- errors.Join(err, rerr)
			s.wg.Add(1)
			go s.worker(make(chan error, 1))
			s.park(rerr)
			return
		}
		j.done <- err
	}
}

// release gives the thread back to the scheduler as it was, or parks it.
func (s *workers) release(restore func() error) {
	if restore != nil {
		if err := restore(); err != nil {
			s.park(err)
			return
		}
	}
	runtime.UnlockOSThread()
	s.wg.Done()
}

// park keeps a thread whose state could not be restored from ever
// running Go code again, without ending it.
func (s *workers) park(err error) {
	s.log.Error("a files worker thread is parked for good: its credentials could not be restored", "err", err)
	s.wg.Done()
	select {}
}

// prepareWorker gives the thread a filesystem context of its own with
// umask 0, so that files and directories get exactly the modes asked for
// (without a chmod, which would drop the setgid bit of the shared
// layout's directories: the student is not in their group), and no
// supplementary groups. restore undoes both; it is nil when nothing
// changed.
func prepareWorker() (restore func() error, err error) {
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return nil, fmt.Errorf("files worker: own filesystem context: %w", err)
	}
	// The context is this thread's own now: reading the umask by setting
	// it changes nobody else's.
	umask := unix.Umask(0)
	groups, err := unix.Getgroups()
	if err != nil {
		unix.Umask(umask)
		return nil, fmt.Errorf("files worker: read groups: %w", err)
	}
	restore = func() error {
		unix.Umask(umask)
		return setThreadGroups(groups)
	}
	if err := setThreadGroups(nil); err != nil {
		return restore, fmt.Errorf("files worker: clear groups: %w", err)
	}
	return restore, becomeRoot()
}

// setThreadGroups sets this thread's supplementary groups only:
// syscall.Setgroups would change every thread of the process
// (AllThreadsSyscall).
func setThreadGroups(groups []int) error {
	gs := make([]uint32, len(groups))
	for i, g := range groups {
		gs[i] = uint32(g)
	}
	var p unsafe.Pointer
	if len(gs) > 0 {
		p = unsafe.Pointer(&gs[0])
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(gs)), uintptr(p), 0); e != 0 {
		return fmt.Errorf("setgroups: %w", e)
	}
	return nil
}

var capHeader = unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}

// setEffective makes the thread's effective capabilities all of its
// permitted ones (on) or none (off), and checks that it did.
func setEffective(on bool) error {
	var c [2]unix.CapUserData
	if err := unix.Capget(&capHeader, &c[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	for i := range c {
		c[i].Effective = 0
		if on {
			c[i].Effective = c[i].Permitted
		}
	}
	if err := unix.Capset(&capHeader, &c[0]); err != nil {
		return fmt.Errorf("set capabilities: %w", err)
	}
	var now [2]unix.CapUserData
	if err := unix.Capget(&capHeader, &now[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	if now[0].Effective != c[0].Effective || now[1].Effective != c[1].Effective {
		return fmt.Errorf("effective capabilities are %x %x, not %x %x", now[0].Effective, now[1].Effective, c[0].Effective, c[1].Effective)
	}
	return nil
}

// becomeStudent: the student's fsuid and fsgid, no effective capability.
// Setting the ids needs CAP_SETUID and CAP_SETGID, so they come first.
func becomeStudent(uid, gid uint32) error {
	if err := fsid.Set(uid, gid); err != nil {
		return fmt.Errorf("act as student: %w", err)
	}
	if err := setEffective(false); err != nil {
		return fmt.Errorf("act as student: %w", err)
	}
	return nil
}

// becomeRoot undoes becomeStudent: capabilities first, then the ids.
func becomeRoot() error {
	if err := setEffective(true); err != nil {
		return fmt.Errorf("act as root again: %w", err)
	}
	if err := fsid.Set(0, 0); err != nil {
		return fmt.Errorf("act as root again: %w", err)
	}
	return nil
}
