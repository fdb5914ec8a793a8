package load

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/harness"
	"github.com/idexd/idexd/internal/testutil"
)

// binDir holds idexd and idexctl built once for the package. They are
// built without -race: the load measures the daemon, and the race
// detector would multiply its memory and slow every run.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "idexload-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	// idexd finds idexd-sandbox beside itself, as in the packages.
	for _, c := range []string{"idexd", "idexctl", "idexd-sandbox"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, c), "../../cmd/"+c)
		if c == "idexd-sandbox" {
			cmd = exec.Command("../../cmd/idexd-sandbox/build.sh", "-o", filepath.Join(dir, c))
		}
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", c, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}

// startDaemon starts a throwaway idexd (c.Idexd, or the one built for the
// package) for the test and cleans it up (stop, cgroups swept and
// removed, directory) when the test ends.
func startDaemon(t *testing.T, c harness.Config) *harness.Daemon {
	t.Helper()
	testutil.RequireRoot(t)
	if c.Idexd == "" {
		c.Idexd = filepath.Join(binDir, "idexd")
	}
	if c.Dir == "" {
		c.Dir = testutil.TraversableDir(t)
	}
	if c.Name == "" {
		c.Name, c.Host = "idexload", "idexload"
	}
	c.NoStudentLimits = true
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := harness.Start(ctx, c)
	if err != nil {
		t.Fatalf("start idexd: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("idexd log (tail):\n%s", d.LogTail(6000))
		}
		if err := d.Cleanup(); err != nil {
			t.Errorf("clean up idexd: %v", err)
		}
	})
	return d
}

// tWriter sends the load's lines to t.Log.
type tWriter struct {
	mu sync.Mutex
	t  *testing.T
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
