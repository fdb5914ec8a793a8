package files_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/files"
	"github.com/idexd/idexd/internal/quota"
	"github.com/idexd/idexd/internal/store"
	"github.com/idexd/idexd/internal/students"
	"github.com/idexd/idexd/internal/testutil"
)

const maxBytes = 64 << 10

type fixture struct {
	svc   *files.Service
	dirs  *students.Dirs
	store *store.SQLite
	quota *quota.Manager
}

func newFixture(t *testing.T, lim quota.Limits, layout students.Layout) *fixture {
	t.Helper()
	testutil.RequireRoot(t)
	return newFixtureAt(t, filepath.Join(testutil.TraversableDir(t), "students"), lim, layout)
}

// newFixtureAt keeps the students' directories in root.
func newFixtureAt(t *testing.T, root string, lim quota.Limits, layout students.Layout) *fixture {
	t.Helper()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(testutil.TraversableDir(t), "state"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	dirs := &students.Dirs{Root: root, ClientGroup: testutil.ClientGID, Layout: layout}
	if err := dirs.EnsureRoot(); err != nil {
		t.Fatal(err)
	}
	log := testutil.Logger(t)
	q, err := quota.New(quota.Config{Root: dirs.Root, Limits: lim, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := q.Close(); err != nil {
			t.Error(err)
		}
	})
	dirs.Quota = q
	svc, err := files.New(files.Config{Students: storeStudents{st, dirs}, Dirs: dirs, MaxBytes: maxBytes, Quota: q, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	return &fixture{svc: svc, dirs: dirs, store: st, quota: q}
}

// storeStudents reads students from the store as the run engine does
// (run.Engine.GetStudent), without the cgroups and the sandbox an engine
// needs: a name of the protocol, then the store.
type storeStudents struct {
	st   *store.SQLite
	dirs *students.Dirs
}

func (s storeStudents) GetStudent(ctx context.Context, name string) (api.Student, error) {
	if err := students.ValidName(name); err != nil {
		return api.Student{}, err
	}
	r, err := s.st.GetStudent(ctx, name)
	if err != nil {
		return api.Student{}, fmt.Errorf("read student %s: %w", name, err)
	}
	return api.Student{Name: r.Name, UID: r.UID, GID: r.GID, Workdir: s.dirs.Workdir(r.Name)}, nil
}

// student creates a student as PUT /v1/students does.
func (f *fixture) student(t *testing.T, name string) api.Student {
	t.Helper()
	s, _, err := f.store.EnsureStudent(context.Background(), name, 200000, 299999)
	if err != nil {
		t.Fatal(err)
	}
	wd, err := f.dirs.Ensure(name, s.UID, s.GID)
	if err != nil {
		t.Fatal(err)
	}
	return api.Student{Name: name, UID: s.UID, GID: s.GID, Workdir: wd}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (f *fixture) put(t *testing.T, student, p, body string) api.FileInfo {
	t.Helper()
	info, err := f.svc.Write(ctxT(t), student, p, strings.NewReader(body), false)
	if err != nil {
		t.Fatalf("put %s: %v", p, err)
	}
	return info
}

func (f *fixture) get(t *testing.T, student, p string) (string, error) {
	t.Helper()
	r, info, err := f.svc.Open(ctxT(t), student, p)
	if err != nil {
		return "", err
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, info.Size))
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return string(b), nil
}

func wantCode(t *testing.T, what string, err error, code api.Code) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error, want %s", what, code)
		return
	}
	if got := api.AsError(err).Code; got != code {
		t.Errorf("%s: %v (code %s), want %s", what, err, got, code)
	}
}

func stat(t *testing.T, p string) *syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

// leftovers lists temporary files left anywhere under dir.
func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	var left []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), ".idexd-") {
			left = append(left, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return left
}

// TestRoundTrip: what the web tier does with a student's files, and who
// owns the result.
func TestRoundTrip(t *testing.T) {
	f := newFixture(t, quota.Limits{}, students.LayoutPrivate)
	alice := f.student(t, "alice")
	if st := stat(t, alice.Workdir); st.Uid != alice.UID || st.Gid != alice.GID || st.Mode&0o7777 != 0o700 {
		t.Fatalf("private workdir is %d:%d %o, want %d:%d 700", st.Uid, st.Gid, st.Mode&0o7777, alice.UID, alice.GID)
	}
	if st := stat(t, f.dirs.Root); st.Uid != 0 || st.Gid != 0 || st.Mode&0o7777 != 0o711 {
		t.Fatalf("private root is %d:%d %o, want 0:0 711", st.Uid, st.Gid, st.Mode&0o7777)
	}
	info := f.put(t, "alice", "main.py", "print('hi')\n")
	if info.Path != "main.py" || info.Size != 12 || info.Type != api.FileRegular {
		t.Fatalf("put answered %+v", info)
	}
	st := stat(t, filepath.Join(alice.Workdir, "main.py"))
	if st.Uid != alice.UID || st.Gid != alice.GID || st.Mode&0o7777 != 0o600 {
		t.Fatalf("main.py is %d:%d %o, want %d:%d 600", st.Uid, st.Gid, st.Mode&0o7777, alice.UID, alice.GID)
	}
	if got, err := f.get(t, "alice", "main.py"); err != nil || got != "print('hi')\n" {
		t.Fatalf("get: %q %v", got, err)
	}
	f.put(t, "alice", "main.py", "print('bye')\n")
	if got, _ := f.get(t, "alice", "main.py"); got != "print('bye')\n" {
		t.Fatalf("after replace: %q", got)
	}
	if _, err := f.svc.Write(ctxT(t), "alice", "pkg/sub/mod.py", strings.NewReader("x = 1\n"), false); !errors.Is(err, api.ErrFileNotFound) {
		t.Fatalf("put into a missing directory without parents: %v", err)
	}
	if _, err := f.svc.Write(ctxT(t), "alice", "pkg/sub/mod.py", strings.NewReader("x = 1\n"), true); err != nil {
		t.Fatalf("put with parents: %v", err)
	}
	for _, d := range []string{"pkg", "pkg/sub"} {
		if st := stat(t, filepath.Join(alice.Workdir, d)); st.Uid != alice.UID || st.Mode&0o7777 != 0o700 {
			t.Errorf("%s is %d %o, want %d 700", d, st.Uid, st.Mode&0o7777, alice.UID)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(alice.Workdir, "pipe"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(alice.Workdir, "link")); err != nil {
		t.Fatal(err)
	}
	l, err := f.svc.List(ctxT(t), "alice", "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range l.Entries {
		got = append(got, e.Name+":"+string(e.Type))
	}
	if want := "link:symlink main.py:file pipe:fifo pkg:dir"; strings.Join(got, " ") != want {
		t.Fatalf("list: %s, want %s", strings.Join(got, " "), want)
	}
	if l, err := f.svc.List(ctxT(t), "alice", "pkg/sub"); err != nil || len(l.Entries) != 1 || l.Entries[0].Size != 6 || l.Path != "pkg/sub" {
		t.Fatalf("list pkg/sub: %+v %v", l, err)
	}
	if _, err := f.svc.Move(ctxT(t), "alice", "main.py", "pkg/sub/mod.py", false); !errors.Is(err, api.ErrFileExists) {
		t.Fatalf("move onto an existing file: %v", err)
	}
	if info, err := f.svc.Move(ctxT(t), "alice", "main.py", "old/main.py", true); err != nil || info.Path != "old/main.py" || info.Size != 13 {
		t.Fatalf("move: %+v %v", info, err)
	}
	if _, err := f.get(t, "alice", "main.py"); !errors.Is(err, api.ErrFileNotFound) {
		t.Fatalf("moved file still there: %v", err)
	}
	wantCode(t, "remove a non-empty directory", f.svc.Remove(ctxT(t), "alice", "pkg"), api.CodeDirectoryNotEmpty)
	for _, p := range []string{"pkg/sub/mod.py", "pkg/sub", "pkg", "link", "pipe"} {
		if err := f.svc.Remove(ctxT(t), "alice", p); err != nil {
			t.Fatalf("remove %s: %v", p, err)
		}
	}
	if _, err := os.Lstat("/etc/passwd"); err != nil {
		t.Fatalf("removing a symlink touched its target: %v", err)
	}
	wantCode(t, "remove again", f.svc.Remove(ctxT(t), "alice", "link"), api.CodeFileNotFound)
	if left := leftovers(t, alice.Workdir); len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

// TestSharedLayout: the older layout, for a web tier that still writes
// directly: the client group shares directories and files.
func TestSharedLayout(t *testing.T) {
	f := newFixture(t, quota.Limits{}, students.LayoutShared)
	bob := f.student(t, "bob")
	if st := stat(t, bob.Workdir); st.Uid != bob.UID || st.Gid != testutil.ClientGID || st.Mode&0o7777 != 0o2770 {
		t.Fatalf("shared workdir is %d:%d %o, want %d:%d 2770", st.Uid, st.Gid, st.Mode&0o7777, bob.UID, testutil.ClientGID)
	}
	if _, err := f.svc.Write(ctxT(t), "bob", "d/x.py", strings.NewReader("x"), true); err != nil {
		t.Fatal(err)
	}
	for p, mode := range map[string]uint32{"d": 0o2770, "d/x.py": 0o660} {
		st := stat(t, filepath.Join(bob.Workdir, p))
		if st.Uid != bob.UID || st.Gid != testutil.ClientGID || st.Mode&0o7777 != mode {
			t.Errorf("%s is %d:%d %o, want %d:%d %o", p, st.Uid, st.Gid, st.Mode&0o7777, bob.UID, testutil.ClientGID, mode)
		}
	}
}

// TestBadInput: every bad path or name gets a clear code, and a refused
// write leaves the old file as it was and no temporary file behind.
func TestBadInput(t *testing.T) {
	f := newFixture(t, quota.Limits{}, students.LayoutPrivate)
	alice := f.student(t, "alice")
	f.student(t, "bob")
	f.put(t, "alice", "keep.py", "original\n")
	f.put(t, "bob", "secret.py", "bob's\n")
	wd := alice.Workdir
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(filepath.Join(wd, "dir"), 0o700))
	must(os.Chown(filepath.Join(wd, "dir"), int(alice.UID), int(alice.GID)))
	must(os.WriteFile(filepath.Join(wd, "big.bin"), bytes.Repeat([]byte("x"), maxBytes+1), 0o600))
	must(os.Symlink("../bob/secret.py", filepath.Join(wd, "to_bob.py")))
	must(os.Symlink("/proc/self/environ", filepath.Join(wd, "env.txt")))
	must(os.Symlink("/dev/zero", filepath.Join(wd, "zero.txt")))
	must(os.Symlink("keep.py", filepath.Join(wd, "inside.py")))
	must(os.Symlink("dir", filepath.Join(wd, "dirlink")))
	must(syscall.Mkfifo(filepath.Join(wd, "fifo.txt"), 0o666))
	ln, err := net.Listen("unix", filepath.Join(wd, "sock"))
	must(err)
	defer ln.Close()
	must(syscall.Mknod(filepath.Join(wd, "null"), syscall.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))

	long := strings.Repeat("a", 256)
	cases := []struct {
		path string
		get  api.Code // reading it
		put  api.Code // writing it ("" = allowed)
	}{
		{"../bob/secret.py", api.CodeInvalidPath, api.CodeInvalidPath},
		{"dir/../../bob/secret.py", api.CodeInvalidPath, api.CodeInvalidPath},
		{"/etc/passwd", api.CodeInvalidPath, api.CodeInvalidPath},
		{wd + "/keep.py", api.CodeInvalidPath, api.CodeInvalidPath},
		{"a\x00b", api.CodeInvalidPath, api.CodeInvalidPath},
		{long, api.CodeInvalidPath, api.CodeInvalidPath},
		{strings.Repeat("d/", 2100), api.CodeInvalidPath, api.CodeInvalidPath},
		{"", api.CodeInvalidPath, api.CodeInvalidPath},
		{".", api.CodeInvalidPath, api.CodeInvalidPath},
		{"to_bob.py", api.CodeInvalidPath, api.CodeInvalidPath},
		{"env.txt", api.CodeInvalidPath, api.CodeInvalidPath},
		{"zero.txt", api.CodeInvalidPath, api.CodeInvalidPath},
		{"inside.py", api.CodeInvalidPath, api.CodeInvalidPath},
		{"dirlink/x.py", api.CodeInvalidPath, api.CodeInvalidPath},
		{"fifo.txt", api.CodeNotRegular, api.CodeNotRegular},
		{"sock", api.CodeNotRegular, api.CodeNotRegular},
		{"null", api.CodeNotRegular, api.CodeNotRegular},
		{"dir", api.CodeNotRegular, api.CodeNotRegular},
		{"keep.py/x", api.CodeNotDirectory, api.CodeNotDirectory},
		{"missing.py", api.CodeFileNotFound, ""},
		{"big.bin", api.CodeFileTooLarge, ""},
	}
	for _, c := range cases {
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, err := f.get(t, "alice", c.path)
			wantCode(t, "get "+c.path, err, c.get)
			_, err = f.svc.Write(ctxT(t), "alice", c.path, strings.NewReader("new\n"), false)
			if c.put == "" {
				if err != nil {
					t.Errorf("put %q: %v", c.path, err)
				}
				return
			}
			wantCode(t, "put "+c.path, err, c.put)
		}()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("%q: the request blocked", c.path)
		}
	}
	// Writes that are refused part-way.
	_, err = f.svc.Write(ctxT(t), "alice", "keep.py", bytes.NewReader(bytes.Repeat([]byte("y"), maxBytes+1)), false)
	wantCode(t, "put over the cap", err, api.CodeFileTooLarge)
	_, err = f.svc.Write(ctxT(t), "alice", "keep.py", io.MultiReader(strings.NewReader("half"), errReader{}), false)
	wantCode(t, "put whose body fails", err, api.CodeInvalidRequest)
	if got, _ := f.get(t, "alice", "keep.py"); got != "original\n" {
		t.Errorf("keep.py after refused writes: %q", got)
	}
	if got, err := os.ReadFile(filepath.Join(f.dirs.Workdir("bob"), "secret.py")); err != nil || string(got) != "bob's\n" {
		t.Errorf("bob's file: %q %v", got, err)
	}
	if left := leftovers(t, f.dirs.Root); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
	// Students: a bad name, and one that does not exist (not created).
	_, err = f.svc.List(ctxT(t), "Alice", "")
	wantCode(t, "bad student name", err, api.CodeInvalidStudent)
	for _, op := range []func() error{
		func() error { _, err := f.svc.List(ctxT(t), "carol", ""); return err },
		func() error {
			_, err := f.svc.Write(ctxT(t), "carol", "x.py", strings.NewReader("x"), true)
			return err
		},
		func() error { _, _, err := f.svc.Open(ctxT(t), "carol", "x.py"); return err },
		func() error { return f.svc.Remove(ctxT(t), "carol", "x.py") },
		func() error { _, err := f.svc.Move(ctxT(t), "carol", "x.py", "y.py", false); return err },
	} {
		wantCode(t, "unknown student", op(), api.CodeStudentNotFound)
	}
	if _, err := f.store.GetStudent(ctxT(t), "carol"); !errors.Is(err, api.ErrStudentNotFound) {
		t.Errorf("carol after the refusals: %v", err)
	}
	if _, err := os.Lstat(f.dirs.Workdir("carol")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("carol's directory: %v", err)
	}
	// Moves and listings.
	_, err = f.svc.Move(ctxT(t), "alice", "keep.py", "../bob/keep.py", false)
	wantCode(t, "move out", err, api.CodeInvalidPath)
	_, err = f.svc.Move(ctxT(t), "alice", "dir", "dir/inner", false)
	wantCode(t, "move a directory into itself", err, api.CodeInvalidPath)
	_, err = f.svc.Move(ctxT(t), "alice", "keep.py", "dirlink/keep.py", false)
	wantCode(t, "move through a symlink", err, api.CodeInvalidPath)
	_, err = f.svc.List(ctxT(t), "alice", "dirlink")
	wantCode(t, "list a symlink", err, api.CodeInvalidPath)
	_, err = f.svc.List(ctxT(t), "alice", "keep.py")
	wantCode(t, "list a file", err, api.CodeNotDirectory)
	_, err = f.svc.List(ctxT(t), "alice", "..")
	wantCode(t, "list ..", err, api.CodeInvalidPath)
	wantCode(t, "remove the directory itself", f.svc.Remove(ctxT(t), "alice", ""), api.CodeInvalidPath)
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

// TestStudentPermissions: idexd acts with the student's permissions, not
// root's: a file the student's run made unreadable stays unreadable, and a
// directory it made read-only is not written.
func TestStudentPermissions(t *testing.T) {
	f := newFixture(t, quota.Limits{}, students.LayoutPrivate)
	alice := f.student(t, "alice")
	f.put(t, "alice", "locked.txt", "x")
	if err := os.Chmod(filepath.Join(alice.Workdir, "locked.txt"), 0); err != nil {
		t.Fatal(err)
	}
	_, err := f.get(t, "alice", "locked.txt")
	wantCode(t, "read a mode 000 file", err, api.CodePermissionDenied)
	if _, err := f.svc.Write(ctxT(t), "alice", "ro/x.txt", strings.NewReader("x"), true); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(alice.Workdir, "ro"), 0o500); err != nil {
		t.Fatal(err)
	}
	_, err = f.svc.Write(ctxT(t), "alice", "ro/y.txt", strings.NewReader("y"), false)
	wantCode(t, "write into a read-only directory", err, api.CodePermissionDenied)
	wantCode(t, "remove from a read-only directory", f.svc.Remove(ctxT(t), "alice", "ro/x.txt"), api.CodePermissionDenied)
}

// TestSymlinkSwappedIn: while requests run, a loop swaps a directory of
// the student's for a symlink to another student's directory and back.
// No read ever returns the other student's file and no write lands there.
func TestSymlinkSwappedIn(t *testing.T) {
	f := newFixture(t, quota.Limits{}, students.LayoutPrivate)
	alice := f.student(t, "alice")
	bob := f.student(t, "bob")
	if _, err := f.svc.Write(ctxT(t), "bob", "s/secret.txt", strings.NewReader("BOB"), true); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Write(ctxT(t), "alice", "s/secret.txt", strings.NewReader("alice"), true); err != nil {
		t.Fatal(err)
	}
	real := filepath.Join(alice.Workdir, "s")
	aside := filepath.Join(alice.Workdir, "s.real")
	link := filepath.Join(alice.Workdir, "s.link")
	if err := os.Symlink(filepath.Join(bob.Workdir, "s"), link); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		// Swap s between the real directory and the symlink, and back.
		swaps := [][2]string{{real, aside}, {link, real}, {real, link}, {aside, real}}
		for !stop.Load() {
			for _, sw := range swaps {
				if err := os.Rename(sw[0], sw[1]); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	// Until both cases were seen (a read of alice's file, a refusal while
	// the symlink was in place), and at least 300 rounds.
	var reads, refused int
	for i := 0; i < 300 || (reads == 0 || refused == 0) && i < 20000; i++ {
		got, err := f.get(t, "alice", "s/secret.txt")
		switch {
		case err == nil:
			reads++
			if got != "alice" {
				t.Fatalf("read %q through a swapped-in symlink", got)
			}
		case errors.Is(err, api.ErrInvalidPath), errors.Is(err, api.ErrFileNotFound):
			refused++
		default:
			t.Fatalf("read: %v", err)
		}
		_, err = f.svc.Write(ctxT(t), "alice", "s/w.txt", strings.NewReader("w"), false)
		if err != nil && !errors.Is(err, api.ErrInvalidPath) && !errors.Is(err, api.ErrFileNotFound) {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d reads of alice's file, %d refused while the symlink was in place", reads, refused)
	if refused == 0 {
		t.Fatal("the symlink was never in place during a read: the test showed nothing")
	}
	if _, err := os.Lstat(filepath.Join(bob.Workdir, "s", "w.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a write landed in bob's directory: %v", err)
	}
	if left := leftovers(t, f.dirs.Root); len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

// TestMeasuredQuota: on a filesystem without enforced user quotas idexd
// counts, and refuses a write that would pass a limit; a delete frees.
func TestMeasuredQuota(t *testing.T) {
	f := newFixture(t, quota.Limits{Bytes: 100 << 10, Files: 6}, students.LayoutPrivate)
	if f.quota.EnforcedBy() != api.EnforcedByIdexd {
		t.Skipf("the test directory's filesystem enforces user quotas (%s): TestKernelQuota covers it", f.quota.Status())
	}
	alice := f.student(t, "alice")
	chunk := strings.Repeat("x", 40<<10)
	f.put(t, "alice", "a.txt", chunk)
	f.put(t, "alice", "b.txt", chunk)
	_, err := f.svc.Write(ctxT(t), "alice", "c.txt", strings.NewReader(chunk), false)
	wantCode(t, "third 40 KiB file under a 100 KiB quota", err, api.CodeQuotaExceeded)
	if _, err := os.Lstat(filepath.Join(alice.Workdir, "c.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("refused file exists: %v", err)
	}
	if left := leftovers(t, alice.Workdir); len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	// Replacing a file charges only the difference.
	f.put(t, "alice", "b.txt", chunk+"more")
	d := f.svc.Disk(ctxT(t), alice)
	if d.EnforcedBy != api.EnforcedByIdexd || d.LimitBytes != 100<<10 || d.LimitFiles != 6 || d.UsedFiles != 3 || d.UsedBytes < 80<<10 || d.UsedBytes > 100<<10 {
		t.Fatalf("disk %+v", d)
	}
	if err := f.svc.Remove(ctxT(t), "alice", "a.txt"); err != nil {
		t.Fatal(err)
	}
	f.put(t, "alice", "c.txt", chunk)
	// Files: the directory itself counts, as it does in a kernel quota.
	f.put(t, "alice", "d.txt", "")
	f.put(t, "alice", "e.txt", "")
	f.put(t, "alice", "f.txt", "")
	_, err = f.svc.Write(ctxT(t), "alice", "g.txt", strings.NewReader(""), false)
	wantCode(t, "a 7th inode under quota_files 6", err, api.CodeQuotaExceeded)
	if err := f.svc.Remove(ctxT(t), "alice", "f.txt"); err != nil {
		t.Fatal(err)
	}
	_, err = f.svc.Write(ctxT(t), "alice", "sub/g.txt", strings.NewReader(""), true)
	wantCode(t, "a file and its new directory, one inode left", err, api.CodeQuotaExceeded)
	if _, err := os.Lstat(filepath.Join(alice.Workdir, "sub")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the directory made for a refused write stays: %v", err)
	}
	// A run (here: the student's own process) writes past the limit;
	// after its end idexd measures and refuses until files are deleted.
	if err := os.WriteFile(filepath.Join(alice.Workdir, "run.out"), []byte(strings.Repeat("z", 200<<10)), 0o600); err != nil {
		t.Fatal(err)
	}
	f.quota.RunEnded(alice)
	err = f.quota.Admit(ctxT(t), alice)
	wantCode(t, "a run after going over", err, api.CodeQuotaExceeded)
	if d := f.svc.Disk(ctxT(t), alice); !d.Over() {
		t.Fatalf("disk after the run: %+v, want over", d)
	}
	_, err = f.svc.Write(ctxT(t), "alice", "d.txt", strings.NewReader("x"), false)
	wantCode(t, "a write while over", err, api.CodeQuotaExceeded)
	if err := f.svc.Remove(ctxT(t), "alice", "run.out"); err != nil {
		t.Fatalf("a delete while over: %v", err)
	}
	if err := f.quota.Admit(ctxT(t), alice); err != nil {
		t.Fatalf("a run after the delete: %v", err)
	}
}

// TestMeasuredQuotaZeroIsOff: quota_mb = 0 or quota_files = 0 turns that
// limit off, the other still counts.
func TestMeasuredQuotaZeroIsOff(t *testing.T) {
	chunk := strings.Repeat("x", 40<<10)
	t.Run("quota_mb 0", func(t *testing.T) {
		f := newFixture(t, quota.Limits{Bytes: 0, Files: 4}, students.LayoutPrivate)
		if f.quota.EnforcedBy() != api.EnforcedByIdexd {
			t.Skipf("the test directory's filesystem enforces user quotas (%s): TestKernelQuota covers it", f.quota.Status())
		}
		alice := f.student(t, "alice")
		// 3 x 40 KiB, far past any byte limit the test could have set.
		for _, n := range []string{"a", "b", "c"} {
			f.put(t, "alice", n, chunk)
		}
		_, err := f.svc.Write(ctxT(t), "alice", "d", strings.NewReader(""), false)
		wantCode(t, "a 5th inode under quota_files 4", err, api.CodeQuotaExceeded)
		if d := f.svc.Disk(ctxT(t), alice); d.LimitBytes != 0 || d.LimitFiles != 4 || d.UsedFiles != 4 || d.UsedBytes < 120<<10 || d.Over() {
			t.Fatalf("disk %+v: want no byte limit, 4 of 4 files, at least 120 KiB, not over", d)
		}
	})
	t.Run("quota_files 0", func(t *testing.T) {
		f := newFixture(t, quota.Limits{Bytes: 100 << 10, Files: 0}, students.LayoutPrivate)
		if f.quota.EnforcedBy() != api.EnforcedByIdexd {
			t.Skipf("the test directory's filesystem enforces user quotas (%s): TestKernelQuota covers it", f.quota.Status())
		}
		alice := f.student(t, "alice")
		for i := range 50 {
			f.put(t, "alice", fmt.Sprintf("n%02d", i), "")
		}
		f.put(t, "alice", "a", chunk)
		f.put(t, "alice", "b", chunk)
		_, err := f.svc.Write(ctxT(t), "alice", "c", strings.NewReader(chunk), false)
		wantCode(t, "a third 40 KiB file under quota_mb 100 KiB", err, api.CodeQuotaExceeded)
		if d := f.svc.Disk(ctxT(t), alice); d.LimitFiles != 0 || d.UsedFiles != 53 || d.Over() {
			t.Fatalf("disk %+v: want no file limit, 53 inodes, not over", d)
		}
	})
	t.Run("both 0", func(t *testing.T) {
		f := newFixture(t, quota.Limits{}, students.LayoutPrivate)
		alice := f.student(t, "alice")
		f.put(t, "alice", "a", strings.Repeat("y", maxBytes))
		if err := os.WriteFile(filepath.Join(alice.Workdir, "run.out"), bytes.Repeat([]byte("z"), 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		f.quota.RunEnded(alice)
		if err := f.quota.Admit(ctxT(t), alice); err != nil {
			t.Fatalf("a run with no limits: %v", err)
		}
		if d := f.svc.Disk(ctxT(t), alice); d.LimitBytes != 0 || d.LimitFiles != 0 || d.Over() {
			t.Fatalf("disk %+v: want no limits", d)
		}
	})
}

// TestWriteIsAtomic: a write replaces the file by a rename, never in
// place. A reader that opened the old file keeps reading the old bytes,
// and readers while writes go on see the old file or the new one, whole,
// never a mix or a part.
func TestWriteIsAtomic(t *testing.T) {
	f := newFixture(t, quota.Limits{}, students.LayoutPrivate)
	alice := f.student(t, "alice")
	a, b := strings.Repeat("A", maxBytes), strings.Repeat("B", maxBytes)
	f.put(t, "alice", "f.txt", a)
	old, err := os.Open(filepath.Join(alice.Workdir, "f.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	f.put(t, "alice", "f.txt", b)
	if got, err := io.ReadAll(old); err != nil || string(got) != a {
		t.Fatalf("the old file, open before the write, reads %d bytes (%v): replaced in place", len(got), err)
	}
	if got, _ := f.get(t, "alice", "f.txt"); got != b {
		t.Fatalf("after the write: %d bytes, want %d of B", len(got), len(b))
	}
	var writes atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			body := a
			if i%2 == 1 {
				body = b
			}
			if _, err := f.svc.Write(ctxT(t), "alice", "f.txt", strings.NewReader(body), false); err != nil {
				t.Error(err)
				return
			}
			writes.Add(1)
		}
	}()
	reads := 0
	for running := true; running; reads++ {
		select {
		case <-done:
			running = false
		default:
		}
		got, err := f.get(t, "alice", "f.txt")
		if err != nil {
			t.Fatalf("read %d: %v", reads, err)
		}
		if got != a && got != b {
			t.Fatalf("read %d during writes: %d bytes, not the whole of either version", reads, len(got))
		}
	}
	t.Logf("%d reads during %d writes, each one whole version", reads, writes.Load())
	if writes.Load() != 200 {
		t.Fatalf("%d of 200 writes", writes.Load())
	}
	if left := leftovers(t, alice.Workdir); len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}
