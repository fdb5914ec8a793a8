package run_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/students"
	"github.com/idexd/idexd/internal/testutil"
)

// TestUIDFromPasswd: with uid_source = "passwd" a student is the system
// account of that name; root and accounts below the floor are refused.
func TestUIDFromPasswd(t *testing.T) {
	env := testutil.NewEnv(t, func(c *run.Config) {
		c.UIDSource = students.UIDSourcePasswd
		c.UIDMin = 1000
	})
	// Debian's nobody is 65534:65534, above a floor of 1000.
	env.WriteScript(t, "nobody", "id.py", "import os\nprint(os.getuid(), os.getgid(), os.getgroups())\n")
	res := runToEnd(t, env, api.RunRequest{Student: "nobody", Script: "id.py"})
	if res.Stdout != "65534 65534 []\n" || res.Run.UID != 65534 {
		t.Fatalf("run as nobody printed %q (uid %d), want 65534 65534 []", res.Stdout, res.Run.UID)
	}
	for name, want := range map[string]*api.Error{
		"root":             api.ErrInvalidStudent, // uid 0
		"daemon":           api.ErrInvalidStudent, // uid 1, below the floor
		"no_such_account9": api.ErrStudentNotFound,
	} {
		_, err := env.Engine.EnsureStudent(ctxT(t, 5*time.Second), name)
		if !errors.Is(err, want) || !strings.Contains(err.Error(), name) {
			t.Errorf("student %s: %v, want %s", name, err, want.Code)
		}
	}
	assertClean(t, env)
}
