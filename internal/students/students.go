// Package students knows where a student's files live and what may run:
// it validates names, ensures each student's directory with the right owner
// and mode, and resolves a script path so that nothing outside that
// directory can be named, not even through a symlink swapped in meanwhile.
//
// Two layouts, with plain modes only, as shared storage without POSIX ACLs
// (EFS) requires. The default, private, is for a web tier that reaches
// students' files only through idexd's file routes:
//
//	<workdir_root>               root:root 0711
//	<workdir_root>/<student>     <student uid>:<student gid> 0700
//
// Nobody but the student's runs (and root) can enter the directory, so no
// other process ever follows a path a run planted there.
//
// The shared layout keeps the older scheme for a web tier that still reads
// and writes the directories itself:
//
//	<workdir_root>               root:<client group> 0751
//	<workdir_root>/<student>     <student uid>:<client group> 2770
//
// The setgid bit gives every new file the client group, and runs use umask
// 007, so the web tier can read and rewrite what a run wrote. The web tier
// saves files with mode 0666 (umask 000) so that runs, which are "other" to
// a file the web tier owns, can rewrite them in place; the 2770 directory
// is what keeps every other student out. Its risk: the web tier follows
// whatever a run left there (a symlink to another student's file or to
// /proc/self/environ, a FIFO that never answers), as a process with access
// to every student's directory.
package students

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/api"
)

// Where students' uids come from (the uid_source setting).
const (
	// UIDSourceRange: idexd gives each student the next uid of a range.
	UIDSourceRange = "range"
	// UIDSourcePasswd: each student is a system account and keeps its ids.
	UIDSourcePasswd = "passwd"
)

var nameRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

// ValidName returns an invalid_student error unless name is a Unix-style name.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return api.Errorf(api.CodeInvalidStudent, "student name %q must match %s", name, nameRE)
	}
	return nil
}

// Layout is how students' directories are owned and shared.
type Layout string

const (
	// LayoutPrivate (the default, also the zero value): each directory is
	// the student's own, 0700.
	LayoutPrivate Layout = "private"
	// LayoutShared: the client group may read and write every directory.
	LayoutShared Layout = "shared"
)

// QuotaSetter applies a student's disk limits (kernel quotas).
type QuotaSetter interface {
	Apply(uid uint32) error
}

// Dirs manages the students' directories under one root.
type Dirs struct {
	Root        string
	ClientGroup uint32 // gid of the web tier's group
	Layout      Layout
	// Quota, when set, is applied to each student's uid by Ensure.
	Quota QuotaSetter
}

const (
	sharedRootMode     = 0o751
	sharedStudentMode  = 0o2770
	privateRootMode    = 0o711
	privateStudentMode = 0o700
)

// Shared reports whether the web tier shares the directories (LayoutShared).
func (d *Dirs) Shared() bool { return d.Layout == LayoutShared }

// owner is who owns the root and a student's directory, and their modes.
func (d *Dirs) owner(gid uint32) (rootGID uint32, rootMode uint32, studentGID uint32, studentMode uint32) {
	if d.Shared() {
		return d.ClientGroup, sharedRootMode, d.ClientGroup, sharedStudentMode
	}
	return 0, privateRootMode, gid, privateStudentMode
}

// FileModes are the modes of files and directories created on a
// student's behalf (the file routes): private to the student, or shared
// with the client group as runs' umask 007 makes them.
func (d *Dirs) FileModes() (file, dir uint32) {
	if d.Shared() {
		return 0o660, 0o770
	}
	return 0o600, 0o700
}

// Workdir is the student's directory (not checked).
func (d *Dirs) Workdir(student string) string { return filepath.Join(d.Root, student) }

// EnsureRoot creates the root with its mode if missing.
func (d *Dirs) EnsureRoot() error {
	switch d.Layout {
	case "", LayoutPrivate, LayoutShared:
	default:
		return fmt.Errorf("workdir layout must be %q or %q, got %q", LayoutPrivate, LayoutShared, d.Layout)
	}
	rootGID, rootMode, _, _ := d.owner(0)
	if err := os.MkdirAll(d.Root, os.FileMode(rootMode)); err != nil {
		return fmt.Errorf("create workdir root %s: %w", d.Root, err)
	}
	if err := os.Chown(d.Root, 0, int(rootGID)); err != nil {
		return fmt.Errorf("chown workdir root %s: %w", d.Root, err)
	}
	if err := os.Chmod(d.Root, os.FileMode(rootMode)); err != nil {
		return fmt.Errorf("chmod workdir root %s: %w", d.Root, err)
	}
	return nil
}

// Ensure creates the student's directory if missing, fixes its owner,
// group and mode for the layout, and applies the student's disk quota. It
// works on an fd opened without following symlinks, so a symlink planted
// at the student's name is refused, not followed. gid is the student's own
// group (the directory's group in the private layout).
func (d *Dirs) Ensure(student string, uid, gid uint32) (string, error) {
	if err := ValidName(student); err != nil {
		return "", err
	}
	root, err := unix.Open(d.Root, unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", fmt.Errorf("open workdir root %s: %w", d.Root, err)
	}
	defer unix.Close(root) //nolint:errcheck // read-only directory fd
	if err := unix.Mkdirat(root, student, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return "", fmt.Errorf("create workdir of %s: %w", student, err)
	}
	fd, err := unix.Openat(root, student, unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", fmt.Errorf("open workdir of %s (must be a directory, not a symlink): %w", student, err)
	}
	defer unix.Close(fd) //nolint:errcheck // read-only directory fd
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "", fmt.Errorf("stat workdir of %s: %w", student, err)
	}
	_, _, group, mode := d.owner(gid)
	if st.Uid != uid || st.Gid != group {
		if err := unix.Fchown(fd, int(uid), int(group)); err != nil {
			return "", fmt.Errorf("chown workdir of %s to %d:%d: %w", student, uid, group, err)
		}
	}
	// chown clears the setgid bit, so the mode is set after it.
	if st.Mode&0o7777 != mode || st.Uid != uid || st.Gid != group {
		if err := unix.Fchmod(fd, mode); err != nil {
			return "", fmt.Errorf("chmod workdir of %s: %w", student, err)
		}
	}
	if d.Quota != nil {
		if err := d.Quota.Apply(uid); err != nil {
			return "", fmt.Errorf("disk quota of %s (uid %d): %w", student, uid, err)
		}
	}
	return d.Workdir(student), nil
}

// Script is a resolved script.
type Script struct {
	// Rel is the path the student gave, cleaned and relative to the
	// workdir: what the interpreter is told, so that tracebacks, __file__
	// and sys.argv[0] read as in a terminal.
	Rel string
	// Canonical is where it really is (symlinks inside the workdir
	// resolved), relative to the workdir: the lock key.
	Canonical string
	SHA256    string
}

// maxHashBytes bounds how much of a script is read for its hash.
const maxHashBytes = 16 << 20

// ResolveDir resolves rel, a directory a run may start in, beneath
// workdir: no "..", absolute path or symlink may lead out of it, and it
// must be a directory on the same filesystem. It returns the directory's
// absolute path and its canonical path relative to workdir.
func ResolveDir(workdir, rel string) (abs, canon string, err error) {
	if rel == "" || strings.ContainsRune(rel, 0) || filepath.IsAbs(rel) {
		return "", "", api.Errorf(api.CodeInvalidPath, "cwd %q: want a relative path inside the student's directory", rel)
	}
	dir, err := unix.Open(workdir, unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", "", fmt.Errorf("open workdir %s: %w", workdir, err)
	}
	defer unix.Close(dir) //nolint:errcheck // read-only directory fd
	fd, err := unix.Openat2(dir, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	switch {
	case errors.Is(err, unix.ENOENT):
		return "", "", api.Errorf(api.CodeInvalidPath, "cwd %q: no such directory in the student's directory", rel)
	case errors.Is(err, unix.ENOTDIR):
		return "", "", api.Errorf(api.CodeInvalidPath, "cwd %q is not a directory", rel)
	case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ELOOP):
		return "", "", api.Errorf(api.CodeInvalidPath, "cwd %q leads outside the student's directory or through a symlink", rel)
	case errors.Is(err, unix.ENAMETOOLONG):
		return "", "", api.Errorf(api.CodeInvalidPath, "cwd %q is too long", rel)
	case err != nil:
		return "", "", fmt.Errorf("open cwd %q: %w", rel, err)
	}
	defer unix.Close(fd) //nolint:errcheck // O_PATH fd
	real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return "", "", fmt.Errorf("find path of cwd %q: %w", rel, err)
	}
	realDir, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", dir))
	if err != nil {
		return "", "", fmt.Errorf("find canonical path of %s: %w", workdir, err)
	}
	canon, err = filepath.Rel(realDir, real)
	if err != nil || canon == ".." || strings.HasPrefix(canon, "../") {
		return "", "", api.Errorf(api.CodeInvalidPath, "cwd %q resolved to %s, outside %s", rel, real, workdir)
	}
	return filepath.Join(workdir, canon), canon, nil
}

// ResolveScript checks that script names a regular file inside workdir.
// The kernel does the check (openat2 with RESOLVE_BENEATH), so `..`,
// absolute paths and symlinks leading out are refused even when they are
// swapped in while we look.
func ResolveScript(workdir, script string) (Script, error) {
	if script == "" || strings.ContainsRune(script, 0) {
		return Script{}, api.Errorf(api.CodeInvalidPath, "script path %q is empty or contains NUL", script)
	}
	rel := script
	if filepath.IsAbs(script) {
		r, err := filepath.Rel(workdir, filepath.Clean(script))
		if err != nil || r == ".." || strings.HasPrefix(r, "../") {
			return Script{}, api.Errorf(api.CodeInvalidPath, "script %q is outside the student's directory", script)
		}
		rel = r
	}
	rel = filepath.Clean(rel)
	if rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return Script{}, api.Errorf(api.CodeInvalidPath, "script %q is outside the student's directory", script)
	}
	dir, err := unix.Open(workdir, unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return Script{}, fmt.Errorf("open workdir %s: %w", workdir, err)
	}
	defer unix.Close(dir) //nolint:errcheck // read-only directory fd
	// O_NONBLOCK: opening a FIFO planted as the script must not hang.
	fd, err := unix.Openat2(dir, rel, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NONBLOCK | unix.O_NOCTTY,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	})
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
		return Script{}, api.Errorf(api.CodeScriptNotFound, "script %q not found in the student's directory", script)
	case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ELOOP):
		return Script{}, api.Errorf(api.CodeInvalidPath, "script %q resolves outside the student's directory", script)
	case errors.Is(err, unix.ENAMETOOLONG):
		return Script{}, api.Errorf(api.CodeInvalidPath, "script path %q is too long", script)
	case err != nil:
		return Script{}, fmt.Errorf("open script %q: %w", script, err)
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close() //nolint:errcheck // read-only file
	st, err := f.Stat()
	if err != nil {
		return Script{}, fmt.Errorf("stat script %q: %w", script, err)
	}
	if !st.Mode().IsRegular() {
		return Script{}, api.Errorf(api.CodeInvalidPath, "script %q is not a regular file (%s)", script, st.Mode().Type())
	}
	real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return Script{}, fmt.Errorf("find canonical path of %q: %w", script, err)
	}
	realDir, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", dir))
	if err != nil {
		return Script{}, fmt.Errorf("find canonical path of %s: %w", workdir, err)
	}
	canon, err := filepath.Rel(realDir, real)
	if err != nil || strings.HasPrefix(canon, "../") {
		// RESOLVE_BENEATH makes this impossible unless the workdir itself
		// moved; refuse rather than guess.
		return Script{}, api.Errorf(api.CodeInvalidPath, "script %q resolved to %s, outside %s", script, real, workdir)
	}
	h := sha256.New()
	// io.Copy through a LimitReader makes a 32 KiB buffer each time: a
	// sixth of what a run allocated, and so of idexd's GC cycles.
	buf := hashBuf()
	_, err = io.CopyBuffer(h, io.LimitReader(f, maxHashBytes), *buf)
	hashBufs.Put(buf)
	if err != nil {
		return Script{}, fmt.Errorf("hash script %q: %w", script, err)
	}
	return Script{Rel: rel, Canonical: canon, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// hashBufs are the buffers ResolveScript hashes scripts through.
var hashBufs sync.Pool

func hashBuf() *[]byte {
	if b, ok := hashBufs.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 32<<10)
	return &b
}
