// What would a helper kept for many runs save? Today idexd clones one
// helper per run into new PID, mount, IPC and UTS namespaces; the helper
// builds the run's mounts, drops to the student, starts the program, reaps
// it and exits, taking its namespaces and its address space with it. A kept
// helper would stay root as the namespace's PID 1 across runs: per run it
// would take a fresh mount and IPC namespace from its prepared template
// (unshare), mount what must be new (tmpfs, mqueue) and bind the workdir,
// start the program in a vfork child that alone becomes the student, kill
// and reap whatever the run left, and go back to the template (setns).
//
// The three ways below run the same static program as uid 200000, N times
// each, three rounds interleaved; the helper side speaks one message per
// step over a socketpair as idexd's does (ready, job, exit):
//
//   fresh  per run: clone (vfork-style, as Go's os/exec does) into new PID,
//          mount, IPC and UTS namespaces, join four v1 groups (cpu, cpuacct,
//          memory, pids), as idexd's hybrid helpers do, exec this binary as the helper, build the mounts
//          idexd's helper builds, bind the workdir, run the program
//   kept   one helper, cloned and prepared once; per run the steps above
//   bare   vfork, setresuid and exec the program: the floor's way
//
// CPU per run is this process's and its reaped children's (getrusage); a
// kept helper's is counted when it exits after its N runs.
//
// Build and run as root on a cgroup v1 (hybrid) host:
//   musl-gcc -O2 -static -o /tmp/reuse bench/experiments/reuse.c
//   echo 'int main(void){return 0;}' | musl-gcc -O2 -static -o /srv/reuse-exp/true -x c -
// (the program must lie where a run sees it: the workdir, not /tmp).
//   /tmp/reuse N /srv/reuse-exp/true
// reuse-check.c, built the same way into /srv/reuse-exp/check, checks each
// run's view (the student's uid, nothing an earlier run left) and leaves a
// file and a detached process behind for the next run to not find.
// It makes /srv/reuse-exp (the workdir) and reuse-exp groups, and removes
// the groups when it ends well. A failed step ends the run with exit 1 and
// leaves the groups (rmdir /sys/fs/cgroup/*/reuse-exp).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define UID 200000
#define WORKDIR "/srv/reuse-exp"
#define ARG0 "reuse-helper"

static const char *const groups[] = {"/sys/fs/cgroup/cpu/reuse-exp", "/sys/fs/cgroup/cpuacct/reuse-exp",
				     "/sys/fs/cgroup/memory/reuse-exp", "/sys/fs/cgroup/pids/reuse-exp"};
#define NGROUPS (sizeof groups / sizeof *groups)

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, ": %s\n", strerror(errno));
	exit(1);
}

static double cpu_ms(void)
{
	struct rusage s, c;
	if (getrusage(RUSAGE_SELF, &s) || getrusage(RUSAGE_CHILDREN, &c))
		die("getrusage");
	double us = 0;
	struct timeval tv[] = {s.ru_utime, s.ru_stime, c.ru_utime, c.ru_stime};
	for (int i = 0; i < 4; i++)
		us += tv[i].tv_sec * 1e6 + tv[i].tv_usec;
	return us / 1e3;
}

static void say(int fd, char c)
{
	if (write(fd, &c, 1) != 1)
		die("write %c", c);
}

static char hear(int fd)
{
	char c;
	ssize_t n;
	do
		n = read(fd, &c, 1);
	while (n < 0 && errno == EINTR);
	if (n != 1)
		die("read (got %zd)", n);
	return c;
}

static void wait_ok(pid_t pid, const char *what)
{
	int st;
	pid_t got;
	do
		got = waitpid(pid, &st, 0);
	while (got < 0 && errno == EINTR);
	if (got != pid)
		die("wait for %s", what);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		errno = 0;
		die("%s ended with status %#x", what, st);
	}
}

static void must_mount(const char *src, const char *dst, const char *type, unsigned long flags, const char *opts)
{
	if (mount(src, dst, type, flags, opts))
		die("mount %s on %s", type ? type : src, dst);
}

// The mounts every run gets fresh: tmpfs where a run may write, and the
// mqueue of its IPC namespace.
static void per_run_mounts(void)
{
	const char *tmps[] = {"/tmp", "/var/tmp", "/dev/shm"};
	for (int i = 0; i < 3; i++)
		must_mount("tmpfs", tmps[i], "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=67108864,nr_inodes=4096");
	struct stat st;
	if (stat("/dev/mqueue", &st) == 0) // as idexd's helper: only where the host has it
		must_mount("mqueue", "/dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, "");
	must_mount(WORKDIR, WORKDIR, NULL, MS_BIND, NULL);
	must_mount("", WORKDIR, NULL, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV, NULL);
}

// The mounts a helper makes once: what idexd's prepare does besides the
// per-run ones.
static void template_mounts(void)
{
	must_mount("", "/", NULL, MS_REC | MS_PRIVATE, NULL);
	struct {
		unsigned long long set, clr, prop, userns;
	} attr = {0x1 | 0x2, 0, 0, 0}; // MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID
	if (syscall(SYS_mount_setattr, AT_FDCWD, "/", 0x8000 /* AT_RECURSIVE */, &attr, sizeof attr))
		die("mount_setattr");
	must_mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "mode=755,size=4k,nr_inodes=16");
	must_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, NULL);
	must_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5,max=16");
}

static char *const *prog_argv;

// run_program starts the program as the student from a vfork child, so
// only the child changes its credentials, and waits for it.
static void run_program(void)
{
	pid_t pid = vfork();
	if (pid == 0) {
		if (syscall(SYS_setgroups, 0, NULL) || syscall(SYS_setresgid, UID, UID, UID) ||
		    syscall(SYS_setresuid, UID, UID, UID) || chdir(WORKDIR))
			_exit(126);
		execv(prog_argv[0], prog_argv);
		_exit(127);
	}
	if (pid < 0)
		die("vfork");
	wait_ok(pid, "program");
}

static int helper(int ctl, int runs)
{
	if (getpid() != 1) {
		errno = 0;
		die("helper is pid %d, want 1", getpid());
	}
	template_mounts();
	if (runs == 0) { // fresh: one run, then exit with the namespaces
		per_run_mounts();
		say(ctl, 'r');
		if (hear(ctl) != 'j')
			die("want a job");
		run_program();
		say(ctl, 'x');
		return 0;
	}
	int tmpl = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
	if (tmpl < 0)
		die("open template mount namespace");
	say(ctl, 'r');
	for (int i = 0; i < runs; i++) {
		if (hear(ctl) != 'j')
			die("want a job");
		if (unshare(CLONE_NEWNS | CLONE_NEWIPC))
			die("unshare");
		per_run_mounts();
		run_program();
		// Whatever the run left behind goes before the next run.
		if (kill(-1, SIGKILL) && errno != ESRCH)
			die("kill leftovers");
		while (waitpid(-1, NULL, 0) > 0 || errno == EINTR)
			;
		if (setns(tmpl, CLONE_NEWNS))
			die("back to the template");
		say(ctl, 'x');
	}
	return 0;
}

static char stack[64 * 1024] __attribute__((aligned(16)));
static char self_ctl[16], self_runs[16];

static int exec_helper(void *arg)
{
	(void)arg;
	for (size_t i = 0; i < NGROUPS; i++) {
		char p[128];
		snprintf(p, sizeof p, "%s/cgroup.procs", groups[i]);
		int fd = open(p, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write(fd, "0", 1) != 1)
			_exit(125);
		close(fd);
	}
	char *argv[] = {ARG0, self_ctl, self_runs, prog_argv[0], NULL};
	execv("/proc/self/exe", argv);
	_exit(127);
}

// spawn_helper clones a helper for runs (0: one fresh run) into new
// namespaces and the groups, and waits for its ready.
static pid_t spawn_helper(int runs, int *ctl)
{
	int sp[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp))
		die("socketpair");
	int fd = fcntl(sp[1], F_DUPFD, 3); // without CLOEXEC: the helper's
	if (fd < 0)
		die("dup");
	snprintf(self_ctl, sizeof self_ctl, "%d", fd);
	snprintf(self_runs, sizeof self_runs, "%d", runs);
	pid_t pid = clone(exec_helper, stack + sizeof stack,
			  CLONE_VM | CLONE_VFORK | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | SIGCHLD, NULL);
	if (pid < 0)
		die("clone helper");
	close(fd);
	close(sp[1]);
	*ctl = sp[0];
	if (hear(*ctl) != 'r')
		die("want ready");
	return pid;
}

static double fresh(int n)
{
	double t0 = cpu_ms();
	for (int i = 0; i < n; i++) {
		int ctl;
		pid_t pid = spawn_helper(0, &ctl);
		say(ctl, 'j');
		if (hear(ctl) != 'x')
			die("want exit");
		wait_ok(pid, "fresh helper");
		close(ctl);
	}
	return (cpu_ms() - t0) / n;
}

static double kept(int n)
{
	double t0 = cpu_ms();
	int ctl;
	pid_t pid = spawn_helper(n, &ctl);
	for (int i = 0; i < n; i++) {
		say(ctl, 'j');
		if (hear(ctl) != 'x')
			die("want exit");
	}
	wait_ok(pid, "kept helper");
	close(ctl);
	return (cpu_ms() - t0) / n;
}

static double bare(int n)
{
	double t0 = cpu_ms();
	for (int i = 0; i < n; i++)
		run_program();
	return (cpu_ms() - t0) / n;
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[0], ARG0) == 0) {
		prog_argv = argv + 3;
		return helper(atoi(argv[1]), atoi(argv[2]));
	}
	if (argc != 3) {
		fprintf(stderr, "usage: reuse N PROGRAM\n");
		return 2;
	}
	int n = atoi(argv[1]);
	prog_argv = argv + 2;
	if (mkdir(WORKDIR, 0755) && errno != EEXIST)
		die("mkdir %s", WORKDIR);
	for (size_t i = 0; i < NGROUPS; i++)
		if (mkdir(groups[i], 0755) && errno != EEXIST)
			die("mkdir %s", groups[i]);
	for (int round = 1; round <= 3; round++) {
		printf("round %d fresh %.3f ms CPU a run\n", round, fresh(n));
		printf("round %d kept  %.3f ms CPU a run\n", round, kept(n));
		printf("round %d bare  %.3f ms CPU a run\n", round, bare(n));
		fflush(stdout);
	}
	for (size_t i = 0; i < NGROUPS; i++)
		if (rmdir(groups[i]))
			die("rmdir %s", groups[i]);
	return 0;
}
