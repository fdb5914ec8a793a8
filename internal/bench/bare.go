package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// bareCmd is the other side of every pair: the same interpreter and the
// same script in the same directory, with the environment idexd gives a
// run, started straight from Go by exec.Cmd. No cgroup, no uid change, no
// daemon: the floor a run is compared with.
func bareCmd(python, dir string, args ...string) *exec.Cmd {
	cmd := exec.Command(python, args...)
	cmd.Dir = dir
	cmd.Env = []string{
		"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + dir, "USER=bench", "LOGNAME=bench",
		"LANG=C.UTF-8", "LC_ALL=C.UTF-8", "PYTHONUNBUFFERED=1", "PYTHONIOENCODING=utf-8", "TMPDIR=" + dir,
	}
	return cmd
}

// bareRun runs the script to its end, reading all its output (as a run's
// client does), and returns the time from Start to the first byte on the
// child's stdout pipe and to its end (output read, child reaped).
func bareRun(python, dir, script string) (first, end time.Duration, err error) {
	cmd := bareCmd(python, dir, script)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, fmt.Errorf("bare stdout pipe: %w", err)
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, fmt.Errorf("bare start %s: %w", script, err)
	}
	var b [1]byte
	_, rerr := io.ReadFull(stdout, b[:])
	first = time.Since(t0)
	_, cerr := io.Copy(io.Discard, stdout)
	werr := cmd.Wait()
	end = time.Since(t0)
	if err := errors.Join(rerr, cerr, werr); err != nil {
		return 0, 0, fmt.Errorf("bare %s %s: %w", python, script, err)
	}
	return first, end, nil
}

// bareOutput returns the bytes the script wrote into a pipe read by Go
// directly, and the time from Start to its end.
func bareOutput(python, dir, script string) (int64, time.Duration, error) {
	cmd := bareCmd(python, dir, script)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, fmt.Errorf("bare stdout pipe: %w", err)
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, fmt.Errorf("bare start %s: %w", script, err)
	}
	// The same read size as idexd's output reader.
	n, cerr := io.CopyBuffer(io.Discard, stdout, make([]byte, 64<<10))
	werr := cmd.Wait()
	d := time.Since(t0)
	if err := errors.Join(cerr, werr); err != nil {
		return n, 0, fmt.Errorf("bare %s: %w", script, err)
	}
	return n, d, nil
}

// bareStopTree starts the process-tree script in a process group of its
// own, waits for its line of child pids, then kills the group and returns
// the time until every process of it is dead (a zombie counts as dead:
// PID 1 here reaps orphans only every second or two).
func bareStopTree(python, dir, script string) (time.Duration, error) {
	cmd := bareCmd(python, dir, script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, fmt.Errorf("bare stdout pipe: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("bare start %s: %w", script, err)
	}
	pgid := cmd.Process.Pid
	line, rerr := bufio.NewReader(stdout).ReadString('\n')
	if rerr != nil {
		return 0, errors.Join(fmt.Errorf("bare %s: read pids: %w", script, rerr), syscall.Kill(-pgid, syscall.SIGKILL), ignoreKilled(cmd.Wait()))
	}
	var kids []int
	for _, f := range strings.Fields(line) {
		p, err := strconv.Atoi(f)
		if err != nil {
			return 0, errors.Join(fmt.Errorf("bare %s: pid %q: %w", script, f, err), syscall.Kill(-pgid, syscall.SIGKILL), ignoreKilled(cmd.Wait()))
		}
		kids = append(kids, p)
	}
	t0 := time.Now()
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil {
		return 0, errors.Join(fmt.Errorf("kill process group %d: %w", pgid, err), ignoreKilled(cmd.Wait()))
	}
	if err := ignoreKilled(cmd.Wait()); err != nil {
		return 0, fmt.Errorf("bare %s: %w", script, err)
	}
	deadline := t0.Add(10 * time.Second)
	for _, k := range kids {
		for !deadOrZombie(k) {
			if time.Now().After(deadline) {
				return 0, fmt.Errorf("bare %s: child %d still alive 10s after SIGKILL to its group", script, k)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	return time.Since(t0), nil
}

func ignoreKilled(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return nil
		}
	}
	return err
}

func deadOrZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}
