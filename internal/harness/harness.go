// Package harness starts a real idexd from its binary, for e2e, the load
// test (internal/load, idexload) and the benchmark (internal/bench,
// idexbench): a configuration, directories, a socket and a cgroup parent of
// its own; stop, kill and restart; and a cleanup that leaves nothing behind.
// It is no test package (idexload and idexbench are programs), so it
// reports errors instead of failing a test.
package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/client"
)

// Config describes a throwaway idexd; the zero value of each field is a
// default that suits a test.
type Config struct {
	// Idexd is the built binary.
	Idexd string
	// Dir holds everything (socket, students, state, config, log); empty
	// makes a temporary one, removed by Cleanup.
	Dir string
	// StateDir overrides Dir/state (a tiny tmpfs, for a disk-full test).
	StateDir string
	// Students overrides Dir/students: one students' root shared by
	// several daemons, as EFS is between hosts.
	Students string
	// Name prefixes the cgroup parent (<Name>-<random>), default "idexd-harness".
	Name        string
	Host        string // default "harness"
	Interpreter string // default /usr/bin/python3
	MaxRuns     int    // default 256
	WarmRuns    int    // -1: 0 warm runs; 0: the daemon's default
	KeepEnded   string // default the daemon's (10m)
	// WarmKeep is how long helpers kept after a burst wait; default
	// "10s", not the daemon's 5m: the tests that look at the daemon at
	// rest expect its pool back at warm_runs soon after their load.
	// WarmKeepDefault leaves the daemon's own (and fits a build from
	// before warm_keep).
	WarmKeep string
	LogLevel string // default the daemon's (info)
	// NoStudentLimits turns off the per-student cap and start rate
	// (issue 12) for a load or a benchmark that starts one student's runs
	// far more often, and more at once, than a class does.
	NoStudentLimits bool
	// Extra is appended to the TOML configuration.
	Extra string
	// Degraded: Start waits only until health answers, not until it is ok
	// (a database that is down on purpose).
	Degraded bool
	// Pdeathsig is what idexd gets when its starter dies (default
	// SIGKILL; SIGTERM lets it drain).
	Pdeathsig syscall.Signal
}

// Daemon is one idexd started from its binary, as root with root as
// client and admin group, a cgroup parent of its own under the caller's
// cgroups, and everything else under Dir.
type Daemon struct {
	Dir, Socket, StateDir, Workdir, CgroupParent, Log, ConfigFile string
	// Conf is the configuration written, for reports.
	Conf string
	// Client talks to it.
	Client *client.Client

	bin       string
	args      []string
	pdeathsig syscall.Signal
	degraded  bool
	ownDir    bool
	proc      *Process
}

// Start writes the configuration, starts idexd and waits (30 s) until it
// answers health (is ok, unless Degraded).
func Start(ctx context.Context, c Config) (*Daemon, error) {
	d := &Daemon{Dir: c.Dir, bin: c.Idexd, pdeathsig: c.Pdeathsig, degraded: c.Degraded}
	if d.pdeathsig == 0 {
		d.pdeathsig = syscall.SIGKILL
	}
	if d.Dir == "" {
		// Not under /tmp: each run gets a private one, which would hide
		// the students' directories there.
		dir, err := os.MkdirTemp("/var/lib", "idexd-harness-")
		if err != nil {
			return nil, fmt.Errorf("daemon directory: %w", err)
		}
		d.Dir, d.ownDir = dir, true
	}
	// Students' uids must traverse it to reach their directories.
	if err := os.Chmod(d.Dir, 0o755); err != nil {
		return nil, d.failed(fmt.Errorf("chmod %s: %w", d.Dir, err))
	}
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, d.failed(fmt.Errorf("random cgroup parent: %w", err))
	}
	if c.Name == "" {
		c.Name = "idexd-harness"
	}
	d.CgroupParent = c.Name + "-" + hex.EncodeToString(b[:])
	d.Socket = filepath.Join(d.Dir, "idexd.sock")
	d.Workdir = c.Students
	if d.Workdir == "" {
		d.Workdir = filepath.Join(d.Dir, "students")
	}
	d.StateDir = c.StateDir
	if d.StateDir == "" {
		d.StateDir = filepath.Join(d.Dir, "state")
	}
	d.Log = filepath.Join(d.Dir, "idexd.log")
	d.Conf = config(c)
	d.ConfigFile = filepath.Join(d.Dir, "idexd.toml")
	if err := os.WriteFile(d.ConfigFile, []byte(d.Conf), 0o600); err != nil {
		return nil, d.failed(fmt.Errorf("write config: %w", err))
	}
	d.args = []string{"--config", d.ConfigFile, "--socket", d.Socket, "--workdir-root", d.Workdir,
		"--state-dir", d.StateDir, "--cgroup-parent", d.CgroupParent}
	d.Client = client.New(d.Socket)
	if err := d.start(ctx); err != nil {
		return nil, d.failed(err)
	}
	return d, nil
}

// WarmKeepDefault, as Config.WarmKeep, leaves warm_keep to the daemon.
const WarmKeepDefault = "default"

// config is the TOML of c.
func config(c Config) string {
	if c.Interpreter == "" {
		c.Interpreter = "/usr/bin/python3"
	}
	if c.MaxRuns == 0 {
		c.MaxRuns = 256
	}
	if c.Host == "" {
		c.Host = "harness"
	}
	conf := fmt.Sprintf("client_group = \"root\"\nadmin_group = \"root\"\nshutdown_grace = \"1s\"\ninterpreter = %q\nhost = %q\nmax_runs = %d\n",
		c.Interpreter, c.Host, c.MaxRuns)
	switch {
	case c.WarmRuns < 0:
		conf += "warm_runs = 0\n"
	case c.WarmRuns > 0:
		conf += fmt.Sprintf("warm_runs = %d\n", c.WarmRuns)
	}
	if c.KeepEnded != "" {
		conf += fmt.Sprintf("keep_ended = %q\n", c.KeepEnded)
	}
	switch c.WarmKeep {
	case WarmKeepDefault:
	case "":
		conf += "warm_keep = \"10s\"\n"
	default:
		conf += fmt.Sprintf("warm_keep = %q\n", c.WarmKeep)
	}
	if c.LogLevel != "" {
		conf += fmt.Sprintf("log_level = %q\n", c.LogLevel)
	}
	if c.NoStudentLimits {
		conf += "max_runs_per_student = 0\nstudent_starts_per_minute = 0\n"
	}
	return conf + c.Extra
}

func (d *Daemon) failed(err error) error {
	return errors.Join(err, d.Cleanup())
}

// start launches the binary and waits (30 s) for health.
func (d *Daemon) start(ctx context.Context) error {
	logf, err := os.OpenFile(d.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("daemon log: %w", err)
	}
	cmd := exec.Command(d.bin, d.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// idexd goes when its starter goes, however it goes.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: d.pdeathsig}
	d.proc, err = Launch(cmd)
	if cerr := logf.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("close daemon log: %w", cerr)
	}
	if err != nil {
		return err
	}
	defer d.Client.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if !d.proc.Running() {
			if err := d.proc.Err(); err != nil {
				return fmt.Errorf("idexd exited at start (%w): %s", err, d.LogTail(3000))
			}
			return fmt.Errorf("idexd exited at start with status 0: %s", d.LogTail(3000))
		}
		hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		h, err := d.Client.Health(hctx)
		cancel()
		if err == nil && (h.Status == api.HealthOK || d.degraded) {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("health is %s: %+v", h.Status, h.Checks)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("idexd not ready within 30s (%w): %s", err, d.LogTail(3000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Restart starts the same binary again on the same configuration, socket,
// state and cgroup parent (after Kill or Stop).
func (d *Daemon) Restart(ctx context.Context) error {
	if d.Running() {
		return errors.New("restart: idexd is still running")
	}
	return d.start(ctx)
}

// PID is the daemon's process id.
func (d *Daemon) PID() int { return d.proc.PID() }

// Running reports whether the daemon process has not exited.
func (d *Daemon) Running() bool { return d.proc != nil && d.proc.Running() }

// ExitErr is how the daemon exited (Wait's error; nil for status 0); it
// waits for the exit.
func (d *Daemon) ExitErr() error { return d.proc.Err() }

// Kill sends SIGKILL (a crash) and waits for the process to be gone.
func (d *Daemon) Kill() error {
	return d.Signal(syscall.SIGKILL, 10*time.Second)
}

// Stop sends SIGTERM and waits (60 s) for a clean exit.
func (d *Daemon) Stop() error {
	if err := d.Signal(syscall.SIGTERM, 60*time.Second); err != nil {
		return err
	}
	if err := d.proc.Err(); err != nil {
		return fmt.Errorf("idexd exit after SIGTERM: %w: %s", err, d.LogTail(3000))
	}
	return nil
}

// Signal sends sig and waits up to wait for the process to exit.
func (d *Daemon) Signal(sig syscall.Signal, wait time.Duration) error {
	if !d.Running() {
		return nil
	}
	if err := d.proc.Cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal idexd: %w", err)
	}
	select {
	case <-d.proc.Exited():
		return nil
	case <-time.After(wait):
		return fmt.Errorf("idexd did not exit within %s of %s", wait, sig)
	}
}

// Cleanup stops the daemon (SIGKILL if SIGTERM does not do), removes its
// cgroup parent and, when it made it, its directory.
func (d *Daemon) Cleanup() error {
	var errs []error
	if d.Running() {
		if err := d.Stop(); err != nil {
			errs = append(errs, err)
			if kerr := d.Kill(); kerr != nil {
				errs = append(errs, kerr)
			}
		}
	}
	if d.Client != nil {
		d.Client.CloseIdleConnections()
	}
	if d.CgroupParent != "" {
		// The caller sits in the daemon's cgroups (it is the daemon's
		// parent), so a Manager for the same relative parent names the
		// same groups. After a clean stop idexd removed them (New makes
		// the parent again, empty); after a crash they still hold
		// processes: kill them as the daemon's next start would.
		if m, err := cgroup.New(d.CgroupParent); err != nil {
			errs = append(errs, fmt.Errorf("find cgroup parent %s: %w", d.CgroupParent, err))
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := m.Sweep(ctx); err != nil {
				errs = append(errs, fmt.Errorf("sweep cgroup parent %s: %w", d.CgroupParent, err))
			}
			// RemoveParent also gives up the manager's lock on it.
			if err := m.RemoveParent(); err != nil {
				errs = append(errs, fmt.Errorf("remove cgroup parent %s: %w", d.CgroupParent, err))
			}
		}
	}
	if d.ownDir {
		if err := os.RemoveAll(d.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", d.Dir, err))
		}
	}
	return errors.Join(errs...)
}

// Logs is the daemon's whole log.
func (d *Daemon) Logs() (string, error) {
	b, err := os.ReadFile(d.Log)
	if err != nil {
		return "", fmt.Errorf("read idexd's log: %w", err)
	}
	return string(b), nil
}

// LogTail returns the last n bytes of the daemon's log.
func (d *Daemon) LogTail(n int) string {
	s, err := d.Logs()
	if err != nil {
		return fmt.Sprintf("(cannot read idexd's log: %v)", err)
	}
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return strings.TrimSpace(s)
}
