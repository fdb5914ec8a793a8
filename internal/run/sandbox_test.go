package run_test

import (
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/testutil"
)

// TestSandboxLoopback: a program serves and connects on 127.0.0.1 as on a
// laptop, and two runs bind the same port at the same time: each has a
// network namespace of its own.
func TestSandboxLoopback(t *testing.T) {
	env := testutil.NewEnv(t, warm(1))
	script := `import socket, threading, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 8000))
srv.listen()
print("listening", flush=True)
sys.stdin.readline()
def serve():
    c, _ = srv.accept()
    c.sendall(c.recv(100).upper())
    c.close()
threading.Thread(target=serve).start()
c = socket.create_connection(("127.0.0.1", 8000))
c.sendall(b"hello")
print(c.recv(100).decode())
`
	for _, s := range []string{"alice", "bob"} {
		env.WriteScript(t, s, "serve.py", script)
	}
	var runs []*run.Execution
	for _, s := range []string{"alice", "bob"} {
		r := startRun(t, env, api.RunRequest{Student: s, Script: "serve.py"})
		waitOutput(t, r, "listening\n", 10*time.Second)
		runs = append(runs, r)
	}
	// Both listen on 127.0.0.1:8000 at once; now both talk to themselves.
	for _, r := range runs {
		if err := r.WriteStdin(ctxT(t, 5*time.Second), []byte("\n"), true); err != nil {
			t.Fatal(err)
		}
	}
	for i, r := range runs {
		res := testutil.Collect(ctxT(t, 30*time.Second), t, r)
		if res.Run.Reason != api.ReasonExited || res.Stdout != "listening\nHELLO\n" {
			t.Errorf("run %d: ended %s printing %q (%s)", i, res.Run.Reason, res.Stdout, res.Stderr)
		}
	}
	assertClean(t, env)
}

// TestSandboxNetwork: nothing outside the run is reachable: not a
// listener on the host's loopback, not the host's own address, not the
// instance metadata address, not the internet; and the host's listener
// saw no connection at all.
func TestSandboxNetwork(t *testing.T) {
	env := testutil.NewEnv(t, warm(1))
	var accepted atomic.Int64
	var targets []string
	for _, addr := range []string{"127.0.0.1:0", hostAddress(t) + ":0"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ln.Close() })
		targets = append(targets, ln.Addr().String())
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				accepted.Add(1)
				_ = c.Close()
			}
		}()
	}
	targets = append(targets, "169.254.169.254:80", "1.1.1.1:53")
	env.WriteScript(t, "mallory", "reach.py", `import socket, sys
for t in sys.argv[1:]:
    host, port = t.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        print(t, "CONNECTED")
    except OSError as e:
        print(t, e.strerror)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    udp.sendto(b"x", ("169.254.169.254", 53))
    print("udp sent")
except OSError as e:
    print("udp", e.strerror)
`)
	res := runToEnd(t, env, api.RunRequest{Student: "mallory", Script: "reach.py", Args: targets})
	var want strings.Builder
	for i, tg := range targets {
		// The host's 127.0.0.1 is the run's own lo, where nothing listens.
		why := "Network is unreachable"
		if i == 0 {
			why = "Connection refused"
		}
		fmt.Fprintf(&want, "%s %s\n", tg, why)
	}
	want.WriteString("udp Network is unreachable\n")
	if res.Run.Reason != api.ReasonExited || res.Stdout != want.String() {
		t.Errorf("ended %s printing %q (%s), want %q", res.Run.Reason, res.Stdout, res.Stderr, want.String())
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("the host's listeners accepted %d connections from the run, want 0", n)
	}
	assertClean(t, env)
}

// hostAddress is an address of this host other than loopback.
func hostAddress(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ip, ok := a.(*net.IPNet); ok && !ip.IP.IsLoopback() && ip.IP.To4() != nil {
			return ip.IP.String()
		}
	}
	t.Fatal("this host has no IPv4 address but loopback")
	return ""
}

// i386Probe calls f, the int 0x80 stub, in a child, so that a kernel
// that answers int 0x80 with SIGSEGV ends only that child.
const i386Probe = `import sys
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    r = f()
    print("i386 unshare user", r, os.strerror(-r) if r < 0 else "", flush=True)
    os._exit(0)
_, st = os.waitpid(pid, 0)
if os.WIFSIGNALED(st) and os.WTERMSIG(st) == 11:
    print("i386 unshare user no int 0x80 on this kernel")
`

// TestSandboxSeccomp: the kernel surface a run cannot reach, tried with
// raw syscalls, including a 32-bit unshare(CLONE_NEWUSER) through int
// 0x80 and an x32 one, which a filter of x86-64 numbers alone would let by.
func TestSandboxSeccomp(t *testing.T) {
	env := testutil.NewEnv(t, warm(1))
	env.WriteScript(t, "mallory", "sys.py", `import ctypes, mmap, os
libc = ctypes.CDLL(None, use_errno=True)
def sc(name, nr, *a):
    ctypes.set_errno(0)
    r = libc.syscall(nr, *a)
    print(name, r, os.strerror(ctypes.get_errno()) if r < 0 else "")
sc("unshare user", 272, 0x10000000)
sc("unshare net", 272, 0x40000000)
sc("clone user", 56, 0x10000000 | 17, 0, 0, 0, 0)
sc("clone3", 435, 0, 0)
sc("setns", 308, 0, 0)
sc("mount", 165, b"none", b"/tmp", b"tmpfs", 0, 0)
sc("keyctl", 250, 0, 0, 0, 0)
sc("add_key", 248, b"user", b"x", b"y", 1, -3)
sc("bpf", 321, 0, 0, 0)
sc("perf_event_open", 298, 0, 0, -1, -1, 0)
sc("io_uring_setup", 425, 1, 0)
sc("userfaultfd", 323, 0)
sc("ptrace", 101, 16, 1, 0, 0)
sc("socket vsock", 41, 40, 1, 0)
sc("socket vsock high bits", 41, 0x100000028, 1, 0)
sc("x32 unshare user", 0x40000000 | 272, 0x10000000)
# i386 unshare (310) through int 0x80: mov eax, 310; mov ebx, CLONE_NEWUSER; int 0x80; ret
code = bytes.fromhex("b836010000" "bb00000010" "cd80" "c3")
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(code)
f = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
`+i386Probe+`
`)
	// Some kernels (this kind's firecracker guests among them) deliver no
	// int 0x80 to a 64-bit process at all: the probe dies of SIGSEGV on
	// the host too. Then that is what a run must see; where the host's
	// int 0x80 works, the filter must refuse it.
	i386Want := "i386 unshare user -1 Operation not permitted\n"
	host := exec.Command("python3", "-c", `import ctypes, mmap, os
code = bytes.fromhex("b8ffff0000" "cd80" "c3")
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(code)
f = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
`+i386Probe)
	out, err := host.CombinedOutput()
	if err != nil {
		t.Fatalf("the int 0x80 probe on the host: %v: %s", err, out)
	}
	if strings.Contains(string(out), "no int 0x80") {
		i386Want = "i386 unshare user no int 0x80 on this kernel\n"
	}
	t.Logf("on the host, int 0x80 (syscall 0xffff): %s", strings.TrimSpace(string(out)))
	res := runToEnd(t, env, api.RunRequest{Student: "mallory", Script: "sys.py"})
	want := `unshare user -1 Operation not permitted
unshare net -1 Operation not permitted
clone user -1 Operation not permitted
clone3 -1 Function not implemented
setns -1 Operation not permitted
mount -1 Operation not permitted
keyctl -1 Operation not permitted
add_key -1 Operation not permitted
bpf -1 Operation not permitted
perf_event_open -1 Operation not permitted
io_uring_setup -1 Operation not permitted
userfaultfd -1 Operation not permitted
ptrace -1 Operation not permitted
socket vsock -1 Operation not permitted
socket vsock high bits -1 Operation not permitted
x32 unshare user -1 Function not implemented
` + i386Want
	if res.Run.Reason != api.ReasonExited || res.Stdout != want {
		t.Errorf("ended %s printing:\n%s(%s)\nwant:\n%s", res.Run.Reason, res.Stdout, res.Stderr, want)
	}
	assertClean(t, env)
}
