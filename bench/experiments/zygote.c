// Would a zygote save the helper's exec? A run's helper is a process of its
// own: idexd vforks (sharing its own memory) and execs the static helper,
// which makes a new address space, and tears it down when the run ends.
// A zygote (a long-lived helper that forks one copy per run) would fork a
// copy of its small address space instead. This measures both lifecycles
// without namespaces, so only the process and its memory differ:
//
//   exec   vfork, then execve(HELPER --version): the helper starts, prints
//          its version and exits, as idexd's helpers start (minus the work)
//   fork   fork this small static process (TOUCH KiB of it written, as a
//          helper's heap and stack are), then _exit(0) in the child
//   vfork  vfork, then _exit(0): a new task with no memory of its own, the
//          floor of any new process
//
// Build and run as any user (musl-tools):
//   musl-gcc -O2 -static -o /tmp/zygote bench/experiments/zygote.c
//   /tmp/zygote N TOUCH HELPER      e.g. /tmp/zygote 2000 64 .bin/idexd-sandbox
// Each variant runs N children, three rounds interleaved; CPU is this
// process's and its reaped children's (getrusage), divided by N. A child
// that does not exit 0 ends the run with exit 1.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static char heap[1024 * 1024];

static double cpu_ms(void)
{
	struct rusage s, c;
	if (getrusage(RUSAGE_SELF, &s) || getrusage(RUSAGE_CHILDREN, &c)) {
		perror("getrusage");
		exit(1);
	}
	double us = 0;
	struct timeval tv[] = {s.ru_utime, s.ru_stime, c.ru_utime, c.ru_stime};
	for (int i = 0; i < 4; i++)
		us += tv[i].tv_sec * 1e6 + tv[i].tv_usec;
	return us / 1e3;
}

static pid_t child(const char *mode, const char *helper, int devnull)
{
	pid_t p;
	if (!strcmp(mode, "exec")) {
		p = vfork();
		if (p == 0) {
			if (dup2(devnull, 1) < 0)
				_exit(126);
			execl(helper, helper, "--version", (char *)0);
			_exit(127);
		}
	} else if (!strcmp(mode, "fork")) {
		p = fork();
		if (p == 0) {
			heap[0] = 2; // one copy-on-write fault, as any child takes
			_exit(0);
		}
	} else {
		p = vfork();
		if (p == 0)
			_exit(0);
	}
	return p;
}

static double measure(const char *mode, int n, const char *helper, int devnull)
{
	double t0 = cpu_ms();
	for (int i = 0; i < n; i++) {
		pid_t p = child(mode, helper, devnull);
		if (p < 0) {
			perror(mode);
			exit(1);
		}
		int st;
		if (waitpid(p, &st, 0) != p) {
			perror("waitpid");
			exit(1);
		}
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(stderr, "%s: child %d ended with status %#x\n", mode, p, st);
			exit(1);
		}
	}
	return (cpu_ms() - t0) / n;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: zygote N TOUCH_KIB HELPER\n");
		return 2;
	}
	int n = atoi(argv[1]);
	long touch = atol(argv[2]) * 1024;
	if (n <= 0 || touch < 0 || touch > (long)sizeof heap) {
		fprintf(stderr, "zygote: N must be > 0 and TOUCH_KIB within 0..%zu\n", sizeof heap / 1024);
		return 2;
	}
	memset(heap, 1, touch);
	int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (devnull < 0) {
		perror("/dev/null");
		return 1;
	}
	const char *modes[] = {"exec", "fork", "vfork"};
	for (int round = 1; round <= 3; round++)
		for (int m = 0; m < 3; m++)
			printf("round %d %-5s %.3f ms CPU a child\n", round, modes[m],
			       measure(modes[m], n, argv[3], devnull));
	return 0;
}
