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
		return err
	}
	p := filepath.Join(root, student, "hi.py")
	if err := os.WriteFile(p, []byte("print('hi')\n"), 0o644); err != nil {
		return err
	}
	if err := os.Chown(p, int(st.UID), int(st.GID)); err != nil {
		return err
	}
	for _, ps := range strings.Split(pauses, ",") {
		d := time.Duration(0)
		if ps != "0" {
			if d, err = time.ParseDuration(ps); err != nil {
				return err
			}
		}
		fmt.Printf("pause %s start %s\n", ps, time.Now().UTC().Format(time.RFC3339Nano))
		var total time.Duration
		for i := 0; i < n; i++ {
			t0 := time.Now()
			_, evs, err := c.StartRunFollow(ctx, api.RunRequest{Student: student, Script: "hi.py"})
			if err != nil {
				return err
			}
			for {
				_, err := evs.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return err
				}
			}
			if err := evs.Close(); err != nil {
				return err
			}
			total += time.Since(t0)
			time.Sleep(d)
		}
		fmt.Printf("pause %s end %s mean start->end %s\n", ps, time.Now().UTC().Format(time.RFC3339Nano), (total / time.Duration(n)).String())
	}
	return nil
}
