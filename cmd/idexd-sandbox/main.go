// Command idexd-sandbox is idexd's sandbox helper: idexd starts it for
// each run in namespaces of its own, where it prepares the run's view of
// the system, becomes the student, starts the interpreter and stays as the
// run's PID 1 (internal/sandbox/inside). It links nothing else of idexd,
// so it starts fast and stays small (it lives as long as the run, and its
// memory is charged to the run).
package main

import (
	"fmt"
	"os"

	"github.com/idexd/idexd/internal/sandbox/inside"
	"github.com/idexd/idexd/internal/version"
)

func main() {
	inside.Main()
	// Which build is installed, as for idexd and idexctl (the Makefile
	// stamps all three); internal/version links nothing.
	if len(os.Args) == 2 && os.Args[1] == "--version" {
		fmt.Println("idexd-sandbox", version.Version)
		return
	}
	fmt.Fprintln(os.Stderr, "idexd-sandbox: this is idexd's sandbox helper; idexd starts it for each run, it is not run by hand")
	os.Exit(2)
}
