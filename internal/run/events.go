package run

import (
	"sync"
	"time"

	"github.com/idexd/idexd/internal/api"
)

// A run's events are kept compactly (issue 14.9): a program that writes one
// byte every millisecond used to cost an api.Event (about 250 bytes of heap
// with its string) per byte. Output is appended to one byte buffer; each
// event is a 12-byte entry into it. While no reader has seen the newest
// event, more output of the same stream grows it instead of adding an
// entry, and readers are woken at most every wakeEvery, so a follower
// takes a trickle in pieces of at least that interval. Memory per live run
// is then bounded by its output cap (output_kb) plus 12 bytes per event,
// and events by min(output bytes, wall seconds / wakeEvery).

// wakeEvery is the least time between two wake-ups of a run's readers
// by output. The first output after a quiet spell wakes them at once, so a
// prompt is not delayed.
const wakeEvery = 10 * time.Millisecond

// maxEventBytes caps how far one event grows by coalescing.
const maxEventBytes = 64 << 10

// entryBytes is what an entry costs beyond its payload.
const entryBytes = 12

type entryKind uint8

const (
	kindStdout entryKind = iota
	kindStderr
	kindOther // off indexes eventLog.others
)

type logEntry struct {
	off  uint32
	n    uint32
	kind entryKind
}

// eventLog is a run's events; its methods are called with the run's mu
// held, except the wake timer's callback, which takes it.
type eventLog struct {
	mu      *sync.Mutex
	data    []byte
	entries []logEntry
	others  []api.Event
	// open: a reader has not yet been given the last entry, so output of
	// its stream may still grow it.
	open     bool
	ended    bool // no more output: a held-back tail goes out as it is
	changed  chan struct{}
	lastWake time.Time
	timer    *time.Timer
	pending  bool // timer armed
}

func newEventLog(mu *sync.Mutex) *eventLog {
	return &eventLog{mu: mu, changed: make(chan struct{})}
}

func kindOf(t api.EventType) entryKind {
	if t == api.EventStderr {
		return kindStderr
	}
	return kindStdout
}

func (k entryKind) eventType() api.EventType {
	if k == kindStderr {
		return api.EventStderr
	}
	return api.EventStdout
}

// appendOutput adds output of one stream, growing the last event when it
// may.
func (l *eventLog) appendOutput(t api.EventType, p []byte) {
	if len(p) == 0 {
		return
	}
	k := kindOf(t)
	if n := len(l.entries); l.open && n > 0 {
		last := &l.entries[n-1]
		if last.kind == k && int(last.n)+len(p) <= maxEventBytes {
			l.data = append(l.data, p...)
			last.n += uint32(len(p))
			l.wake(false)
			return
		}
	}
	l.entries = append(l.entries, logEntry{off: uint32(len(l.data)), n: uint32(len(p)), kind: k})
	l.data = append(l.data, p...)
	l.open = true
	l.wake(false)
}

// appendEvent adds an event that is not output; readers learn of it at once.
func (l *eventLog) appendEvent(ev api.Event) {
	if ev.Type == api.EventEnd {
		l.ended = true
	}
	l.entries = append(l.entries, logEntry{off: uint32(len(l.others)), kind: kindOther})
	l.others = append(l.others, ev)
	l.open = false
	l.wake(true)
}

// wake tells the readers; output wakes them at most every wakeEvery.
func (l *eventLog) wake(now bool) {
	t := time.Now()
	if !now {
		if l.pending {
			return
		}
		if wait := wakeEvery - t.Sub(l.lastWake); wait > 0 {
			l.pending = true
			if l.timer == nil {
				l.timer = time.AfterFunc(wait, l.timerWake)
			} else {
				l.timer.Reset(wait)
			}
			return
		}
	}
	if l.pending {
		l.pending = false
		l.timer.Stop()
	}
	l.lastWake = t
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *eventLog) timerWake() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.pending {
		return
	}
	l.pending = false
	l.lastWake = time.Now()
	close(l.changed)
	l.changed = make(chan struct{})
}

// stop disarms the wake timer; the end event has woken the readers.
func (l *eventLog) stop() {
	if l.timer != nil {
		l.timer.Stop()
	}
	l.pending = false
}

// after returns the events after seq, and a channel closed when more
// arrive. Handing out the last entry closes it to growth. A last entry
// that ends inside a UTF-8 sequence is held back until the sequence is
// complete (or the run ends), so a character written in two pieces
// reaches a reader whole.
func (l *eventLog) after(seq int64) ([]api.Event, <-chan struct{}) {
	if seq < 0 {
		seq = 0
	}
	end := int64(len(l.entries))
	if end > seq && l.open && !l.ended {
		last := l.entries[end-1]
		if incompleteTail(l.data[last.off:last.off+last.n]) > 0 {
			end--
		}
	}
	if seq >= end {
		return nil, l.changed
	}
	evs := make([]api.Event, 0, end-seq)
	for i := seq; i < end; i++ {
		e := l.entries[i]
		if e.kind == kindOther {
			ev := l.others[e.off]
			ev.Seq = i + 1
			evs = append(evs, ev)
			continue
		}
		evs = append(evs, api.OutputEvent(i+1, e.kind.eventType(), l.data[e.off:e.off+e.n]))
	}
	if end == int64(len(l.entries)) {
		l.open = false
	}
	return evs, l.changed
}

// bytes is what the log holds in memory, for keep_ended_mb.
func (l *eventLog) bytes() int64 {
	return int64(cap(l.data)) + int64(cap(l.entries))*entryBytes + int64(len(l.others))*eventOverhead
}
