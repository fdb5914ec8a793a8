package students_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/idexd/idexd/internal/students"
	"github.com/idexd/idexd/internal/testutil"
)

func TestCheckSubordinate(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// As useradd leaves them for two users: the second one's range runs
	// into the default uid range.
	subuid := write("subuid", "ada:100000:65536\nbea:165536:65536\n")
	subgid := write("subgid", "ada:100000:65536\n# a comment\nbroken line\n")
	defs := write("login.defs", "SUB_UID_MIN\t\t   100000\nSUB_UID_MAX\t\t600100000\n")
	files := []string{subuid, subgid}

	_, err := students.CheckSubordinate(200000, 299999, files, defs)
	if err == nil || !strings.Contains(err.Error(), "bea has 165536-231071") || !strings.Contains(err.Error(), "uid_min = 600200000, uid_max = 600299999") {
		t.Fatalf("a range overlapping bea's subordinate uids: %v; want refused, naming the entry and a free range", err)
	}
	warn, err := students.CheckSubordinate(300000, 399999, files, defs)
	if err != nil || !strings.Contains(warn, "useradd") || !strings.Contains(warn, "uid_min = 600200000") {
		t.Fatalf("a free range inside useradd's area: warn %q, err %v; want a warning naming a range out of its way", warn, err)
	}
	warn, err = students.CheckSubordinate(600200000, 600299999, files, defs)
	if err != nil || warn != "" {
		t.Fatalf("the range proposed: warn %q, err %v; want neither", warn, err)
	}
	if warn, err := students.CheckSubordinate(200000, 299999, []string{filepath.Join(dir, "none")}, filepath.Join(dir, "none")); err != nil || warn == "" {
		t.Fatalf("no subordinate files, shadow's default area: warn %q, err %v", warn, err)
	}
}

func TestScanOwners(t *testing.T) {
	testutil.RequireRoot(t) // chown
	d := &students.Dirs{Root: t.TempDir()}
	mk := func(rel string, uid int, dir bool) {
		t.Helper()
		p := filepath.Join(d.Root, rel)
		var err error
		if dir {
			err = os.MkdirAll(p, 0o700)
		} else {
			err = os.WriteFile(p, nil, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	mk("alice", 200000, true)
	mk("alice/deep", 200000, true)
	mk("alice/deep/f", 200009, false)
	mk("bob", 200001, true)
	mk("Not-A-Name", 200002, true)
	mk("www", 33, true)
	mk("huge", 400000, true)
	if err := os.Symlink("/etc", filepath.Join(d.Root, "alice", "link")); err != nil {
		t.Fatal(err)
	}
	o, err := d.Scan(200000, 299999, false)
	if err != nil {
		t.Fatal(err)
	}
	if o.MaxUID != 200002 || o.Students["alice"] != 200000 || o.Students["bob"] != 200001 || o.Students["www"] != 33 || len(o.Students) != 4 {
		t.Fatalf("shallow scan: %+v", o)
	}
	if o, err = d.Scan(200000, 299999, true); err != nil || o.MaxUID != 200009 {
		t.Fatalf("deep scan: %+v %v, want the file's uid 200009", o, err)
	}
}
