package e2e

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/client"
	"github.com/idexd/idexd/internal/testutil"
)

// The hostile corpus's programs; hostilelib.py goes beside each.
//
//go:embed testdata/hostile/*.py
var hostileScripts embed.FS

// Environment of a run against an idexd that is already running (make
// vm-test: the .deb under systemd): its socket and students' root. Without
// them the corpus starts an idexd of its own, as the other e2e tests do.
const (
	envHostileSocket   = "IDEXD_HOSTILE_SOCKET"
	envHostileStudents = "IDEXD_HOSTILE_STUDENTS"
)

// hostile is the corpus's harness: one idexd, the students it made, the
// listeners on the host that no run may reach, and what the host looked
// like before the first run.
type hostile struct {
	t        *testing.T
	c        *client.Client
	d        *daemon // nil when the idexd under test was already running
	socket   string  // idexd's
	students string
	store    string // idexd's SQLite store: every student's run history
	tok      string // in every name the corpus creates: "h" + 10 hex digits
	host     map[string]string
	hostDevs map[string]bool // devices of the host's mounts ("0:25")
	mounts0  map[string]mount
	mem0     map[string]int64
	lis      *listeners
	// rwDir is a directory outside /tmp with a 0777 directory and a 0666
	// file in it: a read-only host keeps both unchanged.
	rwDir string
	// runDir is a directory under /run with a 0666 file and a unix socket:
	// a run must not see /run.
	runDir  string
	mqDir   string // mount point for looking at the host's POSIX queues
	hostPID int    // a host process with a secret in its argv and environment

	mu    sync.Mutex
	uids  map[uint32]string // every student uid of the corpus
	runNS map[string]runNS  // every namespace seen in a run
}

// student is one student of the corpus.
type student struct {
	name, dir string
	uid       uint32
}

func newHostile(t *testing.T) *hostile {
	testutil.RequireRoot(t)
	if runtime.GOARCH != "amd64" {
		t.Fatalf("the corpus's raw syscalls are x86_64's, this is %s", runtime.GOARCH)
	}
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	h := &hostile{t: t, tok: "h" + hex.EncodeToString(b[:]), uids: map[uint32]string{}, runNS: map[string]runNS{}}
	h.lockHost()
	if sock := os.Getenv(envHostileSocket); sock != "" {
		h.students = os.Getenv(envHostileStudents)
		if h.students == "" {
			t.Fatalf("%s is set but %s is not", envHostileSocket, envHostileStudents)
		}
		h.c = client.New(sock)
		h.socket = sock
		h.store = "/var/lib/idexd/idexd.db" // the package's state_dir
	} else {
		// A uid range of its own, so that every process, file, socket
		// and IPC object of these uids on the host is the corpus's; two
		// warm slots, so that the burst also starts runs cold.
		uidMin := 210000 + int(b[0]%80)*1000
		h.d = newDaemonWith(t, daemonOpts{extra: fmt.Sprintf("uid_min = %d\nuid_max = %d\nwarm_runs = 2\n", uidMin, uidMin+999)})
		h.students = h.d.students
		h.c = client.New(h.d.sock)
		h.socket = h.d.sock
		h.store = filepath.Join(h.d.h.StateDir, "idexd.db")
	}
	h.host = hostNS()
	h.hostDevs = map[string]bool{}
	h.mounts0 = map[string]mount{}
	for _, m := range mountsOf("self") {
		h.hostDevs[m.dev] = true
		h.mounts0[m.point+" "+m.dev] = m
	}
	h.mem0 = meminfo()
	// The cleanup looks at the host's POSIX queues through this mount
	// point, after t.TempDir's are gone.
	mq, err := os.MkdirTemp("", "idexd-hostile-mq-")
	if err != nil {
		t.Fatal(err)
	}
	h.mqDir = mq
	t.Cleanup(h.cleanup)
	h.lis = newListeners(t)
	h.makeDirs()
	h.startHostSecret()
	t.Logf("corpus token %s; host before: MemAvailable %s, Shmem %s, TCP %s, SysV %v, namespaces %v",
		h.tok, mib(h.mem0["MemAvailable"]), mib(h.mem0["Shmem"]), mib(tcpMem()), sysvCount(), nsCount())
	return h
}

// lockHost keeps two corpora on one host apart: each adds addresses to
// lo and reads host-wide figures.
func (h *hostile) lockHost() {
	f, err := os.OpenFile("/run/lock/idexd-hostile.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		h.t.Fatalf("corpus lock: %v", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		h.t.Fatalf("corpus lock: %v", err)
	}
	h.t.Cleanup(func() { _ = f.Close() }) // closing releases the lock
}

func (h *hostile) makeDirs() {
	t := h.t
	h.rwDir = "/var/lib/idexd-hostile-" + h.tok
	h.runDir = "/run/idexd-hostile-" + h.tok
	for _, d := range []string{h.rwDir, h.runDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(h.rwDir, "ww"), 0o777); err != nil {
		t.Fatal(err)
	}
	for p, data := range map[string]string{
		filepath.Join(h.rwDir, "ww-file"): "original\n",
		filepath.Join(h.runDir, "secret"): "hostile-run-secret-" + h.tok + "\n",
	} {
		if err := os.WriteFile(p, []byte(data), 0o666); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{filepath.Join(h.rwDir, "ww"), filepath.Join(h.rwDir, "ww-file"), filepath.Join(h.runDir, "secret")} {
		if err := os.Chmod(p, map[bool]os.FileMode{true: 0o777, false: 0o666}[strings.HasSuffix(p, "ww")]); err != nil {
			t.Fatal(err)
		}
	}
}

// startHostSecret starts a host process (root's) whose argv and
// environment hold a secret: no run may see it.
func (h *hostile) startHostSecret() {
	cmd := exec.Command(testutil.Interpreter, "-c", "import time; time.sleep(3600)", "--token=hostile-host-secret-"+h.tok)
	cmd.Env = []string{"HOSTILE_ENV_SECRET=hostile-env-secret-" + h.tok}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	h.hostPID = cmd.Process.Pid
	h.t.Cleanup(func() {
		_ = cmd.Process.Kill() // ours; killed on purpose
		_ = cmd.Wait()
	})
}

// student creates a student of the corpus, as the web tier would.
func (h *hostile) student(t *testing.T, role string) student {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := h.c.EnsureStudent(ctx, h.tok+"-"+role)
	if err != nil {
		t.Fatalf("student %s: %v", role, err)
	}
	h.mu.Lock()
	h.uids[st.UID] = st.Name
	h.mu.Unlock()
	return student{name: st.Name, dir: st.Workdir, uid: st.UID}
}

// put writes a corpus script and hostilelib.py into the student's
// directory as the web tier saves files (0666).
func (h *hostile) put(t *testing.T, st student, script string) {
	t.Helper()
	for _, f := range []string{"hostilelib.py", script} {
		b, err := hostileScripts.ReadFile("testdata/hostile/" + f)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(st.dir, f)
		if err := os.WriteFile(p, b, 0o666); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o666); err != nil {
			t.Fatal(err)
		}
	}
}

// session is one run of a corpus script, followed from its events.
type session struct {
	h      *hostile
	st     student
	script string
	id     string
	lines  chan string // stdout, line by line
	done   chan struct{}
	cancel context.CancelFunc

	mu  sync.Mutex
	out strings.Builder // stdout and stderr as they came
	end *api.Run
	err error
}

// jsonArg is a script's one argument.
func jsonArg(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func (h *hostile) start(t *testing.T, st student, script string, lim api.Limits, args ...string) *session {
	t.Helper()
	h.put(t, st, script)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	r, err := h.c.StartRun(ctx, api.RunRequest{Student: st.name, Script: script, Args: args, Limits: lim})
	if err != nil {
		cancel()
		t.Fatalf("start %s as %s: %v", script, st.name, err)
	}
	evs, err := h.c.Events(ctx, r.ID, 0)
	if err != nil {
		cancel()
		t.Fatalf("events of %s: %v", r.ID, err)
	}
	s := &session{h: h, st: st, script: script, id: r.ID, lines: make(chan string, 1024), done: make(chan struct{}), cancel: cancel}
	go s.read(evs)
	t.Cleanup(s.stop)
	return s
}

func (s *session) read(evs *client.Events) {
	defer close(s.done)
	defer close(s.lines)
	defer evs.Close() //nolint:errcheck // a read stream
	var partial string
	for {
		ev, err := evs.Next()
		if err != nil {
			s.mu.Lock()
			s.err = err
			s.mu.Unlock()
			return
		}
		switch ev.Type {
		case api.EventStdout, api.EventStderr:
			b := ev.Bytes()
			s.mu.Lock()
			s.out.Write(b)
			s.mu.Unlock()
			if ev.Type != api.EventStdout {
				continue
			}
			partial += string(b)
			for {
				i := strings.IndexByte(partial, '\n')
				if i < 0 {
					break
				}
				select {
				case s.lines <- partial[:i]:
				default: // nobody reads that far: only READY lines matter
				}
				partial = partial[i+1:]
			}
		case api.EventEnd:
			s.mu.Lock()
			s.end = ev.Run
			s.mu.Unlock()
			return
		}
	}
}

func (s *session) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

func (s *session) String() string { return s.script + " as " + s.st.name + " (run " + s.id + ")" }

// ready waits for the script's READY line; false if the run ended first.
func (s *session) ready(t *testing.T) (map[string]any, bool) {
	t.Helper()
	timer := time.NewTimer(3 * time.Minute)
	defer timer.Stop()
	for {
		select {
		case line, ok := <-s.lines:
			if !ok {
				return nil, false
			}
			if rest, ok := strings.CutPrefix(line, "READY "); ok {
				var m map[string]any
				if err := json.Unmarshal([]byte(rest), &m); err != nil {
					t.Fatalf("%s: READY line %q: %v", s, rest, err)
				}
				return m, true
			}
		case <-timer.C:
			t.Fatalf("%s: no READY in 3 minutes; output so far:\n%s", s, s.output())
		}
	}
}

// mustReady is ready for a script that has no reason to end first.
func (s *session) mustReady(t *testing.T) map[string]any {
	t.Helper()
	m, ok := s.ready(t)
	if !ok {
		r, _ := s.wait(t)
		t.Fatalf("%s ended before READY: %s; output:\n%s", s, describe(r), s.output())
	}
	return m
}

// send writes one line to the run's stdin.
func (s *session) send(t *testing.T, line string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.h.c.WriteStdin(ctx, s.id, []byte(line+"\n"), false); err != nil {
		t.Fatalf("%s: stdin: %v", s, err)
	}
}

// wait waits for the end and returns the run and its RESULT (nil if it
// printed none).
func (s *session) wait(t *testing.T) (api.Run, map[string]any) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(5 * time.Minute):
		t.Fatalf("%s did not end in 5 minutes; output:\n%s", s, s.output())
	}
	s.mu.Lock()
	end, err := s.end, s.err
	s.mu.Unlock()
	if end == nil {
		t.Fatalf("%s: event stream broke before the end: %v; output:\n%s", s, err, s.output())
	}
	var res map[string]any
	for _, line := range strings.Split(s.output(), "\n") {
		if rest, ok := strings.CutPrefix(line, "RESULT "); ok {
			if err := json.Unmarshal([]byte(rest), &res); err != nil {
				t.Fatalf("%s: RESULT line %q: %v", s, rest, err)
			}
		}
	}
	return *end, res
}

// finish releases a waiting script and returns its end and RESULT,
// failing the test unless it exited 0 with a RESULT.
func (s *session) finish(t *testing.T) map[string]any {
	t.Helper()
	s.send(t, "go")
	r, res := s.wait(t)
	if r.Reason != api.ReasonExited || r.ExitCode == nil || *r.ExitCode != 0 || res == nil {
		t.Fatalf("%s: %s, want exit 0 with a RESULT; output:\n%s", s, describe(r), s.output())
	}
	return res
}

// stop ends a run the test left running (it failed half-way).
func (s *session) stop() {
	defer s.cancel()
	select {
	case <-s.done:
		return
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := s.h.c.StopRun(ctx, s.id); err != nil && !errors.Is(err, api.ErrRunEnded) {
		s.h.t.Logf("stop %s: %v", s, err)
	}
	select {
	case <-s.done:
	case <-time.After(time.Minute):
		s.h.t.Errorf("%s did not end within a minute of stop", s)
	}
}

func describe(r api.Run) string {
	s := string(r.Reason)
	if r.ExitCode != nil {
		s += fmt.Sprintf(" (exit %d)", *r.ExitCode)
	}
	if r.Signal != "" {
		s += " (" + r.Signal + ")"
	}
	if r.Error != "" {
		s += ": " + r.Error
	}
	return s
}

// procs lists the run's processes as the host sees them: its student's
// processes and everything in their PID namespace (idexd's init may run
// as another uid). Not everything in their cgroups: a warm group is
// reused once its run's processes are gone from it, and the next warm
// helper cloned into it can be there while the last of them is still
// seen exiting (that helper's namespaces were once taken for the run's).
func (s *session) procs() []proc {
	all := allProcs()
	host := s.h.host["pid"]
	pidns := map[string]bool{}
	for _, p := range all {
		if p.uid != s.st.uid {
			continue
		}
		if n := nsOf(p.pid)["pid"]; n != "" && n != host {
			pidns[n] = true
		}
	}
	var out []proc
	for _, p := range all {
		if p.uid == s.st.uid || (len(pidns) > 0 && pidns[nsOf(p.pid)["pid"]]) {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].pid < out[j].pid })
	now, pinned := uptimeTicks(), nsfsMounts()
	s.h.mu.Lock()
	for _, p := range out {
		for k, l := range nsOf(p.pid) {
			if l != s.h.host[k] {
				link, _, _ := strings.Cut(l, "#") // a bind mount's root is the link alone
				s.h.runNS[l] = runNS{run: s.String(), seen: now, mounts: pinned[link],
					by: fmt.Sprintf("%d (%s), born at tick %d", p.pid, p.comm, startTicks(strconv.Itoa(p.pid)))}
			}
		}
	}
	s.h.mu.Unlock()
	return out
}

// python is the script's own interpreter among the run's processes: a
// python3 of the student whose parent is not one.
func (s *session) python(t *testing.T) proc {
	t.Helper()
	ps := s.procs()
	isPy := map[int]bool{}
	for _, p := range ps {
		if p.uid == s.st.uid && strings.HasPrefix(p.comm, "python") {
			isPy[p.pid] = true
		}
	}
	for _, p := range ps {
		if isPy[p.pid] && !isPy[p.ppid] {
			return p
		}
	}
	t.Fatalf("%s: no python3 process of uid %d on the host; the run's processes: %v", s, s.st.uid, ps)
	return proc{}
}

// listeners are the host's services that no run may reach: each counts
// what reaches it.
type listeners struct {
	mu      sync.Mutex
	hits    []string
	closers []io.Closer
	targets []target
}

// target is one listener, as a script's argument.
type target struct {
	Name string `json:"name"`
	Kind string `json:"kind"` // tcp, udp, unix, abstract
	Addr string `json:"addr"`
	Port int    `json:"port,omitempty"`
}

func newListeners(t *testing.T) *listeners {
	l := &listeners{}
	t.Cleanup(func() {
		for _, c := range l.closers {
			_ = c.Close() // listeners of the test itself
		}
	})
	return l
}

func (l *listeners) hit(name, from string) {
	l.mu.Lock()
	l.hits = append(l.hits, name+" from "+from)
	l.mu.Unlock()
}

// Hits is everything that reached a listener so far.
func (l *listeners) Hits() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.hits...)
}

func (l *listeners) stream(t *testing.T, name, network, addr, kind string) {
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listener %s on %s %s: %v", name, network, addr, err)
	}
	l.closers = append(l.closers, ln)
	tg := target{Name: name, Kind: kind, Addr: addr}
	if network != "unix" {
		host, port, _ := net.SplitHostPort(ln.Addr().String())
		tg.Addr, tg.Port = host, atoi(port)
	} else if kind == "abstract" {
		tg.Addr = strings.TrimPrefix(addr, "@")
	}
	l.targets = append(l.targets, tg)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			b := make([]byte, 64)
			n, _ := c.Read(b)
			l.hit(name, fmt.Sprintf("%v: %q", c.RemoteAddr(), b[:n]))
			_ = c.Close()
		}
	}()
}

func (l *listeners) udp(t *testing.T, name, addr string) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("listener %s on udp %s: %v", name, addr, err)
	}
	l.closers = append(l.closers, pc)
	host, port, _ := net.SplitHostPort(pc.LocalAddr().String())
	l.targets = append(l.targets, target{Name: name, Kind: "udp", Addr: host, Port: atoi(port)})
	go func() {
		b := make([]byte, 64)
		for {
			n, from, err := pc.ReadFrom(b)
			if err != nil {
				return
			}
			l.hit(name, fmt.Sprintf("%v: %q", from, b[:n]))
		}
	}()
}

// hostAddr adds addr/32 to lo for the test (the host's own address for
// the metadata service, or a non-loopback address when the host has none)
// and removes it at the end. The corpus lock keeps other corpora away.
func hostAddr(t *testing.T, addr string) {
	out, err := exec.Command("ip", "addr", "add", addr+"/32", "dev", "lo").CombinedOutput()
	if err != nil && !strings.Contains(string(out), "File exists") {
		t.Fatalf("ip addr add %s/32 dev lo: %v: %s", addr, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "addr", "del", addr+"/32", "dev", "lo").CombinedOutput(); err != nil {
			t.Errorf("ip addr del %s/32 dev lo: %v: %s", addr, err, out)
		}
	})
}

// otherHostAddr is an IPv4 address of the host that is not loopback.
func otherHostAddr(t *testing.T) string {
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if i.Flags&net.FlagUp == 0 || i.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := i.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
				return n.IP.String()
			}
		}
	}
	// None (the VM has no network card): one of TEST-NET-2 on lo.
	hostAddr(t, "198.51.100.7")
	return "198.51.100.7"
}

// freePort is a TCP port nothing on the host listens on right now.
func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close() //nolint:errcheck // only its number was wanted
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return atoi(port)
}

// sharedDirs are the host's world-writable directories where one
// student could leave something for another.
func sharedDirs() []string {
	var out []string
	for _, d := range []string{"/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue"} {
		if worldWritable(d) {
			out = append(out, d)
		}
	}
	return out
}

// corpusUIDs is a copy of the corpus's student uids.
func (h *hostile) corpusUIDs() map[uint32]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := make(map[uint32]string, len(h.uids))
	for k, v := range h.uids {
		m[k] = v
	}
	return m
}

// leftovers is everything of the corpus's students that is still on the
// host outside their own directories: processes, and the traces below.
func (h *hostile) leftovers() []string {
	var out []string
	uids := h.corpusUIDs()
	for _, p := range allProcs() {
		if s, ok := uids[p.uid]; ok {
			out = append(out, fmt.Sprintf("process %d (%s, state %s) of %s", p.pid, p.comm, p.state, s))
		}
	}
	return append(out, h.traces()...)
}

// traces is what the corpus's students left on the host outside their
// directories, processes aside: files in the shared directories and the
// read-only probe, SysV and POSIX IPC objects, sockets.
func (h *hostile) traces() []string {
	uids := h.corpusUIDs()
	var out []string
	for _, d := range sharedDirs() {
		out = append(out, filesOwned(d, h.tok, uids, 3)...)
	}
	if ents, _ := os.ReadDir(filepath.Join(h.rwDir, "ww")); len(ents) > 0 {
		out = append(out, fmt.Sprintf("%d entries in the world-writable %s/ww, first %s", len(ents), h.rwDir, ents[0].Name()))
	}
	if b, _ := os.ReadFile(filepath.Join(h.rwDir, "ww-file")); string(b) != "original\n" {
		out = append(out, fmt.Sprintf("%s/ww-file (0666) was changed to %q", h.rwDir, b))
	}
	for _, o := range sysvOwned(uids) {
		out = append(out, o.what)
	}
	if qs, err := hostMqueues(h.mqDir); err != nil {
		out = append(out, err.Error())
	} else {
		for _, q := range qs {
			if strings.Contains(q, h.tok) {
				out = append(out, "POSIX message queue /"+q+" in the host's IPC namespace")
			}
		}
	}
	out = append(out, socketsOwned(uids)...)
	return out
}

// newMounts lists the host's mounts that were not there before the
// corpus began where a run's would show if they propagated to the host:
// on the paths a sandbox mounts over, or in the students' directories.
// (Other tests on the host mount things in their own directories.)
func (h *hostile) newMounts() []string {
	var out []string
	for _, m := range mountsOf("self") {
		if _, ok := h.mounts0[m.point+" "+m.dev]; ok {
			continue
		}
		watched := m.point == h.students || strings.HasPrefix(m.point, h.students+"/")
		for _, p := range []string{"/", "/tmp", "/var/tmp", "/dev", "/dev/shm", "/dev/pts", "/dev/ptmx", "/dev/mqueue", "/run", "/proc", "/sys"} {
			watched = watched || m.point == p
		}
		if watched {
			out = append(out, fmt.Sprintf("%s on %s (%s, dev %s)", m.fstype, m.point, m.source, m.dev))
		}
	}
	return out
}

// settle polls f until it returns nothing or 15 s passed (a run's
// processes are reaped and its namespaces freed just after its end is
// published), and returns what is left.
func settle(f func() []string) []string { return settleFor(15*time.Second, f) }

// settleFor is settle with another bound.
func settleFor(bound time.Duration, f func() []string) []string {
	deadline := time.Now().Add(bound)
	for {
		left := f()
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cleanup removes whatever the corpus's runs left on the host (a sandbox
// that failed leaves files, IPC objects and processes behind): the host
// is as before the corpus, whatever the verdict.
func (h *hostile) cleanup() {
	uids := h.corpusUIDs()
	for _, p := range allProcs() {
		if _, ok := uids[p.uid]; ok {
			_ = syscall.Kill(p.pid, syscall.SIGKILL) // a process of the corpus's own runs
		}
	}
	for _, d := range sharedDirs() {
		for _, f := range filesOwned(d, h.tok, uids, 3) {
			p := strings.SplitN(f, " (", 2)[0]
			if err := os.RemoveAll(p); err != nil {
				h.t.Errorf("clean up %s: %v", p, err)
			}
		}
	}
	for _, o := range sysvOwned(uids) {
		flag := map[string]string{"shm": "-m", "sem": "-s", "msg": "-q"}[o.kind]
		if out, err := exec.Command("ipcrm", flag, o.id).CombinedOutput(); err != nil {
			h.t.Errorf("clean up %s: %v: %s", o.what, err, out)
		}
	}
	if h.mqDir != "" {
		if out, err := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
			`mount -t mqueue none "$1" && rm -f "$1"/*"$2"*`, "sh", h.mqDir, h.tok).CombinedOutput(); err != nil {
			h.t.Errorf("clean up POSIX queues: %v: %s", err, out)
		}
	}
	for _, d := range []string{h.rwDir, h.runDir, h.mqDir} {
		if d != "" {
			if err := os.RemoveAll(d); err != nil {
				h.t.Errorf("clean up %s: %v", d, err)
			}
		}
	}
}

// subtest runs one case of the corpus; proves says in one line what
// passing it shows.
func (h *hostile) subtest(name, proves string, f func(t *testing.T)) {
	h.t.Run(name, func(t *testing.T) {
		t.Log("proves: " + proves)
		f(t)
	})
}

// str reads a RESULT field as text.
func str(m map[string]any, k string) string {
	v, ok := m[k]
	if !ok {
		return "<missing>"
	}
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func num(m map[string]any, k string) int64 {
	f, _ := m[k].(float64)
	return int64(f)
}

// netFile reads /proc/<pid>/net/<name>: that file of the process's
// network namespace, read from the host.
func netFile(pid int, name string) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/net/" + name)
	return string(b)
}

// interfaces are the network interfaces /proc/<pid>/net/dev lists.
func interfaces(pid int) []string {
	var out []string
	for _, line := range strings.Split(netFile(pid, "dev"), "\n")[2:] {
		if n, _, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			out = append(out, n)
		}
	}
	return out
}

// routes are the IPv4 routes of pid's network namespace, and the IPv6
// routes through anything but lo.
func routes(pid int) []string {
	var out []string
	for _, line := range strings.Split(netFile(pid, "route"), "\n")[1:] {
		if f := strings.Fields(line); len(f) > 2 {
			out = append(out, "ipv4 "+f[0]+" "+f[1])
		}
	}
	for _, line := range strings.Split(netFile(pid, "ipv6_route"), "\n") {
		if f := strings.Fields(line); len(f) == 10 && f[9] != "lo" {
			out = append(out, "ipv6 "+f[0]+"/"+f[1]+" dev "+f[9])
		}
	}
	return out
}
