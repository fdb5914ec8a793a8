package inside

import (
	"fmt"
	"os"
	"path/filepath"
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
func prepare(s Setup) error {
	// Nothing done below may reach the host's mount table.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("helper: make mounts private: %w", err)
	}
	// One call makes every mount of the copied tree read-only and nosuid;
	// what is mounted afterwards (tmpfs, proc, the student's directory)
	// carries its own flags.
	if err := unix.MountSetattr(unix.AT_FDCWD, "/", unix.AT_RECURSIVE, &unix.MountAttr{
		Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID,
	}); err != nil {
		return fmt.Errorf("helper: make the host's filesystem read-only: %w", err)
	}
	tmpOpts := fmt.Sprintf("mode=1777,size=%d,nr_inodes=%d", s.TmpBytes, s.TmpInodes)
	for _, d := range []string{"/tmp", "/var/tmp", "/dev/shm"} {
		if err := mountOver(d, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, tmpOpts); err != nil {
			return err
		}
	}
	// /run holds the host's sockets (databases, the journal, D-Bus, idexd
	// itself): connect() needs no write access to the filesystem, only to
	// the socket file, so a read-only /run would not be enough.
	if err := mountOver("/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RDONLY, "mode=755,size=4k,nr_inodes=16"); err != nil {
		return err
	}
	// This helper is PID 1 of the run's PID namespace, so the new proc
	// shows the run's processes only.
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("helper: mount the run's /proc: %w", err)
	}
	// A devpts of its own: ptys a program opens come from a pool of 16,
	// not from the host's (kernel.pty.max), and the host's are not listed.
	if err := mountOver("/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5,max=16"); err != nil {
		return err
	}
	if isDir("/dev/pts") {
		if err := unix.Mount("/dev/pts/ptmx", "/dev/ptmx", "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("helper: bind /dev/ptmx: %w", err)
		}
	}
	// The host's POSIX queues' names otherwise show through /dev/mqueue.
	if mounted("/dev/mqueue") {
		if err := unix.Mount("mqueue", "/dev/mqueue", "mqueue", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("helper: mount the run's /dev/mqueue: %w", err)
		}
	}
	return nil
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

// nameUser gives the student's uid and gid a name inside the run, without
// touching the host's files: the run sees the host's /etc/passwd and
// /etc/group with one line more each, bind-mounted read-only over them in
// its own mount namespace. The copies live in the run's private /tmp and
// are unlinked at once (the mounts keep them), so the program never sees
// them there; they go with the run. A host that knows the uid already
// (LDAP, sssd, a useradd) keeps its own entry.
func nameUser(name string, uid, gid uint32, home string) error {
	if name == "" || strings.ContainsAny(name, ":\n") {
		return nil
	}
	for _, f := range []struct {
		path, line string
		id         uint32
	}{
		{"/etc/passwd", fmt.Sprintf("%s:x:%d:%d:%s:%s:/bin/sh\n", name, uid, gid, name, home), uid},
		{"/etc/group", fmt.Sprintf("%s:x:%d:\n", name, gid), gid},
	} {
		host, err := os.ReadFile(f.path)
		if err != nil {
			return fmt.Errorf("helper: name the student: %w", err)
		}
		if hasID(host, f.id) {
			continue
		}
		if len(host) > 0 && host[len(host)-1] != '\n' {
			host = append(host, '\n')
		}
		tmp := "/tmp/.idexd-" + filepath.Base(f.path)
		if err := os.WriteFile(tmp, append(host, f.line...), 0o644); err != nil {
			return fmt.Errorf("helper: name the student: %w", err)
		}
		err = unix.Mount(tmp, f.path, "", unix.MS_BIND, "")
		if err == nil {
			err = unix.Mount("", f.path, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, "")
		}
		if rerr := os.Remove(tmp); rerr != nil && err == nil {
			err = rerr
		}
		if err != nil {
			return fmt.Errorf("helper: name the student in %s: %w", f.path, err)
		}
	}
	return nil
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
