package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/testutil"
	"github.com/idexd/idexd/internal/testutil/pgtest"
)

// pgQuery runs one query as a connection that is not idexd's.
func pgQuery(t *testing.T, url, q string, args ...any) pgx.Row {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	conn, err := pgx.Connect(ctx, url+" application_name=e2e-check")
	if err != nil {
		t.Fatalf("connect to PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		if err := conn.Close(context.Background()); err != nil {
			t.Errorf("close check connection: %v", err)
		}
	})
	return conn.QueryRow(ctx, q, args...)
}

func idexdConnections(t *testing.T, url string) int {
	var n int
	if err := pgQuery(t, url, `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'idexd'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// startStreaming starts `idexctl run` and waits for the script's first line.
func startStreaming(t *testing.T, d *daemon, student, script string) {
	t.Helper()
	// Far above the time any of these tests takes, so that only what the
	// test does ends the run.
	cmd := d.ctlCmd("run", "--student", student, "--timeout", "5m", script)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "up\n" {
		t.Fatalf("first line %q %v", line, err)
	}
	t.Cleanup(func() { _ = cmd.Wait() }) // ends with its run or its daemon
}

// TestTwoHostsOnePostgres: two idexd (two sockets, one PostgreSQL, one
// students' root as on EFS) share uids and execution locks; a host killed
// with -9 loses its lease after lease_ttl; shutdown leaves no connection.
func TestTwoHostsOnePostgres(t *testing.T) {
	testutil.RequireRoot(t)
	pg := pgtest.NewCluster(t)
	url := pg.URL("postgres")
	shared := filepath.Join(testutil.TraversableDir(t), "students")
	extra := fmt.Sprintf("database_url = %q\nlease_ttl = \"2s\"\n", url)
	a := newDaemonWith(t, daemonOpts{host: "host-a", extra: extra, students: shared})
	b := newDaemonWith(t, daemonOpts{host: "host-b", extra: extra, students: shared})

	// uids allocated from both hosts at once never collide, and a name
	// gets one uid whichever host asks.
	uids := map[string]map[string]string{} // name -> host -> uid
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range 20 {
		for _, d := range []*daemon{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				name := fmt.Sprintf("s%02d", i)
				out, code := d.ctl("--json", "student", name)
				var st api.Student
				if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
					t.Errorf("student %s: %d %s", name, code, out)
					return
				}
				mu.Lock()
				if uids[name] == nil {
					uids[name] = map[string]string{}
				}
				uids[name][d.sock] = fmt.Sprint(st.UID)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	owner := map[string]string{}
	for name, byHost := range uids {
		if byHost[a.sock] != byHost[b.sock] {
			t.Errorf("%s has uid %s on host a and %s on host b", name, byHost[a.sock], byHost[b.sock])
		}
		if other, dup := owner[byHost[a.sock]]; dup {
			t.Errorf("uid %s given to %s and %s", byHost[a.sock], other, name)
		}
		owner[byHost[a.sock]] = name
	}

	a.writeScript("carol", "loop.py", "import time\nprint('up', flush=True)\ntime.sleep(300)\n")
	startStreaming(t, a, "carol", "loop.py")
	held := a.runs()
	if len(held) != 1 {
		t.Fatalf("host a runs %+v", held)
	}
	out, code := b.ctl("run", "--student", "carol", "loop.py")
	if code != 1 || !strings.Contains(out, "(locked, run "+held[0].ID+")") {
		t.Fatalf("host b while a runs it: %d %q, want locked naming %s", code, out, held[0].ID)
	}
	if err := a.stop(syscall.SIGKILL); err == nil {
		t.Fatal("host a survived SIGKILL")
	}
	killed := time.Now()
	// The lease outlives its host by lease_ttl (2s), then b may run it.
	b.writeScript("carol", "loop.py", "print('b ran it')\n")
	for {
		out, code = b.ctl("run", "--student", "carol", "loop.py")
		if code == 0 {
			break
		}
		if !strings.Contains(out, "(locked") || time.Since(killed) > 30*time.Second {
			t.Fatalf("host b after a died: %d %q", code, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out != "b ran it\n" {
		t.Fatalf("host b printed %q", out)
	}
	t.Logf("host b took the lock %v after host a was killed (lease_ttl 2s)", time.Since(killed).Round(100*time.Millisecond))
	// a's restart ends its lost run in the shared history.
	a.start()
	var state, reason string
	if err := pgQuery(t, url, `SELECT state, reason FROM runs WHERE id = $1`, held[0].ID).Scan(&state, &reason); err != nil {
		t.Fatal(err)
	}
	if state != "ended" || reason != "lost" {
		t.Fatalf("host a's killed run is %s/%s in PostgreSQL, want ended/lost", state, reason)
	}
	for _, d := range []*daemon{a, b} {
		if err := d.stop(syscall.SIGTERM); err != nil {
			t.Fatalf("exit after SIGTERM: %v; logs:\n%s", err, d.logs())
		}
	}
	if n := idexdConnections(t, url); n != 0 {
		t.Fatalf("%d idexd connections left after both hosts stopped", n)
	}
}

// TestPostgresOutage: PostgreSQL stops while runs run and comes back: the
// runs go on, new ones are refused with store_unavailable meanwhile, and
// afterwards every run has its complete record.
func TestPostgresOutage(t *testing.T) {
	testutil.RequireRoot(t)
	pg := pgtest.NewCluster(t)
	url := pg.URL("postgres")
	d := newDaemonWith(t, daemonOpts{extra: fmt.Sprintf("database_url = %q\nlease_ttl = \"2s\"\n", url)})
	d.writeScript("dave", "quick.py", "print('quick')\n")
	var ids []string
	for i := range 5 {
		name := fmt.Sprintf("slow%d.py", i)
		d.writeScript("dave", name, "import time\nprint('up', flush=True)\ntime.sleep(3)\nprint('done')\n")
		startStreaming(t, d, "dave", name)
	}
	for _, r := range d.runs() {
		ids = append(ids, r.ID)
	}
	if err := pg.Halt(); err != nil {
		t.Fatal(err)
	}
	if out, code := d.ctl("run", "--student", "dave", "quick.py"); code != 1 || !strings.Contains(out, "store_unavailable") {
		t.Fatalf("run while PostgreSQL is down: %d %q", code, out)
	}
	// The slow runs end while it is down; their ends wait in the queue.
	deadline := time.Now().Add(30 * time.Second)
	for len(d.runs()) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if out, code := d.ctl("health"); code != 1 || !strings.Contains(out, "FAIL") {
		t.Fatalf("health while PostgreSQL is down: %d %q", code, out)
	}
	if err := pg.Resume(); err != nil {
		t.Fatal(err)
	}
	for {
		if _, code := d.ctl("health"); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health not ok after PostgreSQL came back; logs:\n%s", d.logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, id := range ids {
		var state, reason string
		var exit *int
		if err := pgQuery(t, url, `SELECT state, reason, exit_code FROM runs WHERE id = $1`, id).Scan(&state, &reason, &exit); err != nil {
			t.Fatalf("run %s: %v", id, err)
		}
		if state != "ended" || reason != "exited" || exit == nil || *exit != 0 {
			t.Errorf("run %s is %s/%s exit %v in PostgreSQL, want ended/exited 0", id, state, reason, exit)
		}
	}
	if out, code := d.ctl("run", "--student", "dave", "quick.py"); code != 0 || out != "quick\n" {
		t.Fatalf("run after PostgreSQL came back: %d %q", code, out)
	}
}

// TestPostgresUnreachableAtStart: idexd starts anyway, degraded, refusing
// runs with store_unavailable, and serves once PostgreSQL answers.
func TestPostgresUnreachableAtStart(t *testing.T) {
	testutil.RequireRoot(t)
	pg := pgtest.NewCluster(t)
	url := pg.URL("postgres")
	if err := pg.Halt(); err != nil {
		t.Fatal(err)
	}
	d := newDaemonWith(t, daemonOpts{extra: fmt.Sprintf("database_url = %q\n", url), degraded: true})
	if out, code := d.ctl("health"); code != 1 || !strings.Contains(out, "check store FAIL") {
		t.Fatalf("health with PostgreSQL down: %d %q", code, out)
	}
	if out, code := d.ctl("student", "erin"); code != 1 || !strings.Contains(out, "store_unavailable") {
		t.Fatalf("student with PostgreSQL down: %d %q", code, out)
	}
	if err := pg.Resume(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, code := d.ctl("health"); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health not ok 60s after PostgreSQL came up; logs:\n%s", d.logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
	d.writeScript("erin", "hi.py", "print('hi')\n")
	if out, code := d.ctl("run", "--student", "erin", "hi.py"); code != 0 || out != "hi\n" {
		t.Fatalf("run once PostgreSQL answers: %d %q", code, out)
	}
	if err := d.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	if n := idexdConnections(t, url); n != 0 {
		t.Fatalf("%d idexd connections left after SIGTERM", n)
	}
}

// pgProxy stands between one daemon and PostgreSQL's socket, so that a
// test can cut that daemon off the database (a network partition) while
// another daemon still reaches it.
type pgProxy struct {
	t      *testing.T
	dir    string
	target string
	ln     net.Listener

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]bool
}

func newPGProxy(t *testing.T, clusterDir string) *pgProxy {
	t.Helper()
	// /tmp keeps the socket path under the 107-byte limit.
	dir, err := os.MkdirTemp("/tmp", "pgproxy-")
	if err != nil {
		t.Fatal(err)
	}
	const sock = ".s.PGSQL.5432"
	ln, err := net.Listen("unix", filepath.Join(dir, sock))
	if err != nil {
		t.Fatal(err)
	}
	p := &pgProxy{t: t, dir: dir, target: filepath.Join(clusterDir, sock), ln: ln, conns: map[net.Conn]bool{}}
	go p.serve()
	t.Cleanup(func() {
		if err := ln.Close(); err != nil {
			t.Error(err)
		}
		p.Cut()
		if err := os.RemoveAll(dir); err != nil {
			t.Error(err)
		}
	})
	return p
}

// URL is the database's URL through the proxy.
func (p *pgProxy) URL() string {
	return fmt.Sprintf("host=%s user=postgres dbname=postgres sslmode=disable", p.dir)
}

func (p *pgProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed at the test's end
		}
		p.mu.Lock()
		cut := p.cut
		p.mu.Unlock()
		if cut {
			_ = c.Close() // refused: the partition
			continue
		}
		up, err := net.Dial("unix", p.target)
		if err != nil {
			_ = c.Close() // the database is down: so is the way to it
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		go func() { _, _ = io.Copy(up, c); _ = up.Close() }()
		go func() { _, _ = io.Copy(c, up); _ = c.Close() }()
	}
}

// Cut closes every connection through the proxy and refuses new ones.
func (p *pgProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		_ = c.Close() // gone either way
	}
	clear(p.conns)
}

// Restore lets connections through again.
func (p *pgProxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// TestLostLeaseStopsTheRun: host a is cut off the database while it runs
// a script; its lease expires and host b runs the same script. When a
// reaches the database again it finds its lock taken and stops its run
// with reason lock_lost, recorded in the shared history.
func TestLostLeaseStopsTheRun(t *testing.T) {
	testutil.RequireRoot(t)
	pg := pgtest.NewCluster(t)
	proxy := newPGProxy(t, pg.Dir())
	shared := filepath.Join(testutil.TraversableDir(t), "students")
	ttl := "lease_ttl = \"2s\"\n"
	a := newDaemonWith(t, daemonOpts{host: "host-a", extra: fmt.Sprintf("database_url = %q\n%s", proxy.URL(), ttl), students: shared})
	b := newDaemonWith(t, daemonOpts{host: "host-b", extra: fmt.Sprintf("database_url = %q\n%s", pg.URL("postgres"), ttl), students: shared})
	a.writeScript("carol", "loop.py", "import time\nprint('up', flush=True)\ntime.sleep(300)\n")
	startStreaming(t, a, "carol", "loop.py")
	held := a.runs()
	if len(held) != 1 {
		t.Fatalf("host a runs %+v", held)
	}
	proxy.Cut()
	cut := time.Now()
	b.writeScript("carol", "loop.py", "print('b ran it')\n")
	for {
		out, code := b.ctl("run", "--student", "carol", "loop.py")
		if code == 0 && out == "b ran it\n" {
			break
		}
		if !strings.Contains(out, "(locked") || time.Since(cut) > 60*time.Second {
			t.Fatalf("host b while a is cut off: %d %q", code, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("host b ran the script %v after host a was cut off (lease_ttl 2s)", time.Since(cut).Round(100*time.Millisecond))
	// a's run goes on while a cannot tell; once a reaches the database it
	// learns, and stops the run.
	if r := a.runs(); len(r) != 1 || r[0].ID != held[0].ID {
		t.Fatalf("host a's run while cut off: %+v", r)
	}
	proxy.Restore()
	var r api.Run
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, code := a.ctl("--json", "show", held[0].ID)
		if code == 0 && json.Unmarshal([]byte(out), &r) == nil && r.State == api.StateEnded {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host a's run did not end after a reached the database again: %d %s; logs:\n%s", code, out, a.logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if r.Reason != api.ReasonLockLost || !strings.Contains(r.Error, "taken over by another run") {
		t.Fatalf("host a's run ended %s (%q), want lock_lost saying why", r.Reason, r.Error)
	}
	// The shared history says so too, once a's queued end is written.
	for {
		var state, reason string
		err := pgQuery(t, pg.URL("postgres"), `SELECT state, reason FROM runs WHERE id = $1`, held[0].ID).Scan(&state, &reason)
		if err == nil && state == "ended" && reason == string(api.ReasonLockLost) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host a's run in PostgreSQL: %s/%s %v, want ended/lock_lost", state, reason, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
