# What would a fork server save? Spawning `python3 hi.py` against forking this
# (already started) interpreter and running hi.py's code in the child, and
# against a bare fork+_exit, which is the floor of any fork server on this
# machine. Run as root: cd DIR-WITH-hi.py && /usr/bin/python3 forkrun.py [N [W]]
# (the same interpreter as the spawned runs')
# CPU is summed from RUSAGE_CHILDREN (the runs) and RUSAGE_SELF (the parent).
# With W > 1, W workers forked from this process share the N runs of each
# variant, as W clients would keep a fork server busy; the figures are then
# all the CPU per run (the workers' own included) and runs a second.
import builtins, ctypes, gc, io, os, resource, signal, sys, time, types

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200
W = int(sys.argv[2]) if len(sys.argv) > 2 else 1
devnull = os.open('/dev/null', os.O_WRONLY)


def children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def me():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def reap(pid, what):
    """Wait for pid and fail on anything but a clean exit: a run that broke
    must not pass for a fast one."""
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f'{what}: pid {pid} ended with {code}')


def child(body):
    """Run body in a forked child; it must end the process itself. An
    exception prints its traceback and exits 1, so reap sees it."""
    try:
        body()
    except BaseException:
        sys.excepthook(*sys.exc_info())
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


def spawn():
    pid = os.posix_spawn('/usr/bin/python3', ['python3', 'hi.py'], {},
                         file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
    reap(pid, 'spawn')


def fork_run():
    pid = os.fork()
    if pid == 0:
        child(fork_run_body)
    reap(pid, 'fork+run')


libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID = 0x20000, 0x4000000, 0x8000000, 0x20000000
MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV = 0x4000, 0x40000, 0x2, 0x4
UID = os.stat('.').st_uid  # run as the directory's owner, like a student's run


def check(rc, what):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f'{what}: {os.strerror(e)}')


def fork_ns_run():
    """A fork server's run with a sandbox's shape: the forked child makes
    mount, IPC, UTS and PID namespaces, forks again to be the new PID
    namespace's first process, mounts a private /tmp and /proc, drops to the
    student's uid and runs hi.py there."""
    forked_sandboxed_run(join=False)


def forked_sandboxed_run(join):
    def outer():
        if join:
            join_groups_and_net()
        check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID), 'unshare')
        check(libc.mount(b'none', b'/', None, MS_REC | MS_PRIVATE, None), 'make / private')
        inner = os.fork()
        if inner == 0:
            child(lambda: (mount_and_drop(), fork_run_body()))
        reap(inner, 'sandboxed run')

    pid = os.fork()
    if pid == 0:
        child(outer)
    reap(pid, 'sandboxed run\'s outer fork')


CLONE_NEWNET = 0x40000000
V1 = '/sys/fs/cgroup'
MEMPARENT = open('/proc/self/cgroup').read().split('memory:')[1].split('\n')[0]
GROUPS = []  # this run's kept v1 groups, made once: cpu (with a quota), cpuacct, memory, pids
NETNS = None  # a kept network namespace's fd, as idexd keeps one per student


def setup_sandbox():
    """Make the kept groups and network namespace that fork_sandbox_run's
    children enter, as a warm idexd has them ready."""
    global NETNS
    limits = {'cpu': {'cpu.cfs_period_us': '100000', 'cpu.cfs_quota_us': '100000'}, 'cpuacct': {},
              'memory': {'memory.limit_in_bytes': str(512 << 20)}, 'pids': {'pids.max': '256'}}
    for ctrl, files in limits.items():
        d = f'{V1}/{ctrl}' + (MEMPARENT if ctrl == 'memory' else '') + '/forkrun'
        os.makedirs(d, exist_ok=True)
        GROUPS.append(d)  # before its limits, so a failed write still leaves it to teardown
        for f, v in files.items():
            with open(f'{d}/{f}', 'w') as fh:
                fh.write(v)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a process whose network namespace outlives it through the parent's fd
        def hold():
            check(libc.unshare(CLONE_NEWNET), 'unshare net')
            os.write(w, b'x')
            while True:
                signal.pause()  # until the parent has opened the namespace and kills it
        child(hold)
    os.close(w)  # so a holder that failed reads as EOF, not a hang
    got = os.read(r, 1)
    os.close(r)
    if got != b'x':
        reap(pid, 'network namespace holder')  # raises with its exit code
        raise RuntimeError('network namespace holder exited 0 before making the namespace')
    try:
        NETNS = os.open(f'/proc/{pid}/ns/net', os.O_RDONLY)
    finally:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != -signal.SIGKILL:
        raise RuntimeError(f'network namespace holder: pid {pid} ended with {os.waitstatus_to_exitcode(status)}, want killed')


def teardown_sandbox():
    for d in GROUPS:
        os.rmdir(d)
    if NETNS is not None:
        os.close(NETNS)


def fork_sandbox_run():
    """fork_ns_run, with what else a run's child would do itself: join the
    run's kept v1 groups (a cgroup.procs write each) and the student's kept
    network namespace (setns)."""
    forked_sandboxed_run(join=True)


SELF_PIDNS = os.open('/proc/self/ns/pid', os.O_RDONLY)


def fork_sandbox_run_one_fork(body=None):
    """fork_sandbox_run with one fork: the parent unshares a PID namespace
    for its next child only, forks, and setns's back to its own, so the
    child is the new namespace's first process at once (PID 1)."""
    check(libc.unshare(CLONE_NEWPID), 'unshare pid')
    def run():
        join_groups_and_net()
        check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC), 'unshare')
        check(libc.mount(b'none', b'/', None, MS_REC | MS_PRIVATE, None), 'make / private')
        mount_and_drop()
        (body or fork_run_body)()

    try:
        pid = os.fork()
        if pid == 0:
            child(run)
    finally:
        check(libc.setns(SELF_PIDNS, CLONE_NEWPID), 'setns back to our PID namespace')
    reap(pid, 'one-fork sandboxed run')


PR_SET_NO_NEW_PRIVS = 38
SYS_close_range = 436  # x86_64


def as_python_main():
    """The rest of what a run's child would do to look like `python3
    hi.py`: no_new_privs, every fd above stdio closed, the run's
    environment, argv and sys.path, sys.std* rebuilt on the run's fds, the
    script run in the __main__ module, and python's own ending (SystemExit's
    code, a traceback, flushing). The seccomp filter is left out (0.17 ms
    a run, measured in the helper)."""
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 'no_new_privs')
    os.dup2(devnull, 1)
    check(libc.syscall(SYS_close_range, 3, 0xFFFFFFFF, 0), 'close_range')
    os.environ.clear()
    os.environ.update({'PATH': '/usr/local/bin:/usr/bin:/bin', 'HOME': os.getcwd(), 'LANG': 'C.UTF-8',
                       'LC_ALL': 'C.UTF-8', 'PYTHONUNBUFFERED': '1', 'PYTHONIOENCODING': 'utf-8'})
    sys.argv = ['hi.py']
    sys.path[0] = os.getcwd()
    sys.stdin = io.TextIOWrapper(io.FileIO(0, 'r', closefd=False), encoding='utf-8')
    sys.stdout = io.TextIOWrapper(io.FileIO(1, 'w', closefd=False), encoding='utf-8', write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, 'w', closefd=False), encoding='utf-8',
                                  errors='backslashreplace', write_through=True)
    # As python's own main does it (not runpy, which imports re, enum and
    # typing on its way): the script's code runs in the __main__ module.
    # A fresh module: a real server's own code would live outside __main__.
    main = types.ModuleType('__main__')
    main.__dict__.update({'__file__': 'hi.py', '__cached__': None, '__builtins__': builtins})
    sys.modules['__main__'] = main
    code = 0
    try:
        with open('hi.py', 'rb') as f:
            src = f.read()
        exec(compile(src, 'hi.py', 'exec'), main.__dict__)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)  # sys.exit("message"), as python prints it
    except BaseException:  # a student's uncaught exception: python prints it and exits 1
        sys.excepthook(*sys.exc_info())
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def fork_sandbox_run_as_main():
    fork_sandbox_run_one_fork(as_python_main)


def mount_and_drop():
    """The run's own /tmp and /proc, then the student's uid and gid."""
    check(libc.mount(b'tmpfs', b'/tmp', b'tmpfs', MS_NOSUID | MS_NODEV, b'size=64m'), 'mount /tmp')
    check(libc.mount(b'proc', b'/proc', b'proc', MS_NOSUID | MS_NODEV, None), 'mount /proc')
    os.setgroups([])
    os.setgid(UID)
    os.setuid(UID)


def join_groups_and_net():
    """The run's kept v1 groups (a cgroup.procs write each) and the
    student's kept network namespace."""
    me = str(os.getpid())
    for d in GROUPS:
        with open(f'{d}/cgroup.procs', 'w') as f:
            f.write(me)
    check(libc.setns(NETNS, CLONE_NEWNET), 'setns net')


def fork_run_body():
    """Run hi.py's code as __main__ in this (forked) process and exit."""
    os.dup2(devnull, 1)
    with open('hi.py') as f:
        src = f.read()
    g = {'__name__': '__main__', '__file__': 'hi.py', '__builtins__': __builtins__}
    exec(compile(src, 'hi.py', 'exec'), g)
    sys.stdout.flush()
    os._exit(0)


def spawn_ns():
    pid = os.posix_spawn('/usr/bin/unshare', ['unshare', '-m', '-i', '-u', '-p', '--fork', '--mount-proc',
                                              f'--setuid={UID}', f'--setgid={UID}', '/usr/bin/python3', 'hi.py'], {},
                         file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
    reap(pid, 'spawn+ns')


def fork_exit():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    reap(pid, 'fork+_exit')


def measure():
    for name, f in [('spawn', spawn), ('fork+run', fork_run), ('fork+_exit', fork_exit), ('spawn+ns', spawn_ns),
                    ('fork+ns+run', fork_ns_run), ('fork+sandbox', fork_sandbox_run),
                    ('fork+sandbox 1', fork_sandbox_run_one_fork),
                    ('fork+sandbox 1+main', fork_sandbox_run_as_main)] * 2:
        c0, m0, t0 = children(), me(), time.perf_counter()
        if W == 1:
            for _ in range(N):
                f()
        else:
            workers = []
            for w in range(W):
                pid = os.fork()
                if pid == 0:
                    child(lambda: [f() for _ in range(N // W)])
                workers.append(pid)
            for pid in workers:
                reap(pid, f'{name} worker')
        c1, m1, t1 = children(), me(), time.perf_counter()
        n = N if W == 1 else N // W * W
        if W == 1:
            print(f"{name:20s} children cpu {1000*(c1-c0)/n:6.2f} ms/run, parent {1000*(m1-m0)/n:5.2f}, wall {1000*(t1-t0)/n:6.2f}")
        else:
            print(f"{name:20s} all cpu {1000*(c1-c0+m1-m0)/n:6.2f} ms/run, {n/(t1-t0):6.1f} runs/s with {W} workers")


try:
    setup_sandbox()
    gc.freeze()  # keep the parent's objects' pages shared after a fork
    measure()
finally:
    teardown_sandbox()
