// Command gap runs print('hi') one at a time through a running idexd, with
// a pause between a run's end and the next start, so that the daemon's
// log ("run started" steps) can be read by pause: bench/README.md,
// "Where the exec step's tail comes from".
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/client"
)

func main() {
	socket := flag.String("socket", "/tmp/dev/idexd.sock", "idexd's socket")
	root := flag.String("workdir-root", "/srv/devtmp/students", "the daemon's workdir root")
	student := flag.String("student", "gapexp", "student")
	n := flag.Int("n", 100, "runs per pause")
	pauses := flag.String("pauses", "0,1ms,3ms,10ms,30ms", "pauses, comma separated")
	flag.Parse()
	if err := run(*socket, *root, *student, *n, *pauses); err != nil {
		fmt.Fprintln(os.Stderr, "gap:", err)
		os.Exit(1)
	}
}

func run(socket, root, student string, n int, pauses string) error {
	ctx := context.Background()
	c := client.New(socket)
	st, err := c.EnsureStudent(ctx, student)
	if err != nil {
		return fmt.Errorf("student %s: %w", student, err)
	}
	p := filepath.Join(root, student, "hi.py")
	if err := os.WriteFile(p, []byte("print('hi')\n"), 0o644); err != nil {
		return fmt.Errorf("write the script: %w", err)
	}
	if err := os.Chown(p, int(st.UID), int(st.GID)); err != nil {
		return fmt.Errorf("give the script to %s: %w", student, err)
	}
	for _, ps := range strings.Split(pauses, ",") {
		d := time.Duration(0)
		if ps != "0" {
			if d, err = time.ParseDuration(ps); err != nil {
				return fmt.Errorf("pause %q: %w", ps, err)
			}
		}
		fmt.Printf("pause %s start %s\n", ps, time.Now().UTC().Format(time.RFC3339Nano))
		var total time.Duration
		for i := 0; i < n; i++ {
			t0 := time.Now()
			r, evs, err := c.StartRunFollow(ctx, api.RunRequest{Student: student, Script: "hi.py"})
			if err != nil {
				return fmt.Errorf("start run %d: %w", i, err)
			}
			var end api.Event
			for {
				ev, err := evs.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return errors.Join(fmt.Errorf("events of run %s: %w", r.ID, err), evs.Close())
				}
				end = ev
			}
			if err := evs.Close(); err != nil {
				return fmt.Errorf("close the events of run %s: %w", r.ID, err)
			}
			if end.Type != api.EventEnd || end.Run == nil || end.Run.ExitCode == nil || *end.Run.ExitCode != 0 {
				return fmt.Errorf("run %s did not exit 0: last event %+v", r.ID, end)
			}
			total += time.Since(t0)
			time.Sleep(d)
		}
		fmt.Printf("pause %s end %s mean start->end %s\n", ps, time.Now().UTC().Format(time.RFC3339Nano), (total / time.Duration(n)).String())
	}
	return nil
}
