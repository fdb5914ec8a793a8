package pgstore

// These tests run against a real PostgreSQL (package pgtest), never a
// mock: what is tested is what the server does with our statements.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/lock"
	"github.com/idexd/idexd/internal/store"
	"github.com/idexd/idexd/internal/store/storetest"
	"github.com/idexd/idexd/internal/testutil/pgtest"
)

// testTTL is short so that expiry tests take seconds, and long enough
// that a renewal (every ttl/3) delayed by a loaded CI machine still lands
// before its lease expires.
const testTTL = 2 * time.Second

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openStore(t, pgtest.Start(t), "host-a")
	})
}

// logger writes to t.Log until the test ends.
func logger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// openStore opens a store that is closed when the test ends.
func openStore(t testing.TB, url, host string) *Store {
	t.Helper()
	s, err := Open(ctxT(t), url, host, logger(t))
	if err != nil {
		t.Fatalf("open store as %s: %v", host, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close store of %s: %v", host, err)
		}
	})
	return s
}

// observer is a plain connection (no application_name) for looking at
// the database from outside the stores.
func observer(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctxT(t), url)
	if err != nil {
		t.Fatalf("observer connection: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := conn.Close(ctx); err != nil {
			t.Errorf("close observer connection: %v", err)
		}
	})
	return conn
}

func idexdConns(t testing.TB, obs *pgx.Conn) int {
	t.Helper()
	var n int
	if err := obs.QueryRow(ctxT(t), `SELECT count(*) FROM pg_stat_activity
		WHERE application_name = $1 AND datname = current_database()`, ApplicationName).Scan(&n); err != nil {
		t.Fatalf("count idexd connections: %v", err)
	}
	return n
}

func TestMigrationsConcurrentAndRepeatable(t *testing.T) {
	url := pgtest.Start(t)
	const n = 4
	errs := make([]error, n)
	stores := make([]*Store, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { stores[i], errs[i] = Open(ctxT(t), url, fmt.Sprintf("host-%d", i), logger(t)) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("open #%d concurrently: %v", i, errs[i])
		}
		if err := stores[i].Close(); err != nil {
			t.Errorf("close #%d: %v", i, err)
		}
	}
	s := openStore(t, url, "host-again")
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	var count, maxV int
	if err := s.pool.QueryRow(ctxT(t), `SELECT count(*), max(version) FROM schema_migrations`).Scan(&count, &maxV); err != nil {
		t.Fatalf("read schema_migrations: %v", err)
	}
	if count != len(ms) || maxV != len(ms) {
		t.Errorf("schema_migrations: %d rows up to version %d; want %d, each once", count, maxV, len(ms))
	}
	// A database newer than this binary is refused, not used.
	if _, err := s.pool.Exec(ctxT(t), `INSERT INTO schema_migrations (version, name) VALUES ($1, 'future')`, len(ms)+1); err != nil {
		t.Fatal(err)
	}
	if s2, err := Open(ctxT(t), url, "host-old", logger(t)); err == nil {
		s2.Close() //nolint:errcheck // the test already failed; Close only returns nil
		t.Errorf("Open of a database at a newer version succeeded")
	} else if !strings.Contains(err.Error(), "downgrade") {
		t.Errorf("Open of a newer database: %v", err)
	}
}

// twoHosts opens two stores on one database, as two hosts would.
func twoHosts(t *testing.T) (url string, a, b *Store) {
	url = pgtest.Start(t)
	return url, openStore(t, url, "host-a"), openStore(t, url, "host-b")
}

var key = lock.Key{Student: "alice", Script: "lab1/main.py"}

func mustAcquire(t *testing.T, l *Locker, k lock.Key, runID string) *Lease {
	t.Helper()
	le, err := l.Acquire(ctxT(t), k, runID)
	if err != nil {
		t.Fatalf("Acquire(%s) for %s: %v", k, runID, err)
	}
	got, ok := le.(*Lease)
	if !ok {
		t.Fatalf("Acquire returned a %T, want *Lease", le)
	}
	return got
}

func wantLocked(t *testing.T, l *Locker, k lock.Key, runID, holder string) {
	t.Helper()
	le, err := l.Acquire(ctxT(t), k, runID)
	if err == nil {
		if rerr := le.Release(ctxT(t)); rerr != nil {
			t.Error(rerr)
		}
		t.Fatalf("Acquire(%s) for %s succeeded; want locked by %s", k, runID, holder)
	}
	var ae *api.Error
	if !errors.Is(err, api.ErrLocked) || !errors.As(err, &ae) || ae.RunID != holder {
		t.Fatalf("Acquire(%s) for %s = %v; want locked naming run %s", k, runID, err, holder)
	}
}

func TestLockOneWinnerAcrossHosts(t *testing.T) {
	_, a, b := twoHosts(t)
	la, lb := a.Locker(testTTL), b.Locker(testTTL)
	for round := range 20 {
		k := lock.Key{Student: "alice", Script: fmt.Sprintf("race%d.py", round)}
		var wg sync.WaitGroup
		var leases [2]lock.Lease
		var errs [2]error
		for i, l := range []*Locker{la, lb} {
			wg.Go(func() { leases[i], errs[i] = l.Acquire(ctxT(t), k, fmt.Sprintf("run-%d-%d", round, i)) })
		}
		wg.Wait()
		won := -1
		for i := range 2 {
			if errs[i] == nil {
				if won >= 0 {
					t.Fatalf("round %d: both hosts hold %s", round, k)
				}
				won = i
			}
		}
		if won < 0 {
			t.Fatalf("round %d: nobody won: %v / %v", round, errs[0], errs[1])
		}
		lost := 1 - won
		var ae *api.Error
		if !errors.Is(errs[lost], api.ErrLocked) || !errors.As(errs[lost], &ae) || ae.RunID != fmt.Sprintf("run-%d-%d", round, won) {
			t.Fatalf("round %d: loser got %v; want locked naming run-%d-%d", round, errs[lost], round, won)
		}
		if err := leases[won].Release(ctxT(t)); err != nil {
			t.Fatalf("release: %v", err)
		}
	}
	// Released: the other host takes it at once, and only the first
	// Release of a lease counts.
	le := mustAcquire(t, lb, key, "run-b")
	wantLocked(t, la, key, "run-a", "run-b")
	for range 3 {
		if err := le.Release(ctxT(t)); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}
	le2 := mustAcquire(t, la, key, "run-a")
	if le2.Token() <= le.Token() {
		t.Errorf("fencing token did not grow: %d after %d", le2.Token(), le.Token())
	}
	if err := le2.Release(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if acq, rel := lb.Counts(); acq != rel || lb.Held() != 0 {
		t.Errorf("host b counts: acquired %d, released %d, held %d", acq, rel, lb.Held())
	}
}

func TestLeaseRenewedWhileHeld(t *testing.T) {
	_, a, b := twoHosts(t)
	le := mustAcquire(t, a.Locker(testTTL), key, "run-a")
	// Without renewal it would have expired after one ttl.
	deadline := time.Now().Add(testTTL * 5 / 2)
	for time.Now().Before(deadline) {
		wantLocked(t, b.Locker(testTTL), key, "run-b", "run-a")
		time.Sleep(testTTL / 4)
	}
	select {
	case <-le.Lost():
		t.Fatalf("lease reported lost while renewed")
	default:
	}
	if err := le.Release(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// A host killed with -9 stops renewing without releasing: after the ttl
// the other host takes the lock, and the dead holder's late Release (as
// from a process that was only frozen) does not free the new holder's.
func TestDeadHolderExpiresAndStaleReleaseIsFenced(t *testing.T) {
	_, a, b := twoHosts(t)
	la, lb := a.Locker(testTTL), b.Locker(testTTL)
	old := mustAcquire(t, la, key, "run-old")
	old.stopRenewal()
	wantLocked(t, lb, key, "run-new", "run-old")

	le := takeOver(t, lb, key, "run-new")
	if le.Token() <= old.Token() {
		t.Errorf("new token %d not above old %d", le.Token(), old.Token())
	}

	if err := old.Release(ctxT(t)); err != nil {
		t.Fatalf("stale Release: %v", err)
	}
	wantLocked(t, la, key, "run-third", "run-new")
	// The new holder's renewals still match its row: it outlives a ttl.
	time.Sleep(testTTL * 3 / 2)
	wantLocked(t, la, key, "run-third", "run-new")
	select {
	case <-le.Lost():
		t.Fatalf("new holder's lease lost")
	default:
	}
	if err := le.Release(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := mustAcquire(t, la, key, "run-fourth").Release(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// takeOver acquires k, which a vanished holder left, as soon as its lease
// expires; it fails if that takes much longer than the ttl.
func takeOver(t *testing.T, l *Locker, k lock.Key, runID string) *Lease {
	t.Helper()
	start := time.Now()
	for {
		got, err := l.Acquire(ctxT(t), k, runID)
		if err == nil {
			le, ok := got.(*Lease)
			if !ok {
				t.Fatalf("Acquire returned a %T, want *Lease", got)
			}
			t.Logf("taken over %s after the holder vanished (ttl %s)", time.Since(start).Round(time.Millisecond), l.ttl)
			return le
		}
		if !errors.Is(err, api.ErrLocked) {
			t.Fatalf("Acquire: %v", err)
		}
		if time.Since(start) > 3*l.ttl {
			t.Fatalf("lock of a vanished holder still held after %s (ttl %s)", time.Since(start), l.ttl)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Closing a store without releasing is the other way a host vanishes:
// the pool is gone, renewals stop, the lease expires.
func TestClosedHostLeaseExpires(t *testing.T) {
	url, _, b := twoHosts(t)
	a, err := Open(ctxT(t), url, "host-dying", logger(t))
	if err != nil {
		t.Fatal(err)
	}
	mustAcquire(t, a.Locker(testTTL), key, "run-dying")
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	lb := b.Locker(testTTL)
	wantLocked(t, lb, key, "run-b", "run-dying")
	if err := takeOver(t, lb, key, "run-b").Release(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// A restarted daemon frees its previous instance's leases at once.
func TestReleaseHost(t *testing.T) {
	url, a, b := twoHosts(t)
	la := a.Locker(time.Hour)
	k2 := lock.Key{Student: "bob", Script: "x.py"}
	mustAcquire(t, la, key, "run-1").stopRenewal()
	mustAcquire(t, la, k2, "run-2").stopRenewal()
	other := mustAcquire(t, b.Locker(time.Hour), lock.Key{Student: "carol", Script: "y.py"}, "run-3")

	restarted := openStore(t, url, "host-a").Locker(time.Hour)
	n, err := restarted.ReleaseHost(ctxT(t), "host-a")
	if err != nil || n != 2 {
		t.Fatalf("ReleaseHost(host-a) = %d, %v; want 2", n, err)
	}
	lb := b.Locker(time.Hour)
	for _, k := range []lock.Key{key, k2} {
		if err := mustAcquire(t, lb, k, "run-b-"+k.Student).Release(ctxT(t)); err != nil {
			t.Fatal(err)
		}
	}
	wantLocked(t, restarted, lock.Key{Student: "carol", Script: "y.py"}, "run-4", "run-3")
	if err := other.Release(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// A holder that finds its lease taken over says so instead of renewing
// someone else's lock.
func TestLeaseLostIsReported(t *testing.T) {
	url, a, _ := twoHosts(t)
	le := mustAcquire(t, a.Locker(testTTL), key, "run-a")
	obs := observer(t, url)
	// What a takeover after an expiry looks like from the holder's side.
	if _, err := obs.Exec(ctxT(t), `UPDATE leases SET run_id = 'run-thief', token = nextval('lease_tokens'), host = 'host-c'`); err != nil {
		t.Fatal(err)
	}
	select {
	case <-le.Lost():
	case <-time.After(2 * testTTL):
		t.Fatalf("lost lease not reported within %s", 2*testTTL)
	}
	if err := le.Release(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	var holder string
	if err := obs.QueryRow(ctxT(t), `SELECT run_id FROM leases`).Scan(&holder); err != nil || holder != "run-thief" {
		t.Errorf("after the loser's Release the lease is %q, %v; want run-thief's", holder, err)
	}
}

func TestUIDsUniqueAcrossHosts(t *testing.T) {
	_, a, b := twoHosts(t)
	const per, lo, hi = 50, 70000, 79999
	type res struct {
		st  store.Student
		err error
	}
	out := make([]res, 2*per)
	var wg sync.WaitGroup
	for h, s := range []*Store{a, b} {
		for i := range per {
			idx := h*per + i
			wg.Go(func() {
				st, _, err := s.EnsureStudent(ctxT(t), fmt.Sprintf("st%03d", idx), lo, hi)
				out[idx] = res{st, err}
			})
		}
	}
	wg.Wait()
	seen := map[uint32]string{}
	for i, r := range out {
		if r.err != nil {
			t.Fatalf("EnsureStudent #%d: %v", i, r.err)
		}
		if r.st.UID < lo || r.st.UID > hi {
			t.Errorf("%s: uid %d outside range", r.st.Name, r.st.UID)
		}
		if o, dup := seen[r.st.UID]; dup {
			t.Errorf("uid %d given to %s and %s", r.st.UID, o, r.st.Name)
		}
		seen[r.st.UID] = r.st.Name
		// Each host sees what the other allocated.
		other := []*Store{b, a}[i/per]
		got, err := other.GetStudent(ctxT(t), r.st.Name)
		if err != nil || got != r.st {
			t.Errorf("other host's GetStudent(%s) = %+v, %v; want %+v", r.st.Name, got, err, r.st)
		}
	}
	// Both hosts asking for the same new students agree on one uid each.
	var same [2][per]store.Student
	for h, s := range []*Store{a, b} {
		for i := range per {
			wg.Go(func() {
				st, _, err := s.EnsureStudent(ctxT(t), fmt.Sprintf("both%03d", i), lo, hi)
				if err != nil {
					t.Errorf("EnsureStudent(both%03d) on host %d: %v", i, h, err)
				}
				same[h][i] = st
			})
		}
	}
	wg.Wait()
	for i := range per {
		if same[0][i] != same[1][i] {
			t.Errorf("hosts disagree on both%03d: %+v vs %+v", i, same[0][i], same[1][i])
		}
		if o, dup := seen[same[0][i].UID]; dup {
			t.Errorf("uid %d given to %s and %s", same[0][i].UID, o, same[0][i].Name)
		}
		seen[same[0][i].UID] = same[0][i].Name
	}
}

func TestCloseLeavesNoConnections(t *testing.T) {
	url := pgtest.Start(t)
	obs := observer(t, url)
	var stores []*Store
	for i := range 3 {
		s, err := Open(ctxT(t), url, fmt.Sprintf("host-%d", i), logger(t))
		if err != nil {
			t.Fatal(err)
		}
		stores = append(stores, s)
		// Busy enough to open several connections, and hold a lease
		// through Close (its renewal must stop too).
		var wg sync.WaitGroup
		for j := range 8 {
			wg.Go(func() {
				if _, _, err := s.EnsureStudent(ctxT(t), fmt.Sprintf("s%d-%d", i, j), 60000, 69999); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		mustAcquire(t, s.Locker(testTTL), lock.Key{Student: "s", Script: fmt.Sprint(i)}, fmt.Sprint("run-", i))
	}
	if n := idexdConns(t, obs); n < 3 {
		t.Fatalf("%d idexd connections while open; want at least 3 (is application_name set?)", n)
	}
	for _, s := range stores {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
	// A backend exits just after its client says goodbye: allow a moment.
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := idexdConns(t, obs)
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d idexd connections remain after every Store was closed", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// within runs f and fails the test if it takes longer than limit.
func within(t *testing.T, what string, limit time.Duration, f func() error) error {
	t.Helper()
	start := time.Now()
	err := f()
	if d := time.Since(start); d > limit {
		t.Errorf("%s took %s; want an answer within %s", what, d.Round(time.Millisecond), limit)
	}
	return err
}

// everyOperation calls each store operation once with a context that has
// no deadline: the store's own timeout must bound it.
func everyOperation(t *testing.T, s *Store, le *Lease, limit time.Duration) {
	t.Helper()
	bg := context.Background()
	run := &api.Run{ID: "r-down", Host: "h", Student: "alice", Script: "a.py", Mode: api.ModeScript, State: api.StateEnded, StartedAt: time.Now()}
	ops := []struct {
		name string
		f    func() error
	}{
		{"Ping", func() error { return s.Ping(bg) }},
		{"EnsureStudent", func() error { _, _, err := s.EnsureStudent(bg, "zed", 60000, 69999); return err }},
		{"GetStudent", func() error { _, err := s.GetStudent(bg, "alice"); return err }},
		{"PutStudent", func() error { return s.PutStudent(bg, store.Student{Name: "p", UID: 1, GID: 1}) }},
		{"ListStudents", func() error { _, err := s.ListStudents(bg); return err }},
		{"RecordStart", func() error { return s.RecordStart(bg, run) }},
		{"RecordEnd", func() error { return s.RecordEnd(bg, run) }},
		{"GetRun", func() error { _, err := s.GetRun(bg, "r-down"); return err }},
		{"ListRuns", func() error { _, err := s.ListRuns(bg, store.RunFilter{}); return err }},
		{"Acquire", func() error {
			_, err := s.Locker(testTTL).Acquire(bg, lock.Key{Student: "x", Script: "y"}, "r2")
			return err
		}},
		{"ReleaseHost", func() error { _, err := s.Locker(testTTL).ReleaseHost(bg, "h"); return err }},
		{"Release", func() error { return le.Release(bg) }},
	}
	for _, op := range ops {
		err := within(t, op.name, limit, op.f)
		if err == nil {
			t.Errorf("%s succeeded with the database unreachable", op.name)
			continue
		}
		if errors.Is(err, api.ErrNotFound) || errors.Is(err, api.ErrStudentNotFound) || errors.Is(err, api.ErrLocked) {
			t.Errorf("%s: %v; a database failure must not read as an answer", op.name, err)
		}
		t.Logf("%s: %v", op.name, err)
	}
}

func TestDatabaseStoppedFailsFast(t *testing.T) {
	c := pgtest.NewCluster(t)
	s := openStore(t, c.URL("postgres"), "host-a")
	s.timeout = 2 * time.Second
	if _, _, err := s.EnsureStudent(ctxT(t), "alice", 60000, 69999); err != nil {
		t.Fatal(err)
	}
	le := mustAcquire(t, s.Locker(testTTL), key, "run-a")
	if err := c.Stop(); err != nil {
		t.Fatalf("stop cluster: %v", err)
	}
	everyOperation(t, s, le, 3*time.Second)
	if err := within(t, "Close", 3*time.Second, s.Close); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// A server that stops answering (a frozen host, a network cut) is worse
// than one that is gone: nothing fails, everything waits. The store's
// timeout must turn that into errors.
func TestDatabaseHungTimesOut(t *testing.T) {
	c := pgtest.NewCluster(t)
	s := openStore(t, c.URL("postgres"), "host-a")
	s.timeout = 500 * time.Millisecond
	var wg sync.WaitGroup
	for i := range 4 { // several pooled connections to the soon frozen server
		wg.Go(func() {
			if _, _, err := s.EnsureStudent(ctxT(t), fmt.Sprint("s", i), 60000, 69999); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	le := mustAcquire(t, s.Locker(testTTL), key, "run-a")
	pids, err := c.Pids()
	if err != nil {
		t.Fatal(err)
	}
	signalAll := func(sig syscall.Signal) {
		for _, pid := range pids {
			if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
				t.Errorf("signal %d to postgres pid %d: %v", sig, pid, err)
			}
		}
	}
	signalAll(syscall.SIGSTOP)
	// Registered after NewCluster's cleanup, so it runs first: the
	// cluster is thawed before it is stopped.
	t.Cleanup(func() { signalAll(syscall.SIGCONT) })
	everyOperation(t, s, le, 2*time.Second)
	// pgx lets timed-out connections try to cancel for up to 15 s; Close
	// waits for them only closeWait, then says so.
	if err := within(t, "Close", closeWait+2*time.Second, s.Close); err != nil {
		t.Logf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// Open must give up on a server that accepts and never answers, and must
// never reveal the password of the URL, in its error or in the log.
func TestOpenUnreachable(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, ".s.PGSQL.5432"))
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close() //nolint:errcheck // test teardown
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close() //nolint:errcheck // test teardown
		}
	})

	const secret = "s3cr3t-pw"
	var logBuf bytes.Buffer
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logBuf}, nil))
	urls := map[string]string{
		"silent server":                fmt.Sprintf("postgres://idexd:%s@/idexd?host=%s&sslmode=disable", secret, dir),
		"no server":                    fmt.Sprintf("host=%s/nonexistent user=idexd password=%s dbname=idexd sslmode=disable", dir, secret),
		"malformed url":                fmt.Sprintf("postgres://idexd:%s@host:notaport/db", secret),
		"malformed kv":                 fmt.Sprintf("host=x password=%s port=abc", secret),
		"silent server, keyword/value": fmt.Sprintf("host=%s user=idexd password=%s dbname=idexd sslmode=disable", dir, secret),
	}
	for name, u := range urls {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := within(t, "Open ("+name+")", 4*time.Second, func() error {
			s, err := Open(ctx, u, "host-a", log)
			if err == nil {
				s.Close() //nolint:errcheck // the test already failed; Close only returns nil
				return errors.New("Open succeeded")
			}
			return err
		})
		cancel()
		t.Logf("%s: %v", name, err)
		if strings.Contains(err.Error(), secret) {
			t.Errorf("%s: the error shows the password: %v", name, err)
		}
	}
	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logBuf.String(), secret) {
		t.Errorf("the log shows the password:\n%s", logBuf.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.w.Write(p)
	if err != nil {
		return n, fmt.Errorf("log buffer: %w", err)
	}
	return n, nil
}

// The URL of a database that accepted us once is not logged either.
func TestOpenDoesNotLogURL(t *testing.T) {
	url := pgtest.Start(t)
	var buf bytes.Buffer
	var mu sync.Mutex
	s, err := Open(ctxT(t), url, "host-a", slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Contains(buf.String(), url) {
		t.Errorf("the log shows the URL:\n%s", buf.String())
	}
	if !strings.Contains(buf.String(), "postgres store open") {
		t.Errorf("no open message in the log:\n%s", buf.String())
	}
}
