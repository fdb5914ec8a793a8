package cli_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/idexd/idexd/internal/cli"
	"github.com/idexd/idexd/internal/sandbox/inside"
)

// binDir holds idexctl built once for the package: what a sysadmin runs
// is the binary, so exit codes and output are checked on it.
var binDir string

func TestMain(m *testing.M) {
	// The engine of the tests that need idexd re-executes this binary as
	// each run's child.
	inside.Main()
	dir, err := os.MkdirTemp("", "idexctl-test-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	if out, err := exec.Command("go", "build", "-race", "-o", filepath.Join(dir, "idexctl"), "../../cmd/idexctl").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build idexctl: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}

// noSocket is a path where no idexd listens: a command that gets that far
// says "cannot connect to" it.
func noSocket(t *testing.T) string { return filepath.Join(t.TempDir(), "none.sock") }

// ctl runs the built idexctl with a clean environment.
func ctl(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "idexctl"), args...)
	cmd.Env = append([]string{"PATH=/usr/bin:/bin"}, env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("idexctl %q: %v", args, err)
	}
	return o.String(), e.String(), code
}

// main runs cli.Main in-process.
func runMain(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = cli.Main(context.Background(), args, strings.NewReader(""), &o, &e)
	return o.String(), e.String(), code
}

// TestHelp: help is asked for in every way a sysadmin would, exits 0,
// goes to stdout and is the asked command's own help.
func TestHelp(t *testing.T) {
	overview, _, _ := ctl(t, nil, "help")
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		out, errOut, code := ctl(t, nil, args...)
		if code != 0 || errOut != "" || out != overview || !strings.Contains(out, "Commands:") {
			t.Errorf("idexctl %s: exit %d, stderr %q, stdout:\n%s\nwant exit 0, the overview on stdout", strings.Join(args, " "), code, errOut, out)
		}
	}
	for _, name := range []string{"run", "ps", "logs", "history", "stop", "health"} {
		var first string
		for _, args := range [][]string{{"help", name}, {name, "--help"}, {name, "-h"}, {"--help", name}, {name, "x", "--help"}} {
			out, errOut, code := ctl(t, nil, args...)
			if code != 0 || errOut != "" {
				t.Errorf("idexctl %s: exit %d, stderr %q, want exit 0 and nothing on stderr", strings.Join(args, " "), code, errOut)
			}
			if !strings.HasPrefix(out, "Usage: idexctl "+name) || out == overview {
				t.Errorf("idexctl %s printed:\n%s\nwant the help of %s", strings.Join(args, " "), out, name)
			}
			if first == "" {
				first = out
			} else if out != first {
				t.Errorf("idexctl %s differs from idexctl help %s", strings.Join(args, " "), name)
			}
		}
	}
	out, errOut, code := ctl(t, nil, "help", "nonsense")
	if code != 1 || out != "" || !strings.Contains(errOut, `unknown command "nonsense"`) {
		t.Errorf("idexctl help nonsense: exit %d, stdout %q, stderr %q; want exit 1 and the unknown command named", code, out, errOut)
	}
	out, errOut, code = ctl(t, nil, "sotp", "abc")
	if code != 1 || out != "" || !strings.Contains(errOut, "did you mean stop?") {
		t.Errorf("idexctl sotp: exit %d, stdout %q, stderr %q; want exit 1 and a suggestion", code, out, errOut)
	}
}

// TestRefusesBadValuesWithTheFix: a bad value is refused before idexd is
// even asked, with what to write instead.
func TestRefusesBadValuesWithTheFix(t *testing.T) {
	sock := noSocket(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--student", "alice", "--timeout", "5", "x.py"}, "--timeout 5: a duration needs a unit: 5s"},
		{[]string{"run", "--student", "alice", "--timeout", "-1s", "x.py"}, "--timeout -1s: must be positive"},
		{[]string{"run", "--student", "alice", "--cpu", "0s", "x.py"}, "--cpu 0s: must be positive"},
		{[]string{"run", "--student", "alice", "--memory", "0", "x.py"}, "--memory 0: want a positive size like"},
		{[]string{"run", "--student", "alice", "--memory", "lots", "x.py"}, "--memory lots: want a positive size like"},
		{[]string{"run", "--student", "alice", "--pids", "-3", "x.py"}, "--pids -3: want a number of processes from 1"},
		{[]string{"run", "--student", "alice", "--cpu-percent", "0", "x.py"}, "--cpu-percent 0: want a percentage"},
		{[]string{"run", "--student", "alice", "--output", "-1KiB", "x.py"}, "--output -1KiB: want a positive size"},
		{[]string{"run", "--student", "Alice", "x.py"}, "--student Alice: student names are lower-case Unix names"},
		{[]string{"run", "x.py"}, "--student is required"},
		{[]string{"run", "--student", "alice"}, "usage: idexctl run"},
		{[]string{"run", "--student", "alice", "x.py", "--n", "3"}, "go after --: idexctl run"},
		{[]string{"history", "--limit", "-5"}, "--limit -5: want a number of runs from 1 to 10000"},
		{[]string{"history", "--limit", "0"}, "--limit 0: want a number of runs from 1 to 10000"},
		{[]string{"history", "--reason", "nonsense"}, "--reason nonsense: want one of exited, signaled"},
		{[]string{"history", "--reason", "timedout"}, "did you mean timed_out?"},
		{[]string{"history", "--since", "2"}, "--since 2: a duration needs a unit: 2h"},
		{[]string{"history", "--since", "yesterday"}, "--since yesterday: want a duration"},
		{[]string{"ps", "--student", "Alice"}, "--student Alice: student names are lower-case Unix names (^[a-z_][a-z0-9_-]{0,31}$); did you mean alice?"},
		{[]string{"ps", "--stuent", "alice"}, "unknown flag --stuent (did you mean --student?)"},
		{[]string{"ps", "extra"}, "usage: idexctl ps"},
		{[]string{"student", "Bob"}, "did you mean bob?"},
		{[]string{"logs", "--after", "-1", "abc"}, "--after -1: want a sequence number"},
		{[]string{"logs", "--after"}, "--after needs a value"},
		{[]string{"show"}, "usage: idexctl show ID"},
		{[]string{"completion", "fish"}, "want one of bash, zsh"},
		{[]string{"--jsno", "ps"}, "unknown flag --jsno (did you mean --json?)"},
	} {
		out, errOut, code := runMain(t, append([]string{"--socket", sock}, tc.args...)...)
		if code != cli.ExitError || !strings.Contains(errOut, tc.want) || out != "" {
			t.Errorf("idexctl %s: exit %d, stdout %q, stderr:\n%s\nwant exit 1 and %q", strings.Join(tc.args, " "), code, out, errOut, tc.want)
		}
		if strings.Contains(errOut, "cannot connect") {
			t.Errorf("idexctl %s: asked idexd before refusing the bad value: %s", strings.Join(tc.args, " "), errOut)
		}
		if !strings.Contains(errOut, "Run 'idexctl help") {
			t.Errorf("idexctl %s: the refusal does not say where the help is: %s", strings.Join(tc.args, " "), errOut)
		}
	}
}

// TestGlobalFlagsAnywhere: --socket and --json work after the command and
// after its arguments too, as with systemctl and docker.
func TestGlobalFlagsAnywhere(t *testing.T) {
	sock := noSocket(t)
	for _, args := range [][]string{
		{"--socket", sock, "health"},
		{"health", "--socket", sock},
		{"health", "--socket=" + sock, "--json"},
		{"stop", "abc", "--socket", sock},
		{"-socket", sock, "ps", "--json"},
	} {
		_, errOut, code := ctl(t, []string{"IDEX_SOCKET=/nonexistent/env.sock"}, args...)
		if code == 0 || !strings.Contains(errOut, "cannot connect to "+sock) {
			t.Errorf("idexctl %s: exit %d, stderr %q; want it to try %s", strings.Join(args, " "), code, errOut, sock)
		}
	}
	_, errOut, _ := ctl(t, []string{"IDEX_SOCKET=" + sock}, "ps")
	if !strings.Contains(errOut, "cannot connect to "+sock) {
		t.Errorf("idexctl ps with IDEX_SOCKET: %s", errOut)
	}
	if out, _, code := ctl(t, nil, "--version"); code != 0 || !strings.HasPrefix(out, "idexctl ") {
		t.Errorf("idexctl --version: exit %d, %q", code, out)
	}
}
