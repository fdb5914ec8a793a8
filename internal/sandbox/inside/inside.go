// Package inside is the part of a run that lives inside its sandbox: the
// helper process that idexd clones into fresh namespaces (mount, IPC, PID,
// UTS) and into the run's cgroup, that prepares those namespaces as root,
// waits for a job, joins the network namespace that comes with it, becomes
// the student, and then stays as the run's PID 1: it forks the
// interpreter, reaps every orphan, forwards Ctrl-C and friends, and
// reports how the program ended.
//
// The installed helper is C (cmd/idexd-sandbox/main.c, no Go runtime to
// start per run); this package holds the protocol both speak (wire.go) and
// the helper's Go twin, which idexd runs by re-executing itself when no
// idexd-sandbox is installed beside it. It imports nothing of the daemon.
//
// The helper talks to idexd over one SOCK_SEQPACKET socket at fd 3, one
// message per packet: the job as NUL-terminated fields (Job.MarshalBinary),
// replies as JSON:
//
//	helper -> idexd  {"ready":true}               namespaces prepared
//	idexd  -> helper Job, with stdin/stdout/stderr and (unless the run has
//	                 the host's network) its network namespace as SCM_RIGHTS
//	helper -> idexd  {"pid":N} or {"error":"..."} the program started, or why not
//	helper -> idexd  {"exit":{"code":C}} or {"exit":{"signal":S}}
//	helper -> idexd  {"clean":true}               a kept helper: nothing of
//	                 the run is left
//	helper -> idexd  {"ready":true}               armed for another job
//	                 (then EOF or a Job, as above)
//
// EOF instead of a job means the start was abandoned: the helper exits
// without running anything. After the exit, a helper that serves one run
// (this Go twin always; the C helper unless IDEXD_HELPER_RUNS allows more)
// exits; a kept one kills what the run left and says it is ready again.
// The C helper also stays root and lets only the program's child become
// the student, so that it can serve the next run; this twin becomes the
// student itself.
package inside

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Arg0 marks a process as the helper; Main checks for it.
const Arg0 = "idexd-sandbox-helper"

// Exit codes of the helper itself, outside what a program's status uses:
// the real status travels over the control socket.
const (
	ExitAborted = 125 // idexd closed the control socket before a job
	ExitFailed  = 126 // setup or the job failed; the reason was reported
)

// ctlFD is the control socket's fd in the helper.
const ctlFD = 3

// MaxMessage bounds one control message (a job: argv and environment).
const MaxMessage = 256 << 10

// Network says what network a run gets.
type Network string

const (
	// NetworkNone is a network namespace of its own with only lo, up.
	NetworkNone Network = "none"
	// NetworkHost is the host's network: the instance metadata service
	// and every local service included.
	NetworkHost Network = "host"
)

// Setup is how the helper prepares its namespaces, before any job; idexd
// passes it as argv (Setup.Args).
type Setup struct {
	Network Network
	// TmpBytes caps each private tmpfs (/tmp, /var/tmp, /dev/shm); what a
	// run writes there is also charged to its memory cgroup.
	TmpBytes  int64
	TmpInodes int64
	// Filter is the run's seccomp filter, compiled by idexd: struct
	// sock_filter instructions (FilterInstructionSize bytes each).
	Filter []byte
}

// Rlimits bound one process of the run.
type Rlimits struct {
	FileSizeBytes uint64
	OpenFiles     uint64
	// CPUSeconds, when non-zero, is a per-process backstop; idexd polls
	// the whole cgroup's CPU time for the real limit.
	CPUSeconds uint64
}

// Job is what the helper runs, and as whom.
type Job struct {
	Interpreter string
	// Argv is the interpreter's argv, argv[0] included.
	Argv []string
	Env  []string
	// Dir is the student's directory: the one place of the host's
	// filesystem the run may write, bound read-write at the same path.
	Dir string
	// Terminal, when set, runs the program on a pseudo-terminal of this
	// size instead of the stdio idexd sent; the master goes back to idexd
	// with the reply that gives the program's pid.
	Terminal *Winsize
	// User is the student's name: the run's own /etc/passwd and /etc/group
	// give it to UID and GID (whoami, pwd.getpwuid).
	User string
	// Cwd is where the program starts: Dir or a directory beneath it.
	Cwd     string
	UID     uint32
	GID     uint32
	Umask   uint32
	Rlimits Rlimits
}

// Exit is how the program (the interpreter, the run's main process) ended.
type Exit struct {
	Code   int `json:"code"`
	Signal int `json:"signal,omitempty"`
}

// Reply is one message from the helper.
type Reply struct {
	Ready bool `json:"ready,omitempty"`
	// Clean is a kept helper's word, after the exit, that nothing of the
	// run is left in its PID namespace; ready follows once it has armed
	// fresh namespaces for the next job.
	Clean bool `json:"clean,omitempty"`
	Pid   int  `json:"pid,omitempty"`
	// Threads is how many threads the helper itself has once the program
	// runs: they count against the run's pids limit, so idexd adds them.
	Threads int    `json:"threads,omitempty"`
	Error   string `json:"error,omitempty"`
	Exit    *Exit  `json:"exit,omitempty"`
	// Stdin is what the program's stdin is (with its pid): idexd tells
	// from it when the program waits for input.
	Stdin *FileID `json:"stdin,omitempty"`
}

// FileID is what identifies an open file: its device and inode.
type FileID struct {
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

// fileID is fd's FileID.
func fileID(fd int) (FileID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return FileID{}, fmt.Errorf("helper: stat stdin: %w", err)
	}
	return FileID{Dev: uint64(st.Dev), Ino: st.Ino}, nil
}

// Main runs the helper when this process was started as one, and never
// returns then. Call it first thing in main, and in TestMain of every
// package whose tests re-execute their own binary as a helper.
func Main() {
	if len(os.Args) == 0 || os.Args[0] != Arg0 {
		return
	}
	os.Exit(helper())
}

func send(r Reply) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode reply: %w", err)
	}
	for {
		err := unix.Sendmsg(ctlFD, b, nil, nil, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("send reply: %w", err)
		}
		return nil
	}
}

func helper() int {
	// The run's network namespace is joined by this thread (setns changes
	// one thread) and the program forked from it: it must stay this one.
	runtime.LockOSThread()
	fail := func(err error) int {
		// If even this fails idexd still sees the helper exit without
		// a reply; there is nobody else to tell.
		_ = send(Reply{Error: err.Error()})
		return ExitFailed
	}
	setup, err := ParseSetup(os.Args[1:])
	if err != nil {
		return fail(err)
	}
	if os.Getpid() != 1 {
		return fail(fmt.Errorf("helper: pid %d, want 1: not started in a PID namespace of its own", os.Getpid()))
	}
	// Before anything else: a Ctrl-C sent right after the start reaches
	// the program, and its exit cannot be missed. This early, the runtime
	// also starts now the thread that waits for signals, which would
	// otherwise appear after the helper counted its threads for the pids
	// limit (see reap).
	children := make(chan os.Signal, 1)
	signal.Notify(children, unix.SIGCHLD)
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, forwarded...)
	users, err := prepare(setup)
	if err != nil {
		return fail(err)
	}
	filter, err := decodeFilter(setup.Filter)
	if err != nil {
		return fail(err)
	}
	if err := send(Reply{Ready: true}); err != nil {
		return ExitFailed
	}
	job, stdio, netFD, err := receiveJob()
	if errors.Is(err, errAborted) {
		return ExitAborted
	}
	if err == nil {
		err = joinNetwork(setup.Network, netFD)
	} else if netFD >= 0 {
		_ = unix.Close(netFD)
	}
	if err != nil {
		return fail(err)
	}
	master := -1
	if job.Terminal != nil {
		// The program's stdio is the pty; what idexd sent is not used.
		for _, fd := range stdio {
			_ = unix.Close(fd)
		}
		m, peer, err := openPty(*job.Terminal)
		if err != nil {
			return fail(err)
		}
		master, stdio = m, [3]int{peer, peer, peer}
	}
	stdinID, err := fileID(stdio[0])
	if err != nil {
		return fail(err)
	}
	pid, err := start(job, stdio, filter, users)
	if err != nil {
		return fail(err)
	}
	go forward(sigs, pid)
	reply := Reply{Pid: pid, Threads: threads(), Stdin: &stdinID}
	if master >= 0 {
		err = sendFD(reply, master)
		_ = unix.Close(master) // idexd holds it now
	} else {
		err = send(reply)
	}
	if err != nil {
		// idexd is gone; its death signal is on its way.
		return ExitFailed
	}
	// From here the helper only forwards signals and reaps: it sleeps
	// until one comes (GOGC=off still suits it, and no timer wakes it).
	ex := reap(pid, children)
	if err := send(Reply{Exit: &ex}); err != nil {
		return ExitFailed
	}
	// PID 1 leaving takes every process left in the namespace with it.
	return 0
}

var errAborted = errors.New("aborted before a job arrived")

// receiveJob waits for the job, the three stdio fds and, unless the run
// has the host's network, its network namespace (else -1).
func receiveJob() (Job, [3]int, int, error) {
	var job Job
	stdio := [3]int{-1, -1, -1}
	buf := make([]byte, MaxMessage)
	oob := make([]byte, unix.CmsgSpace(4*4))
	var n, oobn, flags int
	var err error
	for {
		n, oobn, flags, _, err = unix.Recvmsg(ctlFD, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return job, stdio, -1, fmt.Errorf("helper: receive job: %w", err)
	}
	if n == 0 && oobn == 0 {
		return job, stdio, -1, errAborted
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		return job, stdio, -1, fmt.Errorf("helper: job truncated (%d bytes, flags %#x)", n, flags)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return job, stdio, -1, fmt.Errorf("helper: parse job's fds: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			return job, stdio, -1, fmt.Errorf("helper: parse job's fds: %w", err)
		}
		fds = append(fds, got...)
	}
	netFD := -1
	switch len(fds) {
	case 4:
		netFD = fds[3]
	case 3:
	default:
		for _, fd := range fds {
			_ = unix.Close(fd)
		}
		return job, stdio, -1, fmt.Errorf("helper: job came with %d fds, want 3 (stdin, stdout, stderr) and the network namespace", len(fds))
	}
	copy(stdio[:], fds)
	if err := job.UnmarshalBinary(buf[:n]); err != nil {
		return job, stdio, netFD, fmt.Errorf("helper: %w", err)
	}
	return job, stdio, netFD, nil
}

// joinNetwork enters the run's network namespace, which idexd made with lo
// up and keeps for this student's runs only (package netns). setns changes
// this thread alone: helper locked it, and the program is forked from it.
func joinNetwork(network Network, fd int) error {
	if network == NetworkHost {
		if fd >= 0 {
			_ = unix.Close(fd)
			return errors.New("helper: a network namespace came with the job, but the run has the host's network")
		}
		return nil
	}
	if fd < 0 {
		return errors.New("helper: no network namespace came with the job")
	}
	err := unix.Setns(fd, unix.CLONE_NEWNET)
	_ = unix.Close(fd)
	if err != nil {
		return fmt.Errorf("helper: join the run's network namespace: %w", err)
	}
	return nil
}

// start becomes the student and forks the program.
func start(job Job, stdio [3]int, filter *unix.SockFprog, users []*userFile) (int, error) {
	if job.UID == 0 || job.GID == 0 {
		return 0, fmt.Errorf("helper: refusing to run as uid %d gid %d", job.UID, job.GID)
	}
	if err := bindWorkdir(job.Dir); err != nil {
		return 0, err
	}
	if err := nameUser(users, job.User, job.UID, job.GID, job.Dir); err != nil {
		return 0, err
	}
	// Go applies these to every thread of the process. Groups first,
	// while still allowed.
	if err := syscall.Setgroups([]int{}); err != nil {
		return 0, fmt.Errorf("helper: setgroups: %w", err)
	}
	if err := syscall.Setresgid(int(job.GID), int(job.GID), int(job.GID)); err != nil {
		return 0, fmt.Errorf("helper: setgid %d: %w", job.GID, err)
	}
	if err := syscall.Setresuid(int(job.UID), int(job.UID), int(job.UID)); err != nil {
		return 0, fmt.Errorf("helper: setuid %d: %w", job.UID, err)
	}
	// The kernel clears the parent-death signal on a credential change.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		return 0, fmt.Errorf("helper: set parent-death signal: %w", err)
	}
	if err := idexdAlive(); err != nil {
		return 0, err
	}
	// The student's programs share this uid: keep them from reading this
	// process's memory or fds (the control socket) through /proc or ptrace.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return 0, fmt.Errorf("helper: set non-dumpable: %w", err)
	}
	set := []struct {
		name string
		res  int
		rl   unix.Rlimit
	}{
		{"core", unix.RLIMIT_CORE, unix.Rlimit{}},
		{"fsize", unix.RLIMIT_FSIZE, unix.Rlimit{Cur: job.Rlimits.FileSizeBytes, Max: job.Rlimits.FileSizeBytes}},
		{"nofile", unix.RLIMIT_NOFILE, unix.Rlimit{Cur: job.Rlimits.OpenFiles, Max: job.Rlimits.OpenFiles}},
	}
	if c := job.Rlimits.CPUSeconds; c > 0 {
		set = append(set, struct {
			name string
			res  int
			rl   unix.Rlimit
		}{"cpu", unix.RLIMIT_CPU, unix.Rlimit{Cur: c, Max: c + 1}})
	}
	for _, s := range set {
		if err := unix.Setrlimit(s.res, &s.rl); err != nil {
			return 0, fmt.Errorf("helper: set rlimit %s: %w", s.name, err)
		}
	}
	// Nothing this helper holds may reach the program, even an fd opened
	// without O_CLOEXEC somewhere.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return 0, fmt.Errorf("helper: mark fds close-on-exec: %w", err)
	}
	unix.Umask(int(job.Umask))
	if err := loadFilter(filter); err != nil {
		return 0, err
	}
	pid, err := syscall.ForkExec(job.Interpreter, job.Argv, &syscall.ProcAttr{
		Dir:   job.Cwd,
		Env:   job.Env,
		Files: []uintptr{uintptr(stdio[0]), uintptr(stdio[1]), uintptr(stdio[2])},
		// Its own session: the program's process group is what a Ctrl-C
		// goes to; on a terminal, the pty is the session's.
		Sys: procAttr(job),
	})
	for _, fd := range stdio[:stdioCount(job)] {
		// Only the program may hold its stdio: the end of its output is
		// the end of the run's events.
		_ = unix.Close(fd)
	}
	if err != nil {
		return 0, fmt.Errorf("exec %s: %w", job.Interpreter, err)
	}
	return pid, nil
}

// threads counts this process's threads, 0 when /proc cannot tell.
func threads() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return 0
			}
			return n
		}
	}
	return 0
}

// forwarded are the signals the helper passes on to the program's process
// group; idexd interrupts a run by sending SIGINT to the helper.
var forwarded = []os.Signal{unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2}

func forward(sigs <-chan os.Signal, pgid int) {
	for s := range sigs {
		sig, ok := s.(unix.Signal)
		if !ok {
			continue
		}
		// The group may be gone already; nothing to do then.
		_ = unix.Kill(-pgid, sig)
	}
}

// idexdAlive fails when idexd went away while the helper was still root
// (its death signal may have been cleared by the credential change): its
// end of the control socket is closed then.
func idexdAlive() error {
	fds := []unix.PollFd{{Fd: ctlFD, Events: unix.POLLRDHUP}}
	n, err := unix.Poll(fds, 0)
	for errors.Is(err, unix.EINTR) {
		// poll is never restarted after a signal, SA_RESTART or not, and
		// the Go runtime signals its own threads (preemption).
		n, err = unix.Poll(fds, 0)
	}
	if err != nil {
		return fmt.Errorf("helper: poll control socket: %w", err)
	}
	if n > 0 && fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP) != 0 {
		return errors.New("helper: idexd exited before the run started")
	}
	return nil
}

// reap waits for every child as PID 1 must, and returns once the program
// itself has ended. It never blocks in wait4: a blocked syscall would make
// the Go runtime start another thread, and the helper's threads count
// against the run's pids limit (idexd adds the ones it has at launch).
func reap(pid int, children <-chan os.Signal) Exit {
	for {
		for {
			var ws unix.WaitStatus
			got, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				// ECHILD: the program is gone without being seen, which
				// only a bug here could cause.
				return Exit{Code: 255}
			}
			if got == 0 {
				break
			}
			if got != pid {
				continue
			}
			switch {
			case ws.Exited():
				return Exit{Code: ws.ExitStatus()}
			case ws.Signaled():
				return Exit{Signal: int(ws.Signal())}
			}
		}
		<-children
	}
}
