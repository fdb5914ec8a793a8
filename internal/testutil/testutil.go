// Package testutil builds real idexd components for tests: a run engine
// on real cgroups with an SQLite store in a temporary directory, a logger
// that writes to t.Log, and the root check that fails instead of skipping
// when CI=true.
package testutil

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/config"
	"github.com/idexd/idexd/internal/files"
	"github.com/idexd/idexd/internal/lock"
	"github.com/idexd/idexd/internal/quota"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/sandbox"
	"github.com/idexd/idexd/internal/sandbox/inside"
	"github.com/idexd/idexd/internal/server"
	"github.com/idexd/idexd/internal/store"
	"github.com/idexd/idexd/internal/students"
)

// ClientGID is the client group's gid in tests; no group entry is needed.
const ClientGID = 4242

// Interpreter is the python every test uses: an absolute path, not a shim.
const Interpreter = "/usr/bin/python3"

// Main is the TestMain of a package whose tests start runs: the test
// binary is then also a run's child (without idexd-sandbox beside it, the
// engine re-executes its own binary in helper mode).
func Main(m *testing.M) {
	inside.Main()
	os.Exit(m.Run())
}

// OpenFDs counts this process's open fds, for leak checks.
func OpenFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// RequireRoot fails the test under CI=true when not root, else skips it.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root and real cgroups; CI runs as root, so this is a failure")
	}
	t.Skip("needs root and real cgroups (run as root; under CI=true this fails instead)")
}

// Logger writes to t.Log until the test ends, and drops lines after that.
func Logger(t testing.TB) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *tWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// LogBuffer keeps a logger's lines, for tests that check what the daemon
// tells its operator.
type LogBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

// Logger returns a text logger (every level) that writes into l.
func (l *LogBuffer) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// Lines returns the lines whose message is msg.
func (l *LogBuffer) Lines(msg string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range strings.Split(l.b.String(), "\n") {
		if strings.Contains(line, "msg=\""+msg+"\"") || strings.Contains(line, "msg="+msg+" ") {
			out = append(out, line)
		}
	}
	return out
}

// ScratchRoot holds the directories of TraversableDir. Not under /tmp:
// every run gets a private /tmp, which would hide a student's directory
// there (config refuses such a workdir_root).
const ScratchRoot = "/var/lib/idexd-test"

// TraversableDir returns a new temporary directory that students' uids can
// traverse, outside the directories each run gets private, removed when
// the test ends.
func TraversableDir(t testing.TB) string {
	t.Helper()
	if err := os.MkdirAll(ScratchRoot, 0o755); err != nil {
		t.Fatalf("create %s: %v", ScratchRoot, err)
	}
	d, err := os.MkdirTemp(ScratchRoot, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())+"-")
	if err != nil {
		t.Fatalf("create scratch directory: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(d); err != nil {
			t.Errorf("remove scratch directory: %v", err)
		}
	})
	for _, p := range []string{ScratchRoot, d} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatalf("chmod %s: %v", p, err)
		}
	}
	return d
}

var helper struct {
	once sync.Once
	bin  sandbox.Binary
	err  error
}

// HelperBinary is cmd/idexd-sandbox, built once per test process by its
// build.sh (as make build does) and pinned, as idexd runs it: a run's PID 1
// is then the helper of production, not the test binary re-executed.
func HelperBinary(t testing.TB) sandbox.Binary {
	t.Helper()
	helper.once.Do(func() {
		helper.bin, helper.err = buildHelper()
	})
	if helper.err != nil {
		t.Fatalf("sandbox helper: %v", helper.err)
	}
	return helper.bin
}

func buildHelper() (sandbox.Binary, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return sandbox.Binary{}, fmt.Errorf("find the module's root: %w", err)
	}
	src := filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), "cmd", "idexd-sandbox")
	// One path per checkout, replaced atomically: test processes of other
	// packages (or another checkout) may build at the same time.
	sum := sha256.Sum256([]byte(src))
	dir := filepath.Join(ScratchRoot, "bin", hex.EncodeToString(sum[:8]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return sandbox.Binary{}, err
	}
	tmp, err := os.CreateTemp(dir, "idexd-sandbox-*")
	if err != nil {
		return sandbox.Binary{}, err
	}
	if err := tmp.Close(); err != nil {
		return sandbox.Binary{}, err
	}
	if out, err := exec.Command(filepath.Join(src, "build.sh"), "-o", tmp.Name(), "test").CombinedOutput(); err != nil {
		return sandbox.Binary{}, fmt.Errorf("build idexd-sandbox: %w\n%s", err, out)
	}
	path := filepath.Join(dir, "idexd-sandbox")
	if err := os.Rename(tmp.Name(), path); err != nil {
		return sandbox.Binary{}, err
	}
	return sandbox.Open(path)
}

// Env is a complete engine stack for one test.
type Env struct {
	Engine  *run.Engine
	Store   store.Store
	Locks   *lock.Table
	Cgroups *cgroup.Manager
	Dirs    *students.Dirs
	Root    string
	Config  run.Config
	// Files serves the file routes, with Quota (the default limits,
	// measured or kernel as the test's filesystem allows).
	Files *files.Service
	Quota *quota.Manager
}

// Option changes the engine's configuration before it is built.
type Option func(*run.Config)

// SharedLayout gives the students' directories the shared layout (the
// client group may enter them) instead of the private default.
func SharedLayout(c *run.Config) { c.Dirs.Layout = students.LayoutShared }

// NewEnv builds an engine on real cgroups under a parent unique to this test.
func NewEnv(t testing.TB, opts ...Option) *Env {
	t.Helper()
	RequireRoot(t)
	root := TraversableDir(t)
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(root, "state"), nil)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	parent := "idexd-test/" + hex.EncodeToString(b[:])
	cg, err := cgroup.New(parent)
	if err != nil {
		t.Fatalf("cgroups: %v", err)
	}
	dirs := &students.Dirs{Root: filepath.Join(root, "students"), ClientGroup: ClientGID}
	def := config.Default()
	locks := lock.NewTable()
	log := Logger(t)
	cfg := run.Config{
		Host: "test", Interpreter: Interpreter,
		Defaults: def.Defaults, Max: def.Max, MaxRuns: 1000,
		UIDSource: students.UIDSourceRange, UIDMin: def.UIDMin, UIDMax: def.UIDMax,
		KeepEnded: time.Minute, Helper: HelperBinary(t),
		Log: log, Cgroups: cg, Dirs: dirs, Store: st, Locks: locks,
	}
	for _, o := range opts {
		o(&cfg)
	}
	if err := dirs.EnsureRoot(); err != nil {
		t.Fatalf("workdir root: %v", err)
	}
	qm, err := quota.New(quota.Config{Root: dirs.Root, Log: log,
		Limits: quota.Limits{Bytes: def.QuotaMB << 20, Files: def.QuotaFiles}})
	if err != nil {
		t.Fatalf("quotas: %v", err)
	}
	if dirs.Quota == nil {
		dirs.Quota = qm
	}
	if cfg.AdmitStudent == nil {
		cfg.AdmitStudent = qm.Admit
	}
	if cfg.HealthChecks == nil {
		cfg.HealthChecks = qm.HealthChecks
	}
	cfg.Hooks.Ended = qm.AfterRuns(cfg.Hooks.Ended, dirs.Workdir)
	eng, err := run.New(cfg)
	if err != nil {
		t.Fatalf("engine: %v", err)
	}
	fsvc, err := files.New(files.Config{Students: eng, Dirs: dirs, MaxBytes: def.FileMaxMB << 20, Quota: qm, Log: log})
	if err != nil {
		t.Fatalf("files: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := eng.Shutdown(ctx, 0); err != nil {
			t.Errorf("shutdown engine: %v", err)
		}
		fsvc.Close()
		if err := qm.Close(); err != nil {
			t.Errorf("close quotas: %v", err)
		}
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
		leftover, err := os.ReadDir(filepath.Join(cgroupV2Mount(cg), cg.Parent()))
		if err == nil {
			for _, d := range leftover {
				if d.IsDir() {
					sub, _ := os.ReadDir(filepath.Join(cgroupV2Mount(cg), cg.Parent(), d.Name()))
					for _, s := range sub {
						if s.IsDir() {
							t.Errorf("cgroup left behind: %s/%s/%s", cg.Parent(), d.Name(), s.Name())
						}
					}
				}
			}
		}
		if err := cg.RemoveParent(); err != nil {
			t.Errorf("remove test cgroup parent: %v", err)
		}
	})
	return &Env{Engine: eng, Store: st, Locks: locks, Cgroups: cg, Dirs: dirs, Root: root, Config: cfg, Files: fsvc, Quota: qm}
}

func cgroupV2Mount(m *cgroup.Manager) string {
	if m.Mode() == cgroup.ModeHybrid {
		return "/sys/fs/cgroup/unified"
	}
	return "/sys/fs/cgroup"
}

// WriteScript writes a script into the student's directory (ensuring the
// student), as the web tier would: mode 0666.
func (e *Env) WriteScript(t testing.TB, student, name, src string) string {
	t.Helper()
	st, err := e.Engine.EnsureStudent(context.Background(), student)
	if err != nil {
		t.Fatalf("ensure student %s: %v", student, err)
	}
	p := filepath.Join(st.Workdir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o2777); err != nil {
		t.Fatalf("mkdir for %s: %v", p, err)
	}
	if err := os.WriteFile(p, []byte(src), 0o666); err != nil {
		t.Fatalf("write %s: %v", p, err)
	}
	if err := os.Chmod(p, 0o666); err != nil {
		t.Fatalf("chmod %s: %v", p, err)
	}
	return p
}

// Result is a finished run and everything it printed.
type Result struct {
	Run    api.Run
	Stdout string
	Stderr string
	Events []api.Event
}

// Collect waits for r to end (or ctx) and gathers its events.
func Collect(ctx context.Context, t testing.TB, r *run.Execution) Result {
	t.Helper()
	var res Result
	var seq int64
	for {
		evs, ch := r.EventsAfter(seq)
		for _, ev := range evs {
			seq = ev.Seq
			res.Events = append(res.Events, ev)
			switch ev.Type {
			case api.EventStdout:
				res.Stdout += string(ev.Bytes())
			case api.EventStderr:
				res.Stderr += string(ev.Bytes())
			case api.EventEnd:
				res.Run = *ev.Run
				return res
			}
		}
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("run %s did not end: %v", r.ID(), ctx.Err())
		}
	}
}

// Discard is an io.Writer for loggers nobody reads.
var Discard io.Writer = io.Discard

// Served is the real server on a real socket, for one test.
type Served struct {
	Socket string
	Server *server.Server
}

// Serve serves env's engine on a socket in a traversable temp dir, owned
// root:ClientGID 0660 as in production; admin group gid is AdminGID.
func (e *Env) Serve(t testing.TB, opts ...func(*server.Config)) *Served {
	t.Helper()
	sock := filepath.Join(TraversableDir(t), "idexd.sock")
	cfg := server.Config{
		Engine: e.Engine, Log: e.Config.Log, ClientGID: ClientGID, AdminGID: AdminGID, Files: e.Files,
	}
	for _, o := range opts {
		o(&cfg)
	}
	srv := server.New(cfg)
	ln, err := server.Listen(sock, ClientGID)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	hs := srv.HTTPServer()
	done := make(chan error, 1)
	go func() { done <- hs.Serve(ln) }()
	t.Cleanup(func() {
		// Runs end first (NewEnv's cleanup runs after this one), so
		// streams are cut here by closing the server.
		if err := hs.Close(); err != nil {
			t.Errorf("close server: %v", err)
		}
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	return &Served{Socket: sock, Server: srv}
}

// AdminGID is the admin group's gid in tests.
const AdminGID = 4243
