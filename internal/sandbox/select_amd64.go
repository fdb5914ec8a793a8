package sandbox

import "golang.org/x/sys/unix"

// selectNR is select(2), which arm64 does not have.
const selectNR = unix.SYS_SELECT
