package run

import (
	"github.com/idexd/idexd/internal/api"
)

// watchLease stops the run with reason lock_lost if its lock is taken
// from it: a shared lease that expired while this host could not renew it,
// and that another run (on any host) then took. Two runs of one script
// would race over the same files; the newer holder has the lock, so this
// one goes. Only leases that can be lost cost a goroutine.
func (r *Execution) watchLease() {
	lost := r.lease.Lost()
	if lost == nil {
		return
	}
	go func() {
		select {
		case <-lost:
		case <-r.done:
			return
		}
		r.mu.Lock()
		if r.reason == "" && r.info.State == api.StateRunning {
			r.reason = api.ReasonLockLost
			r.info.Error = "stopped: its lock was taken over by another run (this host could not renew the lease within lease_ttl)"
		}
		r.mu.Unlock()
		r.e.log.Error("run's lock was taken over by another run: stopping it", "run", r.id, "student", r.info.Student, "script", r.info.Script)
		r.kill(api.ReasonLockLost)
	}()
}
