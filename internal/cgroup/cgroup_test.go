package cgroup_test

import (
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/testutil"
)

// TestOneIdexdPerParent: a second idexd on the same cgroup parent is
// refused before it could sweep the first one's runs as leftovers.
func TestOneIdexdPerParent(t *testing.T) {
	testutil.RequireRoot(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	parent := "idexd-test/lock-" + hex.EncodeToString(b[:])
	first, err := cgroup.New(parent)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cgroup.New(parent); err == nil || !strings.Contains(err.Error(), "in use by another idexd") {
		t.Fatalf("second manager on %s: %v, want refused", parent, err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := cgroup.New(parent)
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	if err := again.RemoveParent(); err != nil {
		t.Fatal(err)
	}
}
