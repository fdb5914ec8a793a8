package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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
