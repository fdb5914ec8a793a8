package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // the pure-Go SQLite driver keeps builds CGO-free

	"github.com/idexd/idexd/internal/api"
)

// SQLite is the embedded store: one file in the state directory.
type SQLite struct {
	db   *sql.DB
	path string
	// What every run does, prepared once: parsing the SQL again for each
	// run was about 3% of idexd's CPU under a burst (bench/README.md).
	getStudent, recordStart, recordEnd *sql.Stmt

	// known holds GetStudent's answers. A student's uid and gid do not
	// change once given; only PutStudent moves one, and it bumps gen so
	// that a read begun before it cannot put the old answer back. Reading
	// them from SQLite for every run was 0.14 ms of idexd's CPU a run at 8
	// clients (bench/README.md). The map holds one entry per student who
	// ran something: a class's worth of names.
	mu    sync.Mutex
	gen   uint64
	known map[string]Student

	// The WAL is copied back into the database by a connection of its
	// own, off the runs' path. SQLite's own autocheckpoint runs inside
	// the commit that crosses 1,000 pages, with an fsync of the WAL and
	// of the database: 18-20 ms on this VM's disk every ~155 runs, and
	// up to 119 ms under load, while every other statement queued behind
	// the one connection (bench/README.md).
	ckpt     *sql.DB
	writes   atomic.Uint64
	kick     chan struct{}
	stopCkpt chan struct{}
	ckptDone chan struct{}
	ckptStop sync.Once
	log      *slog.Logger
}

// checkpointEvery is how many run records go to the WAL between two
// checkpoints: about SQLite's default of 1,000 pages at a run's start and
// end.
const checkpointEvery = 150

var sqliteMigrations = []string{
	`CREATE TABLE students (
		name TEXT PRIMARY KEY,
		uid  INTEGER NOT NULL UNIQUE,
		gid  INTEGER NOT NULL,
		created_at INTEGER NOT NULL
	);
	CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
	CREATE TABLE runs (
		id TEXT PRIMARY KEY,
		host TEXT NOT NULL,
		student TEXT NOT NULL,
		uid INTEGER NOT NULL,
		gid INTEGER NOT NULL,
		script TEXT NOT NULL,
		script_sha256 TEXT NOT NULL,
		args TEXT NOT NULL,
		mode TEXT NOT NULL,
		limits TEXT NOT NULL,
		state TEXT NOT NULL,
		reason TEXT NOT NULL DEFAULT '',
		exit_code INTEGER,
		signal TEXT NOT NULL DEFAULT '',
		error TEXT NOT NULL DEFAULT '',
		started_at INTEGER NOT NULL,
		ended_at INTEGER,
		wall_ms INTEGER NOT NULL DEFAULT 0,
		cpu_ms INTEGER NOT NULL DEFAULT 0,
		peak_memory_bytes INTEGER NOT NULL DEFAULT 0,
		output_bytes INTEGER NOT NULL DEFAULT 0,
		truncated INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX runs_student_started ON runs(student, started_at);
	CREATE INDEX runs_state_host ON runs(state, host);`,
}

// OpenSQLite opens (creating if needed) the store at dir/idexd.db and
// applies its migrations. log (nil: nowhere) hears of failed checkpoints.
func OpenSQLite(ctx context.Context, dir string, log *slog.Logger) (*SQLite, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create state dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, "idexd.db")
	// WAL with synchronous=NORMAL survives a crash of the daemon (the
	// threat here) without an fsync on every run start.
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)"
	db, err := sql.Open("sqlite", dsn+"&_pragma=wal_autocheckpoint(0)")
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	// One connection: SQLite has one writer anyway, and this way no
	// request ever meets SQLITE_BUSY.
	db.SetMaxOpenConns(1)
	s := &SQLite{db: db, path: path, known: map[string]Student{}, log: log}
	if err := s.migrate(ctx); err != nil {
		return nil, errors.Join(err, db.Close())
	}
	// A PASSIVE checkpoint takes no lock a writer waits for: the runs'
	// connection goes on appending to the WAL while this one copies it.
	// Its busy_timeout is short: a FULL pass holds the writer off while it
	// waits, and a reader that keeps a snapshot open (a sysadmin's sqlite3)
	// must not stall the runs; the next checkpoint tries again.
	ckptDSN := strings.Replace(dsn, "busy_timeout(10000)", "busy_timeout(5)", 1)
	if s.ckpt, err = sql.Open("sqlite", ckptDSN); err != nil {
		return nil, errors.Join(fmt.Errorf("open sqlite %s for checkpoints: %w", path, err), db.Close())
	}
	s.ckpt.SetMaxOpenConns(1)
	// Opened now, not at the first checkpoint: the daemon's fds at rest
	// stay what they were at its start (the load census counts them).
	if err := s.ckpt.PingContext(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("open sqlite %s for checkpoints: %w", path, err), s.ckpt.Close(), db.Close())
	}
	s.kick, s.stopCkpt, s.ckptDone = make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
	go s.checkpoints()
	for _, st := range []struct {
		p   **sql.Stmt
		sql string
	}{
		{&s.getStudent, `SELECT uid, gid FROM students WHERE name = ?`},
		{&s.recordStart, sqliteRuns.StartSQL()},
		{&s.recordEnd, sqliteRuns.EndSQL()},
	} {
		if *st.p, err = db.PrepareContext(ctx, st.sql); err != nil {
			return nil, errors.Join(fmt.Errorf("prepare %q: %w", st.sql, err), s.Close())
		}
	}
	return s, nil
}

func (s *SQLite) migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate %s: begin: %w", s.path, err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)`); err != nil {
		return fmt.Errorf("migrate %s: %w", s.path, err)
	}
	var have int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
		return fmt.Errorf("migrate %s: read version: %w", s.path, err)
	}
	if have > len(sqliteMigrations) {
		return fmt.Errorf("migrate %s: database is at version %d, this idexd knows only %d (downgrade?)", s.path, have, len(sqliteMigrations))
	}
	for v := have + 1; v <= len(sqliteMigrations); v++ {
		if _, err := tx.ExecContext(ctx, sqliteMigrations[v-1]); err != nil {
			return fmt.Errorf("migrate %s to version %d: %w", s.path, v, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations(version) VALUES (?)`, v); err != nil {
			return fmt.Errorf("migrate %s: record version %d: %w", s.path, v, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate %s: commit: %w", s.path, err)
	}
	return nil
}

// Kind implements Store.
func (s *SQLite) Kind() string { return "sqlite" }

// checkpoints copies the WAL back into the database each time wrote asks.
func (s *SQLite) checkpoints() {
	defer close(s.ckptDone)
	for {
		select {
		case <-s.stopCkpt:
			return
		case <-s.kick:
			if err := s.checkpoint(context.Background()); err != nil {
				// The WAL keeps what was written and grows until a
				// checkpoint succeeds; nothing is lost meanwhile.
				s.log.Warn("checkpoint the store's WAL", "err", err)
			}
		}
	}
}

func (s *SQLite) checkpoint(ctx context.Context) error {
	// The WAL starts over (at a writer's next commit) only once a
	// checkpoint has copied every frame in it. A PASSIVE one copies the
	// frames there were when it began, while the writer appends more; so
	// it goes again over those (a few: quick) until a pass finds nothing
	// new. The last pass, if it comes to that, is FULL: it holds the
	// writer off while it copies what is left, so the WAL cannot grow
	// without end under writes that never pause.
	prev := -1
	for pass := range checkpointPasses {
		mode := "PASSIVE"
		if pass == checkpointPasses-1 {
			mode = "FULL"
		}
		var busy, walPages, copied int
		if err := s.ckpt.QueryRowContext(ctx, `PRAGMA wal_checkpoint(`+mode+`)`).Scan(&busy, &walPages, &copied); err != nil {
			return fmt.Errorf("checkpoint %s (%s): %w", s.path, mode, err)
		}
		if busy == 0 && copied == walPages && walPages <= prev {
			return nil // nothing written since the last pass, or the WAL started over
		}
		prev = walPages
	}
	return nil
}

// checkpointPasses bounds the PASSIVE passes of one checkpoint (the last
// one FULL).
const checkpointPasses = 8

// wrote counts a run record written, and asks for a checkpoint every
// checkpointEvery of them.
func (s *SQLite) wrote() {
	if s.writes.Add(1)%checkpointEvery == 0 {
		select {
		case s.kick <- struct{}{}:
		default: // one is under way or asked for already
		}
	}
}

// Close implements Store.
func (s *SQLite) Close() error {
	var errs []error
	if s.ckpt != nil {
		s.ckptStop.Do(func() {
			close(s.stopCkpt)
			<-s.ckptDone
			if err := s.ckpt.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close sqlite %s (checkpoints): %w", s.path, err))
			}
		})
	}
	for _, st := range []*sql.Stmt{s.getStudent, s.recordStart, s.recordEnd} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	// The last connection to close checkpoints what is left and removes
	// the WAL.
	if err := s.db.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close sqlite %s: %w", s.path, err))
	}
	return errors.Join(errs...)
}

// Ping implements Store.
func (s *SQLite) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("ping sqlite %s: %w", s.path, err)
	}
	return nil
}

// ProbeWrite writes one small row, for health after a failed write: a
// ping reads nothing from disk and so cannot tell that the disk is full.
func (s *SQLite) ProbeWrite(ctx context.Context) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO counters(name, value) VALUES ('health_probe', ?)
		ON CONFLICT(name) DO UPDATE SET value = excluded.value`, time.Now().UnixMilli())
	if err != nil {
		return fmt.Errorf("probe write to %s: %w", s.path, err)
	}
	return nil
}

// EnsureStudent implements Store.
func (s *SQLite) EnsureStudent(ctx context.Context, name string, min, max uint32) (Student, bool, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Student{}, false, fmt.Errorf("ensure student %s: begin: %w", name, err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	st := Student{Name: name}
	err = tx.QueryRowContext(ctx, `SELECT uid, gid FROM students WHERE name = ?`, name).Scan(&st.UID, &st.GID)
	if err == nil {
		return st, false, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return Student{}, false, fmt.Errorf("ensure student %s: read: %w", name, err)
	}
	var next int64
	err = tx.QueryRowContext(ctx, `SELECT value FROM counters WHERE name = 'uid_next'`).Scan(&next)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return Student{}, false, fmt.Errorf("ensure student %s: read uid counter: %w", name, err)
	}
	// The counter only grows, so a uid is never handed out twice, even
	// after its student is gone; raising uid_min skips ahead.
	next = max64(next, int64(min))
	if next > int64(max) {
		return Student{}, false, fmt.Errorf("ensure student %s: %w (%d-%d)", name, ErrUIDRangeExhausted, min, max)
	}
	st.UID, st.GID = uint32(next), uint32(next)
	if _, err := tx.ExecContext(ctx, `INSERT INTO students(name, uid, gid, created_at) VALUES (?, ?, ?, ?)`,
		name, st.UID, st.GID, time.Now().UnixMilli()); err != nil {
		return Student{}, false, fmt.Errorf("ensure student %s: insert: %w", name, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO counters(name, value) VALUES ('uid_next', ?)
		ON CONFLICT(name) DO UPDATE SET value = excluded.value`, next+1); err != nil {
		return Student{}, false, fmt.Errorf("ensure student %s: bump uid counter: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return Student{}, false, fmt.Errorf("ensure student %s: commit: %w", name, err)
	}
	return st, true, nil
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// perRun is ctx for the statements every run makes (GetStudent,
// RecordStart, RecordEnd), without its cancellation once it is checked.
// Given a context that can be cancelled, modernc.org/sqlite starts a
// goroutine per statement to interrupt it (and installs a progress
// handler), and database/sql another per query to close its rows: each
// is a goroutine made and woken, which was a sixth of the runtime's
// thread wake-ups in idexd per run (bench/README.md). A statement here
// is a single-row write or read; it waits for the database's lock at
// most busy_timeout (10 s).
func perRun(ctx context.Context) (context.Context, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return context.WithoutCancel(ctx), nil
}

// GetStudent implements Store.
func (s *SQLite) GetStudent(ctx context.Context, name string) (Student, error) {
	ctx, err := perRun(ctx)
	if err != nil {
		return Student{}, fmt.Errorf("get student %s: %w", name, err)
	}
	s.mu.Lock()
	st, ok := s.known[name]
	gen := s.gen
	s.mu.Unlock()
	if ok {
		return st, nil
	}
	st = Student{Name: name}
	err = s.getStudent.QueryRowContext(ctx, name).Scan(&st.UID, &st.GID)
	if errors.Is(err, sql.ErrNoRows) {
		return Student{}, api.Errorf(api.CodeStudentNotFound, "student %s is not known", name)
	}
	if err != nil {
		return Student{}, fmt.Errorf("get student %s: %w", name, err)
	}
	s.mu.Lock()
	if s.gen == gen {
		s.known[name] = st
	}
	s.mu.Unlock()
	return st, nil
}

// PutStudent implements Store.
func (s *SQLite) PutStudent(ctx context.Context, st Student) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO students(name, uid, gid, created_at) VALUES (?, ?, ?, ?)
		ON CONFLICT(name) DO UPDATE SET uid = excluded.uid, gid = excluded.gid`,
		st.Name, st.UID, st.GID, time.Now().UnixMilli())
	// Whether or not it was written: the next read asks SQLite.
	s.mu.Lock()
	s.gen++
	delete(s.known, st.Name)
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("put student %s: %w", st.Name, err)
	}
	return nil
}

// AdoptStudent implements Store. DO NOTHING covers both the name and
// the uid being known.
func (s *SQLite) AdoptStudent(ctx context.Context, st Student) (bool, error) {
	res, err := s.db.ExecContext(ctx, `INSERT INTO students(name, uid, gid, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		st.Name, st.UID, st.GID, time.Now().UnixMilli())
	if err != nil {
		return false, fmt.Errorf("adopt student %s (uid %d): %w", st.Name, st.UID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("adopt student %s (uid %d): %w", st.Name, st.UID, err)
	}
	return n == 1, nil
}

// ReserveUIDs implements Store.
func (s *SQLite) ReserveUIDs(ctx context.Context, next uint32) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO counters(name, value) VALUES ('uid_next', ?)
		ON CONFLICT(name) DO UPDATE SET value = max(value, excluded.value)`, next)
	if err != nil {
		return fmt.Errorf("reserve uids below %d: %w", next, err)
	}
	return nil
}

// ListStudents implements Store.
func (s *SQLite) ListStudents(ctx context.Context) ([]Student, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, uid, gid FROM students ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list students: %w", err)
	}
	defer rows.Close() //nolint:errcheck // rows.Err is checked below
	var out []Student
	for rows.Next() {
		var st Student
		if err := rows.Scan(&st.Name, &st.UID, &st.GID); err != nil {
			return nil, fmt.Errorf("list students: scan: %w", err)
		}
		out = append(out, st)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list students: %w", err)
	}
	return out, nil
}

// sqliteRuns: milliseconds since the epoch, JSON as text.
var sqliteRuns = Dialect{
	Placeholder: func(int) string { return "?" },
	Time:        func(t time.Time) any { return t.UnixMilli() },
	JSON:        func(b []byte) any { return string(b) },
	OrderByID:   "id",
}

// RecordStart implements Store.
func (s *SQLite) RecordStart(ctx context.Context, r *api.Run) error {
	args, err := sqliteRuns.StartArgs(r)
	if err != nil {
		return err
	}
	if ctx, err = perRun(ctx); err != nil {
		return fmt.Errorf("record start of run %s: %w", r.ID, err)
	}
	if _, err := s.recordStart.ExecContext(ctx, args...); err != nil {
		return fmt.Errorf("record start of run %s: %w", r.ID, err)
	}
	s.wrote()
	return nil
}

// RecordEnd implements Store. It also inserts the record if the start was
// never written, so an end is never lost.
func (s *SQLite) RecordEnd(ctx context.Context, r *api.Run) error {
	args, err := sqliteRuns.EndArgs(r)
	if err != nil {
		return err
	}
	if ctx, err = perRun(ctx); err != nil {
		return fmt.Errorf("record end of run %s: %w", r.ID, err)
	}
	if _, err := s.recordEnd.ExecContext(ctx, args...); err != nil {
		return fmt.Errorf("record end of run %s: %w", r.ID, err)
	}
	s.wrote()
	return nil
}

// GetRun implements Store.
func (s *SQLite) GetRun(ctx context.Context, id string) (api.Run, error) {
	runs, err := s.queryRuns(ctx, sqliteRuns.GetRunSQL(), id)
	if err != nil {
		return api.Run{}, fmt.Errorf("get run %s: %w", id, err)
	}
	if len(runs) == 0 {
		return api.Run{}, api.Errorf(api.CodeNotFound, "run %s not found", id)
	}
	return runs[0], nil
}

// ListRuns implements Store, newest first.
func (s *SQLite) ListRuns(ctx context.Context, f RunFilter) ([]api.Run, error) {
	q, args := sqliteRuns.ListRunsSQL(f)
	runs, err := s.queryRuns(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	return runs, nil
}

func (s *SQLite) queryRuns(ctx context.Context, q string, args ...any) ([]api.Run, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("query runs: %w", err)
	}
	defer rows.Close() //nolint:errcheck // rows.Err is checked below
	var out []api.Run
	for rows.Next() {
		var (
			row     RunRow
			started int64
			ended   sql.NullInt64
		)
		if err := rows.Scan(row.Dest(&started, &ended)...); err != nil {
			return nil, fmt.Errorf("scan run: %w", err)
		}
		row.StartedAt = time.UnixMilli(started)
		if ended.Valid {
			t := time.UnixMilli(ended.Int64)
			row.EndedAt = &t
		}
		r, err := row.Decode()
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read runs: %w", err)
	}
	return out, nil
}
