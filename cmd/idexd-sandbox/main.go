// Command idexd-sandbox is idexd's sandbox helper: idexd starts it as each
// run's child, which then becomes the student and execs the interpreter
// (internal/sandbox). It links nothing else of idexd, so it starts in a
// third of the time idexd itself would.
package main

import (
	"fmt"
	"os"

	"github.com/idexd/idexd/internal/sandbox"
	"github.com/idexd/idexd/internal/version"
)

func main() {
	sandbox.Helper()
	// Which build is installed, as for idexd and idexctl (the Makefile
	// stamps all three); internal/version links nothing.
	if len(os.Args) == 2 && os.Args[1] == "--version" {
		fmt.Println("idexd-sandbox", version.Version)
		return
	}
	fmt.Fprintln(os.Stderr, "idexd-sandbox: this is idexd's sandbox helper; idexd starts it for each run, it is not run by hand")
	os.Exit(2)
}
