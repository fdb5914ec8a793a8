package inside

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Waiting for input (issue 13): the web tier shows an input box exactly
// while the program is blocked reading its empty stdin, and the wall limit
// does not count that time. The helper, PID 1 of the run's PID namespace,
// looks at its tasks every inputPoll: a task blocked in read(2), readv(2)
// or pread64(2) on a file descriptor that is the run's stdin pipe waits
// for input. A program that sleeps, computes, or reads a file or a socket
// is not waiting; nor is one reading a stdin that has data or is closed
// (read does not block then). The helper runs as the student, whose tasks
// these are (same uid, and it is their parent: ptrace access holds).

// inputPoll is how often the helper looks; a wait shorter than that may go
// unseen, which costs nothing but a shown input box.
const inputPoll = 100 * time.Millisecond

type fileKey struct{ dev, ino uint64 }

// fileID is what identifies fd's open file: its device and inode.
func fileID(fd int) (fileKey, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fileKey{}, fmt.Errorf("helper: stat stdin: %w", err)
	}
	return fileKey{uint64(st.Dev), st.Ino}, nil
}

// watchInput reports each change of "waiting for input" to idexd until the
// helper exits (the process ends with it).
func watchInput(stdin fileKey) {
	waiting := false
	var lastReads uint64
	t := time.NewTicker(inputPoll)
	defer t.Stop()
	for range t.C {
		now, reads := blockedOnStdin(stdin)
		// The same task blocked again, but it read in between (a line was
		// answered and the next prompt came within one look): that is a
		// resume and a new wait, or the input limit would run on.
		again := now && waiting && reads != lastReads
		lastReads = reads
		if now == waiting && !again {
			continue
		}
		for _, v := range []bool{false, true} {
			if (v && !now) || (!v && !waiting) {
				continue
			}
			if err := send(Reply{Input: &v}); err != nil {
				return // idexd is gone
			}
		}
		waiting = now
	}
}

// readSyscalls block reading the file descriptor in their first argument
// (this architecture's numbers).
var readSyscalls = map[int]bool{unix.SYS_READ: true, unix.SYS_READV: true, unix.SYS_PREAD64: true}

// selectSyscalls wait for the fds below their first argument.
var selectSyscalls = map[int]bool{unix.SYS_PSELECT6: true, selectNR: true}

// blockedOnStdin reports whether some task of the run is blocked in a read
// of the stdin pipe, and how many read syscalls that task has made (its
// syscr), which tells one wait from the next.
func blockedOnStdin(stdin fileKey) (bool, uint64) {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return false, 0
	}
	for _, p := range procs {
		pid := p.Name()
		if pid == "1" || pid[0] < '0' || pid[0] > '9' {
			continue // the helper itself, or not a process
		}
		tasks, err := os.ReadDir("/proc/" + pid + "/task")
		if err != nil {
			continue // gone meanwhile
		}
		for _, task := range tasks {
			b, err := os.ReadFile("/proc/" + pid + "/task/" + task.Name() + "/syscall")
			if err != nil {
				continue
			}
			fs := strings.Fields(string(b))
			if len(fs) < 2 {
				continue // "running": not in a syscall
			}
			nr, err := strconv.Atoi(fs[0])
			if err != nil {
				continue
			}
			arg, err := strconv.ParseUint(strings.TrimPrefix(fs[1], "0x"), 16, 32)
			if err != nil {
				continue
			}
			var fd uint64
			switch {
			case readSyscalls[nr]:
				fd = arg
			case selectSyscalls[nr] && arg == 1:
				// select on fd 0 alone: Python's input() with readline on
				// a terminal waits so before it reads.
				fd = 0
			default:
				continue
			}
			var st unix.Stat_t
			if unix.Stat("/proc/"+pid+"/fd/"+strconv.FormatUint(fd, 10), &st) != nil {
				continue
			}
			if (fileKey{uint64(st.Dev), st.Ino}) == stdin {
				return true, readCount("/proc/" + pid + "/task/" + task.Name() + "/io")
			}
		}
	}
	return false, 0
}

// readCount is the syscr line of a task's io file, 0 when unreadable.
func readCount(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "syscr: "); ok {
			n, err := strconv.ParseUint(v, 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return 0
}
