//go:build !amd64

package inside

import "golang.org/x/sys/unix"

// selectNR: only pselect6 on this architecture.
const selectNR = unix.SYS_PSELECT6
