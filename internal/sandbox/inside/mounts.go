package inside

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Private are the directories every run gets fresh and empty, so nothing
// written there is shared with other runs or outlives this one. A student's
// directory cannot live beneath them (config refuses it): the run's own
// mount would hide it.
var Private = []string{"/tmp", "/var/tmp", "/dev/shm", "/run"}

// Shadowed reports whether path lies under a directory that a run sees
// replaced (Private, /proc, /dev): a directory there is invisible to runs.
func Shadowed(path string) bool {
	clean := filepath.Clean(path)
	for _, p := range append([]string{"/proc", "/dev", "/sys"}, Private...) {
		if clean == p || strings.HasPrefix(clean, p+"/") {
			return true
		}
	}
	return false
}

// prepare builds the run's view of the filesystem in its own mount
// namespace, as root, before any job: the host's tree read-only, private
// tmpfs on /tmp, /var/tmp and /dev/shm, an empty /run (no host sockets), a
// /proc of the run's own PID namespace and a devpts of its own. The
// network namespace comes with the job, lo already up (package netns).
func prepare(s Setup) ([]*userFile, error) {
	// Nothing done below may reach the host's mount table.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return nil, fmt.Errorf("helper: make mounts private: %w", err)
	}
	// One call makes every mount of the copied tree read-only and nosuid;
	// what is mounted afterwards (tmpfs, proc, the student's directory)
	// carries its own flags.
	if err := unix.MountSetattr(unix.AT_FDCWD, "/", unix.AT_RECURSIVE, &unix.MountAttr{
		Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID,
	}); err != nil {
		return nil, fmt.Errorf("helper: make the host's filesystem read-only: %w", err)
	}
	tmpOpts := fmt.Sprintf("mode=1777,size=%d,nr_inodes=%d", s.TmpBytes, s.TmpInodes)
	for _, d := range []string{"/tmp", "/var/tmp", "/dev/shm"} {
		if err := mountOver(d, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, tmpOpts); err != nil {
			return nil, err
		}
	}
	// /run holds the host's sockets (databases, the journal, D-Bus, idexd
	// itself): connect() needs no write access to the filesystem, only to
	// the socket file, so a read-only /run would not be enough.
	if err := mountOver("/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RDONLY, "mode=755,size=4k,nr_inodes=16"); err != nil {
		return nil, err
	}
	// This helper is PID 1 of the run's PID namespace, so the new proc
	// shows the run's processes only.
	// hidepid=2 (invisible): a run sees its student's processes only. The
	// C helper stays root as the run's PID 1, and so is hidden from the
	// student, as a host with ProtectProc=invisible hides other uids';
	// this twin becomes the student, and stays visible.
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RDONLY, "hidepid=2"); err != nil {
		return nil, fmt.Errorf("helper: mount the run's /proc: %w", err)
	}
	// A devpts of its own: ptys a program opens come from a pool of 16,
	// not from the host's (kernel.pty.max), and the host's are not listed.
	if err := mountOver("/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5,max=16"); err != nil {
		return nil, err
	}
	if isDir("/dev/pts") {
		if err := unix.Mount("/dev/pts/ptmx", "/dev/ptmx", "", unix.MS_BIND, ""); err != nil {
			return nil, fmt.Errorf("helper: bind /dev/ptmx: %w", err)
		}
	}
	// The host's POSIX queues' names otherwise show through /dev/mqueue.
	if mounted("/dev/mqueue") {
		if err := unix.Mount("mqueue", "/dev/mqueue", "mqueue", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return nil, fmt.Errorf("helper: mount the run's /dev/mqueue: %w", err)
		}
	}
	return prebindUsers()
}

// mountOver mounts a new filesystem on dir when dir exists.
func mountOver(dir, fstype string, flags uintptr, opts string) error {
	if !isDir(dir) {
		return nil
	}
	if err := unix.Mount(fstype, dir, fstype, flags, opts); err != nil {
		return fmt.Errorf("helper: mount %s on %s: %w", fstype, dir, err)
	}
	return nil
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// mounted reports whether p is a mount point: its device differs from its
// parent's.
func mounted(p string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(p, &st) != nil || unix.Stat(filepath.Dir(p), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}

// bindWorkdir makes the student's directory the one writable place of the
// host's tree, at its own path, so paths read the same inside and out.
func bindWorkdir(dir string) error {
	if !filepath.IsAbs(dir) || Shadowed(dir) {
		return fmt.Errorf("helper: workdir %q: want an absolute path outside %v", dir, Private)
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("helper: bind %s: %w", dir, err)
	}
	// A bind remount sets exactly these flags on the new mount: read-write
	// (the host's tree stays read-only), no set-uid, no devices.
	if err := unix.Mount("", dir, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("helper: make %s writable: %w", dir, err)
	}
	return nil
}

// userFile is the run's copy of /etc/passwd or /etc/group.
type userFile struct {
	path string
	host []byte   // the host's file as read when the helper started
	size int64    // bytes in the copy: the host's, with a final newline
	file *os.File // the copy, for the job's line; nil once the job is done
}

// prebindUsers makes the run's /etc/passwd and /etc/group before any job:
// copies of the host's in the run's private /tmp, bind-mounted read-only
// over them and unlinked at once (the mounts keep them), so the program
// never sees them in /tmp; they go with the run. The job then only
// appends the student's line through the open copy (nameUser): four mounts,
// two files made and two unlinked were 70-80 us of every run's start.
func prebindUsers() ([]*userFile, error) {
	var files []*userFile
	for _, path := range []string{"/etc/passwd", "/etc/group"} {
		host, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("helper: name the student: %w", err)
		}
		f := &userFile{path: path, host: host}
		content := host
		if len(host) > 0 && host[len(host)-1] != '\n' {
			content = append(slices.Clip(host), '\n')
		}
		f.size = int64(len(content))
		tmp := "/tmp/.idexd-" + filepath.Base(path)
		if err := os.WriteFile(tmp, content, 0o644); err != nil {
			return nil, fmt.Errorf("helper: name the student: %w", err)
		}
		f.file, err = os.OpenFile(tmp, os.O_WRONLY, 0)
		if err == nil {
			err = unix.Mount(tmp, path, "", unix.MS_BIND, "")
		}
		if err == nil {
			err = unix.Mount("", path, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, "")
		}
		if rerr := os.Remove(tmp); rerr != nil && err == nil {
			err = rerr
		}
		if err != nil {
			if f.file != nil {
				_ = f.file.Close() // the error above says what failed
			}
			return nil, fmt.Errorf("helper: name the student in %s: %w", path, err)
		}
		files = append(files, f)
	}
	return files, nil
}

// nameUser gives the student's uid and gid a name inside the run, without
// touching the host's files: the run sees the host's /etc/passwd and
// /etc/group with one line more each (prebindUsers). A host that knows the
// uid already (LDAP, sssd, a useradd) keeps its own entry. The copies are
// closed either way: the student's processes must never find them open.
func nameUser(files []*userFile, name string, uid, gid uint32, home string) error {
	named := name != "" && !strings.ContainsAny(name, ":\n")
	var errs []error
	for _, f := range files {
		id, line := uid, fmt.Sprintf("%s:x:%d:%d:%s:%s:/bin/sh\n", name, uid, gid, name, home)
		if f.path == "/etc/group" {
			id, line = gid, fmt.Sprintf("%s:x:%d:\n", name, gid)
		}
		if named && len(errs) == 0 && !hasID(f.host, id) {
			if _, err := f.file.WriteAt([]byte(line), f.size); err != nil {
				errs = append(errs, fmt.Errorf("helper: name the student in %s: %w", f.path, err))
			}
		}
		if err := f.file.Close(); err != nil {
			errs = append(errs, fmt.Errorf("helper: name the student in %s: %w", f.path, err))
		}
		f.file = nil
	}
	return errors.Join(errs...)
}

// hasID reports whether a passwd or group file has an entry with id in its
// third field.
func hasID(file []byte, id uint32) bool {
	want := fmt.Sprint(id)
	for _, line := range strings.Split(string(file), "\n") {
		if fs := strings.SplitN(line, ":", 4); len(fs) >= 3 && fs[2] == want {
			return true
		}
	}
	return false
}
