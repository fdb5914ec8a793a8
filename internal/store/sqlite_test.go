package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"

	"github.com/idexd/idexd/internal/store"
	"github.com/idexd/idexd/internal/store/storetest"
)

func TestSQLiteConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.OpenSQLite(context.Background(), t.TempDir(), nil)
		if err != nil {
			t.Fatalf("open sqlite store: %v", err)
		}
		return s
	})
}

func goroutinesCreated() uint64 {
	s := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// TestPerRunStatementsStartNoGoroutine: the statements every run makes,
// given the cancellable contexts idexd gives them (a request's, a run
// end's timeout), start no goroutine. modernc.org/sqlite starts one per
// statement for such a context, and database/sql one per query: 800
// here. An already cancelled context is still refused.
func TestPerRunStatementsStartNoGoroutine(t *testing.T) {
	s, err := store.OpenSQLite(context.Background(), t.TempDir(), nil)
	if err != nil {
		t.Fatalf("open sqlite store: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, _, err := s.EnsureStudent(ctx, "ada", 60000, 60100); err != nil {
		t.Fatal(err)
	}
	const n = 200
	before := goroutinesCreated()
	for i := range n {
		if _, err := s.GetStudent(ctx, "ada"); err != nil {
			t.Fatal(err)
		}
		r := &api.Run{ID: fmt.Sprintf("r%d", i), Student: "ada", Script: "a.py", State: api.StateRunning, StartedAt: time.Now()}
		if err := s.RecordStart(ctx, r); err != nil {
			t.Fatal(err)
		}
		now, code := time.Now(), 0
		r.State, r.Reason, r.EndedAt, r.ExitCode = api.StateEnded, api.ReasonExited, &now, &code
		if err := s.RecordEnd(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	// Anything else of the process's (the test runner, the runtime) may
	// start a few meanwhile.
	if made := goroutinesCreated() - before; made > n/20 {
		t.Errorf("%d goroutines started by %d runs' statements, want none", made, n)
	}
	done, stop := context.WithCancel(context.Background())
	stop()
	if err := s.RecordStart(done, &api.Run{ID: "late", Student: "ada", Script: "a.py", State: api.StateRunning, StartedAt: time.Now()}); !errors.Is(err, context.Canceled) {
		t.Errorf("RecordStart with a cancelled context: %v, want context.Canceled", err)
	}
}

// BenchmarkRunRecords is what the SQLite store costs a run: the student
// looked up, the start and the end recorded.
func BenchmarkRunRecords(b *testing.B) {
	s := openSQLite(b)
	ctx := context.Background()
	if _, _, err := s.EnsureStudent(ctx, "ada", 60000, 60100); err != nil {
		b.Fatal(err)
	}
	for i := 0; b.Loop(); i++ {
		if _, err := s.GetStudent(ctx, "ada"); err != nil {
			b.Fatal(err)
		}
		r := &api.Run{ID: fmt.Sprintf("r%d", i), Student: "ada", Script: "a.py", State: api.StateRunning, StartedAt: time.Now()}
		if err := s.RecordStart(ctx, r); err != nil {
			b.Fatal(err)
		}
		now, code := time.Now(), 0
		r.State, r.Reason, r.EndedAt, r.ExitCode = api.StateEnded, api.ReasonExited, &now, &code
		if err := s.RecordEnd(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
}

// TestStudentReadRacingAPut: what GetStudent keeps never outlives a
// PutStudent, even when a read that began before the put ends after it.
func TestStudentReadRacingAPut(t *testing.T) {
	s := openSQLite(t)
	ctx := context.Background()
	if err := s.PutStudent(ctx, store.Student{Name: "zoe", UID: 70000, GID: 70000}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	readers := make(chan error, 4)
	for range 4 {
		go func() {
			for {
				select {
				case <-stop:
					readers <- nil
					return
				default:
				}
				if _, err := s.GetStudent(ctx, "zoe"); err != nil {
					readers <- err
					return
				}
			}
		}()
	}
	for i := uint32(1); i <= 300; i++ {
		want := store.Student{Name: "zoe", UID: 70000 + i, GID: 70000 + i}
		if err := s.PutStudent(ctx, want); err != nil {
			t.Fatal(err)
		}
		if got, err := s.GetStudent(ctx, "zoe"); err != nil || got != want {
			close(stop)
			t.Fatalf("put %d: GetStudent = %+v, %v; want %+v", i, got, err, want)
		}
	}
	close(stop)
	for range 4 {
		if err := <-readers; err != nil {
			t.Fatal(err)
		}
	}
}

// openSQLite opens a store in a temporary directory, closed when tb ends.
func openSQLite(tb testing.TB) *store.SQLite {
	tb.Helper()
	s, err := store.OpenSQLite(context.Background(), tb.TempDir(), nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Error(err)
		}
	})
	return s
}

// BenchmarkGetStudent is the read every run start makes.
func BenchmarkGetStudent(b *testing.B) {
	s := openSQLite(b)
	ctx := context.Background()
	if _, _, err := s.EnsureStudent(ctx, "ada", 60000, 60100); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := s.GetStudent(ctx, "ada"); err != nil {
			b.Fatal(err)
		}
	}
}

// TestWALStartsOver: SQLite's own checkpoints are off (they ran inside a
// run's commit, fsyncs included), so the store's background checkpoints
// alone keep the WAL from holding every record ever written. 3,000 runs
// written far faster than a class starts them (a record every 0.2 ms)
// left a WAL of 4-6 MiB here; with the checkpoints never letting it start
// over (each one copying only what there was when it began) it was 75 MiB.
func TestWALStartsOver(t *testing.T) {
	dir := t.TempDir()
	s, err := store.OpenSQLite(context.Background(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	ctx := context.Background()
	if _, _, err := s.EnsureStudent(ctx, "ada", 60000, 60100); err != nil {
		t.Fatal(err)
	}
	for i := range 3000 {
		time.Sleep(200 * time.Microsecond)
		r := &api.Run{ID: fmt.Sprintf("r%d", i), Student: "ada", Script: "a.py", State: api.StateRunning, StartedAt: time.Now()}
		if err := s.RecordStart(ctx, r); err != nil {
			t.Fatal(err)
		}
		now, code := time.Now(), 0
		r.State, r.Reason, r.EndedAt, r.ExitCode = api.StateEnded, api.ReasonExited, &now, &code
		if err := s.RecordEnd(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "idexd.db-wal"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > 32<<20 {
		t.Fatalf("the WAL is %d MiB after 3,000 runs: checkpoints did not make it start over", fi.Size()>>20)
	}
	// Every record is still there, checkpointed or not.
	if r, err := s.GetRun(ctx, "r2999"); err != nil || r.State != api.StateEnded {
		t.Fatalf("the last run: %+v %v", r, err)
	}
}
