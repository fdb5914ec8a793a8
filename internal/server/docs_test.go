package server

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/idexd/idexd/internal/api"
)

// section returns the lines of docs/protocol.md's table under heading.
func section(t *testing.T, doc, heading string) [][]string {
	t.Helper()
	i := strings.Index(doc, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("docs/protocol.md has no %q", heading)
	}
	var rows [][]string
	started := false
	for _, line := range strings.Split(doc[i+len(heading)+2:], "\n") {
		if !strings.HasPrefix(line, "|") {
			if started {
				break
			}
			continue
		}
		started = true
		// Cells split on | not escaped as \|.
		cells := regexp.MustCompile(`\s*(?:^|[^\\])\|\s*`).Split(line, -1)
		if len(cells) > 2 && !strings.HasPrefix(cells[1], "---") {
			rows = append(rows, cells[1:len(cells)-1])
		}
	}
	return rows[1:] // the header row
}

var codeSpan = regexp.MustCompile("`([^`]+)`")

// TestProtocolDocListsTheRoutes: the route table of docs/protocol.md names
// exactly the routes the server serves, with their roles.
func TestProtocolDocListsTheRoutes(t *testing.T) {
	b, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]string{}
	optional := regexp.MustCompile(`\[[^]]*\]`)
	for _, row := range section(t, string(b), "## Routes") {
		for _, m := range codeSpan.FindAllStringSubmatch(row[0], -1) {
			route := optional.ReplaceAllString(m[1], "")
			route, _, _ = strings.Cut(route, "?")
			documented[route] = row[1]
		}
	}
	served := map[string]string{}
	for _, rt := range (&Server{}).routes() {
		served[rt.method+" "+strings.ReplaceAll(rt.path, "...}", "}")] = rt.role.String()
	}
	for r, role := range served {
		if d, ok := documented[r]; !ok {
			t.Errorf("docs/protocol.md does not list %s", r)
		} else if d != role {
			t.Errorf("docs/protocol.md gives %s role %s, the server %s", r, d, role)
		}
	}
	for r := range documented {
		if _, ok := served[r]; !ok {
			t.Errorf("docs/protocol.md lists %s, which the server does not serve", r)
		}
	}
}

// TestProtocolDocListsTheCodes: the error table of docs/protocol.md gives
// every code of api, with the status the server answers it with.
func TestProtocolDocListsTheCodes(t *testing.T) {
	b, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	var documented []api.Code
	for _, row := range section(t, string(b), "## Errors") {
		status, err := strconv.Atoi(row[1])
		if err != nil {
			t.Fatalf("row %q: status %q", row, row[1])
		}
		for _, m := range codeSpan.FindAllStringSubmatch(row[0], -1) {
			c := api.Code(m[1])
			documented = append(documented, c)
			if !slices.Contains(api.Codes, c) {
				t.Errorf("docs/protocol.md documents %s, which api does not define", c)
			} else if st := httpStatus(c); st != status {
				t.Errorf("docs/protocol.md gives %s status %d, the server %d", c, status, st)
			}
		}
	}
	for _, c := range api.Codes {
		if !slices.Contains(documented, c) {
			t.Errorf("docs/protocol.md does not document %s", c)
		}
	}
	if t.Failed() {
		t.Log(fmt.Sprint("documented: ", documented))
	}
}
