package server_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/testutil"
)

var curlBlock = regexp.MustCompile("(?s)\n## curl\n.*?```sh\n(.*?)```")

// TestCurlExample runs the curl lines of docs/protocol.md as printed, in
// bash against a real idexd, and checks what each answered: no error
// body, the output the script printed, its end, the stop's final run and
// health.
func TestCurlExample(t *testing.T) {
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	m := curlBlock.FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/protocol.md has no curl example")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatalf("curl is not installed (.ci/run installs it): %v", err)
	}
	env := testutil.NewEnv(t)
	srv := env.Serve(t)
	cmd := exec.CommandContext(ctxT(t, 60*time.Second), "bash", "--norc", "--noprofile", "-euo", "pipefail", "-c", string(m[1]))
	cmd.Env = []string{"IDEX_SOCKET=" + srv.Socket, "PATH=/usr/bin:/bin"}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("the curl example failed: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var printed string
	var end, stopped *api.Run
	var health api.Health
	for i, line := range lines {
		if strings.Contains(line, `"error"`) {
			t.Fatalf("line %d is an error: %s\nall:\n%s", i+1, line, out)
		}
		var ev api.Event
		switch {
		case strings.Contains(line, `"seq"`):
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("event %q: %v", line, err)
			}
			printed += string(ev.Bytes())
			if ev.Type == api.EventEnd {
				end = ev.Run
			}
		case strings.Contains(line, `"status"`):
			if err := json.Unmarshal([]byte(line), &health); err != nil {
				t.Fatalf("health %q: %v", line, err)
			}
		default:
			stopped = &api.Run{}
			if err := json.Unmarshal([]byte(line), stopped); err != nil {
				t.Fatalf("stop answer %q: %v", line, err)
			}
		}
	}
	if printed != "name? hello Ada\n" {
		t.Errorf("the events carried %q, want %q", printed, "name? hello Ada\n")
	}
	if end == nil || end.Reason != api.ReasonExited || end.ExitCode == nil || *end.ExitCode != 0 {
		t.Errorf("end of the run: %+v, want exited 0", end)
	}
	if stopped == nil || end == nil || stopped.ID != end.ID || stopped.Reason != api.ReasonExited {
		t.Errorf("stop answered %+v, want the ended run", stopped)
	}
	if health.Status != api.HealthOK {
		t.Errorf("health: %+v", health)
	}
}
