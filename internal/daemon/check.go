package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/config"
	"github.com/idexd/idexd/internal/pgstore"
	"github.com/idexd/idexd/internal/run"
	"github.com/idexd/idexd/internal/students"
	"github.com/idexd/idexd/internal/version"
)

// checkConfig is idexd --check-config: the configuration as idexd would
// use it, and each thing on this host it relies on, checked without
// changing anything. It returns an error when idexd would not start.
func checkConfig(ctx context.Context, cfg config.Config, loadErr error, out io.Writer) error {
	fmt.Fprintf(out, "idexd %s: checking the configuration against this host\n", version.Version)
	var problems int
	report := func(what string, err error, ok string) {
		if err != nil {
			problems++
			fmt.Fprintf(out, "FAIL  %s: %v\n", what, err)
			return
		}
		fmt.Fprintf(out, "ok    %s: %s\n", what, ok)
	}
	report("configuration", loadErr, "read and valid")
	if cfg.Socket == "" {
		// Not read at all (a syntax error, an unknown key): nothing more
		// can be checked.
		return fmt.Errorf("configuration check failed: %w", loadErr)
	}
	db := "SQLite in " + cfg.StateDir
	if cfg.DatabaseURL != "" {
		db = "PostgreSQL (database_url is set; not shown)"
	}
	fmt.Fprintf(out, "      socket %s, students in %s, state in %s, cgroup parent %s, store %s, host %s\n",
		cfg.Socket, cfg.WorkdirRoot, cfg.StateDir, cfg.CgroupParent, db, cfg.Host)
	fmt.Fprintf(out, "      uids %s %d-%d, max_runs %d, warm_runs %d, defaults %s, max %s\n",
		cfg.UIDSource, cfg.UIDMin, cfg.UIDMax, cfg.MaxRuns, cfg.WarmRuns, limitsText(cfg.Defaults), limitsText(cfg.Max))
	fmt.Fprintf(out, "      %s\n", fairText(cfg))
	var root error
	if os.Geteuid() != 0 {
		root = errors.New("not root: idexd must run as root (it creates cgroups and starts runs as per-student uids)")
	}
	report("root", root, "running as root")
	for _, g := range []struct{ what, name string }{{"client group", cfg.ClientGroup}, {"admin group", cfg.AdminGroup}} {
		gid, err := lookupGroup(g.name)
		report(g.what, err, fmt.Sprintf("%s (gid %d)", g.name, gid))
	}
	report("interpreter", run.CheckInterpreter(cfg.Interpreter), cfg.Interpreter)
	if cfg.UIDSource == students.UIDSourceRange {
		warn, err := students.CheckSubordinate(cfg.UIDMin, cfg.UIDMax, students.SubordinateFiles, students.LoginDefs)
		report("uid range", err, fmt.Sprintf("%d-%d overlaps no subordinate ids in %s", cfg.UIDMin, cfg.UIDMax, strings.Join(students.SubordinateFiles, ", ")))
		if warn != "" {
			fmt.Fprintf(out, "WARN  uid range: %s\n", warn)
		}
	}
	if cfg.DatabaseURL != "" {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := pgstore.Ping(pctx, cfg.DatabaseURL)
		cancel()
		if err != nil {
			// idexd starts all the same, degraded, and keeps trying.
			fmt.Fprintf(out, "WARN  database: %v (idexd would start degraded, refusing runs until it answers)\n", err)
		} else {
			report("database", nil, "PostgreSQL answers")
		}
	}
	if problems > 0 {
		return fmt.Errorf("configuration check failed: %d problems", problems)
	}
	fmt.Fprintln(out, "configuration OK")
	return nil
}

// limitsText shows limits as the protocol writes them (JSON).
func limitsText(l api.Limits) string { return string(api.MustJSON(l)) }

// checkUIDRange refuses a uid range that users' subordinate ids overlap
// (they could act as students), and warns when useradd may hand some out
// later; uid_source = passwd takes the system's own accounts.
func checkUIDRange(cfg config.Config, log *slog.Logger) error {
	if cfg.UIDSource != students.UIDSourceRange {
		return nil
	}
	warn, err := students.CheckSubordinate(cfg.UIDMin, cfg.UIDMax, students.SubordinateFiles, students.LoginDefs)
	if err != nil {
		return err
	}
	if warn != "" {
		log.Warn(warn)
	}
	return nil
}

// fairText says the fair-share settings (0 is off), for --check-config
// and the start-up log.
func fairText(cfg config.Config) string {
	return fmt.Sprintf("per student: max_runs_per_student %d, student_starts_per_minute %d, student_memory_mb %d, student_pids %d; queue: max_wait_seconds %d, queue_max %d",
		cfg.MaxRunsPerStudent, cfg.StudentStartsPerMinute, cfg.StudentMemoryMB, cfg.StudentPids, cfg.MaxWaitSeconds, cfg.QueueMax)
}
