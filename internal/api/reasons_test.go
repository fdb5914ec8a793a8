package api_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"slices"
	"strconv"
	"testing"

	"github.com/idexd/idexd/internal/api"
)

// TestReasonsListsEveryReason: every Reason constant declared in api.go is
// in api.Reasons, so that a new end reason reaches idexctl's checks and
// completion without a second list to remember.
func TestReasonsListsEveryReason(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "api.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var declared []api.Reason
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || vs.Type == nil || len(vs.Values) != 1 {
			return true
		}
		if id, ok := vs.Type.(*ast.Ident); ok && id.Name == "Reason" {
			if lit, ok := vs.Values[0].(*ast.BasicLit); ok {
				v, err := strconv.Unquote(lit.Value)
				if err != nil {
					t.Fatal(err)
				}
				declared = append(declared, api.Reason(v))
			}
		}
		return true
	})
	if len(declared) < 9 {
		t.Fatalf("found only %d Reason constants: %q", len(declared), declared)
	}
	for _, r := range declared {
		if !slices.Contains(api.Reasons, r) {
			t.Errorf("api.Reasons lacks %s", r)
		}
	}
	if len(api.Reasons) != len(declared) {
		t.Errorf("api.Reasons has %d entries, api.go declares %d reasons", len(api.Reasons), len(declared))
	}
}
