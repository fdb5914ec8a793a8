package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The floor (issue 16) is the least any spawn service can do for a run:
// one HTTP request over a Unix socket to a server that only exec.Cmds the
// interpreter on the script as the student's uid and gid, in the student's
// directory, and answers with its output once it has exited. No cgroup, no
// namespace, no store, no lock, no event stream. idexd against the floor
// is what the sandbox and the service cost; the floor against bare is what
// a round trip through a server costs. The server is idexbench itself,
// re-executed as `idexbench floor-server`, so that its CPU (and its reaped
// children's) is a process's of its own to account.

// FloorSubcommand is the first argument that makes idexbench the floor's
// server instead of the benchmark.
const FloorSubcommand = "floor-server"

// floorRequest asks the floor to run Script in Dir as UID/GID.
type floorRequest struct {
	Dir    string `json:"dir"`
	Script string `json:"script"`
	UID    uint32 `json:"uid"`
	GID    uint32 `json:"gid"`
}

// floorResponse is the run's whole stdout and exit status.
type floorResponse struct {
	Stdout string `json:"stdout"`
	Exit   int    `json:"exit"`
	Error  string `json:"error,omitempty"`
}

// ServeFloor is `idexbench floor-server -socket PATH -python PATH`: it
// serves POST /run on the socket until ctx ends.
func ServeFloor(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("idexbench "+FloorSubcommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	sock := fs.String("socket", "", "Unix socket to listen on")
	python := fs.String("python", "/usr/bin/python3", "interpreter")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *sock == "" {
		return errors.New("floor-server: -socket is required")
	}
	ln, err := net.Listen("unix", *sock)
	if err != nil {
		return fmt.Errorf("floor-server: listen on %s: %w", *sock, err)
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { floorRun(w, r, *python, stderr) }),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() {
		<-ctx.Done()
		if err := srv.Close(); err != nil {
			fmt.Fprintln(stderr, "floor-server: close:", err)
		}
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("floor-server: serve: %w", err)
	}
	return nil
}

func floorRun(w http.ResponseWriter, r *http.Request, python string, stderr io.Writer) {
	var req floorRequest
	if r.Method != http.MethodPost || r.URL.Path != "/run" {
		http.Error(w, "POST /run only", http.StatusNotFound)
		return
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, "decode request: "+err.Error(), http.StatusBadRequest)
		return
	}
	cmd := bareCmd(python, req.Dir, req.Script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: req.UID, Gid: req.GID, Groups: []uint32{}}}
	out, err := cmd.Output()
	resp := floorResponse{Stdout: string(out)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		resp.Exit = ee.ExitCode()
	case err != nil:
		resp.Error = err.Error()
	}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(resp); err != nil {
		// The client went away; the benchmark side reports its own error.
		fmt.Fprintf(stderr, "floor-server: answer run of %s: %v\n", req.Script, err)
	}
}

// floor is the floor's server process, started by the benchmark.
type floor struct {
	cmd  *exec.Cmd
	dir  string
	sock string
	done chan error
}

// startFloor re-executes idexbench as the floor's server and waits until
// its socket answers.
func startFloor(ctx context.Context, python string) (*floor, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("floor: find idexbench's own binary: %w", err)
	}
	dir, err := os.MkdirTemp("", "idexbench-floor-")
	if err != nil {
		return nil, fmt.Errorf("floor: %w", err)
	}
	f := &floor{dir: dir, sock: filepath.Join(dir, "floor.sock"), done: make(chan error, 1)}
	f.cmd = exec.Command(self, FloorSubcommand, "-socket", f.sock, "-python", python)
	f.cmd.Stderr = os.Stderr
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := f.cmd.Start(); err != nil {
		return nil, errors.Join(fmt.Errorf("floor: start %s: %w", self, err), os.RemoveAll(dir))
	}
	go func() { f.done <- f.cmd.Wait() }()
	c := f.client()
	deadline := time.Now().Add(10 * time.Second)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://floor/", nil)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("floor: %w", err), f.stop())
		}
		resp, err := c.Do(req)
		if err == nil {
			_, cerr := io.Copy(io.Discard, resp.Body)
			return f, errors.Join(cerr, resp.Body.Close())
		}
		select {
		case werr := <-f.done:
			return nil, errors.Join(fmt.Errorf("floor: server exited before it answered: %w", werr), os.RemoveAll(dir))
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, errors.Join(fmt.Errorf("floor: no answer on %s within 10s: %w", f.sock, err), f.stop())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (f *floor) pid() int { return f.cmd.Process.Pid }

// client returns a client with a connection pool of its own, as each of
// idexd's benchmark clients has.
func (f *floor) client() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", f.sock)
		},
		MaxIdleConnsPerHost: 1,
	}}
}

// floorOne is one start->end through the floor: the request, the run, the
// answer with its output.
func floorOne(ctx context.Context, c *http.Client, req floorRequest) error {
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("floor: encode request: %w", err)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://floor/run", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	resp, err := c.Do(hr)
	if err != nil {
		return fmt.Errorf("floor: run %s: %w", req.Script, err)
	}
	var fr floorResponse
	derr := json.NewDecoder(resp.Body).Decode(&fr)
	if err := errors.Join(derr, resp.Body.Close()); err != nil {
		return fmt.Errorf("floor: answer to run %s (HTTP %d): %w", req.Script, resp.StatusCode, err)
	}
	switch {
	case fr.Error != "":
		return fmt.Errorf("floor: run %s: %s", req.Script, fr.Error)
	case fr.Exit != 0:
		return fmt.Errorf("floor: run %s exited %d", req.Script, fr.Exit)
	case strings.TrimSpace(fr.Stdout) == "":
		return fmt.Errorf("floor: run %s printed nothing", req.Script)
	}
	return nil
}

// floorRequestFor is the request that runs script in dir as the owner of
// dir: the student's uid and gid, as idexd runs it.
func floorRequestFor(dir, script string) (floorRequest, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return floorRequest{}, fmt.Errorf("floor: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return floorRequest{}, fmt.Errorf("floor: no owner for %s", dir)
	}
	return floorRequest{Dir: dir, Script: script, UID: st.Uid, GID: st.Gid}, nil
}

// stop ends the server (SIGTERM) and removes its directory.
func (f *floor) stop() error {
	var errs []error
	if err := f.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		errs = append(errs, fmt.Errorf("floor: signal server: %w", err))
	}
	select {
	case err := <-f.done:
		// Killed by the SIGTERM before its handler ran is a normal end too.
		var ee *exec.ExitError
		if err != nil && (!errors.As(err, &ee) || ee.Exited()) {
			errs = append(errs, fmt.Errorf("floor: server: %w", err))
		}
	case <-time.After(10 * time.Second):
		errs = append(errs, fmt.Errorf("floor: server %d still running 10s after SIGTERM", f.pid()), f.cmd.Process.Kill())
	}
	return errors.Join(append(errs, os.RemoveAll(f.dir))...)
}

// Issue 16's targets, against the floor.
var (
	floorP50Target = atMost(1.05, "x")
	floorP99Target = atMost(1.3, "x")
	floorTPTarget  = atLeast(0.95, "x")
	floorCPUTarget = atMost(1.1, "x")
)

// floorRows adds the floor's start->end against bare, then idexd's
// against the floor's with issue 16's targets. idexd and floor share
// their bare samples (taken in the same turns), so idexd_i/floor_i are
// pairs too.
func (b *bench) floorRows(section string, idexd, fl *pairs) {
	b.t.section(section)
	rs := fl.ratios()
	for _, q := range []float64{50, 95, 99} {
		a, c := percentile(fl.idexd, q), percentile(fl.bare, q)
		b.t.add(row{
			name:  fmt.Sprintf("start->end p%.0f, floor", q),
			idexd: msText(a), bare: msText(c), ratio: ratioText(a, c),
			pairRatio: fmt.Sprintf("%.2fx", percentile(rs, q)),
		})
	}
	vs := pairs{idexd: idexd.idexd, bare: fl.idexd}
	rs = vs.ratios()
	for _, q := range []float64{50, 95, 99} {
		a, c := percentile(idexd.idexd, q), percentile(fl.idexd, q)
		r := row{
			name:  fmt.Sprintf("start->end p%.0f, idexd / floor", q),
			idexd: msText(a), bare: msText(c) + " (floor)", ratio: ratioText(a, c),
			pairRatio: fmt.Sprintf("%.2fx", percentile(rs, q)),
		}
		why := fmt.Sprintf("idexd %.2f ms, floor %.2f ms, bare %.2f ms.", a, c, percentile(fl.bare, q))
		switch q {
		case 50:
			b.t.check(&r, floorP50Target, a/c, why)
		case 99:
			b.t.check(&r, floorP99Target, a/c, why)
		}
		b.t.add(r)
	}
}

// cpuBeforeRows adds CPU per run of idexd against idexd-before's: CPU per
// run is far steadier than runs per second on a noisy machine, so a
// change's cost shows here first.
func (b *bench) cpuBeforeRows(idexd, bef *cpuMeter) {
	for _, f := range []struct {
		name string
		get  func(*cpuMeter) (float64, bool)
	}{{"CPU per run", (*cpuMeter).perRun}, {"server CPU per run", (*cpuMeter).serverPerRun}, {"all CPUs busy per run", (*cpuMeter).hostPerRun}} {
		a, okA := f.get(idexd)
		c, okC := f.get(bef)
		if !okA || !okC {
			continue
		}
		b.t.add(row{name: f.name + ", idexd / before", idexd: msText(a), bare: msText(c) + " (before)", ratio: ratioText(a, c)})
	}
}

// cpuRow adds CPU per run of idexd against the floor's, with issue 16's
// target, to the current section.
func (b *bench) cpuRow(idexd, fl *cpuMeter) {
	why := fmt.Sprintf("idexd: %s; floor: %s.", idexd.text(), fl.floorText())
	// The issue's own measure: the server and the run's processes, from
	// their accounting, the client left out.
	a, okA := idexd.serverPerRun()
	c, okC := fl.serverPerRun()
	if !okA || !okC {
		return
	}
	r := row{name: "server CPU per run, idexd / floor", idexd: msText(a), bare: msText(c) + " (floor)", ratio: ratioText(a, c)}
	b.t.check(&r, floorCPUTarget, a/c, why)
	b.t.add(r)
	// With the client: idexd's event stream costs its reader more than
	// the floor's one response does.
	a, _ = idexd.perRun()
	c, _ = fl.perRun()
	r = row{name: "CPU per run, idexd / floor", idexd: msText(a), bare: msText(c) + " (floor)", ratio: ratioText(a, c)}
	b.t.check(&r, floorCPUTarget, a/c, why)
	b.t.add(r)
	// All CPUs' busy time also counts the kernel's own workers (network
	// namespaces are torn down by a kworker), which no process is charged
	// for; on a busy machine it counts others' work too.
	a, okA = idexd.hostPerRun()
	c, okC = fl.hostPerRun()
	if !okA || !okC {
		return
	}
	r = row{name: "all CPUs busy per run, idexd / floor", idexd: msText(a), bare: msText(c) + " (floor)", ratio: ratioText(a, c)}
	b.t.check(&r, floorCPUTarget, a/c, why)
	b.t.add(r)
}
