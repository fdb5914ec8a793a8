package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/config"
	"github.com/idexd/idexd/internal/lock"
	"github.com/idexd/idexd/internal/pgstore"
	"github.com/idexd/idexd/internal/store"
	"github.com/idexd/idexd/internal/students"
)

// maxPendingEnds bounds the run ends kept in memory while the store is
// down; older ones go to the spill file at once.
const maxPendingEnds = 10000

// openStore opens the store and, before it serves anything, ends the runs
// a previous instance of this host left running (their cgroups were swept
// already) and adopts the students whose directories outlived their
// records. PostgreSQL may be unreachable: then idexd starts anyway and the
// store opens, and recovers, once it answers (pgstore.Lazy).
func openStore(ctx context.Context, cfg config.Config, dirs *students.Dirs, log *slog.Logger) (*store.Queued, lock.Locker, error) {
	var st store.Store
	var locker lock.Locker
	if cfg.DatabaseURL != "" {
		lz := pgstore.OpenLazy(ctx, pgstore.LazyConfig{
			URL: cfg.DatabaseURL, Host: cfg.Host, LeaseTTL: cfg.LeaseTTL.Duration, Log: log,
			Recover: func(ctx context.Context, s *pgstore.Store, lk *pgstore.Locker) error {
				return errors.Join(recoverRecords(ctx, cfg.Host, s, lk.ReleaseHost, log), adoptStudents(ctx, cfg, dirs, s, log))
			},
		})
		st, locker = lz, lz
	} else {
		sq, err := store.OpenSQLite(ctx, cfg.StateDir, log)
		if err != nil {
			return nil, nil, fmt.Errorf("open store: %w", err)
		}
		if err := recoverRecords(ctx, cfg.Host, sq, nil, log); err != nil {
			// They stay running in the history until the next start.
			log.Error("recover records of a previous instance", "err", err)
		}
		if err := adoptStudents(ctx, cfg, dirs, sq, log); err != nil {
			// New students still skip the uids owning students'
			// directories (run.Engine.EnsureStudent looks at them).
			log.Error("adopt students whose records were lost", "err", err)
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

// adoptStudents reads back, from the students' directories, the uids a
// lost store had given out (a database restored from an old backup, a
// package purged and installed again: the files stay). Each directory
// whose name the store does not know is recorded with its owner's uid,
// unless that uid is another student's or outside the range; then the uid
// counter moves above every uid in the range that owns anything there, so
// no uid is ever given to a second student. uid_source = passwd has
// nothing to adopt.
func adoptStudents(ctx context.Context, cfg config.Config, dirs *students.Dirs, st store.Store, log *slog.Logger) error {
	if cfg.UIDSource != students.UIDSourceRange {
		return nil
	}
	t0 := time.Now()
	owners, err := dirs.Scan(cfg.UIDMin, cfg.UIDMax, true)
	if err != nil {
		return err
	}
	known, err := st.ListStudents(ctx)
	if err != nil {
		return fmt.Errorf("list known students: %w", err)
	}
	byName := map[string]uint32{}
	byUID := map[uint32]string{}
	for _, k := range known {
		byName[k.Name], byUID[k.UID] = k.UID, k.Name
	}
	names := make([]string, 0, len(owners.Students))
	for name := range owners.Students {
		names = append(names, name)
	}
	sort.Strings(names)
	adopted := 0
	for _, name := range names {
		uid := owners.Students[name]
		if k, ok := byName[name]; ok {
			if k != uid {
				log.Warn("a student's directory has another owner than its uid", "student", name, "uid", k, "owner", uid)
			}
			continue
		}
		if other, ok := byUID[uid]; ok {
			log.Error("not adopted: the directory's owner is another student's uid", "directory", name, "owner", uid, "student", other)
			continue
		}
		if uid < cfg.UIDMin || uid > cfg.UIDMax {
			log.Warn("not adopted: the directory's owner is outside the uid range", "directory", name, "owner", uid,
				"uid_min", cfg.UIDMin, "uid_max", cfg.UIDMax)
			continue
		}
		ok, err := st.AdoptStudent(ctx, store.Student{Name: name, UID: uid, GID: uid})
		if err != nil {
			return err
		}
		if ok {
			adopted++
			byUID[uid] = name
			log.Warn("student adopted from its directory: its record was lost", "student", name, "uid", uid)
		}
	}
	if owners.MaxUID != 0 {
		if err := st.ReserveUIDs(ctx, owners.MaxUID+1); err != nil {
			return err
		}
	}
	log.Info("read the owners of the students' files", "directories", len(owners.Students), "entries", owners.Entries,
		"adopted", adopted, "highest_uid", owners.MaxUID, "took_ms", time.Since(t0).Milliseconds())
	return nil
}
