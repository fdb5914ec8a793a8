package run_test

import (
	"context"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/testutil"
)

func TestSmoke(t *testing.T) {
	env := testutil.NewEnv(t)
	env.WriteScript(t, "alice", "hello.py", "import os, sys\nprint('hi', os.getuid(), os.getcwd(), sys.argv)\nprint('err', file=sys.stderr)\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := env.Engine.Start(ctx, api.RunRequest{Student: "alice", Script: "hello.py", Args: []string{"a b"}})
	if err != nil {
		t.Fatal(err)
	}
	res := testutil.Collect(ctx, t, r)
	t.Logf("run: %+v\nstdout: %q\nstderr: %q", res.Run, res.Stdout, res.Stderr)
	if res.Run.Reason != api.ReasonExited || res.Run.ExitCode == nil || *res.Run.ExitCode != 0 {
		t.Fatalf("reason %s exit %v", res.Run.Reason, res.Run.ExitCode)
	}
}
