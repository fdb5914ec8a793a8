package students

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/idexd/idexd/internal/api"
)

func TestValidName(t *testing.T) {
	for _, ok := range []string{"alice", "_x", "a1-b_2", strings.Repeat("a", 32)} {
		if err := ValidName(ok); err != nil {
			t.Errorf("ValidName(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "Alice", "1abc", "-x", "a/b", "..", "a.b", strings.Repeat("a", 33), "é"} {
		if err := ValidName(bad); !errors.Is(err, api.ErrInvalidStudent) {
			t.Errorf("ValidName(%q) = %v, want invalid_student", bad, err)
		}
	}
}

// FuzzResolveScript: whatever the path, a resolved script is a regular file
// inside the workdir, and every refusal carries a protocol code.
func FuzzResolveScript(f *testing.F) {
	root := f.TempDir()
	wd := filepath.Join(root, "alice")
	outside := filepath.Join(root, "secret.py")
	for _, p := range []string{wd, filepath.Join(wd, "sub")} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			f.Fatal(err)
		}
	}
	for _, p := range []string{filepath.Join(wd, "main.py"), filepath.Join(wd, "sub", "m.py"), outside} {
		if err := os.WriteFile(p, []byte("print(1)\n"), 0o644); err != nil {
			f.Fatal(err)
		}
	}
	for name, target := range map[string]string{"out.py": "../secret.py", "abs.py": outside, "in.py": "sub/m.py", "loop.py": "loop.py"} {
		if err := os.Symlink(target, filepath.Join(wd, name)); err != nil {
			f.Fatal(err)
		}
	}
	for _, s := range []string{"main.py", "./main.py", "sub/m.py", "sub/../main.py", "../secret.py", "/etc/passwd",
		wd + "/main.py", "out.py", "abs.py", "in.py", "loop.py", "sub", "", "a\x00b", "sub/../../alice/main.py"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, script string) {
		s, err := ResolveScript(wd, script)
		if err != nil {
			switch api.AsError(err).Code {
			case api.CodeInvalidPath, api.CodeScriptNotFound:
			default:
				t.Fatalf("ResolveScript(%q): %v: want invalid_path or script_not_found", script, err)
			}
			return
		}
		for _, p := range []string{s.Rel, s.Canonical} {
			if filepath.IsAbs(p) || p == ".." || strings.HasPrefix(p, "../") {
				t.Fatalf("ResolveScript(%q) gave %q, outside the workdir", script, p)
			}
		}
		st, err := os.Lstat(filepath.Join(wd, s.Canonical))
		if err != nil || !st.Mode().IsRegular() {
			t.Fatalf("ResolveScript(%q): canonical %q is not a regular file (%v)", script, s.Canonical, err)
		}
	})
}
