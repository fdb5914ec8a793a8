package store_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/store"
)

// chaos is a real SQLite store whose RecordEnd, while chaos is on, fails
// at random and blocks at random: a database that comes and goes under
// load.
type chaos struct {
	store.Store
	on atomic.Bool

	mu  sync.Mutex
	rnd *rand.Rand
}

func (c *chaos) roll() (fail bool, block time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rnd.IntN(3) == 0, time.Duration(c.rnd.IntN(4)) * time.Millisecond
}

func (c *chaos) RecordEnd(ctx context.Context, r *api.Run) error {
	if c.on.Load() {
		fail, block := c.roll()
		time.Sleep(block)
		if fail {
			return errors.New("connection reset (injected)")
		}
	}
	return c.Store.RecordEnd(ctx, r)
}

// TestQueuedLosesNoEndUnderChaos: many writers end runs while the store
// fails and blocks at random and the queue spills (max 3). After a close
// and a restart on a healthy store, every end is in the store exactly
// once, whatever interleaving happened.
func TestQueuedLosesNoEndUnderChaos(t *testing.T) {
	for round := range 5 {
		t.Run(fmt.Sprint("round", round), func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			sq, err := store.OpenSQLite(ctx, dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			seed := uint64(time.Now().UnixNano())
			t.Logf("seed %d", seed)
			c := &chaos{Store: sq, rnd: rand.New(rand.NewPCG(seed, uint64(round)))}
			c.on.Store(true)
			spill := filepath.Join(dir, "pending-ends.jsonl")
			log := slog.New(slog.DiscardHandler)
			q, err := store.NewQueued(c, spill, 3, log)
			if err != nil {
				t.Fatal(err)
			}
			const writers, each = 8, 60
			var wg sync.WaitGroup
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range each {
						r := endedRun(w*1000 + i)
						r.ID = fmt.Sprintf("w%d-%03d", w, i)
						if err := q.RecordEnd(ctx, r); err != nil {
							t.Errorf("RecordEnd %s: %v", r.ID, err)
						}
					}
				}()
			}
			wg.Wait()
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}
			// The next instance, on a store that works, replays the rest.
			sq2, err := store.OpenSQLite(ctx, dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			q2, err := store.NewQueued(sq2, spill, 3, log)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := q2.Close(); err != nil {
					t.Error(err)
				}
			}()
			waitFlushed(q2)
			runs, err := sq2.ListRuns(ctx, store.RunFilter{})
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			for _, r := range runs {
				seen[r.ID] = true
			}
			var lost []string
			for w := range writers {
				for i := range each {
					if id := fmt.Sprintf("w%d-%03d", w, i); !seen[id] {
						lost = append(lost, id)
					}
				}
			}
			if len(lost) > 0 || len(runs) != writers*each {
				t.Fatalf("store holds %d of %d ends; lost %d: %v", len(runs), writers*each, len(lost), lost)
			}
		})
	}
}

// TestQueuedReplayOutlivesACrash: ends replayed from the spill file while
// the store is still down stay in the file, so a crash before they are
// written loses none; once written they leave it.
func TestQueuedReplayOutlivesACrash(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	spill := filepath.Join(dir, "pending-ends.jsonl")
	log := slog.New(slog.DiscardHandler)
	sq, err := store.OpenSQLite(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &flaky{Store: sq}
	f.down.Store(true)
	q, err := store.NewQueued(f, spill, 100, log)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if err := q.RecordEnd(ctx, endedRun(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	// The next instance starts while the store is still down, replays,
	// takes one more end, and is killed.
	sq, err = store.OpenSQLite(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	f = &flaky{Store: sq}
	f.down.Store(true)
	q, err = store.NewQueued(f, spill, 100, log)
	if err != nil {
		t.Fatal(err)
	}
	if n := q.Pending(); n != 4 {
		t.Fatalf("replayed %d ends, want 4", n)
	}
	q.Crash()
	if err := sq.Close(); err != nil {
		t.Fatal(err)
	}
	// The third instance has a store that works: all four arrive.
	sq, err = store.OpenSQLite(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	q, err = store.NewQueued(sq, spill, 100, log)
	if err != nil {
		t.Fatal(err)
	}
	waitFlushed(q)
	runs, err := sq.ListRuns(ctx, store.RunFilter{})
	if err != nil || len(runs) != 4 {
		t.Fatalf("store holds %d ends (%v) after a crash during replay, want 4", len(runs), err)
	}
	if _, err := os.Stat(spill); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("spill file still there once every replayed end was written: %v", err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
}
