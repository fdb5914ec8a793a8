//go:build !amd64

package sandbox

import "golang.org/x/sys/unix"

// selectNR: only pselect6 on this architecture.
const selectNR = unix.SYS_PSELECT6
