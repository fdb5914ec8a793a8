package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var parentFlag = regexp.MustCompile(`--cgroup-parent (\S+)`)

// TestMakeRunParentPerCheckout: two clones on one host get two cgroup
// parents from make run, so both can run (idexd takes one per parent).
func TestMakeRunParentPerCheckout(t *testing.T) {
	mk, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	parents := map[string]bool{}
	for _, clone := range []string{"one", "two"} {
		dir := filepath.Join(t.TempDir(), clone)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "Makefile"), mk, 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("make", "-n", "run")
		cmd.Dir = dir
		out, err := cmd.Output() // stderr: tools a bare copy lacks
		if err != nil {
			t.Fatalf("make -n run in %s: %v\n%s", dir, err, out)
		}
		m := parentFlag.FindSubmatch(out)
		if m == nil {
			t.Fatalf("make -n run in %s names no --cgroup-parent:\n%s", dir, out)
		}
		parents[string(m[1])] = true
	}
	if len(parents) != 2 {
		t.Fatalf("two checkouts share the cgroup parent %v", parents)
	}
}

// idexd runs the built idexd with args and returns its output and exit code.
func idexd(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(filepath.Join(binDir, "idexd"), args...).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// TestVersionAndCheckConfig: idexd --version prints the version, and
// --check-config reads the configuration, checks it against the host
// (groups, interpreter, uid range), says what it found and exits: 0 when
// idexd would start, 1 naming every problem.
func TestVersionAndCheckConfig(t *testing.T) {
	if out, code := idexd(t, "--version"); code != 0 || !strings.HasPrefix(out, "idexd ") {
		t.Fatalf("idexd --version: %d %q", code, out)
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	if err := os.WriteFile(good, []byte("client_group = \"root\"\nadmin_group = \"root\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := idexd(t, "--check-config", "--config", good, "--socket", filepath.Join(dir, "x.sock"))
	if code != 0 || !strings.Contains(out, "configuration OK") || !strings.Contains(out, filepath.Join(dir, "x.sock")) {
		t.Fatalf("--check-config of a good configuration: %d\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "x.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("--check-config made the socket: %v", err)
	}
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("client_group = \"no-such-group-x\"\nadmin_group = \"root\"\ninterpreter = \"/nonexistent/python3\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code = idexd(t, "--config", bad, "--check-config")
	if code != 1 || !strings.Contains(out, "no-such-group-x") || !strings.Contains(out, "/nonexistent/python3") {
		t.Fatalf("--check-config of a bad configuration: %d, want 1 naming the group and the interpreter\n%s", code, out)
	}
	unknown := filepath.Join(dir, "unknown.toml")
	if err := os.WriteFile(unknown, []byte("sockett = \"/x\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code = idexd(t, "--check-config", "--config", unknown); code != 1 || !strings.Contains(out, "sockett") {
		t.Fatalf("--check-config of an unknown key: %d\n%s", code, out)
	}
}
