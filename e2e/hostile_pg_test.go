package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/testutil"
)

// fakePG is a PostgreSQL server as an attacker runs one (a squatter on
// the database's port, or a spoofed host): it answers every startup with
// a request for the password in cleartext, then in MD5, and keeps
// whatever it is sent.
type fakePG struct {
	port int

	mu        sync.Mutex
	conns     int
	asked     map[string]int // "cleartext"/"md5" -> startups answered so
	passwords []string       // PasswordMessage bodies received
	raw       bytes.Buffer   // every byte received
}

const (
	pgSSLRequest = 80877103
	pgGSSRequest = 80877104
	pgProtocol3  = 196608
)

func newFakePG(t *testing.T) *fakePG {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() }) // the test's own listener
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	f := &fakePG{port: atoi(port), asked: map[string]int{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return f
}

func (f *fakePG) serve(c net.Conn) {
	defer c.Close() //nolint:errcheck // the attacker's side
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	f.mu.Lock()
	f.conns++
	f.mu.Unlock()
	r := io.TeeReader(c, &lockedWriter{f: f})
	var code int32
	for {
		var hdr [8]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := int32(binary.BigEndian.Uint32(hdr[:4]))
		code = int32(binary.BigEndian.Uint32(hdr[4:]))
		if n < 8 || n > 10000 {
			return
		}
		if _, err := io.CopyN(io.Discard, r, int64(n-8)); err != nil {
			return
		}
		if code != pgSSLRequest && code != pgGSSRequest {
			break
		}
		if _, err := c.Write([]byte{'N'}); err != nil { // no TLS: go on in the clear
			return
		}
	}
	if code != pgProtocol3 {
		return
	}
	f.mu.Lock()
	kind := "cleartext"
	if f.asked["cleartext"] > f.asked["md5"] {
		kind = "md5"
	}
	f.asked[kind]++
	f.mu.Unlock()
	msg := []byte{'R', 0, 0, 0, 8, 0, 0, 0, 3}
	if kind == "md5" {
		msg = []byte{'R', 0, 0, 0, 12, 0, 0, 0, 5, 's', 'a', 'l', 't'}
	}
	if _, err := c.Write(msg); err != nil {
		return
	}
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return // the client hung up: it refused
	}
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < 4 || n > 10000 {
		return
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return
	}
	if hdr[0] == 'p' {
		f.mu.Lock()
		f.passwords = append(f.passwords, kind+": "+string(bytes.TrimRight(body, "\x00")))
		f.mu.Unlock()
	}
}

type lockedWriter struct{ f *fakePG }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.f.mu.Lock()
	defer w.f.mu.Unlock()
	return w.f.raw.Write(p)
}

func (f *fakePG) state() (conns int, asked map[string]int, passwords []string, raw []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := map[string]int{}
	for k, v := range f.asked {
		a[k] = v
	}
	return f.conns, a, append([]string(nil), f.passwords...), append([]byte(nil), f.raw.Bytes()...)
}

func (h *hostile) secrets() {
	h.subtest("secrets", "idexd refuses to start from a config file that holds a database URL and is readable by others (it never connects), and gives no password, cleartext or MD5, to a PostgreSQL server that asks for one", func(t *testing.T) {
		fake := newFakePG(t)
		password := "hostile-pw-" + h.tok
		url := fmt.Sprintf("postgres://idexd:%s@127.0.0.1:%d/idexd", password, fake.port)
		extra := fmt.Sprintf("database_url = %q\n", url)

		// A world-readable config: idexd must not start, nor connect.
		dir := testutil.TraversableDir(t)
		cfg := filepath.Join(dir, "idexd.toml")
		conf := fmt.Sprintf("client_group = \"root\"\nadmin_group = \"root\"\ninterpreter = %q\n%s", testutil.Interpreter, extra)
		if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(cfg, 0o644); err != nil {
			t.Fatal(err)
		}
		d := &daemon{t: t, sock: filepath.Join(dir, "idexd.sock")}
		cmd := exec.Command(filepath.Join(binDir, "idexd"), "--config", cfg, "--socket", d.sock, "--workdir-root", filepath.Join(dir, "students"),
			"--state-dir", filepath.Join(dir, "state"), "--cgroup-parent", "idexd-e2e/"+h.tok+"-config")
		var logs bytes.Buffer
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		deadline := time.Now().Add(30 * time.Second)
	wait:
		for {
			select {
			case err := <-exited:
				if err == nil {
					t.Errorf("idexd exited 0 with a world-readable config holding a database URL, want a refusal; logs:\n%s", &logs)
				}
				break wait
			case <-time.After(100 * time.Millisecond):
			}
			if _, code := d.ctl("health"); code == 0 || code == 1 || time.Now().After(deadline) {
				stopDaemon(t, cmd, exited) // it should never have started
				t.Errorf("idexd started (health answered or 30 s passed) from a world-readable config (0644) holding a database URL; logs:\n%s", &logs)
				break
			}
		}
		if conns, _, _, _ := fake.state(); conns > 0 {
			t.Errorf("idexd connected %d times to the database named in a world-readable config", conns)
		}
		t.Logf("with the config 0644: %s", bytes.TrimSpace(logs.Bytes()))

		// The same config, 0600: idexd starts (degraded: the server
		// refuses it) and is asked for its password, in cleartext, then
		// MD5.
		pg := newDaemonWith(t, daemonOpts{host: "hostile-pg", extra: extra, degraded: true})
		deadline = time.Now().Add(90 * time.Second)
		for {
			_, asked, _, _ := fake.state()
			if asked["cleartext"] > 0 && asked["md5"] > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("idexd did not try the database twice in 90 s (asked %v); logs:\n%s", asked, pg.logs())
			}
			time.Sleep(100 * time.Millisecond)
		}
		conns, asked, pws, raw := fake.state()
		t.Logf("idexd connected %d times; asked for its password %v", conns, asked)
		if len(pws) > 0 {
			t.Errorf("idexd sent its password to a server that asked for it: %q", pws)
		}
		if bytes.Contains(raw, []byte(password)) {
			t.Errorf("the password is in what idexd sent the server")
		}
	})
}

// stopDaemon stops an idexd the test started by hand: SIGTERM, then
// SIGKILL after 30 s.
func stopDaemon(t *testing.T, cmd *exec.Cmd, exited <-chan error) {
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Errorf("SIGTERM idexd: %v", err)
	}
	select {
	case err := <-exited:
		t.Logf("idexd after SIGTERM: %v", err)
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill() // did not stop in 30 s
		t.Errorf("idexd did not stop within 30 s of SIGTERM: %v", <-exited)
	}
}
