package pgstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/lock"
	"github.com/idexd/idexd/internal/store"
)

// LazyConfig configures OpenLazy.
type LazyConfig struct {
	URL      string
	Host     string
	LeaseTTL time.Duration
	Log      *slog.Logger
	// Recover runs once the database answers and before any call is
	// served: it ends the runs a previous instance of this host left. An
	// error closes the store and the next try opens it again, so no run
	// of this instance can be taken for a leftover.
	Recover func(ctx context.Context, st *Store, lk *Locker) error
	// RetryMin and RetryMax bound the wait between tries (1 s, 30 s).
	RetryMin, RetryMax time.Duration
}

// Lazy is the PostgreSQL store as the daemon uses it: idexd starts even
// when the database is unreachable. Until it is open (and recovered),
// every call fails with store_unavailable: health is degraded and no run
// starts, since a cross-host lock cannot be promised. It keeps trying in
// the background.
type Lazy struct {
	cfg LazyConfig

	mu      sync.RWMutex
	st      *Store
	lk      *Locker
	lastErr error

	stop chan struct{}
	done chan struct{}
}

var (
	_ store.Store = (*Lazy)(nil)
	_ lock.Locker = (*Lazy)(nil)
	_ lock.Stats  = (*Lazy)(nil)
)

// OpenLazy tries once to open (and recover) the store, within ctx; if that
// fails it goes on trying in the background until Close.
func OpenLazy(ctx context.Context, cfg LazyConfig) *Lazy {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = time.Second
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(30*time.Second, cfg.RetryMin)
	}
	l := &Lazy{cfg: cfg, stop: make(chan struct{}), done: make(chan struct{}),
		lastErr: errors.New("not connected yet")}
	if err := l.try(ctx); err != nil {
		cfg.Log.Error("PostgreSQL unreachable: runs are refused until it answers; retrying", "err", err)
		go l.retry()
	} else {
		close(l.done)
	}
	return l
}

// try opens the store and recovers; only then does it serve.
func (l *Lazy) try(ctx context.Context) error {
	st, err := Open(ctx, l.cfg.URL, l.cfg.Host, l.cfg.Log)
	if err == nil {
		lk := st.Locker(l.cfg.LeaseTTL)
		if l.cfg.Recover != nil {
			if rerr := l.cfg.Recover(ctx, st, lk); rerr != nil {
				err = errors.Join(fmt.Errorf("recover the runs a previous instance left: %w", rerr), st.Close())
			}
		}
		if err == nil {
			l.mu.Lock()
			l.st, l.lk, l.lastErr = st, lk, nil
			l.mu.Unlock()
			return nil
		}
	}
	l.mu.Lock()
	l.lastErr = err
	l.mu.Unlock()
	return err
}

func (l *Lazy) retry() {
	defer close(l.done)
	delay := l.cfg.RetryMin
	for {
		select {
		case <-l.stop:
			return
		case <-time.After(delay):
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := l.try(ctx)
		cancel()
		if err == nil {
			return
		}
		delay = min(2*delay, l.cfg.RetryMax)
		l.cfg.Log.Warn("PostgreSQL still unreachable", "err", err, "retry_in", delay)
	}
}

func (l *Lazy) get() (*Store, *Locker, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.st == nil {
		return nil, nil, api.Wrap(api.CodeStoreUnavailable, l.lastErr, "PostgreSQL is unreachable")
	}
	return l.st, l.lk, nil
}

// with calls f on the open store, or fails with store_unavailable.
func with[T any](l *Lazy, f func(*Store) (T, error)) (T, error) {
	st, _, err := l.get()
	if err != nil {
		var zero T
		return zero, err
	}
	return f(st)
}

// Kind implements store.Store.
func (l *Lazy) Kind() string { return "postgres" }

// Close stops trying and closes the store if it was open.
func (l *Lazy) Close() error {
	close(l.stop)
	<-l.done
	l.mu.RLock()
	st := l.st
	l.mu.RUnlock()
	if st == nil {
		return nil // never connected: no pool to close
	}
	return st.Close()
}

// Ping implements store.Store.
func (l *Lazy) Ping(ctx context.Context) error {
	_, err := with(l, func(s *Store) (struct{}, error) { return struct{}{}, s.Ping(ctx) })
	return err
}

// EnsureStudent implements store.Store.
func (l *Lazy) EnsureStudent(ctx context.Context, name string, lo, hi uint32) (store.Student, bool, error) {
	type ensured struct {
		st      store.Student
		created bool
	}
	r, err := with(l, func(s *Store) (ensured, error) {
		st, created, err := s.EnsureStudent(ctx, name, lo, hi)
		return ensured{st, created}, err
	})
	return r.st, r.created, err
}

// GetStudent implements store.Store.
func (l *Lazy) GetStudent(ctx context.Context, name string) (store.Student, error) {
	return with(l, func(s *Store) (store.Student, error) { return s.GetStudent(ctx, name) })
}

// PutStudent implements store.Store.
func (l *Lazy) PutStudent(ctx context.Context, st store.Student) error {
	_, err := with(l, func(s *Store) (struct{}, error) { return struct{}{}, s.PutStudent(ctx, st) })
	return err
}

// AdoptStudent implements store.Store.
func (l *Lazy) AdoptStudent(ctx context.Context, st store.Student) (bool, error) {
	return with(l, func(s *Store) (bool, error) { return s.AdoptStudent(ctx, st) })
}

// ReserveUIDs implements store.Store.
func (l *Lazy) ReserveUIDs(ctx context.Context, next uint32) error {
	_, err := with(l, func(s *Store) (struct{}, error) { return struct{}{}, s.ReserveUIDs(ctx, next) })
	return err
}

// ListStudents implements store.Store.
func (l *Lazy) ListStudents(ctx context.Context) ([]store.Student, error) {
	return with(l, func(s *Store) ([]store.Student, error) { return s.ListStudents(ctx) })
}

// RecordStart implements store.Store.
func (l *Lazy) RecordStart(ctx context.Context, r *api.Run) error {
	_, err := with(l, func(s *Store) (struct{}, error) { return struct{}{}, s.RecordStart(ctx, r) })
	return err
}

// RecordEnd implements store.Store.
func (l *Lazy) RecordEnd(ctx context.Context, r *api.Run) error {
	_, err := with(l, func(s *Store) (struct{}, error) { return struct{}{}, s.RecordEnd(ctx, r) })
	return err
}

// GetRun implements store.Store.
func (l *Lazy) GetRun(ctx context.Context, id string) (api.Run, error) {
	return with(l, func(s *Store) (api.Run, error) { return s.GetRun(ctx, id) })
}

// ListRuns implements store.Store.
func (l *Lazy) ListRuns(ctx context.Context, f store.RunFilter) ([]api.Run, error) {
	return with(l, func(s *Store) ([]api.Run, error) { return s.ListRuns(ctx, f) })
}

// Acquire implements lock.Locker with cross-host leases.
func (l *Lazy) Acquire(ctx context.Context, key lock.Key, runID string) (lock.Lease, error) {
	_, lk, err := l.get()
	if err != nil {
		return nil, err
	}
	return lk.Acquire(ctx, key, runID)
}

// Held implements lock.Stats.
func (l *Lazy) Held() int {
	_, lk, err := l.get()
	if err != nil {
		return 0
	}
	return lk.Held()
}

// Lost implements lock.Stats.
func (l *Lazy) Lost() int64 {
	_, lk, err := l.get()
	if err != nil {
		return 0
	}
	return lk.Lost()
}

// Counts implements lock.Stats.
func (l *Lazy) Counts() (acquired, released int64) {
	_, lk, err := l.get()
	if err != nil {
		return 0, 0
	}
	return lk.Counts()
}
