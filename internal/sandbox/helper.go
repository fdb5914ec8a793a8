package sandbox

import (
	"fmt"
	"os"
	"strconv"
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
	os.Exit(helperMain(os.Args[1:]))
}

type rlimit struct {
	name string
	res  int
	rl   unix.Rlimit
}

// helperMain runs as the student, already in the run's v2 cgroup, with
// fd 3 = release pipe and fd 4 = exec-error pipe.
func helperMain(args []string) int {
	errPipe := os.NewFile(4, "exec-error")
	fail := func(format string, a ...any) int {
		// If even this write fails the parent still sees a non-zero exit
		// of the helper; there is nobody else to tell.
		_, _ = fmt.Fprintf(errPipe, format, a...)
		return exitExecFailed
	}
	if len(args) < 5 {
		return fail("helper: want interpreter, 3 limits and argv, got %d arguments", len(args))
	}
	syscall.CloseOnExec(4)
	var b [1]byte
	if n, err := os.NewFile(3, "release").Read(b[:]); n != 1 || err != nil {
		// The parent aborted the start: exec nothing.
		return exitAborted
	}
	if err := unix.Close(3); err != nil {
		return fail("helper: close release pipe: %v", err)
	}
	interp := args[0]
	lim := make([]uint64, 3)
	for i := range lim {
		v, err := strconv.ParseUint(args[1+i], 10, 64)
		if err != nil {
			return fail("helper: parse limit %q: %v", args[1+i], err)
		}
		lim[i] = v
	}
	set := []rlimit{
		{"core", unix.RLIMIT_CORE, unix.Rlimit{}},
		{"fsize", unix.RLIMIT_FSIZE, unix.Rlimit{Cur: lim[0], Max: lim[0]}},
		{"nofile", unix.RLIMIT_NOFILE, unix.Rlimit{Cur: lim[1], Max: lim[1]}},
	}
	if lim[2] > 0 {
		set = append(set, rlimit{"cpu", unix.RLIMIT_CPU, unix.Rlimit{Cur: lim[2], Max: lim[2] + 1}})
	}
	for _, s := range set {
		if err := unix.Setrlimit(s.res, &s.rl); err != nil {
			return fail("helper: set rlimit %s: %v", s.name, err)
		}
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fail("helper: set no_new_privs: %v", err)
	}
	// Files a run creates are shared with the web tier (group) and nobody else.
	unix.Umask(0o007)
	err := unix.Exec(interp, args[4:], os.Environ())
	return fail("exec %s: %v", interp, err)
}
