package files

import "log/slog"

// StartWorkers, As and Close expose the worker threads to the tests.
func StartWorkers(n int, log *slog.Logger) (*workers, error) { return startWorkers(n, log) }

func (s *workers) As(uid, gid uint32, fn func() error) error { return s.as(uid, gid, fn) }

func (s *workers) Close() { s.close() }
