package load

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/idexd/idexd/internal/harness"
	"github.com/idexd/idexd/internal/testutil"
)

// TestCyclesCatchFDLeak proves that the cycles' fd check can fail: the
// same idexd, with testdata/leakfd.go added at build time, leaks one fd
// every 23 runs. Over TestCyclesShort's 240 cycles, sampled at rest, its
// fds grow by exactly 10 (/dev/null, kind "file"), and the check fails on
// fds (slope and last sample against the first) and on nothing else. 23
// divides neither the batch (60) nor the total: the leak happens in the
// log's reader some time after the run ended, and a leak on the last run
// of a batch could come after the sample.
func TestCyclesCatchFDLeak(t *testing.T) {
	testutil.RequireRoot(t)
	bin := buildLeakyIdexd(t)
	const every = 23
	t.Setenv("IDEXD_TEST_LEAK_FD_EVERY", strconv.Itoa(every))
	d := startDaemon(t, harness.Config{Idexd: bin, KeepEnded: "1s"})
	rep := shortCycles(t, d)
	if rep.Pass() {
		t.Fatalf("a daemon that leaks one fd every %d runs passed the cycles' check", every)
	}
	first, last := rep.Samples[0], rep.Samples[len(rep.Samples)-1]
	want := rep.Cycles / every
	if got := last.FDs - first.FDs; got != want {
		t.Errorf("fds %d -> %d over %d cycles: grew %d, want exactly %d", first.FDs, last.FDs, rep.Cycles, got, want)
	}
	if got, want := last.Census.FDs.Diff(first.Census.FDs), fmt.Sprintf("file +%d", want); got != want {
		t.Errorf("fds by kind moved %q, want %q", got, want)
	}
	var slopeFail, lastFail bool
	for _, f := range rep.Failed {
		switch {
		case strings.HasPrefix(f, "fds grow "):
			slopeFail = true
		case strings.HasPrefix(f, "fds ") && strings.Contains(f, " before the cycles, "):
			lastFail = true
		default:
			t.Errorf("a failure other than the fds': %s", f)
		}
	}
	if !slopeFail || !lastFail {
		t.Errorf("want the fd slope and the last sample to fail, got %q", rep.Failed)
	}
}

// buildLeakyIdexd builds cmd/idexd with testdata/leakfd.go added by
// `go build -overlay`: nothing of the leak is in the tree's idexd.
func buildLeakyIdexd(t *testing.T) string {
	t.Helper()
	src, err := filepath.Abs("testdata/leakfd.go")
	if err != nil {
		t.Fatal(err)
	}
	dst, err := filepath.Abs("../../cmd/idexd/zz_leakfd.go")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ov, err := json.Marshal(map[string]map[string]string{"Replace": {dst: src}})
	if err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(overlay, ov, 0o600); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "idexd-leakfd")
	cmd := exec.Command("go", "build", "-overlay", overlay, "-o", bin, "../../cmd/idexd")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the leaking idexd: %v\n%s", err, out)
	}
	return bin
}
