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

// cpuUse is CPU time spent so far by idexd (itself, its reaped children,
// and its live children with what they reaped: the helpers and the
// interpreters they started) and by idexbench
// (itself: the client or exec.Cmd side, and its reaped children: the bare
// interpreters). Deltas over a measurement, divided by the runs, say what
// a run costs each party in CPU: on a 2-core machine that is what limits
// throughput.
//
// host is the busy time of every CPU of the machine (/proc/stat): it
// also counts what no process of either side is charged for, the
// kernel's workers (a network namespace is torn down by a kworker, RCU
// callbacks run in their own threads), and everything else the machine
// did meanwhile, so it means something only on a quiet machine.
//
// diskKiB is what the whole machine read from block devices (pgpgin of
// /proc/vmstat, KiB): a print('hi') reads nothing once the interpreter's
// files are cached, so a figure above a few KiB per run says its files
// are being read again, and its CPU figures with them (bench/README.md,
// "The page cache read again").
type cpuUse struct {
	daemon, daemonKids, self, selfKids, host time.Duration
	diskKiB                                  int64
}

// diskReadKiB is pgpgin of /proc/vmstat: KiB read from block devices
// since boot.
func diskReadKiB() (int64, error) {
	b, err := os.ReadFile("/proc/vmstat")
	if err != nil {
		return 0, fmt.Errorf("read /proc/vmstat: %w", err)
	}
	return parsePgpgin(string(b))
}

func parsePgpgin(vmstat string) (int64, error) {
	for _, line := range strings.Split(vmstat, "\n") {
		if v, ok := strings.CutPrefix(line, "pgpgin "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/vmstat: pgpgin %q: %w", v, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("/proc/vmstat has no pgpgin line")
}

// hostBusy is the time all CPUs spent busy since boot: user, nice,
// system, irq, softirq and steal of /proc/stat's "cpu" line.
func hostBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("read /proc/stat: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var busy int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system irq softirq steal
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: field %d %q: %w", i, f[i], err)
		}
		busy += v
	}
	return time.Duration(busy) * (time.Second / userHZ), nil
}

// userHZ is the unit of /proc/<pid>/stat times: USER_HZ, 100 on Linux
// whatever the kernel's own tick rate.
const userHZ = 100

// statTimes reads utime, stime, cutime and cstime of a process.
func statTimes(pid int) ([4]time.Duration, error) {
	t, _, err := statTimesPpid(pid)
	return t, err
}

// statTimesPpid reads utime, stime, cutime and cstime of a process, and
// its parent's pid.
func statTimesPpid(pid int) ([4]time.Duration, int, error) {
	var out [4]time.Duration
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return out, 0, fmt.Errorf("read stat of %d: %w", pid, err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	// After the command: state is field 3, ppid 4, utime 14, stime 15,
	// cutime 16, cstime 17.
	if len(f) < 15 {
		return out, 0, fmt.Errorf("stat of %d has %d fields after the command", pid, len(f))
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return out, 0, fmt.Errorf("parse ppid %q of %d: %w", f[1], pid, err)
	}
	for i := range out {
		v, err := strconv.ParseInt(f[11+i], 10, 64)
		if err != nil {
			return out, 0, fmt.Errorf("parse stat field %d %q of %d: %w", 14+i, f[11+i], pid, err)
		}
		out[i] = time.Duration(v) * (time.Second / userHZ)
	}
	return out, ppid, nil
}

// liveChildrenCPU is what the live children of pid have used so far, with
// the children they reaped. idexd's kept helpers live for many runs and
// reap every run's interpreter: until a helper ends, neither its CPU nor
// theirs is in idexd's cutime. Counted at both ends of a section, a helper
// alive at both adds what it used between them; one that ended meanwhile
// moved its total into idexd's cutime, less what the start counted.
func liveChildrenCPU(pid int) (time.Duration, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("list processes: %w", err)
	}
	var sum time.Duration
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		t, ppid, err := statTimesPpid(child)
		if err != nil || ppid != pid {
			continue // gone meanwhile, or another's
		}
		sum += t[0] + t[1] + t[2] + t[3]
	}
	return sum, nil
}

func readCPU(daemonPid int) (cpuUse, error) {
	var u cpuUse
	t, err := statTimes(daemonPid)
	if err != nil {
		return u, fmt.Errorf("idexd: %w", err)
	}
	u.daemon = t[0] + t[1]
	live, err := liveChildrenCPU(daemonPid)
	if err != nil {
		return u, fmt.Errorf("idexd's children: %w", err)
	}
	u.daemonKids = t[2] + t[3] + live
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
	if u.host, err = hostBusy(); err != nil {
		return u, err
	}
	if u.diskKiB, err = diskReadKiB(); err != nil {
		return u, err
	}
	return u, nil
}

func (u cpuUse) sub(v cpuUse) cpuUse {
	return cpuUse{u.daemon - v.daemon, u.daemonKids - v.daemonKids, u.self - v.self, u.selfKids - v.selfKids, u.host - v.host, u.diskKiB - v.diskKiB}
}

func (u cpuUse) add(v cpuUse) cpuUse {
	return cpuUse{u.daemon + v.daemon, u.daemonKids + v.daemonKids, u.self + v.self, u.selfKids + v.selfKids, u.host + v.host, u.diskKiB + v.diskKiB}
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

// spanStart reads the metered server's CPU where a section starts, for
// spanEnd.
func (m *cpuMeter) spanStart() cpuUse {
	u, err := readCPU(m.pid)
	if err != nil && m.err == nil {
		m.err = err
	}
	return u
}

// spanEnd charges the server (idexd or the floor's) and its reaped
// children with all their CPU since start, not only what they spent
// within their own samples' windows: idexd refills its warm pool 50 ms
// after a run took a helper, which in a latency turn falls in the floor's
// or bare's sample, and in throughput may spill into the next side's
// window. Counted per window, that work was no side's (bench/README.md).
// The client's and the host's figures stay per window: idexbench is the
// client of every side.
func (m *cpuMeter) spanEnd(start cpuUse) {
	u, err := readCPU(m.pid)
	if err != nil {
		if m.err == nil {
			m.err = err
		}
		return
	}
	m.idexd.daemon, m.idexd.daemonKids = u.daemon-start.daemon, u.daemonKids-start.daemonKids
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
	kib := func(u cpuUse, n int) float64 { return float64(u.diskKiB) / float64(n) }
	return fmt.Sprintf("CPU per run, ms: idexd daemon %.2f + run processes (helper+python) %.2f + client %.2f = %.2f (all CPUs busy: %.2f; disk read %.0f KiB); "+
		"bare: python %.2f + exec.Cmd %.2f = %.2f (all CPUs busy: %.2f; disk read %.0f KiB)",
		per(m.idexd.daemon, m.idRuns), per(m.idexd.daemonKids, m.idRuns), per(m.idexd.self, m.idRuns),
		per(m.idexd.daemon+m.idexd.daemonKids+m.idexd.self, m.idRuns), per(m.idexd.host, m.idRuns), kib(m.idexd, m.idRuns),
		per(m.bare.selfKids, m.bRuns), per(m.bare.self, m.bRuns), per(m.bare.selfKids+m.bare.self, m.bRuns), per(m.bare.host, m.bRuns), kib(m.bare, m.bRuns))
}

// perRun is the CPU one run cost on the metered side, ms: the server (idexd
// or the floor), its reaped children (the run's processes) and the client.
func (m *cpuMeter) perRun() (float64, bool) {
	if m.err != nil || m.idRuns == 0 {
		return 0, false
	}
	return ms(m.idexd.daemon+m.idexd.daemonKids+m.idexd.self) / float64(m.idRuns), true
}

// serverPerRun is what issue 16's target counts, ms: the server (idexd or
// the floor) and its reaped children (the run's processes), without the
// client.
func (m *cpuMeter) serverPerRun() (float64, bool) {
	if m.err != nil || m.idRuns == 0 {
		return 0, false
	}
	return ms(m.idexd.daemon+m.idexd.daemonKids) / float64(m.idRuns), true
}

// hostPerRun is the busy time of all CPUs per run on the metered side, ms.
func (m *cpuMeter) hostPerRun() (float64, bool) {
	if m.err != nil || m.idRuns == 0 {
		return 0, false
	}
	return ms(m.idexd.host) / float64(m.idRuns), true
}

// floorText says what one run cost in CPU through the floor's server
// (metered as the server side).
func (m *cpuMeter) floorText() string { return m.serverText("floor server", "python") }

// serverText says what one run cost in CPU on the metered side alone:
// the server, its children, the client.
func (m *cpuMeter) serverText(server, kids string) string {
	if m.err != nil {
		return "CPU per run unknown: " + m.err.Error()
	}
	if m.idRuns == 0 {
		return "CPU per run unknown: no runs"
	}
	per := func(d time.Duration) float64 { return ms(d) / float64(m.idRuns) }
	return fmt.Sprintf("CPU per run, ms: %s %.2f + %s %.2f + client %.2f = %.2f (all CPUs busy: %.2f; disk read %.0f KiB)", server,
		per(m.idexd.daemon), kids, per(m.idexd.daemonKids), per(m.idexd.self), per(m.idexd.daemon+m.idexd.daemonKids+m.idexd.self), per(m.idexd.host),
		float64(m.idexd.diskKiB)/float64(m.idRuns))
}
