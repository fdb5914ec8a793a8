package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestPythonClient runs clients/python's tests against the real daemon,
// and the idexd_client example of docs/protocol.md as printed.
func TestPythonClient(t *testing.T) {
	d := newDaemonWith(t, daemonOpts{extra: "quota_mb = 2\nfile_max_mb = 1\n"})
	src, err := filepath.Abs("../clients/python/src")
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"IDEX_SOCKET=" + d.sock, "PYTHONPATH=" + src, "PATH=/usr/bin:/bin",
		"IDEXD_TEST_FILE_MAX_BYTES=1048576", "PYTHONDONTWRITEBYTECODE=1"}
	cmd := exec.Command("/usr/bin/python3", "-m", "unittest", "discover", "-v", "-s", "../clients/python/tests")
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	t.Logf("python client tests:\n%s", out)
	if err != nil {
		t.Fatalf("python client tests failed: %v", err)
	}
	if !strings.Contains(string(out), "\nOK") {
		t.Fatal("python client tests did not report OK")
	}

	doc, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```python\n(from idexd_client import.*?)```\n\nIt prints:\n\n```\n(.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/protocol.md has no idexd_client example followed by what it prints")
	}
	cmd = exec.Command("/usr/bin/python3", "-c", string(m[1]))
	cmd.Env = env
	got, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the idexd_client example failed: %v\n%s", err, got)
	}
	if string(got) != string(m[2]) {
		t.Fatalf("the idexd_client example printed:\n%s\nthe document says:\n%s", got, m[2])
	}
}

// TestPythonErrorClasses: clients/python has a class for every error
// code of internal/api.
func TestPythonErrorClasses(t *testing.T) {
	goCodes, err := os.ReadFile("../internal/api/errors.go")
	if err != nil {
		t.Fatal(err)
	}
	py, err := os.ReadFile("../clients/python/src/idexd_client/errors.py")
	if err != nil {
		t.Fatal(err)
	}
	codes := regexp.MustCompile(`Code\w+\s+Code = "(\w+)"`).FindAllSubmatch(goCodes, -1)
	if len(codes) < 20 {
		t.Fatalf("found only %d codes in internal/api/errors.go", len(codes))
	}
	for _, c := range codes {
		if !strings.Contains(string(py), `code = "`+string(c[1])+`"`) {
			t.Errorf("clients/python has no exception class for %s", c[1])
		}
	}
}
