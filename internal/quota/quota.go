// Package quota keeps each student's disk use within the configured
// limits (quota_mb, quota_files).
//
// Where the workdir filesystem has user quotas on and enforced (ext4 or
// XFS mounted with usrquota), the kernel does it: every student has a uid
// of their own, so Apply sets that uid's hard limits with quotactl, and a
// program past them gets EDQUOT ("Disk quota exceeded"), as on a shell
// account. Root bypasses quota limits (CAP_SYS_RESOURCE), so idexd's own
// writes on a student's behalf are made without that capability (package
// files).
//
// Elsewhere (EFS and other NFS, tmpfs, a filesystem mounted without
// usrquota) idexd measures: it walks the student's directory after each
// run and keeps the count up to date on each write through the file
// routes, and refuses new runs and writes with quota_exceeded while the
// student is past a limit. A run itself is then bounded only by its other
// limits (file size, time): the refusal comes at the next run or write.
package quota

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/api"
)

// Limits are one student's disk limits; 0 means none.
type Limits struct {
	Bytes int64
	Files int64
}

// Config wires a Manager.
type Config struct {
	// Root is the workdir root: its filesystem is the one probed.
	Root   string
	Limits Limits
	Log    *slog.Logger
	// Walks bounds how many directories are measured at once (default 2):
	// each walk holds up to one fd per level of the tree.
	Walks int
}

// Manager applies and checks students' disk limits.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	rootFD int
	kernel bool
	status string
	walks  chan struct{}
	bg     sync.WaitGroup

	mu      sync.Mutex
	applied map[uint32]bool
	usage   map[string]*usage
}

// usage is what idexd last measured of one student (measured mode).
type usage struct {
	mu    sync.Mutex // held while measuring and while a write is charged
	known bool
	stale bool // a run ended since: measure before trusting it
	u     Usage
	err   error
}

// New probes the workdir root's filesystem for enforced user quotas.
func New(cfg Config) (*Manager, error) {
	if cfg.Log == nil {
		return nil, errors.New("quota: Log is required")
	}
	if cfg.Walks <= 0 {
		cfg.Walks = 2
	}
	fd, err := unix.Open(cfg.Root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("quota: open workdir root %s: %w", cfg.Root, err)
	}
	m := &Manager{cfg: cfg, log: cfg.Log, rootFD: fd, walks: make(chan struct{}, cfg.Walks),
		applied: map[uint32]bool{}, usage: map[string]*usage{}}
	fs := fsName(fd)
	enforced, why := kernelState(fd)
	m.kernel = enforced
	if enforced {
		m.status = fmt.Sprintf("enforced by the kernel: user quotas on %s (%s)", cfg.Root, fs)
	} else {
		m.status = fmt.Sprintf("enforced by idexd, measured after each run and on each write: %s on %s has no enforced user quotas: %s", fs, cfg.Root, why)
	}
	return m, nil
}

// Close waits for measurements in flight and releases the root's fd.
func (m *Manager) Close() error {
	m.bg.Wait()
	if err := unix.Close(m.rootFD); err != nil {
		return fmt.Errorf("quota: close workdir root: %w", err)
	}
	return nil
}

// EnforcedBy is api.EnforcedByKernel or api.EnforcedByIdexd.
func (m *Manager) EnforcedBy() string {
	if m.kernel {
		return api.EnforcedByKernel
	}
	return api.EnforcedByIdexd
}

// Status says who enforces the limits and why: for the start-up log and
// health.
func (m *Manager) Status() string { return m.status }

// HealthChecks is the disk_quota check of health: who enforces quotas and
// why. Said, never degraded: measuring is the documented way on NFS.
func (m *Manager) HealthChecks(context.Context) []api.Check {
	return []api.Check{{Name: "disk_quota", OK: true, Message: m.Status()}}
}

// Limits are the configured limits.
func (m *Manager) Limits() Limits { return m.cfg.Limits }

// Apply sets uid's kernel quota to the configured limits, once per uid
// for the life of the daemon (so a restart applies changed limits). It
// does nothing where idexd measures.
func (m *Manager) Apply(uid uint32) error {
	if !m.kernel {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.applied[uid] {
		return nil
	}
	if err := setKernelLimits(m.rootFD, uid, m.cfg.Limits); err != nil {
		return err
	}
	m.applied[uid] = true
	return nil
}

// Disk is the student's usage and limits: the kernel's count, or idexd's
// last measurement (measured now if there is none, or a run ended since).
func (m *Manager) Disk(ctx context.Context, st api.Student) api.Disk {
	d := api.Disk{LimitBytes: m.cfg.Limits.Bytes, LimitFiles: m.cfg.Limits.Files, EnforcedBy: m.EnforcedBy()}
	if m.kernel {
		q, err := getKernelUsage(m.rootFD, st.UID)
		if err != nil {
			d.Error = err.Error()
			return d
		}
		d.UsedBytes, d.UsedFiles = int64(q.CurSpace), int64(q.CurInodes)
		d.LimitBytes, d.LimitFiles = int64(q.BHardLimit)*qifBlockSize, int64(q.IHardLimit)
		return d
	}
	u := m.entry(st.Name)
	if err := m.lockFresh(ctx, u, st); err != nil {
		d.Error = err.Error()
		return d
	}
	defer u.mu.Unlock()
	d.UsedBytes, d.UsedFiles = u.u.Bytes, u.u.Files
	if u.err != nil {
		d.Error = u.err.Error()
	}
	return d
}

func (m *Manager) entry(student string) *usage {
	m.mu.Lock()
	defer m.mu.Unlock()
	u := m.usage[student]
	if u == nil {
		u = &usage{}
		m.usage[student] = u
	}
	return u
}

// lockFresh locks u, measuring first when nothing is known or a run ended
// since the last measurement. It returns with u.mu held unless it fails.
func (m *Manager) lockFresh(ctx context.Context, u *usage, st api.Student) error {
	u.mu.Lock()
	m.mu.Lock()
	fresh := u.known && !u.stale
	u.stale = false
	m.mu.Unlock()
	if fresh {
		return nil
	}
	if err := m.measure(ctx, u, st); err != nil {
		u.mu.Unlock()
		return err
	}
	return nil
}

// measure walks the student's directory (u.mu held). A walk that fails
// keeps the last numbers and the error; only a canceled wait fails.
func (m *Manager) measure(ctx context.Context, u *usage, st api.Student) error {
	select {
	case m.walks <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("measure disk use of %s: %w", st.Name, ctx.Err())
	}
	got, err := Measure(st.Workdir)
	<-m.walks
	u.known = true
	if err != nil {
		u.err = fmt.Errorf("measure disk use of %s: %w", st.Name, err)
		m.log.Warn("measure a student's disk use", "student", st.Name, "err", err)
		if errors.Is(err, errTooDeep) {
			// Refused rather than trusted: what lies deeper is not counted.
			u.u = got
			u.u.Files = max(u.u.Files, m.cfg.Limits.Files+1)
		}
		return nil
	}
	u.u, u.err = got, nil
	return nil
}

// RunEnded measures the student's directory again, in the background;
// the next run, write or read of the usage waits for it. Where the kernel
// enforces, it does nothing.
func (m *Manager) RunEnded(st api.Student) {
	if m.kernel {
		return
	}
	u := m.entry(st.Name)
	m.mu.Lock()
	u.stale = true
	m.mu.Unlock()
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		if err := m.lockFresh(context.Background(), u, st); err != nil {
			m.log.Warn("measure a student's disk use after a run", "student", st.Name, "err", err)
			return
		}
		u.mu.Unlock()
	}()
}

// AfterRuns extends a run engine's Ended hook (which may be nil) with
// RunEnded; workdir names a student's directory.
func (m *Manager) AfterRuns(ended func(*api.Run, time.Duration), workdir func(string) string) func(*api.Run, time.Duration) {
	return func(r *api.Run, stop time.Duration) {
		if ended != nil {
			ended(r, stop)
		}
		m.RunEnded(api.Student{Name: r.Student, UID: r.UID, GID: r.GID, Workdir: workdir(r.Student)})
	}
}

// Admit refuses with quota_exceeded while the student is past a limit that
// idexd measures; where the kernel enforces it admits everything.
func (m *Manager) Admit(ctx context.Context, st api.Student) error {
	if m.kernel {
		return nil
	}
	u := m.entry(st.Name)
	if err := m.lockFresh(ctx, u, st); err != nil {
		return err
	}
	defer u.mu.Unlock()
	return m.check(st, u.u, 0, 0)
}

func (m *Manager) check(st api.Student, cur Usage, addBytes, addFiles int64) error {
	lim := m.cfg.Limits
	after := Usage{Bytes: cur.Bytes + addBytes, Files: cur.Files + addFiles}
	if lim.Bytes > 0 && after.Bytes > lim.Bytes && addBytes >= 0 {
		return api.Errorf(api.CodeQuotaExceeded, "student %s would use %d bytes of disk, over the quota of %d bytes (quota_mb): delete files first",
			st.Name, after.Bytes, lim.Bytes)
	}
	if lim.Files > 0 && after.Files > lim.Files && addFiles >= 0 {
		return api.Errorf(api.CodeQuotaExceeded, "student %s would have %d files, over the quota of %d (quota_files): delete files first",
			st.Name, after.Files, lim.Files)
	}
	return nil
}

// Charge runs commit, which makes a write visible, if the student's usage
// plus addBytes and addFiles stays within the limits, and counts the
// change once commit succeeds. A change that frees space (a delete) is
// never refused. Where the kernel enforces, it only runs commit: the write
// itself was already charged by the kernel, or refused with EDQUOT.
func (m *Manager) Charge(ctx context.Context, st api.Student, addBytes, addFiles int64, commit func() error) error {
	if m.kernel {
		return commit()
	}
	u := m.entry(st.Name)
	if err := m.lockFresh(ctx, u, st); err != nil {
		return err
	}
	defer u.mu.Unlock()
	if err := m.check(st, u.u, addBytes, addFiles); err != nil {
		return err
	}
	if err := commit(); err != nil {
		return err
	}
	u.u.Bytes = max(u.u.Bytes+addBytes, 0)
	u.u.Files = max(u.u.Files+addFiles, 0)
	return nil
}
