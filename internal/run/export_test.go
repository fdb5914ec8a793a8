package run

// GrantThenCountStop makes room for one more run (max_runs + 1), gives it
// to the next waiting start, and counts an admin stop of student, all
// under one hold of the engine's lock: what happens when a run ends and
// an admin stops the student whose start got its slot before that start's
// goroutine wakes. No test can hit that window by timing.
func (e *Engine) GrantThenCountStop(student string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cfg.MaxRuns++
	e.dispatchLocked()
	e.studentLocked(student).stops++
}
