// Package bench measures what a run through idexd costs, side by side with
// a bare exec.Cmd of the same interpreter (issue 7). It starts the built
// idexd binary with a temporary configuration, talks to it through its
// socket with the real Go client, and takes every idexd sample in turn
// with a bare sample (one idexd, one bare, ...), so that the noise of a
// shared machine falls on both sides of a pair alike; each pair's ratio is
// kept. It prints a table with the targets of issue 7 next to each figure
// (PASS/MISS) and writes it, with the machine's details, idexd's own
// start-up step timings and every raw sample, to a results file.
//
// It is a benchmark, not a test: nothing here decides whether `make test`
// passes. cmd/idexbench is its command; bench/README.md says how to read
// the table.
package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Options are idexbench's flags.
type Options struct {
	Idexd, Idexctl string
	// IdexdBefore, when set, is a second idexd build (another commit's,
	// with its idexd-sandbox beside it) benched in the same run: its
	// latency and throughput samples are taken in turn with the main
	// idexd's and bare's, so a change is measured under the same noise.
	IdexdBefore string
	// Config and ConfigBefore are TOML lines added to the top of each
	// daemon's configuration: with the same build on both sides, a
	// setting's cost is measured under the same noise.
	Config, ConfigBefore string
	Python               string
	Out                  string
	N                    int           // back-to-back latency pairs
	IdleN                int           // latency pairs after quiet
	IdleGap              time.Duration // the quiet before each idle sample
	Warmup               int
	Window               time.Duration // one throughput window
	Rounds               int           // throughput windows per side and concurrency
	Concurrency          []int
	StopN                int
	OutputN              int
	OutputMiB            int
	Live                 int
	ClassRounds          int
	Only                 map[string]bool
	// KeepLogs, when set, is a directory where each idexd's log is copied
	// before its temporary directory is removed, for a closer look.
	KeepLogs string
}

// sections in the order they run.
var sections = []string{"latency", "idle", "throughput", "stop", "output", "memory", "class", "postgres"}

func parseOptions(args []string, stderr io.Writer) (Options, error) {
	o := Options{}
	fs := flag.NewFlagSet("idexbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Idexd, "idexd", "", "idexd binary (default: next to idexbench)")
	fs.StringVar(&o.Idexctl, "idexctl", "", "idexctl binary (default: next to idexbench)")
	fs.StringVar(&o.IdexdBefore, "idexd-before", "", "a second idexd build to bench in the same run (latency, idle, throughput), interleaved with -idexd and bare")
	fs.StringVar(&o.Config, "config", "", "TOML lines added to -idexd's configuration (top-level keys), e.g. 'warm_runs = 8'")
	fs.StringVar(&o.ConfigBefore, "config-before", "", "TOML lines added to -idexd-before's configuration: with the same build on both sides, the cost of a setting")
	fs.StringVar(&o.Python, "python", "/usr/bin/python3", "interpreter for both sides: an absolute path, not a version-manager shim")
	fs.StringVar(&o.Out, "out", "", "results file (default bench/results-<date>.txt)")
	fs.IntVar(&o.N, "n", 300, "back-to-back latency pairs (start->end and first byte)")
	fs.IntVar(&o.IdleN, "idle-n", 200, "latency pairs taken after -idle-gap of quiet")
	fs.DurationVar(&o.IdleGap, "idle-gap", 100*time.Millisecond, "quiet before each idle sample, on both sides")
	fs.IntVar(&o.Warmup, "warmup", 3, "pairs run and discarded before each latency section")
	fs.DurationVar(&o.Window, "window", 4*time.Second, "length of one throughput window")
	fs.IntVar(&o.Rounds, "rounds", 3, "throughput windows per side at each concurrency")
	conc := fs.String("concurrency", "1,8,64", "concurrent clients for throughput")
	fs.IntVar(&o.StopN, "stop-n", 50, "stops of a 32-process tree")
	fs.IntVar(&o.OutputN, "output-n", 5, "output-throughput pairs")
	fs.IntVar(&o.OutputMiB, "output-mib", 64, "MiB the output script writes")
	fs.IntVar(&o.Live, "live", 200, "live sleeping runs for the memory figures")
	fs.IntVar(&o.ClassRounds, "class-rounds", 3, "rounds of the class-at-once burst per side")
	fs.StringVar(&o.KeepLogs, "keep-logs", "", "copy each idexd's log into this directory before removing it")
	only := fs.String("only", "", "comma-separated sections to run: "+strings.Join(sections, ","))
	if err := fs.Parse(args); err != nil {
		return Options{}, err
	}
	if fs.NArg() > 0 {
		return Options{}, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	for _, s := range strings.Split(*conc, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || c < 1 {
			return Options{}, fmt.Errorf("-concurrency: %q is not a positive number", s)
		}
		o.Concurrency = append(o.Concurrency, c)
	}
	if *only != "" {
		o.Only = map[string]bool{}
		for _, s := range strings.Split(*only, ",") {
			s = strings.TrimSpace(s)
			known := false
			for _, k := range sections {
				known = known || k == s
			}
			if !known {
				return Options{}, fmt.Errorf("-only: unknown section %q (sections: %s)", s, strings.Join(sections, ","))
			}
			o.Only[s] = true
		}
	}
	for _, v := range []struct {
		name string
		n    int
	}{{"n", o.N}, {"idle-n", o.IdleN}, {"rounds", o.Rounds}, {"stop-n", o.StopN}, {"output-n", o.OutputN}, {"output-mib", o.OutputMiB}, {"live", o.Live}, {"class-rounds", o.ClassRounds}} {
		if v.n < 1 {
			return Options{}, fmt.Errorf("-%s must be at least 1, got %d", v.name, v.n)
		}
	}
	if !filepath.IsAbs(o.Python) {
		return Options{}, fmt.Errorf("-python must be an absolute path (python3 on PATH may be a slow shim), got %q", o.Python)
	}
	self, err := os.Executable()
	if err != nil && (o.Idexd == "" || o.Idexctl == "") {
		return Options{}, fmt.Errorf("find idexbench's own directory for the default -idexd/-idexctl: %w", err)
	}
	for _, b := range []struct {
		p    *string
		name string
	}{{&o.Idexd, "idexd"}, {&o.Idexctl, "idexctl"}, {&o.IdexdBefore, "idexd-before"}} {
		if *b.p == "" && b.name == "idexd-before" {
			continue
		}
		if *b.p == "" {
			*b.p = filepath.Join(filepath.Dir(self), b.name)
		}
		abs, err := filepath.Abs(*b.p)
		if err != nil {
			return Options{}, fmt.Errorf("-%s %s: %w", b.name, *b.p, err)
		}
		*b.p = abs
		fi, err := os.Stat(abs)
		if err != nil {
			return Options{}, fmt.Errorf("-%s (build it first: make build): %w", b.name, err)
		}
		if !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			return Options{}, fmt.Errorf("-%s %s: not an executable file", b.name, abs)
		}
	}
	if o.Out == "" {
		o.Out = filepath.Join("bench", "results-"+time.Now().Format("2006-01-02")+".txt")
	}
	return o, nil
}

func (o Options) wants(section string) bool { return o.Only == nil || o.Only[section] }

// bench collects what the sections found.
type bench struct {
	o        Options
	stderr   io.Writer
	t        table
	steps    []string // idexd's own step medians, per section
	notes    []string
	failures []string
	raw      []string
	// sqliteEnd is start->end back-to-back on the default store, for the
	// PostgreSQL comparison.
	sqliteEnd *pairs
	conf      string // the main idexd's configuration file
	// before is the -idexd-before daemon while the main sections run.
	before *daemon
	// floor is the minimal spawn server (issue 16) while the latency,
	// idle and throughput sections run.
	floor *floor
}

func (b *bench) progress(format string, a ...any) {
	fmt.Fprintf(b.stderr, "idexbench: "+format+"\n", a...)
}

// Main runs idexbench with args (without the program name).
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseOptions(args, stderr)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("idexbench needs root: idexd creates cgroups and runs scripts as per-student uids")
	}
	started := time.Now()
	m := describeMachine(o)
	b := &bench{o: o, stderr: stderr}
	header := []string{
		"idexbench results, " + started.UTC().Format(time.RFC3339),
		"command: idexbench " + strings.Join(args, " "),
		"idexd:   " + o.Idexd,
		"idexctl: " + o.Idexctl,
	}
	if o.IdexdBefore != "" {
		header = append(header, "idexd-before: "+o.IdexdBefore)
	}

	if o.wants("latency") || o.wants("idle") || o.wants("throughput") || o.wants("stop") || o.wants("output") {
		v, err := b.mainDaemon(ctx)
		if err != nil {
			b.fail("daemon", err)
		}
		if v != "" {
			header = append(header, "idexd version: "+v)
		}
	}
	if ctx.Err() == nil && o.wants("memory") {
		b.progress("memory: %d live sleeping runs on a fresh idexd", o.Live)
		if err := b.memory(ctx); err != nil {
			b.fail("memory", err)
		}
	}
	if ctx.Err() == nil && o.wants("class") {
		b.progress("class: %d students press Run within %s while another runs %d hogs", classStudents, classSpread, classHogs)
		if err := b.class(ctx); err != nil {
			b.fail("class", err)
		}
	}
	if ctx.Err() == nil && o.wants("postgres") {
		b.progress("postgres: start->end on a throwaway PostgreSQL cluster")
		if err := b.postgres(ctx); err != nil {
			b.fail("postgres", err)
		}
	}
	m.add("load at end", "%s", loadavg())
	m.add("duration", "%s", time.Since(started).Round(time.Second))

	report := b.report(header, m)
	if _, err := io.WriteString(stdout, report); err != nil {
		return fmt.Errorf("print the results: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(o.Out), 0o755); err != nil {
		return fmt.Errorf("results directory: %w", err)
	}
	if err := os.WriteFile(o.Out, []byte(report), 0o644); err != nil {
		return fmt.Errorf("write results file: %w", err)
	}
	fmt.Fprintf(stderr, "idexbench: results written to %s\n", o.Out)
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	if len(b.failures) > 0 {
		return fmt.Errorf("%d section(s) failed; see the results file", len(b.failures))
	}
	return nil
}

func (b *bench) fail(section string, err error) {
	b.progress("%s: FAILED: %v", section, err)
	b.failures = append(b.failures, fmt.Sprintf("%s: %v", section, err))
}

// mainDaemon runs the sections that share one idexd and returns its version.
func (b *bench) mainDaemon(ctx context.Context) (string, error) {
	o := b.o
	d, err := startDaemon(ctx, o, daemonConfig{
		maxRuns:     max(300, maxOf(o.Concurrency)+16),
		maxOutputKB: int64(o.OutputMiB)*1024 + 1024,
	})
	if err != nil {
		return "", err
	}
	b.conf = d.conf
	var version string
	if v, err := d.c.Version(ctx); err != nil {
		b.fail("version", err)
	} else {
		version = fmt.Sprintf("%s (api %s)", v.Version, v.API)
	}
	if o.IdexdBefore != "" {
		bo := o
		bo.Idexd = o.IdexdBefore
		bo.Config = o.ConfigBefore
		dc := daemonConfig{
			maxRuns:     max(300, maxOf(o.Concurrency)+16),
			maxOutputKB: int64(o.OutputMiB)*1024 + 1024,
		}
		bd, err := startDaemon(ctx, bo, dc)
		if err != nil && strings.Contains(err.Error(), "unknown keys: max_runs_per_student") {
			// A build from before issue 12 has no per-student cap or
			// start rate, and refuses the keys that turn them off.
			b.notes = append(b.notes, "idexd-before predates the fair-share keys (issue 12): started without them, it has no such limits.")
			dc.fairDefaults = true
			bd, err = startDaemon(ctx, bo, dc)
		}
		if err != nil {
			return version, errors.Join(fmt.Errorf("idexd-before: %w", err), d.stop())
		}
		b.before = bd
		if v, err := bd.c.Version(ctx); err != nil {
			b.fail("version of idexd-before", err)
		} else {
			version += fmt.Sprintf("; idexd-before %s (api %s)", v.Version, v.API)
		}
		defer func() {
			b.logProblems("idexd-before", bd)
			if err := bd.stop(); err != nil {
				b.fail("idexd-before", err)
			}
			b.before = nil
		}()
	}
	if o.wants("latency") || o.wants("idle") || o.wants("throughput") {
		f, err := startFloor(ctx, o.Python)
		if err != nil {
			return version, errors.Join(err, d.stop())
		}
		b.floor = f
		defer func() {
			if err := f.stop(); err != nil {
				b.fail("floor", err)
			}
			b.floor = nil
		}()
	}
	run := func(name string, f func(context.Context, *daemon) error) {
		if ctx.Err() != nil || !o.wants(name) {
			return
		}
		if err := f(ctx, d); err != nil {
			b.fail(name, err)
		}
	}
	run("latency", func(ctx context.Context, d *daemon) error {
		b.progress("latency: %d back-to-back pairs of print('hi')", o.N)
		end, err := b.latency(ctx, d, "back-to-back", o.N, 0)
		b.sqliteEnd = end
		return err
	})
	run("idle", func(ctx context.Context, d *daemon) error {
		b.progress("idle: %d pairs, each sample after %s of quiet", o.IdleN, o.IdleGap)
		_, err := b.latency(ctx, d, fmt.Sprintf("after %s idle", o.IdleGap), o.IdleN, o.IdleGap)
		return err
	})
	run("throughput", b.throughput)
	run("stop", b.stop)
	run("output", b.output)
	if rss, err := rssKiB(d.pid()); err == nil {
		b.notes = append(b.notes, fmt.Sprintf("RSS of the idexd that ran the sections above, at their end: %.1f MiB "+
			"(ended runs, their output included, stay in memory for keep_ended, default 10m).", float64(rss)/1024))
	}
	b.logProblems("main idexd", d)
	if err := d.stop(); err != nil {
		return version, err
	}
	return version, nil
}

// logProblems records what idexd logged at warning or error level.
func (b *bench) logProblems(name string, d *daemon) {
	p := d.problems(name)
	if len(p) == 0 {
		b.notes = append(b.notes, name+": no warnings or errors in idexd's log.")
	}
	b.notes = append(b.notes, p...)
}

func maxOf(xs []int) int {
	m := 0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

func (b *bench) report(header []string, m *machine) string {
	var s strings.Builder
	for _, h := range header {
		s.WriteString(h + "\n")
	}
	s.WriteString("\nmachine:\n")
	for _, l := range m.lines {
		s.WriteString("  " + l + "\n")
	}
	if b.conf != "" {
		s.WriteString("\nidexd configuration (temporary; everything else is idexd's default):\n")
		for _, l := range strings.Split(strings.TrimSpace(b.conf), "\n") {
			s.WriteString("  " + l + "\n")
		}
	}
	s.WriteString("\nidexd and bare side by side (bare: exec.Cmd of the same interpreter and script from Go, ")
	s.WriteString("taken in turn with idexd, one sample each).\nratio = idexd figure / bare figure; pair ratio = the same ")
	s.WriteString("percentile of the per-pair ratios idexd_i/bare_i.\n")
	s.WriteString(b.t.String())
	s.WriteString("\nTargets (issues 7, 10 and 16):\n")
	if len(b.t.misses) == 0 && len(b.failures) == 0 {
		s.WriteString("  every target that was measured is met.\n")
	}
	for _, miss := range b.t.misses {
		s.WriteString("  MISSED " + miss + "\n")
	}
	if len(b.failures) > 0 {
		s.WriteString("\nFailures (these sections have no or partial figures):\n")
		for _, f := range b.failures {
			s.WriteString("  " + f + "\n")
		}
	}
	if len(b.steps) > 0 {
		s.WriteString("\nWhere idexd's start-up time goes (its own \"run started\" log lines, request to child released):\n")
		for _, l := range b.steps {
			s.WriteString("  " + l + "\n")
		}
	}
	if len(b.notes) > 0 {
		s.WriteString("\nNotes:\n")
		for _, n := range b.notes {
			s.WriteString("  - " + n + "\n")
		}
	}
	s.WriteString("\nRaw samples, in the order taken (none left out; warm-up runs are not samples):\n")
	for _, r := range b.raw {
		s.WriteString("  " + r + "\n")
	}
	return s.String()
}
