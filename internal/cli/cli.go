// Package cli is idexctl: subcommands over the Go client, with --json on
// every command and exit codes a monitoring check or a shell script can use.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/client"
	"github.com/idexd/idexd/internal/version"
)

// Exit codes of `idexctl run` for ends that have no exit code of their
// own; a signaled script exits 128+signal, as in a shell.
const (
	ExitError       = 1   // idexctl itself failed: cannot connect, refused, bad usage
	ExitTimedOut    = 124 // like timeout(1)
	ExitOutputLimit = 125
	ExitStartFailed = 126
	ExitLost        = 127
	ExitStopped     = 130 // like Ctrl-C in a shell
	ExitOOMKilled   = 137 // 128+SIGKILL, as a shell shows an OOM kill
	ExitShutdown    = 143 // 128+SIGTERM
)

// Health exit codes: usable as a monitoring check.
const (
	HealthOK          = 0
	HealthNotOK       = 1 // degraded or draining
	HealthUnreachable = 2
)

type app struct {
	c      *client.Client
	json   bool
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// Whether idexctl's stdout and stderr are terminals: a program's
	// output is escaped there (escape.go).
	stdoutTTY, stderrTTY bool
}

// Main runs idexctl with args and returns the exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	out := &stickyWriter{w: stdout}
	a := &app{stdin: stdin, stdout: out, stderr: stderr, stdoutTTY: isTerminal(stdout), stderrTTY: isTerminal(stderr)}
	code, err := a.main(ctx, args)
	if out.err != nil {
		// Output that could not be written (a closed pipe, a full disk)
		// must not look like success.
		err = errors.Join(err, fmt.Errorf("write output: %w", out.err))
	}
	if err != nil {
		var ue *usageError
		if errors.As(err, &ue) {
			prefix := "idexctl"
			if ue.cmd != "" {
				prefix += " " + ue.cmd
			}
			fmt.Fprintf(stderr, "%s: %s\nRun 'idexctl help%s' for usage.\n", prefix, ue.msg, strings.TrimPrefix(prefix, "idexctl"))
		} else {
			fmt.Fprintln(stderr, "idexctl:", err)
		}
		if code == 0 {
			code = ExitError
		}
	}
	return code
}

// main finds the command, parses its flags (global ones may stand before
// or after it) and runs it.
func (a *app) main(ctx context.Context, args []string) (int, error) {
	vals := map[string]any{}
	// Global flags before the command.
	i := 0
	for ; i < len(args) && strings.HasPrefix(args[i], "-") && args[i] != "-"; i++ {
		if args[i] == "--" {
			i++
			break
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(args[i], "-"), "=")
		if name == "version" && !hasValue {
			fmt.Fprintf(a.stdout, "idexctl %s\n", version.Version)
			return 0, nil
		}
		f := findFlag(globalFlags, name)
		if f == nil {
			if lookup(name) != nil {
				return ExitError, usagef(nil, "unknown flag %s (the command is %s, without dashes)", args[i], name)
			}
			return ExitError, unknownFlag(&command{}, globalFlags, args[i])
		}
		switch {
		case f.parse == nil:
			vals[f.name] = true
		case hasValue:
			vals[f.name] = value
		case i+1 < len(args):
			i++
			vals[f.name] = args[i]
		default:
			return ExitError, usagef(nil, "%s needs a value: %s %s", flagName(f), flagName(f), f.arg)
		}
	}
	if i >= len(args) {
		if vals["help"] == true {
			return 0, a.overview(a.stdout)
		}
		_ = a.overview(a.stderr)
		return ExitError, errors.New("no command given")
	}
	cmd := lookup(args[i])
	if cmd == nil {
		return ExitError, unknownCommand(args[i])
	}
	c, err := parseArgs(cmd, args[i+1:], vals)
	if err != nil {
		return ExitError, err
	}
	if c.bool("help") {
		return 0, a.commandHelp(a.stdout, cmd)
	}
	if s, ok := c.vals["socket"].(string); ok && s == "" {
		return ExitError, usagef(cmd, "--socket needs a path")
	}
	a.c = client.New(socketOf(c))
	a.json = c.bool("json")
	return cmd.run(a, ctx, c)
}

// socketOf is the socket a call names: --socket, else $IDEX_SOCKET, else
// the client's default.
func socketOf(c *call) string {
	if s := c.str("socket"); s != "" {
		return s
	}
	return os.Getenv("IDEX_SOCKET")
}

func (a *app) printJSON(v any) error {
	if err := json.NewEncoder(a.stdout).Encode(v); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

func (a *app) student(ctx context.Context, c *call) (int, error) {
	if _, err := parseStudent(c.args[0]); err != nil {
		return ExitError, usagef(c.cmd, "%s: %v", c.args[0], err)
	}
	st, err := a.c.EnsureStudent(ctx, c.args[0])
	if err != nil {
		return ExitError, err
	}
	if a.json {
		return 0, a.printJSON(st)
	}
	fmt.Fprintf(a.stdout, "student %s\nuid     %d\ngid     %d\nworkdir %s\n%s", st.Name, st.UID, st.GID, st.Workdir, diskLine(st.Disk))
	return 0, nil
}

func (a *app) students(ctx context.Context, _ *call) (int, error) {
	sts, err := a.c.ListStudents(ctx)
	if err != nil {
		return ExitError, err
	}
	if a.json {
		for _, s := range sts {
			if err := a.printJSON(s); err != nil {
				return ExitError, err
			}
		}
		return 0, nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tUID\tGID\tWORKDIR")
	for _, s := range sts {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", s.Name, s.UID, s.GID, s.Workdir)
	}
	return 0, flushTable(tw)
}

func flushTable(tw *tabwriter.Writer) error {
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// startedLayout shows a run's start with its date: history spans days,
// and a run stuck since yesterday must not look like one from today.
const startedLayout = "2006-01-02 15:04:05"

func (a *app) printRuns(runs []api.Run) error {
	if a.json {
		for _, r := range runs {
			if err := a.printJSON(r); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTUDENT\tSCRIPT\tSTATE\tREASON\tEXIT\tWALL\tCPU\tMEM\tSTARTED")
	for _, r := range runs {
		exit := "-"
		switch {
		case r.ExitCode != nil:
			exit = strconv.Itoa(*r.ExitCode)
		case r.Signal != "":
			exit = r.Signal
		}
		reason := string(r.Reason)
		if reason == "" {
			reason = "-"
		}
		// A script's name is a student's choice: no control character
		// of it reaches the terminal.
		// MEM is what a live run uses now, an ended one's peak.
		mem := r.MemoryBytes
		if r.Ended() {
			mem = r.PeakMemoryBytes
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1fMiB\t%s\n", r.ID, r.Student, escapeString(r.Script), r.State, reason, exit,
			(time.Duration(r.WallMS) * time.Millisecond).String(), (time.Duration(r.CPUMS) * time.Millisecond).String(),
			float64(mem)/(1<<20), r.StartedAt.Local().Format(startedLayout))
	}
	return flushTable(tw)
}

func (a *app) ps(ctx context.Context, c *call) (int, error) {
	f := client.ListFilter{Student: c.str("student"), State: api.StateRunning}
	if c.bool("all") {
		f.State = ""
	}
	runs, err := a.c.ListRuns(ctx, f)
	if err != nil {
		return ExitError, err
	}
	return 0, a.printRuns(runs)
}

func (a *app) history(ctx context.Context, c *call) (int, error) {
	f := client.ListFilter{Student: c.str("student"), State: api.StateEnded, Limit: 50}
	if r, ok := c.vals["reason"].(api.Reason); ok {
		f.Reason = r
	}
	if t, ok := c.vals["since"].(time.Time); ok {
		f.Since = t
	}
	if c.isSet("limit") {
		f.Limit = int(c.int64("limit"))
	}
	runs, err := a.c.ListRuns(ctx, f)
	if err != nil {
		return ExitError, err
	}
	return 0, a.printRuns(runs)
}

func (a *app) show(ctx context.Context, c *call) (int, error) {
	r, err := a.c.GetRun(ctx, c.args[0])
	if err != nil {
		return ExitError, err
	}
	if a.json {
		return 0, a.printJSON(r)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return ExitError, fmt.Errorf("format run: %w", err)
	}
	fmt.Fprintln(a.stdout, string(b))
	return 0, nil
}

func (a *app) stop(ctx context.Context, c *call) (int, error) {
	if len(c.args) == 0 && !c.isSet("student") {
		return ExitError, usagef(c.cmd, "name the runs to stop (their ids) or a student (--student NAME)")
	}
	var errs []error
	var stopped []api.Run
	if name := c.str("student"); name != "" {
		out, err := a.c.StopStudent(ctx, name)
		if err != nil {
			errs = append(errs, fmt.Errorf("stop the runs of %s: %w", name, err))
		}
		stopped = out.Stopped
		if err == nil && !a.json {
			fmt.Fprintf(a.stdout, "%s: %d runs stopped, %d waiting starts refused\n", name, len(out.Stopped), out.QueuedCancelled)
		}
	}
	for _, id := range c.args {
		r, err := a.c.StopRun(ctx, id)
		if err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w", id, err))
			continue
		}
		stopped = append(stopped, r)
	}
	for _, r := range stopped {
		if a.json {
			if err := a.printJSON(r); err != nil {
				return ExitError, err
			}
			continue
		}
		fmt.Fprintf(a.stdout, "%s %s\n", r.ID, r.Reason)
	}
	if len(errs) > 0 {
		return ExitError, errors.Join(errs...)
	}
	return 0, nil
}

func (a *app) health(ctx context.Context, _ *call) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	h, err := a.c.Health(ctx)
	if err != nil {
		return HealthUnreachable, err
	}
	code := HealthOK
	if h.Status != api.HealthOK {
		code = HealthNotOK
	}
	if a.json {
		return code, a.printJSON(h)
	}
	fmt.Fprintf(a.stdout, "status %s\nversion %s\nuptime %ds\nruns %d\ncgroups %s\nstore %s\nnetwork %s\n",
		h.Status, h.Version, h.UptimeS, h.RunsActive, h.CgroupMode, h.Store, h.Network)
	for _, c := range h.Checks {
		mark := "ok"
		if !c.OK {
			mark = "FAIL: " + c.Message
		}
		fmt.Fprintf(a.stdout, "check %s %s\n", c.Name, mark)
	}
	return code, nil
}

func (a *app) drain(ctx context.Context, _ *call) (int, error) {
	h, err := a.c.Drain(ctx)
	if err != nil {
		return ExitError, err
	}
	if a.json {
		return 0, a.printJSON(h)
	}
	fmt.Fprintf(a.stdout, "draining: new runs are refused; %d runs still running\n", h.RunsActive)
	return 0, nil
}

func (a *app) resume(ctx context.Context, _ *call) (int, error) {
	h, err := a.c.Resume(ctx)
	if err != nil {
		return ExitError, err
	}
	if a.json {
		return 0, a.printJSON(h)
	}
	fmt.Fprintln(a.stdout, "accepting runs")
	return 0, nil
}

func (a *app) version(ctx context.Context, _ *call) (int, error) {
	v, err := a.c.Version(ctx)
	out := map[string]string{"idexctl": version.Version}
	if err == nil {
		out["idexd"] = v.Version
		out["api"] = v.API
	}
	if a.json {
		return 0, errors.Join(err, a.printJSON(out))
	}
	fmt.Fprintf(a.stdout, "idexctl %s\n", version.Version)
	if err != nil {
		return ExitError, err
	}
	fmt.Fprintf(a.stdout, "idexd   %s (api %s)\n", v.Version, v.API)
	return 0, nil
}

func (a *app) logs(ctx context.Context, c *call) (int, error) {
	if _, err := a.stream(ctx, c.args[0], c.int64("after"), c.bool("follow"), c.bool("raw")); err != nil {
		return ExitError, err
	}
	return 0, nil
}

// stream copies a run's events to stdout/stderr until the end event and
// returns the final run. Unless raw, output bound for a terminal is
// escaped (escape.go).
func (a *app) stream(ctx context.Context, id string, after int64, follow, raw bool) (*api.Run, error) {
	var evs *client.Events
	var err error
	if follow {
		evs, err = a.c.Events(ctx, id, after)
	} else {
		evs, err = a.c.EventsNow(ctx, id, after)
	}
	if err != nil {
		return nil, err
	}
	return a.streamFrom(ctx, id, evs, follow, raw)
}

// streamFrom is stream on events already open; it closes them.
func (a *app) streamFrom(ctx context.Context, id string, evs *client.Events, follow, raw bool) (*api.Run, error) {
	defer evs.Close() //nolint:errcheck // closing a read stream
	stdout, stderr := a.stdout, a.stderr
	if !raw && a.stdoutTTY {
		e := newEscaper(a.stdout)
		defer e.Flush() //nolint:errcheck // a failed write was already reported by the write itself
		stdout = e
	}
	if !raw && a.stderrTTY {
		e := newEscaper(a.stderr)
		defer e.Flush() //nolint:errcheck // as above
		stderr = e
	}
	return a.copyEvents(ctx, id, evs, follow, stdout, stderr)
}

// streamTo follows run id to its end, its output to stdout and stderr as
// they are.
func (a *app) streamTo(ctx context.Context, id string, stdout, stderr io.Writer) (*api.Run, error) {
	evs, err := a.c.Events(ctx, id, 0)
	if err != nil {
		return nil, err
	}
	defer evs.Close() //nolint:errcheck // closing a read stream
	return a.copyEvents(ctx, id, evs, true, stdout, stderr)
}

func (a *app) copyEvents(ctx context.Context, id string, evs *client.Events, follow bool, stdout, stderr io.Writer) (*api.Run, error) {
	for {
		ev, err := evs.Next()
		if !follow && errors.Is(err, io.EOF) {
			return nil, nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("events of run %s: %w", id, err)
		}
		if a.json {
			if err := a.printJSON(ev); err != nil {
				return nil, err
			}
			if ev.Type == api.EventEnd {
				return ev.Run, nil
			}
			continue
		}
		switch ev.Type {
		case api.EventStdout:
			_, err = stdout.Write(ev.Bytes())
		case api.EventStderr:
			_, err = stderr.Write(ev.Bytes())
		case api.EventTruncated:
			_, err = fmt.Fprintf(a.stderr, "\n[idexctl: %s]\n", escapeString(ev.Data))
		case api.EventEnd:
			return ev.Run, nil
		}
		if err != nil {
			return nil, fmt.Errorf("write output: %w", err)
		}
	}
}

func (a *app) run(ctx context.Context, c *call) (int, error) {
	req := api.RunRequest{Student: c.str("student"), Script: c.args[0], Args: c.args[1:], Mode: api.ModeScript}
	if c.bool("repl") {
		req.Mode = api.ModeRepl
	}
	req.Limits = api.Limits{
		MemoryMB:    c.int64("memory"),
		Pids:        c.int64("pids"),
		CPUPercent:  c.int64("cpu-percent"),
		WallSeconds: ceilSeconds(c.duration("timeout")),
		CPUSeconds:  ceilSeconds(c.duration("cpu")),
		OutputKB:    c.int64("output"),
	}
	ttyFD, size, onTTY := terminalOf(a.stdin)
	if onTTY && !c.bool("no-terminal") && !a.json {
		req.Terminal = size
	} else {
		onTTY = false
	}
	var r api.Run
	var evs *client.Events // followed from the start, off a terminal
	var err error
	if onTTY {
		r, err = a.c.StartRun(ctx, req)
	} else {
		r, evs, err = a.c.StartRunFollow(ctx, req)
	}
	if errors.Is(err, api.ErrStartFailed) {
		return ExitStartFailed, err // as the run's end start_failed would
	}
	if err != nil {
		return ExitError, err
	}
	if onTTY {
		final, err := a.runOnTerminal(ctx, ttyFD, r.ID)
		if err != nil {
			return ExitError, err
		}
		if final.Reason != api.ReasonExited && final.Message != "" {
			fmt.Fprintln(a.stderr, final.Message)
		}
		return ExitCode(final), nil
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go a.onSignals(sigs, r.ID)
	go a.forwardStdin(r.ID)
	final, err := a.streamFrom(ctx, r.ID, evs, true, c.bool("raw"))
	if err != nil {
		return ExitError, err
	}
	if final.Reason != api.ReasonExited && final.Message != "" && !a.json {
		fmt.Fprintln(a.stderr, final.Message)
	}
	return ExitCode(final), nil
}

// stopAfter is how soon a second Ctrl-C must follow the first to stop the
// run rather than interrupt it again.
const stopAfter = 2 * time.Second

// onSignals is Ctrl-C as in a terminal: the first interrupts the program
// (KeyboardInterrupt, which it may catch), a second within stopAfter stops
// the run; SIGTERM stops it. The stream goes on and shows the end.
func (a *app) onSignals(sigs <-chan os.Signal, id string) {
	var last time.Time
	for sig := range sigs {
		now := time.Now()
		if sig == os.Interrupt && now.Sub(last) > stopAfter {
			last = now
			err := a.c.InterruptRun(context.Background(), id)
			if err == nil || errors.Is(err, api.ErrRunEnded) {
				continue
			}
			fmt.Fprintln(a.stderr, "idexctl: interrupt:", err, "(Ctrl-C again stops the run)")
			continue
		}
		if _, err := a.c.StopRun(context.Background(), id); err != nil {
			fmt.Fprintln(a.stderr, "idexctl: stop:", err)
		}
	}
}

// forwardStdin copies idexctl's stdin to the run's, then closes it.
func (a *app) forwardStdin(id string) {
	ctx := context.Background()
	buf := make([]byte, 32<<10)
	for {
		n, err := a.stdin.Read(buf)
		if n > 0 {
			if werr := a.c.WriteStdin(ctx, id, buf[:n], false); werr != nil {
				if !programGone(werr) {
					fmt.Fprintln(a.stderr, "idexctl: stdin:", werr)
				}
				return
			}
		}
		if err != nil {
			if werr := a.c.WriteStdin(ctx, id, nil, true); werr != nil && !programGone(werr) {
				fmt.Fprintln(a.stderr, "idexctl: close stdin:", werr)
			}
			return
		}
	}
}

// programGone says the run can take no more input because it ended or
// closed its stdin: like a shell pipe whose reader quit, idexctl stops
// forwarding without a word; the run's own end says what happened.
func programGone(err error) bool {
	return errors.Is(err, api.ErrRunEnded) || errors.Is(err, api.ErrStdinClosed)
}

// ExitCode maps a run's end to idexctl's exit code.
func ExitCode(r *api.Run) int {
	switch r.Reason {
	case api.ReasonExited:
		if r.ExitCode != nil {
			return *r.ExitCode
		}
		return 0
	case api.ReasonSignaled:
		if s := unix.SignalNum(r.Signal); s > 0 {
			return 128 + int(s)
		}
		return ExitError
	case api.ReasonTimedOut, api.ReasonInputTimeout:
		return ExitTimedOut
	case api.ReasonOutputLimit:
		return ExitOutputLimit
	case api.ReasonStartFailed:
		return ExitStartFailed
	case api.ReasonLost, api.ReasonLockLost:
		return ExitLost
	case api.ReasonStopped:
		return ExitStopped
	case api.ReasonOOMKilled:
		return ExitOOMKilled
	case api.ReasonShutdown:
		return ExitShutdown
	}
	return ExitError
}

func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64(math.Ceil(d.Seconds()))
}

// stickyWriter keeps the first write error, which Main turns into a
// failure, so that the many small writes of a table need no check each.
type stickyWriter struct {
	w   io.Writer
	err error
}

func (s *stickyWriter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.w.Write(p)
	if err != nil {
		s.err = err
	}
	return n, err
}
