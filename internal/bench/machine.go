package bench

import (
	"bufio"
	"bytes"
	"debug/buildinfo"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"github.com/containerd/cgroups/v3"
	"golang.org/x/sys/unix"
)

// machine describes where the numbers were taken: they mean little
// without the kernel, the cgroup layout and how busy the host was.
type machine struct {
	lines []string
}

func (m *machine) add(k, format string, a ...any) {
	m.lines = append(m.lines, fmt.Sprintf("%-16s %s", k+":", fmt.Sprintf(format, a...)))
}

func describeMachine(o Options) *machine {
	m := &machine{}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		m.add("kernel", "unknown (uname: %v)", err)
	} else {
		m.add("kernel", "%s %s", unix.ByteSliceToString(u.Release[:]), unix.ByteSliceToString(u.Version[:]))
	}
	m.add("cgroups", "%s", cgroupMode())
	m.add("cpu", "%s", cpuModel())
	m.add("nproc", "%d", runtime.NumCPU())
	m.add("memory", "%s", memTotal())
	m.add("go (idexbench)", "%s", runtime.Version())
	if bi, err := buildinfo.ReadFile(o.Idexd); err != nil {
		m.add("go (idexd)", "unknown (%v)", err)
	} else {
		m.add("go (idexd)", "%s", bi.GoVersion)
	}
	out, err := exec.Command(o.Python, "--version").CombinedOutput()
	if err != nil {
		m.add("python", "%s: %v", o.Python, err)
	} else {
		m.add("python", "%s (%s)", strings.TrimSpace(string(out)), o.Python)
	}
	m.add("load at start", "%s", loadavg())
	return m
}

func cgroupMode() string {
	var s string
	switch cgroups.Mode() {
	case cgroups.Unified:
		s = "unified (cgroup v2)"
	case cgroups.Hybrid:
		s = "hybrid (v1 controllers, cgroup2 at /sys/fs/cgroup/unified)"
	case cgroups.Legacy:
		s = "legacy (v1 only)"
	default:
		s = "unavailable"
	}
	// favordynmods makes a v1 cgroup move cheap; whether it is on changes
	// the start latency a lot (see ../shared/platform.md).
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return s + "; favordynmods unknown: " + err.Error()
	}
	if bytes.Contains(mounts, []byte("favordynmods")) {
		return s + "; favordynmods ON"
	}
	return s + "; favordynmods off"
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown: " + err.Error()
	}
	defer f.Close() //nolint:errcheck // read-only
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func memTotal() string {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "unknown: " + err.Error()
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown: " + err.Error()
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return strings.TrimSpace(string(b))
	}
	return strings.Join(f[:3], " ") + " (1, 5, 15 min)"
}

// rssKiB reads VmRSS of pid from /proc.
func rssKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read status of pid %d: %w", pid, err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kb); err != nil {
				return 0, fmt.Errorf("parse VmRSS %q of pid %d: %w", v, pid, err)
			}
			return kb, nil
		}
	}
	return 0, fmt.Errorf("pid %d: no VmRSS line", pid)
}
