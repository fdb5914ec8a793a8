/*
 * idexd-sandbox is idexd's sandbox helper: idexd clones it into fresh
 * namespaces (mount, IPC, PID, UTS) and straight into a run's cgroup. As
 * root it prepares the run's view of the system, waits for the job, joins
 * the network namespace that comes with it, and starts the interpreter from
 * a child that alone becomes the student; it stays, root, as the run's PID
 * 1: it reaps every orphan, forwards Ctrl-C and friends to the program's
 * process group, and reports how the program ended.
 *
 * With IDEXD_HELPER_RUNS=N it then serves up to N runs (a kept helper):
 * after each, it kills and reaps whatever the run left in its PID
 * namespace, goes back to its template's mount, IPC and network namespaces,
 * and arms fresh ones (tmpfs, mqueue, passwd) for the next job, which saves
 * each later run a process, an address space and its namespaces.
 *
 * It is C, without a Go runtime, for the same reason runc's nsexec,
 * bubblewrap and isolate are: it lives once per run, so its start-up is
 * paid once per run. The Go runtime's start-up alone cost 5-7 ms of CPU
 * here against 1.3 ms for a static C program (bench/README.md, "The
 * helper without a Go runtime").
 *
 * internal/sandbox/inside is the reference: the same helper in Go, which
 * idexd runs by re-executing itself when this binary is not installed
 * beside it. Both speak the protocol inside documents (wire.go: the setup
 * as argv, the job as NUL-terminated fields; replies as JSON on the
 * SOCK_SEQPACKET control socket at fd 3) and must behave alike: the tests
 * run the same cases through both.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef IDEXD_VERSION
#define IDEXD_VERSION "dev"
#endif

/* What internal/sandbox/inside names; keep both in step. */
#define ARG0 "idexd-sandbox-helper"
#define JOB_MAGIC "idexd-job-2"
#define EXIT_ABORTED 125
#define EXIT_FAILED 126
#define CTL_FD 3
#define MAX_MESSAGE (256 << 10)
#define MAX_FILTER 4096

/* The kernel's, where glibc 2.36's headers do not have them. */
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x1
#endif
#ifndef MOUNT_ATTR_NOSUID
#define MOUNT_ATTR_NOSUID 0x2
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

struct idexd_mount_attr {
	uint64_t attr_set, attr_clr, propagation, userns_fd;
};

/* The signals passed on to the program's process group; idexd interrupts a
 * run by sending SIGINT here. */
static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

struct job {
	char *interpreter, *dir, *cwd, *user;
	unsigned long long uid, gid, umask, fsize, nofile, cpu;
	int terminal;
	unsigned short rows, cols;
	char **argv, **env;
};

static char errbuf[4096];

/* errstr is strerror as Go's syscall.Errno spells it (lower case first),
 * so both helpers' messages read alike. */
static const char *errstr(int e)
{
	static char b[128];
	snprintf(b, sizeof b, "%s", strerror(e));
	if (b[0] >= 'A' && b[0] <= 'Z' && !(b[1] >= 'A' && b[1] <= 'Z'))
		b[0] = (char)(b[0] - 'A' + 'a');
	return b;
}

/* failf records why the helper fails; send_error reports it. Always
 * returns -1, for "return failf(...)". */
__attribute__((format(printf, 1, 2))) static int failf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(errbuf, sizeof errbuf, fmt, ap);
	va_end(ap);
	return -1;
}

static int send_packet(const char *b, size_t n, int fd)
{
	struct iovec iov = {.iov_base = (void *)b, .iov_len = n};
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
	if (fd >= 0) {
		memset(&u, 0, sizeof u);
		m.msg_control = u.buf;
		m.msg_controllen = sizeof u.buf;
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof fd);
	}
	for (;;) {
		/* MSG_NOSIGNAL: idexd gone is an error here, not a SIGPIPE. */
		if (sendmsg(CTL_FD, &m, MSG_NOSIGNAL) >= 0)
			return 0;
		if (errno != EINTR)
			return -1;
	}
}

/* send_error sends {"error": errbuf}, escaped as JSON wants. If even this
 * fails idexd still sees the helper exit without a reply. */
static int send_error(void)
{
	static char b[sizeof errbuf * 6 + 32];
	size_t n = (size_t)snprintf(b, sizeof b, "{\"error\":\"");
	for (const unsigned char *p = (const unsigned char *)errbuf; *p; p++) {
		if (*p == '"' || *p == '\\')
			n += (size_t)snprintf(b + n, sizeof b - n, "\\%c", *p);
		else if (*p < 0x20)
			n += (size_t)snprintf(b + n, sizeof b - n, "\\u%04x", *p);
		else
			b[n++] = (char)*p;
	}
	n += (size_t)snprintf(b + n, sizeof b - n, "\"}");
	(void)send_packet(b, n, -1);
	return EXIT_FAILED;
}

static int parse_num(const char *s, unsigned long long max, unsigned long long *out)
{
	char *end;
	if (*s < '0' || *s > '9')
		return -1;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || v > max)
		return -1;
	*out = v;
	return 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* decode_filter turns the setup's hex into the program seccomp(2) takes.
 * A helper never runs a program without one. */
static int decode_filter(const char *hex, struct sock_fprog *prog)
{
	size_t len = strlen(hex), ins = 2 * sizeof(struct sock_filter);
	size_t n = len / ins;
	if (n == 0 || n > MAX_FILTER || len % ins)
		return failf("helper: seccomp filter of %zu bytes: want 1 to %d instructions of %zu bytes",
			     len / 2, MAX_FILTER, sizeof(struct sock_filter));
	unsigned char *raw = malloc(len / 2);
	if (!raw)
		return failf("helper: seccomp filter: out of memory");
	for (size_t i = 0; i < len / 2; i++) {
		int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0) {
			free(raw);
			return failf("helper: setup filter: invalid hex at byte %zu", 2 * i);
		}
		raw[i] = (unsigned char)(hi << 4 | lo);
	}
	/* The bytes are struct sock_filter in this machine's order, as idexd
	 * wrote them (FilterInstructionSize). */
	prog->len = (unsigned short)n;
	prog->filter = (struct sock_filter *)raw;
	return 0;
}

static int is_dir(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* mounted reports whether p is a mount point: its device differs from its
 * parent's. */
static int mounted(const char *p, const char *parent)
{
	struct stat st, pst;
	if (stat(p, &st) || stat(parent, &pst))
		return 0;
	return st.st_dev != pst.st_dev;
}

static int mount_over(const char *dir, const char *fstype, unsigned long flags, const char *opts)
{
	if (!is_dir(dir))
		return 0;
	if (mount(fstype, dir, fstype, flags, opts))
		return failf("helper: mount %s on %s: %s", fstype, dir, errstr(errno));
	return 0;
}

static int prebind_users(void);

/* host_mqueue: the host has an mqueue mounted on /dev/mqueue, so each run
 * gets its own IPC namespace's there (seen before the first prepare). */
static int host_mqueue;

/* prepare builds what every run of this helper shares, in its own mount
 * namespace, as root, before any job; inside.prepare says why each step.
 * What a run may write or name comes fresh for each run (arm). */
static int prepare(void)
{
	if (mount("", "/", "", MS_REC | MS_PRIVATE, ""))
		return failf("helper: make mounts private: %s", errstr(errno));
	struct idexd_mount_attr attr = {.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID};
	if (syscall(SYS_mount_setattr, AT_FDCWD, "/", AT_RECURSIVE, &attr, sizeof attr))
		return failf("helper: make the host's filesystem read-only: %s", errstr(errno));
	if (mount_over("/run", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "mode=755,size=4k,nr_inodes=16"))
		return -1;
	/* hidepid=2 (invisible): the student sees their own processes only,
	 * not this helper, which stays root (inside.prepare says more). */
	if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "hidepid=2"))
		return failf("helper: mount the run's /proc: %s", errstr(errno));
	if (mount_over("/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5,max=16"))
		return -1;
	if (is_dir("/dev/pts") && mount("/dev/pts/ptmx", "/dev/ptmx", "", MS_BIND, ""))
		return failf("helper: bind /dev/ptmx: %s", errstr(errno));
	return 0;
}

/* arm mounts what one run may write (tmpfs, the mqueue of its IPC
 * namespace) and the copies of passwd and group its job will name the
 * student in; a kept helper arms a fresh mount and IPC namespace for each
 * run (next_run). */
static int arm(unsigned long long tmp_bytes, unsigned long long tmp_inodes)
{
	char opts[128];
	snprintf(opts, sizeof opts, "mode=1777,size=%llu,nr_inodes=%llu", tmp_bytes, tmp_inodes);
	static const char *const tmps[] = {"/tmp", "/var/tmp", "/dev/shm"};
	for (size_t i = 0; i < sizeof tmps / sizeof *tmps; i++)
		if (mount_over(tmps[i], "tmpfs", MS_NOSUID | MS_NODEV, opts))
			return -1;
	if (host_mqueue && mount("mqueue", "/dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""))
		return failf("helper: mount the run's /dev/mqueue: %s", errstr(errno));
	return prebind_users();
}

/* shadowed reports whether a clean absolute path lies under a directory a
 * run sees replaced (inside.Shadowed). */
static int shadowed(const char *p)
{
	static const char *const dirs[] = {"/proc", "/dev", "/sys", "/tmp", "/var/tmp", "/dev/shm", "/run"};
	for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
		size_t n = strlen(dirs[i]);
		if (strncmp(p, dirs[i], n) == 0 && (p[n] == 0 || p[n] == '/'))
			return 1;
	}
	return 0;
}

/* clean_abs reports whether p is absolute and already clean: no empty, "."
 * or ".." component, no trailing slash (what filepath.Clean leaves alone). */
static int clean_abs(const char *p)
{
	if (p[0] != '/' || p[1] == 0)
		return 0;
	for (const char *c = p; *c;) {
		const char *e = strchr(c + 1, '/');
		size_t n = e ? (size_t)(e - c - 1) : strlen(c + 1);
		if (n == 0 || (n == 1 && c[1] == '.') || (n == 2 && c[1] == '.' && c[2] == '.'))
			return 0;
		if (!e)
			break;
		c = e;
	}
	return 1;
}

/* bind_workdir makes the student's directory the one writable place of the
 * host's tree, at its own path. */
static int bind_workdir(const char *dir)
{
	if (!clean_abs(dir) || shadowed(dir))
		return failf("helper: workdir \"%s\": want a clean absolute path outside /proc, /dev, /sys, /tmp, /var/tmp, /run", dir);
	if (mount(dir, dir, "", MS_BIND, ""))
		return failf("helper: bind %s: %s", dir, errstr(errno));
	if (mount("", dir, "", MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV, ""))
		return failf("helper: make %s writable: %s", dir, errstr(errno));
	return 0;
}

/* read_file reads all of path into a NUL-terminated buffer. */
static char *read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	size_t cap = 8192, n = 0;
	char *b = malloc(cap);
	for (;;) {
		if (!b)
			break;
		if (cap - n < 4097) {
			char *nb = realloc(b, cap * 2);
			if (!nb) {
				free(b);
				b = NULL;
				break;
			}
			b = nb;
			cap *= 2;
		}
		ssize_t r = read(fd, b + n, cap - n - 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;
			free(b);
			b = NULL;
			errno = e;
			break;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	int e = errno;
	close(fd);
	errno = e;
	if (b) {
		b[n] = 0;
		*len = n;
	}
	return b;
}

/* has_id reports whether a passwd or group file has an entry with id in its
 * third field. */
static int has_id(const char *file, unsigned long long id)
{
	char want[32];
	int wn = snprintf(want, sizeof want, "%llu", id);
	for (const char *line = file; *line;) {
		const char *end = strchr(line, '\n');
		if (!end)
			end = line + strlen(line);
		const char *f = line;
		int field = 0;
		while (f < end && field < 2) {
			const char *colon = memchr(f, ':', (size_t)(end - f));
			if (!colon)
				break;
			f = colon + 1;
			field++;
		}
		if (field == 2) {
			const char *colon = memchr(f, ':', (size_t)(end - f));
			const char *fe = colon ? colon : end;
			if (fe - f == wn && memcmp(f, want, (size_t)wn) == 0)
				return 1;
		}
		line = *end ? end + 1 : end;
	}
	return 0;
}

static int write_all(int fd, const char *b, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, b, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -1;
		b += w;
		n -= (size_t)w;
	}
	return 0;
}

/* The run's /etc/passwd and /etc/group: copies of the host's, bound
 * read-only over them before any job (prebind_users), to which the job only
 * appends the student's line (name_user). inside.prebindUsers says why. */
static struct user_file {
	const char *path, *tmp;
	char *host;     /* the host's file as read when the helper started */
	size_t hostlen; /* its length */
	size_t size;    /* bytes in the copy: the host's, with a final newline */
	int fd;      /* the copy, for the job's line; -1 once the job is done */
} user_files[] = {{"/etc/passwd", "/tmp/.idexd-passwd", NULL, 0, 0, -1}, {"/etc/group", "/tmp/.idexd-group", NULL, 0, 0, -1}};

static int prebind_users(void)
{
	for (size_t i = 0; i < 2; i++) {
		struct user_file *f = &user_files[i];
		/* Read once: a kept helper's later runs get the copy its first
		 * run got, as runs of helpers made at the same moment do. */
		if (!f->host && !(f->host = read_file(f->path, &f->hostlen)))
			return failf("helper: name the student: open %s: %s", f->path, errstr(errno));
		size_t n = f->hostlen;
		int err = 0;
		int fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
		if (fd < 0)
			err = errno;
		f->size = n;
		if (!err && (fchmod(fd, 0644) || write_all(fd, f->host, n)))
			err = errno;
		if (!err && n > 0 && f->host[n - 1] != '\n') {
			if (write_all(fd, "\n", 1))
				err = errno;
			f->size++;
		}
		if (!err && mount(f->tmp, f->path, "", MS_BIND, ""))
			err = errno;
		if (!err && mount("", f->path, "", MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, ""))
			err = errno;
		if (fd >= 0 && unlink(f->tmp) && !err)
			err = errno;
		if (err) {
			if (fd >= 0)
				close(fd);
			return failf("helper: name the student in %s: %s", f->path, errstr(err));
		}
		f->fd = fd;
	}
	return 0;
}

/* name_user gives the student's uid and gid a name inside the run, without
 * touching the host's files (inside.nameUser says how), and closes the
 * copies: the student's processes must never find them open here. */
static int name_user(const struct job *j)
{
	int named = j->user[0] && !strpbrk(j->user, ":\n");
	int ret = 0;
	for (size_t i = 0; i < 2; i++) {
		struct user_file *f = &user_files[i];
		unsigned long long id = i == 0 ? j->uid : j->gid;
		if (named && !ret && !has_id(f->host, id)) {
			char line[4096 + 64];
			int ln = i == 0 ? snprintf(line, sizeof line, "%s:x:%llu:%llu:%s:%s:/bin/sh\n", j->user, j->uid, j->gid, j->user, j->dir)
					: snprintf(line, sizeof line, "%s:x:%llu:\n", j->user, j->gid);
			if (ln < 0 || (size_t)ln >= sizeof line)
				ret = failf("helper: name the student: entry too long");
			else {
				errno = EIO; /* a short write sets none */
				if (pwrite(f->fd, line, (size_t)ln, (off_t)f->size) != (ssize_t)ln)
					ret = failf("helper: name the student in %s: %s", f->path, errstr(errno));
			}
		}
		if (close(f->fd) && !ret)
			ret = failf("helper: name the student in %s: close: %s", f->path, errstr(errno));
		f->fd = -1;
	}
	return ret;
}

/* A cursor over the job's NUL-terminated fields (inside.Job.MarshalBinary). */
struct fields {
	char *p, *end;
	int bad;
};

static char *field(struct fields *f)
{
	char *nul = f->p < f->end ? memchr(f->p, 0, (size_t)(f->end - f->p)) : NULL;
	if (!nul) {
		f->bad = 1;
		return "";
	}
	char *s = f->p;
	f->p = nul + 1;
	return s;
}

static unsigned long long numfield(struct fields *f, unsigned long long max)
{
	unsigned long long v = 0;
	if (parse_num(field(f), max, &v))
		f->bad = 1;
	return v;
}

static char **listfield(struct fields *f)
{
	unsigned long long n = numfield(f, UINT32_MAX);
	if (f->bad || n > (unsigned long long)(f->end - f->p))
		return f->bad = 1, NULL;
	char **l = calloc(n + 1, sizeof *l);
	if (!l)
		return f->bad = 1, NULL;
	for (unsigned long long i = 0; i < n; i++)
		l[i] = field(f);
	return l;
}

static int decode_job(char *b, size_t n, struct job *j)
{
	struct fields f = {.p = b, .end = b + n};
	const char *magic = field(&f);
	if (strcmp(magic, JOB_MAGIC) != 0)
		return failf("helper: job starts \"%.40s\", want \"%s\" (idexd and its helper are of different builds)", magic, JOB_MAGIC);
	j->interpreter = field(&f);
	j->dir = field(&f);
	j->cwd = field(&f);
	j->user = field(&f);
	j->uid = numfield(&f, UINT32_MAX);
	j->gid = numfield(&f, UINT32_MAX);
	j->umask = numfield(&f, UINT32_MAX);
	j->fsize = numfield(&f, UINT64_MAX);
	j->nofile = numfield(&f, UINT64_MAX);
	j->cpu = numfield(&f, UINT64_MAX);
	const char *term = field(&f);
	if (term[0]) {
		unsigned int rows, cols;
		char extra;
		if (sscanf(term, "%ux%u%c", &rows, &cols, &extra) != 2 || rows > 65535 || cols > 65535)
			return failf("helper: decode job: terminal \"%.40s\": want ROWSxCOLS", term);
		j->terminal = 1;
		j->rows = (unsigned short)rows;
		j->cols = (unsigned short)cols;
	}
	j->argv = listfield(&f);
	j->env = listfield(&f);
	if (f.bad)
		return failf("helper: decode job: truncated or malformed field");
	if (f.p != f.end)
		return failf("helper: decode job: %zu bytes after the last field", (size_t)(f.end - f.p));
	if (!j->argv[0])
		return failf("helper: decode job: empty argv");
	return 0;
}

static char jobbuf[MAX_MESSAGE];

/* receive_job waits for the job, the three stdio fds and, unless the run
 * has the host's network, its network namespace (*net, else -1). Returns 1
 * when idexd closed the socket instead: the start was abandoned. */
static int receive_job(struct job *j, int stdio[3], int *net)
{
	union {
		char buf[CMSG_SPACE(4 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = {.iov_base = jobbuf, .iov_len = sizeof jobbuf};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
	ssize_t n;
	do
		n = recvmsg(CTL_FD, &m, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return failf("helper: receive job: %s", errstr(errno));
	int nfds = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
			if (nfds < 3)
				stdio[nfds] = fd;
			else if (nfds == 3)
				*net = fd;
			else
				close(fd);
			nfds++;
		}
	}
	if (n == 0 && nfds == 0)
		return 1;
	if (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
		return failf("helper: job truncated (%zd bytes, flags %#x)", n, (unsigned)m.msg_flags);
	if (nfds != 3 && nfds != 4)
		return failf("helper: job came with %d fds, want 3 (stdin, stdout, stderr) and the network namespace", nfds);
	return decode_job(jobbuf, (size_t)n, j);
}

/* join_network enters the run's network namespace, which idexd made with lo
 * up and keeps for this student's runs only (package netns). */
static int join_network(const char *network, int fd)
{
	if (strcmp(network, "host") == 0) {
		if (fd >= 0) {
			close(fd);
			return failf("helper: a network namespace came with the job, but the run has the host's network");
		}
		return 0;
	}
	if (fd < 0)
		return failf("helper: no network namespace came with the job");
	int err = setns(fd, CLONE_NEWNET) ? errno : 0;
	close(fd);
	if (err)
		return failf("helper: join the run's network namespace: %s", errstr(err));
	return 0;
}

/* open_pty opens a pseudo-terminal of the run's own devpts, sized as the
 * job says; the program's end comes from the master (TIOCGPTPEER), never
 * by path, so no other pty can be swapped in. */
static int open_pty(const struct job *j, int *master, int *peer)
{
	int m = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (m < 0)
		return failf("helper: open /dev/ptmx: %s", errstr(errno));
	int unlock = 0;
	struct winsize ws = {.ws_row = j->rows, .ws_col = j->cols};
	const char *what = NULL;
	int p = -1;
	if (ioctl(m, TIOCSPTLCK, &unlock))
		what = "unlock pty";
	else if (ioctl(m, TIOCSWINSZ, &ws))
		what = "size pty";
	else if ((p = ioctl(m, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0)
		what = "open the pty's peer";
	if (what) {
		int e = errno;
		close(m);
		return failf("helper: %s: %s", what, errstr(e));
	}
	*master = m;
	*peer = p;
	return 0;
}

/* idexd_alive fails when idexd went away while the helper was still root
 * (the credential change may have cleared its death signal). */
static int idexd_alive(void)
{
	struct pollfd p = {.fd = CTL_FD, .events = POLLRDHUP};
	int n;
	do
		n = poll(&p, 1, 0);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return failf("helper: poll control socket: %s", errstr(errno));
	if (n > 0 && (p.revents & (POLLRDHUP | POLLHUP)))
		return failf("helper: idexd exited before the run started");
	return 0;
}

/* A launch is what the program's side of the clone gets: it shares the
 * helper's memory (CLONE_VM), so it reports a failure by writing err and
 * the step that failed, which the helper reads once the clone has
 * returned. */
struct launch {
	const struct job *j;
	int stdio[3];
	const struct sock_fprog *filter;
	volatile int err;
	const char *volatile step;
};

/* The program's side runs on a stack of its own until execve replaces it,
 * as posix_spawn's does: the helper's frames stay untouched beneath it. */
static char launch_stack[64 * 1024] __attribute__((aligned(16)));

/* become_student gives the program's side of the clone the student's
 * credentials and limits; it returns the failed step's name, or NULL. Only
 * the calling task changes: the credentials, rlimits, umask, no_new_privs
 * and the seccomp filter are a task's own, and its fd table and fs are
 * copies (no CLONE_FILES, no CLONE_FS). The syscalls are made directly:
 * the C library's setresuid and setrlimit would try to reach every thread
 * of the memory the task shares with the helper. */
static const char *become_student(const struct job *j, const struct sock_fprog *filter)
{
	/* Groups first, while still allowed. */
	if (syscall(SYS_setgroups, 0, NULL))
		return "setgroups";
	if (syscall(SYS_setresgid, (gid_t)j->gid, (gid_t)j->gid, (gid_t)j->gid))
		return "setgid";
	if (syscall(SYS_setresuid, (uid_t)j->uid, (uid_t)j->uid, (uid_t)j->uid))
		return "setuid";
	struct {
		const char *name;
		int res;
		struct rlimit rl;
	} set[] = {
		{"set rlimit core", RLIMIT_CORE, {0, 0}},
		{"set rlimit fsize", RLIMIT_FSIZE, {j->fsize, j->fsize}},
		{"set rlimit nofile", RLIMIT_NOFILE, {j->nofile, j->nofile}},
		{"set rlimit cpu", RLIMIT_CPU, {j->cpu, j->cpu + 1}},
	};
	for (size_t i = 0; i < sizeof set / sizeof *set; i++) {
		/* A cpu of 0 means none: idexd polls the cgroup's CPU time for
		 * the real limit, this is a per-process backstop. */
		if (set[i].res == RLIMIT_CPU && j->cpu == 0)
			continue;
		if (syscall(SYS_prlimit64, 0, set[i].res, &set[i].rl, NULL))
			return set[i].name;
	}
	/* Nothing the helper holds may reach the program, even an fd opened
	 * without O_CLOEXEC somewhere. */
	if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC))
		return "mark fds close-on-exec";
	umask((mode_t)j->umask);
	/* no_new_privs first: an unprivileged process needs it for a filter,
	 * and it keeps set-uid programs from gaining anything. The program
	 * inherits both. */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return "set no_new_privs";
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, filter))
		return "load seccomp filter";
	return NULL;
}

/* exec_child is the program's side of the clone: it never returns. It
 * changes only what is its own, its credentials, fd table, signal mask and
 * session (become_student), and the launch it was given. */
static int exec_child(void *arg)
{
	struct launch *l = arg;
	const struct job *j = l->j;
	sigset_t none;
	sigemptyset(&none);
	/* The helper blocks what it waits for; exec keeps a mask. */
	sigprocmask(SIG_SETMASK, &none, NULL);
	int e = 0;
	const char *step = become_student(j, l->filter);
	if (step) {
		l->step = step;
		l->err = errno;
		_exit(127);
	}
	if (setsid() < 0)
		e = errno;
	/* Above 0-2 first, so no dup2 below overwrites a source. */
	for (int i = 0; i < 3 && !e; i++)
		if (l->stdio[i] < 3 && (l->stdio[i] = fcntl(l->stdio[i], F_DUPFD_CLOEXEC, 3)) < 0)
			e = errno;
	for (int i = 0; i < 3 && !e; i++)
		if (dup2(l->stdio[i], i) < 0)
			e = errno;
	/* On a terminal, the pty becomes the session's controlling terminal,
	 * with the program's process group in the foreground, as a shell does. */
	if (!e && j->terminal && ioctl(0, TIOCSCTTY, 0))
		e = errno;
	if (!e && chdir(j->cwd))
		e = errno;
	if (!e) {
		execve(j->interpreter, j->argv, j->env);
		e = errno;
	}
	l->err = e;
	_exit(127);
}

/* start forks the program, which alone becomes the student
 * (become_student); returns its pid. The helper stays root, outside the
 * filter, so that a kept helper can clean up after the run and serve the
 * next: the student's processes can neither signal nor trace it (another
 * uid, no capabilities). */
static pid_t start(const struct job *j, int stdio[3], const struct sock_fprog *filter)
{
	if (j->uid == 0 || j->gid == 0)
		return failf("helper: refusing to run as uid %llu gid %llu", j->uid, j->gid);
	if (bind_workdir(j->dir) || name_user(j))
		return -1;
	if (idexd_alive())
		return -1;
	/* CLONE_VFORK: the helper resumes once the program has exec'd or
	 * failed to, with nothing of its own memory copied or faulted in
	 * between, as Go's ForkExec (the Go helper's) does too. Measured
	 * alone, a fork and a pipe for the report cost 0.15 ms more of CPU
	 * and of wall time a start (bench/README.md, "The program started
	 * by a vfork"). */
	struct launch l = {.j = j, .stdio = {stdio[0], stdio[1], stdio[2]}, .filter = filter};
	pid_t pid = clone(exec_child, launch_stack + sizeof launch_stack, CLONE_VM | CLONE_VFORK | SIGCHLD, &l);
	int fe = errno;
	int e = l.err;
	const char *step = l.step;
	/* Only the program may hold its stdio: the end of its output is the end
	 * of the run's events. */
	for (int i = 0; i < (j->terminal ? 1 : 3); i++)
		close(stdio[i]);
	if (pid < 0)
		return failf("exec %s: clone: %s", j->interpreter, errstr(fe));
	if (e) {
		int ws;
		while (waitpid(pid, &ws, 0) < 0 && errno == EINTR)
			;
		if (step)
			return failf("helper: %s: %s", step, errstr(e));
		return failf("exec %s: %s", j->interpreter, errstr(e));
	}
	return pid;
}

/* reap waits for every child as PID 1 must, forwards the signals it is
 * sent, and returns once the program itself has ended. */
static void reap(pid_t pid, const sigset_t *waited, int *code, int *sig)
{
	for (;;) {
		for (;;) {
			int ws;
			pid_t got = waitpid(-1, &ws, WNOHANG);
			if (got < 0 && errno == EINTR)
				continue;
			if (got < 0) {
				/* ECHILD: the program is gone without being seen,
				 * which only a bug here could cause. */
				*code = 255;
				return;
			}
			if (got == 0)
				break;
			if (got != pid)
				continue;
			if (WIFEXITED(ws)) {
				*code = WEXITSTATUS(ws);
				return;
			}
			if (WIFSIGNALED(ws)) {
				*sig = WTERMSIG(ws);
				return;
			}
		}
		int s = sigwaitinfo(waited, NULL);
		if (s > 0 && s != SIGCHLD)
			(void)kill(-pid, s); /* the group may be gone already */
	}
}

static void noop(int sig) { (void)sig; }

/* run_one serves one job: it returns -1 once the program's exit is
 * reported, else the helper's own exit code (the job was abandoned, or the
 * start failed and was reported). */
static int run_one(const char *network, const struct sock_fprog *filter, const sigset_t *waited)
{
	struct job job = {0};
	int stdio[3] = {-1, -1, -1}, net = -1;
	switch (receive_job(&job, stdio, &net)) {
	case 0:
		break;
	case 1:
		return EXIT_ABORTED;
	default:
		return send_error();
	}
	if (join_network(network, net))
		return send_error();
	int master = -1;
	if (job.terminal) {
		/* The program's stdio is the pty; what idexd sent is not used. */
		for (int i = 0; i < 3; i++)
			close(stdio[i]);
		int peer = -1;
		if (open_pty(&job, &master, &peer))
			return send_error();
		stdio[0] = stdio[1] = stdio[2] = peer;
	}
	struct stat in;
	if (fstat(stdio[0], &in)) {
		failf("helper: stat stdin: %s", errstr(errno));
		return send_error();
	}
	/* Signals that came before the program are for no program of this
	 * job: idexd interrupts a run only once it has its pid, and a kept
	 * helper's pending Ctrl-C was meant for its last run's. */
	struct timespec now = {0, 0};
	while (sigtimedwait(waited, NULL, &now) > 0)
		;
	pid_t pid = start(&job, stdio, filter);
	if (pid < 0)
		return send_error();
	char reply[256];
	int n = snprintf(reply, sizeof reply, "{\"pid\":%d,\"threads\":1,\"stdin\":{\"dev\":%" PRIu64 ",\"ino\":%" PRIu64 "}}",
			 (int)pid, (uint64_t)in.st_dev, (uint64_t)in.st_ino);
	int err = send_packet(reply, (size_t)n, master);
	if (master >= 0)
		close(master); /* idexd holds it now */
	if (err)
		return EXIT_FAILED; /* idexd is gone; its death signal is on its way */
	int code = 0, sig = 0;
	reap(pid, waited, &code, &sig);
	n = sig ? snprintf(reply, sizeof reply, "{\"exit\":{\"code\":0,\"signal\":%d}}", sig)
		: snprintf(reply, sizeof reply, "{\"exit\":{\"code\":%d}}", code);
	if (send_packet(reply, (size_t)n, -1))
		return EXIT_FAILED;
	return -1;
}

/* kept_runs is how many runs idexd asks this helper to serve
 * (IDEXD_HELPER_RUNS, default 1). A helper kept for more saves each later
 * run a process, its address space and its namespaces: 0.84-1.03 ms of CPU
 * a run here (bench/README.md, "What a helper costs as a process"). */
static long kept_runs(void)
{
	const char *v = getenv("IDEXD_HELPER_RUNS");
	unsigned long long n;
	if (!v || parse_num(v, 1000000, &n) || n < 1)
		return 1;
	return (long)n;
}

/* A kept helper's template: the namespaces it goes back to between runs. */
struct template {
	int mnt, ipc, net;
};

static int open_template(struct template *t)
{
	static const char *const names[] = {"/proc/self/ns/mnt", "/proc/self/ns/ipc", "/proc/self/ns/net"};
	int *fds[] = {&t->mnt, &t->ipc, &t->net};
	for (size_t i = 0; i < 3; i++)
		if ((*fds[i] = open(names[i], O_RDONLY | O_CLOEXEC)) < 0)
			return failf("helper: open %s: %s", names[i], errstr(errno));
	return 0;
}

/* next_run ends what the last run left and goes back to the template:
 * every process of the namespace but this one is killed and reaped, again
 * until none is left (one forked while the first kill went round is
 * killed by the next), then the run's mount, IPC and network namespaces
 * are left for the template's, and go with their last reference. */
static int next_run(const struct template *t)
{
	for (;;) {
		if (kill(-1, SIGKILL)) {
			if (errno != ESRCH)
				return failf("helper: kill what the run left: %s", errstr(errno));
			break; /* nothing left, zombies included */
		}
		int ws;
		if (waitpid(-1, &ws, 0) < 0 && errno != EINTR && errno != ECHILD)
			return failf("helper: reap what the run left: %s", errstr(errno));
	}
	if (setns(t->mnt, CLONE_NEWNS) || setns(t->ipc, CLONE_NEWIPC) || setns(t->net, CLONE_NEWNET))
		return failf("helper: back to the template's namespaces: %s", errstr(errno));
	return 0;
}

static int helper(int argc, char **argv)
{
	/* Before anything else: a Ctrl-C sent right after the start reaches
	 * the program, and its exit cannot be missed. The signals stay
	 * blocked and are taken by sigwaitinfo; the handler is there because
	 * the kernel drops a signal sent to a namespace's PID 1 whose action
	 * is the default. */
	sigset_t waited;
	sigemptyset(&waited);
	sigaddset(&waited, SIGCHLD);
	for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
		sigaddset(&waited, forwarded[i]);
	sigprocmask(SIG_BLOCK, &waited, NULL);
	struct sigaction sa = {.sa_handler = noop};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGCHLD, &sa, NULL);
	for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
		sigaction(forwarded[i], &sa, NULL);

	if (argc != 5) {
		failf("helper: %d setup arguments, want 4 (network, tmp bytes, tmp inodes, filter)", argc - 1);
		return send_error();
	}
	unsigned long long tmp_bytes, tmp_inodes;
	if (parse_num(argv[2], LLONG_MAX, &tmp_bytes) || parse_num(argv[3], LLONG_MAX, &tmp_inodes)) {
		failf("helper: setup tmp bytes %.40s, tmp inodes %.40s: want decimal numbers", argv[2], argv[3]);
		return send_error();
	}
	if (getpid() != 1) {
		failf("helper: pid %d, want 1: not started in a PID namespace of its own", (int)getpid());
		return send_error();
	}
	if (strcmp(argv[1], "none") != 0 && strcmp(argv[1], "host") != 0) {
		failf("helper: setup network %.40s: want none or host", argv[1]);
		return send_error();
	}
	struct sock_fprog filter;
	host_mqueue = mounted("/dev/mqueue", "/dev");
	if (prepare() || decode_filter(argv[4], &filter))
		return send_error();
	long runs = kept_runs();
	struct template tmpl = {-1, -1, -1};
	if (runs > 1 && open_template(&tmpl))
		return send_error();
	for (long n = 1;; n++) {
		/* A kept helper's first run gets fresh namespaces too: the
		 * template stays as prepare left it. */
		if (runs > 1 && unshare(CLONE_NEWNS | CLONE_NEWIPC)) {
			failf("helper: new mount and IPC namespaces for run %ld: %s", n, errstr(errno));
			return send_error();
		}
		if (arm(tmp_bytes, tmp_inodes))
			return send_error();
		if (send_packet("{\"ready\":true}", 14, -1))
			return EXIT_FAILED;
		int code = run_one(argv[1], &filter, &waited);
		if (code >= 0)
			return code;
		if (n >= runs)
			return 0; /* PID 1 leaving takes every process left with it */
		if (next_run(&tmpl))
			return send_error();
		/* The run can end now; the next one's namespaces come after. */
		if (send_packet("{\"clean\":true}", 14, -1))
			return EXIT_FAILED;
	}
}

int main(int argc, char **argv)
{
	if (argc > 0 && strcmp(argv[0], ARG0) == 0)
		return helper(argc, argv);
	/* Which build is installed, as for idexd and idexctl. */
	if (argc == 2 && strcmp(argv[1], "--version") == 0) {
		printf("idexd-sandbox %s\n", IDEXD_VERSION);
		return 0;
	}
	fprintf(stderr, "idexd-sandbox: this is idexd's sandbox helper; idexd starts it for each run, it is not run by hand\n");
	return 2;
}
