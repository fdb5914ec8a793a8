// Package config loads idexd's configuration once at start-up: built-in
// defaults, then the TOML file given by --config, then flags that were set
// explicitly. Validate rejects a bad configuration before anything starts,
// so that the daemon never runs half-configured.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/sandbox/inside"
	"github.com/idexd/idexd/internal/students"
)

// Networks a run may get.
const (
	NetworkNone = string(inside.NetworkNone)
	NetworkHost = string(inside.NetworkHost)
)

// Duration is a time.Duration that reads "30s" from TOML.
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler for TOML.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("parse duration %q: %w", b, err)
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Config is everything idexd is told. Field names are the TOML keys.
type Config struct {
	Socket       string `toml:"socket"`
	WorkdirRoot  string `toml:"workdir_root"`
	StateDir     string `toml:"state_dir"`
	CgroupParent string `toml:"cgroup_parent"`
	// Interpreter is an absolute path: a PATH lookup may find a slow
	// version-manager shim (see README).
	Interpreter string `toml:"interpreter"`
	ClientGroup string `toml:"client_group"`
	AdminGroup  string `toml:"admin_group"`
	UIDSource   string `toml:"uid_source"`
	UIDMin      uint32 `toml:"uid_min"`
	UIDMax      uint32 `toml:"uid_max"`
	// DatabaseURL selects PostgreSQL; empty means the embedded SQLite store.
	// It is never accepted as a flag so that it never shows in ps.
	DatabaseURL string `toml:"database_url"`
	Host        string `toml:"host"`
	// LeaseTTL is how long a PostgreSQL execution lease outlives a host
	// that stopped renewing it (a crash): then another host may take it.
	LeaseTTL Duration `toml:"lease_ttl"`
	// MaxRuns is how many runs may be live at once on this host.
	MaxRuns int `toml:"max_runs"`
	// WarmRuns is how many helpers wait, already in their cgroups, for the
	// next runs: it takes the slow cgroup move off the start path.
	WarmRuns int `toml:"warm_runs"`
	// WarmKeep is how long the helpers a burst leaves beyond warm_runs
	// wait for the next runs before they end (hybrid hosts, where a
	// helper serves many runs).
	WarmKeep Duration `toml:"warm_keep"`
	// MaxRunsPerStudent caps one student's runs, running or waiting in the
	// admission queue (student_busy); 0: no cap.
	MaxRunsPerStudent int `toml:"max_runs_per_student"`
	// StudentStartsPerMinute is each student's start rate, a token bucket
	// that holds this many starts (rate_limited); 0: no limit.
	StudentStartsPerMinute int `toml:"student_starts_per_minute"`
	// MaxWaitSeconds caps how long a start may wait for a free slot in the
	// admission queue when the host runs max_runs (its wait_seconds); 0:
	// no queue.
	MaxWaitSeconds int `toml:"max_wait_seconds"`
	// QueueMax is how many starts may wait in the queue at once.
	QueueMax int `toml:"queue_max"`
	// StudentMemoryMB and StudentPids bound all of a student's runs
	// together, in the student's cgroup; 0: no bound. They need warm_runs
	// = 0: a warm helper's group is not under the student's.
	StudentMemoryMB int64 `toml:"student_memory_mb"`
	StudentPids     int64 `toml:"student_pids"`
	// ShutdownGrace is how long running runs may go on after SIGTERM.
	ShutdownGrace Duration `toml:"shutdown_grace"`
	// KeepEnded is how long an ended run's events stay in memory for late readers.
	KeepEnded Duration `toml:"keep_ended"`
	// InputWaitSeconds ends a program that waits for input longer than
	// this (input_timeout); the wall limit does not count such waits.
	InputWaitSeconds int `toml:"input_wait_seconds"`
	// KeepEndedMB bounds the memory ended runs' events hold together.
	KeepEndedMB int64      `toml:"keep_ended_mb"`
	Defaults    api.Limits `toml:"defaults"`
	Max         api.Limits `toml:"max"`
	LogLevel    string     `toml:"log_level"`
	// MetricsAddr, when set, also serves /metrics on this TCP address.
	MetricsAddr string `toml:"metrics_addr"`
	// AllowUnlimited lets idexd run on a cgroup v2 host that gives it no
	// memory/pids/cpu controllers (a container, like systemd-nspawn): runs
	// are then tracked and killed by cgroup but not limited. Off, idexd
	// refuses to start there rather than run students' code unbounded.
	AllowUnlimited bool `toml:"allow_unlimited"`
	// Network is what network a run gets: "none" (its own network
	// namespace with only lo) or "host" (the host's, the instance metadata
	// service included: for a course that needs the internet).
	Network string `toml:"network"`
	// TmpMB caps each of a run's private /tmp, /var/tmp and /dev/shm; what
	// a run writes there also counts against its memory limit.
	TmpMB int64 `toml:"tmp_mb"`
	// DebugEndpoints enables POST /v1/debug/hang, which makes the watchdog
	// self-check fail: for testing systemd's watchdog, never in production.
	DebugEndpoints bool `toml:"debug_endpoints"`
	// WorkdirLayout is "private" (each student's directory 0700, the web
	// tier goes through the file routes) or "shared" (the client group may
	// read and write every directory: see package students for the risk).
	WorkdirLayout string `toml:"workdir_layout"`
	// QuotaMB and QuotaFiles are each student's disk limits; 0 turns one off.
	QuotaMB    int64 `toml:"quota_mb"`
	QuotaFiles int64 `toml:"quota_files"`
	// FileMaxMB caps one read or write through the file routes.
	FileMaxMB int64 `toml:"file_max_mb"`
}

// Workdir layouts.
const (
	LayoutPrivate = "private"
	LayoutShared  = "shared"
)

// Default returns the production defaults.
func Default() Config {
	host, err := os.Hostname()
	if err != nil {
		host = "localhost"
	}
	return Config{
		Socket:        "/run/idexd/idexd.sock",
		WorkdirRoot:   "/srv/idexd/students",
		StateDir:      "/var/lib/idexd",
		CgroupParent:  "idexd",
		Interpreter:   "/usr/bin/python3",
		ClientGroup:   "idex",
		AdminGroup:    "idex-admin",
		UIDSource:     students.UIDSourceRange,
		UIDMin:        200000,
		UIDMax:        299999,
		Host:          host,
		MaxRuns:       256,
		WarmRuns:      4,
		WarmKeep:      Duration{5 * time.Minute},
		Network:       NetworkNone,
		TmpMB:         256,
		ShutdownGrace: Duration{10 * time.Second},
		LeaseTTL:      Duration{30 * time.Second},
		KeepEnded:     Duration{10 * time.Minute},
		KeepEndedMB:   256,
		// A student who reads the prompt, thinks and types is not an
		// abandoned program; one left open over a lesson is.
		InputWaitSeconds: 900,
		// Defaults a class does not hit (issue 13): 100 threads, 1,000 open
		// files and a 10-million-int list run as in a terminal. README
		// "Limits" says why each is what it is.
		Defaults: api.Limits{
			MemoryMB: 512, Pids: 256, CPUPercent: 100,
			WallSeconds: 30, CPUSeconds: 30, OutputKB: 1024,
		},
		Max: api.Limits{
			MemoryMB: 2048, Pids: 1024, CPUPercent: 200,
			WallSeconds: 600, CPUSeconds: 600, OutputKB: 16 * 1024,
		},
		LogLevel:      "info",
		WorkdirLayout: LayoutPrivate,
		QuotaMB:       100,
		QuotaFiles:    10000,
		FileMaxMB:     16,

		// Issue 12's fair share: a student may run 4 at once and start 60
		// a minute; a start may wait half a minute for a slot.
		MaxRunsPerStudent:      4,
		StudentStartsPerMinute: 60,
		MaxWaitSeconds:         30,
		QueueMax:               1024,
	}
}

// Action is what idexd was asked to do.
type Action int

const (
	// ActionRun runs the daemon.
	ActionRun Action = iota
	// ActionVersion prints the version (--version); nothing else is read.
	ActionVersion
	// ActionCheckConfig checks the configuration and the host, prints what
	// it found and exits (--check-config).
	ActionCheckConfig
	// ActionHelp: the usage was printed (-h, --help).
	ActionHelp
)

// secretFile refuses a config file that every user may read while it
// holds the database URL, and with it the database password: students'
// programs run as other users on the same host.
func secretFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("read config %s: %w", path, err)
	}
	if fi.Mode().Perm()&0o004 != 0 {
		return fmt.Errorf("config %s holds database_url but every user may read it (mode %04o): run chmod o-r %s, or move the URL to the systemd credential database-url or IDEXD_DATABASE_URL",
			path, fi.Mode().Perm(), path)
	}
	return nil
}

// Load builds the configuration from args (without the program name):
// defaults, then --config's file, then explicitly set flags.
func Load(args []string) (Config, error) {
	cfg, _, err := LoadAction(args, io.Discard)
	return cfg, err
}

// LoadAction is Load that also reads what idexd is asked to do; usage
// goes to usage. With --version or -h nothing else is read or checked.
func LoadAction(args []string, usage io.Writer) (Config, Action, error) {
	cfg := Default()
	fs := flag.NewFlagSet("idexd", flag.ContinueOnError)
	fs.SetOutput(usage)
	path := fs.String("config", "", "TOML configuration file")
	showVersion := fs.Bool("version", false, "print the version and exit")
	check := fs.Bool("check-config", false, "check the configuration against this host (groups, interpreter, uid range, database), print what was found, and exit: 0 when idexd would start")
	var flagCfg Config
	fs.StringVar(&flagCfg.Socket, "socket", cfg.Socket, "Unix socket to listen on")
	fs.StringVar(&flagCfg.WorkdirRoot, "workdir-root", cfg.WorkdirRoot, "directory holding one directory per student")
	fs.StringVar(&flagCfg.StateDir, "state-dir", cfg.StateDir, "directory for the embedded store")
	fs.StringVar(&flagCfg.CgroupParent, "cgroup-parent", cfg.CgroupParent, "cgroup under which runs are created (relative: under idexd's own cgroup)")
	fs.StringVar(&flagCfg.Interpreter, "interpreter", cfg.Interpreter, "absolute path of the interpreter")
	fs.StringVar(&flagCfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return Config{}, ActionHelp, nil
	} else if err != nil {
		return Config{}, ActionRun, err
	}
	if *showVersion {
		return Config{}, ActionVersion, nil
	}
	action := ActionRun
	if *check {
		action = ActionCheckConfig
	}
	if fs.NArg() > 0 {
		return Config{}, action, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if *path != "" {
		md, err := toml.DecodeFile(*path, &cfg)
		if err != nil {
			return Config{}, action, fmt.Errorf("read config %s: %w", *path, err)
		}
		if un := md.Undecoded(); len(un) > 0 {
			keys := make([]string, len(un))
			for i, k := range un {
				keys[i] = k.String()
			}
			return Config{}, action, fmt.Errorf("read config %s: unknown keys: %s", *path, strings.Join(keys, ", "))
		}
		if md.IsDefined("database_url") {
			if err := secretFile(*path); err != nil {
				return Config{}, action, err
			}
		}
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "socket":
			cfg.Socket = flagCfg.Socket
		case "workdir-root":
			cfg.WorkdirRoot = flagCfg.WorkdirRoot
		case "state-dir":
			cfg.StateDir = flagCfg.StateDir
		case "cgroup-parent":
			cfg.CgroupParent = flagCfg.CgroupParent
		case "interpreter":
			cfg.Interpreter = flagCfg.Interpreter
		case "log-level":
			cfg.LogLevel = flagCfg.LogLevel
		}
	})
	if v := os.Getenv("IDEXD_DATABASE_URL"); v != "" {
		cfg.DatabaseURL = v
	}
	if cfg.DatabaseURL == "" {
		if dir := os.Getenv("CREDENTIALS_DIRECTORY"); dir != "" {
			b, err := os.ReadFile(filepath.Join(dir, "database-url"))
			switch {
			case err == nil:
				cfg.DatabaseURL = strings.TrimSpace(string(b))
			case !errors.Is(err, os.ErrNotExist):
				return Config{}, action, fmt.Errorf("read credential database-url: %w", err)
			}
		}
	}
	return cfg, action, cfg.Validate()
}

// Validate reports every problem of the configuration at once.
func (c *Config) Validate() error {
	var errs []error
	abs := func(key, v string) {
		if !filepath.IsAbs(v) {
			errs = append(errs, fmt.Errorf("%s must be an absolute path, got %q", key, v))
		}
	}
	abs("socket", c.Socket)
	abs("workdir_root", c.WorkdirRoot)
	abs("state_dir", c.StateDir)
	abs("interpreter", c.Interpreter)
	// Every run gets its own /tmp, /var/tmp, /dev/shm, /run and /proc: a
	// student's directory or the interpreter there would be hidden from it.
	for _, kv := range [][2]string{{"workdir_root", c.WorkdirRoot}, {"interpreter", c.Interpreter}} {
		if inside.Shadowed(kv[1]) {
			errs = append(errs, fmt.Errorf("%s %q is under a directory each run gets a private copy of (%s, /proc, /dev, /sys): choose a path outside them",
				kv[0], kv[1], strings.Join(inside.Private, ", ")))
		}
	}
	switch c.Network {
	case NetworkNone, NetworkHost:
	default:
		errs = append(errs, fmt.Errorf("network must be %q or %q, got %q", NetworkNone, NetworkHost, c.Network))
	}
	if c.TmpMB < 1 {
		errs = append(errs, fmt.Errorf("tmp_mb must be at least 1, got %d", c.TmpMB))
	}
	if c.CgroupParent == "" || strings.Contains(c.CgroupParent, "..") {
		errs = append(errs, fmt.Errorf("cgroup_parent %q must be a non-empty path without '..'", c.CgroupParent))
	}
	switch c.UIDSource {
	case students.UIDSourceRange, students.UIDSourcePasswd:
	default:
		errs = append(errs, fmt.Errorf("uid_source must be %q or %q, got %q", students.UIDSourceRange, students.UIDSourcePasswd, c.UIDSource))
	}
	if c.UIDMin < 1000 || c.UIDMax < c.UIDMin {
		errs = append(errs, fmt.Errorf("uid range %d-%d must start at 1000 or above and not be empty", c.UIDMin, c.UIDMax))
	}
	if c.ClientGroup == "" || c.AdminGroup == "" {
		errs = append(errs, errors.New("client_group and admin_group must be set"))
	}
	if c.MaxRuns < 1 {
		errs = append(errs, fmt.Errorf("max_runs must be at least 1, got %d", c.MaxRuns))
	}
	if c.WarmRuns < 0 || c.WarmRuns > c.MaxRuns {
		errs = append(errs, fmt.Errorf("warm_runs must be 0..max_runs (%d), got %d", c.MaxRuns, c.WarmRuns))
	}
	if c.WarmKeep.Duration < time.Second || c.WarmKeep.Duration > 24*time.Hour {
		errs = append(errs, fmt.Errorf("warm_keep must be 1s..24h, got %s", c.WarmKeep.Duration))
	}
	errs = append(errs, c.validateFair()...)
	if c.InputWaitSeconds < 1 {
		errs = append(errs, fmt.Errorf("input_wait_seconds must be at least 1, got %d", c.InputWaitSeconds))
	}
	if c.KeepEndedMB < 1 {
		errs = append(errs, fmt.Errorf("keep_ended_mb must be at least 1, got %d", c.KeepEndedMB))
	}
	if c.LeaseTTL.Duration < 300*time.Millisecond {
		errs = append(errs, fmt.Errorf("lease_ttl must be at least 300ms, got %s", c.LeaseTTL.Duration))
	}
	if c.ShutdownGrace.Duration < 0 {
		errs = append(errs, errors.New("shutdown_grace must not be negative"))
	}
	errs = append(errs, checkLimits("defaults", c.Defaults)...)
	errs = append(errs, checkLimits("max", c.Max)...)
	if err := c.Defaults.Fit(c.Max); err != nil {
		errs = append(errs, fmt.Errorf("defaults exceed max: %w", err))
	}
	switch c.WorkdirLayout {
	case LayoutPrivate, LayoutShared:
	default:
		errs = append(errs, fmt.Errorf("workdir_layout must be %q or %q, got %q", LayoutPrivate, LayoutShared, c.WorkdirLayout))
	}
	if c.QuotaMB < 0 || c.QuotaFiles < 0 {
		errs = append(errs, fmt.Errorf("quota_mb and quota_files must be 0 (off) or positive, got %d and %d", c.QuotaMB, c.QuotaFiles))
	}
	if c.QuotaMB > 1<<30 {
		errs = append(errs, fmt.Errorf("quota_mb must be at most %d, got %d", 1<<30, c.QuotaMB))
	}
	if c.FileMaxMB < 1 || c.FileMaxMB > 1024 {
		errs = append(errs, fmt.Errorf("file_max_mb must be 1..1024, got %d", c.FileMaxMB))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level must be debug, info, warn or error, got %q", c.LogLevel))
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid configuration: %w", errors.Join(errs...))
	}
	return nil
}

func checkLimits(section string, l api.Limits) []error {
	var errs []error
	for _, err := range l.Unset() {
		errs = append(errs, fmt.Errorf("%s.%w", section, err))
	}
	return errs
}

// maxWaitCap keeps a start's wait inside the server's 60 s bound on a
// request, with time left for the start itself.
const maxWaitCap = 50

// validateFair checks issue 12's fair-share keys.
func (c *Config) validateFair() []error {
	var errs []error
	if c.MaxRunsPerStudent < 0 {
		errs = append(errs, fmt.Errorf("max_runs_per_student must be 0 (no cap) or positive, got %d", c.MaxRunsPerStudent))
	}
	if c.StudentStartsPerMinute < 0 {
		errs = append(errs, fmt.Errorf("student_starts_per_minute must be 0 (no limit) or positive, got %d", c.StudentStartsPerMinute))
	}
	if c.MaxWaitSeconds < 0 || c.MaxWaitSeconds > maxWaitCap {
		errs = append(errs, fmt.Errorf("max_wait_seconds must be 0 (no queue)..%d (a request is cut after 60 s), got %d", maxWaitCap, c.MaxWaitSeconds))
	}
	if c.QueueMax < 1 || c.QueueMax > 100000 {
		errs = append(errs, fmt.Errorf("queue_max must be 1..100000, got %d", c.QueueMax))
	}
	if c.StudentMemoryMB < 0 || c.StudentPids < 0 {
		errs = append(errs, fmt.Errorf("student_memory_mb and student_pids must be 0 (no bound) or positive, got %d and %d", c.StudentMemoryMB, c.StudentPids))
	}
	if (c.StudentMemoryMB > 0 || c.StudentPids > 0) && c.WarmRuns > 0 {
		errs = append(errs, fmt.Errorf("student_memory_mb and student_pids bound the runs in each student's cgroup, where warm helpers are not: set warm_runs = 0 with them (got warm_runs = %d)", c.WarmRuns))
	}
	return errs
}
