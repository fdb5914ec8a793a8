package store

// Crash stops the flusher without writing or spilling anything, as a
// kill -9 would: what is only in memory is gone.
func (q *Queued) Crash() {
	close(q.stop)
	<-q.done
}
