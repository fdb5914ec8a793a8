package load

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ProcSample is what /proc says of the daemon at one moment.
type ProcSample struct {
	RSSKiB  int64
	FDs     int
	Threads int
}

// SampleProc reads the daemon's VmRSS, Threads and open fds from /proc.
func SampleProc(pid int) (ProcSample, error) {
	var s ProcSample
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, fmt.Errorf("read status of daemon pid %d: %w", pid, err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		switch k {
		case "VmRSS":
			s.RSSKiB, err = strconv.ParseInt(f[0], 10, 64)
		case "Threads":
			s.Threads, err = strconv.Atoi(f[0])
		}
		if err != nil {
			return s, fmt.Errorf("parse %s of daemon pid %d: %w", k, pid, err)
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, fmt.Errorf("list fds of daemon pid %d: %w", pid, err)
	}
	s.FDs = len(fds)
	return s, nil
}

// FindDaemonPID finds the idexd serving socket: the processes holding
// the listening socket's inode, and among them the peer of a connection
// (SO_PEERCRED names the process that called listen) unless systemd
// passed the socket, in which case the holder named idexd*.
func FindDaemonPID(socket string) (int, error) {
	peer, perr := peerPID(socket)
	inode, err := listenInode(socket)
	if err != nil {
		return 0, errors.Join(err, perr)
	}
	pids, err := holders("socket:[" + inode + "]")
	if err != nil {
		return 0, err
	}
	if len(pids) == 1 {
		return pids[0], nil
	}
	for _, p := range pids {
		if isIdexd(p) {
			return p, nil
		}
	}
	for _, p := range pids {
		if p == peer && p != 1 {
			return p, nil
		}
	}
	return 0, errors.Join(fmt.Errorf("cannot tell which process serves %s (inode %s; holders %v, peer %d): pass --pid", socket, inode, pids, peer), perr)
}

// peerPID connects to socket and reads the listener's pid (SO_PEERCRED).
func peerPID(socket string) (int, error) {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return 0, fmt.Errorf("connect to %s to find the daemon's pid: %w", socket, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, errors.Join(fmt.Errorf("%s is not a unix socket", socket), c.Close())
	}
	var cred *unix.Ucred
	raw, err := uc.SyscallConn()
	if err == nil {
		cerr := raw.Control(func(fd uintptr) {
			cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		})
		err = errors.Join(err, cerr)
	}
	if cerr := c.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close probe connection: %w", cerr))
	}
	if err != nil || cred == nil {
		return 0, fmt.Errorf("peer credentials on %s: %w", socket, err)
	}
	return int(cred.Pid), nil
}

func isIdexd(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), "idexd")
}

// listenInode finds the inode of the listening socket bound to path in
// /proc/net/unix.
func listenInode(path string) (string, error) {
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		return "", fmt.Errorf("read /proc/net/unix: %w", err)
	}
	defer f.Close() //nolint:errcheck // read-only
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Num RefCount Protocol Flags Type St Inode Path; flags 00010000 is __SO_ACCEPTCON (listening).
		fs := strings.Fields(sc.Text())
		if len(fs) >= 8 && fs[7] == path && fs[3] == "00010000" {
			return fs[6], nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read /proc/net/unix: %w", err)
	}
	return "", fmt.Errorf("no listening socket at %s in /proc/net/unix", path)
}

// holders lists the pids that have an fd whose link reads target.
func holders(target string) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fds, err := os.ReadDir(filepath.Join("/proc", e.Name(), "fd"))
		if err != nil {
			continue // gone, or a kernel thread
		}
		for _, fd := range fds {
			if l, err := os.Readlink(filepath.Join("/proc", e.Name(), "fd", fd.Name())); err == nil && l == target {
				out = append(out, pid)
				break
			}
		}
	}
	return out, nil
}

// Proc is a process seen in /proc.
type Proc struct {
	PID    int
	PPID   int
	UID    int
	State  string // R, S, Z...
	Cwd    string
	Comm   string
	Cgroup string // the unified (0::) line's path, or the memory line's
}

// Zombie reports whether the process has exited and waits to be reaped:
// PID 1 here reaps orphans late, so checks count zombies as dead.
func (p Proc) Zombie() bool { return p.State == "Z" || p.State == "X" }

// StudentProcs lists the processes whose real uid is in [min, max].
func StudentProcs(min, max int) ([]Proc, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	var out []Proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, ok := readProc(pid)
		if !ok || p.UID < min || p.UID > max {
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// readProc reads one process; ok is false when it is gone.
func readProc(pid int) (Proc, bool) {
	p := Proc{PID: pid, UID: -1}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return p, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		switch k {
		case "Name":
			p.Comm = f[0]
		case "State":
			p.State = f[0]
		case "PPid":
			if pp, err := strconv.Atoi(f[0]); err == nil {
				p.PPID = pp
			}
		case "Uid":
			if u, err := strconv.Atoi(f[0]); err == nil {
				p.UID = u
			}
		}
	}
	// A zombie has no cwd; an unreadable one stays "".
	p.Cwd, _ = os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)) //nolint:errcheck // see above
	if cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); err == nil {
		p.Cgroup = cgroupPath(string(cg))
	}
	return p, true
}

// cgroupPath picks the unified line (0::/path) of /proc/PID/cgroup.
func cgroupPath(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if rest, ok := strings.CutPrefix(l, "0::"); ok {
			return rest
		}
	}
	return ""
}
