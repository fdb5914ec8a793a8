package inside

import (
	"encoding/json"
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Winsize is a terminal's size in characters.
type Winsize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// openPty opens a pseudo-terminal of the run's own devpts (prepare mounted
// one, with /dev/ptmx bound to its ptmx), sized ws. It returns the master,
// for idexd, and the program's end. The program's end is opened from the
// master (TIOCGPTPEER), never by path, so no other pty can be swapped in.
func openPty(ws Winsize) (master, peer int, err error) {
	master, err = unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, -1, fmt.Errorf("helper: open /dev/ptmx: %w", err)
	}
	fail := func(what string, err error) (int, int, error) {
		_ = unix.Close(master)
		return -1, -1, fmt.Errorf("helper: %s: %w", what, err)
	}
	if err := unix.IoctlSetPointerInt(master, unix.TIOCSPTLCK, 0); err != nil {
		return fail("unlock pty", err)
	}
	if err := unix.IoctlSetWinsize(master, unix.TIOCSWINSZ, &unix.Winsize{Row: ws.Rows, Col: ws.Cols}); err != nil {
		return fail("size pty", err)
	}
	// x/sys has no wrapper for TIOCGPTPEER, which returns a new fd.
	fd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(master), uintptr(unix.TIOCGPTPEER),
		uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
	if errno != 0 {
		return fail("open the pty's peer", errno)
	}
	return master, int(fd), nil
}

// sendFD sends r with fd attached (the pty's master, for idexd).
func sendFD(r Reply, fd int) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode reply: %w", err)
	}
	for {
		err := unix.Sendmsg(ctlFD, b, unix.UnixRights(fd), nil, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("send reply with fd: %w", err)
		}
		return nil
	}
}

// procAttr starts the program in a session of its own; on a terminal the
// pty (its fd 0) becomes the session's controlling terminal, with the
// program's process group in the foreground, as a shell does.
func procAttr(job Job) *syscall.SysProcAttr {
	if job.Terminal != nil {
		return &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	}
	return &syscall.SysProcAttr{Setsid: true}
}

// stdioCount is how many distinct fds the program's stdio holds: one pty
// for all three, or three.
func stdioCount(job Job) int {
	if job.Terminal != nil {
		return 1
	}
	return 3
}
