package run

import (
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// unixSignalName gives the conventional name ("SIGKILL") of a signal.
func unixSignalName(s syscall.Signal) string {
	if n := unix.SignalName(s); n != "" {
		return n
	}
	return "signal " + strconv.Itoa(int(s))
}
