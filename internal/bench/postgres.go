package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// postgres measures start->end on the PostgreSQL store: a throwaway
// cluster, and a second idexd configured with database_url. Whether idexd
// has a PostgreSQL store is found out by asking it: an idexd built without
// one refuses database_url at start, and the section is skipped with its
// words. (internal/testutil/pgtest does the same for tests, but it is a
// test helper; the few lines needed are repeated here.)
func (b *bench) postgres(ctx context.Context) error {
	bin, err := pgBinDir()
	if err != nil {
		b.skip("postgres", "PostgreSQL is not installed (apt-get install -y postgresql): "+err.Error())
		return nil //nolint:nilerr // not installed is a skip, shown in the table, not a failure
	}
	cl, err := startCluster(ctx, bin)
	if err != nil {
		return err
	}
	err = b.postgresOn(ctx, cl)
	return errors.Join(err, cl.stop())
}

func (b *bench) postgresOn(ctx context.Context, cl *cluster) error {
	d, err := startDaemon(ctx, b.o, daemonConfig{maxRuns: 300, databaseURL: cl.url()})
	if err != nil {
		msg := err.Error()
		if strings.Contains(msg, "PostgreSQL") || strings.Contains(msg, "database_url") {
			b.skip("postgres", "idexd does not run on PostgreSQL here: "+lastLine(msg))
			return nil
		}
		return err
	}
	b.progress("postgres: %d back-to-back pairs", b.o.N)
	end, err := b.latency(ctx, d, "PostgreSQL store, back-to-back", b.o.N, 0)
	if err == nil && b.sqliteEnd != nil {
		pg, sq := percentile(end.idexd, 50), percentile(b.sqliteEnd.idexd, 50)
		b.notes = append(b.notes, fmt.Sprintf("PostgreSQL store vs SQLite store, start->end p50 back-to-back: %.2f ms vs %.2f ms (%+.2f ms); "+
			"the throwaway cluster keeps PostgreSQL's default durability (fsync on) on this machine's disk, over a Unix socket.", pg, sq, pg-sq))
	}
	b.logProblems("PostgreSQL idexd", d)
	return errors.Join(err, d.stop())
}

func (b *bench) skip(section, reason string) {
	b.progress("%s: skipped (%s)", section, reason)
	b.t.section(fmt.Sprintf("%s: skipped (%s)", section, reason))
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			return l
		}
	}
	return s
}

// pgBinDir finds initdb and postgres: the newest /usr/lib/postgresql/N/bin
// (Debian), else initdb on PATH.
func pgBinDir() (string, error) {
	dirs, err := filepath.Glob("/usr/lib/postgresql/*/bin")
	if err != nil {
		return "", fmt.Errorf("look for /usr/lib/postgresql/*/bin: %w", err)
	}
	major := func(d string) int {
		n, err := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		if err != nil {
			return -1
		}
		return n
	}
	sort.Slice(dirs, func(i, j int) bool { return major(dirs[i]) > major(dirs[j]) })
	if p, err := exec.LookPath("initdb"); err == nil {
		dirs = append(dirs, filepath.Dir(p))
	}
	for _, d := range dirs {
		ok := true
		for _, f := range []string{"initdb", "postgres"} {
			fi, err := os.Stat(filepath.Join(d, f))
			ok = ok && err == nil && fi.Mode()&0o111 != 0
		}
		if ok {
			return d, nil
		}
	}
	return "", errors.New("no initdb and postgres in /usr/lib/postgresql/*/bin or on PATH")
}

// cluster is a throwaway PostgreSQL server listening only on a Unix
// socket in its own 0700 directory.
type cluster struct {
	dir    string
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

func (c *cluster) url() string {
	return fmt.Sprintf("host=%s user=postgres dbname=postgres sslmode=disable", c.dir)
}

func startCluster(ctx context.Context, bin string) (*cluster, error) {
	// initdb refuses root: the cluster belongs to the user postgres.
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("user postgres (made by apt-get install postgresql), needed because initdb refuses root: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("uid of postgres %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("gid of postgres %q: %w", u.Gid, err)
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	// /tmp keeps the socket path under the 107-byte limit.
	dir, err := os.MkdirTemp("/tmp", "idexbench-pg-")
	if err != nil {
		return nil, fmt.Errorf("cluster directory: %w", err)
	}
	c := &cluster{dir: dir, exited: make(chan struct{})}
	fail := func(err error) (*cluster, error) {
		return nil, errors.Join(err, os.RemoveAll(dir))
	}
	if err := os.Chown(dir, int(uid), int(gid)); err != nil {
		return fail(fmt.Errorf("chown %s to postgres: %w", dir, err))
	}
	env := []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "TZ=UTC"}
	data := filepath.Join(dir, "data")
	ictx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	initdb := exec.CommandContext(ictx, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--no-locale", "--no-instructions")
	initdb.Dir, initdb.Env = dir, env
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("initdb: %w\n%s", err, out))
	}
	conf := fmt.Sprintf("\n# idexbench\nlisten_addresses = ''\nunix_socket_directories = '%s'\n", dir)
	f, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fail(fmt.Errorf("open postgresql.conf: %w", err))
	}
	_, werr := f.WriteString(conf)
	if err := errors.Join(werr, f.Close()); err != nil {
		return fail(fmt.Errorf("write postgresql.conf: %w", err))
	}
	logf, err := os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		return fail(fmt.Errorf("server log: %w", err))
	}
	c.cmd = exec.Command(filepath.Join(bin, "postgres"), "-D", data)
	c.cmd.Dir, c.cmd.Env = dir, env
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	// SIGINT is PostgreSQL's fast shutdown: the cluster goes with idexbench.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGINT, Setpgid: true}
	err = launch(c.cmd, c.exited, &c.err)
	if cerr := logf.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("close server log: %w", cerr)
	}
	if err != nil {
		return fail(err)
	}
	if err := c.waitReady(ctx); err != nil {
		return nil, errors.Join(err, c.stop())
	}
	return c, nil
}

func (c *cluster) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-c.exited:
			b, rerr := os.ReadFile(filepath.Join(c.dir, "postgres.log"))
			if rerr != nil {
				b = []byte("(cannot read its log: " + rerr.Error() + ")")
			}
			if c.err == nil {
				return fmt.Errorf("postgres exited at start with status 0: %s", b)
			}
			return fmt.Errorf("postgres exited at start (%w): %s", c.err, b)
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		conn, err := pgx.Connect(cctx, c.url())
		if err == nil {
			err = conn.Close(cctx)
			cancel()
			if err != nil {
				return fmt.Errorf("close readiness probe: %w", err)
			}
			return nil
		}
		cancel()
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("postgres did not accept connections within 30s: %w", last)
}

func (c *cluster) stop() error {
	var errs []error
	if err := c.cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		errs = append(errs, fmt.Errorf("signal postgres: %w", err))
	}
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		errs = append(errs, errors.New("postgres did not stop within 30s; killed"))
		if err := c.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, fmt.Errorf("kill postgres: %w", err))
		}
		<-c.exited
	}
	if err := os.RemoveAll(c.dir); err != nil {
		errs = append(errs, fmt.Errorf("remove cluster directory: %w", err))
	}
	return errors.Join(errs...)
}
