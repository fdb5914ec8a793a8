// Command idexctl is the sysadmin's CLI for idexd. See `idexctl help`.
package main

import (
	"context"
	"os"

	"github.com/idexd/idexd/internal/cli"
)

func main() {
	os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
