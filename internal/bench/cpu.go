package bench

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func nproc() int { return runtime.NumCPU() }

// cpuUse is CPU time spent so far by idexd (itself, and its reaped
// children: helpers that became the interpreters) and by idexbench
// (itself: the client or exec.Cmd side, and its reaped children: the bare
// interpreters). Deltas over a measurement, divided by the runs, say what
// a run costs each party in CPU: on a 2-core machine that is what limits
// throughput.
type cpuUse struct {
	daemon, daemonKids, self, selfKids time.Duration
}

// userHZ is the unit of /proc/<pid>/stat times: USER_HZ, 100 on Linux
// whatever the kernel's own tick rate.
const userHZ = 100

// statTimes reads utime, stime, cutime and cstime of a process.
func statTimes(pid int) ([4]time.Duration, error) {
	var out [4]time.Duration
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return out, fmt.Errorf("read stat of %d: %w", pid, err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	// After the command: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
	if len(f) < 15 {
		return out, fmt.Errorf("stat of %d has %d fields after the command", pid, len(f))
	}
	for i := range out {
		v, err := strconv.ParseInt(f[11+i], 10, 64)
		if err != nil {
			return out, fmt.Errorf("parse stat field %d %q of %d: %w", 14+i, f[11+i], pid, err)
		}
		out[i] = time.Duration(v) * (time.Second / userHZ)
	}
	return out, nil
}

func readCPU(daemonPid int) (cpuUse, error) {
	var u cpuUse
	t, err := statTimes(daemonPid)
	if err != nil {
		return u, fmt.Errorf("idexd: %w", err)
	}
	u.daemon = t[0] + t[1]
	u.daemonKids = t[2] + t[3]
	var self, kids unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &self); err != nil {
		return u, fmt.Errorf("getrusage self: %w", err)
	}
	if err := unix.Getrusage(unix.RUSAGE_CHILDREN, &kids); err != nil {
		return u, fmt.Errorf("getrusage children: %w", err)
	}
	tv := func(t unix.Timeval) time.Duration { return time.Duration(t.Nano()) }
	u.self = tv(self.Utime) + tv(self.Stime)
	u.selfKids = tv(kids.Utime) + tv(kids.Stime)
	return u, nil
}

func (u cpuUse) sub(v cpuUse) cpuUse {
	return cpuUse{u.daemon - v.daemon, u.daemonKids - v.daemonKids, u.self - v.self, u.selfKids - v.selfKids}
}

func (u cpuUse) add(v cpuUse) cpuUse {
	return cpuUse{u.daemon + v.daemon, u.daemonKids + v.daemonKids, u.self + v.self, u.selfKids + v.selfKids}
}

// cpuMeter accumulates CPU deltas of the idexd side and the bare side.
type cpuMeter struct {
	pid           int
	idexd, bare   cpuUse
	idRuns, bRuns int
	err           error
	last          cpuUse
}

func (m *cpuMeter) begin() {
	u, err := readCPU(m.pid)
	if err != nil && m.err == nil {
		m.err = err
	}
	m.last = u
}

// end adds the CPU since begin to the idexd or the bare side.
func (m *cpuMeter) end(idexd bool, runs int) {
	u, err := readCPU(m.pid)
	if err != nil {
		if m.err == nil {
			m.err = err
		}
		return
	}
	d := u.sub(m.last)
	if idexd {
		m.idexd, m.idRuns = m.idexd.add(d), m.idRuns+runs
	} else {
		m.bare, m.bRuns = m.bare.add(d), m.bRuns+runs
	}
}

// text says what one run cost in CPU on each side.
func (m *cpuMeter) text() string {
	if m.err != nil {
		return "CPU per run unknown: " + m.err.Error()
	}
	if m.idRuns == 0 || m.bRuns == 0 {
		return "CPU per run unknown: no runs"
	}
	per := func(d time.Duration, n int) float64 { return ms(d) / float64(n) }
	return fmt.Sprintf("CPU per run, ms: idexd daemon %.2f + run processes (helper+python) %.2f + client %.2f = %.2f; "+
		"bare: python %.2f + exec.Cmd %.2f = %.2f",
		per(m.idexd.daemon, m.idRuns), per(m.idexd.daemonKids, m.idRuns), per(m.idexd.self, m.idRuns),
		per(m.idexd.daemon+m.idexd.daemonKids+m.idexd.self, m.idRuns),
		per(m.bare.selfKids, m.bRuns), per(m.bare.self, m.bRuns), per(m.bare.selfKids+m.bare.self, m.bRuns))
}
