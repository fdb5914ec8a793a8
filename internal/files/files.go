// Package files serves students' files to the web tier through idexd, so
// that the web tier needs no access to the students' directories and never
// follows a path that a student's program planted there.
//
// Every path is resolved by the kernel beneath the student's directory
// with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
// | RESOLVE_NO_XDEV): no symlink is followed, in the path or at its end,
// and nothing outside the directory can be named, even by a path swapped
// while the request runs. Only regular files are read or replaced: a FIFO,
// socket or device is refused (not_regular) after an O_PATH open, which
// never blocks and has no side effect. Reads and writes are capped
// (file_too_large). A write goes to a temporary file in the same directory,
// is fsynced and renamed over the old one, so a reader sees the old file
// or the new one, never a part. Every operation runs as the student (see
// workers), so what idexd creates is the student's and the student's
// disk quota applies to it.
package files

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/quota"
	"github.com/idexd/idexd/internal/students"
)

// Students finds a known student (*run.Engine): the one place a stored
// student becomes the protocol's, with its ids, its directory's path and,
// for any other name, a coded refusal (invalid_student, student_not_found,
// store_unavailable). It never creates one.
type Students interface {
	GetStudent(ctx context.Context, name string) (api.Student, error)
}

// Config wires a Service.
type Config struct {
	Students Students
	Dirs     *students.Dirs
	// MaxBytes caps one read and one write (file_too_large beyond).
	MaxBytes int64
	// Quota applies and checks disk limits; nil means none.
	Quota *quota.Manager
	Log   *slog.Logger
}

// Service is the file operations on students' directories.
type Service struct {
	cfg Config
	log *slog.Logger
	w   *workers
}

// New returns a Service with its worker threads started; Close ends them.
func New(cfg Config) (*Service, error) {
	if cfg.Students == nil || cfg.Dirs == nil || cfg.Log == nil || cfg.MaxBytes <= 0 {
		return nil, errors.New("files: Students, Dirs, Log and a positive MaxBytes are required")
	}
	w, err := startWorkers(numWorkers, cfg.Log)
	if err != nil {
		return nil, fmt.Errorf("files: %w", err)
	}
	return &Service{cfg: cfg, log: cfg.Log, w: w}, nil
}

// Close ends the worker threads once the operations in progress are done;
// no operation may start after it.
func (s *Service) Close() { s.w.close() }

// as runs fn as the student (see workers).
func (s *Service) as(st api.Student, fn func() error) error { return s.w.as(st.UID, st.GID, fn) }

// MaxBytes is the cap on one read or write.
func (s *Service) MaxBytes() int64 { return s.cfg.MaxBytes }

// Quota is the disk quota manager, or nil.
func (s *Service) Quota() *quota.Manager { return s.cfg.Quota }

// student looks a student up without creating one and makes sure the
// directory is there with its owner and mode.
func (s *Service) student(ctx context.Context, name string) (api.Student, error) {
	st, err := s.cfg.Students.GetStudent(ctx, name)
	if err != nil {
		return api.Student{}, err
	}
	if st.Workdir, err = s.cfg.Dirs.Ensure(st.Name, st.UID, st.GID); err != nil {
		return api.Student{}, fmt.Errorf("directory of student %s: %w", name, err)
	}
	return st, nil
}

// Disk is the student's disk usage, or the zero Disk without quotas.
func (s *Service) Disk(ctx context.Context, st api.Student) api.Disk {
	if s.cfg.Quota == nil {
		return api.Disk{}
	}
	return s.cfg.Quota.Disk(ctx, st)
}

// inDir runs fn as the student (see workers) with an fd of the student's
// directory, the root of every path resolution.
func (s *Service) inDir(st api.Student, fn func(root int) error) error {
	return s.as(st, func() error {
		root, err := unix.Open(st.Workdir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open the directory of %s: %w", st.Name, err)
		}
		defer closeFD(root, "student directory") //nolint:errcheck // O_PATH fd
		return fn(root)
	})
}

// closeDir closes a directory fd kept across steps of a request.
func (s *Service) closeDir(st api.Student, fd int) {
	if fd < 0 {
		return
	}
	if err := closeFD(fd, "directory"); err != nil {
		s.log.Warn("close a directory", "student", st.Name, "err", err)
	}
}

// List lists a directory of the student's, sorted by name; dir "" is the
// student's directory itself.
func (s *Service) List(ctx context.Context, name, dir string) (api.FileList, error) {
	rel, err := clean(dir, true)
	if err != nil {
		return api.FileList{}, err
	}
	st, err := s.student(ctx, name)
	if err != nil {
		return api.FileList{}, err
	}
	out := api.FileList{Path: rel, Entries: []api.FileEntry{}}
	err = s.inDir(st, func(root int) error {
		fd, err := openBeneath(root, rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			return pathError("list", rel, err)
		}
		d := os.NewFile(uintptr(fd), rel)
		defer d.Close() //nolint:errcheck // read-only directory
		for len(out.Entries) <= api.MaxListEntries {
			names, err := d.Readdirnames(256)
			if errors.Is(err, io.EOF) || (err == nil && len(names) == 0) {
				break
			}
			if err != nil {
				return pathError("list", rel, err)
			}
			for _, n := range names {
				var fst unix.Stat_t
				if err := unix.Fstatat(fd, n, &fst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
					if errors.Is(err, unix.ENOENT) {
						continue // removed meanwhile
					}
					return pathError("stat", joinRel(rel, n), err)
				}
				out.Entries = append(out.Entries, entry(n, &fst))
			}
		}
		return nil
	})
	if err != nil {
		return api.FileList{}, err
	}
	slices.SortFunc(out.Entries, func(a, b api.FileEntry) int { return strings.Compare(a.Name, b.Name) })
	if len(out.Entries) > api.MaxListEntries {
		out.Entries, out.Truncated = out.Entries[:api.MaxListEntries], true
	}
	return out, nil
}

func joinRel(dir, name string) string {
	if dir == "" || dir == "." {
		return name
	}
	return dir + "/" + name
}

func entry(name string, st *unix.Stat_t) api.FileEntry {
	return api.FileEntry{Name: name, Type: typeOf(st.Mode), Size: st.Size, Mtime: mtime(st)}
}

func mtime(st *unix.Stat_t) time.Time {
	return time.Unix(st.Mtim.Sec, st.Mtim.Nsec).UTC()
}

// Open opens a regular file of the student's for reading. The caller reads
// at most the returned size and closes the file.
func (s *Service) Open(ctx context.Context, name, p string) (*os.File, api.FileInfo, error) {
	rel, err := clean(p, false)
	if err != nil {
		return nil, api.FileInfo{}, err
	}
	st, err := s.student(ctx, name)
	if err != nil {
		return nil, api.FileInfo{}, err
	}
	var f *os.File
	var info api.FileInfo
	err = s.inDir(st, func(root int) error {
		// O_PATH first: it opens nothing (a FIFO does not block, a device
		// is not touched), it only names the inode to check.
		pfd, err := openBeneath(root, rel, unix.O_PATH, 0)
		if err != nil {
			return pathError("read", rel, err)
		}
		defer closeFD(pfd, rel) //nolint:errcheck // O_PATH fd
		var pst unix.Stat_t
		if err := unix.Fstat(pfd, &pst); err != nil {
			return fmt.Errorf("stat %q: %w", rel, err)
		}
		if t := typeOf(pst.Mode); t != api.FileRegular {
			return notRegular(rel, t)
		}
		if pst.Size > s.cfg.MaxBytes {
			return api.Errorf(api.CodeFileTooLarge, "%q is %d bytes, over the %d that may be read at once (file_max_mb)", rel, pst.Size, s.cfg.MaxBytes)
		}
		// Reopening through /proc/self/fd opens that very inode, checked
		// above, with the student's permissions.
		fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(pfd), unix.O_RDONLY|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			return pathError("read", rel, err)
		}
		f = os.NewFile(uintptr(fd), rel)
		info = api.FileInfo{Path: rel, Type: api.FileRegular, Size: pst.Size, Mtime: mtime(&pst)}
		return nil
	})
	if err != nil {
		return nil, api.FileInfo{}, err
	}
	return f, info, nil
}

// parentDir opens the directory that holds rel, creating missing ones
// (owned by the student) when parents is true. It returns the directory's
// fd and the directories it created, in order.
func (s *Service) parentDir(root int, rel string, parents bool) (int, []string, error) {
	dir, _ := split(rel)
	fd, err := openBeneath(root, dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err == nil || !parents || !errors.Is(err, unix.ENOENT) {
		if err != nil {
			return -1, nil, pathError("open directory", dir, err)
		}
		return fd, nil, nil
	}
	_, dirMode := s.cfg.Dirs.FileModes()
	cur, err := unix.Dup(root)
	if err != nil {
		return -1, nil, fmt.Errorf("dup directory fd: %w", err)
	}
	var made []string
	at := ""
	for _, c := range strings.Split(dir, "/") {
		at = joinRel(at, c)
		err := unix.Mkdirat(cur, c, dirMode)
		if err == nil {
			made = append(made, at)
		} else if !errors.Is(err, unix.EEXIST) {
			return -1, made, errors.Join(pathError("create directory", at, err), closeFD(cur, dir))
		}
		next, err := openBeneath(cur, c, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if cerr := closeFD(cur, dir); cerr != nil {
			s.log.Warn("close a directory", "err", cerr)
		}
		if err != nil {
			return -1, made, pathError("open directory", at, err)
		}
		cur = next
	}
	return cur, made, nil
}

// removeMade removes the directories a refused request created, deepest
// first, on the student's thread. One that is not empty any more (a run
// wrote into it meanwhile) stays.
func (s *Service) removeMade(st api.Student, made []string) {
	if len(made) == 0 {
		return
	}
	err := s.inDir(st, func(root int) error {
		var errs []error
		for i := len(made) - 1; i >= 0; i-- {
			dir, base := split(made[i])
			fd, err := openBeneath(root, dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
			if err != nil {
				errs = append(errs, fmt.Errorf("open %q: %w", dir, err))
				continue
			}
			if err := unix.Unlinkat(fd, base, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("remove %q: %w", made[i], err))
			}
			errs = append(errs, closeFD(fd, dir))
		}
		return errors.Join(errs...)
	})
	if err != nil {
		s.log.Error("remove directories of a refused request", "student", st.Name, "dirs", made, "err", err)
	}
}

// tmpName is a new name for a file being written, unlikely to exist; it
// is created with O_EXCL, so it is never someone else's.
func tmpName() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails on Linux
	return ".idexd-" + hex.EncodeToString(b[:]) + ".tmp"
}

// Write replaces (or creates) a regular file of the student's with at most
// MaxBytes of body, atomically: a temporary file in the same directory,
// fsync, rename, fsync of the directory. On any failure the temporary file
// is removed and the old file is untouched. parents creates missing
// directories.
func (s *Service) Write(ctx context.Context, name, p string, body io.Reader, parents bool) (api.FileInfo, error) {
	rel, err := clean(p, false)
	if err != nil {
		return api.FileInfo{}, err
	}
	st, err := s.student(ctx, name)
	if err != nil {
		return api.FileInfo{}, err
	}
	if s.cfg.Quota != nil {
		if err := s.cfg.Quota.Admit(ctx, st); err != nil {
			return api.FileInfo{}, err
		}
	}
	_, base := split(rel)
	fileMode, _ := s.cfg.Dirs.FileModes()
	var (
		dirfd              = -1
		tmp                *os.File
		made               []string
		info               api.FileInfo
		addBytes, addFiles int64
		committed          bool
	)
	// Whatever a refused write created (the temporary file, directories
	// made for it) does not stay.
	defer func() {
		if tmp != nil {
			if err := tmp.Close(); err != nil {
				s.log.Warn("close a temporary file", "student", st.Name, "path", rel, "err", err)
			}
			if !committed {
				if err := s.as(st, func() error { return unix.Unlinkat(dirfd, tmp.Name(), 0) }); err != nil {
					s.log.Error("remove a temporary file", "student", st.Name, "path", rel, "tmp", tmp.Name(), "err", err)
				}
			}
		}
		if !committed {
			s.removeMade(st, made)
		}
		s.closeDir(st, dirfd)
	}()
	err = s.inDir(st, func(root int) error {
		fd, mk, err := s.parentDir(root, rel, parents)
		made = mk
		if err != nil {
			return err
		}
		dirfd, addFiles = fd, int64(len(mk))
		var old unix.Stat_t
		switch err := unix.Fstatat(dirfd, base, &old, unix.AT_SYMLINK_NOFOLLOW); {
		case errors.Is(err, unix.ENOENT):
			addFiles++
		case err != nil:
			return pathError("write", rel, err)
		case typeOf(old.Mode) != api.FileRegular:
			return notRegular(rel, typeOf(old.Mode))
		default:
			addBytes -= old.Blocks * 512
		}
		name := tmpName()
		tfd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, fileMode)
		if err != nil {
			return pathError("write", rel, err)
		}
		tmp = os.NewFile(uintptr(tfd), name)
		return nil
	})
	if err != nil {
		return api.FileInfo{}, err
	}
	// The body is read here, from the client, and each piece written by a
	// worker, as the student: the kernel charges (or refuses, EDQUOT) the
	// blocks in the writing thread's name.
	if err := s.copyIn(st, tmp, body, rel); err != nil {
		return api.FileInfo{}, err
	}
	err = s.as(st, func() error {
		if err := tmp.Sync(); err != nil {
			return pathError("write", rel, err)
		}
		var nst unix.Stat_t
		if err := unix.Fstat(int(tmp.Fd()), &nst); err != nil {
			return fmt.Errorf("stat %q: %w", rel, err)
		}
		addBytes += nst.Blocks * 512
		info = api.FileInfo{Path: rel, Type: api.FileRegular, Size: nst.Size, Mtime: mtime(&nst)}
		return nil
	})
	if err != nil {
		return api.FileInfo{}, err
	}
	err = s.charge(ctx, st, addBytes, addFiles, func() error {
		if err := unix.Renameat(dirfd, tmp.Name(), dirfd, base); err != nil {
			return pathError("write", rel, err)
		}
		committed = true
		// The rename is durable once the directory is.
		if err := unix.Fsync(dirfd); err != nil {
			s.log.Warn("fsync a student's directory", "student", st.Name, "path", rel, "err", err)
		}
		return nil
	})
	if err != nil {
		return api.FileInfo{}, err
	}
	return info, nil
}

// copyIn copies at most MaxBytes of body into f: read by the caller's
// goroutine, written by a worker, a piece at a time.
func (s *Service) copyIn(st api.Student, f *os.File, body io.Reader, rel string) error {
	buf := make([]byte, 256<<10)
	var total int64
	for {
		n, rerr := fill(body, buf)
		total += int64(n)
		if total > s.cfg.MaxBytes {
			return api.Errorf(api.CodeFileTooLarge, "the body for %q is over %d bytes (file_max_mb)", rel, s.cfg.MaxBytes)
		}
		if n > 0 {
			werr := s.as(st, func() error {
				if _, err := f.Write(buf[:n]); err != nil {
					return pathError("write", rel, err)
				}
				return nil
			})
			if werr != nil {
				return werr
			}
		}
		switch {
		case rerr == nil:
		case errors.Is(rerr, io.EOF):
			return nil
		default:
			// A body cut short (io.ErrUnexpectedEOF from net/http) too:
			// the old file stays.
			return api.Errorf(api.CodeInvalidRequest, "read the body for %q: %v", rel, rerr)
		}
	}
}

// fill reads into buf until it is full or r fails; unlike io.ReadFull it
// returns io.EOF itself at the end, so that a body cut short
// (io.ErrUnexpectedEOF) is not taken for its end.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// charge makes a change visible (commit runs as the student) if the
// student's disk limits allow it.
func (s *Service) charge(ctx context.Context, st api.Student, addBytes, addFiles int64, commit func() error) error {
	asSt := func() error { return s.as(st, commit) }
	if s.cfg.Quota == nil {
		return asSt()
	}
	return s.cfg.Quota.Charge(ctx, st, addBytes, addFiles, asSt)
}

// Remove removes a file (of any type: a symlink is removed, not followed)
// or an empty directory.
func (s *Service) Remove(ctx context.Context, name, p string) error {
	rel, err := clean(p, false)
	if err != nil {
		return err
	}
	st, err := s.student(ctx, name)
	if err != nil {
		return err
	}
	_, base := split(rel)
	dirfd := -1
	var old unix.Stat_t
	err = s.inDir(st, func(root int) error {
		fd, _, err := s.parentDir(root, rel, false)
		if err != nil {
			return err
		}
		dirfd = fd
		if err := unix.Fstatat(dirfd, base, &old, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return pathError("remove", rel, err)
		}
		return nil
	})
	defer func() { s.closeDir(st, dirfd) }()
	if err != nil {
		return err
	}
	flags := 0
	if typeOf(old.Mode) == api.FileDir {
		flags = unix.AT_REMOVEDIR
	}
	return s.charge(ctx, st, -old.Blocks*512, -1, func() error {
		if err := unix.Unlinkat(dirfd, base, flags); err != nil {
			return pathError("remove", rel, err)
		}
		return nil
	})
}

// Move renames a file or directory to another path of the same student's.
// It never replaces what is at the destination (file_exists); parents
// creates the destination's missing directories.
func (s *Service) Move(ctx context.Context, name, from, to string, parents bool) (api.FileInfo, error) {
	src, err := clean(from, false)
	if err != nil {
		return api.FileInfo{}, err
	}
	dst, err := clean(to, false)
	if err != nil {
		return api.FileInfo{}, err
	}
	st, err := s.student(ctx, name)
	if err != nil {
		return api.FileInfo{}, err
	}
	_, srcBase := split(src)
	_, dstBase := split(dst)
	srcDir, dstDir := -1, -1
	var made []string
	committed := false
	defer func() {
		if !committed {
			s.removeMade(st, made)
		}
		s.closeDir(st, srcDir)
		s.closeDir(st, dstDir)
	}()
	err = s.inDir(st, func(root int) error {
		if srcDir, _, err = s.parentDir(root, src, false); err != nil {
			return err
		}
		dstDir, made, err = s.parentDir(root, dst, parents)
		return err
	})
	if err != nil {
		return api.FileInfo{}, err
	}
	var info api.FileInfo
	err = s.charge(ctx, st, 0, int64(len(made)), func() error {
		if err := unix.Renameat2(srcDir, srcBase, dstDir, dstBase, unix.RENAME_NOREPLACE); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return api.Errorf(api.CodeFileExists, "move %q to %q: the destination exists already", src, dst)
			}
			return pathError("move", src, err)
		}
		committed = true
		var nst unix.Stat_t
		if err := unix.Fstatat(dstDir, dstBase, &nst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return pathError("stat", dst, err)
		}
		info = api.FileInfo{Path: dst, Type: typeOf(nst.Mode), Size: nst.Size, Mtime: mtime(&nst)}
		return nil
	})
	if err != nil {
		return api.FileInfo{}, err
	}
	return info, nil
}
