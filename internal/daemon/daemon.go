// Package daemon wires idexd together and runs it under systemd: config,
// store, cgroups, crash recovery, the socket, READY/STATUS/WATCHDOG
// notifications, SIGHUP reloads and the drain on SIGTERM. It is main's
// body, kept out of package main so that main stays a few lines.
//
// A Daemon has three steps, each with its own exits: New builds every
// part in order (and on any failure closes what it built), Run serves
// until its context ends or serving fails, and drains the runs either way,
// and Close gives back what New took, in reverse order.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"os/user"
	"strconv"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/config"
	"github.com/idexd/idexd/internal/files"
	"github.com/idexd/idexd/internal/lock"
	"github.com/idexd/idexd/internal/logging"
	"github.com/idexd/idexd/internal/metrics"
	"github.com/idexd/idexd/internal/quota"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/sandbox/inside"
	"github.com/idexd/idexd/internal/server"
	"github.com/idexd/idexd/internal/store"
	"github.com/idexd/idexd/internal/students"
	"github.com/idexd/idexd/internal/sysmon"
	"github.com/idexd/idexd/internal/version"
)

// Main runs idexd until ctx ends (SIGTERM/SIGINT), then drains and
// returns nil on a clean shutdown, a stop during start-up included. The
// log goes to logOut; --version and --check-config answer on stdout.
func Main(ctx context.Context, args []string, stdout, logOut io.Writer) error {
	cfg, action, err := config.LoadAction(args, logOut)
	switch action {
	case config.ActionHelp:
		return nil
	case config.ActionVersion:
		_, err := fmt.Fprintln(stdout, "idexd", version.Version)
		return err
	case config.ActionCheckConfig:
		return checkConfig(ctx, cfg, err, stdout)
	}
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return fmt.Errorf("log level %q: %w", cfg.LogLevel, err)
	}
	log := logging.New(level, logOut)
	// Registered before anything slow, so a SIGHUP during start-up is not
	// the default action (exit).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	d, err := New(ctx, cfg, Options{Log: log, Args: args, Hup: hup})
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			log.Info("stopped during start-up")
			return nil
		}
		return err
	}
	return errors.Join(d.Run(ctx), d.Close())
}

// Options vary a Daemon; the zero value (but for Log) is production.
type Options struct {
	Log *slog.Logger
	// Args are read again on SIGHUP (config.Load), for the limits.
	Args []string
	// Hup delivers reload requests; nil: none.
	Hup <-chan os.Signal
	// Listener, if set, is served instead of a socket systemd passes or
	// cfg.Socket (tests).
	Listener net.Listener
	// Notify tells systemd a state; nil: sd_notify.
	Notify func(state string) error
}

// Daemon is one idexd: its parts, from New to Close.
type Daemon struct {
	cfg  config.Config
	opts Options
	log  *slog.Logger

	cg     *cgroup.Manager
	st     *store.Queued
	locker lock.Locker
	eng    *run.Engine
	srv    *server.Server
	met    *metrics.Metrics
	ln     net.Listener

	// closers give back what New took, run last to first by Close.
	closers []func() error
	// drained is set once Run has ended every run: the cgroup parent is
	// then empty and goes with Close.
	drained bool
}

func lookupGroup(name string) (uint32, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("group %q: %w (create it with `groupadd --system %s`, or name another in the config)", name, err, name)
	}
	gid, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("group %q has gid %q: %w", name, g.Gid, err)
	}
	return uint32(gid), nil
}

// New builds the daemon: groups, cgroups, the socket (which proves no
// other idexd is live here), the sweep of a dead instance's runs, the
// store (recovered before it serves), the sandbox helper, the engine and
// the server. It serves nothing yet. On an error, or when ctx ends first,
// it closes what it built and returns why.
func New(ctx context.Context, cfg config.Config, opts Options) (_ *Daemon, err error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	log := opts.Log
	d := &Daemon{cfg: cfg, opts: opts, log: log}
	defer func() {
		if err != nil {
			err = errors.Join(err, d.Close())
		}
	}()
	log.Info("idexd starting", "version", version.Version, "socket", cfg.Socket, "workdir_root", cfg.WorkdirRoot,
		"state_dir", cfg.StateDir, "cgroup_parent", cfg.CgroupParent, "interpreter", cfg.Interpreter)
	if os.Geteuid() != 0 {
		return nil, errors.New("idexd must run as root: it creates cgroups and starts runs as per-student uids")
	}
	clientGID, err := lookupGroup(cfg.ClientGroup)
	if err != nil {
		return nil, fmt.Errorf("client group: %w", err)
	}
	adminGID, err := lookupGroup(cfg.AdminGroup)
	if err != nil {
		return nil, fmt.Errorf("admin group: %w", err)
	}
	if err := checkUIDRange(cfg, log); err != nil {
		return nil, err
	}
	if d.cg, err = cgroup.New(cfg.CgroupParent); err != nil {
		return nil, fmt.Errorf("cgroups: %w", err)
	}
	d.closers = append(d.closers, d.closeCgroups)
	d.cg.SetStudentTotals(cgroup.Limits{MemoryBytes: cfg.StudentMemoryMB << 20, Pids: cfg.StudentPids})
	if missing := d.cg.Missing(); len(missing) > 0 {
		if !cfg.AllowUnlimited {
			return nil, fmt.Errorf("cgroups: the controllers %v are not available under %s, so runs could not be limited: "+
				"give idexd a delegated subtree with them (systemd: Delegate=yes on a host with cgroup v2 controllers), "+
				"or set allow_unlimited = true to run without those limits", missing, d.cg.Parent())
		}
		log.Warn("runs are NOT limited by these cgroup controllers (allow_unlimited = true)", "missing", missing)
	}
	dirs := &students.Dirs{Root: cfg.WorkdirRoot, ClientGroup: clientGID, Layout: students.Layout(cfg.WorkdirLayout)}
	if err := dirs.EnsureRoot(); err != nil {
		return nil, err
	}
	quotas, err := quota.New(quota.Config{Root: cfg.WorkdirRoot, Log: log,
		Limits: quota.Limits{Bytes: cfg.QuotaMB << 20, Files: cfg.QuotaFiles}})
	if err != nil {
		return nil, err
	}
	// Closed after the engine: it waits for the measurements that the
	// last runs' ends started.
	d.closers = append(d.closers, quotas.Close)
	dirs.Quota = quotas
	log.Info("disk quotas", "quota_mb", cfg.QuotaMB, "quota_files", cfg.QuotaFiles, "enforced_by", quotas.EnforcedBy(),
		"status", quotas.Status(), "workdir_layout", cfg.WorkdirLayout)
	// The socket first: it proves no other idexd is live here, before the
	// sweep below kills what it takes for a dead instance's runs.
	if d.ln, err = d.listen(clientGID); err != nil {
		return nil, err
	}
	d.closers = append(d.closers, func() error {
		// Serve closes it on the normal path; a second Close is harmless.
		if err := d.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("close listener: %w", err)
		}
		return nil
	})
	// A dead instance's runs: their processes die first, then, before the
	// store serves anything, their records end lost and their locks go.
	ids, err := d.cg.Sweep(ctx)
	if err != nil {
		// Runs may still start, each in a new group of its own.
		log.Error("kill leftover runs of a previous instance", "err", err)
	}
	if len(ids) > 0 {
		log.Warn("killed leftover runs of a previous instance", "count", len(ids), "groups", ids)
	}
	if d.st, d.locker, err = openStore(ctx, cfg, dirs, log); err != nil {
		return nil, err
	}
	d.closers = append(d.closers, func() error {
		if err := d.st.Close(); err != nil {
			return fmt.Errorf("close store: %w", err)
		}
		log.Info("store closed", "store", d.st.Kind())
		return nil
	})
	helper, err := sandboxHelper(log)
	if err != nil {
		return nil, err
	}
	d.closers = append(d.closers, helper.Close)
	if cfg.Network == config.NetworkHost {
		log.Warn("runs share the host's network (network = \"host\"): a student's program can reach every local service and the instance metadata service")
	}

	// Closed after the engine's shutdown (closers run last first): no run
	// holds it then.
	quiet, err := sysmon.New(time.Second)
	if err != nil {
		return nil, err
	}
	d.closers = append(d.closers, quiet.Close)
	d.met = metrics.New()
	hooks := d.met.Hooks()
	hooks.Ended = quotas.AfterRuns(hooks.Ended, dirs.Workdir)
	d.eng, err = run.New(run.Config{
		Host: cfg.Host, Interpreter: cfg.Interpreter,
		Defaults: cfg.Defaults, Max: cfg.Max, MaxRuns: cfg.MaxRuns,
		UIDSource: cfg.UIDSource, UIDMin: cfg.UIDMin, UIDMax: cfg.UIDMax,
		KeepEnded: cfg.KeepEnded.Duration, KeepEndedBytes: cfg.KeepEndedMB << 20, WarmRuns: cfg.WarmRuns,
		WarmKeep:  cfg.WarmKeep.Duration,
		InputWait: time.Duration(cfg.InputWaitSeconds) * time.Second,
		Helper:    helper, Quiet: quiet, Log: log, Cgroups: d.cg, Dirs: dirs, Store: d.st, Locks: d.locker,
		Hooks: hooks, Umask: runUmask(dirs), AdmitStudent: quotas.Admit, HealthChecks: quotas.HealthChecks,
		Setup: inside.Setup{Network: inside.Network(cfg.Network), TmpBytes: cfg.TmpMB << 20},
		Fair: run.Fair{MaxPerStudent: cfg.MaxRunsPerStudent, StartsPerMinute: cfg.StudentStartsPerMinute,
			MaxWait: time.Duration(cfg.MaxWaitSeconds) * time.Second, QueueMax: cfg.QueueMax},
	})
	if err != nil {
		return nil, err
	}
	log.Info("fair share between students", "settings", fairText(cfg))
	// Discards the warm helpers; after Run's drain there is nothing left.
	d.closers = append(d.closers, func() error { return d.eng.Shutdown(context.Background(), 0) })
	src := metrics.Sources{Active: d.eng.Active, WarmStarts: d.eng.WarmStarts, HelpersReused: d.eng.HelpersReused, Networks: d.eng.Networks, WarmCgroups: d.cg.WarmGroupCounts, StoreErrors: d.st.Errors, Queue: d.eng.Queue}
	if stats, ok := d.locker.(lock.Stats); ok {
		src.LockCounts, src.LocksLost = stats.Counts, stats.Lost
	}
	d.met.Watch(src)
	fileSvc, err := files.New(files.Config{Students: d.eng, Dirs: dirs, MaxBytes: cfg.FileMaxMB << 20, Quota: quotas, Log: log})
	if err != nil {
		return nil, err
	}
	// Closed first: Run has shut the API server down, no request is left.
	d.closers = append(d.closers, func() error { fileSvc.Close(); return nil })
	d.srv = server.New(server.Config{
		Engine: d.eng, Files: fileSvc, Log: log, ClientGID: clientGID, AdminGID: adminGID,
		Metrics: d.met.Handler(), Debug: cfg.DebugEndpoints, OnError: d.met.Refused,
	})
	// A stop asked for during start-up is honoured before serving.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("start-up: %w", err)
	}
	return d, nil
}

// listen prefers the listener of Options, then the socket systemd passes
// (socket activation), then cfg.Socket.
func (d *Daemon) listen(clientGID uint32) (net.Listener, error) {
	if d.opts.Listener != nil {
		return d.opts.Listener, nil
	}
	ls, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("sockets from systemd: %w", err)
	}
	for _, l := range ls {
		if l != nil && l.Addr().Network() == "unix" {
			d.log.Info("using the socket systemd passed", "addr", l.Addr().String())
			return l, nil
		}
	}
	return server.Listen(d.cfg.Socket, clientGID)
}

// Run serves until ctx ends (SIGTERM) or serving fails, then drains: new
// runs are refused, running ones get shutdown_grace, then end shutdown.
// It returns nil after a clean drain, else what went wrong.
func (d *Daemon) Run(ctx context.Context) error {
	cfg, log := d.cfg, d.log
	hs := d.srv.HTTPServer()
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(d.ln) }()
	var metricsSrv *http.Server
	if cfg.MetricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", d.met.Handler())
		metricsSrv = &http.Server{Addr: cfg.MetricsAddr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := metricsSrv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics listener", "addr", cfg.MetricsAddr, "err", err)
			}
		}()
	}
	sd := d.systemd()
	sd.ready()
	log.Info("idexd ready", "socket", cfg.Socket, "cgroup_mode", d.cg.Mode(), "cgroup_parent", d.cg.Parent(), "store", d.st.Kind())
	watchdog, stopWatchdog := sd.watchdog()
	defer stopWatchdog()
	statusTick := time.NewTicker(5 * time.Second)
	defer statusTick.Stop()

	var errs []error
	for running := true; running; {
		select {
		case <-ctx.Done():
			running = false
		case err := <-serveErr:
			// The runs are drained all the same: left to the parent-death
			// signal they would be recorded lost at the next start.
			log.Error("serving failed: draining", "socket", cfg.Socket, "err", err)
			errs = append(errs, fmt.Errorf("serve %s: %w", cfg.Socket, err))
			running = false
		case <-d.opts.Hup:
			sd.reloading()
			d.reload()
			sd.ready()
		case <-watchdog:
			if err := d.selfCheck(ctx); err != nil {
				log.Error("watchdog self-check failed: not pinging", "err", err)
				continue
			}
			sd.ping()
		case <-statusTick.C:
			sd.status()
		}
	}

	eng := d.eng
	log.Info("shutting down", "runs_active", eng.Active(), "grace", cfg.ShutdownGrace.Duration)
	sd.stopping()
	shutCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace.Duration+30*time.Second)
	defer cancel()
	if err := eng.Shutdown(shutCtx, cfg.ShutdownGrace.Duration); err != nil {
		errs = append(errs, err)
	} else {
		d.drained = true
	}
	if err := hs.Shutdown(shutCtx); err != nil {
		errs = append(errs, fmt.Errorf("close API server: %w", err))
	}
	if metricsSrv != nil {
		if err := metricsSrv.Shutdown(shutCtx); err != nil {
			errs = append(errs, fmt.Errorf("close metrics server: %w", err))
		}
	}
	log.Info("idexd stopped")
	return errors.Join(errs...)
}

// Close gives back what New took, last first: the engine's warm helpers,
// the sandbox helper, the store (its pool), the socket, and the cgroup
// parent, which is removed when Run drained every run (a clean stop
// leaves no empty group behind). Every step runs; their errors are joined.
func (d *Daemon) Close() error {
	var errs []error
	for i := len(d.closers) - 1; i >= 0; i-- {
		if err := d.closers[i](); err != nil {
			d.log.Error("close", "err", err)
			errs = append(errs, err)
		}
	}
	d.closers = nil
	return errors.Join(errs...)
}

// runUmask is what the layout needs of runs (see run.Config.Umask).
func runUmask(dirs *students.Dirs) uint32 {
	if dirs.Shared() {
		return 0o007
	}
	return 0o077
}

func (d *Daemon) closeCgroups() error {
	if !d.drained {
		// Runs may be left (a failed drain): their groups stay for the
		// next start's sweep.
		return d.cg.Close()
	}
	if err := d.cg.RemoveParent(); err != nil {
		return fmt.Errorf("remove cgroup parent: %w", err)
	}
	return nil
}

// selfCheck is what the watchdog proves before each ping: no debug hang
// is set, and the engine's Health (the one /v1/health answers) comes back
// within 5 s with the cgroup parent writable. A store that is down does
// not stop the pings: a restart would not bring it back.
func (d *Daemon) selfCheck(ctx context.Context) error {
	if d.srv.Hung() {
		return errors.New("debug hang requested")
	}
	done := make(chan api.Health, 1)
	go func() { done <- d.eng.Health(ctx) }()
	select {
	case h := <-done:
		for _, c := range h.Checks {
			if c.Name == run.CheckCgroupParent && !c.OK {
				return fmt.Errorf("health check %s: %s", c.Name, c.Message)
			}
		}
		return nil
	case <-time.After(5 * time.Second):
		return errors.New("run engine did not answer health within 5s")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reload applies the limits of the configuration read again (SIGHUP).
func (d *Daemon) reload() {
	next, err := config.Load(d.opts.Args)
	if err != nil {
		d.log.Error("reload: configuration refused, keeping the current one", "err", err)
		return
	}
	d.eng.SetLimits(next.Defaults, next.Max)
	if next.Socket != d.cfg.Socket || next.DatabaseURL != d.cfg.DatabaseURL || next.CgroupParent != d.cfg.CgroupParent {
		d.log.Warn("reload: only limits are reloaded; restart idexd for socket, database or cgroup changes")
	}
	if fairText(next) != fairText(d.cfg) {
		d.log.Warn("reload: the fair-share settings are not reloaded; restart idexd for them", "now", fairText(d.cfg), "file", fairText(next))
	}
	d.log.Info("reloaded limits", "defaults", limitsText(next.Defaults), "max", limitsText(next.Max))
}
