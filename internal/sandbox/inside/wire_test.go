package inside

import (
	"reflect"
	"strings"
	"testing"
)

func TestJobRoundTrip(t *testing.T) {
	for _, j := range []Job{
		{Interpreter: "/usr/bin/python3", Argv: []string{"python3", "-u", "a b.py"}, Env: []string{"HOME=/w/alice", "LANG=C.UTF-8"},
			Dir: "/w/alice", Cwd: "/w/alice/sub", User: "alice", UID: 20001, GID: 20001, Umask: 0o77,
			Rlimits: Rlimits{FileSizeBytes: 1 << 30, OpenFiles: 256, CPUSeconds: 11}},
		{Interpreter: "/bin/sh", Argv: []string{"sh", ""}, Env: []string{}, Terminal: &Winsize{Rows: 24, Cols: 80},
			Dir: "/w/b", Cwd: "/w/b", UID: 1, GID: 2, Rlimits: Rlimits{FileSizeBytes: ^uint64(0)}},
	} {
		b, err := j.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var got Job
		if err := got.UnmarshalBinary(b); err != nil {
			t.Fatalf("decode %q: %v", b, err)
		}
		if !reflect.DeepEqual(got, j) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, j)
		}
		// Every proper prefix is refused, not half-read.
		for n := range len(b) {
			if err := new(Job).UnmarshalBinary(b[:n]); err == nil {
				t.Fatalf("prefix of %d of %d bytes decoded", n, len(b))
			}
		}
		if err := new(Job).UnmarshalBinary(append(b, 'x', 0)); err == nil || !strings.Contains(err.Error(), "after the last field") {
			t.Errorf("trailing field: %v", err)
		}
	}
}

func TestJobRefusals(t *testing.T) {
	if _, err := (Job{Argv: []string{"a\x00b"}}).MarshalBinary(); err == nil {
		t.Error("a NUL inside an argument was encoded")
	}
	b, err := Job{Argv: []string{"x"}}.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	other := strings.Replace(string(b), JobMagic, "idexd-job-0", 1)
	if err := new(Job).UnmarshalBinary([]byte(other)); err == nil || !strings.Contains(err.Error(), "different builds") {
		t.Errorf("job of another build: %v", err)
	}
	// A count beyond what the packet can hold.
	lie := strings.Replace(string(b), "\x001\x00x\x00", "\x004000000000\x00x\x00", 1)
	if err := new(Job).UnmarshalBinary([]byte(lie)); err == nil {
		t.Error("an argv count beyond the packet decoded")
	}
}

func TestSetupRoundTrip(t *testing.T) {
	s := Setup{Network: NetworkNone, TmpBytes: 256 << 20, TmpInodes: 16384, Filter: []byte{0x20, 0, 0, 0, 4, 0, 0, 0}}
	got, err := ParseSetup(s.Args())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Errorf("round trip: got %+v, want %+v", got, s)
	}
	for _, args := range [][]string{nil, {"none", "1", "2"}, {"none", "x", "2", "00"}, {"none", "1", "2", "0g"}} {
		if _, err := ParseSetup(args); err == nil {
			t.Errorf("setup %q parsed", args)
		}
	}
}
