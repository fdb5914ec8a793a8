package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/config"
	"github.com/idexd/idexd/internal/lock"
	"github.com/idexd/idexd/internal/pgstore"
	"github.com/idexd/idexd/internal/store"
)

func init() { openPostgres = openDeferredPG }

// deferredPG is the PostgreSQL store as the daemon sees it: idexd starts
// even when the database is unreachable, answers store_unavailable (health
// degraded, no new run: a cross-host lock cannot be promised) and keeps
// trying to open it in the background. Once open it runs onOpen (crash
// recovery of this host's runs) and serves every call.
type deferredPG struct {
	cfg    config.Config
	log    *slog.Logger
	onOpen func(context.Context, store.Store, lock.Locker)

	mu      sync.RWMutex
	st      *pgstore.Store
	lk      *pgstore.Locker
	lastErr error

	stop chan struct{}
	done chan struct{}
}

func openDeferredPG(ctx context.Context, cfg config.Config, log *slog.Logger) (store.Store, lock.Locker, error) {
	d := &deferredPG{cfg: cfg, log: log, stop: make(chan struct{}), done: make(chan struct{}),
		lastErr: errors.New("not connected yet")}
	if err := d.try(ctx); err != nil {
		log.Error("PostgreSQL unreachable: runs are refused until it answers; retrying", "err", err)
		go d.retry()
	} else {
		close(d.done)
	}
	return d, d, nil
}

func (d *deferredPG) try(ctx context.Context) error {
	st, err := pgstore.Open(ctx, d.cfg.DatabaseURL, d.cfg.Host, d.log)
	if err != nil {
		d.mu.Lock()
		d.lastErr = err
		d.mu.Unlock()
		return err
	}
	d.mu.Lock()
	d.st, d.lk, d.lastErr = st, st.Locker(d.cfg.LeaseTTL.Duration), nil
	d.mu.Unlock()
	d.log.Info("PostgreSQL store open", "host", d.cfg.Host)
	return nil
}

func (d *deferredPG) retry() {
	defer close(d.done)
	delay := time.Second
	for {
		select {
		case <-d.stop:
			return
		case <-time.After(delay):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := d.try(ctx)
		cancel()
		if err == nil {
			d.mu.RLock()
			on := d.onOpen
			d.mu.RUnlock()
			if on != nil {
				rctx, rcancel := context.WithTimeout(context.Background(), time.Minute)
				on(rctx, d, d)
				rcancel()
			}
			return
		}
		delay = min(2*delay, 30*time.Second)
		d.log.Warn("PostgreSQL still unreachable", "err", err, "retry_in", delay)
	}
}

// setOnOpen registers what to do once a late open succeeds.
func (d *deferredPG) setOnOpen(f func(context.Context, store.Store, lock.Locker)) {
	d.mu.Lock()
	d.onOpen = f
	d.mu.Unlock()
}

func (d *deferredPG) get() (*pgstore.Store, *pgstore.Locker, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.st == nil {
		return nil, nil, &api.Error{Code: api.CodeStoreUnavailable, Message: fmt.Sprintf("PostgreSQL is unreachable: %v", d.lastErr)}
	}
	return d.st, d.lk, nil
}

func (d *deferredPG) Kind() string { return "postgres" }

func (d *deferredPG) Errors() int64 {
	st, _, err := d.get()
	if err != nil {
		return 0
	}
	return st.Errors()
}

func (d *deferredPG) Close() error {
	close(d.stop)
	<-d.done
	d.mu.RLock()
	st := d.st
	d.mu.RUnlock()
	if st == nil {
		// Never connected: no pool to close.
		return nil
	}
	if err := st.Close(); err != nil {
		return fmt.Errorf("close PostgreSQL store: %w", err)
	}
	return nil
}

func (d *deferredPG) Ping(ctx context.Context) error {
	st, _, err := d.get()
	if err != nil {
		return err
	}
	return st.Ping(ctx)
}

func (d *deferredPG) EnsureStudent(ctx context.Context, name string, lo, hi uint32) (store.Student, error) {
	st, _, err := d.get()
	if err != nil {
		return store.Student{}, err
	}
	return st.EnsureStudent(ctx, name, lo, hi)
}

func (d *deferredPG) GetStudent(ctx context.Context, name string) (store.Student, error) {
	st, _, err := d.get()
	if err != nil {
		return store.Student{}, err
	}
	return st.GetStudent(ctx, name)
}

func (d *deferredPG) PutStudent(ctx context.Context, s store.Student) error {
	st, _, err := d.get()
	if err != nil {
		return err
	}
	return st.PutStudent(ctx, s)
}

func (d *deferredPG) ListStudents(ctx context.Context) ([]store.Student, error) {
	st, _, err := d.get()
	if err != nil {
		return nil, err
	}
	return st.ListStudents(ctx)
}

func (d *deferredPG) RecordStart(ctx context.Context, r *api.Run) error {
	st, _, err := d.get()
	if err != nil {
		return err
	}
	return st.RecordStart(ctx, r)
}

func (d *deferredPG) RecordEnd(ctx context.Context, r *api.Run) error {
	st, _, err := d.get()
	if err != nil {
		return err
	}
	return st.RecordEnd(ctx, r)
}

func (d *deferredPG) GetRun(ctx context.Context, id string) (api.Run, error) {
	st, _, err := d.get()
	if err != nil {
		return api.Run{}, err
	}
	return st.GetRun(ctx, id)
}

func (d *deferredPG) ListRuns(ctx context.Context, f store.RunFilter) ([]api.Run, error) {
	st, _, err := d.get()
	if err != nil {
		return nil, err
	}
	return st.ListRuns(ctx, f)
}

// Acquire implements lock.Locker with cross-host leases.
func (d *deferredPG) Acquire(ctx context.Context, key lock.Key, runID string) (lock.Lease, error) {
	_, lk, err := d.get()
	if err != nil {
		return nil, err
	}
	return lk.Acquire(ctx, key, runID)
}

// ReleaseHost frees the leases a dead instance of this host left.
func (d *deferredPG) ReleaseHost(ctx context.Context, host string) (int, error) {
	_, lk, err := d.get()
	if err != nil {
		return 0, err
	}
	return lk.ReleaseHost(ctx, host)
}

// Held and Counts feed /v1/debug/state and the lock metrics.
func (d *deferredPG) Held() int {
	_, lk, err := d.get()
	if err != nil {
		return 0
	}
	return lk.Held()
}

func (d *deferredPG) Counts() (acquired, released int64) {
	_, lk, err := d.get()
	if err != nil {
		return 0, 0
	}
	return lk.Counts()
}
