package files_test

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/quota"
	"github.com/idexd/idexd/internal/students"
	"github.com/idexd/idexd/internal/testutil"
)

// kernelQuotaMissing says why this kernel cannot enforce ext4 user quotas
// ("" when it can, or when its config cannot be read).
func kernelQuotaMissing() string {
	f, err := os.Open("/proc/config.gz")
	if err != nil {
		return ""
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		return ""
	}
	cfg, err := io.ReadAll(z)
	if err != nil {
		return ""
	}
	for _, opt := range []string{"CONFIG_QUOTA", "CONFIG_QFMT_V2"} {
		if bytes.Contains(cfg, []byte("# "+opt+" is not set")) {
			return "this kernel is built without " + opt + " (ext4's quota feature needs it)"
		}
	}
	return ""
}

// loopExt4 mounts a new 64 MiB ext4 with user quotas enforced (the quota
// feature, mounted with usrquota) on a loop device, for this test only.
func loopExt4(t *testing.T) string {
	t.Helper()
	dir := testutil.TraversableDir(t)
	img, mnt := filepath.Join(dir, "ext4.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-O", "quota", "-E", "quotatype=usrquota", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 (e2fsprogs): %v: %s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop,usrquota", img, mnt).CombinedOutput(); err != nil {
		if why := kernelQuotaMissing(); why != "" {
			// Not a pass: make quota-vm-test runs this test on Debian 12's
			// kernel in qemu, and .ci/run does so on such a host.
			t.Skipf("cannot mount an ext4 with user quotas: %s (mount: %s); make quota-vm-test runs this test in a VM whose kernel has it", why, bytes.TrimSpace(out))
		}
		t.Fatalf("mount -o loop,usrquota: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	if err := os.Chmod(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	return mnt
}

// TestKernelQuota: on an ext4 with user quotas, the kernel enforces each
// student's limits: on the student's own programs (EDQUOT, errno 122), and
// on idexd's writes, which are made without root's CAP_SYS_RESOURCE.
func TestKernelQuota(t *testing.T) {
	testutil.RequireRoot(t)
	mnt := loopExt4(t)
	root := filepath.Join(mnt, "students")
	f := newFixtureAt(t, root, quota.Limits{Bytes: 200 << 10, Files: 20}, students.LayoutPrivate)
	if f.quota.EnforcedBy() != api.EnforcedByKernel {
		t.Fatalf("quotas on an ext4 mounted with usrquota: %s", f.quota.Status())
	}
	alice := f.student(t, "alice")
	chunk := strings.Repeat("k", 60<<10)
	for _, n := range []string{"a.bin", "b.bin", "c.bin"} {
		f.put(t, "alice", n, chunk)
	}
	_, err := f.svc.Write(ctxT(t), "alice", "d.bin", strings.NewReader(chunk), false)
	wantCode(t, "a fourth 60 KiB file under a 200 KiB kernel quota", err, api.CodeQuotaExceeded)
	if left := leftovers(t, alice.Workdir); len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	d := f.svc.Disk(ctxT(t), alice)
	if d.EnforcedBy != api.EnforcedByKernel || d.LimitBytes != 200<<10 || d.LimitFiles != 20 ||
		d.UsedBytes < 180<<10 || d.UsedBytes > 200<<10 || d.UsedFiles != 4 {
		t.Fatalf("disk %+v: want 180-200 KiB of 200 KiB and 4 inodes (the directory, three files), from the kernel", d)
	}
	// The student's own program: the kernel refuses it too.
	cmd := exec.Command(testutil.Interpreter, "-c", "open('run.bin', 'wb').write(b'r' * (1 << 20))")
	cmd.Dir = alice.Workdir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: alice.UID, Gid: alice.GID, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "[Errno 122] Disk quota exceeded") {
		t.Fatalf("the student's program writing past the quota: %v: %s", err, out)
	}
	// Root bypasses a kernel quota: why idexd drops CAP_SYS_RESOURCE to write.
	p := filepath.Join(alice.Workdir, "root.bin")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, int(alice.UID), int(alice.GID)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(strings.Repeat("r", 1<<20)), 0o600); err != nil {
		t.Fatalf("root writing past the student's quota: %v (expected to bypass it)", err)
	}
	if d := f.svc.Disk(ctxT(t), alice); d.UsedBytes <= 1<<20 {
		t.Fatalf("root's write was not charged to the student: %+v", d)
	}
	for _, n := range []string{"root.bin", "run.bin", "c.bin"} {
		if err := f.svc.Remove(ctxT(t), "alice", n); err != nil && !errors.Is(err, api.ErrFileNotFound) {
			t.Fatal(err)
		}
	}
	f.put(t, "alice", "c.bin", chunk)
	// Inodes: the directory, a.bin, b.bin and c.bin so far; 20 at most.
	var i int
	for i = 0; i < 30; i++ {
		if _, err = f.svc.Write(ctxT(t), "alice", fmt.Sprintf("n%02d", i), strings.NewReader(""), false); err != nil {
			break
		}
	}
	wantCode(t, "the 21st inode", err, api.CodeQuotaExceeded)
	if i != 16 {
		t.Errorf("%d empty files fitted beside 4 inodes under quota_files 20, want 16", i)
	}
}

// TestKernelQuotaZeroIsOff: where the kernel enforces, quota_mb = 0 or
// quota_files = 0 sets no hard limit of that kind (quotactl's 0), while
// the other still holds.
func TestKernelQuotaZeroIsOff(t *testing.T) {
	testutil.RequireRoot(t)
	chunk := strings.Repeat("k", 60<<10)
	t.Run("quota_mb 0", func(t *testing.T) {
		f := newFixtureAt(t, filepath.Join(loopExt4(t), "students"), quota.Limits{Bytes: 0, Files: 5}, students.LayoutPrivate)
		if f.quota.EnforcedBy() != api.EnforcedByKernel {
			t.Fatalf("quotas on an ext4 mounted with usrquota: %s", f.quota.Status())
		}
		alice := f.student(t, "alice")
		for _, n := range []string{"a.bin", "b.bin", "c.bin", "d.bin"} {
			f.put(t, "alice", n, chunk)
		}
		_, err := f.svc.Write(ctxT(t), "alice", "e.bin", strings.NewReader(""), false)
		wantCode(t, "a 6th inode under quota_files 5", err, api.CodeQuotaExceeded)
		if d := f.svc.Disk(ctxT(t), alice); d.EnforcedBy != api.EnforcedByKernel || d.LimitBytes != 0 || d.LimitFiles != 5 || d.UsedFiles != 5 || d.UsedBytes < 240<<10 {
			t.Fatalf("disk %+v: want no byte limit, 5 of 5 inodes, at least 240 KiB, from the kernel", d)
		}
	})
	t.Run("quota_files 0", func(t *testing.T) {
		f := newFixtureAt(t, filepath.Join(loopExt4(t), "students"), quota.Limits{Bytes: 200 << 10, Files: 0}, students.LayoutPrivate)
		if f.quota.EnforcedBy() != api.EnforcedByKernel {
			t.Fatalf("quotas on an ext4 mounted with usrquota: %s", f.quota.Status())
		}
		alice := f.student(t, "alice")
		for i := range 40 {
			f.put(t, "alice", fmt.Sprintf("n%02d", i), "")
		}
		for _, n := range []string{"a.bin", "b.bin", "c.bin"} {
			f.put(t, "alice", n, chunk)
		}
		_, err := f.svc.Write(ctxT(t), "alice", "d.bin", strings.NewReader(chunk), false)
		wantCode(t, "a fourth 60 KiB file under a 200 KiB kernel quota", err, api.CodeQuotaExceeded)
		if d := f.svc.Disk(ctxT(t), alice); d.EnforcedBy != api.EnforcedByKernel || d.LimitFiles != 0 || d.LimitBytes != 200<<10 || d.UsedFiles < 44 {
			t.Fatalf("disk %+v: want no inode limit, 200 KiB, at least 44 inodes, from the kernel", d)
		}
	})
}
