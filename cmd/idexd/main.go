// Command idexd runs students' scripts, each in a cgroup of its own as the
// student's uid, for a classroom web IDE. See README.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/idexd/idexd/internal/daemon"
	"github.com/idexd/idexd/internal/sandbox/inside"
)

func main() {
	inside.Main() // a run's child is this binary in helper mode
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := daemon.Main(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "idexd:", err)
		os.Exit(1)
	}
}
