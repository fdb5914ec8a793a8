package cgroup

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestMissingControllers: what a container that delegates nothing (nspawn)
// or only some controllers gives idexd decides which limits are set.
func TestMissingControllers(t *testing.T) {
	cases := map[string][]string{
		"cpuset cpu io memory hugetlb pids rdma misc": nil,
		"":               {"cpu", "memory", "pids"},
		"memory pids":    {"cpu"},
		"cpuset io pids": {"cpu", "memory"},
	}
	for have, want := range cases {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "cgroup.controllers"), []byte(have+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := missingControllers(dir)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("controllers %q: missing %v, want %v", have, got, want)
		}
		r := v2Resources(Limits{MemoryBytes: 1 << 20, Pids: 8, CPUPercent: 50}, got)
		if (r.Memory == nil) != slices.Contains(got, "memory") || (r.Pids == nil) != slices.Contains(got, "pids") || (r.CPU == nil) != slices.Contains(got, "cpu") {
			t.Errorf("controllers %q: resources %+v ask for a missing controller", have, r)
		}
	}
}
