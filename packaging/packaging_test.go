// Package packaging holds the tests of what the package and the Makefile
// give a sysadmin: the default configuration, the docs, the man page and
// completion in the .deb/.rpm, the version stamp of every binary, and the
// Makefile's first words on a fresh machine.
package packaging

import (
	"bytes"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/idexd/idexd/internal/config"
	"github.com/idexd/idexd/internal/testutil"
)

// configKeys are the TOML keys of idexd's configuration: top-level ones,
// and those of the [defaults] and [max] tables as "defaults.memory_mb".
func configKeys(t *testing.T) (top []string, nested []string) {
	t.Helper()
	ct := reflect.TypeOf(config.Config{})
	for i := range ct.NumField() {
		f := ct.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if key == "" || key == "-" {
			continue
		}
		top = append(top, key)
		if f.Type.Kind() == reflect.Struct && f.Type.Name() != "Duration" {
			for j := range f.Type.NumField() {
				sub, _, _ := strings.Cut(f.Type.Field(j).Tag.Get("toml"), ",")
				if sub != "" && sub != "-" {
					nested = append(nested, key+"."+sub)
				}
			}
		}
	}
	if len(top) < 20 {
		t.Fatalf("only %d config keys found: %q", len(top), top)
	}
	return top, nested
}

// TestPackagedConfigNamesEveryKey: /etc/idexd/idexd.toml shows every
// setting (commented out, with its default), in its table.
func TestPackagedConfigNamesEveryKey(t *testing.T) {
	b, err := os.ReadFile("idexd.toml")
	if err != nil {
		t.Fatal(err)
	}
	table := ""
	seen := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if m := regexp.MustCompile(`^\[(\w+)\]$`).FindStringSubmatch(line); m != nil {
			table = m[1] + "."
			continue
		}
		if m := regexp.MustCompile(`^#?(\w+) = `).FindStringSubmatch(line); m != nil {
			seen[table+m[1]] = true
		}
	}
	top, nested := configKeys(t)
	for _, k := range top {
		if k == "defaults" || k == "max" {
			if !strings.Contains(string(b), "\n["+k+"]\n") {
				t.Errorf("packaging/idexd.toml has no [%s] table", k)
			}
			continue
		}
		if !seen[k] {
			t.Errorf("packaging/idexd.toml does not show %s (before any [table])", k)
		}
	}
	for _, k := range nested {
		if !seen[k] {
			t.Errorf("packaging/idexd.toml does not show %s", k)
		}
	}
}

// TestREADMEConfigTableNamesEveryKey: the README's configuration table
// names every key.
func TestREADMEConfigTableNamesEveryKey(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "\n## Configuration\n")
	if !ok {
		t.Fatal("README.md has no ## Configuration")
	}
	sec, _, _ = strings.Cut(sec, "\n## ")
	named := map[string]bool{}
	for _, line := range strings.Split(sec, "\n") {
		if !strings.HasPrefix(line, "| ") {
			continue
		}
		first := strings.Split(line, "|")[1]
		for _, m := range regexp.MustCompile("`\\[?(\\w+)\\]?`").FindAllStringSubmatch(first, -1) {
			named[m[1]] = true
		}
	}
	top, _ := configKeys(t)
	for _, k := range top {
		if !named[k] {
			t.Errorf("README.md's configuration table does not name %s", k)
		}
	}
}

// runMake runs make in the repository root and returns its combined output.
func runMake(t *testing.T, env []string, cred *syscall.Credential, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("make", append([]string{"-C", "..", "--no-print-directory"}, args...)...)
	cmd.Env = env
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func goEnv(t *testing.T) []string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go is not on PATH: %v", err)
	}
	env := []string{"PATH=" + filepath.Dir(gobin) + ":/usr/bin:/bin"}
	for _, k := range []string{"HOME", "GOCACHE", "GOMODCACHE", "GOPATH", "GOFLAGS", "GOPROXY"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// TestPackageContents: the package carries the README, the protocol, a
// copyright file, the man page and both completions, and make package
// builds every file it takes from .bin/ before it packs.
func TestPackageContents(t *testing.T) {
	b, err := os.ReadFile("nfpm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	srcOf := map[string]string{}
	var src string
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "- "))
		if v, ok := strings.CutPrefix(line, "src: "); ok {
			src = v
		}
		if v, ok := strings.CutPrefix(line, "dst: "); ok {
			srcOf[v] = src
			src = ""
		}
	}
	for _, dst := range []string{
		"/usr/share/doc/idexd/README.md", "/usr/share/doc/idexd/protocol.md", "/usr/share/doc/idexd/copyright",
		"/usr/share/man/man1/idexctl.1.gz", "/usr/share/bash-completion/completions/idexctl",
		"/usr/share/zsh/vendor-completions/_idexctl", "/usr/bin/idexd-sandbox",
	} {
		if srcOf[dst] == "" {
			t.Errorf("packaging/nfpm.yaml installs nothing at %s", dst)
		}
	}
	dir := t.TempDir()
	plan, err := runMake(t, goEnv(t), nil, "-n", "package", "BIN="+dir)
	if err != nil {
		t.Fatalf("make -n package: %v\n%s", err, plan)
	}
	for dst, src := range srcOf {
		if src == "" {
			continue
		}
		name, ok := strings.CutPrefix(src, ".bin/")
		if !ok {
			if _, err := os.Stat(filepath.Join("..", src)); err != nil {
				t.Errorf("%s (for %s): %v", src, dst, err)
			}
			continue
		}
		made := regexp.MustCompile(`(-o |> )` + regexp.QuoteMeta(filepath.Join(dir, strings.TrimSuffix(name, ".gz"))) + `(\s|$)`)
		if !made.MatchString(plan) {
			t.Errorf("make package does not build %s (for %s) before packing; its plan:\n%s", src, dst, plan)
		}
	}
}

// TestMakeBuildStampsEveryBinary: make build stamps the version into
// idexctl and idexd-sandbox as into idexd, and make man into the page.
func TestMakeBuildStampsEveryBinary(t *testing.T) {
	dir := t.TempDir()
	const v = "v9.8.7-stamp"
	if out, err := runMake(t, goEnv(t), nil, "build", "man", "BIN="+dir, "VERSION="+v); err != nil {
		t.Fatalf("make build man: %v\n%s", err, out)
	}
	for _, c := range []struct{ bin, want string }{
		{"idexd-sandbox", "idexd-sandbox " + v + "\n"},
		{"idexctl", "idexctl " + v + "\n"},
	} {
		out, err := exec.Command(filepath.Join(dir, c.bin), "--version").CombinedOutput()
		if err != nil || string(out) != c.want {
			t.Errorf("%s --version: %v, %q; want %q", c.bin, err, out, c.want)
		}
	}
	page, err := exec.Command("zcat", filepath.Join(dir, "idexctl.1.gz")).Output()
	if err != nil || !strings.Contains(string(page), `"idexctl v9.8.7\-stamp"`) {
		t.Errorf("idexctl.1.gz: %v, %.80q: want the version in .TH", err, page)
	}
}

// TestMakeRunSaysNeedsRootFirst: as another user, make run says it needs
// root before it builds anything (here, with no Go at all).
func TestMakeRunSaysNeedsRootFirst(t *testing.T) {
	testutil.RequireRoot(t)
	out, err := runMake(t, []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"},
		&syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}, "run", "GO=/nonexistent/go")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(out, "make run needs root") {
		t.Fatalf("make run as nobody: %v\n%s\nwant a failure that says it needs root", err, out)
	}
	if strings.Contains(out, "/nonexistent/go") || strings.Contains(out, "CGO_ENABLED") {
		t.Fatalf("make run as nobody tried to build first:\n%s", out)
	}
}

// TestMakeWithoutGoSaysHow: without go on PATH, make says how to put it
// there instead of "go: No such file or directory".
func TestMakeWithoutGoSaysHow(t *testing.T) {
	// A PATH with nothing on it: wherever go is installed, it is not there.
	out, err := runMake(t, []string{"PATH=" + t.TempDir()}, nil, "build", "BIN="+t.TempDir())
	if err == nil || !strings.Contains(out, "Go 1.26 must be on PATH, e.g. export PATH=$PATH:/usr/local/go/bin") {
		t.Fatalf("make build without go: %v\n%s\nwant how to put go on PATH", err, out)
	}
}

// TestHelperLibcAndCopyright: with musl-gcc, build.sh links the helper
// statically (no dynamic loader per run's exec) and the copyright file
// then carries musl's notice; the glibc build says it is dynamic and
// carries none. CI installs musl-tools, so there its absence fails.
func TestHelperLibcAndCopyright(t *testing.T) {
	if _, err := exec.LookPath("musl-gcc"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("musl-gcc: %v; .ci/run installs musl-tools, and the shipped helper is built with it", err)
		}
		t.Skip("no musl-gcc (apt-get install musl-tools)")
	}
	dir := t.TempDir()
	for _, c := range []struct {
		libc   string
		static bool
	}{{"musl", true}, {"glibc", false}} {
		bin := filepath.Join(dir, "idexd-sandbox-"+c.libc)
		build := exec.Command("../cmd/idexd-sandbox/build.sh", "-o", bin, "v1")
		build.Env = append(os.Environ(), "IDEXD_HELPER_LIBC="+c.libc)
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build.sh with %s: %v\n%s", c.libc, err, out)
		}
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		interp := false
		for _, p := range f.Progs {
			interp = interp || p.Type == elf.PT_INTERP
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if interp == c.static {
			t.Errorf("%s build: has a program interpreter %v, want %v", c.libc, interp, !c.static)
		}
		if out, err := exec.Command(bin, "--version").CombinedOutput(); err != nil || string(out) != "idexd-sandbox v1\n" {
			t.Errorf("%s build --version: %v, %q", c.libc, err, out)
		}
		cmd := exec.Command("packaging/copyright.sh")
		cmd.Env = append(os.Environ(), "HELPER="+bin)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		cmd.Dir = ".."
		text, err := cmd.Output()
		if err != nil {
			t.Fatalf("copyright.sh with the %s helper: %v\n%s", c.libc, err, stderr.String())
		}
		hasMusl := bytes.Contains(text, []byte("\n=== musl ")) && bytes.Contains(text, []byte("Rich Felker"))
		if hasMusl != c.static {
			t.Errorf("copyright with the %s helper: musl's notice present %v, want %v", c.libc, hasMusl, c.static)
		}
	}
}
