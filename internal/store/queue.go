package store

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idexd/idexd/internal/api"
)

// Queued wraps a Store so that a run's end record is never lost when the
// store is down (a PostgreSQL restart): a RecordEnd that fails is kept, in
// order, and written again in the background until it succeeds. Ends that
// are still pending at Close are spilled to a file in the state directory
// and replayed at the next start. RecordStart is not queued: a run whose
// start cannot be recorded is refused instead.
//
// An end leaves the queue only to a place that keeps it: the store (a
// write that succeeded) or the spill file (synced). Replayed ends stay in
// the spill file until each is written or spilled again, so a crash while
// they wait loses none of them. Writing an end twice (it was written and,
// meanwhile, spilled) is harmless: RecordEnd is an upsert.
type Queued struct {
	Store
	log   *slog.Logger
	spill string
	max   int

	mu      sync.Mutex
	pending []api.Run
	// popped counts the ends ever removed from pending's front, so that
	// the flusher can tell whether the end it wrote is still the head.
	popped uint64
	// replayLeft is how many of pending's first ends were replayed from
	// the spill file and are still only there and in memory; while it is
	// above zero, the file's first replayBytes bytes hold them.
	replayLeft  int
	replayBytes int64
	closed      bool

	wake chan struct{}
	errs atomic.Int64
	// writeErr is the last failed write (a full disk, a read-only
	// database), until a write succeeds again: health reports it, since
	// a ping alone writes nothing.
	writeErr atomic.Pointer[error]

	stop chan struct{}
	done chan struct{}
}

// NewQueued wraps st; max bounds the pending ends kept in memory (beyond
// it the oldest are spilled to the file at once). It replays a spill file
// left by a previous instance.
func NewQueued(st Store, spillPath string, max int, log *slog.Logger) (*Queued, error) {
	q := &Queued{Store: st, log: log, spill: spillPath, max: max,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	left, size, err := readSpill(spillPath)
	if err != nil {
		// Keep the file for a human, replay what could be read.
		log.Error("spill file is damaged; replaying the records before the damage", "err", err, "kept_as", spillPath+".damaged")
		if rerr := os.Rename(spillPath, spillPath+".damaged"); rerr != nil {
			return nil, errors.Join(err, fmt.Errorf("set damaged spill file aside: %w", rerr))
		}
		// What was read goes back into a sound file before anything else.
		if size, err = appendSpill(spillPath, left); err != nil {
			return nil, err
		}
	}
	if len(left) > 0 {
		log.Warn("replaying run ends a previous instance could not write", "count", len(left), "file", spillPath)
		q.pending, q.replayLeft, q.replayBytes = left, len(left), size
	}
	go q.flusher()
	q.kick()
	return q, nil
}

// RecordStart implements Store; a failure is remembered for health.
func (q *Queued) RecordStart(ctx context.Context, r *api.Run) error {
	return q.noteWrite(ctx, q.Store.RecordStart(ctx, r))
}

// EnsureStudent implements Store; a failure is remembered for health.
func (q *Queued) EnsureStudent(ctx context.Context, name string, min, max uint32) (Student, bool, error) {
	st, created, err := q.Store.EnsureStudent(ctx, name, min, max)
	if errors.Is(err, ErrUIDRangeExhausted) {
		return st, false, err
	}
	return st, created, q.noteWrite(ctx, err)
}

// noteWrite remembers a failed write for health and metrics, unless the
// caller's context ended it (a client that hung up): that says nothing of
// the store.
func (q *Queued) noteWrite(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return err
	}
	if err != nil {
		q.errs.Add(1)
		q.writeErr.Store(&err)
		return err
	}
	q.writeErr.Store(nil)
	return nil
}

// RecordEnd implements Store: it never loses the record.
func (q *Queued) RecordEnd(ctx context.Context, r *api.Run) error {
	q.mu.Lock()
	queued, closed := len(q.pending) > 0, q.closed
	q.mu.Unlock()
	if !queued && !closed {
		err := q.Store.RecordEnd(ctx, r)
		if err == nil {
			q.writeErr.Store(nil)
			return nil
		}
		q.writeErr.Store(&err)
		q.errs.Add(1)
		q.log.Error("record run end: queued until the store answers", "run", r.ID, "err", err)
	}
	// Behind earlier pending ends, so records land in order.
	q.mu.Lock()
	q.pending = append(q.pending, *r)
	over := len(q.pending) - q.max
	if q.closed {
		// Nobody flushes any more: straight to the file.
		over = len(q.pending)
	}
	var err error
	if over > 0 {
		err = q.spillLocked(over)
	}
	q.mu.Unlock()
	if err != nil {
		// Still pending in memory; Close spills it again.
		q.log.Error("spill pending run ends", "err", err)
	}
	q.kick()
	return nil
}

// Pending is how many ends wait for the store (health reports it).
func (q *Queued) Pending() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending)
}

// Errors counts failed writes (metrics).
func (q *Queued) Errors() int64 { return q.errs.Load() }

// Ping implements Store: the store is not healthy while ends are pending.
func (q *Queued) Ping(ctx context.Context) error {
	if err := q.Store.Ping(ctx); err != nil {
		return err
	}
	if n := q.Pending(); n > 0 {
		return fmt.Errorf("%d run ends are waiting to be written", n)
	}
	if e := q.writeErr.Load(); e != nil {
		// Only a write shows that writing works again (a freed disk).
		if p, ok := q.Store.(WriteProber); ok {
			if err := p.ProbeWrite(ctx); err != nil {
				return fmt.Errorf("the last write failed (%w), and a probe write too", *e)
			}
		}
		q.writeErr.Store(nil)
	}
	return nil
}

func (q *Queued) kick() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *Queued) flusher() {
	defer close(q.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-q.stop:
			return
		case <-q.wake:
		case <-t.C:
		}
		q.flush(context.Background())
	}
}

// flush writes pending ends in order until one fails.
func (q *Queued) flush(ctx context.Context) {
	for {
		q.mu.Lock()
		if len(q.pending) == 0 {
			q.mu.Unlock()
			return
		}
		r, head := q.pending[0], q.popped
		q.mu.Unlock()
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := q.Store.RecordEnd(wctx, &r)
		cancel()
		if err != nil {
			q.errs.Add(1)
			return
		}
		q.writeErr.Store(nil)
		q.mu.Lock()
		// While it was written, the head may have been spilled: then it
		// is in the file and in the store, and the new head is not
		// written yet.
		if q.popped == head {
			q.popLocked(1)
		}
		n := len(q.pending)
		q.mu.Unlock()
		q.log.Info("wrote queued run end", "run", r.ID, "still_pending", n)
	}
}

// Close stops the flusher, tries once more, spills what is left, and
// closes the store.
func (q *Queued) Close() error {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	close(q.stop)
	<-q.done
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	q.flush(ctx)
	cancel()
	var errs []error
	q.mu.Lock()
	n := len(q.pending)
	if n > 0 {
		if err := q.spillLocked(n); err != nil {
			errs = append(errs, err)
		} else {
			q.log.Warn("run ends not written to the store were saved for the next start", "count", n, "file", q.spill)
		}
	}
	q.mu.Unlock()
	return errors.Join(append(errs, q.Store.Close())...)
}

// spillLocked appends the n oldest pending ends to the spill file and
// drops them from memory once the file is synced.
func (q *Queued) spillLocked(n int) error {
	n = min(n, len(q.pending))
	if _, err := appendSpill(q.spill, q.pending[:n]); err != nil {
		return err
	}
	q.popLocked(n)
	return nil
}

// popLocked drops the n oldest pending ends, which are now kept elsewhere.
// Once no replayed end is left only in memory, the spill file's head that
// held them is cut off.
func (q *Queued) popLocked(n int) {
	q.pending = q.pending[n:]
	q.popped += uint64(n)
	if q.replayLeft == 0 {
		return
	}
	q.replayLeft = max(q.replayLeft-n, 0)
	if q.replayLeft > 0 {
		return
	}
	if err := dropHead(q.spill, q.replayBytes); err != nil {
		// The replayed ends stay in the file: replayed again next time,
		// written twice, lost never.
		q.log.Error("trim replayed run ends from the spill file", "file", q.spill, "err", err)
	}
	q.replayBytes = 0
}

// appendSpill appends runs to the spill file, syncs it, and returns its size.
func appendSpill(path string, runs []api.Run) (int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("open spill file %s: %w", path, err)
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	for i := range runs {
		if err := enc.Encode(&runs[i]); err != nil {
			return 0, errors.Join(fmt.Errorf("spill run %s: %w", runs[i].ID, err), f.Close())
		}
	}
	if err := w.Flush(); err != nil {
		return 0, errors.Join(fmt.Errorf("write spill file %s: %w", path, err), f.Close())
	}
	if err := f.Sync(); err != nil {
		return 0, errors.Join(fmt.Errorf("sync spill file %s: %w", path, err), f.Close())
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, errors.Join(fmt.Errorf("stat spill file %s: %w", path, err), f.Close())
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("close spill file %s: %w", path, err)
	}
	return fi.Size(), nil
}

// dropHead removes the first n bytes of the spill file: the whole file
// when nothing follows them, else by an atomic rename of the rest.
func dropHead(path string, n int64) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read spill file %s: %w", path, err)
	}
	rest := bytes.TrimLeft(b[min(n, int64(len(b))):], "\n")
	if len(rest) == 0 {
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("remove replayed spill file %s: %w", path, err)
		}
		return nil
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("rewrite spill file %s: %w", path, err)
	}
	_, werr := f.Write(rest)
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		return fmt.Errorf("rewrite spill file %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rewrite spill file %s: %w", path, err)
	}
	return nil
}

// readSpill returns the records of the spill file and the offset after
// the last whole one.
func readSpill(path string) ([]api.Run, int64, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("open spill file %s: %w", path, err)
	}
	defer f.Close() //nolint:errcheck // read-only file
	var out []api.Run
	dec := json.NewDecoder(bufio.NewReader(f))
	var end int64
	for {
		var r api.Run
		err := dec.Decode(&r)
		if errors.Is(err, io.EOF) {
			return out, end, nil
		}
		if err != nil {
			// A torn last line (a crash mid-spill) loses nothing before it.
			return out, end, fmt.Errorf("read spill file %s after %d records: %w", path, len(out), err)
		}
		out = append(out, r)
		end = dec.InputOffset()
	}
}
