// This file is no part of idexd. The load tests add it to cmd/idexd with
// `go build -overlay` (leak_test.go; docs/load.md shows the command) to
// make a daemon that leaks one fd every IDEXD_TEST_LEAK_FD_EVERY runs, and
// show that the soak's checks fail on it. It counts runs in the daemon's
// own log: stderr goes through a pipe, and every Nth "run ended" line
// opens /dev/null and never closes it. Without the variable (and in the
// helpers, whose environment is their own) it does nothing.

package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

func init() {
	every, err := strconv.Atoi(os.Getenv("IDEXD_TEST_LEAK_FD_EVERY"))
	if err != nil || every <= 0 {
		return
	}
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "leakfd: pipe:", err)
		os.Exit(1)
	}
	stderr := os.Stderr
	os.Stderr = w
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		ended := 0
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(stderr, line)
			if !strings.Contains(line, `msg="run ended"`) {
				continue
			}
			if ended++; ended%every == 0 {
				// A raw fd: an *os.File would be closed by its finalizer.
				if _, err := syscall.Open("/dev/null", syscall.O_RDONLY|syscall.O_CLOEXEC, 0); err != nil {
					fmt.Fprintln(stderr, "leakfd: open /dev/null:", err)
				}
			}
		}
	}()
}
