package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/config"
	"github.com/idexd/idexd/internal/lock"
	"github.com/idexd/idexd/internal/pgstore"
	"github.com/idexd/idexd/internal/store"
)

// maxPendingEnds bounds the run ends kept in memory while the store is
// down; older ones go to the spill file at once.
const maxPendingEnds = 10000

// openStore opens the store and ends, before it serves anything, the runs
// a previous instance of this host left running (their cgroups were swept
// already). PostgreSQL may be unreachable: then idexd starts anyway and
// the store opens, and recovers, once it answers (pgstore.Lazy).
func openStore(ctx context.Context, cfg config.Config, log *slog.Logger) (store.Store, lock.Locker, error) {
	var st store.Store
	var locker lock.Locker
	if cfg.DatabaseURL != "" {
		lz := pgstore.OpenLazy(ctx, pgstore.LazyConfig{
			URL: cfg.DatabaseURL, Host: cfg.Host, LeaseTTL: cfg.LeaseTTL.Duration, Log: log,
			Recover: func(ctx context.Context, s *pgstore.Store, lk *pgstore.Locker) error {
				return recoverRecords(ctx, cfg.Host, s, lk.ReleaseHost, log)
			},
		})
		st, locker = lz, lz
	} else {
		sq, err := store.OpenSQLite(ctx, cfg.StateDir)
		if err != nil {
			return nil, nil, fmt.Errorf("open store: %w", err)
		}
		if err := recoverRecords(ctx, cfg.Host, sq, nil, log); err != nil {
			// They stay running in the history until the next start.
			log.Error("recover records of a previous instance", "err", err)
		}
		st, locker = sq, lock.NewTable()
	}
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		return nil, nil, errors.Join(fmt.Errorf("create state dir %s: %w", cfg.StateDir, err), st.Close())
	}
	q, err := store.NewQueued(st, filepath.Join(cfg.StateDir, "pending-ends.jsonl"), maxPendingEnds, log)
	if err != nil {
		return nil, nil, errors.Join(err, st.Close())
	}
	return q, locker, nil
}

// recoverRecords ends this host's runs left running as lost and, with
// release (shared leases), frees the locks they held.
func recoverRecords(ctx context.Context, host string, st store.Store, release func(context.Context, string) (int, error), log *slog.Logger) error {
	var errs []error
	if release != nil {
		n, err := release(ctx, host)
		if err != nil {
			errs = append(errs, fmt.Errorf("release leases of host %s: %w", host, err))
		} else if n > 0 {
			log.Warn("released leases of a previous instance", "count", n)
		}
	}
	runs, err := st.ListRuns(ctx, store.RunFilter{State: api.StateRunning, Host: host})
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list runs left running: %w", err))...)
	}
	now := time.Now().UTC()
	for i := range runs {
		r := &runs[i]
		r.State, r.Reason, r.EndedAt = api.StateEnded, api.ReasonLost, &now
		r.WallMS = now.Sub(r.StartedAt).Milliseconds()
		r.Error = "idexd stopped while this run was running; its processes were killed at the next start"
		if err := st.RecordEnd(ctx, r); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Warn("run lost", "run", r.ID, "student", r.Student)
	}
	return errors.Join(errs...)
}
