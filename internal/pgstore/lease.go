package pgstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/lock"
)

// DefaultLeaseTTL is the lease lifetime when Locker is given none: how long
// the locks of a host that died stay held before another host may take them.
const DefaultLeaseTTL = 30 * time.Second

// Locker is the execution-lock table shared by every host on the same
// database. A lock is a row of leases with an expiry; its holder renews it
// every ttl/3 while the run lasts, so a host that dies (kill -9, power
// loss, network cut) loses its locks after at most ttl, and no lock is
// held forever.
//
// Every acquisition gets a new fencing token from a sequence. Renewal and
// release match (run_id, token), so a holder whose lease expired and was
// taken over can neither extend nor delete the new holder's lease.
type Locker struct {
	s   *Store
	ttl time.Duration

	acquired atomic.Int64
	released atomic.Int64
	lost     atomic.Int64
}

var _ lock.Locker = (*Locker)(nil)

// MinLeaseTTL is the shortest ttl Locker accepts: renewals every ttl/3
// must have time to reach the database.
const MinLeaseTTL = 300 * time.Millisecond

// Locker returns the shared lock table with leases of the given ttl
// (DefaultLeaseTTL if ttl <= 0, at least MinLeaseTTL). It uses the store's
// pool; Close of the store stops renewing the leases still held, which
// then expire.
func (s *Store) Locker(ttl time.Duration) *Locker {
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	return &Locker{s: s, ttl: max(ttl, MinLeaseTTL)}
}

// acquireSQL takes the lock in one statement: a new row, or the row of an
// expired lease (the database's clock decides, not the hosts'). If the
// lease is live, the WHERE of DO UPDATE is false and no row comes back.
// A concurrent acquirer of the same key waits for the first to commit and
// then sees a live lease.
const acquireSQL = `INSERT INTO leases AS l (student, script, host, run_id, token, expires_at)
	VALUES ($1, $2, $3, $4, nextval('lease_tokens'), now() + $5::bigint * interval '1 microsecond')
	ON CONFLICT (student, script) DO UPDATE
		SET host = excluded.host, run_id = excluded.run_id, token = excluded.token,
			acquired_at = now(), expires_at = excluded.expires_at
		WHERE l.expires_at < now()
	RETURNING token`

// Acquire implements lock.Locker. A lock held by a live lease fails with
// api.ErrLocked naming the holder's run id.
func (l *Locker) Acquire(ctx context.Context, key lock.Key, runID string) (lock.Lease, error) {
	ctx, cancel := l.s.op(ctx)
	defer cancel()
	// A few tries: between the INSERT that found a live lease and the
	// read of its holder, the holder may release or its lease expire.
	for range 3 {
		var token int64
		err := l.s.pool.QueryRow(ctx, acquireSQL, key.Student, key.Script, l.s.host, runID, l.ttl.Microseconds()).Scan(&token)
		if err == nil {
			return l.start(key, runID, token)
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return nil, l.s.fail(err, "acquire lock %s for run %s", key, runID)
		}
		var holder, host string
		var expired bool
		err = l.s.pool.QueryRow(ctx, `SELECT run_id, host, expires_at < now() FROM leases WHERE student = $1 AND script = $2`,
			key.Student, key.Script).Scan(&holder, &host, &expired)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && expired) {
			continue
		}
		if err != nil {
			return nil, l.s.fail(err, "acquire lock %s for run %s: read holder", key, runID)
		}
		return nil, &api.Error{
			Code:    api.CodeLocked,
			Message: fmt.Sprintf("%s of student %s is already running as run %s on host %s", key.Script, key.Student, holder, host),
			RunID:   holder,
		}
	}
	return nil, l.s.fail(errors.New("the lock kept changing hands"), "acquire lock %s for run %s", key, runID)
}

// start begins renewing a lease just taken.
func (l *Locker) start(key lock.Key, runID string, token int64) (*Lease, error) {
	le := &Lease{l: l, key: key, runID: runID, token: token, lost: make(chan struct{}), done: make(chan struct{})}
	if !l.s.track() {
		// The store is closing: do not leave the row to expire.
		ctx, cancel := context.WithTimeout(context.Background(), l.s.timeout)
		defer cancel()
		err := le.delete(ctx)
		return nil, errors.Join(fmt.Errorf("acquire lock %s for run %s: store is closed", key, runID), err)
	}
	rctx, stop := context.WithCancel(l.s.bg)
	le.stop = stop
	l.acquired.Add(1)
	go le.renew(rctx)
	return le, nil
}

// ReleaseHost deletes every lease of host. A daemon calls it once when it
// starts, before taking any lock: leases left by its previous instance
// (which died with them) are then free at once instead of after the ttl.
func (l *Locker) ReleaseHost(ctx context.Context, host string) (int, error) {
	ctx, cancel := l.s.op(ctx)
	defer cancel()
	tag, err := l.s.pool.Exec(ctx, `DELETE FROM leases WHERE host = $1`, host)
	if err != nil {
		return 0, l.s.fail(err, "release leases of host %s", host)
	}
	return int(tag.RowsAffected()), nil
}

// Held is how many leases this Locker handed out that were not released.
func (l *Locker) Held() int { return int(l.acquired.Load() - l.released.Load()) }

// Counts returns how many leases were acquired and released so far, as
// lock.Table does, for the same metrics.
func (l *Locker) Counts() (acquired, released int64) {
	return l.acquired.Load(), l.released.Load()
}

// Lost is how many leases were found taken over by another run while
// their holder still ran (renewals failed for longer than the ttl).
func (l *Locker) Lost() int64 { return l.lost.Load() }

// Lease is one held lock.
type Lease struct {
	l     *Locker
	key   lock.Key
	runID string
	token int64

	stop context.CancelFunc
	done chan struct{} // closed when renew returns
	lost chan struct{} // closed when the lease was taken over
	once sync.Once
}

// Token is the lease's fencing token; a newer holder of the same lock
// always has a greater one.
func (le *Lease) Token() int64 { return le.token }

// Lost is closed if the lease expired and another run took the lock while
// this one was held: the run then no longer has exclusive use of its script.
func (le *Lease) Lost() <-chan struct{} { return le.lost }

// renew extends the lease every ttl/3 until stopped. A failed renewal is
// logged and retried at the next tick: the lease survives a database
// outage shorter than about two thirds of the ttl.
func (le *Lease) renew(ctx context.Context) {
	defer le.l.s.wg.Done()
	defer close(le.done)
	every := le.l.ttl / 3
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, every)
		tag, err := le.l.s.pool.Exec(rctx, `UPDATE leases SET expires_at = now() + $5::bigint * interval '1 microsecond'
			WHERE student = $1 AND script = $2 AND run_id = $3 AND token = $4`,
			le.key.Student, le.key.Script, le.runID, le.token, le.l.ttl.Microseconds())
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			le.l.s.log.Warn("renew lock lease failed; retrying", "lock", le.key.String(), "run", le.runID, "ttl", le.l.ttl, "err", err)
		case tag.RowsAffected() == 0:
			le.l.lost.Add(1)
			le.l.s.log.Error("lock lease lost: it expired and another run took the lock", "lock", le.key.String(), "run", le.runID, "token", le.token)
			close(le.lost)
			return
		}
	}
}

// stopRenewal stops renewing without deleting the row, as when the host
// dies. Release calls it; tests call it alone to play a killed host.
func (le *Lease) stopRenewal() {
	le.stop()
	<-le.done
}

// Release implements lock.Lease. Only the first call does anything: it
// stops the renewal and deletes the row if it is still this lease's (same
// run id and token), so a late Release never frees a newer holder's lock.
// If the database cannot be reached, the error is returned and the lease
// expires by itself within the ttl.
func (le *Lease) Release(ctx context.Context) error {
	var err error
	le.once.Do(func() {
		le.stopRenewal()
		le.l.released.Add(1)
		ctx, cancel := le.l.s.op(ctx)
		defer cancel()
		err = le.delete(ctx)
	})
	return err
}

func (le *Lease) delete(ctx context.Context) error {
	tag, err := le.l.s.pool.Exec(ctx, `DELETE FROM leases WHERE student = $1 AND script = $2 AND run_id = $3 AND token = $4`,
		le.key.Student, le.key.Script, le.runID, le.token)
	if err != nil {
		return le.l.s.fail(err, "release lock %s of run %s (it expires by itself within %s)", le.key, le.runID, le.l.ttl)
	}
	if tag.RowsAffected() == 0 {
		le.l.s.log.Warn("released lock lease was already gone (expired, maybe taken by another run)", "lock", le.key.String(), "run", le.runID, "token", le.token)
	}
	return nil
}
