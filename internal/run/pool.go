package run

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/sandbox"
)

// pool keeps warm slots: a helper already inside a prepared cgroup (v1
// groups joined), with its stdio pipes, waiting to be told whom to become.
// Making a slot costs the slow v1 cgroup move; making it here, ahead of
// time, keeps that cost off the path from Run to first output. A nil pool
// (size 0) hands out nothing and every run starts cold.
type pool struct {
	cg    *cgroup.Manager
	lim   cgroup.Limits
	bin   sandbox.Binary
	log   *slog.Logger
	slots chan *slot
	kick  chan struct{}
	stop  chan struct{}
	done  chan struct{}
}

type slot struct {
	id    string
	group *cgroup.Group
	child *sandbox.Child
	pipes *pipes // parent ends only
}

func newPool(size int, cg *cgroup.Manager, lim cgroup.Limits, bin sandbox.Binary, log *slog.Logger) *pool {
	if size <= 0 {
		return nil
	}
	p := &pool{cg: cg, lim: lim, bin: bin, log: log, slots: make(chan *slot, size),
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go p.fill()
	return p
}

// take returns a warm slot, or nil when there is none ready (or no pool).
func (p *pool) take() *slot {
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

func (p *pool) fill() {
	defer close(p.done)
	backoff := time.Duration(0)
	for {
		for len(p.slots) < cap(p.slots) {
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
				p.log.Error("prepare warm slot; runs start cold meanwhile", "err", err, "retry_in", backoff)
				break
			}
			backoff = 0
			p.slots <- s
		}
		wait := time.Minute
		if backoff > 0 {
			wait = backoff
		}
		select {
		case <-p.stop:
			return
		case <-p.kick:
		case <-time.After(wait):
		}
	}
}

// refillDelay holds back a refill while a slot is still ready. A new slot
// costs ~5 ms of CPU (the helper's Go start-up, cgroup writes); made at
// once, it competes on a small host with the interpreter that the claimed
// slot just started, which is the moment a student waits for. An empty
// pool refills at once.
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

func (p *pool) make() (_ *slot, err error) {
	s := &slot{id: newID()}
	s.group, err = p.cg.CreateWarm(s.id, p.lim)
	if err != nil {
		return nil, err
	}
	pp, err := newPipes()
	if err != nil {
		return nil, errors.Join(err, s.group.Delete())
	}
	s.child, err = p.bin.StartWarm(s.group.FD(), pp.childStdio())
	if cerr := pp.closeChildEnds(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err != nil {
		return nil, errors.Join(err, pp.closeParentEnds(), s.group.Delete())
	}
	s.pipes = pp
	if err := s.group.Join(s.child.Pid()); err != nil {
		return nil, errors.Join(err, s.discard())
	}
	return s, nil
}

// discard ends an unused slot: the helper exits without running anything.
func (s *slot) discard() error {
	errs := []error{s.child.Abort()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	errs = append(errs, s.group.KillAndWait(ctx))
	if _, err := s.child.Wait(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, s.pipes.closeParentEnds(), s.group.Delete())
	return errors.Join(errs...)
}

// close stops refilling and discards the idle slots.
func (p *pool) close() error {
	if p == nil {
		return nil
	}
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
