package sandbox

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sync"
	"time"
)

// pool keeps warm helpers: each already in a prepared cgroup (v1 groups
// joined) with its namespaces built, waiting to be told whom to become.
// Making one costs the slow parts of a start; making it here, ahead of
// time, keeps them off the path from Run to first output. A nil pool
// (size 0) hands out nothing and every run starts cold.
type pool struct {
	sb *Sandbox
	// size is how many helpers fill makes ready ahead of runs; slots holds
	// up to KeptGroups(size), the rest being helpers kept after their runs
	// (put), until trim.
	size  int
	slots chan *Process
	// keep is how long helpers beyond size wait without a helper taken or
	// put back before they end (Config.WarmKeep).
	keep time.Duration
	// mu orders put against close: nothing is put once close drains.
	mu     sync.Mutex
	closed bool
	kick   chan struct{}
	stop   chan struct{}
	done   chan struct{}
}

func newPool(sb *Sandbox, size int, keep time.Duration) *pool {
	if size <= 0 {
		return nil
	}
	p := &pool{sb: sb, size: size, keep: keep, slots: make(chan *Process, KeptGroups(size)),
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go p.fill()
	return p
}

// take returns a warm helper, or nil when none is ready (or no pool).
func (p *pool) take() *Process {
	if p == nil {
		return nil
	}
	select {
	case s := <-p.slots:
		select {
		case p.kick <- struct{}{}:
		default:
		}
		return s
	default:
		return nil
	}
}

// put gives back a helper kept after its run; false when the pool is full
// or closing, and the caller then discards it.
func (p *pool) put(s *Process) bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	select {
	case p.slots <- s:
	default:
		return false
	}
	// fill waits again, to trim the helpers beyond the size once none
	// comes or goes for keep.
	select {
	case p.kick <- struct{}{}:
	default:
	}
	return true
}

func (p *pool) fill() {
	defer close(p.done)
	backoff := time.Duration(0)
	for {
		for len(p.slots) < p.size {
			select {
			case <-p.stop:
				return
			default:
			}
			if !p.quietEnough() {
				return
			}
			s, err := p.make()
			if err != nil {
				backoff = min(max(2*backoff, 100*time.Millisecond), 10*time.Second)
				p.sb.cfg.Log.Error("prepare warm helper; runs start cold meanwhile", "err", err, "retry_in", backoff)
				break
			}
			backoff = 0
			if !p.put(s) {
				// Closing, or kept helpers filled the slots meanwhile.
				if err := s.discard(); err != nil {
					p.sb.cfg.Log.Error("discard warm helper", "helper", s.Pid(), "err", err)
				}
			}
		}
		// Wake for a retry after a failure, or to trim the helpers beyond
		// the size; else only when a helper is taken or put back.
		var wait time.Duration
		if backoff > 0 {
			wait = backoff
		}
		if len(p.slots) > p.size && (wait == 0 || p.keep < wait) {
			wait = p.keep
		}
		var timeout <-chan time.Time
		if wait > 0 {
			timeout = time.After(wait)
		}
		select {
		case <-p.stop:
			return
		case <-p.kick:
		case <-timeout:
			p.trim()
		}
	}
}

// trim discards the helpers beyond the pool's size.
func (p *pool) trim() {
	for len(p.slots) > p.size {
		select {
		case s := <-p.slots:
			if err := s.discard(); err != nil {
				p.sb.cfg.Log.Error("discard a kept helper beyond the pool's size", "helper", s.Pid(), "err", err)
			}
		default:
			return
		}
	}
}

// refillDelay holds back a refill while a helper is still ready. A new
// helper costs several ms of CPU (namespaces, the Go runtime's start-up,
// cgroup writes); made at once, it competes on a small host with the
// interpreter that the claimed helper just started, which is the moment a
// student waits for. An empty pool refills at once.
const refillDelay = 50 * time.Millisecond

// quietEnough waits until refilling should go on: at once when the pool is
// empty, else after refillDelay without a take that empties it. It returns
// false when the pool is closing.
func (p *pool) quietEnough() bool {
	if len(p.slots) == 0 {
		return true
	}
	t := time.NewTimer(refillDelay)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return false
		case <-t.C:
			return true
		case <-p.kick:
			if len(p.slots) == 0 {
				return true
			}
		}
	}
}

func (p *pool) make() (*Process, error) {
	id := newID()
	g, err := p.sb.cfg.Cgroups.CreateWarm(id, p.sb.cfg.WarmLimits)
	if err != nil {
		return nil, err
	}
	return p.sb.start(g, func(string) error { return nil })
}

func newID() string {
	var b [8]byte
	// crypto/rand.Read never fails on Linux (Go 1.24+ guarantees it).
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// close stops refilling and discards the idle helpers.
func (p *pool) close() error {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	close(p.stop)
	<-p.done
	var errs []error
	for {
		select {
		case s := <-p.slots:
			errs = append(errs, s.discard())
		default:
			return errors.Join(errs...)
		}
	}
}
