// Package docs_test holds docs/architecture.md and the README's "How a run
// works" to the code: every Go name, file and test they cite exists, and
// every package under internal/ is in the picture. A rename (run.Run to
// run.Execution) that the prose did not follow fails here.
package docs_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// code is what the parsed sources declare.
type code struct {
	// pkgs maps a package name to the top-level names it declares.
	pkgs map[string]map[string]bool
	// members maps a type name (of any package) to its methods and fields.
	members map[string]map[string]bool
	// decls holds every top-level name, method and field, of any package.
	decls map[string]bool
	// tests holds every Test function.
	tests map[string]bool
	// files holds the base names of the Go files.
	files map[string]bool
	// dirs holds the package directories under internal/, relative to it.
	dirs []string
}

func add(m map[string]map[string]bool, k, v string) {
	if m[k] == nil {
		m[k] = map[string]bool{}
	}
	m[k][v] = true
}

// parse reads every Go file of the module (tests included) without
// building anything.
func parse(t *testing.T) *code {
	t.Helper()
	c := &code{pkgs: map[string]map[string]bool{}, members: map[string]map[string]bool{},
		decls: map[string]bool{}, tests: map[string]bool{}, files: map[string]bool{}}
	fset := token.NewFileSet()
	dirs := map[string]bool{}
	err := filepath.WalkDir("..", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".") && p != "..") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		c.files[d.Name()] = true
		if rel, ok := strings.CutPrefix(filepath.ToSlash(filepath.Dir(p)), "../internal/"); ok && !strings.HasSuffix(p, "_test.go") {
			dirs[rel] = true
		}
		pkg := strings.TrimSuffix(f.Name.Name, "_test")
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				c.decls[d.Name.Name] = true
				if d.Recv == nil {
					add(c.pkgs, pkg, d.Name.Name)
					if strings.HasPrefix(d.Name.Name, "Test") {
						c.tests[d.Name.Name] = true
					}
					continue
				}
				typ := d.Recv.List[0].Type
				if s, ok := typ.(*ast.StarExpr); ok {
					typ = s.X
				}
				if g, ok := typ.(*ast.IndexExpr); ok {
					typ = g.X
				}
				if id, ok := typ.(*ast.Ident); ok {
					add(c.members, id.Name, d.Name.Name)
				}
			case *ast.GenDecl:
				for _, s := range d.Specs {
					switch s := s.(type) {
					case *ast.TypeSpec:
						add(c.pkgs, pkg, s.Name.Name)
						c.decls[s.Name.Name] = true
						var fields *ast.FieldList
						switch tt := s.Type.(type) {
						case *ast.StructType:
							fields = tt.Fields
						case *ast.InterfaceType:
							fields = tt.Methods
						}
						if fields == nil {
							continue
						}
						for _, fl := range fields.List {
							for _, n := range fl.Names {
								add(c.members, s.Name.Name, n.Name)
								c.decls[n.Name] = true
							}
						}
					case *ast.ValueSpec:
						for _, n := range s.Names {
							add(c.pkgs, pkg, n.Name)
							c.decls[n.Name] = true
						}
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for d := range dirs {
		c.dirs = append(c.dirs, d)
	}
	slices.Sort(c.dirs)
	if len(c.pkgs["run"]) == 0 || len(c.members["Engine"]) == 0 {
		t.Fatalf("parsed no run.Engine: the walk found %d packages", len(c.pkgs))
	}
	return c
}

// notGo are code spans that look like Go names but name kernel files.
var notGo = map[string]bool{"cgroup.events": true, "cgroup.kill": true}

var (
	span      = regexp.MustCompile("`([^`\n]+)`")
	dotted    = regexp.MustCompile(`^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$`)
	goName    = regexp.MustCompile(`^[A-Z][a-z]\w*$`) // CamelCase, not an environment variable
	goFile    = regexp.MustCompile(`^[a-z_]+\.go$`)
	inPicture = regexp.MustCompile(`\b([a-z]+)\.([A-Z]\w*)\b`)
)

// check reports a name of text that the code does not have.
func (c *code) check(t *testing.T, doc, text string) int {
	t.Helper()
	n := 0
	for _, m := range span.FindAllStringSubmatch(text, -1) {
		s := m[1]
		switch {
		case notGo[s]:
		case goFile.MatchString(s):
			n++
			if !c.files[s] {
				t.Errorf("%s cites %s: no such Go file", doc, s)
			}
		case strings.HasPrefix(s, "Test") && goName.MatchString(s):
			n++
			if !c.tests[s] {
				t.Errorf("%s cites %s: no such test", doc, s)
			}
		case dotted.MatchString(s):
			if ok, known := c.resolve(s); known {
				n++
				if !ok {
					t.Errorf("%s cites %s: not in the code", doc, s)
				}
			}
		case goName.MatchString(s):
			n++
			if !c.decls[s] {
				t.Errorf("%s cites %s: not in the code", doc, s)
			}
		}
	}
	return n
}

// resolve looks a dotted name up: pkg.Name[.Member] or Type.Member.
// known is false when the first part is none of ours (errors.Is).
func (c *code) resolve(s string) (ok, known bool) {
	parts := strings.Split(s, ".")
	if names, isPkg := c.pkgs[parts[0]]; isPkg {
		if !names[parts[1]] {
			return false, true
		}
		if len(parts) == 2 {
			return true, true
		}
		return c.members[parts[1]][parts[2]], true
	}
	if ms, isType := c.members[parts[0]]; isType {
		return len(parts) == 2 && ms[parts[1]], true
	}
	return false, false
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestArchitectureNamesTheCode: docs/architecture.md's names exist, and
// its picture has every package under internal/.
func TestArchitectureNamesTheCode(t *testing.T) {
	c := parse(t)
	doc := read(t, "architecture.md")
	if n := c.check(t, "docs/architecture.md", doc); n < 20 {
		t.Fatalf("found only %d Go names in docs/architecture.md", n)
	}
	_, rest, ok := strings.Cut(doc, "```\n")
	picture, _, ok2 := strings.Cut(rest, "```\n")
	if !ok || !ok2 {
		t.Fatal("docs/architecture.md has no picture (a ``` block)")
	}
	// pkg.Name in the picture, outside code spans.
	for _, m := range inPicture.FindAllStringSubmatch(picture, -1) {
		if ok, known := c.resolve(m[1] + "." + m[2]); known && !ok {
			t.Errorf("docs/architecture.md's picture has %s.%s: not in the code", m[1], m[2])
		} else if !known {
			t.Errorf("docs/architecture.md's picture has %s.%s: no package %s", m[1], m[2], m[1])
		}
	}
	words := regexp.MustCompile(`[a-z][a-z/]*`).FindAllString(doc, -1)
	for _, d := range c.dirs {
		if !slices.Contains(words, d) && !slices.Contains(words, "internal/"+d) {
			t.Errorf("docs/architecture.md does not name the package internal/%s", d)
		}
	}
}

// TestReadmeRunNamesTheCode: the README's "How a run works" cites only
// names, files and tests the code has.
func TestReadmeRunNamesTheCode(t *testing.T) {
	c := parse(t)
	readme := read(t, "../README.md")
	_, sec, ok := strings.Cut(readme, "\n## How a run works\n")
	if !ok {
		t.Fatal("README.md has no \"How a run works\"")
	}
	if i := strings.Index(sec, "\n## "); i >= 0 {
		sec = sec[:i]
	}
	if n := c.check(t, "README.md (How a run works)", sec); n < 5 {
		t.Fatalf("found only %d Go names in README's How a run works", n)
	}
}
