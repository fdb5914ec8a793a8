// Package pgstore is the PostgreSQL store. It exists so that several idexd
// hosts can share what SQLite keeps per host: one run history, one uid
// allocation (a uid is never given to two students, whichever host asks),
// and execution locks as leases with expiry, so that a host that dies
// without releasing its locks does not hold them forever.
//
// It implements store.Store with the same semantics as the SQLite store
// (both pass package storetest), and lock.Locker through (*Store).Locker.
package pgstore

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/store"
)

// ApplicationName is what idexd's connections show in pg_stat_activity,
// so that an operator (and the tests) can tell them apart.
const ApplicationName = "idexd"

// DefaultTimeout bounds every operation whose context has no earlier
// deadline: a database that stopped answering must turn into an error the
// daemon can report, never into a request that hangs.
const DefaultTimeout = 10 * time.Second

// connectTimeout bounds one connection attempt when the URL sets none.
const connectTimeout = 5 * time.Second

// migrateLockKey is the pg_advisory_xact_lock key taken while migrating,
// so two daemons starting at once apply each migration exactly once. It is
// "idexd" in ASCII, to be recognisable in pg_locks.
const migrateLockKey int64 = 0x6964657864

//go:embed migrations/*.sql
var migrationFS embed.FS

// Store is the PostgreSQL store.
type Store struct {
	pool    *pgxpool.Pool
	host    string
	log     *slog.Logger
	timeout time.Duration

	// bg is cancelled by Close; lease renewals run under it, and wg
	// waits for them, so that none outlives the pool. closed (under mu)
	// keeps a renewal from starting once Close is waiting.
	bg     context.Context
	stopBG context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	closed bool

	closeOnce sync.Once
}

// track registers a background goroutine with wg; false once Close began.
func (s *Store) track() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

var _ store.Store = (*Store)(nil)

// DefaultRequireAuth is the require_auth of a database_url that names
// none: every method but the two that hand the server the password.
const DefaultRequireAuth = "!password,!md5"

// Open connects to the database at url, applies the embedded migrations
// and returns the store. host names this daemon in the leases it takes.
// The URL is never logged nor put in an error: it may hold a password.
func Open(ctx context.Context, url string, host string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if host == "" {
		return nil, errors.New("open postgres store: host name is empty (it identifies this daemon's leases)")
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// The parse error quotes the connection string, whose password
		// pgx masks only on a best-effort basis, so it is not passed on.
		return nil, errors.New("open postgres store: database_url is not a valid PostgreSQL connection string (not shown: it may hold a password)")
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = ApplicationName
	if cfg.ConnConfig.RequireAuth == "" {
		// A server that asks for the password in clear text or as MD5 gets
		// none: on a host where students' programs run, a program could
		// squat the database's port while it restarts and ask. SCRAM never
		// shows the password to the server. A URL that names require_auth
		// (libpq's syntax) decides for itself.
		cfg.ConnConfig.RequireAuth = DefaultRequireAuth
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = connectTimeout
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres store: %w", err)
	}
	bg, stop := context.WithCancel(context.Background())
	s := &Store{pool: pool, host: host, log: log, timeout: DefaultTimeout, bg: bg, stopBG: stop}
	if err := s.migrate(ctx); err != nil {
		return nil, errors.Join(
			fmt.Errorf("open postgres store (database %q on %s): %w", cfg.ConnConfig.Database, cfg.ConnConfig.Host, err),
			s.Close())
	}
	log.Info("postgres store open", "database", cfg.ConnConfig.Database, "db_host", cfg.ConnConfig.Host, "host", host)
	return s, nil
}

type migration struct {
	version int
	name    string
	sql     string
}

// migrations reads the embedded files NNNN_what.sql, in version order,
// and insists on versions 1..n without gaps, so that a misnamed file
// fails every test instead of being skipped in production.
func migrations() ([]migration, error) {
	files, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	var out []migration
	for _, f := range files {
		base := path.Base(f)
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must be NNNN_what.sql", base)
		}
		b, err := migrationFS.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", base, err)
		}
		out = append(out, migration{version: v, name: base, sql: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: expected version %d", m.name, i+1)
		}
	}
	return out, nil
}

// migrate applies what is missing in one transaction that holds an
// advisory lock: a second daemon starting at the same moment waits, then
// finds everything applied.
func (s *Store) migrate(ctx context.Context) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	ctx, cancel := s.op(ctx)
	defer cancel()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("migrate: begin: %w", err)
	}
	defer s.rollback(tx)
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrateLockKey); err != nil {
		return fmt.Errorf("migrate: take advisory lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version integer PRIMARY KEY,
		name text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("migrate: create schema_migrations: %w", err)
	}
	var have int
	if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
		return fmt.Errorf("migrate: read version: %w", err)
	}
	if have > len(ms) {
		return fmt.Errorf("migrate: database is at version %d, this idexd knows only %d (downgrade?)", have, len(ms))
	}
	for _, m := range ms[have:] {
		// No arguments: pgx sends it with the simple protocol, which
		// accepts several statements in one string.
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return fmt.Errorf("migrate to version %d (%s): %w", m.version, m.name, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.version, m.name); err != nil {
			return fmt.Errorf("migrate: record version %d: %w", m.version, err)
		}
		s.log.Info("postgres migration applied", "version", m.version, "name", m.name)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("migrate: commit: %w", err)
	}
	return nil
}

// op bounds ctx by the store's timeout unless it already ends sooner.
func (s *Store) op(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

// fail adds what was being done to err. (The store_errors metric counts
// failed writes, in store.Queued, for both stores.)
func (s *Store) fail(err error, format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, err)...)
}

// rollback ends a transaction that was not committed. After a Commit it is
// a no-op (pgx.ErrTxClosed); any other failure means the connection is
// broken, and pgx discards it from the pool, so logging is all that is left.
func (s *Store) rollback(tx pgx.Tx) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	if err := tx.Rollback(ctx); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
		s.log.Warn("postgres rollback failed", "err", err)
	}
}

// Kind implements store.Store.
func (s *Store) Kind() string { return "postgres" }

// closeWait bounds how long Close waits for the pool. pgx gives each
// connection whose query timed out up to 15 s to deliver a cancel request,
// and the pool waits for them: against a database that stopped answering,
// an unbounded Close would hold up the daemon's shutdown.
const closeWait = 5 * time.Second

// Close stops lease renewals (the leases still held then expire) and
// closes the pool, waiting until every connection is closed, or at most
// closeWait: past that it returns an error and the connections finish
// closing in the background. Only the first call does anything (and
// reports), so every shutdown path may call it.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.stopBG()
		s.wg.Wait()
		done := make(chan struct{})
		go func() {
			s.pool.Close()
			close(done)
		}()
		t := time.NewTimer(closeWait)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			err = fmt.Errorf("close postgres store: connections still closing after %s (the database does not answer); left to finish in the background", closeWait)
		}
	})
	return err
}

// Ping implements store.Store.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := s.op(ctx)
	defer cancel()
	if err := s.pool.Ping(ctx); err != nil {
		return s.fail(err, "ping postgres")
	}
	return nil
}

// EnsureStudent implements store.Store.
func (s *Store) EnsureStudent(ctx context.Context, name string, lo, hi uint32) (store.Student, bool, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	st, err := s.getStudent(ctx, name)
	if err == nil || !errors.Is(err, pgx.ErrNoRows) {
		return st, false, err
	}
	// Two tries: the first can lose a race with another host allocating
	// for the same name, and then the second finds that student.
	for range 2 {
		st, inserted, err := s.allocate(ctx, name, lo, hi)
		if err != nil || inserted {
			return st, inserted, err
		}
		st, err = s.getStudent(ctx, name)
		if err == nil || !errors.Is(err, pgx.ErrNoRows) {
			return st, false, err
		}
	}
	return store.Student{}, false, s.fail(errors.New("student was created and removed concurrently"), "ensure student %s", name)
}

// allocate gives name the next uid in one transaction. The counter row is
// locked (SELECT ... FOR UPDATE) until commit, which serialises every
// allocation on every host; it only grows, so a uid is never handed out
// twice, even after its student is gone, and raising lo skips ahead.
// inserted is false when another transaction created name first; then
// this one rolls back and leaves the counter as it was.
func (s *Store) allocate(ctx context.Context, name string, lo, hi uint32) (st store.Student, inserted bool, err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return store.Student{}, false, s.fail(err, "ensure student %s: begin", name)
	}
	defer s.rollback(tx)
	var next int64
	if err := tx.QueryRow(ctx, `SELECT value FROM counters WHERE name = 'uid_next' FOR UPDATE`).Scan(&next); err != nil {
		return store.Student{}, false, s.fail(err, "ensure student %s: read uid counter", name)
	}
	next = max(next, int64(lo))
	if next > int64(hi) {
		return store.Student{}, false, fmt.Errorf("ensure student %s: %w (%d-%d)", name, store.ErrUIDRangeExhausted, lo, hi)
	}
	st = store.Student{Name: name, UID: uint32(next), GID: uint32(next)}
	// ON CONFLICT waits for a concurrent insert of the same name to
	// commit, then returns no row instead of failing.
	err = tx.QueryRow(ctx, `INSERT INTO students (name, uid, gid) VALUES ($1, $2, $3)
		ON CONFLICT (name) DO NOTHING RETURNING uid`, name, st.UID, st.GID).Scan(&st.UID)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Student{}, false, nil
	}
	if err != nil {
		return store.Student{}, false, s.fail(err, "ensure student %s: insert", name)
	}
	if _, err := tx.Exec(ctx, `UPDATE counters SET value = $1 WHERE name = 'uid_next'`, next+1); err != nil {
		return store.Student{}, false, s.fail(err, "ensure student %s: bump uid counter", name)
	}
	if err := tx.Commit(ctx); err != nil {
		return store.Student{}, false, s.fail(err, "ensure student %s: commit", name)
	}
	return st, true, nil
}

// getStudent returns pgx.ErrNoRows unwrapped for an unknown student.
func (s *Store) getStudent(ctx context.Context, name string) (store.Student, error) {
	st := store.Student{Name: name}
	err := s.pool.QueryRow(ctx, `SELECT uid, gid FROM students WHERE name = $1`, name).Scan(&st.UID, &st.GID)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Student{}, err
	}
	if err != nil {
		return store.Student{}, s.fail(err, "get student %s", name)
	}
	return st, nil
}

// GetStudent implements store.Store.
func (s *Store) GetStudent(ctx context.Context, name string) (store.Student, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	st, err := s.getStudent(ctx, name)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Student{}, api.Errorf(api.CodeStudentNotFound, "student %s is not known", name)
	}
	return st, err
}

// PutStudent implements store.Store.
func (s *Store) PutStudent(ctx context.Context, st store.Student) error {
	ctx, cancel := s.op(ctx)
	defer cancel()
	_, err := s.pool.Exec(ctx, `INSERT INTO students (name, uid, gid) VALUES ($1, $2, $3)
		ON CONFLICT (name) DO UPDATE SET uid = excluded.uid, gid = excluded.gid`, st.Name, st.UID, st.GID)
	if err != nil {
		return s.fail(err, "put student %s", st.Name)
	}
	return nil
}

// AdoptStudent implements store.Store. DO NOTHING covers both the name
// and the uid being known.
func (s *Store) AdoptStudent(ctx context.Context, st store.Student) (bool, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	tag, err := s.pool.Exec(ctx, `INSERT INTO students (name, uid, gid) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, st.Name, st.UID, st.GID)
	if err != nil {
		return false, s.fail(err, "adopt student %s (uid %d)", st.Name, st.UID)
	}
	return tag.RowsAffected() == 1, nil
}

// ReserveUIDs implements store.Store.
func (s *Store) ReserveUIDs(ctx context.Context, next uint32) error {
	ctx, cancel := s.op(ctx)
	defer cancel()
	if _, err := s.pool.Exec(ctx, `UPDATE counters SET value = GREATEST(value, $1) WHERE name = 'uid_next'`, int64(next)); err != nil {
		return s.fail(err, "reserve uids below %d", next)
	}
	return nil
}

// ListStudents implements store.Store. COLLATE "C" orders bytewise, as
// SQLite does, whatever the database's locale.
func (s *Store) ListStudents(ctx context.Context) ([]store.Student, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT name, uid, gid FROM students ORDER BY name COLLATE "C"`)
	if err != nil {
		return nil, s.fail(err, "list students")
	}
	defer rows.Close()
	var out []store.Student
	for rows.Next() {
		var st store.Student
		if err := rows.Scan(&st.Name, &st.UID, &st.GID); err != nil {
			return nil, s.fail(err, "list students: scan")
		}
		out = append(out, st)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(err, "list students")
	}
	return out, nil
}

// ms truncates t to what SQLite keeps (milliseconds), so that both stores
// return the same times and compare them the same way.
func ms(t time.Time) time.Time { return time.UnixMilli(t.UnixMilli()).UTC() }

// pgRuns: timestamptz (at SQLite's millisecond), jsonb sent as is, ids
// ordered bytewise as in SQLite whatever the database's locale.
var pgRuns = store.Dialect{
	Placeholder: func(i int) string { return "$" + strconv.Itoa(i) },
	Time:        func(t time.Time) any { return ms(t) },
	JSON:        func(b []byte) any { return json.RawMessage(b) },
	OrderByID:   `id COLLATE "C"`,
}

// RecordStart implements store.Store.
func (s *Store) RecordStart(ctx context.Context, r *api.Run) error {
	args, err := pgRuns.StartArgs(r)
	if err != nil {
		return err
	}
	ctx, cancel := s.op(ctx)
	defer cancel()
	if _, err := s.pool.Exec(ctx, pgRuns.StartSQL(), args...); err != nil {
		return s.fail(err, "record start of run %s", r.ID)
	}
	return nil
}

// RecordEnd implements store.Store. It inserts the record if the start was
// never written, so an end is never lost.
func (s *Store) RecordEnd(ctx context.Context, r *api.Run) error {
	args, err := pgRuns.EndArgs(r)
	if err != nil {
		return err
	}
	ctx, cancel := s.op(ctx)
	defer cancel()
	if _, err := s.pool.Exec(ctx, pgRuns.EndSQL(), args...); err != nil {
		return s.fail(err, "record end of run %s", r.ID)
	}
	return nil
}

// GetRun implements store.Store.
func (s *Store) GetRun(ctx context.Context, id string) (api.Run, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	runs, err := s.queryRuns(ctx, pgRuns.GetRunSQL(), id)
	if err != nil {
		return api.Run{}, fmt.Errorf("get run %s: %w", id, err)
	}
	if len(runs) == 0 {
		return api.Run{}, api.Errorf(api.CodeNotFound, "run %s not found", id)
	}
	return runs[0], nil
}

// ListRuns implements store.Store, newest first.
func (s *Store) ListRuns(ctx context.Context, f store.RunFilter) ([]api.Run, error) {
	q, args := pgRuns.ListRunsSQL(f)
	ctx, cancel := s.op(ctx)
	defer cancel()
	runs, err := s.queryRuns(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	return runs, nil
}

func (s *Store) queryRuns(ctx context.Context, q string, args ...any) ([]api.Run, error) {
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, s.fail(err, "query runs")
	}
	defer rows.Close()
	var out []api.Run
	for rows.Next() {
		var row store.RunRow
		if err := rows.Scan(row.Dest(&row.StartedAt, &row.EndedAt)...); err != nil {
			return nil, s.fail(err, "scan run")
		}
		r, err := row.Decode()
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(err, "read runs")
	}
	return out, nil
}

// Ping connects to the database at url once and pings it, changing
// nothing (no migration): idexd --check-config. The URL is never shown.
func Ping(ctx context.Context, url string) error {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return errors.New("database_url is not a valid PostgreSQL connection string (not shown: it may hold a password)")
	}
	cfg.RuntimeParams["application_name"] = ApplicationName
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = connectTimeout
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect to database %q on %s: %w", cfg.Database, cfg.Host, err)
	}
	return errors.Join(conn.Ping(ctx), conn.Close(ctx))
}
