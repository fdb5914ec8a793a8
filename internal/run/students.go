package run

import (
	"context"
	"errors"
	"fmt"
	"os/user"
	"strconv"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/store"
	"github.com/idexd/idexd/internal/students"
)

// EnsureStudent returns the student's uid, gid and directory, creating
// what is missing (PUT /v1/students/{name}); a new student is logged with
// its uid.
func (e *Engine) EnsureStudent(ctx context.Context, name string) (api.Student, error) {
	if err := students.ValidName(name); err != nil {
		return api.Student{}, err
	}
	var st store.Student
	var created bool
	var err error
	switch e.cfg.UIDSource {
	case students.UIDSourcePasswd:
		st, created, err = e.passwdStudent(ctx, name)
	default:
		st, created, err = e.allocate(ctx, name)
	}
	if err != nil {
		return api.Student{}, err
	}
	out, err := e.studentDir(e.apiStudent(st))
	if err == nil && created {
		e.log.Info("student created", "student", name, "uid", st.UID, "gid", st.GID, "uid_source", e.cfg.UIDSource, "workdir", out.Workdir)
	}
	return out, err
}

// allocate returns the student's uid from the store. Before a new uid is
// given out, the counter moves above every uid in the range that owns a
// student's directory, so that a uid owning files there (given out by a
// store since lost, or by another one) never goes to a second student.
func (e *Engine) allocate(ctx context.Context, name string) (store.Student, bool, error) {
	st, err := e.cfg.Store.GetStudent(ctx, name)
	switch {
	case err == nil:
		return st, false, nil
	case !errors.Is(err, api.ErrStudentNotFound):
		return store.Student{}, false, storeError(ctx, err, "read student %s", name)
	}
	owners, err := e.cfg.Dirs.Scan(e.cfg.UIDMin, e.cfg.UIDMax, false)
	if err != nil {
		return store.Student{}, false, fmt.Errorf("ensure student %s: read who owns the students' directories: %w", name, err)
	}
	if owners.MaxUID != 0 {
		if err := e.cfg.Store.ReserveUIDs(ctx, owners.MaxUID+1); err != nil {
			return store.Student{}, false, storeError(ctx, err, "ensure student %s: skip the uids that own directories", name)
		}
	}
	st, created, err := e.cfg.Store.EnsureStudent(ctx, name, e.cfg.UIDMin, e.cfg.UIDMax)
	if err != nil && !errors.Is(err, store.ErrUIDRangeExhausted) {
		err = storeError(ctx, err, "ensure student %s", name)
	}
	return st, created, err
}

// passwdStudent takes the ids of the student's system account and records
// them when the store does not have them yet (created).
func (e *Engine) passwdStudent(ctx context.Context, name string) (store.Student, bool, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return store.Student{}, false, api.Wrap(api.CodeStudentNotFound, err, "student %s has no system account (uid_source = passwd)", name)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return store.Student{}, false, fmt.Errorf("parse ids of account %s: %w", name, err)
	}
	st := store.Student{Name: name, UID: uint32(uid), GID: uint32(gid)}
	known, err := e.cfg.Store.GetStudent(ctx, name)
	switch {
	case err == nil && known == st:
		return st, false, nil
	case err != nil && !errors.Is(err, api.ErrStudentNotFound):
		return store.Student{}, false, storeError(ctx, err, "read student %s", name)
	}
	if err := e.cfg.Store.PutStudent(ctx, st); err != nil {
		return store.Student{}, false, storeError(ctx, err, "record student %s", name)
	}
	return st, true, nil
}

// GetStudent returns a known student; student_not_found for any other. It
// creates nothing.
func (e *Engine) GetStudent(ctx context.Context, name string) (api.Student, error) {
	if err := students.ValidName(name); err != nil {
		return api.Student{}, err
	}
	st, err := e.cfg.Store.GetStudent(ctx, name)
	if errors.Is(err, api.ErrStudentNotFound) {
		return api.Student{}, api.Errorf(api.CodeStudentNotFound,
			"student %s does not exist: create it first (PUT /v1/students/%s, or idexctl student %s)", name, name, name)
	}
	if err != nil {
		return api.Student{}, storeError(ctx, err, "read student %s", name)
	}
	return e.apiStudent(st), nil
}

// ListStudents returns every known student, by name.
func (e *Engine) ListStudents(ctx context.Context) ([]api.Student, error) {
	sts, err := e.cfg.Store.ListStudents(ctx)
	if err != nil {
		return nil, storeError(ctx, err, "list students")
	}
	out := make([]api.Student, 0, len(sts))
	for _, st := range sts {
		out = append(out, e.apiStudent(st))
	}
	return out, nil
}

func (e *Engine) apiStudent(st store.Student) api.Student {
	return api.Student{Name: st.Name, UID: st.UID, GID: st.GID, Workdir: e.cfg.Dirs.Workdir(st.Name)}
}

// runStudent is the student a run starts as: known already (a run never
// creates a student, so a typo costs no uid), with a uid above the floor
// and its directory in shape.
func (e *Engine) runStudent(ctx context.Context, name string) (api.Student, error) {
	st, err := e.GetStudent(ctx, name)
	if err != nil {
		return api.Student{}, err
	}
	return e.studentDir(st)
}

// studentDir checks the student's ids against the floor and ensures its
// directory, owned by it.
func (e *Engine) studentDir(st api.Student) (api.Student, error) {
	if st.UID == 0 || st.UID < e.cfg.UIDMin || st.GID == 0 {
		return api.Student{}, api.Errorf(api.CodeInvalidStudent, "student %s has uid %d gid %d: below the floor %d", st.Name, st.UID, st.GID, e.cfg.UIDMin)
	}
	wd, err := e.cfg.Dirs.Ensure(st.Name, st.UID, st.GID)
	if err != nil {
		return api.Student{}, fmt.Errorf("ensure directory of student %s: %w", st.Name, err)
	}
	st.Workdir = wd
	return st, nil
}
