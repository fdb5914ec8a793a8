// Package cli is idexctl: subcommands over the Go client, with --json on
// every command and exit codes a monitoring check or a shell script can use.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
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

const usage = `idexctl talks to idexd over its Unix socket.

Usage: idexctl [--socket PATH] [--json] COMMAND [ARGS]

Commands:
  run --student NAME [--repl] [--memory 256MiB] [--timeout 30s] [--cpu 30s] SCRIPT [ARGS...]
                      run a script, streaming its output; stdin is forwarded;
                      Ctrl-C stops it; exits with the script's exit code
  student NAME        ensure a student (uid, gid, directory) and show it
  students            list every known student
  ps [--student NAME] [--all]
                      list running runs (--all: recent ended ones too)
  show ID             show one run
  logs [-f] [--after SEQ] ID
                      print a run's output (-f: follow until it ends)
  stop ID...          stop runs; returns once each cgroup is empty
  history [--student NAME] [--since 1h] [--reason REASON] [--limit N]
                      ended runs from the store
  health              exit 0 ok, 1 degraded or draining, 2 unreachable
  drain | resume      refuse new runs on this host / accept them again
  version             versions of idexctl and idexd

The socket is --socket, else $IDEX_SOCKET, else /run/idexd/idexd.sock.
Exit codes of run: the script's own; 128+N when killed by signal N;
124 timed_out, 125 output_limit, 126 start_failed, 127 lost, 130 stopped,
137 oom_killed, 143 shutdown; 1 when idexctl itself fails.
`

type app struct {
	c      *client.Client
	json   bool
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// Main runs idexctl with args and returns the exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("idexctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	socket := fs.String("socket", "", "idexd's socket")
	asJSON := fs.Bool("json", false, "print protocol objects as JSON, one a line")
	if err := fs.Parse(args); err != nil {
		return ExitError
	}
	if *socket == "" {
		*socket = os.Getenv("IDEX_SOCKET")
	}
	out := &stickyWriter{w: stdout}
	a := &app{c: client.New(*socket), json: *asJSON, stdin: stdin, stdout: out, stderr: stderr}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(stderr, usage)
		return ExitError
	}
	cmds := map[string]func(context.Context, []string) (int, error){
		"run": a.run, "student": a.student, "students": a.students, "ps": a.ps, "show": a.show,
		"logs": a.logs, "stop": a.stop, "history": a.history, "health": a.health,
		"drain": a.drain, "resume": a.resume, "version": a.version,
	}
	if rest[0] == "help" || rest[0] == "-h" || rest[0] == "--help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	cmd, ok := cmds[rest[0]]
	if !ok {
		fmt.Fprintf(stderr, "idexctl: unknown command %q\n\n%s", rest[0], usage)
		return ExitError
	}
	code, err := cmd(ctx, rest[1:])
	if out.err != nil {
		// Output that could not be written (a closed pipe, a full disk)
		// must not look like success.
		err = errors.Join(err, fmt.Errorf("write output: %w", out.err))
	}
	if err != nil {
		fmt.Fprintln(stderr, "idexctl:", err)
		if code == 0 {
			code = ExitError
		}
	}
	return code
}

func (a *app) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("idexctl "+name, flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	fs.BoolVar(&a.json, "json", a.json, "print protocol objects as JSON, one a line")
	return fs
}

// parse parses flags that may stand before or after the positional
// arguments (but never after "--" or, for run, after the script).
func parse(fs *flag.FlagSet, args []string, interspersed bool) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 || !interspersed {
			return append(pos, args...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func (a *app) printJSON(v any) error {
	if err := json.NewEncoder(a.stdout).Encode(v); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

func (a *app) student(ctx context.Context, args []string) (int, error) {
	fs := a.flags("student")
	pos, err := parse(fs, args, true)
	if err != nil {
		return ExitError, err
	}
	if len(pos) != 1 {
		return ExitError, errors.New("usage: idexctl student NAME")
	}
	st, err := a.c.EnsureStudent(ctx, pos[0])
	if err != nil {
		return ExitError, err
	}
	if a.json {
		return 0, a.printJSON(st)
	}
	fmt.Fprintf(a.stdout, "student %s\nuid     %d\ngid     %d\nworkdir %s\n", st.Name, st.UID, st.GID, st.Workdir)
	return 0, nil
}

func (a *app) students(ctx context.Context, args []string) (int, error) {
	if _, err := parse(a.flags("students"), args, true); err != nil {
		return ExitError, err
	}
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
	fmt.Fprintln(tw, "ID\tSTUDENT\tSCRIPT\tSTATE\tREASON\tEXIT\tWALL\tSTARTED")
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Student, r.Script, r.State, reason, exit,
			(time.Duration(r.WallMS) * time.Millisecond).String(), r.StartedAt.Local().Format("15:04:05"))
	}
	return flushTable(tw)
}

func (a *app) ps(ctx context.Context, args []string) (int, error) {
	fs := a.flags("ps")
	student := fs.String("student", "", "only this student's runs")
	all := fs.Bool("all", false, "ended runs too")
	if _, err := parse(fs, args, true); err != nil {
		return ExitError, err
	}
	f := client.ListFilter{Student: *student, State: api.StateRunning}
	if *all {
		f.State = ""
	}
	runs, err := a.c.ListRuns(ctx, f)
	if err != nil {
		return ExitError, err
	}
	return 0, a.printRuns(runs)
}

func (a *app) history(ctx context.Context, args []string) (int, error) {
	fs := a.flags("history")
	student := fs.String("student", "", "only this student's runs")
	since := fs.Duration("since", 0, "only runs started this long ago or later (e.g. 1h)")
	reason := fs.String("reason", "", "only runs that ended for this reason")
	limit := fs.Int("limit", 50, "at most this many runs")
	if _, err := parse(fs, args, true); err != nil {
		return ExitError, err
	}
	f := client.ListFilter{Student: *student, State: api.StateEnded, Reason: api.Reason(*reason), Limit: *limit}
	if *since > 0 {
		f.Since = time.Now().Add(-*since)
	}
	runs, err := a.c.ListRuns(ctx, f)
	if err != nil {
		return ExitError, err
	}
	return 0, a.printRuns(runs)
}

func (a *app) show(ctx context.Context, args []string) (int, error) {
	pos, err := parse(a.flags("show"), args, true)
	if err != nil {
		return ExitError, err
	}
	if len(pos) != 1 {
		return ExitError, errors.New("usage: idexctl show ID")
	}
	r, err := a.c.GetRun(ctx, pos[0])
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

func (a *app) stop(ctx context.Context, args []string) (int, error) {
	pos, err := parse(a.flags("stop"), args, true)
	if err != nil {
		return ExitError, err
	}
	if len(pos) == 0 {
		return ExitError, errors.New("usage: idexctl stop ID [ID...]")
	}
	var errs []error
	for _, id := range pos {
		r, err := a.c.StopRun(ctx, id)
		if err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w", id, err))
			continue
		}
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

func (a *app) health(ctx context.Context, args []string) (int, error) {
	if _, err := parse(a.flags("health"), args, true); err != nil {
		return ExitError, err
	}
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
	fmt.Fprintf(a.stdout, "status %s\nversion %s\nuptime %ds\nruns %d\ncgroups %s\nstore %s\n",
		h.Status, h.Version, h.UptimeS, h.RunsActive, h.CgroupMode, h.Store)
	for _, c := range h.Checks {
		mark := "ok"
		if !c.OK {
			mark = "FAIL: " + c.Message
		}
		fmt.Fprintf(a.stdout, "check %s %s\n", c.Name, mark)
	}
	return code, nil
}

func (a *app) drain(ctx context.Context, args []string) (int, error) {
	if _, err := parse(a.flags("drain"), args, true); err != nil {
		return ExitError, err
	}
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

func (a *app) resume(ctx context.Context, args []string) (int, error) {
	if _, err := parse(a.flags("resume"), args, true); err != nil {
		return ExitError, err
	}
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

func (a *app) version(ctx context.Context, args []string) (int, error) {
	if _, err := parse(a.flags("version"), args, true); err != nil {
		return ExitError, err
	}
	v, err := a.c.Version(ctx)
	out := map[string]string{"idexctl": version.Version}
	if err == nil {
		out["idexd"] = v["version"]
		out["api"] = v["api"]
	}
	if a.json {
		return 0, errors.Join(err, a.printJSON(out))
	}
	fmt.Fprintf(a.stdout, "idexctl %s\n", version.Version)
	if err != nil {
		return ExitError, err
	}
	fmt.Fprintf(a.stdout, "idexd   %s (api %s)\n", v["version"], v["api"])
	return 0, nil
}

func (a *app) logs(ctx context.Context, args []string) (int, error) {
	fs := a.flags("logs")
	follow := fs.Bool("f", false, "follow until the run ends")
	after := fs.Int64("after", 0, "only events after this sequence number")
	pos, err := parse(fs, args, true)
	if err != nil {
		return ExitError, err
	}
	if len(pos) != 1 {
		return ExitError, errors.New("usage: idexctl logs [-f] [--after SEQ] ID")
	}
	if _, err := a.stream(ctx, pos[0], *after, *follow); err != nil {
		return ExitError, err
	}
	return 0, nil
}

// stream copies a run's events to stdout/stderr until the end event and
// returns the final run.
func (a *app) stream(ctx context.Context, id string, after int64, follow bool) (*api.Run, error) {
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
	defer evs.Close() //nolint:errcheck // closing a read stream
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
			_, err = a.stdout.Write(ev.Bytes())
		case api.EventStderr:
			_, err = a.stderr.Write(ev.Bytes())
		case api.EventTruncated:
			_, err = fmt.Fprintf(a.stderr, "\n[idexctl: %s]\n", ev.Data)
		case api.EventEnd:
			return ev.Run, nil
		}
		if err != nil {
			return nil, fmt.Errorf("write output: %w", err)
		}
	}
}

func (a *app) run(ctx context.Context, args []string) (int, error) {
	fs := a.flags("run")
	student := fs.String("student", "", "the student whose script runs (required)")
	repl := fs.Bool("repl", false, "keep the interpreter open after the script (python3 -i)")
	memory := fs.String("memory", "", "memory limit, e.g. 256MiB")
	timeout := fs.Duration("timeout", 0, "wall-clock limit, e.g. 30s")
	cpu := fs.Duration("cpu", 0, "CPU-time limit, e.g. 30s")
	// Flags stop at the script: what follows is the script's own args.
	pos, err := parse(fs, args, false)
	if err != nil {
		return ExitError, err
	}
	if *student == "" || len(pos) == 0 {
		return ExitError, errors.New("usage: idexctl run --student NAME [--repl] [--memory 256MiB] [--timeout 30s] SCRIPT [ARGS...]")
	}
	req := api.RunRequest{Student: *student, Script: pos[0], Args: pos[1:], Mode: api.ModeScript}
	if *repl {
		req.Mode = api.ModeRepl
	}
	if *memory != "" {
		mb, err := ParseMiB(*memory)
		if err != nil {
			return ExitError, err
		}
		req.Limits.MemoryMB = mb
	}
	req.Limits.WallSeconds = ceilSeconds(*timeout)
	req.Limits.CPUSeconds = ceilSeconds(*cpu)

	r, err := a.c.StartRun(ctx, req)
	if err != nil {
		return ExitError, err
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		for range sigs {
			// The stream goes on and shows the end with reason stopped.
			if _, err := a.c.StopRun(context.Background(), r.ID); err != nil {
				fmt.Fprintln(a.stderr, "idexctl: stop:", err)
			}
		}
	}()
	go a.forwardStdin(r.ID)
	final, err := a.stream(ctx, r.ID, 0, true)
	if err != nil {
		return ExitError, err
	}
	return ExitCode(final), nil
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
	case api.ReasonTimedOut:
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

// ParseMiB reads sizes like 256MiB, 256M, 1GiB, 1G or 512 (MiB).
func ParseMiB(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1024}, {"GB", 1024}, {"G", 1024}, {"MiB", 1}, {"MB", 1}, {"M", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.mult
			break
		}
	}
	v, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("size %q: want a positive size like 256MiB or 1GiB", s)
	}
	return v * mult, nil
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
