package run

import (
	"context"
	"errors"
	"fmt"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/store"
	"github.com/idexd/idexd/internal/students"
)

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
