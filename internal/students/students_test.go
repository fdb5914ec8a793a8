package students

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"runtime"
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

// TestResolveScriptAllocations: resolving a script (every run's start)
// hashes it through a reused buffer, not a 32 KiB one made each time,
// and still hashes all of it.
func TestResolveScriptAllocations(t *testing.T) {
	wd := t.TempDir()
	body := strings.Repeat("print('hi')\n", 4000) // 48 KB: more than one buffer
	if err := os.WriteFile(filepath.Join(wd, "hi.py"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256([]byte(body))
	s, err := ResolveScript(wd, "hi.py")
	if err != nil || s.SHA256 != hex.EncodeToString(want[:]) {
		t.Fatalf("ResolveScript: %+v, %v; want sha256 %x", s, err, want)
	}
	// Under -race a sync.Pool drops a quarter of what it is given, so
	// about 8 KiB a call comes back; without the pool it is 33 KiB.
	const calls = 200
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range calls {
		if _, err := ResolveScript(wd, "hi.py"); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	per := (after.TotalAlloc - before.TotalAlloc) / calls
	t.Logf("%d bytes allocated a call", per)
	if per > 20<<10 {
		t.Errorf("ResolveScript allocated %d bytes a call, want at most 20 KiB", per)
	}
}
