package e2e

// The hostile corpus judges every run from outside, as root on the host:
// these helpers read what the host's kernel says (/proc, /proc/sysvipc,
// /proc/net, mountinfo, namespaces) and never what idexd says about itself.

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

// nsKinds are the namespaces a run must not share with the host or
// another run. (UTS is not among them: without CAP_SYS_ADMIN a run cannot
// change the hostname it shares.)
var nsKinds = []string{"net", "ipc", "mnt", "pid"}

// proc is one host process as /proc shows it.
type proc struct {
	pid, ppid int
	uid       uint32 // real uid
	comm      string
	state     string // R, S, Z, ...
	nspid     []int  // pid in each nested PID namespace, outermost first
	seccomp   string // 0 none, 2 filter
	noNewPriv string
	capEff    string
	cgroup    string // the unified hierarchy's path ("0::" line)
}

// inner is the pid the process has inside its own PID namespace.
func (p proc) inner() int { return p.nspid[len(p.nspid)-1] }

func readProc(pid int) (proc, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return proc{}, false // gone meanwhile
	}
	p := proc{pid: pid}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Name":
			p.comm = v
		case "State":
			p.state = strings.Fields(v)[0]
		case "PPid":
			p.ppid, _ = strconv.Atoi(v)
		case "Uid":
			u, _ := strconv.ParseUint(strings.Fields(v)[0], 10, 32)
			p.uid = uint32(u)
		case "NSpid":
			for _, f := range strings.Fields(v) {
				n, _ := strconv.Atoi(f)
				p.nspid = append(p.nspid, n)
			}
		case "Seccomp":
			p.seccomp = v
		case "NoNewPrivs":
			p.noNewPriv = v
		case "CapEff":
			p.capEff = v
		}
	}
	if len(p.nspid) == 0 {
		p.nspid = []int{pid}
	}
	if cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); err == nil {
		for _, line := range strings.Split(string(cg), "\n") {
			if rest, ok := strings.CutPrefix(line, "0::"); ok {
				p.cgroup = rest
			}
		}
	}
	return p, true
}

// allProcs lists every process on the host.
func allProcs() map[int]proc {
	ents, _ := os.ReadDir("/proc")
	ps := map[int]proc{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readProc(pid); ok {
			ps[pid] = p
		}
	}
	return ps
}

// nsOf returns a process's namespaces ("net" -> "net:[4026531840]#12").
func nsOf(pid int) map[string]string {
	m := map[string]string{}
	for _, k := range append(append([]string{}, nsKinds...), "uts", "user", "cgroup") {
		if l := nsIdent(fmt.Sprintf("/proc/%d/ns/%s", pid, k)); l != "" {
			m[k] = l
		}
	}
	return m
}

// nsIdent names the namespace at path (a /proc/PID/ns or /proc/PID/fd
// link): its link, "net:[4026531840]", and where the kernel has NS_GET_ID
// (6.18) its 64-bit id, "net:[4026531840]#12". The id is what tells two
// namespaces apart: the kernel gives a freed namespace's inode number to
// the next one made, so a run's mount namespace and the warm helper made
// just after the run ended can have the same link. "" if path is gone.
func nsIdent(path string) string {
	l, err := os.Readlink(path)
	if err != nil {
		return ""
	}
	f, err := os.Open(path)
	if err != nil {
		return l // gone meanwhile, or not a namespace: the link is all there is
	}
	defer f.Close() //nolint:errcheck // read-only, nothing to lose
	var id uint64
	const nsGetID = 2<<30 | 8<<16 | 0xb7<<8 | 13 // _IOR(NSIO, 13, __u64)
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), nsGetID, uintptr(unsafe.Pointer(&id))); e != 0 {
		return l
	}
	return fmt.Sprintf("%s#%d", l, id)
}

// nsFDs names the namespaces a process holds open as fds (nsIdent).
func nsFDs(pid int) []string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		path := filepath.Join(dir, e.Name())
		if l, err := os.Readlink(path); err == nil && isNSLink(l) {
			if id := nsIdent(path); id != "" {
				out = append(out, id)
			}
		}
	}
	return out
}

// isNSLink reports whether an fd's link names a namespace ("net:[...]").
func isNSLink(l string) bool {
	kind, _, ok := strings.Cut(l, ":[")
	if !ok {
		return false
	}
	switch kind {
	case "net", "ipc", "mnt", "pid", "uts", "user", "cgroup", "time":
		return true
	}
	return false
}

// nsCount is how many distinct namespaces of each kind the host's
// processes are in: a figure for the log (other work on the host changes it).
func nsCount() map[string]int {
	seen := map[string]bool{}
	m := map[string]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		for k, l := range nsOf(atoi(e.Name())) {
			if !seen[l] {
				seen[l] = true
				m[k]++
			}
		}
	}
	return m
}

// hostNS is the test's own namespaces: the host's.
func hostNS() map[string]string { return nsOf(os.Getpid()) }

// exeBase is the base name of a process's executable ("" if unreadable).
func exeBase(pid int) string {
	l, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return ""
	}
	return filepath.Base(strings.TrimSuffix(l, " (deleted)"))
}

// fdLinks lists what a process's fds point at ("anon_inode:[io_uring]").
func fdLinks(pid int) []string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			out = append(out, l)
		}
	}
	return out
}

// meminfo returns /proc/meminfo's fields in bytes.
func meminfo() map[string]int64 {
	b, _ := os.ReadFile("/proc/meminfo")
	m := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			m[strings.TrimSuffix(f[0], ":")] = n * 1024
		}
	}
	return m
}

// tcpMem is the memory all TCP sockets on the host hold (bytes), from
// /proc/net/sockstat: the kernel's global count, whatever the namespace.
func tcpMem() int64 {
	b, _ := os.ReadFile("/proc/net/sockstat")
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "TCP:") {
			continue
		}
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "mem" {
				n, _ := strconv.ParseInt(f[i+1], 10, 64)
				return n * int64(os.Getpagesize())
			}
		}
	}
	return 0
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// ipcObject is one SysV IPC object of the host's IPC namespace.
type ipcObject struct {
	kind, id string // kind: shm, sem or msg (ipcrm -m, -s, -q)
	what     string
}

// sysvOwned lists the host's SysV IPC objects (in the host's IPC
// namespace) that belong to one of uids, as `ipcs` would show them.
func sysvOwned(uids map[uint32]string) []ipcObject {
	var out []ipcObject
	for kind, idCol := range map[string]string{"shm": "shmid", "sem": "semid", "msg": "msqid"} {
		b, err := os.ReadFile("/proc/sysvipc/" + kind)
		if err != nil {
			continue
		}
		lines := strings.Split(string(b), "\n")
		head := strings.Fields(lines[0])
		col := func(f []string, name string) string {
			for i, h := range head {
				if h == name && i < len(f) {
					return f[i]
				}
			}
			return ""
		}
		for _, line := range lines[1:] {
			f := strings.Fields(line)
			if len(f) == 0 {
				continue
			}
			for _, c := range []string{"uid", "cuid"} {
				u, _ := strconv.ParseUint(col(f, c), 10, 32)
				if s, ok := uids[uint32(u)]; ok {
					o := ipcObject{kind: kind, id: col(f, idCol)}
					o.what = fmt.Sprintf("SysV %s id %s of %s", kind, o.id, s)
					if size := col(f, "size"); size != "" {
						o.what += " (" + size + " bytes)"
					}
					out = append(out, o)
					break
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].what < out[j].what })
	return out
}

// sysvCount is how many SysV objects of each kind the host's IPC
// namespace holds.
func sysvCount() map[string]int {
	m := map[string]int{}
	for _, kind := range []string{"shm", "sem", "msg"} {
		b, _ := os.ReadFile("/proc/sysvipc/" + kind)
		m[kind] = max(0, len(strings.Split(strings.TrimSpace(string(b)), "\n"))-1)
	}
	return m
}

// hostMqueues lists the POSIX message queues of the host's IPC
// namespace: an mqueue mount shows its mounter's namespace, so it is made
// in a private mount namespace that vanishes with the command.
func hostMqueues(dir string) ([]string, error) {
	out, err := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t mqueue none "$1" && ls -A "$1"`, "sh", dir).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("list the host's POSIX message queues: %w: %s", err, out)
	}
	return strings.Fields(string(out)), nil
}

// socketsOwned lists the host network namespace's TCP and UDP sockets
// owned by one of uids (/proc/net/{tcp,udp}[6], column uid).
func socketsOwned(uids map[uint32]string) []string {
	var out []string
	for _, f := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, err := os.ReadFile("/proc/net/" + f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			c := strings.Fields(line)
			if len(c) < 8 {
				continue
			}
			u, _ := strconv.ParseUint(c[7], 10, 32)
			if s, ok := uids[uint32(u)]; ok {
				out = append(out, fmt.Sprintf("%s socket %s (state %s) of %s", f, hexAddr(c[1]), c[3], s))
			}
		}
	}
	return out
}

// hexAddr renders /proc/net/tcp's "0100007F:1F90" as "0100007F:8080".
func hexAddr(s string) string {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return s
	}
	n, _ := strconv.ParseUint(p, 16, 16)
	return fmt.Sprintf("%s:%d", a, n)
}

// mount is one line of a mountinfo file.
type mount struct {
	id, dev, root, point, fstype, source, opts string
}

func mountsOf(pid string) []mount {
	b, _ := os.ReadFile("/proc/" + pid + "/mountinfo")
	var ms []mount
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 6 || len(g) < 3 {
			continue
		}
		ms = append(ms, mount{id: f[0], dev: f[2], root: f[3], point: f[4], fstype: g[0], source: g[1], opts: f[5] + "," + g[2]})
	}
	return ms
}

// mountAt is the topmost mount at point in a mountinfo list.
func mountAt(ms []mount, point string) (mount, bool) {
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].point == point {
			return ms[i], true
		}
	}
	return mount{}, false
}

// runNS is a namespace seen in a run: which, and when (clock ticks since
// boot). The kernel reuses a freed namespace's inode number for the next
// namespace made, so after the run a process holding that number is only
// the run's if it is at least as old as that sighting, and a bind mount of
// it only if it was there then (mounts is their "id point" at the time).
type runNS struct {
	run    string
	seen   int64
	mounts map[string]bool
	by     string // the process it was seen in: "pid (comm), born tick"
}

// nsfsMounts are the host's bind mounts of namespaces: root ("net:[...]")
// -> "id point" of each.
func nsfsMounts() map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, m := range mountsOf("self") {
		if m.fstype == "nsfs" {
			if out[m.root] == nil {
				out[m.root] = map[string]bool{}
			}
			out[m.root][m.id+" "+m.point] = true
		}
	}
	return out
}

// uptimeTicks is now in the clock ticks of /proc/<pid>/stat's starttime.
func uptimeTicks() int64 {
	b, _ := os.ReadFile("/proc/uptime")
	f, _ := strconv.ParseFloat(strings.Fields(string(b) + " 0")[0], 64)
	return int64(f * 100) // USER_HZ
}

// startTicks is when a process started, in clock ticks since boot.
func startTicks(pid string) int64 {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 1 << 62
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 20 {
		return 1 << 62
	}
	n, _ := strconv.ParseInt(f[19], 10, 64)
	return n
}

// nsRefs lists everything on the host that keeps one of the namespaces
// in want alive: a process in it or an fd on it (a process older than the
// namespace's sighting in its run), or a bind mount of it.
func nsRefs(want map[string]runNS) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	inPidNS := map[string]int{}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			inPidNS[nsOf(atoi(e.Name()))["pid"]]++
		}
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		born := startTicks(e.Name())
		for k, l := range nsOf(atoi(e.Name())) {
			// A kept helper stays PID 1 of the PID and UTS namespaces its
			// runs had (README, "Kept helpers"): only as root, alone in
			// its PID namespace, so nothing of any run is left with it.
			if (k == "pid" || k == "uts") && keptHelper(e.Name(), inPidNS) {
				continue
			}
			if w, ok := want[l]; ok && born <= w.seen {
				out = append(out, fmt.Sprintf("%s (of %s, seen at tick %d in process %s) held by process %s (%s, born at tick %d, in %v) as its %s namespace",
					l, w.run, w.seen, w.by, e.Name(), comm(e.Name()), born, nsOf(atoi(e.Name())), k))
			}
		}
		for _, l := range nsFDs(atoi(e.Name())) {
			// idexd keeps a run's network namespace open for the same
			// student's next run, only with no socket left in it
			// (netns_kept proves both).
			if strings.HasPrefix(l, "net:") && comm(e.Name()) == "idexd" {
				continue
			}
			if w, ok := want[l]; ok && born <= w.seen {
				out = append(out, fmt.Sprintf("%s (of %s) held open by process %s (%s)", l, w.run, e.Name(), comm(e.Name())))
			}
		}
	}
	for _, m := range mountsOf("self") {
		if m.fstype != "nsfs" {
			continue
		}
		// A bind mount's root is the link alone: the mount id and point
		// recorded at the run's sighting tell it from a recycled number.
		for k, w := range want {
			if strings.HasPrefix(k, m.root) && w.mounts[m.id+" "+m.point] {
				out = append(out, fmt.Sprintf("%s (of %s) bind-mounted at %s", m.root, w.run, m.point))
			}
		}
	}
	sort.Strings(out)
	return out
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// keptHelper says whether pid is an idle kept helper: root, PID 1 of its
// PID namespace, and the only process in it.
func keptHelper(pid string, inPidNS map[string]int) bool {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return false
	}
	root, init := false, false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) > 1 && f[0] == "Uid:":
			root = f[1] == "0"
		case len(f) > 1 && f[0] == "NSpid:":
			init = f[len(f)-1] == "1"
		}
	}
	return root && init && inPidNS[nsOf(atoi(pid))["pid"]] == 1
}

func comm(pid string) string {
	b, _ := os.ReadFile("/proc/" + pid + "/comm")
	return strings.TrimSpace(string(b))
}

// keyCount is how many keys uid holds on the host (/proc/key-users).
func keyCount(uid uint32) int {
	b, _ := os.ReadFile("/proc/key-users")
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && f[0] == fmt.Sprintf("%d:", uid) {
			n, _ := strconv.Atoi(strings.SplitN(f[2], "/", 2)[0])
			return n
		}
	}
	return 0
}

// worldWritable reports whether path is a directory (not a symlink) that
// any uid may create files in.
func worldWritable(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.IsDir() && fi.Mode().Perm()&0o002 != 0
}

// filesOwned walks dir (a few levels deep, only into directories a
// student could create something in) for entries owned by one of uids or
// whose name holds tok.
func filesOwned(dir, tok string, uids map[uint32]string, depth int) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		fi, err := os.Lstat(p)
		if err != nil {
			continue
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		if s, ok := uids[st.Uid]; ok || strings.Contains(e.Name(), tok) {
			if !ok {
				s = "?"
			}
			out = append(out, fmt.Sprintf("%s (%s, uid %d: %s)", p, fi.Mode(), st.Uid, s))
			continue
		}
		if depth > 0 && fi.IsDir() && fi.Mode().Perm()&0o002 != 0 {
			out = append(out, filesOwned(p, tok, uids, depth-1)...)
		}
	}
	return out
}
