package lock

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/idexd/idexd/internal/api"
)

func TestTableLockedNamesHolder(t *testing.T) {
	tb := NewTable()
	ctx := context.Background()
	k := Key{Student: "alice", Script: "main.py"}
	l, err := tb.Acquire(ctx, k, "r1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = tb.Acquire(ctx, k, "r2")
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeLocked || ae.RunID != "r1" {
		t.Fatalf("second acquire: %v, want locked naming r1", err)
	}
	if _, err := tb.Acquire(ctx, Key{Student: "bob", Script: "main.py"}, "r3"); err != nil {
		t.Fatalf("another student's script: %v", err)
	}
	for range 3 {
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if acq, rel := tb.Counts(); acq != 2 || rel != 1 {
		t.Fatalf("counts %d/%d after three releases of one lease, want 2/1", acq, rel)
	}
	// A stale lease released again cannot free a newer holder's lock.
	l2, err := tb.Acquire(ctx, k, "r4")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Acquire(ctx, k, "r5"); !errors.Is(err, api.ErrLocked) {
		t.Fatalf("after a stale release: %v, want still locked by r4", err)
	}
	if err := l2.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestTableConcurrent: many goroutines race for a few keys; at most one
// holds each key at any moment and every release counts once.
func TestTableConcurrent(t *testing.T) {
	tb := NewTable()
	ctx := context.Background()
	keys := []Key{{"a", "1"}, {"a", "2"}, {"b", "1"}}
	holders := make([]atomic.Int32, len(keys))
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				ki := (g + i) % len(keys)
				l, err := tb.Acquire(ctx, keys[ki], "run")
				if errors.Is(err, api.ErrLocked) {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				if n := holders[ki].Add(1); n != 1 {
					t.Errorf("%d holders of %v", n, keys[ki])
				}
				holders[ki].Add(-1)
				var rw sync.WaitGroup
				for range 3 { // concurrent releases of one lease
					rw.Add(1)
					go func() { defer rw.Done(); _ = l.Release(ctx) }()
				}
				rw.Wait()
			}
		}()
	}
	wg.Wait()
	acq, rel := tb.Counts()
	if acq != rel || tb.Held() != 0 || acq == 0 {
		t.Fatalf("acquired %d released %d held %d", acq, rel, tb.Held())
	}
}
