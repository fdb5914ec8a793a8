package quota_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/idexd/idexd/internal/quota"
)

func TestMeasure(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(outside, "huge"), make([]byte, 1<<20), 0o600))
	must(os.MkdirAll(filepath.Join(dir, "a", "b"), 0o700))
	must(os.WriteFile(filepath.Join(dir, "a", "b", "f"), []byte(strings.Repeat("x", 10000)), 0o600))
	must(os.Link(filepath.Join(dir, "a", "b", "f"), filepath.Join(dir, "hard")))
	must(os.Symlink(outside, filepath.Join(dir, "out")))
	must(os.Symlink(filepath.Join(outside, "huge"), filepath.Join(dir, "huge")))
	must(syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600))
	u, err := quota.Measure(dir)
	must(err)
	// dir, a, a/b, f (hard-linked once), out, huge, fifo.
	if u.Files != 7 {
		t.Errorf("files %d, want 7", u.Files)
	}
	var st syscall.Stat_t
	must(syscall.Stat(filepath.Join(dir, "a", "b", "f"), &st))
	if u.Bytes < st.Blocks*512 || u.Bytes >= 1<<20 {
		t.Errorf("bytes %d: want the file's %d once and nothing of the symlinks' targets", u.Bytes, st.Blocks*512)
	}
}

// TestMeasureTooDeep: a tree deeper than a walk allows is refused, not
// measured in part.
func TestMeasureTooDeep(t *testing.T) {
	dir := t.TempDir()
	p := dir
	for range 520 {
		p = filepath.Join(p, "d")
		if err := os.Mkdir(p, 0o700); err != nil {
			if errors.Is(err, syscall.ENAMETOOLONG) {
				break
			}
			t.Fatal(err)
		}
	}
	if _, err := quota.Measure(dir); err == nil || !strings.Contains(err.Error(), "deeper") {
		t.Fatalf("measure of a 520-level tree: %v, want refused as too deep", err)
	}
}

// BenchmarkMeasure is what a run's end costs idexd where it measures
// (measured mode walks the student's directory after every run), by the
// number of files the student keeps: the walk is a stat per entry.
func BenchmarkMeasure(b *testing.B) {
	for _, n := range []int{1, 30, 300} {
		b.Run(strconv.Itoa(n)+"files", func(b *testing.B) {
			dir := b.TempDir()
			for i := range n {
				if err := os.WriteFile(filepath.Join(dir, "f"+strconv.Itoa(i)+".py"), []byte("print('hi')\n"), 0o600); err != nil {
					b.Fatal(err)
				}
			}
			for b.Loop() {
				u, err := quota.Measure(dir)
				if err != nil {
					b.Fatal(err)
				}
				if u.Files != int64(n)+1 {
					b.Fatalf("measured %d files, want %d", u.Files, n+1)
				}
			}
		})
	}
}
