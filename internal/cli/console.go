package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/api"
)

// idexctl run on a terminal (issue 13): the run gets a pty of its own of
// this terminal's size, this terminal goes raw so that every key reaches
// the program (Ctrl-C included, which the run's pty turns into SIGINT),
// SIGWINCH resizes the run's pty, and the program's output is written as
// it is, but for the escape sequences that reach beyond the screen.

// terminalOf returns stdin's fd and size when it is a terminal.
func terminalOf(r io.Reader) (int, *api.Terminal, bool) {
	f, ok := r.(interface{ Fd() uintptr })
	if !ok {
		return -1, nil, false
	}
	fd := int(f.Fd())
	ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
	if err != nil {
		return -1, nil, false
	}
	t := &api.Terminal{Rows: max(ws.Row, 1), Cols: max(ws.Col, 1)}
	return fd, t, t.Check() == nil
}

// makeRaw puts the terminal in raw mode, as ssh and docker run -t do, and
// returns what restores it.
func makeRaw(fd int) (func() error, error) {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, fmt.Errorf("read terminal settings: %w", err)
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, fmt.Errorf("set terminal raw: %w", err)
	}
	return func() error { return unix.IoctlSetTermios(fd, unix.TCSETS, old) }, nil
}

// runOnTerminal follows run id on this terminal until it ends.
func (a *app) runOnTerminal(ctx context.Context, fd int, id string) (*api.Run, error) {
	restore, err := makeRaw(fd)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := restore(); err != nil {
			fmt.Fprintln(a.stderr, "idexctl: restore terminal:", err)
		}
	}()
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	go func() {
		for range winch {
			if _, t, ok := terminalOf(a.stdin); ok {
				if err := a.c.ResizeRun(context.Background(), id, *t); err != nil && !errors.Is(err, api.ErrRunEnded) {
					fmt.Fprint(a.stderr, "idexctl: resize: ", err, "\r\n")
				}
			}
		}
	}()
	// SIGTERM still stops the run; Ctrl-C is a key now.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go a.onSignals(sigs, id)
	go a.forwardKeys(id)
	out := &termFilter{w: a.stdout}
	return a.streamTo(ctx, id, out, out)
}

// forwardKeys types idexctl's keys into the run's terminal. Ctrl-C is a
// key like the others (the run's terminal interrupts the program); a
// second Ctrl-C within stopAfter of the first stops the run, as idexctl
// run does off a terminal.
func (a *app) forwardKeys(id string) {
	ctx := context.Background()
	buf := make([]byte, 4<<10)
	var lastCtrlC time.Time
	for {
		n, err := a.stdin.Read(buf)
		if n > 0 {
			for _, b := range buf[:n] {
				if b != 0x03 {
					continue
				}
				now := time.Now()
				if now.Sub(lastCtrlC) <= stopAfter {
					if _, err := a.c.StopRun(ctx, id); err != nil {
						fmt.Fprint(a.stderr, "idexctl: stop: ", err, "\r\n")
					}
					return
				}
				lastCtrlC = now
			}
			if werr := a.c.WriteStdin(ctx, id, buf[:n], false); werr != nil {
				if !programGone(werr) {
					fmt.Fprint(a.stderr, "idexctl: stdin: ", werr, "\r\n")
				}
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// termFilter passes a program's terminal output to idexctl's terminal but
// drops the escape sequences that act beyond the screen: OSC (ESC ], the
// clipboard (52), the window title, hyperlinks), DCS, SOS, PM and APC.
// CSI sequences (colours, cursor moves, clearing) pass: the program owns
// the screen in terminal mode. The state survives between writes.
type termFilter struct {
	w     io.Writer
	state int // 0 text, 1 after ESC, 2 in a dropped string, 3 ESC in it
}

func (f *termFilter) Write(p []byte) (int, error) {
	out := make([]byte, 0, len(p))
	for _, b := range p {
		switch f.state {
		case 0:
			if b == 0x1b {
				f.state = 1
				continue
			}
			out = append(out, b)
		case 1:
			switch b {
			case ']', 'P', 'X', '^', '_':
				f.state = 2
			default:
				out = append(out, 0x1b, b)
				f.state = 0
			}
		case 2:
			switch b {
			case 0x07:
				f.state = 0
			case 0x1b:
				f.state = 3
			}
		case 3:
			if b == '\\' {
				f.state = 0
			} else {
				f.state = 2
			}
		}
	}
	if _, err := f.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}
