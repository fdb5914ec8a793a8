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
	if err := bench.Main(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "idexbench:", err)
		os.Exit(1)
	}
}
