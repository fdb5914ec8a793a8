package sandbox

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Helper runs the helper mode when this process was started as one, and
// never returns then. Call it first thing in main, and in TestMain of every
// package whose tests start runs.
func Helper() {
	if len(os.Args) == 0 || os.Args[0] != helperArg0 {
		return
	}
	os.Exit(helperMain())
}

type rlimit struct {
	name string
	res  int
	rl   unix.Rlimit
}

// helperMain runs in the run's cgroup with fd 3 = the job pipe and fd 4 =
// the exec-error pipe. A cold helper is already the student; a warm one is
// root and becomes the student here, before any student code exists.
func helperMain() int {
	errPipe := os.NewFile(4, "exec-error")
	fail := func(format string, a ...any) int {
		// If even this write fails the parent still sees the helper exit
		// non-zero without exec; there is nobody else to tell.
		_, _ = fmt.Fprintf(errPipe, format, a...)
		return exitExecFailed
	}
	syscall.CloseOnExec(4)
	parent := os.Getppid()
	b, err := io.ReadAll(os.NewFile(3, "job"))
	if err != nil || len(b) == 0 {
		// The parent aborted the start: exec nothing.
		return exitAborted
	}
	if err := unix.Close(3); err != nil {
		return fail("helper: close job pipe: %v", err)
	}
	var job Job
	if err := json.Unmarshal(b, &job); err != nil {
		return fail("helper: decode job: %v", err)
	}
	if job.UID == 0 || job.GID == 0 {
		return fail("helper: refusing to run as uid %d gid %d", job.UID, job.GID)
	}
	if os.Getuid() == 0 {
		// Warm helper: drop to the student. Go applies these to every
		// thread of the process. Groups first, while still allowed.
		if err := syscall.Setgroups([]int{}); err != nil {
			return fail("helper: setgroups: %v", err)
		}
		if err := syscall.Setresgid(int(job.GID), int(job.GID), int(job.GID)); err != nil {
			return fail("helper: setgid %d: %v", job.GID, err)
		}
		if err := syscall.Setresuid(int(job.UID), int(job.UID), int(job.UID)); err != nil {
			return fail("helper: setuid %d: %v", job.UID, err)
		}
		// The kernel clears the parent-death signal on a credential change.
		if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
			return fail("helper: set parent-death signal: %v", err)
		}
		if os.Getppid() != parent {
			return fail("helper: idexd exited before the run started")
		}
		// This is the child's own working directory, as the student, so
		// the student's permissions apply; the daemon's never changes.
		if err := unix.Chdir(job.Dir); err != nil {
			return fail("helper: enter %s: %v", job.Dir, err)
		}
	}
	if os.Getuid() != int(job.UID) || os.Getgid() != int(job.GID) {
		return fail("helper: running as %d:%d, want %d:%d", os.Getuid(), os.Getgid(), job.UID, job.GID)
	}
	set := []rlimit{
		{"core", unix.RLIMIT_CORE, unix.Rlimit{}},
		{"fsize", unix.RLIMIT_FSIZE, unix.Rlimit{Cur: job.Rlimits.FileSizeBytes, Max: job.Rlimits.FileSizeBytes}},
		{"nofile", unix.RLIMIT_NOFILE, unix.Rlimit{Cur: job.Rlimits.OpenFiles, Max: job.Rlimits.OpenFiles}},
	}
	if c := job.Rlimits.CPUSeconds; c > 0 {
		set = append(set, rlimit{"cpu", unix.RLIMIT_CPU, unix.Rlimit{Cur: c, Max: c + 1}})
	}
	for _, s := range set {
		if err := unix.Setrlimit(s.res, &s.rl); err != nil {
			return fail("helper: set rlimit %s: %v", s.name, err)
		}
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fail("helper: set no_new_privs: %v", err)
	}
	// Nothing idexd holds may reach student code, even an fd someone
	// opened without O_CLOEXEC (an inherited socket, a library's file).
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fail("helper: mark fds close-on-exec: %v", err)
	}
	// Files a run creates are shared with the web tier (group) and nobody else.
	unix.Umask(0o007)
	err = unix.Exec(job.Interpreter, job.Argv, job.Env)
	return fail("exec %s: %v", job.Interpreter, err)
}
