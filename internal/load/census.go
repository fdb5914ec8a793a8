package load

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/idexd/idexd/internal/cgroup"
)

// nsTypes are the namespace types counted. A process's pid_for_children
// and time_for_children links name the namespace its next children get,
// which exists before any process lives in it: they count as pid and time.
var nsTypes = []string{"cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"}

var nsLinks = []string{"cgroup", "ipc", "mnt", "net", "pid", "pid_for_children", "time", "time_for_children", "user", "uts"}

func isNSType(t string) bool {
	for _, n := range nsTypes {
		if t == n {
			return true
		}
	}
	return false
}

// FDKinds counts open fds by what they point at: "stdio" (0-2), "file",
// "cgroup" (a directory or file under /sys/fs/cgroup), "warm cgroup" (the
// group of a warm helper), "warm cgroup file" (a file of one, kept open
// by internal/cgroup), "pipe", "socket", "pidfd", "eventpoll",
// "eventfd", "ns:<type>" (a namespace held open), "netns socket list" (a
// proc/net file internal/netns keeps open for a namespace), and so on. A failed
// check prints how the kinds moved, so a leak names itself.
type FDKinds map[string]int

func fdKind(fd int, target string) string {
	switch {
	case fd <= 2:
		return "stdio"
	case strings.HasPrefix(target, "/sys/fs/cgroup/"):
		if strings.HasPrefix(filepath.Base(target), cgroup.WarmPrefix) {
			return "warm cgroup"
		}
		if strings.HasPrefix(filepath.Base(filepath.Dir(target)), cgroup.WarmPrefix) {
			return "warm cgroup file"
		}
		return "cgroup"
	case strings.HasPrefix(target, "/proc/") && strings.Contains(target, "/net/"):
		return "netns socket list"
	case strings.HasPrefix(target, "/"):
		return "file"
	case strings.HasPrefix(target, "anon_inode:"):
		return strings.Trim(strings.TrimPrefix(target, "anon_inode:"), "[]")
	}
	if typ, _, ok := strings.Cut(target, ":["); ok {
		if isNSType(typ) {
			return "ns:" + typ
		}
		return typ
	}
	return "other"
}

func (k FDKinds) String() string {
	if len(k) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(k))
	for n := range k {
		keys = append(keys, n)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, n := range keys {
		parts[i] = fmt.Sprintf("%s %d", n, k[n])
	}
	return strings.Join(parts, ", ")
}

// Diff names the kinds whose count differs from before ("pipe +6,
// pidfd +1"), or "same kinds" when none does.
func (k FDKinds) Diff(before FDKinds) string {
	seen := map[string]bool{}
	var keys []string
	for _, m := range []FDKinds{before, k} {
		for n := range m {
			if !seen[n] {
				seen[n] = true
				keys = append(keys, n)
			}
		}
	}
	sort.Strings(keys)
	return countDiff(keys, k, before, "same kinds")
}

// countDiff names the keys, in the order given, whose count moved from
// before to after ("pipe +6, pidfd +1"), or says same when none did.
func countDiff(keys []string, after, before map[string]int, same string) string {
	var parts []string
	for _, n := range keys {
		if d := after[n] - before[n]; d != 0 {
			parts = append(parts, fmt.Sprintf("%s %+d", n, d))
		}
	}
	if len(parts) == 0 {
		return same
	}
	return strings.Join(parts, ", ")
}

// NSCounts is a number of distinct namespaces by type.
type NSCounts map[string]int

func (n NSCounts) total() int {
	t := 0
	for _, v := range n {
		t += v
	}
	return t
}

// String lists every type in a fixed order.
func (n NSCounts) String() string {
	parts := make([]string, len(nsTypes))
	for i, t := range nsTypes {
		parts[i] = fmt.Sprintf("%s %d", t, n[t])
	}
	return strings.Join(parts, ", ")
}

// Census is what a run could leave behind in the daemon and on the host
// besides processes, cgroups and files, at one moment: the daemon's fds
// by kind, namespaces and mounts. Per-run namespaces (network, mount,
// IPC, PID, UTS) die with a run's last process unless something holds
// them: a process, an open fd, or an nsfs bind mount.
type Census struct {
	// FDs are the daemon's open fds by kind (read from /proc, without
	// the debug endpoint's own two).
	FDs FDKinds
	// Children is how many live (not zombie) children the daemon has.
	// With no run active they are the warm pool's helpers.
	Children int
	// OwnProcs is how many processes count as idexd's: the daemon, its
	// descendants and the load's students' processes.
	OwnProcs int
	// OwnNS counts, by type, the namespaces other than the daemon's own
	// that idexd's processes live in or hold open (an fd on a
	// namespace), plus those of nsfs mounts under the daemon's
	// directories. At rest they are the warm helpers' (if the pool
	// prepares namespaces) and must not grow.
	OwnNS NSCounts
	// OwnMounts counts the daemon's mount table's entries under its
	// directories, and its nsfs mounts of idexd's namespaces.
	OwnMounts int
	// HostNS counts, by type, the distinct namespaces of every process
	// on the host (/proc/*/ns/*) and of every nsfs mount in the daemon's
	// mount namespace. Other work on the host moves it.
	HostNS NSCounts
	// Mounts is the number of lines of the daemon's mountinfo; NSFS the
	// nsfs bind mounts among them. Other work on the host moves both
	// when the daemon shares the host's mount namespace.
	Mounts, NSFS int
}

// censusScope says what is idexd's.
type censusScope struct {
	pid int
	// dirs are the daemon's directories (students' root, the socket's
	// directory): a mount under one of them is the daemon's doing.
	dirs []string
	// match picks the load's students' processes (nil: none).
	match func(Proc) bool
}

// ownDirs keeps the directories that can stand for one daemon: a
// shared directory such as /tmp or /run would claim other work's mounts.
func ownDirs(dirs ...string) []string {
	var out []string
	for _, d := range dirs {
		d = filepath.Clean(d)
		if strings.Count(d, "/") >= 2 {
			out = append(out, d)
		}
	}
	return out
}

// takeCensus reads /proc once: the daemon's fds and mount table, and the
// namespaces of every process (and, for idexd's own processes, of every
// thread and open fd).
func takeCensus(sc censusScope) (Census, error) {
	c := Census{FDs: FDKinds{}, OwnNS: NSCounts{}, HostNS: NSCounts{}}
	dfds, err := readFDs(sc.pid)
	if err != nil {
		return c, err
	}
	for fd, t := range dfds {
		c.FDs[fdKind(fd, t)]++
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return c, fmt.Errorf("list /proc: %w", err)
	}
	host := nsSet{}
	children := map[int][]int{}
	procs := map[int]Proc{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, ok := readProc(pid)
		if !ok {
			continue
		}
		procs[pid] = p
		children[p.PPID] = append(children[p.PPID], pid)
		for _, l := range readNSLinks(filepath.Join("/proc", e.Name())) {
			host.add(l)
		}
	}
	if _, ok := procs[sc.pid]; !ok {
		return c, fmt.Errorf("daemon pid %d is gone", sc.pid)
	}
	for _, k := range children[sc.pid] {
		if !procs[k].Zombie() {
			c.Children++
		}
	}
	own := map[int]bool{}
	queue := []int{sc.pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if own[p] {
			continue
		}
		own[p] = true
		queue = append(queue, children[p]...)
	}
	if sc.match != nil {
		for pid, p := range procs {
			if sc.match(p) {
				own[pid] = true
			}
		}
	}
	c.OwnProcs = len(own)
	self := map[string]bool{}
	for _, l := range readNSLinks(fmt.Sprintf("/proc/%d", sc.pid)) {
		self[l] = true
	}
	ownNS := nsSet{}
	addOwn := func(l string) {
		if !self[l] {
			ownNS.add(l)
		}
	}
	for pid := range own {
		// Threads too: a thread may unshare a namespace of its own.
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			continue // gone meanwhile
		}
		for _, t := range tasks {
			for _, l := range readNSLinks(fmt.Sprintf("/proc/%d/task/%s", pid, t.Name())) {
				addOwn(l)
			}
		}
		fds := dfds
		if pid != sc.pid {
			if fds, err = readFDs(pid); err != nil {
				continue // gone meanwhile
			}
		}
		for _, t := range fds {
			if typ, _, ok := strings.Cut(t, ":["); ok && isNSType(typ) {
				addOwn(t)
			}
		}
	}
	mounts, err := readMountinfo(sc.pid)
	if err != nil {
		return c, err
	}
	c.Mounts = len(mounts)
	for _, m := range mounts {
		mine := underAny(m.point, sc.dirs)
		if m.fstype == "nsfs" {
			c.NSFS++
			host.add(m.root)
			if mine {
				addOwn(m.root)
			}
		}
		if mine || (m.fstype == "nsfs" && ownNS.has(m.root)) {
			c.OwnMounts++
		}
	}
	c.OwnNS, c.HostNS = ownNS.counts(), host.counts()
	return c, nil
}

// nsSet holds namespaces by their link text ("net:[4026531840]").
type nsSet map[string]bool

func (s nsSet) add(link string) {
	if typ, _, ok := strings.Cut(link, ":["); ok && isNSType(typ) {
		s[link] = true
	}
}

func (s nsSet) has(link string) bool { return s[link] }

func (s nsSet) counts() NSCounts {
	n := NSCounts{}
	for _, t := range nsTypes {
		n[t] = 0
	}
	for l := range s {
		typ, _, _ := strings.Cut(l, ":[")
		n[typ]++
	}
	return n
}

// readNSLinks reads the namespace links of a process or thread directory
// ("/proc/PID" or "/proc/PID/task/TID"); a zombie has none.
func readNSLinks(dir string) []string {
	out := make([]string, 0, len(nsLinks))
	for _, n := range nsLinks {
		if l, err := os.Readlink(filepath.Join(dir, "ns", n)); err == nil {
			out = append(out, l)
		}
	}
	return out
}

// readFDs maps pid's open fds to their link targets; an fd closed while
// the directory is read is left out.
func readFDs(pid int) (map[int]string, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list fds of pid %d: %w", pid, err)
	}
	out := make(map[int]string, len(ents))
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		t, err := os.Readlink(filepath.Join(dir, e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read fd %d of pid %d: %w", fd, pid, err)
		}
		out[fd] = t
	}
	return out, nil
}

// mount is one line of a mountinfo file.
type mount struct {
	root, point, fstype string
}

// readMountinfo parses /proc/PID/mountinfo: "ID PARENT MAJ:MIN ROOT POINT
// OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS", with spaces and
// backslashes in paths escaped in octal.
func readMountinfo(pid int) ([]mount, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return nil, fmt.Errorf("read mount table of pid %d: %w", pid, err)
	}
	defer f.Close() //nolint:errcheck // read-only
	var out []mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, x := range fields {
			if x == "-" && i >= 6 {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) {
			return nil, fmt.Errorf("mount table of pid %d: cannot parse %q", pid, sc.Text())
		}
		out = append(out, mount{root: unescapeMount(fields[3]), point: unescapeMount(fields[4]), fstype: fields[sep+1]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mount table of pid %d: %w", pid, err)
	}
	return out, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func underAny(p string, dirs []string) bool {
	for _, d := range dirs {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

// Diff names the types whose count differs from before ("net +2"), or
// "same" when none does.
func (n NSCounts) Diff(before NSCounts) string { return countDiff(nsTypes, n, before, "same") }

// censusGrowth is what a census at rest after the load holds that the
// one before did not.
type censusGrowth struct {
	OwnNS     int // namespaces of idexd more, summed over types
	OwnMounts int // mounts of idexd more
	HostOver  int // host namespaces, mount lines and nsfs mounts above their tolerance
	Problems  []string
}

// compareCensus holds idexd's namespaces and mounts to none more, and the
// host's to the thresholds' tolerances.
func compareCensus(b, a Census, t Thresholds) censusGrowth {
	var g censusGrowth
	for _, typ := range nsTypes {
		if d := a.OwnNS[typ] - b.OwnNS[typ]; d > 0 {
			g.OwnNS += d
			g.Problems = append(g.Problems, fmt.Sprintf("%s namespaces held by idexd, its runs or its mounts: %d before, %d after", typ, b.OwnNS[typ], a.OwnNS[typ]))
		}
		if d := a.HostNS[typ] - b.HostNS[typ]; d > t.HostNamespaces {
			g.HostOver += d - t.HostNamespaces
			g.Problems = append(g.Problems, fmt.Sprintf("%s namespaces on the host: %d before, %d after (tolerance %d for other work on the host)",
				typ, b.HostNS[typ], a.HostNS[typ], t.HostNamespaces))
		}
	}
	if d := a.OwnMounts - b.OwnMounts; d > 0 {
		g.OwnMounts += d
		g.Problems = append(g.Problems, fmt.Sprintf("mounts of idexd (under its directories, or nsfs of its namespaces): %d before, %d after", b.OwnMounts, a.OwnMounts))
	}
	if d := a.Mounts - b.Mounts; d > t.HostMounts {
		g.HostOver += d - t.HostMounts
		g.Problems = append(g.Problems, fmt.Sprintf("lines of the daemon's mount table: %d before, %d after (tolerance %d for other work on the host)", b.Mounts, a.Mounts, t.HostMounts))
	}
	if d := a.NSFS - b.NSFS; d > t.HostNSFS {
		g.HostOver += d - t.HostNSFS
		g.Problems = append(g.Problems, fmt.Sprintf("nsfs mounts in the daemon's mount table: %d before, %d after (tolerance %d for other work on the host)", b.NSFS, a.NSFS, t.HostNSFS))
	}
	return g
}
