package inside

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The run's seccomp filter is compiled by idexd (internal/sandbox,
// seccomp.go, where the policy and its reasons are) and comes with the
// Setup as the kernel's struct sock_filter array.

// FilterInstructionSize is one struct sock_filter: code (u16), jt, jf
// (u8), k (u32), in this machine's byte order.
const FilterInstructionSize = 8

// decodeFilter turns Setup.Filter into the program seccomp(2) takes. A
// helper never runs a program without one.
func decodeFilter(b []byte) (*unix.SockFprog, error) {
	n := len(b) / FilterInstructionSize
	if n == 0 || n > 4096 || len(b)%FilterInstructionSize != 0 {
		return nil, fmt.Errorf("helper: seccomp filter of %d bytes: want 1 to 4096 instructions of %d bytes", len(b), FilterInstructionSize)
	}
	filter := make([]unix.SockFilter, n)
	for i := range filter {
		ins := b[i*FilterInstructionSize:]
		filter[i] = unix.SockFilter{
			Code: binary.NativeEndian.Uint16(ins),
			Jt:   ins[2],
			Jf:   ins[3],
			K:    binary.NativeEndian.Uint32(ins[4:]),
		}
	}
	return &unix.SockFprog{Len: uint16(n), Filter: &filter[0]}, nil
}

// loadFilter installs the filter on every thread of the helper (TSYNC),
// after no_new_privs, which an unprivileged process needs for it and which
// keeps set-uid programs from gaining anything. The program forked next
// inherits both.
func loadFilter(prog *unix.SockFprog) error {
	// no_new_privs is per thread, and the kernel checks the thread that
	// calls seccomp(): both on one OS thread (TSYNC then gives every other
	// thread the bit and the filter).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("helper: set no_new_privs: %w", err)
	}
	tid, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(prog)))
	switch {
	case errno != 0:
		return fmt.Errorf("helper: load seccomp filter: %w", errno)
	case tid != 0:
		// TSYNC names the thread it could not move onto the filter.
		return fmt.Errorf("helper: load seccomp filter: thread %d could not take it", tid)
	}
	return nil
}
