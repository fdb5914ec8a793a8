package quota

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// maxDepth bounds a walk: each level holds one open directory. A deeper
// tree is not measured but refused (errTooDeep), so that nesting cannot
// hide data from the count.
const maxDepth = 512

// Usage is what a directory tree holds.
type Usage struct {
	// Bytes is the space allocated (st_blocks × 512), as quotas count it.
	Bytes int64
	// Files counts inodes: files, directories (the top one included),
	// symlinks and the rest, a hard-linked file once.
	Files int64
}

// Measure walks dir without following a symlink or crossing into another
// filesystem and adds up what it holds. Entries that vanish meanwhile are
// skipped: a run may be deleting files while idexd counts them.
func Measure(dir string) (Usage, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return Usage{}, fmt.Errorf("open %s: %w", dir, err)
	}
	top := os.NewFile(uintptr(fd), dir)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return Usage{}, errors.Join(fmt.Errorf("stat %s: %w", dir, err), top.Close())
	}
	w := walker{dev: st.Dev, links: map[uint64]bool{}}
	w.add(&st)
	// One frame per level: the open directory and the names of it still
	// to count, so that the walk holds one fd per level, not per sibling.
	type frame struct {
		f     *os.File
		names []string
	}
	stack := []frame{{f: top}}
	defer func() {
		for _, fr := range stack {
			fr.f.Close() //nolint:errcheck // read-only directories
		}
	}()
	for len(stack) > 0 {
		cur := &stack[len(stack)-1]
		if len(cur.names) == 0 {
			names, err := cur.f.Readdirnames(256)
			if errors.Is(err, io.EOF) || (err == nil && len(names) == 0) {
				cur.f.Close() //nolint:errcheck // read-only directory
				stack = stack[:len(stack)-1]
				continue
			}
			if err != nil {
				return w.u, fmt.Errorf("read directory %s: %w", cur.f.Name(), err)
			}
			cur.names = names
		}
		name := cur.names[0]
		cur.names = cur.names[1:]
		sub, err := w.entry(cur.f, name)
		if err != nil {
			return w.u, err
		}
		if sub == nil {
			continue
		}
		if len(stack) >= maxDepth {
			sub.Close() //nolint:errcheck // read-only directory
			return w.u, fmt.Errorf("%s: %w (%d levels)", dir, errTooDeep, maxDepth)
		}
		stack = append(stack, frame{f: sub})
	}
	return w.u, nil
}

type walker struct {
	dev   uint64
	u     Usage
	links map[uint64]bool // inodes with more than one link, counted once
}

func (w *walker) add(st *unix.Stat_t) {
	if st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Nlink > 1 {
		if w.links[st.Ino] {
			return
		}
		w.links[st.Ino] = true
	}
	w.u.Bytes += st.Blocks * 512
	w.u.Files++
}

// entry counts one name of dir and returns it opened when it is a
// directory of the same filesystem to descend into.
func (w *walker) entry(dir *os.File, name string) (*os.File, error) {
	dfd := int(dir.Fd())
	var st unix.Stat_t
	err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stat %s/%s: %w", dir.Name(), name, err)
	}
	w.add(&st)
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Dev != w.dev {
		return nil, nil
	}
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR):
		// Replaced meanwhile (by a symlink, a file): counted as it was.
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("open %s/%s: %w", dir.Name(), name, err)
	}
	return os.NewFile(uintptr(fd), dir.Name()+"/"+name), nil
}
