package api_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/idexd/idexd/internal/api"
)

// declared returns the values of the string constants of type typ that
// file declares.
func declared(t *testing.T, file, typ string) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || vs.Type == nil || len(vs.Values) != 1 {
			return true
		}
		if id, ok := vs.Type.(*ast.Ident); ok && id.Name == typ {
			if lit, ok := vs.Values[0].(*ast.BasicLit); ok {
				v, err := strconv.Unquote(lit.Value)
				if err != nil {
					t.Fatal(err)
				}
				out = append(out, v)
			}
		}
		return true
	})
	return out
}

// sameSet reports the values of want missing from list, and a length
// mismatch.
func sameSet[T ~string](t *testing.T, name string, list []T, want []string) {
	t.Helper()
	for _, v := range want {
		if !slices.Contains(list, T(v)) {
			t.Errorf("%s lacks %s", name, v)
		}
	}
	if len(list) != len(want) {
		t.Errorf("%s has %d entries, the source declares %d", name, len(list), len(want))
	}
}

// TestReasonsListsEveryReason: every Reason constant declared in api.go is
// in api.Reasons, so that a new end reason reaches idexctl's checks and
// completion without a second list to remember.
func TestReasonsListsEveryReason(t *testing.T) {
	reasons := declared(t, "api.go", "Reason")
	if len(reasons) < 9 {
		t.Fatalf("found only %d Reason constants: %q", len(reasons), reasons)
	}
	sameSet(t, "api.Reasons", api.Reasons, reasons)
}

// TestCodesListsEveryCode: the same for error codes and api.Codes, which
// the server's status mapping and the documentation tests go through.
func TestCodesListsEveryCode(t *testing.T) {
	codes := declared(t, "errors.go", "Code")
	if len(codes) < 19 {
		t.Fatalf("found only %d Code constants: %q", len(codes), codes)
	}
	sameSet(t, "api.Codes", api.Codes, codes)
}

// TestNoTransport: api holds the protocol's types and codes only; the
// HTTP mapping lives in the server and the client.
func TestNoTransport(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep == "net/http" || strings.HasPrefix(dep, "github.com/idexd/idexd/") && dep != "github.com/idexd/idexd/internal/api" {
			t.Errorf("internal/api depends on %s", dep)
		}
	}
}

// TestEveryReasonHasAMessage: a student reads a sentence for every end.
func TestEveryReasonHasAMessage(t *testing.T) {
	code := 3
	lim := api.Limits{MemoryMB: 512, WallSeconds: 30, CPUSeconds: 30, OutputKB: 1024}
	for _, reason := range api.Reasons {
		r := api.Run{Reason: reason, Limits: lim, ExitCode: &code, Signal: "SIGSEGV"}
		msg := api.EndMessage(&r)
		if msg == "" || !strings.HasSuffix(msg, ".") {
			t.Errorf("%s: message %q, want a sentence", reason, msg)
		}
	}
	for _, c := range []struct {
		run  api.Run
		want string
	}{
		{api.Run{Reason: api.ReasonOOMKilled, Limits: lim}, "Your program used more than 512 MB of memory and was stopped."},
		{api.Run{Reason: api.ReasonTimedOut, Limits: lim, CPUMS: 2000}, "Your program ran for more than 30 seconds and was stopped."},
		{api.Run{Reason: api.ReasonTimedOut, Limits: lim, CPUMS: 30001}, "Your program used more than 30 seconds of CPU time and was stopped."},
		{api.Run{Reason: api.ReasonOutputLimit, Limits: lim}, "Your program printed more than 1 MB; the rest was not shown."},
		{api.Run{Reason: api.ReasonLost, Limits: lim}, "The server restarted while your program was running; run it again."},
	} {
		if got := api.EndMessage(&c.run); got != c.want {
			t.Errorf("%s: %q, want %q", c.run.Reason, got, c.want)
		}
	}
}
