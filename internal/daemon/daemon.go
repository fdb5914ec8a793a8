// Package daemon wires idexd together and runs it under systemd: config,
// store, cgroups, crash recovery, the socket, READY/STATUS/WATCHDOG
// notifications, SIGHUP reloads and the drain on SIGTERM. It is main's
// body, kept out of package main so that main stays a few lines.
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
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	sd "github.com/coreos/go-systemd/v22/daemon"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/cgroup"
	"github.com/idexd/idexd/internal/config"
	"github.com/idexd/idexd/internal/lock"
	"github.com/idexd/idexd/internal/logging"
	"github.com/idexd/idexd/internal/metrics"
	"github.com/idexd/idexd/internal/pgstore"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/server"
	"github.com/idexd/idexd/internal/store"
	"github.com/idexd/idexd/internal/students"
	"github.com/idexd/idexd/internal/version"
)

// Main runs idexd until ctx ends (SIGTERM/SIGINT), then drains and
// returns nil on a clean shutdown.
func Main(ctx context.Context, args []string, logOut io.Writer) error {
	cfg, err := config.Load(args)
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
	return runDaemon(ctx, cfg, args, log, hup)
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

func runDaemon(ctx context.Context, cfg config.Config, args []string, log *slog.Logger, hup <-chan os.Signal) (err error) {
	log.Info("idexd starting", "version", version.Version, "socket", cfg.Socket, "workdir_root", cfg.WorkdirRoot,
		"state_dir", cfg.StateDir, "cgroup_parent", cfg.CgroupParent, "interpreter", cfg.Interpreter)
	if os.Geteuid() != 0 {
		return errors.New("idexd must run as root: it creates cgroups and starts runs as per-student uids")
	}
	clientGID, err := lookupGroup(cfg.ClientGroup)
	if err != nil {
		return fmt.Errorf("client group: %w", err)
	}
	adminGID, err := lookupGroup(cfg.AdminGroup)
	if err != nil {
		return fmt.Errorf("admin group: %w", err)
	}

	cg, err := cgroup.New(cfg.CgroupParent)
	if err != nil {
		return fmt.Errorf("cgroups: %w", err)
	}
	defer func() {
		if cerr := cg.Close(); cerr != nil {
			log.Warn("close cgroup manager", "err", cerr)
		}
	}()
	if missing := cg.Missing(); len(missing) > 0 {
		if !cfg.AllowUnlimited {
			return fmt.Errorf("cgroups: the controllers %v are not available under %s, so runs could not be limited: "+
				"give idexd a delegated subtree with them (systemd: Delegate=yes on a host with cgroup v2 controllers), "+
				"or set allow_unlimited = true to run without those limits", missing, cg.Parent())
		}
		log.Warn("runs are NOT limited by these cgroup controllers (allow_unlimited = true)", "missing", missing)
	}
	dirs := &students.Dirs{Root: cfg.WorkdirRoot, ClientGroup: clientGID}
	if err := dirs.EnsureRoot(); err != nil {
		return err
	}
	// The socket first: it proves no other idexd is live here, before the
	// sweep below kills what it takes for a dead instance's runs.
	ln, err := listener(cfg.Socket, clientGID, log)
	if err != nil {
		return err
	}
	defer func() {
		// Serve closes it on the normal path; on a start-up failure it is
		// closed here (a second Close is harmless and its error is moot).
		if err != nil {
			if cerr := ln.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
				log.Warn("close listener", "err", cerr)
			}
		}
	}()
	// A dead instance's runs: their processes die first, then, before the
	// store serves anything, their records end lost and their locks go.
	ids, err := cg.Sweep(ctx)
	if err != nil {
		// Runs may still start, each in a new group of its own.
		log.Error("kill leftover runs of a previous instance", "err", err)
	}
	if len(ids) > 0 {
		log.Warn("killed leftover runs of a previous instance", "count", len(ids), "groups", ids)
	}
	st, locker, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	// The store is closed on every path out from here, start-up failures
	// included.
	defer func() {
		if cerr := st.Close(); cerr != nil {
			log.Error("close store", "err", cerr)
			err = errors.Join(err, cerr)
		} else {
			log.Info("store closed", "store", st.Kind())
		}
	}()

	helper, err := sandboxHelper(log)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := helper.Close(); cerr != nil {
			log.Warn("close sandbox helper", "err", cerr)
		}
	}()

	stats, _ := locker.(lock.Stats)
	var eng *run.Engine
	var storeErrors func() int64
	if c, ok := st.(store.ErrorCounter); ok {
		storeErrors = c.Errors
	}
	met := metrics.New(metrics.Sources{
		Active:      func() int { return eng.Active() },
		LockCounts:  lockCounts(stats),
		StoreErrors: storeErrors,
		WarmStarts:  func() int64 { return eng.WarmStarts() },
	})
	eng, err = run.New(run.Config{
		Host: cfg.Host, Interpreter: cfg.Interpreter,
		Defaults: cfg.Defaults, Max: cfg.Max, MaxRuns: cfg.MaxRuns,
		UIDSource: cfg.UIDSource, UIDMin: cfg.UIDMin, UIDMax: cfg.UIDMax,
		KeepEnded: cfg.KeepEnded.Duration, KeepEndedBytes: cfg.KeepEndedMB << 20, WarmRuns: cfg.WarmRuns,
		Helper: helper, Log: log, Cgroups: cg, Dirs: dirs, Store: st, Locks: locker,
		Hooks: met.Hooks(),
	})
	if err != nil {
		return err
	}
	srvCfg := server.Config{
		Engine: eng, Store: st, Cgroups: cg, Log: log,
		ClientGID: clientGID, AdminGID: adminGID, Interpreter: cfg.Interpreter,
		Metrics: met.Handler(), Debug: cfg.DebugEndpoints, OnError: met.Refused,
	}
	if stats != nil {
		srvCfg.Locks = stats
	}
	srv := server.New(srvCfg)

	hs := srv.HTTPServer()
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	var metricsSrv *http.Server
	if cfg.MetricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", met.Handler())
		metricsSrv = &http.Server{Addr: cfg.MetricsAddr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := metricsSrv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics listener", "addr", cfg.MetricsAddr, "err", err)
			}
		}()
	}

	notify(log, sd.SdNotifyReady, "STATUS="+status(eng))
	log.Info("idexd ready", "socket", cfg.Socket, "cgroup_mode", cg.Mode(), "cgroup_parent", cg.Parent(), "store", st.Kind())

	var watchdog <-chan time.Time
	if iv, err := sd.SdWatchdogEnabled(false); err != nil {
		log.Warn("read watchdog settings", "err", err)
	} else if iv > 0 {
		t := time.NewTicker(iv / 2)
		defer t.Stop()
		watchdog = t.C
		log.Info("watchdog enabled", "ping_every", iv/2)
	}
	statusTick := time.NewTicker(5 * time.Second)
	defer statusTick.Stop()

	for running := true; running; {
		select {
		case <-ctx.Done():
			running = false
		case err := <-serveErr:
			return fmt.Errorf("serve %s: %w", cfg.Socket, err)
		case <-hup:
			reload(cfg, args, eng, log)
		case <-watchdog:
			if err := selfCheck(ctx, srv, cg, eng); err != nil {
				log.Error("watchdog self-check failed: not pinging", "err", err)
				continue
			}
			notify(log, sd.SdNotifyWatchdog)
		case <-statusTick.C:
			notify(log, "STATUS="+status(eng))
		}
	}

	log.Info("shutting down", "runs_active", eng.Active(), "grace", cfg.ShutdownGrace.Duration)
	notify(log, sd.SdNotifyStopping, "STATUS=draining, "+strconv.Itoa(eng.Active())+" runs left")
	shutCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace.Duration+30*time.Second)
	defer cancel()
	var errs []error
	if err := eng.Shutdown(shutCtx, cfg.ShutdownGrace.Duration); err != nil {
		errs = append(errs, err)
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

func lockCounts(s interface{ Counts() (int64, int64) }) func() (int64, int64) {
	if s == nil {
		return nil
	}
	return s.Counts
}

// maxPendingEnds bounds the run ends kept in memory while the store is
// down; older ones go to the spill file at once.
const maxPendingEnds = 10000

// openStore opens the store and ends, before it serves anything, the runs
// a previous instance of this host left running (their cgroups were swept
// already). PostgreSQL may be unreachable: then idexd starts anyway and
// the store opens, and recovers, once it answers (pgstore.Lazy).
func openStore(ctx context.Context, cfg config.Config, log *slog.Logger) (store.Store, lock.Locker, error) {
	var st store.Store
	var locker lock.Locker
	if cfg.DatabaseURL != "" {
		lz := pgstore.OpenLazy(ctx, pgstore.LazyConfig{
			URL: cfg.DatabaseURL, Host: cfg.Host, LeaseTTL: cfg.LeaseTTL.Duration, Log: log,
			Recover: func(ctx context.Context, s *pgstore.Store, lk *pgstore.Locker) error {
				return recoverRecords(ctx, cfg.Host, s, lk.ReleaseHost, log)
			},
		})
		st, locker = lz, lz
	} else {
		sq, err := store.OpenSQLite(ctx, cfg.StateDir)
		if err != nil {
			return nil, nil, fmt.Errorf("open store: %w", err)
		}
		if err := recoverRecords(ctx, cfg.Host, sq, nil, log); err != nil {
			// They stay running in the history until the next start.
			log.Error("recover records of a previous instance", "err", err)
		}
		st, locker = sq, lock.NewTable()
	}
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		return nil, nil, errors.Join(fmt.Errorf("create state dir %s: %w", cfg.StateDir, err), st.Close())
	}
	q, err := store.NewQueued(st, filepath.Join(cfg.StateDir, "pending-ends.jsonl"), maxPendingEnds, log)
	if err != nil {
		return nil, nil, errors.Join(err, st.Close())
	}
	return q, locker, nil
}

// listener prefers the socket systemd passes (socket activation).
func listener(path string, clientGID uint32, log *slog.Logger) (net.Listener, error) {
	ls, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("sockets from systemd: %w", err)
	}
	for _, l := range ls {
		if l != nil && l.Addr().Network() == "unix" {
			log.Info("using the socket systemd passed", "addr", l.Addr().String())
			return l, nil
		}
	}
	return server.Listen(path, clientGID)
}

// recoverRecords ends this host's runs left running as lost and, with
// release (shared leases), frees the locks they held.
func recoverRecords(ctx context.Context, host string, st store.Store, release func(context.Context, string) (int, error), log *slog.Logger) error {
	var errs []error
	if release != nil {
		n, err := release(ctx, host)
		if err != nil {
			errs = append(errs, fmt.Errorf("release leases of host %s: %w", host, err))
		} else if n > 0 {
			log.Warn("released leases of a previous instance", "count", n)
		}
	}
	runs, err := st.ListRuns(ctx, store.RunFilter{State: api.StateRunning, Host: host})
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list runs left running: %w", err))...)
	}
	now := time.Now().UTC()
	for i := range runs {
		r := &runs[i]
		r.State, r.Reason, r.EndedAt = api.StateEnded, api.ReasonLost, &now
		r.WallMS = now.Sub(r.StartedAt).Milliseconds()
		r.Error = "idexd stopped while this run was running; its processes were killed at the next start"
		if err := st.RecordEnd(ctx, r); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Warn("run lost", "run", r.ID, "student", r.Student)
	}
	return errors.Join(errs...)
}

// selfCheck is what the watchdog proves before each ping: the engine
// answers, the cgroup parent is writable, and no debug hang is set.
func selfCheck(ctx context.Context, srv *server.Server, cg *cgroup.Manager, eng *run.Engine) error {
	if srv.Hung() {
		return errors.New("debug hang requested")
	}
	done := make(chan struct{})
	go func() {
		eng.Active()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		return errors.New("run engine did not answer within 5s")
	case <-ctx.Done():
		return ctx.Err()
	}
	return cg.Check()
}

func status(eng *run.Engine) string {
	n := eng.Active()
	if eng.Draining() {
		return fmt.Sprintf("draining, %d runs left", n)
	}
	return fmt.Sprintf("%d runs, accepting", n)
}

func reload(cfg config.Config, args []string, eng *run.Engine, log *slog.Logger) {
	notify(log, "RELOADING=1")
	defer notify(log, sd.SdNotifyReady, "STATUS="+status(eng))
	next, err := config.Load(args)
	if err != nil {
		log.Error("reload: configuration refused, keeping the current one", "err", err)
		return
	}
	eng.SetLimits(next.Defaults, next.Max)
	if next.Socket != cfg.Socket || next.DatabaseURL != cfg.DatabaseURL || next.CgroupParent != cfg.CgroupParent {
		log.Warn("reload: only limits are reloaded; restart idexd for socket, database or cgroup changes")
	}
	log.Info("reloaded limits", "defaults", next.Defaults, "max", next.Max)
}

func notify(log *slog.Logger, states ...string) {
	for _, s := range states {
		if _, err := sd.SdNotify(false, s); err != nil {
			log.Warn("notify systemd", "state", s, "err", err)
		}
	}
}
