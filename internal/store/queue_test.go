package store_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/store"
)

// flaky is a real SQLite store whose writes fail while down is set: the
// fault a PostgreSQL restart causes.
type flaky struct {
	store.Store
	down atomic.Bool
}

func (f *flaky) RecordEnd(ctx context.Context, r *api.Run) error {
	if f.down.Load() {
		return errors.New("connection refused (injected)")
	}
	return f.Store.RecordEnd(ctx, r)
}

func (f *flaky) RecordStart(ctx context.Context, r *api.Run) error {
	if f.down.Load() {
		return errors.New("database or disk is full (injected)")
	}
	return f.Store.RecordStart(ctx, r)
}

func (f *flaky) Ping(ctx context.Context) error {
	if f.down.Load() {
		return errors.New("connection refused (injected)")
	}
	return f.Store.Ping(ctx)
}

func endedRun(i int) *api.Run {
	now := time.Now().UTC().Truncate(time.Millisecond)
	code := i
	return &api.Run{ID: fmt.Sprintf("r%03d", i), Host: "h", Student: "alice", UID: 200000, GID: 200000,
		Script: "main.py", Mode: api.ModeScript, State: api.StateEnded, Reason: api.ReasonExited,
		ExitCode: &code, StartedAt: now, EndedAt: &now}
}

func TestQueuedKeepsEndsWhileStoreIsDown(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	open := func() (*flaky, *store.Queued) {
		sq, err := store.OpenSQLite(ctx, dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		f := &flaky{Store: sq}
		q, err := store.NewQueued(f, filepath.Join(dir, "pending-ends.jsonl"), 5, log)
		if err != nil {
			t.Fatal(err)
		}
		return f, q
	}
	f, q := open()
	f.down.Store(true)
	for i := range 8 {
		if err := q.RecordEnd(ctx, endedRun(i)); err != nil {
			t.Fatalf("RecordEnd while down returned %v: it must keep the record instead", err)
		}
	}
	if err := q.Ping(ctx); err == nil {
		t.Fatal("Ping is nil while the store is down and ends are pending")
	}
	// Beyond max (5) the oldest went to the spill file, the rest stay queued.
	if n := q.Pending(); n != 5 {
		t.Fatalf("pending %d, want 5 in memory (3 spilled)", n)
	}
	// Shut down while still down: everything goes to the spill file.
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	// The next instance replays them once the store answers.
	f, q = open()
	defer func() {
		if err := q.Close(); err != nil {
			t.Error(err)
		}
	}()
	waitFlushed(q)
	if n := q.Pending(); n != 0 {
		t.Fatalf("pending %d after the store came back", n)
	}
	runs, err := f.ListRuns(ctx, store.RunFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 8 {
		t.Fatalf("store holds %d runs, want all 8", len(runs))
	}
	for _, r := range runs {
		if r.State != api.StateEnded || r.ExitCode == nil || fmt.Sprintf("r%03d", *r.ExitCode) != r.ID {
			t.Errorf("run %s came back as %+v", r.ID, r)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "pending-ends.jsonl")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("spill file still there after replay: %v", err)
	}
}

func TestQueuedFlushesInOrderWhenStoreReturns(t *testing.T) {
	ctx := context.Background()
	sq, err := store.OpenSQLite(ctx, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &flaky{Store: sq}
	q, err := store.NewQueued(f, filepath.Join(t.TempDir(), "spill"), 100, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := q.Close(); err != nil {
			t.Error(err)
		}
	}()
	f.down.Store(true)
	for i := range 10 {
		if err := q.RecordEnd(ctx, endedRun(i)); err != nil {
			t.Fatal(err)
		}
	}
	f.down.Store(false)
	// A new end arrives while older ones wait: it queues behind them.
	if err := q.RecordEnd(ctx, endedRun(10)); err != nil {
		t.Fatal(err)
	}
	waitFlushed(q)
	runs, err := f.ListRuns(ctx, store.RunFilter{})
	if err != nil || len(runs) != 11 || q.Pending() != 0 {
		t.Fatalf("store holds %d runs (%v), pending %d: want 11 and 0", len(runs), err, q.Pending())
	}
	if err := q.Ping(ctx); err != nil {
		t.Fatalf("Ping after recovery: %v", err)
	}
}

// TestQueuedHealthSeesFailedWrites: a store that answers pings but cannot
// write (a full disk) is not healthy until a write succeeds again.
func TestQueuedHealthSeesFailedWrites(t *testing.T) {
	ctx := context.Background()
	sq, err := store.OpenSQLite(ctx, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &flaky{Store: sq}
	q, err := store.NewQueued(f, filepath.Join(t.TempDir(), "spill"), 100, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := q.Close(); err != nil {
			t.Error(err)
		}
	}()
	f.down.Store(true)
	if err := q.RecordStart(ctx, endedRun(1)); err == nil {
		t.Fatal("RecordStart on a full disk succeeded")
	}
	// The flaky wrapper hides the SQLite store's probe, so only a real
	// write clears the failure here.
	f.down.Store(false)
	if err := q.Ping(ctx); err != nil {
		t.Fatalf("Ping once writes work again: %v", err)
	}
	f.down.Store(true)
	if err := q.RecordStart(ctx, endedRun(2)); err == nil {
		t.Fatal("RecordStart on a full disk succeeded")
	}
	if err := q.Ping(ctx); err == nil {
		t.Fatal("Ping is nil although the last write failed and the store is down")
	}
	f.down.Store(false)
	if err := q.RecordStart(ctx, endedRun(3)); err != nil {
		t.Fatal(err)
	}
	if err := q.Ping(ctx); err != nil {
		t.Fatalf("Ping after a successful write: %v", err)
	}
}

// waitFlushed waits (30 s at most) until q has written every pending end;
// the callers then check the store.
func waitFlushed(q *store.Queued) {
	deadline := time.Now().Add(30 * time.Second)
	for q.Pending() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}
