package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestPythonClient runs clients/python's tests against the real daemon,
// and the idexd_client example of docs/protocol.md as printed.
func TestPythonClient(t *testing.T) {
	d := newDaemonWith(t, daemonOpts{extra: "quota_mb = 2\nfile_max_mb = 1\n"})
	src, err := filepath.Abs("../clients/python/src")
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"IDEX_SOCKET=" + d.sock, "PYTHONPATH=" + src, "PATH=/usr/bin:/bin",
		"IDEXD_TEST_FILE_MAX_BYTES=1048576", "PYTHONDONTWRITEBYTECODE=1"}
	// The suite under the system's Python, and under the oldest Python
	// the package claims (requires-python >= 3.9) where one is installed.
	pythons := []string{"/usr/bin/python3"}
	if py39 := python39(); py39 != "" {
		pythons = append(pythons, py39)
	} else {
		t.Log("no Python 3.9 here: the suite runs under /usr/bin/python3 only (TestPythonClientSource checks 3.9's grammar)")
	}
	for _, py := range pythons {
		cmd := exec.Command(py, "-m", "unittest", "discover", "-v", "-s", "../clients/python/tests")
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		t.Logf("python client tests under %s:\n%s", py, out)
		if err != nil {
			t.Fatalf("python client tests under %s failed: %v", py, err)
		}
		if !strings.Contains(string(out), "\nOK") {
			t.Fatalf("python client tests under %s did not report OK", py)
		}
	}

	doc, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```python\n(from idexd_client import.*?)```\n\nIt prints:\n\n```\n(.*?)```").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/protocol.md has no idexd_client example followed by what it prints")
	}
	cmd := exec.Command("/usr/bin/python3", "-c", string(m[1]))
	cmd.Env = env
	got, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the idexd_client example failed: %v\n%s", err, got)
	}
	if string(got) != string(m[2]) {
		t.Fatalf("the idexd_client example printed:\n%s\nthe document says:\n%s", got, m[2])
	}
}

// TestPythonErrorClasses: clients/python has a class for every error
// code of internal/api.
func TestPythonErrorClasses(t *testing.T) {
	goCodes, err := os.ReadFile("../internal/api/errors.go")
	if err != nil {
		t.Fatal(err)
	}
	py, err := os.ReadFile("../clients/python/src/idexd_client/errors.py")
	if err != nil {
		t.Fatal(err)
	}
	codes := regexp.MustCompile(`Code\w+\s+Code = "(\w+)"`).FindAllSubmatch(goCodes, -1)
	if len(codes) < 20 {
		t.Fatalf("found only %d codes in internal/api/errors.go", len(codes))
	}
	for _, c := range codes {
		if !strings.Contains(string(py), `code = "`+string(c[1])+`"`) {
			t.Errorf("clients/python has no exception class for %s", c[1])
		}
	}
}

// python39 finds a Python 3.9 interpreter (on PATH, or pyenv's), or "".
func python39() string {
	if p, err := exec.LookPath("python3.9"); err == nil && !strings.Contains(p, "/shims/") {
		return p
	}
	root := os.Getenv("PYENV_ROOT")
	if root == "" {
		root = filepath.Join(os.Getenv("HOME"), ".pyenv")
	}
	found, _ := filepath.Glob(filepath.Join(root, "versions", "3.9.*", "bin", "python3.9"))
	if len(found) == 0 {
		return ""
	}
	return found[len(found)-1]
}

// TestPythonClientSource: clients/python imports only the standard
// library and parses as Python 3.9 (its requires-python), whatever Python
// runs the suite; pyproject.toml says both; every public class and function
// has a docstring and type hints.
func TestPythonClientSource(t *testing.T) {
	check := `
import ast, pathlib, sys
bad = []
files = sorted(pathlib.Path("../clients/python/src/idexd_client").glob("*.py"))
if len(files) < 3:
    bad.append("found only %d files" % len(files))
for f in files:
    src = f.read_text()
    try:
        tree = ast.parse(src, str(f), feature_version=(3, 9))
    except SyntaxError as e:
        bad.append("%s is not Python 3.9: %s" % (f.name, e))
        continue
    for n in ast.walk(tree):
        mods = []
        if isinstance(n, ast.Import):
            mods = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.level == 0:
            mods = [n.module]
        for m in mods:
            top = m.split(".")[0]
            if top != "__future__" and top not in sys.stdlib_module_names:
                bad.append("%s imports %s, not in the standard library" % (f.name, m))
    # Every public class and function has a docstring, and every public
    # function's arguments and return are annotated.
    for n in ast.walk(tree):
        if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and not n.name.startswith("_"):
            if ast.get_docstring(n) is None:
                bad.append("%s: %s has no docstring" % (f.name, n.name))
        if isinstance(n, ast.FunctionDef) and (not n.name.startswith("_") or n.name == "__init__"):
            args = [a for a in n.args.args + n.args.kwonlyargs if a.arg not in ("self", "cls")]
            if n.returns is None or any(a.annotation is None for a in args):
                bad.append("%s: %s is not fully annotated" % (f.name, n.name))
print("\n".join(bad) or "ok %d files" % len(files))
`
	out, err := exec.Command("/usr/bin/python3", "-c", check).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "ok ") {
		t.Fatalf("clients/python's source: %v\n%s", err, out)
	}
	t.Log(strings.TrimSpace(string(out)))
	pp, err := os.ReadFile("../clients/python/pyproject.toml")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`requires-python = ">=3.9"`, "dependencies = []"} {
		if !strings.Contains(string(pp), want) {
			t.Errorf("clients/python/pyproject.toml does not say %s", want)
		}
	}
}
