package run_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/sandbox"
	"github.com/idexd/idexd/internal/testutil"
)

// TestDedicatedHelper: runs started through the idexd-sandbox binary, cold
// (exec'd already as the student) and warm (as root, dropping later), from
// a directory the student cannot search: the pinned fd is what is
// executed, and it does not reach the student's program. The same runs go
// through the Go helper too (idexd re-executed, when idexd-sandbox is not
// installed beside it): both speak one protocol.
func TestDedicatedHelper(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "idexd-sandbox")
	if out, err := exec.Command("../../cmd/idexd-sandbox/build.sh", "-o", bin).CombinedOutput(); err != nil {
		t.Fatalf("build idexd-sandbox: %v\n%s", err, out)
	}
	h, err := sandbox.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Error(err)
		}
	})
	if h.String() != bin {
		t.Fatalf("helper %q, want %q", h.String(), bin)
	}
	for _, c := range []struct {
		name string
		h    sandbox.Binary
		n    int
	}{{"c", h, 0}, {"c", h, 1}, {"go", sandbox.Self(), 0}, {"go", sandbox.Self(), 1}} {
		h, n := c.h, c.n
		t.Run(fmt.Sprintf("%s/warm_runs=%d", c.name, n), func(t *testing.T) {
			env := testutil.NewEnv(t, warm(n), func(c *run.Config) { c.Helper = h })
			// The student's name comes from the run's copies of
			// /etc/passwd and /etc/group, with the host's lines kept;
			// the helper's handles on them must not reach the program.
			env.WriteScript(t, "alice", "who.py", "import grp, os, pwd\nfds = sorted(os.listdir('/proc/self/fd'), key=int)\n"+
				"print(os.getuid(), fds, pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name, pwd.getpwuid(0).pw_name, pwd.getpwnam('alice').pw_dir == os.environ['HOME'])\n")
			if n > 0 {
				waitWarm(t, env, n)
			}
			res := runToEnd(t, env, api.RunRequest{Student: "alice", Script: "who.py"})
			if got := env.Engine.WarmStarts(); got != int64(n) {
				t.Fatalf("warm starts %d, want %d", got, n)
			}
			if res.Run.Reason != api.ReasonExited || exitCode(res.Run) != "0" {
				t.Fatalf("ended %s exit %s: %s", res.Run.Reason, exitCode(res.Run), res.Stderr)
			}
			// fd 3 is listdir's own.
			if want := fmt.Sprintf("%d ['0', '1', '2', '3'] alice alice root True\n", res.Run.UID); res.Stdout != want {
				t.Errorf("stdout %q, want %q", res.Stdout, want)
			}
			// The program's side fails after the helper has let it go
			// (a cwd the student may not enter): the run ends
			// start_failed with the cause, and the helper goes with it.
			top := env.WriteScript(t, "alice", "shut/who.py", "print('unreachable')\n")
			if err := os.Chmod(filepath.Dir(top), 0o700); err != nil {
				t.Fatal(err)
			}
			_, err := env.Engine.Start(ctxT(t, 10*time.Second), api.RunRequest{Student: "alice", Script: "who.py", Cwd: "shut"})
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Code != api.CodeStartFailed || !strings.Contains(err.Error(), "permission denied") {
				t.Fatalf("start in a cwd alice cannot enter: %v, want start_failed naming permission denied", err)
			}
			assertClean(t, env)
		})
	}
}

// TestOpenHelperRefusals: a missing helper is reported as such (idexd then
// re-executes itself); a file that cannot be executed is refused at start,
// not at the first run.
func TestOpenHelperRefusals(t *testing.T) {
	dir := t.TempDir()
	if _, err := sandbox.Open(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing helper: %v, want not-exist", err)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := sandbox.Open(plain); err == nil {
		t.Error("a file without x bits was accepted as the helper")
	}
	if _, err := sandbox.Open(dir); err == nil {
		t.Error("a directory was accepted as the helper")
	}
}
