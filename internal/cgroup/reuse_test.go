package cgroup_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/idexd/idexd/internal/cgroup"
	"golang.org/x/sys/unix"
)

// inGroup starts script (python) in g the way the sandbox starts a helper:
// cloned into the v2 group, joined to the v1 groups before it goes on
// (it waits for a line on stdin first).
func inGroup(t *testing.T, g *cgroup.Group, script string) (*exec.Cmd, func()) {
	t.Helper()
	cmd := exec.Command("python3", "-c", "import sys; sys.stdin.readline()\n"+script)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: g.FD()}
	cmd.Stderr = new(bytes.Buffer)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := g.Join(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	return cmd, func() {
		if _, err := in.Write([]byte("go\n")); err != nil {
			t.Fatal(err)
		}
	}
}

// keepingManager is a cgroup manager of its own that keeps one ended
// warm group for the next, removed with the test.
func keepingManager(t *testing.T, name string) *cgroup.Manager {
	t.Helper()
	m := testManager(t, name)
	if err := m.KeepWarmGroups(1); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestWarmGroupsReused: on a hybrid host a warm group whose run ended
// serves the next warm helper, and the next run finds nothing of the
// last one in it: no OOM kill counted, no memory charged, the limits it
// is given. What a late holder of the old group does (a stop's kill, a
// weighing) reaches nothing of the new run. On a unified host the group
// is deleted instead.
func TestWarmGroupsReused(t *testing.T) {
	m := keepingManager(t, "reuse")
	small := cgroup.Limits{MemoryBytes: 48 << 20, Pids: 16, CPUPercent: 100}
	// python's own files in the page cache, charged here: a group that
	// read them first would hold more than a reused group may.
	if out, err := exec.Command("python3", "-c", "import os, sys").CombinedOutput(); err != nil {
		t.Fatalf("python3: %v %s", err, out)
	}
	g1, err := m.CreateWarm("w1", small)
	if err != nil {
		t.Fatal(err)
	}
	// The first run has a child killed by the OOM killer, then leaves
	// 256 KiB of a file in the page cache and ends by itself.
	file := filepath.Join(t.TempDir(), "left.bin")
	cmd, goOn := inGroup(t, g1, "import os\n"+
		"pid = os.fork()\n"+
		"if pid == 0:\n    b = bytearray(96 << 20)\n    os._exit(0)\n"+
		"_, st = os.waitpid(pid, 0)\n"+
		"assert os.WIFSIGNALED(st) and os.WTERMSIG(st) == 9, st\n"+
		"open("+pyQuote(file)+", 'wb').write(b'x' * (256 << 10))\n")
	goOn()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("first run: %v %s", err, cmd.Stderr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g1.KillAndWait(ctx); err != nil {
		t.Fatal(err)
	}
	s1, err := g1.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if s1.OOMKills != 1 {
		t.Fatalf("first run: %d OOM kills, want 1", s1.OOMKills)
	}
	if err := g1.Release(); err != nil {
		t.Fatal(err)
	}

	big := cgroup.Limits{MemoryBytes: 256 << 20, Pids: 32, CPUPercent: 50}
	g2, err := m.CreateWarm("w2", big)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g2.Delete(); err != nil {
			t.Error(err)
		}
	})
	if m.Mode() != cgroup.ModeHybrid {
		if g2.Path() == g1.Path() {
			t.Fatalf("unified: %s reused; v2's peak cannot be reset", g2.Path())
		}
		if _, err := os.Stat(g1.Path()); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("unified: the ended run's group %s is still there (%v)", g1.Path(), err)
		}
		return
	}
	if g2.Path() != g1.Path() {
		t.Fatalf("hybrid: next warm group %s, want %s reused", g2.Path(), g1.Path())
	}
	mem := ""
	for _, d := range g2.V1Dirs() {
		if strings.Contains(d, "/memory/") {
			mem = d
		}
	}
	if got := readFile(t, filepath.Join(mem, "memory.limit_in_bytes")); got != "268435456" {
		t.Errorf("reused group's memory limit %s, want the new 256 MiB", got)
	}
	// What the run left is within what a reused group may hold.
	if got, err := strconv.ParseInt(readFile(t, filepath.Join(mem, "memory.usage_in_bytes")), 10, 64); err != nil || got > 1<<20 {
		t.Errorf("reused group starts with %d bytes charged (%v), want at most 1 MiB", got, err)
	}
	// The second run, alive in the reused group while the old group's
	// late holder kills and weighs it.
	cmd2, _ := inGroup(t, g2, "")
	shares := ""
	for _, d := range g2.V1Dirs() {
		if _, err := os.Stat(filepath.Join(d, "cpu.shares")); err == nil {
			shares = filepath.Join(d, "cpu.shares")
		}
	}
	before := readFile(t, shares)
	if err := g1.Kill(); err != nil {
		t.Fatalf("kill through the released group: %v", err)
	}
	if err := g1.SetShare(0.25); err != nil {
		t.Fatalf("weigh through the released group: %v", err)
	}
	if _, err := g1.Stats(); err == nil {
		t.Error("stats of a released group: no error")
	}
	if after := readFile(t, shares); after != before {
		t.Errorf("the old group's weighing wrote cpu.shares %s -> %s of the new run", before, after)
	}
	time.Sleep(20 * time.Millisecond)
	if pop, err := g2.Populated(); err != nil || !pop {
		t.Fatalf("the new run died of the old group's kill: populated %v, %v", pop, err)
	}
	s2, err := g2.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if s2.OOMKills != 0 {
		t.Errorf("second run: %d OOM kills, want 0 (the first run's counted again)", s2.OOMKills)
	}
	// Stopped: its group was killed, and is not reused.
	if err := g2.KillAndWait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cmd2.Wait(); err == nil {
		t.Error("the stopped run ended well")
	}
	if err := g2.Release(); err != nil {
		t.Fatal(err)
	}
	g3, err := m.CreateWarm("w3", small)
	if err != nil {
		t.Fatal(err)
	}
	if g3.Path() == g2.Path() {
		t.Fatalf("a killed group %s was reused", g3.Path())
	}
	if r, n := m.WarmGroupCounts(); r != 1 || n != 2 {
		t.Errorf("warm groups reused %d, made %d; want 1, 2", r, n)
	}
	// A run that ends by itself: kept, and gone after KeepWarmGroups(0).
	cmd3, goOn3 := inGroup(t, g3, "")
	goOn3()
	if err := cmd3.Wait(); err != nil {
		t.Fatal(err)
	}
	if err := g3.KillAndWait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := g3.Release(); err != nil {
		t.Fatal(err)
	}
	if err := m.KeepWarmGroups(0); err != nil {
		t.Fatal(err)
	}
	for _, d := range append(g3.V1Dirs(), g3.Path()) {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after KeepWarmGroups(0) (%v)", d, err)
		}
	}
}

// TestWarmGroupOverChargeDeleted: a warm group whose run left more than a
// reused group may hold (8 MiB of a file it wrote) is deleted, not
// emptied, and the file stays in the page cache. Emptying it evicted
// whatever its run had read first, the interpreter's own files among
// them, and every later run read them from disk again.
func TestWarmGroupOverChargeDeleted(t *testing.T) {
	m := keepingManager(t, "over")
	lim := cgroup.Limits{MemoryBytes: 64 << 20, Pids: 16, CPUPercent: 100}
	g1, err := m.CreateWarm("w1", lim)
	if err != nil {
		t.Fatal(err)
	}
	// Written back, so that only eviction, not writeback, could take it.
	file := filepath.Join(t.TempDir(), "left.bin")
	cmd, goOn := inGroup(t, g1, "import os\n"+
		"with open("+pyQuote(file)+", 'wb') as f:\n    f.write(b'x' * (8 << 20))\n    f.flush()\n    os.fsync(f.fileno())\n")
	goOn()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("run: %v %s", err, cmd.Stderr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g1.KillAndWait(ctx); err != nil {
		t.Fatal(err)
	}
	if got := residentPages(t, file); got < 2048*9/10 {
		t.Fatalf("before the release only %d of 2048 pages of the file are cached: nothing to check", got)
	}
	if err := g1.Release(); err != nil {
		t.Fatal(err)
	}
	if got := residentPages(t, file); got < 2048*9/10 {
		t.Errorf("after the release %d of 2048 pages of the run's file are cached; the release evicted them", got)
	}
	g2, err := m.CreateWarm("w2", lim)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g2.Delete(); err != nil {
			t.Error(err)
		}
	})
	if g2.Path() == g1.Path() {
		t.Errorf("%s, holding 8 MiB, was reused", g1.Path())
	}
	for _, d := range append(g1.V1Dirs(), g1.Path()) {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after its release (%v)", d, err)
		}
	}
	if r, n := m.WarmGroupCounts(); r != 0 || n != 2 {
		t.Errorf("warm groups reused %d, made %d; want 0, 2", r, n)
	}
}

// residentPages counts the pages of path in the page cache (mincore).
func residentPages(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := f.Close(); err != nil {
			t.Error(err)
		}
	}()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unix.Munmap(mem); err != nil {
			t.Error(err)
		}
	}()
	page := os.Getpagesize()
	vec := make([]byte, (len(mem)+page-1)/page)
	// x/sys/unix has no wrapper for mincore(2).
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatalf("mincore %s: %v", path, errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func pyQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "\\'") + "'" }

// BenchmarkWarmGroup: a warm group's making and release per run, made
// and removed each time (keep 0) or reused (keep 1; hybrid hosts).
func BenchmarkWarmGroup(b *testing.B) {
	for _, keep := range []int{0, 1} {
		name := map[int]string{0: "made", 1: "reused"}[keep]
		b.Run(name, func(b *testing.B) {
			var r [4]byte
			_, _ = rand.Read(r[:])
			m, err := cgroup.New("idexd-test/bench-" + hex.EncodeToString(r[:]))
			if err != nil {
				b.Fatal(err)
			}
			defer func() {
				if err := m.RemoveParent(); err != nil {
					b.Error(err)
				}
			}()
			if err := m.KeepWarmGroups(keep); err != nil {
				b.Fatal(err)
			}
			lim := cgroup.Limits{MemoryBytes: 256 << 20, Pids: 64, CPUPercent: 100}
			for i := 0; b.Loop(); i++ {
				g, err := m.CreateWarm(strconv.Itoa(i), lim)
				if err != nil {
					b.Fatal(err)
				}
				if err := g.ResetPeak(); err != nil {
					b.Fatal(err)
				}
				if _, err := g.Stats(); err != nil {
					b.Fatal(err)
				}
				if err := g.Release(); err != nil {
					b.Fatal(err)
				}
			}
			if err := m.KeepWarmGroups(0); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// TestKeptFilesReadAnew: a warm group keeps its files open (hybrid), and
// what it reads through them is the kernel's figure at each read, not the
// first read's: the run's memory grows by 32 MiB between two reads. The
// files are closed with the group, in idexd's fd table too.
func TestKeptFilesReadAnew(t *testing.T) {
	m := keepingManager(t, "files")
	g, err := m.CreateWarm("f1", cgroup.Limits{MemoryBytes: 256 << 20, Pids: 16, CPUPercent: 100})
	if err != nil {
		t.Fatal(err)
	}
	cmd, goOn := inGroup(t, g, "b = bytearray(32 << 20)\nsys.stdin.readline()\n")
	before, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	kept := m.OpenFiles()
	if hybrid := m.Mode() == cgroup.ModeHybrid; hybrid != (kept > 0) {
		t.Fatalf("%s host: %d cgroup files kept open", m.Mode(), kept)
	}
	goOn()
	var after cgroup.Stats
	for deadline := time.Now().Add(10 * time.Second); after.Memory < before.Memory+32<<20; {
		if time.Now().After(deadline) {
			t.Fatalf("memory read %d bytes before the run's 32 MiB, %d after: not read anew", before.Memory, after.Memory)
		}
		time.Sleep(10 * time.Millisecond)
		if after, err = g.Stats(); err != nil {
			t.Fatal(err)
		}
	}
	if m.OpenFiles() != kept {
		t.Errorf("cgroup files kept open %d -> %d over the same reads", kept, m.OpenFiles())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait() // killed: its error is the kill's
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.KillAndWait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := g.Release(); err != nil {
		t.Fatal(err)
	}
	if err := m.KeepWarmGroups(0); err != nil {
		t.Fatal(err)
	}
	if n := m.OpenFiles(); n != 0 {
		t.Errorf("%d cgroup files still open with no group left", n)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		target, err := os.Readlink("/proc/self/fd/" + fd.Name())
		if err == nil && strings.Contains(target, filepath.Base(g.Path())) {
			t.Errorf("fd %s still open on %s", fd.Name(), target)
		}
	}
}
