package cgroup

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
)

// Fair share between students (issue 12). Every group at the parent's
// level is a student's group (<parent>/<student>, holding the student's
// runs when there is no warm pool) or one beside them (<parent>/warm.<id>:
// a warm helper's, or with a pool a cold run's), and the scheduler
// divides the CPU between the runnable ones by their weights. A student's
// runs together must weigh one student's share, wherever they live: the
// student's group weighs the part of the share its runs hold, and each
// group beside it that holds one of the student's runs weighs one run's part
// (the run engine keeps both up to date as the student's runs start and
// end). Weights are relative between siblings only, which is why warm
// groups are siblings of the students' groups rather than children of a
// pool directory: such a directory's single weight would have to stand
// for whichever of its runs are runnable at the moment.

// weightText is share (of one student's CPU share) in the mode's weight
// file. One share is the kernel's default weight, so that a group nobody
// weighed (an idle warm helper, a student's group before its first run)
// counts as one student.
func weightText(mode Mode, share float64) (file, val string) {
	file, unit, lo, hi := "cpu.weight", 100.0, 1, 10000
	if mode == ModeHybrid {
		file, unit, lo, hi = "cpu.shares", 1024, 2, 262144
	}
	w := int(math.Round(share * unit))
	return file, strconv.Itoa(min(max(w, lo), hi))
}

// cpuDir is the directory of rel (under the parent) in the hierarchy that
// holds CPU weights, or "" when the host gives idexd no cpu controller.
func (m *Manager) cpuDir(rel string) (string, error) {
	if m.mode == ModeHybrid {
		p, err := m.v1Parent(cgroup1.Cpu)
		if err != nil {
			return "", fmt.Errorf("find v1 cpu parent: %w", err)
		}
		return filepath.Join("/sys/fs/cgroup", string(cgroup1.Cpu), p, rel), nil
	}
	if slices.Contains(m.missing, "cpu") {
		return "", nil
	}
	return filepath.Join(m.v2Mount, m.v2Parent, rel), nil
}

// SetStudentShare weighs the student's group (the runs in it) as share of
// one student's CPU share. A student whose group does not exist (no run
// in it yet) is left alone.
func (m *Manager) SetStudentShare(student string, share float64) error {
	dir, err := m.cpuDir(student)
	if err != nil || dir == "" {
		return err
	}
	file, val := weightText(m.mode, share)
	if err := writeFile(filepath.Join(dir, file), []byte(val)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("weigh student %s's cgroup (%s = %s): %w", student, file, val, err)
	}
	return nil
}

// SetShare weighs the group as share of one student's CPU share: for a
// warm helper's group, claimed by one of a student's runs. A group
// already deleted (the run ended meanwhile) is no error.
//
// A released group is no error either, and is left alone: its
// directories may be another run's by now.
func (g *Group) SetShare(share float64) error {
	err := g.live(func() error { return g.setShare(share) })
	if errors.Is(err, errReleased) {
		return nil
	}
	return err
}

func (g *Group) setShare(share float64) error {
	dir := g.v2Path
	if g.v1 != nil {
		dir = g.v1Dirs[cgroup1.Cpu]
	} else if slices.Contains(g.v2Missing, "cpu") {
		return nil
	}
	file, val := weightText(g.mode, share)
	if err := g.files.write(filepath.Join(dir, file), []byte(val)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("weigh cgroup %s (%s = %s): %w", dir, file, val, err)
	}
	return nil
}

// SetStudentTotals makes every student's group bound the memory (with
// swap, as for runs) and the tasks of all the student's runs together;
// zero fields set no bound. It covers the runs in the student's group
// only: warm helpers' groups are not in it, so totals need warm_runs = 0
// (config refuses them together). Call it before the first run.
func (m *Manager) SetStudentTotals(lim Limits) { m.studentTotals = lim }

// prepareStudent creates the student's group with its totals, when there
// are totals; the run's own group is then made inside it.
func (m *Manager) prepareStudent(student string) error {
	lim := m.studentTotals
	if lim.MemoryBytes == 0 && lim.Pids == 0 {
		return nil
	}
	if m.mode == ModeUnified {
		res := &cgroup2.Resources{}
		if lim.MemoryBytes > 0 && !slices.Contains(m.missing, "memory") {
			res.Memory = &cgroup2.Memory{Max: &lim.MemoryBytes}
		}
		if lim.Pids > 0 && !slices.Contains(m.missing, "pids") {
			res.Pids = &cgroup2.Pids{Max: lim.Pids}
		}
		path := filepath.Join(m.v2Parent, student)
		if _, err := cgroup2.NewManager(m.v2Mount, path, res); err != nil {
			return fmt.Errorf("create student %s's cgroup with its totals: %w", student, err)
		}
		if res.Memory != nil {
			return setV2Swap(filepath.Join(m.v2Mount, path))
		}
		return nil
	}
	dir := func(n cgroup1.Name) (string, error) {
		p, err := m.v1Parent(n)
		if err != nil {
			return "", fmt.Errorf("find v1 %s parent: %w", n, err)
		}
		d := filepath.Join("/sys/fs/cgroup", string(n), p, student)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", fmt.Errorf("create student %s's %s cgroup: %w", student, n, err)
		}
		return d, nil
	}
	if lim.MemoryBytes > 0 {
		d, err := dir(cgroup1.Memory)
		if err != nil {
			return err
		}
		if err := setV1MemoryLimit(nil, d, lim.MemoryBytes, m.v1Swap); err != nil {
			return fmt.Errorf("student %s's memory total: %w", student, err)
		}
	}
	if lim.Pids > 0 {
		d, err := dir(cgroup1.Pids)
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(d, "pids.max"), []byte(strconv.FormatInt(lim.Pids, 10))); err != nil {
			return fmt.Errorf("student %s's task total: %w", student, err)
		}
	}
	return nil
}

// setV1MemoryLimit sets a v1 memory group's limit and, with swap
// accounting, its memory+swap limit to the same value: memsw must never be
// below memory, so raising writes memsw first and lowering memory first.
// (cgroup1's Update swaps the wrong pair of settings: raising a warm
// group's 256 MiB to 512 failed with EINVAL.)
func setV1MemoryLimit(files *fileCache, dir string, bytes int64, swap bool) error {
	cur, err := files.readInt(filepath.Join(dir, "memory.limit_in_bytes"))
	if err != nil {
		return err
	}
	order := []string{"memory.limit_in_bytes"}
	if swap {
		order = append(order, "memory.memsw.limit_in_bytes")
		if bytes > cur {
			order[0], order[1] = order[1], order[0]
		}
	}
	v := strconv.FormatInt(bytes, 10)
	for _, f := range order {
		if err := files.write(filepath.Join(dir, f), []byte(v)); err != nil {
			return fmt.Errorf("set %s of %s to %s: %w", f, dir, v, err)
		}
	}
	return nil
}
