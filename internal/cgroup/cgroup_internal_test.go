package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

// TestFiles: readFile reads what os.ReadFile does, past its 512-byte
// buffer too; writeFile writes, and names a missing file as os does.
func TestFiles(t *testing.T) {
	dir := t.TempDir()
	long := filepath.Join(dir, "long")
	want := make([]byte, 1500)
	for i := range want {
		want[i] = byte('a' + i%26)
	}
	if err := os.WriteFile(long, want, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := readFile(long)
	if err != nil || string(got) != string(want) {
		t.Fatalf("readFile: %d bytes, %v; want the 1500 written", len(got), err)
	}
	if err := writeFile(long, []byte("12")); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(long); err != nil || string(got[:2]) != "12" {
		t.Fatalf("after writeFile: %q, %v", got[:2], err)
	}
	missing := filepath.Join(dir, "missing")
	if _, err := readFile(missing); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("readFile of a missing file: %v, want not-exist naming it", err)
	}
	if err := writeFile(missing, []byte("1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("writeFile of a missing file: %v, want not-exist (no file made)", err)
	}
}
