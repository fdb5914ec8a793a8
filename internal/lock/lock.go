// Package lock holds the execution locks: one per (student, script), so a
// second Run of a script that is running is refused instead of racing the
// first over the same files.
//
// A Lease is given back with Release, which is idempotent: the first call
// releases, every later call is a no-op. The run engine calls it from one
// place, but a second call can never free a lock that a newer run took.
package lock

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/idexd/idexd/internal/api"
)

// Key names what a lock protects.
type Key struct {
	Student string
	// Script is the canonical path relative to the student's directory.
	Script string
}

func (k Key) String() string { return k.Student + ":" + k.Script }

// Locker hands out leases. The in-process Table is one; the PostgreSQL
// store provides one shared by many hosts.
type Locker interface {
	// Acquire takes the lock for runID, or fails with api.ErrLocked naming
	// the holder's run id.
	Acquire(ctx context.Context, key Key, runID string) (Lease, error)
}

// Lease is one held lock.
type Lease interface {
	// Release gives the lock back. Only the first call does anything.
	Release(ctx context.Context) error
	// Lost is closed if the lock was taken from its holder (a shared
	// lease that expired and another run took); nil if that cannot happen.
	Lost() <-chan struct{}
}

// Stats is a Locker that counts its leases (debug state, metrics).
type Stats interface {
	// Held is how many leases are held now.
	Held() int
	// Counts is how many were acquired and released so far.
	Counts() (acquired, released int64)
	// Lost is how many were taken from their holders (Lease.Lost).
	Lost() int64
}

// Table is the in-process Locker.
type Table struct {
	mu       sync.Mutex
	held     map[Key]string
	acquired atomic.Int64
	released atomic.Int64
}

// NewTable returns an empty table.
func NewTable() *Table { return &Table{held: make(map[Key]string)} }

// Acquire implements Locker.
func (t *Table) Acquire(_ context.Context, key Key, runID string) (Lease, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if holder, ok := t.held[key]; ok {
		return nil, &api.Error{
			Code:    api.CodeLocked,
			Message: fmt.Sprintf("%s of student %s is already running as run %s", key.Script, key.Student, holder),
			RunID:   holder,
		}
	}
	t.held[key] = runID
	t.acquired.Add(1)
	return &tableLease{t: t, key: key, runID: runID}, nil
}

// Held is how many locks are held now.
func (t *Table) Held() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.held)
}

// Lost implements Stats: an in-process lock is never taken away.
func (t *Table) Lost() int64 { return 0 }

// Counts returns how many leases were acquired and released so far.
func (t *Table) Counts() (acquired, released int64) {
	return t.acquired.Load(), t.released.Load()
}

type tableLease struct {
	t     *Table
	key   Key
	runID string
	once  sync.Once
}

// Lost implements Lease: an in-process lock is never taken away.
func (l *tableLease) Lost() <-chan struct{} { return nil }

func (l *tableLease) Release(context.Context) error {
	l.once.Do(func() {
		l.t.mu.Lock()
		defer l.t.mu.Unlock()
		if l.t.held[l.key] == l.runID {
			delete(l.t.held, l.key)
			l.t.released.Add(1)
		}
	})
	return nil
}
