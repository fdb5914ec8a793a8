// Package storetest is the conformance suite every store.Store passes:
// the SQLite and the PostgreSQL stores are interchangeable only if they
// behave the same, and this suite is where "the same" is written down.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/store"
)

// Run runs the suite. open returns a new, empty store for each subtest;
// the suite closes it (Close must tolerate a second call, which the
// "close" subtest makes).
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	fresh := func(t *testing.T) store.Store {
		t.Helper()
		s := open(t)
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("close store: %v", err)
			}
		})
		return s
	}
	t.Run("students/ensure_idempotent", func(t *testing.T) { testEnsureIdempotent(t, fresh(t)) })
	t.Run("students/concurrent_distinct", func(t *testing.T) { testEnsureConcurrent(t, fresh(t)) })
	t.Run("students/concurrent_same_name", func(t *testing.T) { testEnsureSameName(t, fresh(t)) })
	t.Run("students/range_exhausted", func(t *testing.T) { testRangeExhausted(t, fresh(t)) })
	t.Run("students/uid_never_reused", func(t *testing.T) { testUIDNeverReused(t, fresh(t)) })
	t.Run("students/put_get_list", func(t *testing.T) { testPutGetList(t, fresh(t)) })
	t.Run("students/unknown", func(t *testing.T) { testUnknownStudent(t, fresh(t)) })
	t.Run("students/adopt_and_reserve", func(t *testing.T) { testAdoptAndReserve(t, fresh(t)) })
	t.Run("runs/start_end_get", func(t *testing.T) { testStartEndGet(t, fresh(t)) })
	t.Run("runs/end_without_start", func(t *testing.T) { testEndWithoutStart(t, fresh(t)) })
	t.Run("runs/duplicate_start", func(t *testing.T) { testDuplicateStart(t, fresh(t)) })
	t.Run("runs/unknown", func(t *testing.T) { testUnknownRun(t, fresh(t)) })
	t.Run("runs/list_filters", func(t *testing.T) { testListFilters(t, fresh(t)) })
	t.Run("ping", func(t *testing.T) { testPing(t, fresh(t)) })
	t.Run("close", func(t *testing.T) { testClose(t, fresh(t)) })
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func mustEnsure(t *testing.T, s store.Store, name string, lo, hi uint32) store.Student {
	t.Helper()
	st, _, err := s.EnsureStudent(ctx(t), name, lo, hi)
	if err != nil {
		t.Fatalf("EnsureStudent(%s, %d, %d): %v", name, lo, hi, err)
	}
	if st.Name != name || st.UID < lo || st.UID > hi || st.GID != st.UID {
		t.Fatalf("EnsureStudent(%s, %d, %d) = %+v: want that name, uid in range, gid = uid", name, lo, hi, st)
	}
	return st
}

func testEnsureIdempotent(t *testing.T, s store.Store) {
	a, created, err := s.EnsureStudent(ctx(t), "alice", 60000, 60100)
	if err != nil || !created || a.UID != 60000 {
		t.Errorf("first EnsureStudent(alice) of an empty store = %+v created %v, %v; want uid 60000, created", a, created, err)
	}
	again, created, err := s.EnsureStudent(ctx(t), "alice", 60000, 60100)
	if err != nil || created || again != a {
		t.Errorf("second EnsureStudent(alice) = %+v created %v, %v; want %+v, not created", again, created, err, a)
	}
	// A later call with another range does not move an existing student.
	moved, _, err := s.EnsureStudent(ctx(t), "alice", 70000, 70100)
	if err != nil || moved != a {
		t.Errorf("EnsureStudent(alice) with another range = %+v, %v; want %+v", moved, err, a)
	}
	got, err := s.GetStudent(ctx(t), "alice")
	if err != nil || got != a {
		t.Errorf("GetStudent(alice) = %+v, %v; want %+v", got, err, a)
	}
	list, err := s.ListStudents(ctx(t))
	if err != nil || !slices.Equal(list, []store.Student{a}) {
		t.Errorf("ListStudents = %+v, %v; want [%+v]", list, err, a)
	}
}

func testEnsureConcurrent(t *testing.T, s store.Store) {
	const n, lo, hi = 100, 61000, 61999
	uids := make([]uint32, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	c := ctx(t)
	for i := range n {
		wg.Go(func() {
			st, _, err := s.EnsureStudent(c, fmt.Sprintf("s%03d", i), lo, hi)
			uids[i], errs[i] = st.UID, err
		})
	}
	wg.Wait()
	seen := map[uint32]int{}
	for i := range n {
		if errs[i] != nil {
			t.Errorf("EnsureStudent(s%03d): %v", i, errs[i])
			continue
		}
		if uids[i] < lo || uids[i] > hi {
			t.Errorf("s%03d got uid %d outside %d-%d", i, uids[i], lo, hi)
		}
		if j, dup := seen[uids[i]]; dup {
			t.Errorf("uid %d given to both s%03d and s%03d", uids[i], j, i)
		}
		seen[uids[i]] = i
	}
	list, err := s.ListStudents(c)
	if err != nil || len(list) != n {
		t.Fatalf("ListStudents: %d students, %v; want %d", len(list), err, n)
	}
	for i, st := range list {
		if want := fmt.Sprintf("s%03d", i); st.Name != want || st.UID != uids[i] {
			t.Errorf("ListStudents[%d] = %+v, want name %s uid %d (sorted by name)", i, st, want, uids[i])
		}
	}
}

func testEnsureSameName(t *testing.T, s store.Store) {
	const n = 20
	got := make([]store.Student, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	c := ctx(t)
	for i := range n {
		wg.Go(func() { got[i], _, errs[i] = s.EnsureStudent(c, "bob", 62000, 62999) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("EnsureStudent(bob) #%d: %v", i, errs[i])
		}
		if got[i] != got[0] {
			t.Errorf("EnsureStudent(bob) #%d = %+v, #0 = %+v: one student, one uid", i, got[i], got[0])
		}
	}
	// Losers of the race consumed no uid.
	if next := mustEnsure(t, s, "carol", 62000, 62999); next.UID != got[0].UID+1 {
		t.Errorf("next student got uid %d, want %d", next.UID, got[0].UID+1)
	}
}

func testRangeExhausted(t *testing.T, s store.Store) {
	a := mustEnsure(t, s, "a", 63000, 63001)
	b := mustEnsure(t, s, "b", 63000, 63001)
	if a.UID != 63000 || b.UID != 63001 {
		t.Errorf("uids %d, %d; want 63000, 63001", a.UID, b.UID)
	}
	_, _, err := s.EnsureStudent(ctx(t), "c", 63000, 63001)
	if !errors.Is(err, store.ErrUIDRangeExhausted) {
		t.Fatalf("EnsureStudent with the range used up: %v, want ErrUIDRangeExhausted", err)
	}
	if _, err := s.GetStudent(ctx(t), "c"); !errors.Is(err, api.ErrStudentNotFound) {
		t.Errorf("GetStudent(c) after the refusal: %v, want student_not_found", err)
	}
	// Known students still resolve: exhaustion refuses only new ones.
	if again := mustEnsure(t, s, "a", 63000, 63001); again != a {
		t.Errorf("EnsureStudent(a) = %+v, want %+v", again, a)
	}
	// A wider range goes on where the counter stands.
	if c := mustEnsure(t, s, "c", 63000, 63010); c.UID != 63002 {
		t.Errorf("EnsureStudent(c) with a wider range: uid %d, want 63002", c.UID)
	}
}

func testUIDNeverReused(t *testing.T, s store.Store) {
	a := mustEnsure(t, s, "a", 64000, 64999)
	b := mustEnsure(t, s, "b", 64000, 64999)
	c := mustEnsure(t, s, "c", 64500, 64999) // min raised: skips ahead
	if c.UID != 64500 {
		t.Errorf("after raising min to 64500: uid %d, want 64500", c.UID)
	}
	d := mustEnsure(t, s, "d", 64000, 64999) // min lowered again: no going back
	if d.UID != 64501 {
		t.Errorf("after lowering min again: uid %d, want 64501 (the counter only grows)", d.UID)
	}
	seen := map[uint32]string{}
	for _, st := range []store.Student{a, b, c, d} {
		if o, dup := seen[st.UID]; dup {
			t.Errorf("uid %d given to %s and %s", st.UID, o, st.Name)
		}
		seen[st.UID] = st.Name
	}
	// A student recorded from elsewhere (passwd) does not rewind it.
	if err := s.PutStudent(ctx(t), store.Student{Name: "p", UID: 65500, GID: 65500}); err != nil {
		t.Fatalf("PutStudent: %v", err)
	}
	if e := mustEnsure(t, s, "e", 64000, 64999); e.UID != 64502 {
		t.Errorf("next uid %d, want 64502", e.UID)
	}
}

func testPutGetList(t *testing.T, s store.Store) {
	c := ctx(t)
	for _, st := range []store.Student{{Name: "zoe", UID: 5001, GID: 6001}, {Name: "Adam", UID: 5002, GID: 5002}, {Name: "bea", UID: 5003, GID: 100}} {
		if err := s.PutStudent(c, st); err != nil {
			t.Fatalf("PutStudent(%+v): %v", st, err)
		}
	}
	// Read once, so that a store that keeps what it read is tested too.
	if got, err := s.GetStudent(c, "zoe"); err != nil || got.UID != 5001 {
		t.Fatalf("GetStudent(zoe) = %+v, %v; want uid 5001", got, err)
	}
	// PutStudent replaces: the passwd entry is the truth.
	if err := s.PutStudent(c, store.Student{Name: "zoe", UID: 5004, GID: 6004}); err != nil {
		t.Fatalf("PutStudent(zoe) again: %v", err)
	}
	got, err := s.GetStudent(c, "zoe")
	if want := (store.Student{Name: "zoe", UID: 5004, GID: 6004}); err != nil || got != want {
		t.Errorf("GetStudent(zoe) = %+v, %v; want %+v", got, err, want)
	}
	list, err := s.ListStudents(c)
	if err != nil {
		t.Fatalf("ListStudents: %v", err)
	}
	// Bytewise order: upper case first.
	want := []store.Student{{Name: "Adam", UID: 5002, GID: 5002}, {Name: "bea", UID: 5003, GID: 100}, {Name: "zoe", UID: 5004, GID: 6004}}
	if !slices.Equal(list, want) {
		t.Errorf("ListStudents = %+v, want %+v", list, want)
	}
}

func testUnknownStudent(t *testing.T, s store.Store) {
	_, err := s.GetStudent(ctx(t), "nobody")
	if !errors.Is(err, api.ErrStudentNotFound) {
		t.Errorf("GetStudent(nobody) = %v, want student_not_found", err)
	}
	list, err := s.ListStudents(ctx(t))
	if err != nil || len(list) != 0 {
		t.Errorf("ListStudents of an empty store = %+v, %v", list, err)
	}
}

// base is a fixed, millisecond-aligned time: both stores keep milliseconds.
var base = time.Date(2025, 3, 4, 10, 0, 0, 0, time.UTC)

func newRun(id, student, host string, started time.Time) *api.Run {
	return &api.Run{
		ID: id, Host: host, Student: student, UID: 60001, GID: 60001,
		Script: "lab1/main.py", ScriptSHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
		Args: []string{"--n", "3", "ünï cödé"}, Mode: api.ModeScript, State: api.StateRunning,
		Limits:    api.Limits{MemoryMB: 256, Pids: 64, CPUPercent: 100, WallSeconds: 30, CPUSeconds: 10, OutputKB: 1024},
		StartedAt: started,
	}
}

func end(r *api.Run, reason api.Reason, code int, after time.Duration) {
	t := r.StartedAt.Add(after)
	r.State, r.Reason, r.EndedAt = api.StateEnded, reason, &t
	r.ExitCode = &code
	r.WallMS, r.CPUMS, r.PeakMemoryBytes, r.OutputBytes, r.Truncated = after.Milliseconds(), 12, 1<<20, 4096, true
	r.Signal, r.Error = "SIGKILL", "killed: wall time limit"
}

func sameRun(t *testing.T, what string, got api.Run, want *api.Run) {
	t.Helper()
	g, w := string(api.MustJSON(got)), string(api.MustJSON(want))
	if g != w {
		t.Errorf("%s:\n got %s\nwant %s", what, g, w)
	}
}

func testStartEndGet(t *testing.T, s store.Store) {
	c := ctx(t)
	r := newRun("r1", "alice", "h1", base.Add(123*time.Millisecond))
	if err := s.RecordStart(c, r); err != nil {
		t.Fatalf("RecordStart: %v", err)
	}
	got, err := s.GetRun(c, "r1")
	if err != nil {
		t.Fatalf("GetRun after start: %v", err)
	}
	sameRun(t, "after RecordStart", got, r)
	if got.Ended() || got.ExitCode != nil || got.EndedAt != nil {
		t.Errorf("a started run reads as ended: %+v", got)
	}

	end(r, api.ReasonTimedOut, 137, 1500*time.Millisecond)
	if err := s.RecordEnd(c, r); err != nil {
		t.Fatalf("RecordEnd: %v", err)
	}
	got, err = s.GetRun(c, "r1")
	if err != nil {
		t.Fatalf("GetRun after end: %v", err)
	}
	sameRun(t, "after RecordEnd", got, r)

	// No args and zero limits come back as nil and zero; exit code 0 is
	// not "no exit code".
	r2 := newRun("r2", "alice", "h1", base.Add(time.Second))
	r2.Args, r2.Limits, r2.Mode = nil, api.Limits{}, api.ModeRepl
	if err := s.RecordStart(c, r2); err != nil {
		t.Fatalf("RecordStart(r2): %v", err)
	}
	end(r2, api.ReasonExited, 0, time.Millisecond)
	r2.Signal, r2.Error, r2.Truncated = "", "", false
	if err := s.RecordEnd(c, r2); err != nil {
		t.Fatalf("RecordEnd(r2): %v", err)
	}
	got, err = s.GetRun(c, "r2")
	if err != nil {
		t.Fatalf("GetRun(r2): %v", err)
	}
	sameRun(t, "r2", got, r2)
	if got.ExitCode == nil || *got.ExitCode != 0 || got.Args != nil {
		t.Errorf("r2: exit code %v, args %#v; want 0 and nil", got.ExitCode, got.Args)
	}
}

func testEndWithoutStart(t *testing.T, s store.Store) {
	c := ctx(t)
	r := newRun("lost-start", "bob", "h2", base)
	end(r, api.ReasonStartFailed, -1, 0)
	r.ExitCode = nil
	if err := s.RecordEnd(c, r); err != nil {
		t.Fatalf("RecordEnd without RecordStart: %v", err)
	}
	got, err := s.GetRun(c, "lost-start")
	if err != nil {
		t.Fatalf("GetRun: %v (an end must never be lost)", err)
	}
	sameRun(t, "end without start", got, r)
	runs, err := s.ListRuns(c, store.RunFilter{Student: "bob"})
	if err != nil || len(runs) != 1 {
		t.Errorf("ListRuns(bob) = %d runs, %v; want 1", len(runs), err)
	}
}

func testDuplicateStart(t *testing.T, s store.Store) {
	c := ctx(t)
	r := newRun("dup", "alice", "h1", base)
	if err := s.RecordStart(c, r); err != nil {
		t.Fatalf("RecordStart: %v", err)
	}
	// A second start of the same id is a bug upstream; it must not
	// overwrite the first record.
	other := newRun("dup", "mallory", "h9", base.Add(time.Hour))
	if err := s.RecordStart(c, other); err == nil {
		t.Errorf("a second RecordStart of run dup succeeded")
	}
	got, err := s.GetRun(c, "dup")
	if err != nil {
		t.Fatalf("GetRun: %v", err)
	}
	sameRun(t, "after a duplicate start", got, r)
}

func testUnknownRun(t *testing.T, s store.Store) {
	_, err := s.GetRun(ctx(t), "no-such-run")
	if !errors.Is(err, api.ErrNotFound) {
		t.Errorf("GetRun(unknown) = %v, want not_found", err)
	}
	runs, err := s.ListRuns(ctx(t), store.RunFilter{})
	if err != nil || len(runs) != 0 {
		t.Errorf("ListRuns of an empty store = %d runs, %v", len(runs), err)
	}
}

func testListFilters(t *testing.T, s store.Store) {
	c := ctx(t)
	type spec struct {
		id, student, host string
		at                time.Duration
		reason            api.Reason // "" = still running
	}
	specs := []spec{
		{"a1", "alice", "h1", 1 * time.Minute, api.ReasonExited},
		{"a2", "alice", "h2", 2 * time.Minute, api.ReasonTimedOut},
		{"a3", "alice", "h1", 3 * time.Minute, ""},
		{"b1", "bob", "h2", 4 * time.Minute, api.ReasonExited},
		{"b2", "bob", "h1", 5 * time.Minute, api.ReasonOOMKilled},
		{"b3", "bob", "h2", 6 * time.Minute, ""},
		// Same start as b3: ties are broken by id, descending.
		{"c1", "carol", "h1", 6 * time.Minute, api.ReasonExited},
	}
	for _, sp := range specs {
		r := newRun(sp.id, sp.student, sp.host, base.Add(sp.at))
		if err := s.RecordStart(c, r); err != nil {
			t.Fatalf("RecordStart(%s): %v", sp.id, err)
		}
		if sp.reason != "" {
			end(r, sp.reason, 1, time.Second)
			if err := s.RecordEnd(c, r); err != nil {
				t.Fatalf("RecordEnd(%s): %v", sp.id, err)
			}
		}
	}
	cases := []struct {
		name string
		f    store.RunFilter
		want []string
	}{
		{"all, newest first", store.RunFilter{}, []string{"c1", "b3", "b2", "b1", "a3", "a2", "a1"}},
		{"student", store.RunFilter{Student: "alice"}, []string{"a3", "a2", "a1"}},
		{"state running", store.RunFilter{State: api.StateRunning}, []string{"b3", "a3"}},
		{"state ended", store.RunFilter{State: api.StateEnded}, []string{"c1", "b2", "b1", "a2", "a1"}},
		{"reason", store.RunFilter{Reason: api.ReasonExited}, []string{"c1", "b1", "a1"}},
		{"host", store.RunFilter{Host: "h2"}, []string{"b3", "b1", "a2"}},
		{"since (inclusive)", store.RunFilter{Since: base.Add(5 * time.Minute)}, []string{"c1", "b3", "b2"}},
		{"since, sub-millisecond", store.RunFilter{Since: base.Add(5*time.Minute + 500*time.Microsecond)}, []string{"c1", "b3", "b2"}},
		{"limit", store.RunFilter{Limit: 2}, []string{"c1", "b3"}},
		{"combined", store.RunFilter{Student: "bob", State: api.StateEnded, Host: "h1"}, []string{"b2"}},
		{"running on a host (recovery)", store.RunFilter{State: api.StateRunning, Host: "h1"}, []string{"a3"}},
		{"student and limit", store.RunFilter{Student: "alice", Limit: 1}, []string{"a3"}},
		{"no match", store.RunFilter{Student: "nobody"}, nil},
	}
	for _, tc := range cases {
		runs, err := s.ListRuns(c, tc.f)
		if err != nil {
			t.Errorf("%s: ListRuns(%+v): %v", tc.name, tc.f, err)
			continue
		}
		var ids []string
		for _, r := range runs {
			ids = append(ids, r.ID)
		}
		if !slices.Equal(ids, tc.want) {
			t.Errorf("%s: ListRuns(%+v) = %v, want %v", tc.name, tc.f, ids, tc.want)
		}
	}
	// Listed runs are whole records, as GetRun returns them.
	runs, err := s.ListRuns(c, store.RunFilter{Student: "bob", Reason: api.ReasonOOMKilled})
	if err != nil || len(runs) != 1 {
		t.Fatalf("ListRuns(bob, oom_killed) = %d runs, %v", len(runs), err)
	}
	one, err := s.GetRun(c, "b2")
	if err != nil {
		t.Fatalf("GetRun(b2): %v", err)
	}
	sameRun(t, "listed vs got", runs[0], &one)
}

func testPing(t *testing.T, s store.Store) {
	if err := s.Ping(ctx(t)); err != nil {
		t.Errorf("Ping: %v", err)
	}
	if k := s.Kind(); k == "" {
		t.Errorf("Kind is empty")
	}
}

func testClose(t *testing.T, s store.Store) {
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Ping(ctx(t)); err == nil {
		t.Errorf("Ping after Close succeeded")
	}
	if _, err := s.GetRun(ctx(t), "x"); err == nil || errors.Is(err, api.ErrNotFound) {
		t.Errorf("GetRun after Close = %v, want an error other than not_found", err)
	}
	// Every shutdown path may close; the second call must be harmless
	// (the suite's cleanup makes a third).
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// testAdoptAndReserve: students found on disk after a lost store are
// recorded with their directory's uid unless the name or the uid is known,
// and the counter moves past every uid seen, never back.
func testAdoptAndReserve(t *testing.T, s store.Store) {
	adopt := func(name string, uid uint32, want bool) {
		t.Helper()
		got, err := s.AdoptStudent(ctx(t), store.Student{Name: name, UID: uid, GID: uid})
		if err != nil || got != want {
			t.Fatalf("AdoptStudent(%s, %d) = %v, %v; want %v", name, uid, got, err, want)
		}
	}
	adopt("alice", 64005, true)
	if got, err := s.GetStudent(ctx(t), "alice"); err != nil || got.UID != 64005 || got.GID != 64005 {
		t.Fatalf("GetStudent(alice) = %+v, %v; want uid and gid 64005", got, err)
	}
	adopt("alice", 64007, false) // the name is known: its uid stays
	adopt("bob", 64005, false)   // the uid is alice's
	if err := s.ReserveUIDs(ctx(t), 64010); err != nil {
		t.Fatal(err)
	}
	if c := mustEnsure(t, s, "carol", 64000, 64100); c.UID != 64010 {
		t.Fatalf("first uid after ReserveUIDs(64010) = %d", c.UID)
	}
	if err := s.ReserveUIDs(ctx(t), 64003); err != nil {
		t.Fatal(err)
	}
	if d := mustEnsure(t, s, "dave", 64000, 64100); d.UID != 64011 {
		t.Fatalf("uid after a lower ReserveUIDs = %d, want 64011 (never back)", d.UID)
	}
}
