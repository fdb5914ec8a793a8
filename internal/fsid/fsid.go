// Package fsid sets the calling thread's filesystem uid and gid, the ids
// the kernel checks file access against (and /proc's ptrace checks with
// the _FSCREDS modes). Credentials are per thread in Linux: callers lock
// their goroutine to its OS thread around a change and put root's back
// before unlocking.
package fsid

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Set sets fsgid, then fsuid. setfsuid/setfsgid report failure only by
// leaving the value unchanged, so each is read back (an invalid id, -1,
// changes nothing and returns the current one).
func Set(uid, gid uint32) error {
	if _, err := unix.SetfsgidRetGid(int(gid)); err != nil {
		return fmt.Errorf("setfsgid %d: %w", gid, err)
	}
	if cur, _ := unix.SetfsgidRetGid(-1); cur != int(gid) {
		return fmt.Errorf("setfsgid %d did not take (fsgid %d)", gid, cur)
	}
	if _, err := unix.SetfsuidRetUid(int(uid)); err != nil {
		return fmt.Errorf("setfsuid %d: %w", uid, err)
	}
	if cur, _ := unix.SetfsuidRetUid(-1); cur != int(uid) {
		return fmt.Errorf("setfsuid %d did not take (fsuid %d)", uid, cur)
	}
	return nil
}
