package pgstore

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/lock"
	"github.com/idexd/idexd/internal/testutil/pgtest"
)

// TestLazyRecoversBeforeServing: a database that comes up after the
// daemon is opened, then recovered, and only then serves; a lock asked
// for while the recovery runs is refused, so no run of this instance can
// be ended as a previous instance's leftover.
func TestLazyRecoversBeforeServing(t *testing.T) {
	pg := pgtest.NewCluster(t)
	if err := pg.Halt(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ready := make(chan *Lazy, 1)
	during := make(chan error, 1)
	var recovered atomic.Int32
	lz := OpenLazy(ctx, LazyConfig{
		URL: pg.URL("postgres"), Host: "h", LeaseTTL: testTTL, Log: logger(t),
		RetryMin: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond,
		Recover: func(ctx context.Context, _ *Store, _ *Locker) error {
			recovered.Add(1)
			lz := <-ready
			_, err := lz.Acquire(ctx, lock.Key{Student: "s", Script: "a.py"}, "new-run")
			during <- err
			return nil
		},
	})
	ready <- lz
	if err := lz.Ping(ctx); !errors.Is(err, api.ErrStoreUnavailable) {
		t.Fatalf("ping with the database down: %v, want store_unavailable", err)
	}
	if err := pg.Resume(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-during:
		if !errors.Is(err, api.ErrStoreUnavailable) {
			t.Fatalf("a lock asked for during the recovery: %v, want store_unavailable", err)
		}
	case <-ctx.Done():
		t.Fatal("the store never opened")
	}
	for lz.Ping(ctx) != nil {
		if ctx.Err() != nil {
			t.Fatal("the store never served after its recovery")
		}
		time.Sleep(20 * time.Millisecond)
	}
	le, err := lz.Acquire(ctx, lock.Key{Student: "s", Script: "a.py"}, "new-run")
	if err != nil {
		t.Fatalf("lock after the recovery: %v", err)
	}
	if err := le.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := lz.Close(); err != nil {
		t.Fatal(err)
	}
	if n := recovered.Load(); n != 1 {
		t.Fatalf("recovery ran %d times, want once", n)
	}
}

// TestLazyRecoveryFailureRetries: a failed recovery closes the store, which
// stays unavailable, and the next try recovers again.
func TestLazyRecoveryFailureRetries(t *testing.T) {
	url := pgtest.Start(t)
	var tries atomic.Int32
	lz := OpenLazy(ctxT(t), LazyConfig{
		URL: url, Host: "h", LeaseTTL: testTTL, Log: logger(t),
		RetryMin: 50 * time.Millisecond, RetryMax: 100 * time.Millisecond,
		Recover: func(context.Context, *Store, *Locker) error {
			if tries.Add(1) == 1 {
				return errors.New("injected")
			}
			return nil
		},
	})
	defer func() {
		if err := lz.Close(); err != nil {
			t.Error(err)
		}
	}()
	if tries.Load() == 1 {
		if err := lz.Ping(ctxT(t)); !errors.Is(err, api.ErrStoreUnavailable) {
			t.Fatalf("ping after a failed recovery: %v, want store_unavailable", err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for lz.Ping(ctxT(t)) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the store never served after a second recovery")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := tries.Load(); n != 2 {
		t.Fatalf("recovery ran %d times, want 2 (one failed)", n)
	}
}
