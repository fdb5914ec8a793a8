package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/fsid"
	"github.com/idexd/idexd/internal/sandbox/inside"
)

// Waiting for input (issue 13): the web tier shows an input box exactly
// while the program is blocked reading its empty stdin, and the wall limit
// does not count that time. One goroutine of idexd looks at every live
// run's tasks every inputPoll: a task blocked in read(2), readv(2) or
// pread64(2) on a file descriptor that is the run's stdin (the pipe, or
// the terminal's peer) waits for input. A program that sleeps, computes,
// or reads a file or a socket is not waiting; nor is one reading a stdin
// that has data or is closed (read does not block then).
//
// It used to be each helper looking at its own run from inside: the Go
// runtime's wake-ups around a 10 Hz ticker cost each live run about 10 ms
// of CPU per second, so 200 students at an input() prompt took a whole
// core of this 2-core host (docs/load.md). One poller for all runs costs a
// few /proc reads per run and tick, and nothing when no run is live.

// inputPoll is how often the watcher looks at a run that just started or
// changed; a wait shorter than that may go unseen, which costs nothing but
// a shown input box. A run that stays as it was is looked at less often,
// down to once per inputPollMax: with 500 students at an input() prompt
// that is 1,000 looks a second instead of 5,000. Input or a signal sent to
// the run (Process.InputSent) brings it back to inputPoll at once.
const (
	inputPoll    = 100 * time.Millisecond
	inputPollMax = 500 * time.Millisecond
)

// inputWatch is one run under watch.
type inputWatch struct {
	threads  string // the run's cgroup.threads: every task, the helper's too
	helper   int    // the helper's pid (the run's PID 1), never the one reading
	uid, gid uint32 // the student's: the watcher looks as them
	stdin    inside.FileID
	on       func(waiting bool)
	// soon asks for a look at the next tick (Process.InputSent).
	soon atomic.Bool

	// Owned by the watcher's goroutine, under inputWatcher.sweep.
	removed  bool
	waiting  bool
	reads    uint64
	interval time.Duration
	next     time.Time
	// skip says, for each task seen, whether it is not looked at: the
	// helper's own threads, and tasks whose /proc the student may not
	// read (under systemd's hardening, the helper's: it is not dumpable).
	skip map[int]bool
}

// inputWatcher runs the one poller while some run is under watch.
type inputWatcher struct {
	log *slog.Logger

	mu      sync.Mutex // guards runs and running
	runs    map[*inputWatch]struct{}
	running bool

	// sweep is held while the poller looks and calls back; remove takes
	// it so that no call reaches a run after its Wait returned.
	sweep sync.Mutex
}

func newInputWatcher(log *slog.Logger) *inputWatcher {
	return &inputWatcher{log: log, runs: make(map[*inputWatch]struct{})}
}

func (w *inputWatcher) add(x *inputWatch) {
	x.skip = make(map[int]bool)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.runs[x] = struct{}{}
	if !w.running {
		w.running = true
		go w.loop()
	}
}

// remove stops watching x; once it returns, x.on is not called again.
func (w *inputWatcher) remove(x *inputWatch) {
	w.sweep.Lock()
	x.removed = true
	w.sweep.Unlock()
	w.mu.Lock()
	delete(w.runs, x)
	w.mu.Unlock()
}

func (w *inputWatcher) loop() {
	// The poller changes its thread's filesystem uid and gid to look as
	// each student (fsid: per thread): under systemd's
	// ProtectProc=invisible and without CAP_SYS_PTRACE, root may not read
	// a student's /proc/PID/syscall, the student may.
	runtime.LockOSThread()
	t := time.NewTicker(inputPoll)
	defer t.Stop()
	var batch []*inputWatch
	for range t.C {
		w.mu.Lock()
		if len(w.runs) == 0 {
			w.running = false
			w.mu.Unlock()
			runtime.UnlockOSThread()
			return
		}
		batch = batch[:0]
		for x := range w.runs {
			batch = append(batch, x)
		}
		w.mu.Unlock()
		w.sweep.Lock()
		ok := true
		now := time.Now()
		for _, x := range batch {
			if x.removed || !ok || (!x.soon.Swap(false) && now.Before(x.next)) {
				continue
			}
			var changed bool
			changed, ok = w.look(x)
			if changed || x.interval == 0 {
				x.interval = inputPoll
			} else {
				x.interval = min(2*x.interval, inputPollMax)
			}
			// A little early, so that a tick's jitter does not skip one.
			x.next = now.Add(x.interval - inputPoll/2)
		}
		w.sweep.Unlock()
		if !ok {
			// The thread's credentials are not root's: it may never run
			// anything else, nor end (a child that any goroutine started
			// on it with Pdeathsig would die with it; internal/files does
			// the same). The next add starts anew on another thread.
			w.mu.Lock()
			w.running = false
			w.mu.Unlock()
			select {}
		}
	}
}

// look tells x.on about a change of x's waiting for input, and whether
// there was one. ok is false when the thread's credentials could not be
// put back: the thread must then not run anything else.
func (w *inputWatcher) look(x *inputWatch) (changed, ok bool) {
	now, reads, err := x.blocked()
	if err != nil {
		w.log.Error("watch for input; stopped until the next run starts", "helper", x.helper, "err", err)
		return false, false
	}
	// The same task blocked again, but it read in between (a line was
	// answered and the next prompt came within one look): that is a
	// resume and a new wait, or the input limit would run on.
	again := now && x.waiting && reads != x.reads
	x.reads = reads
	if now == x.waiting && !again {
		return false, true
	}
	if x.waiting {
		x.on(false)
	}
	if now {
		x.on(true)
	}
	x.waiting = now
	return true, true
}

// readSyscalls block reading the file descriptor in their first argument
// (this architecture's numbers).
var readSyscalls = map[int]bool{unix.SYS_READ: true, unix.SYS_READV: true, unix.SYS_PREAD64: true}

// selectSyscalls wait for the fds below their first argument.
var selectSyscalls = map[int]bool{unix.SYS_PSELECT6: true, selectNR: true}

// blocked reports whether some task of the run is blocked in a read of
// its stdin, and how many read syscalls that task's process has made
// (syscr), which tells one wait from the next.
func (x *inputWatch) blocked() (waiting bool, reads uint64, err error) {
	var tbuf [1024]byte
	tids, rerr := readSmall(x.threads, tbuf[:])
	if rerr != nil {
		return false, 0, nil // the run is ending: its group goes
	}
	if err := fsid.Set(x.uid, x.gid); err != nil {
		return false, 0, errors.Join(fmt.Errorf("look as uid %d: %w", x.uid, err), fsid.Set(0, 0))
	}
	defer func() {
		if rerr := fsid.Set(0, 0); rerr != nil {
			err = fmt.Errorf("look as root again: %w", rerr)
		}
	}()
	var buf [256]byte
	for line := range bytes.Lines(tids) {
		tid, err := strconv.Atoi(string(bytes.TrimSpace(line)))
		if err != nil {
			continue
		}
		skip, seen := x.skip[tid]
		if !seen && len(x.skip) >= 4096 {
			// A program that forks all the time: forget the dead.
			clear(x.skip)
		}
		if !seen {
			// One of the helper's threads shows in its task directory;
			// a thread never changes its process.
			skip = tid == x.helper || unix.Access("/proc/"+strconv.Itoa(x.helper)+"/task/"+strconv.Itoa(tid), unix.F_OK) == nil
			x.skip[tid] = skip
		}
		if skip {
			continue
		}
		dir := "/proc/" + strconv.Itoa(tid)
		n, err := readInto(dir+"/syscall", buf[:])
		if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) {
			x.skip[tid] = true
			continue
		}
		if err != nil {
			continue // gone meanwhile
		}
		fd, ok := stdinRead(buf[:n])
		if !ok {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(dir+"/fd/"+strconv.Itoa(fd), &st) != nil {
			continue
		}
		if (inside.FileID{Dev: st.Dev, Ino: st.Ino}) == x.stdin {
			return true, readCount(dir + "/io"), nil
		}
	}
	return false, 0, nil
}

// stdinRead parses a /proc/TID/syscall line: the fd the task is blocked
// reading, if it is in a read or in a select on fd 0 alone.
func stdinRead(line []byte) (int, bool) {
	fs := bytes.Fields(line)
	if len(fs) < 2 {
		return 0, false // "running": not in a syscall
	}
	nr, err := strconv.Atoi(string(fs[0]))
	if err != nil {
		return 0, false
	}
	arg, err := strconv.ParseUint(string(bytes.TrimPrefix(fs[1], []byte("0x"))), 16, 32)
	if err != nil {
		return 0, false
	}
	switch {
	case readSyscalls[nr]:
		return int(arg), true
	case selectSyscalls[nr] && arg == 1:
		// select on fd 0 alone: Python's input() with readline on a
		// terminal waits so before it reads.
		return 0, true
	}
	return 0, false
}

// readInto reads a small /proc file into buf without allocating.
func readInto(path string, buf []byte) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	n, err := unix.Read(fd, buf)
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	return n, err
}

// readSmall reads a file that is usually small into buf, and all of it
// when it is not.
func readSmall(path string, buf []byte) ([]byte, error) {
	n, err := readInto(path, buf)
	if err != nil {
		return nil, err
	}
	if n < len(buf) {
		return buf[:n], nil
	}
	return os.ReadFile(path)
}

// readCount is the syscr line of a process's io file, 0 when unreadable.
func readCount(path string) uint64 {
	var buf [512]byte
	n, err := readInto(path, buf[:])
	if err != nil {
		return 0
	}
	for line := range bytes.Lines(buf[:n]) {
		if v, ok := bytes.CutPrefix(line, []byte("syscr: ")); ok {
			c, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
			if err == nil {
				return c
			}
		}
	}
	return 0
}
