package daemon

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/client"
	"github.com/idexd/idexd/internal/config"
	"github.com/idexd/idexd/internal/students"
	"github.com/idexd/idexd/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// testConfig is a daemon of the test's own: directories, socket and
// cgroup parent.
func testConfig(t *testing.T) config.Config {
	t.Helper()
	testutil.RequireRoot(t)
	dir := testutil.TraversableDir(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	cfg := config.Default()
	cfg.Socket = filepath.Join(dir, "idexd.sock")
	cfg.WorkdirRoot = filepath.Join(dir, "students")
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.CgroupParent = "idexd-test/daemon-" + hex.EncodeToString(b[:])
	cfg.ClientGroup, cfg.AdminGroup = "root", "root"
	cfg.Interpreter = testutil.Interpreter
	cfg.Host = "test"
	cfg.WarmRuns = 0
	cfg.ShutdownGrace = config.Duration{Duration: time.Second}
	return cfg
}

// parentFree checks that the cgroup parent is not held (another manager
// may take it), then removes it.
func parentFree(t *testing.T, parent string) {
	t.Helper()
	m, err := cgroup.New(parent)
	if err != nil {
		t.Fatalf("cgroup parent still held after the daemon gave up: %v", err)
	}
	if err := m.RemoveParent(); err != nil {
		t.Fatal(err)
	}
}

func noFile(t *testing.T, path, what string) {
	t.Helper()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s %s is still there (%v)", what, path, err)
	}
}

func TestNewStoreFailsToOpen(t *testing.T) {
	cfg := testConfig(t)
	// A file where the state directory should be.
	if err := os.WriteFile(cfg.StateDir, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := New(context.Background(), cfg, Options{Log: testutil.Logger(t)})
	if err == nil || !strings.Contains(err.Error(), "state dir") {
		t.Fatalf("New with a state dir that is a file: %v", err)
	}
	noFile(t, cfg.Socket, "socket")
	parentFree(t, cfg.CgroupParent)
}

func TestNewSocketInUse(t *testing.T) {
	cfg := testConfig(t)
	ln, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close() // answering is enough
		}
	}()
	_, err = New(context.Background(), cfg, Options{Log: testutil.Logger(t)})
	if err == nil || !strings.Contains(err.Error(), "another idexd answers") {
		t.Fatalf("New on a socket in use: %v", err)
	}
	// Refused before the sweep and the store: nothing of the live one's.
	noFile(t, filepath.Join(cfg.StateDir, "idexd.db"), "store")
	parentFree(t, cfg.CgroupParent)
}

// TestStopDuringStartUp: SIGTERM before start-up ends is a clean exit
// that leaves nothing held.
func TestStopDuringStartUp(t *testing.T) {
	cfg := testConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := New(ctx, cfg, Options{Log: testutil.Logger(t)})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("New after SIGTERM: %v, want context.Canceled", err)
	}
	noFile(t, cfg.Socket, "socket")
	parentFree(t, cfg.CgroupParent)
	// Main says it is a clean exit.
	path := filepath.Join(t.TempDir(), "idexd.toml")
	conf := fmt.Sprintf("client_group = \"root\"\nadmin_group = \"root\"\nwarm_runs = 0\nhost = \"test\"\ninterpreter = %q\n", cfg.Interpreter)
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--config", path, "--socket", cfg.Socket, "--workdir-root", cfg.WorkdirRoot,
		"--state-dir", cfg.StateDir, "--cgroup-parent", cfg.CgroupParent}
	var log strings.Builder
	if err := Main(ctx, args, &log, &log); err != nil {
		t.Fatalf("Main after SIGTERM during start-up: %v\n%s", err, log.String())
	}
	parentFree(t, cfg.CgroupParent)
}

// cancelAt is idexd's log (Main's logOut) that cancels a context when a
// line with the message msg is written: SIGTERM at a known step of
// start-up, with no change to the daemon for the test.
type cancelAt struct {
	msg    string
	cancel context.CancelFunc
	mu     sync.Mutex
	log    strings.Builder
	seen   bool
}

func (w *cancelAt) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if strings.Contains(string(p), "msg=\""+w.msg+"\"") || strings.Contains(string(p), "msg="+w.msg+" ") {
		w.seen = true
		w.cancel()
	}
	return w.log.Write(p)
}

func (w *cancelAt) text() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.log.String()
}

// TestStopAtEachStartUpStep: SIGTERM that arrives while New is building
// (after the groups, after the socket was bound and before the store, after
// the engine was built) is a clean exit of Main that leaves no socket file
// and no cgroup parent held, and the store it may have opened is closed (a
// second start opens it).
func TestStopAtEachStartUpStep(t *testing.T) {
	for _, step := range []string{"idexd starting", "disk quotas", "fair share between students"} {
		t.Run(step, func(t *testing.T) {
			cfg := testConfig(t)
			path := filepath.Join(t.TempDir(), "idexd.toml")
			conf := fmt.Sprintf("client_group = \"root\"\nadmin_group = \"root\"\nwarm_runs = 0\nhost = \"test\"\ninterpreter = %q\n", cfg.Interpreter)
			if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
				t.Fatal(err)
			}
			args := []string{"--config", path, "--socket", cfg.Socket, "--workdir-root", cfg.WorkdirRoot,
				"--state-dir", cfg.StateDir, "--cgroup-parent", cfg.CgroupParent}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			w := &cancelAt{msg: step, cancel: cancel}
			if err := Main(ctx, args, io.Discard, w); err != nil {
				t.Fatalf("Main, SIGTERM at %q: %v\n%s", step, err, w.text())
			}
			if !w.seen {
				t.Fatalf("start-up never logged %q: the test stopped nothing\n%s", step, w.text())
			}
			if !strings.Contains(w.text(), "stopped during start-up") || strings.Contains(w.text(), "idexd ready") {
				t.Fatalf("SIGTERM at %q: not a stop during start-up:\n%s", step, w.text())
			}
			// Issue 11: who enforces the disk quotas is said at start.
			if !regexp.MustCompile(`msg="disk quotas" quota_mb=100 quota_files=10000 enforced_by=(kernel|idexd) status="enforced by `).MatchString(w.text()) {
				t.Errorf("the start-up log does not say who enforces the disk quotas:\n%s", w.text())
			}
			noFile(t, cfg.Socket, "socket")
			parentFree(t, cfg.CgroupParent)
			// Nothing is left held: the same configuration starts and stops.
			s := start(t, cfg, Options{})
			s.cancel()
			if err := s.wait(t); err != nil {
				t.Fatalf("Run after a stopped start-up: %v", err)
			}
			if err := s.d.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// started is a daemon whose Run is going.
type started struct {
	d      *Daemon
	c      *client.Client
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, cfg config.Config, opts Options) *started {
	t.Helper()
	if opts.Log == nil {
		opts.Log = testutil.Logger(t)
	}
	d, err := New(context.Background(), cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &started{d: d, c: client.New(cfg.Socket), cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- d.Run(ctx) }()
	hctx, hcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer hcancel()
	for {
		if _, err := s.c.Health(hctx); err == nil {
			return s
		}
		if hctx.Err() != nil {
			t.Fatal("the daemon did not answer health")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wait returns Run's error (60 s at most).
func (s *started) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.done:
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

// sleeper starts a run that sleeps and waits for its first line.
func (s *started) sleeper(t *testing.T, cfg config.Config) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := s.c.EnsureStudent(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(st.Workdir, "sleep.py"), []byte("import time\nprint('up', flush=True)\ntime.sleep(300)\n"), 0o666); err != nil {
		t.Fatal(err)
	}
	r, err := s.c.StartRun(ctx, api.RunRequest{Student: "alice", Script: "sleep.py", Limits: api.Limits{WallSeconds: 600}})
	if err != nil {
		t.Fatal(err)
	}
	evs, err := s.c.Events(ctx, r.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer evs.Close()
	if ev, err := evs.Next(); err != nil || !strings.HasPrefix(ev.Data, "up") {
		t.Fatalf("first event %+v %v", ev, err)
	}
	return r.ID
}

// brokenListener fails its Accept once the test breaks it, as a listener
// whose socket went bad would.
type brokenListener struct {
	net.Listener
	broken chan struct{}
}

func (l *brokenListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	select {
	case <-l.broken:
		if c != nil {
			_ = c.Close() // the listener is broken: nobody serves this one
		}
		return nil, errors.New("accept: injected failure")
	default:
	}
	return c, err
}

// TestServeErrorDrains: when serving fails, the live runs are still ended
// (shutdown) and recorded, not left to die with the daemon and be found
// lost at the next start.
func TestServeErrorDrains(t *testing.T) {
	cfg := testConfig(t)
	inner, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	ln := &brokenListener{Listener: inner, broken: make(chan struct{})}
	s := start(t, cfg, Options{Listener: ln})
	id := s.sleeper(t, cfg)
	close(ln.broken)
	// One more connection wakes Accept up to fail.
	if c, err := net.Dial("unix", cfg.Socket); err == nil {
		_, _ = bufio.NewReader(c).ReadByte() // until the daemon closes it
		_ = c.Close()
	}
	err = s.wait(t)
	if err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("Run after a Serve error: %v", err)
	}
	rec, err := s.d.st.GetRun(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if rec.State != api.StateEnded || rec.Reason != api.ReasonShutdown {
		t.Fatalf("the live run after a Serve error is %s/%s, want ended/shutdown", rec.State, rec.Reason)
	}
	if err := s.d.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestCleanStopRemovesCgroups: SIGTERM drains, and the cgroup parent goes
// with the daemon, in every hierarchy: a clean stop leaves no empty group.
func TestCleanStopRemovesCgroups(t *testing.T) {
	cfg := testConfig(t)
	s := start(t, cfg, Options{})
	id := s.sleeper(t, cfg)
	dirs := parentDirs(t, s.d.cg, cfg.CgroupParent)
	for _, d := range dirs {
		if _, err := os.Stat(d); err != nil {
			t.Fatalf("cgroup parent %s while running: %v", d, err)
		}
	}
	s.cancel()
	if err := s.wait(t); err != nil {
		t.Fatalf("Run after SIGTERM: %v", err)
	}
	rec, err := s.d.st.GetRun(context.Background(), id)
	if err != nil || rec.Reason != api.ReasonShutdown {
		t.Fatalf("run after SIGTERM: %+v %v, want shutdown", rec, err)
	}
	if err := s.d.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		noFile(t, d, "cgroup")
	}
}

// parentDirs are the directories of m's (relative) parent: v2, and on a
// hybrid host the v1 memory and pids ones, under this process's own groups.
func parentDirs(t *testing.T, m *cgroup.Manager, rel string) []string {
	t.Helper()
	if m.Mode() == cgroup.ModeUnified {
		return []string{filepath.Join("/sys/fs/cgroup", m.Parent())}
	}
	out := []string{filepath.Join("/sys/fs/cgroup/unified", m.Parent())}
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(own), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) == 3 && (f[1] == "memory" || f[1] == "pids") {
			out = append(out, filepath.Join("/sys/fs/cgroup", f[1], f[2], rel))
		}
	}
	return out
}

// TestReloadLogsLimitsAsJSON: SIGHUP's line shows the new limits as JSON,
// the form they have in the protocol, not as Go struct text.
func TestReloadLogsLimitsAsJSON(t *testing.T) {
	cfg := testConfig(t)
	path := filepath.Join(t.TempDir(), "idexd.toml")
	if err := os.WriteFile(path, []byte("client_group = \"root\"\nadmin_group = \"root\"\n[defaults]\nmemory_mb = 128\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testutil.LogBuffer{}
	d, err := New(context.Background(), cfg, Options{Log: logs.Logger(), Args: []string{"--config", path}})
	if err != nil {
		t.Fatal(err)
	}
	d.reload()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	got := logs.Lines("reloaded limits")
	if len(got) != 1 || !strings.Contains(got[0], `defaults="{\"memory_mb\":128,`) || !strings.Contains(got[0], `max="{\"memory_mb\":2048,`) {
		t.Fatalf("reload lines %q, want the limits as JSON", got)
	}
}

// TestUIDsOutliveALostStore: the store is lost (a purge and reinstall, a
// database restored from an old backup) while the students' files stay.
// At the next start every student keeps the uid its directory has, and a
// new student gets a uid above every uid that owns anything there; while
// running, a new student also skips a uid that owns a directory meanwhile.
func TestUIDsOutliveALostStore(t *testing.T) {
	cfg := testConfig(t)
	s := start(t, cfg, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	alice, err := s.c.EnsureStudent(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	bob, err := s.c.EnsureStudent(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	// A file deep in bob's directory owned by a uid given out later (to a
	// student whose directory is gone since).
	deep := filepath.Join(bob.Workdir, "sub", "old.txt")
	if err := os.MkdirAll(filepath.Dir(deep), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(deep, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(deep, int(bob.UID)+4, int(bob.UID)+4); err != nil {
		t.Fatal(err)
	}
	s.cancel()
	if err := errors.Join(s.wait(t), s.d.Close()); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(cfg.StateDir); err != nil {
		t.Fatal(err)
	}
	s = start(t, cfg, Options{})
	defer func() {
		s.cancel()
		if err := errors.Join(s.wait(t), s.d.Close()); err != nil {
			t.Error(err)
		}
	}()
	for _, want := range []api.Student{alice, bob} {
		got, err := s.c.GetStudent(ctx, want.Name)
		if err != nil || got.UID != want.UID || got.GID != want.GID {
			t.Fatalf("%s after the store was lost: %+v %v, want uid %d", want.Name, got, err, want.UID)
		}
	}
	carol, err := s.c.EnsureStudent(ctx, "carol")
	if err != nil {
		t.Fatal(err)
	}
	if carol.UID != bob.UID+5 {
		t.Fatalf("a new student after the store was lost got uid %d, want %d: above every uid owning a file", carol.UID, bob.UID+5)
	}
	// Meanwhile a directory appears owned by a uid the store has not
	// given out (a second store on the same shared files, say).
	if err := os.Mkdir(filepath.Join(cfg.WorkdirRoot, "zed"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(cfg.WorkdirRoot, "zed"), int(carol.UID)+3, int(carol.UID)+3); err != nil {
		t.Fatal(err)
	}
	dave, err := s.c.EnsureStudent(ctx, "dave")
	if err != nil {
		t.Fatal(err)
	}
	if dave.UID != carol.UID+4 {
		t.Fatalf("a new student got uid %d, want %d: above the owner of a directory", dave.UID, carol.UID+4)
	}
}

// TestPrivateLayoutRunsWriteForTheStudentOnly: in the private layout (the
// default) the daemon gives runs umask 077, so what a run creates is the
// student's alone; the file routes create the same modes.
func TestPrivateLayoutRunsWriteForTheStudentOnly(t *testing.T) {
	cfg := testConfig(t)
	if cfg.WorkdirLayout != string(students.LayoutPrivate) {
		t.Fatalf("the default layout is %q, want private", cfg.WorkdirLayout)
	}
	st := runMakes(t, cfg)
	wantModes(t, st.Workdir, st.UID, st.GID, map[string]uint32{".": 0o700, "make.py": 0o600, "out.txt": 0o600, "made": 0o700})
}

// TestSharedLayoutFromConfig: workdir_layout = "shared" gives the client
// group the students' directories (setgid) and runs umask 007, so the
// group can read and rewrite what a run or the file routes wrote.
func TestSharedLayoutFromConfig(t *testing.T) {
	cfg := testConfig(t)
	cfg.WorkdirLayout = string(students.LayoutShared)
	st := runMakes(t, cfg)
	gid, err := lookupGroup(cfg.ClientGroup)
	if err != nil {
		t.Fatal(err)
	}
	wantModes(t, st.Workdir, st.UID, gid, map[string]uint32{".": 0o2770, "make.py": 0o660, "out.txt": 0o660, "made": 0o2770})
}

// runMakes starts a daemon on cfg, saves a script through the file routes
// and runs it: it writes out.txt and makes the directory made.
func runMakes(t *testing.T, cfg config.Config) api.Student {
	t.Helper()
	s := start(t, cfg, Options{})
	defer func() {
		s.cancel()
		if err := errors.Join(s.wait(t), s.d.Close()); err != nil {
			t.Error(err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := s.c.EnsureStudent(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	src := "import os\nopen('out.txt', 'w').write('x')\nos.mkdir('made')\n"
	if _, err := s.c.WriteFile(ctx, "alice", "make.py", []byte(src), false); err != nil {
		t.Fatal(err)
	}
	r, err := s.c.StartRun(ctx, api.RunRequest{Student: "alice", Script: "make.py"})
	if err != nil {
		t.Fatal(err)
	}
	evs, err := s.c.Events(ctx, r.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer evs.Close()
	var last api.Event
	for {
		ev, err := evs.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		last = ev
	}
	if last.Run == nil || last.Run.Reason != api.ReasonExited || last.Run.ExitCode == nil || *last.Run.ExitCode != 0 {
		t.Fatalf("the run ended %+v", last.Run)
	}
	return st
}

// wantModes checks owner, group and mode of paths under dir.
func wantModes(t *testing.T, dir string, uid, gid uint32, modes map[string]uint32) {
	t.Helper()
	for p, want := range modes {
		var fi syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(dir, p), &fi); err != nil {
			t.Fatal(err)
		}
		if fi.Uid != uid || fi.Gid != gid || fi.Mode&0o7777 != want {
			t.Errorf("%s is %d:%d %o, want %d:%d %o", p, fi.Uid, fi.Gid, fi.Mode&0o7777, uid, gid, want)
		}
	}
}

// TestWatchdogSelfCheckIsHealth: the watchdog's self-check is the engine's
// Health, the one /v1/health answers, not a second computation: when the
// cgroup parent takes no new group, both say so with the same check; a
// debug hang fails the self-check only.
func TestWatchdogSelfCheckIsHealth(t *testing.T) {
	cfg := testConfig(t)
	cfg.DebugEndpoints = true
	s := start(t, cfg, Options{})
	defer func() {
		s.cancel()
		if err := errors.Join(s.wait(t), s.d.Close()); err != nil {
			t.Error(err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := s.d.selfCheck(ctx); err != nil {
		t.Fatalf("self-check of a healthy daemon: %v", err)
	}
	// No new group under the parent: cgroup v2's own limit on descendants.
	limit := filepath.Join(parentDirs(t, s.d.cg, cfg.CgroupParent)[0], "cgroup.max.descendants")
	if err := os.WriteFile(limit, []byte("0"), 0o644); err != nil {
		t.Fatal(err)
	}
	h, err := s.c.Health(ctx)
	if werr := os.WriteFile(limit, []byte("max"), 0o644); werr != nil {
		t.Fatal(werr)
	}
	if err != nil {
		t.Fatal(err)
	}
	var failed *api.Check
	for i, c := range h.Checks {
		if c.Name == "cgroup_parent_writable" && !c.OK {
			failed = &h.Checks[i]
		}
	}
	if h.Status != api.HealthDegraded || failed == nil {
		t.Fatalf("/v1/health with the parent full: %+v", h)
	}
	if err := os.WriteFile(limit, []byte("0"), 0o644); err != nil {
		t.Fatal(err)
	}
	serr := s.d.selfCheck(ctx)
	if werr := os.WriteFile(limit, []byte("max"), 0o644); werr != nil {
		t.Fatal(werr)
	}
	if serr == nil || !strings.Contains(serr.Error(), "cgroup_parent_writable") || !strings.Contains(serr.Error(), "not writable") {
		t.Fatalf("self-check with the parent full: %v, want health's check %q", serr, failed.Message)
	}
	if err := s.d.selfCheck(ctx); err != nil {
		t.Fatalf("self-check after the parent took groups again: %v", err)
	}
	req, err := http.NewRequestWithContext(ctx, "POST", "http://idexd/v1/debug/hang", nil)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", cfg.Socket)
	}}}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if err := s.d.selfCheck(ctx); err == nil || !strings.Contains(err.Error(), "debug hang") {
		t.Fatalf("self-check after /v1/debug/hang (%d): %v", resp.StatusCode, err)
	}
	if h, err := s.c.Health(ctx); err != nil || h.Status != api.HealthOK {
		t.Fatalf("/v1/health after the hang: %+v %v (the hang is the watchdog's alone)", h, err)
	}
}
