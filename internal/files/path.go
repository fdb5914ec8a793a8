package files

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/api"
)

// resolve is how every path is resolved beneath a student's directory:
// the kernel refuses `..` and absolute symlinks leading out, any symlink
// at all (in the path or at its end), /proc magic links and mount points,
// even ones swapped in while the lookup runs.
const resolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// maxPath bounds a path (PATH_MAX less the NUL).
const maxPath = 4095

// clean checks a path given by a client and returns it cleaned and
// relative to the student's directory; "" is the directory itself (allowed
// only when root is true). Refused: NUL bytes, absolute paths, `..`
// anywhere, over-long paths.
func clean(p string, root bool) (string, error) {
	switch {
	case strings.ContainsRune(p, 0):
		return "", api.Errorf(api.CodeInvalidPath, "path %q contains a NUL byte", p)
	case len(p) > maxPath:
		return "", api.Errorf(api.CodeInvalidPath, "path is %d bytes long, over %d", len(p), maxPath)
	case strings.HasPrefix(p, "/"):
		return "", api.Errorf(api.CodeInvalidPath, "path %q is absolute: paths are relative to the student's directory", p)
	}
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			return "", api.Errorf(api.CodeInvalidPath, "path %q contains '..'", p)
		}
	}
	c := path.Clean(p)
	if c == "." {
		if !root {
			return "", api.Errorf(api.CodeInvalidPath, "path %q names the student's directory itself, not a file in it", p)
		}
		return "", nil
	}
	return c, nil
}

// split returns the directory and last name of a cleaned, non-empty path.
func split(rel string) (dir, name string) {
	i := strings.LastIndexByte(rel, '/')
	if i < 0 {
		return ".", rel
	}
	return rel[:i], rel[i+1:]
}

// errnoCodes are the protocol's codes for what file operations fail with.
var errnoCodes = map[unix.Errno]struct {
	code api.Code
	what string
}{
	unix.ENOENT:       {api.CodeFileNotFound, "no such file or directory"},
	unix.ENOTDIR:      {api.CodeNotDirectory, "a part of the path is not a directory"},
	unix.ELOOP:        {api.CodeInvalidPath, "the path crosses a symlink (symlinks are never followed)"},
	unix.EXDEV:        {api.CodeInvalidPath, "the path leaves the student's directory (or crosses a mount point)"},
	unix.ENAMETOOLONG: {api.CodeInvalidPath, "a name in the path is too long"},
	unix.EACCES:       {api.CodePermissionDenied, "the student's own permissions refuse it"},
	unix.EPERM:        {api.CodePermissionDenied, "the student's own permissions refuse it"},
	unix.EISDIR:       {api.CodeNotRegular, "it is a directory"},
	unix.EEXIST:       {api.CodeFileExists, "it exists already"},
	unix.ENOTEMPTY:    {api.CodeDirectoryNotEmpty, "the directory is not empty"},
	unix.EDQUOT:       {api.CodeQuotaExceeded, "the student's disk quota is exceeded"},
	unix.ENOSPC:       {api.CodeDiskFull, "no space left on the students' filesystem"},
	unix.EFBIG:        {api.CodeFileTooLarge, "file too large"},
	unix.EINVAL:       {api.CodeInvalidPath, "not possible (a directory into itself?)"},
}

// pathError turns an errno from a file operation on p into the protocol's
// code, with what was being done.
func pathError(op, p string, err error) error {
	var errno unix.Errno
	if errors.As(err, &errno) {
		if c, ok := errnoCodes[errno]; ok {
			return api.Errorf(c.code, "%s %q: %s", op, p, c.what)
		}
	}
	return fmt.Errorf("%s %q: %w", op, p, err)
}

// typeOf names the type of a stat mode.
func typeOf(mode uint32) api.FileType {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return api.FileRegular
	case unix.S_IFDIR:
		return api.FileDir
	case unix.S_IFLNK:
		return api.FileSymlink
	case unix.S_IFIFO:
		return api.FileFIFO
	case unix.S_IFSOCK:
		return api.FileSocket
	case unix.S_IFCHR, unix.S_IFBLK:
		return api.FileDevice
	}
	return api.FileOther
}

// notRegular is the refusal of anything but a regular file.
func notRegular(p string, t api.FileType) error {
	if t == api.FileSymlink {
		return api.Errorf(api.CodeInvalidPath, "%q is a symlink: symlinks are never followed", p)
	}
	return api.Errorf(api.CodeNotRegular, "%q is not a regular file but a %s", p, t)
}

// openBeneath opens rel beneath dirfd with the resolve flags above.
func openBeneath(dirfd int, rel string, flags uint64, mode uint64) (int, error) {
	if rel == "" {
		rel = "."
	}
	return unix.Openat2(dirfd, rel, &unix.OpenHow{Flags: flags | unix.O_CLOEXEC, Mode: mode, Resolve: resolve})
}

// closeFD closes an fd opened for one request; a failure is only logged
// by the caller through the returned error.
func closeFD(fd int, what string) error {
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("close %s: %w", what, err)
	}
	return nil
}
