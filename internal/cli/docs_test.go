package cli_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// commandNames are the commands the overview lists.
func commandNames(t *testing.T) []string {
	t.Helper()
	out, _, code := ctl(t, nil, "help")
	if code != 0 {
		t.Fatalf("idexctl help: exit %d", code)
	}
	_, list, ok := strings.Cut(out, "Commands:\n")
	if !ok {
		t.Fatalf("no Commands: in\n%s", out)
	}
	list, _, _ = strings.Cut(list, "\n\n")
	var names []string
	for _, line := range strings.Split(list, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	if len(names) < 10 {
		t.Fatalf("only %d commands in the overview:\n%s", len(names), out)
	}
	return names
}

var flagRE = regexp.MustCompile(`(?m)^  (?:-[a-z], )?(--[a-z-]+)`)

// commandFlags are the flags a command's help lists (its own, then the
// global ones).
func commandFlags(t *testing.T, name string) []string {
	t.Helper()
	out, _, code := ctl(t, nil, "help", name)
	if code != 0 {
		t.Fatalf("idexctl help %s: exit %d", name, code)
	}
	var flags []string
	for _, m := range flagRE.FindAllStringSubmatch(out, -1) {
		flags = append(flags, m[1])
	}
	return flags
}

// complete asks the completion helper as the bash script does.
func complete(t *testing.T, shell string, words ...string) []string {
	t.Helper()
	out, errOut, code := ctl(t, []string{"IDEX_SOCKET=/nonexistent.sock"}, append([]string{"__complete", shell, "--"}, words...)...)
	if code != 0 {
		t.Fatalf("__complete %s %q: exit %d %s", shell, words, code, errOut)
	}
	return strings.Split(strings.TrimSuffix(out, "\n"), "\n")
}

// TestOneTable: the man page and completion know every command and
// every flag that help shows, because all three come from one table.
func TestOneTable(t *testing.T) {
	man, errOut, code := ctl(t, nil, "__man")
	if code != 0 {
		t.Fatalf("__man: exit %d %s", code, errOut)
	}
	names := commandNames(t)
	if got := complete(t, "bash", ""); !slices.Equal(got[1:], names) {
		t.Errorf("completion of a command offers %q, want %q", got, names)
	}
	for _, name := range names {
		flags := commandFlags(t, name)
		if !strings.Contains(man, ".SS "+strings.ReplaceAll(name, "-", `\-`)+"\n") {
			t.Errorf("the man page has no section for %s", name)
		}
		offered := complete(t, "bash", name, "--")
		for _, f := range flags {
			if !strings.Contains(man, `\fB`+strings.ReplaceAll(f, "-", `\-`)+`\fR`) {
				t.Errorf("the man page does not name %s of %s", f, name)
			}
			if !slices.Contains(offered, f) {
				t.Errorf("completion of idexctl %s -- offers %q, not %s", name, offered, f)
			}
		}
	}
}

// TestManPage: the page renders without a warning from groff.
func TestManPage(t *testing.T) {
	man, _, code := ctl(t, nil, "__man")
	if code != 0 || !strings.HasPrefix(man, ".TH IDEXCTL 1") {
		t.Fatalf("__man: exit %d, %.40q", code, man)
	}
	cmd := exec.Command("groff", "-man", "-ww", "-z")
	cmd.Stdin = strings.NewReader(man)
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("groff -man -ww: %v\n%s", err, out)
	}
}

// completionCases are completions that need no idexd: each shell script
// must give these.
var completionCases = []struct {
	words []string
	want  []string
}{
	{[]string{"st"}, []string{"student", "students", "stop"}},
	{[]string{"--socket", "/x", "hi"}, []string{"history"}},
	{[]string{"run", "--st"}, []string{"--student"}},
	{[]string{"logs", "-"}, []string{"--follow", "--after", "--raw", "--socket", "--json", "--help"}},
	{[]string{"history", "--reason", "o"}, []string{"oom_killed", "output_limit"}},
	{[]string{"history", "--reason=ti"}, []string{"timed_out"}},
	{[]string{"completion", ""}, []string{"bash", "zsh"}},
	{[]string{"help", "dr"}, []string{"drain"}},
}

// inShell runs prog in the shell, in dir, with the built idexctl first on
// PATH, and returns the words it printed.
func inShell(t *testing.T, dir, prog string, shell ...string) []string {
	t.Helper()
	cmd := exec.Command(shell[0], append(shell[1:], "-c", prog)...)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + binDir + ":/usr/bin:/bin", "IDEX_SOCKET=/nonexistent.sock"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s -c %q: %v\n%s", shell[0], prog, err, out)
	}
	return strings.Fields(string(out))
}

// TestBashCompletion drives the generated script in a real bash, as the
// shell does on TAB.
func TestBashCompletion(t *testing.T) {
	script, _, code := ctl(t, nil, "completion", "bash")
	if code != 0 {
		t.Fatalf("completion bash: exit %d", code)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "idexctl.bash"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.py"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cases := append(completionCases, struct {
		words []string
		want  []string
	}{[]string{"run", "--student", "alice", "ma"}, []string{"main.py"}})
	for _, tc := range cases {
		// The line as bash splits it: "--reason=ti" is three words.
		var words []string
		for _, w := range tc.words {
			if a, b, ok := strings.Cut(w, "="); ok && strings.HasPrefix(w, "-") {
				words = append(words, a, "=", b)
				continue
			}
			words = append(words, w)
		}
		for i, w := range words {
			words[i] = "'" + w + "'"
		}
		prog := `source ./idexctl.bash
COMP_WORDS=(idexctl ` + strings.Join(words, " ") + `)
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_idexctl
printf '%s\n' "${COMPREPLY[@]}"`
		got := inShell(t, dir, prog, "bash", "--norc", "--noprofile")
		if !slices.Equal(got, tc.want) {
			t.Errorf("bash completion of idexctl %s: %q, want %q", strings.Join(tc.words, " "), got, tc.want)
		}
	}
}

// TestZshCompletion drives the generated script in a real zsh with the
// completion system's functions standing in as recorders.
func TestZshCompletion(t *testing.T) {
	if _, err := exec.LookPath("zsh"); err != nil {
		t.Fatalf("zsh is not installed (apt-get install zsh; .ci/run installs it): %v", err)
	}
	script, _, code := ctl(t, nil, "completion", "zsh")
	if code != 0 || !strings.HasPrefix(script, "#compdef idexctl\n") {
		t.Fatalf("completion zsh: exit %d, %.30q", code, script)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "_idexctl"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range append(completionCases, struct {
		words []string
		want  []string
	}{[]string{"run", "--student", "alice", "x.py", ""}, []string{"<files>"}}) {
		quoted := make([]string, len(tc.words))
		for i, w := range tc.words {
			quoted[i] = "'" + w + "'"
		}
		prog := `compdef() { :; }
_describe() { local w; for w in "${(@P)4}"; do print -r -- "${w%%:*}"; done; }
_files() { print -r -- '<files>'; }
source ./_idexctl
words=(idexctl ` + strings.Join(quoted, " ") + `)
CURRENT=${#words}
_idexctl`
		got := inShell(t, dir, prog, "zsh", "-f")
		want := tc.want
		if strings.Contains(strings.Join(tc.words, " "), "--reason=") {
			want = []string{"--reason=timed_out"} // zsh completes the whole word
		}
		if !slices.Equal(got, want) {
			t.Errorf("zsh completion of idexctl %s: %q, want %q", strings.Join(tc.words, " "), got, want)
		}
	}
}
