package load

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/client"
)

// DaemonConfig describes a throwaway idexd.
type DaemonConfig struct {
	// Idexd is the built binary.
	Idexd string
	// Dir holds everything (socket, students, state, config, log); empty
	// makes a temporary one, removed by Cleanup.
	Dir string
	// StateDir overrides Dir/state (a tiny tmpfs, for the disk-full test).
	StateDir    string
	Interpreter string // default /usr/bin/python3
	MaxRuns     int    // default 256
	WarmRuns    int    // -1: 0 warm runs; 0: the daemon's default
	KeepEnded   string // default the daemon's (10m)
	// Extra is appended to the TOML configuration.
	Extra string
}

// Daemon is an idexd started from its binary with a configuration of its
// own, as e2e does: client and admin group root, a cgroup parent of its
// own under the caller's cgroups, everything else under Dir.
type Daemon struct {
	Dir, Socket, StateDir, Workdir, CgroupParent, Log string
	args                                              []string
	ownDir                                            bool
	cmd                                               *exec.Cmd
	exited                                            chan struct{}
	waitErr                                           error
}

// StartDaemon writes the configuration, starts idexd and waits until it
// answers health.
func StartDaemon(ctx context.Context, c DaemonConfig) (*Daemon, error) {
	d := &Daemon{Dir: c.Dir}
	if d.Dir == "" {
		// Not under /tmp: each run gets a private one, which would hide the
		// students' directories there.
		dir, err := os.MkdirTemp("/var/lib", "idexload-")
		if err != nil {
			return nil, fmt.Errorf("daemon directory: %w", err)
		}
		d.Dir, d.ownDir = dir, true
	}
	// Students' uids must traverse it to reach their directories.
	if err := os.Chmod(d.Dir, 0o755); err != nil {
		return nil, d.failed(fmt.Errorf("chmod %s: %w", d.Dir, err))
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, d.failed(fmt.Errorf("random cgroup parent: %w", err))
	}
	d.Socket = filepath.Join(d.Dir, "idexd.sock")
	d.Workdir = filepath.Join(d.Dir, "students")
	d.StateDir = c.StateDir
	if d.StateDir == "" {
		d.StateDir = filepath.Join(d.Dir, "state")
	}
	d.CgroupParent = "idexload-" + hex.EncodeToString(b[:])
	d.Log = filepath.Join(d.Dir, "idexd.log")
	if c.Interpreter == "" {
		c.Interpreter = "/usr/bin/python3"
	}
	if c.MaxRuns == 0 {
		c.MaxRuns = 256
	}
	conf := fmt.Sprintf("client_group = \"root\"\nadmin_group = \"root\"\nshutdown_grace = \"1s\"\ninterpreter = %q\nhost = \"idexload\"\nmax_runs = %d\n",
		c.Interpreter, c.MaxRuns)
	switch {
	case c.WarmRuns < 0:
		conf += "warm_runs = 0\n"
	case c.WarmRuns > 0:
		conf += fmt.Sprintf("warm_runs = %d\n", c.WarmRuns)
	}
	if c.KeepEnded != "" {
		conf += fmt.Sprintf("keep_ended = %q\n", c.KeepEnded)
	}
	conf += c.Extra
	cfgPath := filepath.Join(d.Dir, "idexd.toml")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o600); err != nil {
		return nil, d.failed(fmt.Errorf("write config: %w", err))
	}
	d.args = []string{"--config", cfgPath, "--socket", d.Socket, "--workdir-root", d.Workdir,
		"--state-dir", d.StateDir, "--cgroup-parent", d.CgroupParent}
	if err := d.start(ctx, c.Idexd); err != nil {
		return nil, d.failed(err)
	}
	return d, nil
}

func (d *Daemon) failed(err error) error {
	return errors.Join(err, d.Cleanup())
}

// start launches the binary and waits (30 s) for health to answer.
func (d *Daemon) start(ctx context.Context, bin string) error {
	logf, err := os.OpenFile(d.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("daemon log: %w", err)
	}
	d.cmd = exec.Command(bin, d.args...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	// idexd goes when its starter goes, however it goes.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	d.exited = make(chan struct{})
	started := make(chan error, 1)
	// The parent-death signal follows the thread that forked the child,
	// so that thread starts it and waits for it, locked.
	go func() {
		runtime.LockOSThread()
		if err := d.cmd.Start(); err != nil {
			started <- fmt.Errorf("start %s: %w", bin, err)
			close(d.exited)
			return
		}
		started <- nil
		d.waitErr = d.cmd.Wait()
		close(d.exited)
	}()
	err = <-started
	if cerr := logf.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("close daemon log: %w", cerr)
	}
	if err != nil {
		return err
	}
	c := &client.Client{Socket: d.Socket, MaxIdleConns: 1}
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-d.exited:
			if d.waitErr == nil {
				return fmt.Errorf("idexd exited at start with status 0: %s", d.LogTail(3000))
			}
			return fmt.Errorf("idexd exited at start (%w): %s", d.waitErr, d.LogTail(3000))
		default:
		}
		hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := c.Health(hctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("idexd does not answer health within 30s (%w): %s", err, d.LogTail(3000))
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
	return d.start(ctx, d.cmd.Path)
}

// PID is the daemon's process id.
func (d *Daemon) PID() int { return d.cmd.Process.Pid }

// Running reports whether the daemon process has not exited.
func (d *Daemon) Running() bool {
	if d.exited == nil {
		return false
	}
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// Kill sends SIGKILL (a crash) and waits for the process to be gone.
func (d *Daemon) Kill() error {
	return d.signal(syscall.SIGKILL, 10*time.Second)
}

// Stop sends SIGTERM and waits (60 s) for a clean exit.
func (d *Daemon) Stop() error {
	if err := d.signal(syscall.SIGTERM, 60*time.Second); err != nil {
		return err
	}
	if d.waitErr != nil {
		return fmt.Errorf("idexd exit after SIGTERM: %w: %s", d.waitErr, d.LogTail(3000))
	}
	return nil
}

func (d *Daemon) signal(sig syscall.Signal, wait time.Duration) error {
	if !d.Running() {
		return nil
	}
	if err := d.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal idexd: %w", err)
	}
	select {
	case <-d.exited:
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
	if d.CgroupParent != "" {
		// The caller sits in the daemon's cgroups (it is the daemon's
		// parent), so a Manager for the same relative parent names the
		// same groups. New creates it if it is missing; then it is empty.
		// After a crash the run groups still hold processes: kill them
		// as the daemon's next start would.
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

// LogTail returns the last n bytes of the daemon's log.
func (d *Daemon) LogTail(n int) string {
	b, err := os.ReadFile(d.Log)
	if err != nil {
		return fmt.Sprintf("(cannot read idexd's log: %v)", err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}
