package cgroup

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// readFile and writeFile read and write a cgroup file with bare syscalls.
// os.ReadFile and os.WriteFile register each fd with the runtime's poller
// (cgroupfs files can be polled, so the epoll_ctl succeeds and has to be
// undone at close) and stat it: 14 us a read here against 7, about twenty
// times a run. Errors are *os.PathError, as os's.
func readFile(path string) ([]byte, error) {
	fd, err := open(path, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	var out []byte
	var buf [512]byte
	for {
		n, err := ignoringEINTR(func() (int, error) { return unix.Read(fd, buf[:]) })
		if err != nil {
			return nil, errors.Join(&os.PathError{Op: "read", Path: path, Err: err}, unix.Close(fd))
		}
		if n == 0 {
			break
		}
		out = append(out, buf[:n]...)
	}
	if err := unix.Close(fd); err != nil {
		return nil, &os.PathError{Op: "close", Path: path, Err: err}
	}
	return out, nil
}

// writeFile writes data to an existing cgroup file in one write, as the
// kernel takes each of them.
func writeFile(path string, data []byte) error {
	fd, err := open(path, unix.O_WRONLY)
	if err != nil {
		return err
	}
	if _, err := ignoringEINTR(func() (int, error) { return unix.Write(fd, data) }); err != nil {
		return errors.Join(&os.PathError{Op: "write", Path: path, Err: err}, unix.Close(fd))
	}
	if err := unix.Close(fd); err != nil {
		return &os.PathError{Op: "close", Path: path, Err: err}
	}
	return nil
}

func open(path string, mode int) (int, error) {
	fd, err := ignoringEINTR(func() (int, error) { return unix.Open(path, mode|unix.O_CLOEXEC, 0) })
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}

// ignoringEINTR retries f when a signal interrupted it (the runtime's
// preemption signals; a cgroup write that reclaims memory, a lowered limit's,
// returns EINTR on any pending).
func ignoringEINTR(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if !errors.Is(err, unix.EINTR) {
			return n, err
		}
	}
}

// fileCache keeps a reusable warm group's files open across its runs.
// Opening a cgroup file walks its whole path through cgroupfs: 9.3 us an
// open, read and close here against 0.9 us for a pread on a kept fd
// (about forty a run, bench/README.md). A kept fd reads the file anew at
// every pread from offset 0 (cgroupfs regenerates a seq file read from a
// position other than where the last read ended), and a write through it
// acts as any write: the files are not positioned.
//
// The fds are idexd's only, O_CLOEXEC; they go when the group is deleted
// (close). A nil cache keeps nothing and opens each time.
type fileCache struct {
	mu   sync.Mutex
	fds  map[fileKey]int
	open *atomic.Int64 // the manager's count of kept fds (OpenFiles)
}

type fileKey struct {
	path  string
	write bool
}

func newFileCache(open *atomic.Int64) *fileCache {
	return &fileCache{fds: make(map[fileKey]int), open: open}
}

// fd returns the kept fd for path, opening it the first time.
func (c *fileCache) fd(path string, write bool) (int, error) {
	k := fileKey{path, write}
	c.mu.Lock()
	defer c.mu.Unlock()
	if fd, ok := c.fds[k]; ok {
		return fd, nil
	}
	mode := unix.O_RDONLY
	if write {
		mode = unix.O_WRONLY
	}
	fd, err := open(path, mode)
	if err != nil {
		return -1, err
	}
	c.fds[k] = fd
	c.open.Add(1)
	return fd, nil
}

// read is readFile through a kept fd.
func (c *fileCache) read(path string) ([]byte, error) {
	if c == nil {
		return readFile(path)
	}
	fd, err := c.fd(path, false)
	if err != nil {
		return nil, err
	}
	var out []byte
	var buf [512]byte
	for {
		off := int64(len(out))
		n, err := ignoringEINTR(func() (int, error) { return unix.Pread(fd, buf[:], off) })
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return out, nil
		}
		out = append(out, buf[:n]...)
	}
}

// write is writeFile through a kept fd.
func (c *fileCache) write(path string, data []byte) error {
	if c == nil {
		return writeFile(path, data)
	}
	fd, err := c.fd(path, true)
	if err != nil {
		return err
	}
	if _, err := ignoringEINTR(func() (int, error) { return unix.Pwrite(fd, data, 0) }); err != nil {
		return &os.PathError{Op: "write", Path: path, Err: err}
	}
	return nil
}

// readInt is readInt through a kept fd.
func (c *fileCache) readInt(path string) (int64, error) {
	b, err := c.read(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return v, nil
}

// close closes every kept fd; the cache keeps nothing after it.
func (c *fileCache) close() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for k, fd := range c.fds {
		if err := unix.Close(fd); err != nil {
			errs = append(errs, &os.PathError{Op: "close", Path: k.path, Err: err})
		}
		delete(c.fds, k)
		c.open.Add(-1)
	}
	return errors.Join(errs...)
}
