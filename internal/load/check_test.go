package load

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/idexd/idexd/internal/api"
)

// The checks must be able to fail: a reader that missed, repeated or saw
// an altered event is counted.
func TestCompareEvents(t *testing.T) {
	full := []api.Event{
		{Seq: 1, Type: api.EventStdout, Data: "a"},
		{Seq: 2, Type: api.EventStderr, Data: "b"},
		{Seq: 3, Type: api.EventStdout, Data: "c"},
		{Seq: 4, Type: api.EventEnd},
	}
	for _, tc := range []struct {
		name      string
		seen      []api.Event
		lost, dup int
	}{
		{"exact", full, 0, 0},
		{"one missing", []api.Event{full[0], full[2], full[3]}, 2, 0}, // missing, and out of order
		{"one twice", []api.Event{full[0], full[1], full[1], full[2], full[3]}, 0, 1},
		{"altered", []api.Event{full[0], {Seq: 2, Type: api.EventStderr, Data: "x"}, full[2], full[3]}, 1, 0},
	} {
		m := &mix{rep: newReport()}
		m.compareEvents(&runRec{id: "r", sp: specs[0], seen: tc.seen}, full)
		if m.rep.Left.EventsLost != tc.lost || m.rep.Left.EventsDup != tc.dup {
			t.Errorf("%s: lost %d dup %d, want %d %d (%v)", tc.name, m.rep.Left.EventsLost, m.rep.Left.EventsDup, tc.lost, tc.dup, m.rep.Problems)
		}
	}
}

func TestCheckFiles(t *testing.T) {
	root := t.TempDir()
	mk := func(p string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := &mix{rep: newReport(), root: root, byName: map[string]*student{}}
	for _, n := range []string{"load00", "load01"} {
		m.students = append(m.students, student{name: n, workdir: filepath.Join(root, n)})
	}
	for i := range m.students {
		m.byName[m.students[i].name] = &m.students[i]
	}
	mk(filepath.Join(root, "load00", KindQuick.File()))
	mk(filepath.Join(root, "load00", markerPrefix+"load00.1"))
	mk(filepath.Join(root, "load01", markerPrefix+"load01.2"))
	before, err := listNames(root)
	if err != nil {
		t.Fatal(err)
	}
	m.checkFiles(before)
	if m.rep.Left.FilesOutside != 0 {
		t.Fatalf("a clean tree: %v", m.rep.Problems)
	}
	mk(filepath.Join(root, "load01", markerPrefix+"load00.3")) // load00's run wrote into load01
	mk(filepath.Join(root, escapePrefix+"load00.4"))           // at the root
	mk(filepath.Join(root, "load00", "sub", "stray"))          // not the load's
	m.checkFiles(before)
	if m.rep.Left.FilesOutside != 3 {
		t.Fatalf("3 files out of place, counted %d: %v", m.rep.Left.FilesOutside, m.rep.Problems)
	}
}

// TestCheckKeptCgroups: the kept warm groups are held to the sandbox's
// bound, which a burst may fill beyond the pool's size, and to none
// without warm helpers.
func TestCheckKeptCgroups(t *testing.T) {
	for _, c := range []struct {
		kept, warm int
		ok         bool
	}{{0, 4, true}, {80, 4, true}, {81, 4, false}, {80, 80, true}, {81, 80, false}, {100, 100, true}, {101, 100, false}, {0, 0, true}, {1, 0, false}} {
		p := checkKeptCgroups(api.DebugState{CgroupsKept: c.kept}, c.warm)
		if (p == "") != c.ok {
			t.Errorf("%d kept with %d warm helpers: %q, want ok %v", c.kept, c.warm, p, c.ok)
		}
	}
}
