// Package store keeps what must outlive the daemon: every run's record,
// and each student's uid. SQLite in the state directory is the embedded
// default; PostgreSQL (see package pgstore) shares the same state among
// many hosts. Both implement Store and pass the same test suite
// (package storetest).
package store

import (
	"context"
	"errors"

	"github.com/idexd/idexd/internal/api"
)

// ErrUIDRangeExhausted means every uid of the configured range was given out.
var ErrUIDRangeExhausted = errors.New("uid range exhausted")

// Student is a student's record.
type Student struct {
	Name string
	UID  uint32
	GID  uint32
}

// RunFilter selects runs for ListRuns: the protocol's filter.
type RunFilter = api.RunFilter

// Store is the persistent state.
type Store interface {
	// Kind names the backend for health ("sqlite", "postgres").
	Kind() string
	// EnsureStudent returns the student's uid, allocating the next one of
	// [min, max] the first time (created is true then). A uid is never
	// given to a second student.
	EnsureStudent(ctx context.Context, name string, min, max uint32) (st Student, created bool, err error)
	// GetStudent returns api.ErrStudentNotFound for an unknown student.
	GetStudent(ctx context.Context, name string) (Student, error)
	// PutStudent records a student whose uid came from elsewhere (passwd).
	PutStudent(ctx context.Context, s Student) error
	// AdoptStudent records a student found on disk (its directory's
	// owner) whose record was lost, unless its name or its uid is known
	// already: adopted says whether it was recorded.
	AdoptStudent(ctx context.Context, s Student) (adopted bool, err error)
	// ReserveUIDs moves the uid counter to at least next, so that no uid
	// below it is given out again; it never moves it back.
	ReserveUIDs(ctx context.Context, next uint32) error
	ListStudents(ctx context.Context) ([]Student, error)
	// RecordStart writes the durable "started" record; it must succeed
	// before the child exists.
	RecordStart(ctx context.Context, r *api.Run) error
	// RecordEnd writes the final record of a run.
	RecordEnd(ctx context.Context, r *api.Run) error
	GetRun(ctx context.Context, id string) (api.Run, error)
	ListRuns(ctx context.Context, f RunFilter) ([]api.Run, error)
	Ping(ctx context.Context) error
	Close() error
}

// WriteProber is a store that can prove writing works (a full disk
// answers pings): health asks it after a write failed.
type WriteProber interface {
	ProbeWrite(ctx context.Context) error
}
