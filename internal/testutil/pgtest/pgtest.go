// Package pgtest gives tests a real PostgreSQL database, never a mock: the
// PostgreSQL store's guarantees (locks across hosts, uid allocation under
// concurrency, timeouts when the server is gone) only mean something
// against the real server.
//
// Start returns the URL of a new, empty database for one test. With
// IDEXD_TEST_DATABASE_URL set, that database is created on the server it
// names. Otherwise the test binary starts a throwaway cluster of its own,
// once, and every Start creates a database in it: initdb plus start took
// about a second on the CI machine; a new database, migrated, about 0.1 s.
//
// Lifetime of that cluster: the postmaster is a direct child of the test
// binary with a parent-death signal (SIGINT, PostgreSQL's fast shutdown),
// so it stops whenever the binary exits, however it exits: normally, by a
// panic, by the -timeout alarm, or by kill -9. A package whose TestMain
// calls Main also stops it cleanly and removes its directory; otherwise
// the directory (in os.TempDir, named idexd-pgtest-<pid>-*) is removed by
// the next test binary that starts a cluster, once its owner is gone.
//
// The cluster listens only on a Unix socket in its own 0700 directory
// (listen_addresses is empty), so parallel test binaries never collide on a
// port and nothing is reachable from the network. As root, initdb and the
// server run as the user postgres (initdb refuses root).
//
// If PostgreSQL is not installed, tests are skipped with a hint to
// `apt-get install -y postgresql`, except under CI=true where they fail.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/idexd/idexd/internal/harness"
)

// EnvURL names the variable that points the tests at an existing server;
// its user must be allowed to CREATE DATABASE.
const EnvURL = "IDEXD_TEST_DATABASE_URL"

// installHint is the one line a developer needs when PostgreSQL is missing.
const installHint = "PostgreSQL is not installed: apt-get install -y postgresql (or set " + EnvURL + ")"

// dirPrefix names cluster directories, followed by the owner's pid.
const dirPrefix = "idexd-pgtest-"

var shared struct {
	once sync.Once
	c    *Cluster
	err  error
}

var dbSeq atomic.Int64

// Start returns the URL of a new, empty database that is dropped when the
// test ends. The URL carries no application_name, so a connection made
// with it is not mistaken for idexd's.
func Start(t testing.TB) string {
	t.Helper()
	if base := os.Getenv(EnvURL); base != "" {
		return createDatabase(t, base)
	}
	requireInstalled(t)
	shared.once.Do(func() {
		var log []string
		shared.c, log, shared.err = startCluster(ClusterOptions{})
		for _, l := range log {
			t.Log(l)
		}
	})
	if shared.err != nil {
		t.Fatalf("start the test PostgreSQL cluster: %v", shared.err)
	}
	return createDatabase(t, shared.c.URL("postgres"))
}

// Main runs the tests, then stops the shared cluster (if one was started)
// and removes its directory. Call it from TestMain: m.Run is not enough.
func Main(m *testing.M) {
	code := m.Run()
	if shared.c != nil {
		if err := shared.c.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: stop the shared cluster: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// createDatabase makes a uniquely named database on the server of
// adminURL and returns adminURL pointing at it.
func createDatabase(t testing.TB, adminURL string) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("random database name: %v", err)
	}
	name := fmt.Sprintf("idexd_test_%d_%d_%s", os.Getpid(), dbSeq.Add(1), hex.EncodeToString(b[:]))
	if err := adminExec(adminURL, `CREATE DATABASE `+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		// FORCE ends connections a failed test left open.
		if err := adminExec(adminURL, `DROP DATABASE IF EXISTS `+pgx.Identifier{name}.Sanitize()+` WITH (FORCE)`); err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
	})
	u, err := WithDatabase(adminURL, name)
	if err != nil {
		t.Fatalf("test database URL: %v", err)
	}
	return u
}

// WithDatabase returns the connection string connStr with its database
// replaced by db, in either form (postgres:// URL or keyword/value).
func WithDatabase(connStr, db string) (string, error) {
	if strings.HasPrefix(connStr, "postgres://") || strings.HasPrefix(connStr, "postgresql://") {
		u, err := url.Parse(connStr)
		if err != nil {
			// url's error quotes the string, which may hold a password.
			return "", errors.New("the database URL does not parse (not shown: it may hold a password)")
		}
		u.Path = "/" + db
		q := u.Query()
		q.Del("dbname")
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	// In the keyword/value form a later keyword wins.
	return connStr + " dbname=" + db, nil
}

func adminExec(connStr, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connStr)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	_, err = conn.Exec(ctx, sql)
	if cerr := conn.Close(ctx); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close: %w", cerr))
	}
	if err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// requireInstalled skips (fails under CI=true) when no PostgreSQL server
// binaries are found.
func requireInstalled(t testing.TB) {
	t.Helper()
	if _, err := binDir(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s (%v); CI installs it, so this is a failure", installHint, err)
		}
		t.Skipf("%s (%v); under CI=true this fails instead", installHint, err)
	}
}

// binDir finds initdb and postgres: the newest /usr/lib/postgresql/N/bin
// (Debian), else initdb on PATH.
func binDir() (string, error) {
	dirs, err := filepath.Glob("/usr/lib/postgresql/*/bin")
	if err != nil {
		return "", fmt.Errorf("look for /usr/lib/postgresql/*/bin: %w", err)
	}
	sort.Slice(dirs, func(i, j int) bool { return majorOf(dirs[i]) > majorOf(dirs[j]) })
	if p, err := exec.LookPath("initdb"); err == nil {
		dirs = append(dirs, filepath.Dir(p))
	}
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", errors.New("no initdb and postgres in /usr/lib/postgresql/*/bin or on PATH")
}

func majorOf(binDir string) int {
	n, err := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	if err != nil {
		return -1
	}
	return n
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// Cluster is a throwaway PostgreSQL server in a directory of its own.
type Cluster struct {
	dir  string
	user string

	proc *harness.Process // the postmaster
	// newCmd builds the postmaster's command again, for Resume.
	newCmd func() (*exec.Cmd, *os.File, error)

	stopOnce sync.Once
	stopErr  error
}

// NewCluster starts a cluster of the test's own, stopped and removed when
// the test ends. It is for tests that stop or freeze the server; others
// share one cluster through Start.
func NewCluster(t testing.TB) *Cluster {
	t.Helper()
	requireInstalled(t)
	c, log, err := startCluster(ClusterOptions{})
	for _, l := range log {
		t.Log(l)
	}
	if err != nil {
		t.Fatalf("start a PostgreSQL cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop PostgreSQL cluster: %v", err)
		}
	})
	return c
}

// URL returns the keyword/value connection string of database db.
func (c *Cluster) URL(db string) string {
	return fmt.Sprintf("host=%s user=postgres dbname=%s sslmode=disable", c.dir, db)
}

// Dir is the cluster's directory: data in data/, the socket, the log.
func (c *Cluster) Dir() string { return c.dir }

// Pids returns the postmaster's pid followed by those of its children
// (backends and auxiliary processes).
func (c *Cluster) Pids() ([]int, error) {
	pm := c.proc.PID()
	out := []int{pm}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue // not a process directory
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		// The command name may hold spaces or parentheses: parse after
		// the last ')'; then come state and ppid.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) >= 2 && f[1] == strconv.Itoa(pm) {
			out = append(out, pid)
		}
	}
	return out, nil
}

// Stop shuts the server down (fast shutdown: connections are ended) and
// removes its directory. Only the first call does anything.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		var errs []error
		if err := c.proc.Cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, fmt.Errorf("signal postmaster: %w", err))
		}
		select {
		case <-c.proc.Exited():
		case <-time.After(30 * time.Second):
			errs = append(errs, errors.New("postmaster did not stop within 30s; killed"))
			if err := c.proc.Cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
				errs = append(errs, fmt.Errorf("kill postmaster: %w", err))
			}
			<-c.proc.Exited()
		}
		if err := os.RemoveAll(c.dir); err != nil {
			errs = append(errs, fmt.Errorf("remove cluster directory: %w", err))
		}
		c.stopErr = errors.Join(errs...)
	})
	return c.stopErr
}

// ClusterOptions vary a cluster.
type ClusterOptions struct {
	// Durable keeps PostgreSQL's default durability (fsync on), for a
	// measurement (idexbench); tests turn it off for speed.
	Durable bool
}

// Installed says why PostgreSQL's server cannot be started here, or nil.
func Installed() error {
	if _, err := binDir(); err != nil {
		return fmt.Errorf("%s (%w)", installHint, err)
	}
	return nil
}

// StartCluster starts a cluster outside a test (idexbench): the caller
// stops it. notes are lines for a log: leftover directories removed.
func StartCluster(o ClusterOptions) (c *Cluster, notes []string, err error) {
	return startCluster(o)
}

// startCluster runs initdb and starts the server; log holds notes for the
// test log (directories of dead test binaries that were removed).
func startCluster(o ClusterOptions) (c *Cluster, log []string, err error) {
	bin, err := binDir()
	if err != nil {
		return nil, nil, err
	}
	cred, owner, err := runAs()
	if err != nil {
		return nil, nil, err
	}
	base := os.TempDir()
	// A Unix socket path holds at most 107 bytes.
	if len(base) > 40 || strings.ContainsAny(base, " '\\") {
		base = "/tmp"
	}
	log = sweep(base)
	dir, err := os.MkdirTemp(base, fmt.Sprintf("%s%d-", dirPrefix, os.Getpid()))
	if err != nil {
		return nil, log, fmt.Errorf("cluster directory: %w", err)
	}
	c = &Cluster{dir: dir, user: owner}
	fail := func(err error) (*Cluster, []string, error) {
		if rerr := os.RemoveAll(dir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove %s: %w", dir, rerr))
		}
		return nil, log, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fail(fmt.Errorf("chmod cluster directory: %w", err))
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return fail(fmt.Errorf("chown cluster directory to %s: %w", owner, err))
		}
	}
	data := filepath.Join(dir, "data")
	env := []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "TZ=UTC"}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions")
	initdb.Dir, initdb.Env = dir, env
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("initdb as %s: %w\n%s", owner, err, out))
	}
	// Only a socket in the cluster's own directory; durability is
	// pointless for a throwaway cluster and slows every test.
	conf := fmt.Sprintf("\n# pgtest\nlisten_addresses = ''\nunix_socket_directories = '%s'\nshared_buffers = 32MB\nmax_connections = 100\n", dir)
	if !o.Durable {
		conf += "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
	}
	if err := appendFile(filepath.Join(data, "postgresql.conf"), conf); err != nil {
		return fail(err)
	}
	c.newCmd = func() (*exec.Cmd, *os.File, error) {
		logf, err := os.OpenFile(filepath.Join(dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, nil, fmt.Errorf("server log: %w", err)
		}
		cmd := exec.Command(filepath.Join(bin, "postgres"), "-D", data)
		cmd.Dir, cmd.Env = dir, env
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Credential: cred,
			Pdeathsig:  syscall.SIGINT,
			// Its own process group: a ^C in the terminal reaches the test
			// binary, which then stops the server, not both at once.
			Setpgid: true,
		}
		return cmd, logf, nil
	}
	if err := c.start(); err != nil {
		return fail(err)
	}
	if err := c.waitReady(30 * time.Second); err != nil {
		if serr := c.Stop(); serr != nil {
			err = errors.Join(err, serr)
		}
		return nil, log, err
	}
	return c, log, nil
}

// start builds and launches the postmaster.
func (c *Cluster) start() error {
	cmd, logf, err := c.newCmd()
	if err != nil {
		return err
	}
	c.proc, err = harness.Launch(cmd)
	if cerr := logf.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("close server log: %w", cerr)
	}
	return err
}

// Halt stops the server (fast shutdown) and keeps its data, so that a test
// can show what a database outage does; Resume starts it again.
func (c *Cluster) Halt() error {
	if err := c.proc.Cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal postmaster: %w", err)
	}
	select {
	case <-c.proc.Exited():
		return nil
	case <-time.After(30 * time.Second):
		return errors.New("postmaster did not stop within 30s")
	}
}

// Resume starts a halted server on the same data and waits until it
// accepts connections.
func (c *Cluster) Resume() error {
	if err := c.start(); err != nil {
		return err
	}
	return c.waitReady(30 * time.Second)
}

func (c *Cluster) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-c.proc.Exited():
			return fmt.Errorf("postgres exited at start (%w); its log:\n%s", c.proc.Err(), c.logTail())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgx.Connect(ctx, c.URL("postgres"))
		if err == nil {
			err = conn.Close(ctx)
			cancel()
			if err != nil {
				return fmt.Errorf("close readiness probe: %w", err)
			}
			return nil
		}
		cancel()
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("postgres did not accept connections within %s (last: %w); its log:\n%s", limit, last, c.logTail())
}

func (c *Cluster) logTail() string {
	b, err := os.ReadFile(filepath.Join(c.dir, "postgres.log"))
	if err != nil {
		return fmt.Sprintf("(cannot read the log: %v)", err)
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func appendFile(p, s string) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", p, err)
	}
	if _, err := f.WriteString(s); err != nil {
		return errors.Join(fmt.Errorf("write %s: %w", p, err), f.Close())
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", p, err)
	}
	return nil
}

// runAs returns the credential to run initdb and the server with: the
// user postgres when root (initdb refuses root), else the current user.
func runAs() (*syscall.Credential, string, error) {
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			return nil, "", fmt.Errorf("current user: %w", err)
		}
		return nil, u.Username, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, "", fmt.Errorf("user postgres (created by apt-get install -y postgresql), needed because initdb refuses root: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, "", fmt.Errorf("uid of postgres %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, "", fmt.Errorf("gid of postgres %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, "postgres", nil
}

// sweep removes cluster directories left by test binaries that are gone
// (their servers stopped with them, by the parent-death signal) and
// returns what it did, for the test log. A directory whose owner may
// still live, or whose server still runs, is left alone.
func sweep(base string) []string {
	ents, err := os.ReadDir(base)
	if err != nil {
		return []string{fmt.Sprintf("pgtest: cannot look for stale clusters in %s: %v", base, err)}
	}
	var log []string
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), dirPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		num, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(num)
		if err != nil || pid <= 0 || pid == os.Getpid() || alive(pid) {
			continue
		}
		dir := filepath.Join(base, e.Name())
		if serverRunning(dir) {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			log = append(log, fmt.Sprintf("pgtest: remove stale cluster %s: %v", dir, err))
			continue
		}
		log = append(log, "pgtest: removed stale cluster "+dir)
	}
	return log
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// serverRunning reads the postmaster.pid the server keeps while running.
func serverRunning(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
	if err != nil {
		return false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	return err == nil && alive(pid)
}
