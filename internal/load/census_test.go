package load

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/testutil"
)

func TestFDKind(t *testing.T) {
	for _, tc := range []struct {
		fd         int
		target, to string
	}{
		{1, "/var/log/x", "stdio"},
		{5, "/var/lib/idexd/idexd.db-wal", "file"},
		{3, "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "cgroup"},
		{13, "/sys/fs/cgroup/unified/idexd/warm.0123456789abcdef", "warm cgroup"},
		{14, "/sys/fs/cgroup/memory/idexd/warm.0123456789abcdef/memory.max_usage_in_bytes", "warm cgroup file"},
		{16, "pipe:[121820]", "pipe"},
		{11, "socket:[121817]", "socket"},
		{26, "anon_inode:[pidfd]", "pidfd"},
		{6, "anon_inode:[eventpoll]", "eventpoll"},
		{9, "anon_inode:inotify", "inotify"},
		{30, "net:[4026532008]", "ns:net"},
		{31, "mnt:[4026532009]", "ns:mnt"},
		{32, "/proc/4711/net/sockstat6", "netns socket list"},
	} {
		if got := fdKind(tc.fd, tc.target); got != tc.to {
			t.Errorf("fdKind(%d, %q) = %q, want %q", tc.fd, tc.target, got, tc.to)
		}
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/x\134y`: `/x\y`, `/end\04`: `/end\04`} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

// The census must see a namespace that outlives its process, held by a
// child, then by an fd, then by an nsfs bind mount under the daemon's
// directory, and tell the daemon's mounts from the host's. The test
// process plays the daemon.
func TestCensusSeesNamespacesAndMounts(t *testing.T) {
	testutil.RequireRoot(t)
	dir, elsewhere := t.TempDir(), t.TempDir()
	sc := censusScope{pid: os.Getpid(), dirs: ownDirs(dir)}
	take := func(what string) Census {
		t.Helper()
		c, err := takeCensus(sc)
		if err != nil {
			t.Fatalf("census %s: %v", what, err)
		}
		return c
	}
	own := func(c Census, net, uts, ipc, mounts int) {
		t.Helper()
		if c.OwnNS["net"] != net || c.OwnNS["uts"] != uts || c.OwnNS["ipc"] != ipc || c.OwnMounts != mounts {
			t.Errorf("idexd's namespaces %v, mounts %d; want net %d, uts %d, ipc %d, mounts %d", c.OwnNS, c.OwnMounts, net, uts, ipc, mounts)
		}
	}
	c0 := take("before")
	own(c0, 0, 0, 0, 0)

	child := exec.Command("sleep", "600")
	child.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC}
	if err := child.Start(); err != nil {
		t.Fatalf("start a child in new namespaces: %v", err)
	}
	reaped := false
	reap := func() {
		if reaped {
			return
		}
		reaped = true
		if err := child.Process.Kill(); err != nil {
			t.Errorf("kill child: %v", err)
		}
		if err := child.Wait(); err == nil {
			t.Error("the killed child exited 0")
		}
	}
	t.Cleanup(reap)
	c1 := take("with a child in new namespaces")
	own(c1, 1, 1, 1, 0)
	if c1.Children != c0.Children+1 {
		t.Errorf("children %d -> %d, want one more", c0.Children, c1.Children)
	}

	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", child.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	nsOpen := true
	closeNS := func() {
		if nsOpen {
			nsOpen = false
			if err := ns.Close(); err != nil {
				t.Errorf("close namespace fd: %v", err)
			}
		}
	}
	t.Cleanup(closeNS)
	reap()
	c2 := take("with the network namespace held by an fd")
	own(c2, 1, 0, 0, 0)
	if c2.FDs["ns:net"] != 1 {
		t.Errorf("fds by kind %v: want one ns:net", c2.FDs)
	}

	pin := filepath.Join(dir, "netns")
	if err := os.WriteFile(pin, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(fmt.Sprintf("/proc/self/fd/%d", ns.Fd()), pin, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mount the namespace: %v", err)
	}
	mounted := true
	unmount := func(p string) {
		t.Helper()
		if err := unix.Unmount(p, 0); err != nil {
			t.Errorf("unmount %s: %v", p, err)
		}
	}
	t.Cleanup(func() {
		if mounted {
			unmount(pin)
		}
	})
	closeNS()
	c3 := take("with the network namespace held by a bind mount")
	own(c3, 1, 0, 0, 1)
	if c3.NSFS < 1 {
		t.Errorf("nsfs mounts %d, want the bind mount counted", c3.NSFS)
	}
	if g := compareCensus(c0, c3, DefaultThresholds); g.OwnNS != 1 || g.OwnMounts != 1 || len(g.Problems) != 2 {
		t.Errorf("compare before with the pinned namespace: %+v", g)
	}
	unmount(pin)
	mounted = false
	own(take("after the unmount"), 0, 0, 0, 0)

	for _, p := range []string{filepath.Join(dir, "tmp"), elsewhere} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("tmpfs", p, "tmpfs", 0, "size=64k"); err != nil {
			t.Fatalf("mount tmpfs on %s: %v", p, err)
		}
		t.Cleanup(func() { unmount(p) })
	}
	c5 := take("with a tmpfs under the directory and one elsewhere")
	own(c5, 0, 0, 0, 1)
}

func TestCompareCensus(t *testing.T) {
	b := Census{OwnNS: NSCounts{"net": 4}, HostNS: NSCounts{"net": 30, "mnt": 40}, Mounts: 20, NSFS: 1}
	a := Census{OwnNS: NSCounts{"net": 4}, HostNS: NSCounts{"net": 30 + 128, "mnt": 40 + 129}, Mounts: 20 + 17, NSFS: 1 + 4}
	if g := compareCensus(b, a, DefaultThresholds); g.OwnNS != 0 || g.OwnMounts != 0 || g.HostOver != 1+1 || len(g.Problems) != 2 {
		t.Errorf("host growth at and just above the tolerances: %+v", g)
	}
	a.OwnNS = NSCounts{"net": 6, "ipc": 1}
	a.OwnMounts = 2
	a.HostNS = NSCounts{"net": 10}
	if g := compareCensus(b, a, DefaultThresholds); g.OwnNS != 3 || g.OwnMounts != 2 || len(g.Problems) != 4 {
		t.Errorf("idexd's namespaces and mounts grew: %+v", g)
	}
	if g := compareCensus(a, b, DefaultThresholds); g.OwnNS != 0 || g.OwnMounts != 0 || g.HostOver != 0 || len(g.Problems) != 0 {
		t.Errorf("fewer is no leftover: %+v", g)
	}
}
