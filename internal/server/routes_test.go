package server

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/idexd/idexd/internal/api"
)

// TestRoutesSorted keeps the route table readable: sorted by path, then
// method, with no duplicates and a role on every entry.
func TestRoutesSorted(t *testing.T) {
	rs := (&Server{}).routes()
	keys := make([]string, len(rs))
	for i, r := range rs {
		keys[i] = r.path + " " + r.method
		if r.role == RoleNone {
			t.Errorf("%s has no role", keys[i])
		}
		if !strings.HasPrefix(r.path, "/v1/") && r.path != "/metrics" {
			t.Errorf("%s is outside /v1/", keys[i])
		}
	}
	if !slices.IsSorted(keys) {
		t.Errorf("routes are not sorted by path then method:\n%s", strings.Join(keys, "\n"))
	}
	if len(slices.Compact(slices.Clone(keys))) != len(keys) {
		t.Errorf("duplicate routes")
	}
}

func TestRoleOf(t *testing.T) {
	const client, admin = 100, 200
	cases := []struct {
		p    Peer
		want Role
	}{
		{Peer{UID: 0, GID: 0}, RoleAdmin},
		{Peer{UID: 1000, GID: admin}, RoleAdmin},
		{Peer{UID: 1000, GID: 1000, Groups: []uint32{5, admin}}, RoleAdmin},
		{Peer{UID: 1000, GID: client}, RoleClient},
		{Peer{UID: 1000, GID: 1000, Groups: []uint32{client}}, RoleClient},
		{Peer{UID: 1000, GID: 1000, Groups: []uint32{5}}, RoleNone},
		{Peer{UID: 200000, GID: 200000}, RoleNone},
	}
	for _, c := range cases {
		if got := roleOf(c.p, client, admin); got != c.want {
			t.Errorf("roleOf(%+v) = %s, want %s", c.p, got, c.want)
		}
	}
}

// TestStatusOfEveryCode: each code has its status; only a failure of idexd
// itself (internal, a start-up step) is a 500.
func TestStatusOfEveryCode(t *testing.T) {
	for _, c := range api.Codes {
		st := httpStatus(c)
		if st < 400 || st > 599 {
			t.Errorf("%s maps to %d", c, st)
		}
		if (st == 500) != (c == api.CodeInternal || c == api.CodeStartFailed) {
			t.Errorf("%s maps to %d", c, st)
		}
	}
}

// TestTalksOnlyToTheEngine: the server reaches runs, students and health
// through its Engine interface; it does not depend on the store, the
// cgroups, the locks or the engine's package.
func TestTalksOnlyToTheEngine(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, dep := range strings.Fields(string(out)) {
		switch strings.TrimPrefix(dep, "github.com/idexd/idexd/internal/") {
		case "store", "pgstore", "cgroup", "lock", "run", "files", "quota", "sandbox", "students":
			t.Errorf("internal/server depends on %s", dep)
		}
	}
}
