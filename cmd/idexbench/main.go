// Command idexbench measures what a run through idexd costs, side by side
// with a bare spawn of the same interpreter (issue 7), against the built
// binaries: idexbench --idexd .bin/idexd --idexctl .bin/idexctl. It builds
// nothing itself. See bench/README.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/idexd/idexd/internal/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if len(os.Args) > 1 && os.Args[1] == bench.FloorSubcommand {
		// The floor's spawn server, started by idexbench itself.
		if err := bench.ServeFloor(ctx, os.Args[2:], os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "idexbench:", err)
			os.Exit(1)
		}
		return
	}
	if err := bench.Main(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "idexbench:", err)
		os.Exit(1)
	}
}
