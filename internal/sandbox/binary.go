package sandbox

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Binary is the program a run's helper runs. The zero value re-executes
// the current binary, whose main (or TestMain) must call inside.Main
// first. Open gives a dedicated helper binary (cmd/idexd-sandbox), which
// starts in a third of the time and stays small as the run's PID 1: it
// links none of the daemon's packages.
type Binary struct {
	path string
	f    *os.File
}

// Self is the current binary, re-executed.
func Self() Binary { return Binary{} }

// Open pins the helper binary at path: the file is held open and executed
// through /proc/self/fd, so an upgrade that replaces it on disk cannot
// hand a running idexd a helper of another version, and the helper needs
// no search permission on the directories above it.
func Open(path string) (Binary, error) {
	f, err := os.Open(path)
	if err != nil {
		return Binary{}, fmt.Errorf("open sandbox helper: %w", err)
	}
	fi, err := f.Stat()
	if err == nil && (!fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0) {
		err = fmt.Errorf("not an executable file (mode %v)", fi.Mode())
	}
	if err != nil {
		return Binary{}, errors.Join(fmt.Errorf("sandbox helper %s: %w", path, err), f.Close())
	}
	// Above the helper's fds 0-3, which the child's dup2s would overwrite
	// before the exec that needs this one.
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 10)
	cerr := f.Close()
	if err != nil {
		return Binary{}, errors.Join(fmt.Errorf("pin sandbox helper %s: %w", path, err), cerr)
	}
	pinned := os.NewFile(uintptr(fd), path)
	if cerr != nil {
		return Binary{}, errors.Join(fmt.Errorf("pin sandbox helper %s: %w", path, cerr), pinned.Close())
	}
	return Binary{path: fmt.Sprintf("/proc/self/fd/%d", fd), f: pinned}, nil
}

// Close releases a pinned helper binary.
func (b Binary) Close() error {
	if b.f == nil {
		return nil
	}
	return b.f.Close()
}

// String names the helper for logs.
func (b Binary) String() string {
	if b.f == nil {
		return "idexd itself (re-executed)"
	}
	return b.f.Name()
}

// exe is what to execve.
func (b Binary) exe() string {
	if b.path == "" {
		// The magic link works even after idexd's binary was replaced on
		// disk by an upgrade, and it needs no search permission on the
		// directories above a test binary.
		return "/proc/self/exe"
	}
	return b.path
}
