package e2e

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
)

// TestFilesAndMeasuredQuota: a student's files through idexctl, the
// private layout, and a disk quota that idexd measures (the test's
// directory is on a filesystem without enforced user quotas): a run that
// writes past it is not stopped, but the next run and write are refused
// until a file is deleted.
func TestFilesAndMeasuredQuota(t *testing.T) {
	d := newDaemonWith(t, daemonOpts{extra: "quota_mb = 1\nquota_files = 40\nfile_max_mb = 1\n"})
	if out, code := d.ctl("student", "alice"); code != 0 || !strings.Contains(out, "files (enforced by ") {
		t.Fatalf("student: %d %s", code, out)
	}
	var st api.Student
	out, _ := d.ctl("--json", "student", "alice")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("student --json %q: %v", out, err)
	}
	if st.Disk.EnforcedBy != api.EnforcedByIdexd {
		t.Skipf("the test directory's filesystem enforces user quotas (%+v): internal/quota's TestKernelQuota covers that path", st.Disk)
	}
	var fi syscall.Stat_t
	if err := syscall.Stat(st.Workdir, &fi); err != nil || fi.Uid != st.UID || fi.Mode&0o7777 != 0o700 {
		t.Fatalf("workdir %s: %v uid %d mode %o, want %d 0700", st.Workdir, err, fi.Uid, fi.Mode&0o7777, st.UID)
	}
	put := d.ctlCmd("files", "put", "--student", "alice", "--parents", "src/fill.py")
	put.Stdin = strings.NewReader("open('out.txt', 'w').write('from the run\\n')\nopen('big.bin', 'wb').write(b'x' * (2 << 20))\n")
	if b, err := put.CombinedOutput(); err != nil || !strings.Contains(string(b), "src/fill.py file") {
		t.Fatalf("files put: %v %s", err, b)
	}
	var script syscall.Stat_t
	if err := syscall.Stat(filepath.Join(st.Workdir, "src/fill.py"), &script); err != nil || script.Uid != st.UID || script.Mode&0o777 != 0o600 {
		t.Fatalf("saved script: %v uid %d mode %o, want the student's, 0600", err, script.Uid, script.Mode&0o777)
	}
	if out, code := d.ctl("run", "--student", "alice", "src/fill.py"); code != 0 {
		t.Fatalf("run: %d %s", code, out)
	}
	if out, code := d.ctl("files", "cat", "--student", "alice", "out.txt"); code != 0 || out != "from the run\n" {
		t.Fatalf("files cat: %d %q", code, out)
	}
	out, code := d.ctl("files", "ls", "--student", "alice")
	if code != 0 || !regexp.MustCompile(`(?m)^file\s+2097152\s.*big\.bin$`).MatchString(out) || !regexp.MustCompile(`(?m)^dir\s.*src$`).MatchString(out) {
		t.Fatalf("files ls: %d\n%s", code, out)
	}
	// idexd measures after the run's end, in the background.
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _ := d.ctl("student", "alice")
		if strings.Contains(out, "over quota") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("usage not measured as over quota after the run:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, code := d.ctl("run", "--student", "alice", "src/fill.py"); code != 1 || !strings.Contains(out, "quota_exceeded") {
		t.Fatalf("run over quota: %d %s", code, out)
	}
	put = d.ctlCmd("files", "put", "--student", "alice", "new.txt")
	put.Stdin = strings.NewReader("x")
	if b, err := put.CombinedOutput(); err == nil || !strings.Contains(string(b), "quota_exceeded") {
		t.Fatalf("files put over quota: %v %s", err, b)
	}
	if out, code := d.ctl("files", "rm", "--student", "alice", "big.bin"); code != 0 {
		t.Fatalf("files rm: %d %s", code, out)
	}
	if out, code := d.ctl("files", "mv", "--student", "alice", "out.txt", "src/out.txt"); code != 0 || !strings.Contains(out, "src/out.txt") {
		t.Fatalf("files mv: %d %s", code, out)
	}
	if out, code := d.ctl("files", "cat", "--student", "alice", "src/out.txt"); code != 0 || out != "from the run\n" {
		t.Fatalf("files cat after mv: %d %q", code, out)
	}
	// Bad input through the real binaries: each with its code, nothing made.
	for _, c := range []struct {
		args []string
		code string
	}{
		{[]string{"files", "cat", "--student", "alice", "../bob/x.py"}, "invalid_path"},
		{[]string{"files", "cat", "--student", "alice", "src"}, "not_regular"},
		{[]string{"files", "ls", "--student", "alice", "src/fill.py"}, "not_directory"},
		{[]string{"files", "cat", "--student", "bob", "x.py"}, "student_not_found"},
		{[]string{"files", "rm", "--student", "alice", "src"}, "directory_not_empty"},
	} {
		if out, code := d.ctl(c.args...); code != 1 || !strings.Contains(out, "("+c.code+")") {
			t.Errorf("%v: %d %s, want %s", c.args, code, out, c.code)
		}
	}
	if out, _ := d.ctl("students"); strings.Contains(out, "bob") {
		t.Errorf("a refused file request created bob:\n%s", out)
	}
	if out, code := d.ctl("run", "--student", "alice", "src/fill.py"); code != 0 {
		t.Fatalf("run after deleting: %d %s", code, out)
	}
	if out, _ := d.ctl("health"); !strings.Contains(out, "check disk_quota ok") {
		t.Errorf("health does not say how quotas are enforced:\n%s", out)
	}
	// A request path that is not clean is refused, not redirected.
	cmd := exec.Command("curl", "-s", "--unix-socket", d.sock, "--path-as-is", "http://idexd/v1/students/alice/files/../../bob/files/x")
	if b, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(b), `"invalid_path"`) {
		t.Errorf("unclean path: %v %s", err, b)
	}
}
