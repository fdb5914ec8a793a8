package cli

import (
	"context"
	"fmt"
	"strings"
)

// command is one entry of idexctl's command table. Dispatch, flag
// parsing, `idexctl help`, the man page and shell completion all read this
// table: adding a command is adding one entry to commands.
type command struct {
	name string
	// args is the positional part of the synopsis, e.g. "SCRIPT [ARGS...]".
	args    string
	summary string // one line, for the overview
	// help is the long description: paragraphs separated by blank lines;
	// lines starting with two spaces are kept as they are (examples).
	help  string
	flags []*flagDef
	// minArgs and maxArgs bound the positional arguments; maxArgs < 0: any.
	minArgs, maxArgs int
	// argComplete offers positional arguments for completion (a compXxx
	// kind or fixed words).
	argComplete string
	// passesArgs: the arguments after the first are the script's own.
	passesArgs bool
	hidden     bool
	run        func(a *app, ctx context.Context, c *call) (int, error)
}

// synopsis is the command's usage line without "idexctl ".
func (c *command) synopsis() string {
	var b strings.Builder
	b.WriteString(c.name)
	for _, f := range c.flags {
		b.WriteByte(' ')
		if !f.required {
			b.WriteByte('[')
		}
		b.WriteString(flagName(f))
		if f.arg != "" {
			b.WriteString(" " + f.arg)
		}
		if !f.required {
			b.WriteByte(']')
		}
	}
	if c.args != "" {
		b.WriteString(" " + c.args)
	}
	return b.String()
}

// exitCodes are run's exit codes, for its help and the man page.
const exitCodes = `the script's own; 128+N when killed by signal N; 124
timed_out or input_timeout, 125 output_limit, 126 start_failed, 127 lost or lock_lost,
130 stopped, 137 oom_killed, 143 shutdown; 1 when idexctl itself fails`

var commands []*command

// The table is built in init: help reads it, and a variable whose
// initializer reaches itself would not compile.
func init() {
	commands = []*command{
		{
			name: "run", args: "SCRIPT [ARGS...]", minArgs: 1, maxArgs: -1, passesArgs: true, argComplete: compFiles,
			summary: "run a student's script, streaming its output",
			help: `Runs SCRIPT (a path inside the student's directory) as the student, with
ARGS as its arguments, streams its output, forwards idexctl's stdin to it
and exits with the script's exit code. Ctrl-C interrupts the program as
in a terminal (KeyboardInterrupt, which it may catch); a second Ctrl-C
within 2 seconds stops the run. When the run ends other than by exiting
(stopped, out of memory, out of time, ...), idexctl prints why on stderr,
in a sentence for the student.

When idexctl's stdin is a terminal, the program runs on a terminal of its
own of the same size (terminal mode: isatty() is true, input() has line
editing, colours and cursor moves show as the program meant them; escape
sequences that act beyond the screen, such as clipboard writes and title
changes, are dropped). idexctl's terminal is raw meanwhile, so Ctrl-C is a
key the program's terminal turns into KeyboardInterrupt; a second Ctrl-C
within 2 seconds stops the run. --no-terminal runs it with plain stdin,
stdout and stderr instead.

Flags may stand anywhere before "--"; the script's own arguments that
start with "-" go after it ("--" itself is not passed to the script):

  idexctl run --student alice main.py -- --rounds 3 -v

Limits that are not given take idexd's defaults; idexd refuses a limit
above its configured maximum (limit_too_high).

When idexctl's stdout (or stderr) is a terminal, control characters in
the program's output are shown escaped, so that a program cannot drive
the terminal: escape sequences (ESC, shown as \x1b: OSC 52 clipboard
writes, window-title changes, screen clears, cursor moves), carriage
returns (\r), backspaces, bells and the other C0 and C1 controls,
bidirectional-text overrides (\u202e) and bytes that are not UTF-8
(\xff). Newlines and tabs are kept. --raw writes the output as it is;
so does a pipe or a file, byte for byte.

Exit codes: ` + exitCodes + `.`,
			flags: []*flagDef{
				{name: "student", arg: "NAME", usage: "the student whose script runs (required)",
					parse: parseStudent, complete: compStudents, required: true},
				{name: "repl", usage: "keep the interpreter open after the script (python3 -i)"},
				{name: "memory", arg: "SIZE", usage: "memory limit, e.g. 256MiB or 1GiB (a bare number is MiB)", parse: parseMemory},
				{name: "timeout", arg: "DURATION", usage: "wall-clock limit, e.g. 30s or 5m", parse: parseDuration},
				{name: "cpu", arg: "DURATION", usage: "CPU-time limit, e.g. 30s", parse: parseDuration},
				{name: "pids", arg: "N", usage: "at most N processes and threads at once", parse: positive("a number of processes", 1<<22)},
				{name: "cpu-percent", arg: "PERCENT", usage: "CPU share: 100 is one core, 50 half of one, 200 two",
					parse: positive("a percentage of one core", 100*1024)},
				{name: "output", arg: "SIZE", usage: "output limit, e.g. 512KiB or 4MiB (a bare number is KiB)", parse: parseOutput},
				{name: "no-terminal", usage: "do not run the program on a terminal even when idexctl's stdin is one"},
				flagRaw,
			},
			run: (*app).run,
		},
		{
			name: "student", args: "NAME", minArgs: 1, maxArgs: 1, argComplete: compStudents,
			summary: "create a student if needed (uid, gid, directory) and show it",
			help: `Ensures the student NAME: allocates its uid and gid once and creates its
directory, then shows them. Student names are lower-case Unix names
(^[a-z_][a-z0-9_-]{0,31}$).`,
			run: (*app).student,
		},
		{
			name: "files", args: "ls [DIR] | cat PATH | put PATH [LOCAL|-] | rm PATH... | mv FROM TO", minArgs: 1, maxArgs: -1,
			argComplete: strings.Join(fileVerbs, " "),
			summary:     "a student's files through idexd: ls, cat, put, rm, mv",
			help: `Reads and writes a student's files through idexd, which resolves every
path inside the student's directory without following a symlink, refuses
FIFOs, sockets and devices, and writes as the student (so the student's
disk quota applies). Paths are relative to the student's directory.

  idexctl files ls --student alice [DIR]        list a directory
  idexctl files cat --student alice main.py     print a file's bytes
  idexctl files put --student alice main.py ./main.py
                                                save a local file (or stdin: -)
  idexctl files rm --student alice old.py       remove a file or empty directory
  idexctl files mv --student alice a.py b/a.py --parents
                                                rename; never replaces

put replaces the file atomically; --parents (put, mv) creates missing
directories. File names, and what cat prints, are escaped on a terminal
as a run's output is (a student's program chose them), unless --raw.`,
			flags: []*flagDef{
				{name: "student", arg: "NAME", usage: "the student whose files these are (required)",
					parse: parseStudent, complete: compStudents, required: true},
				{name: "parents", short: "p", usage: "create missing directories (put, mv)"},
				flagRaw,
			},
			run: (*app).files,
		},
		{
			name: "students", maxArgs: 0,
			summary: "list every known student",
			run:     (*app).students,
		},
		{
			name: "ps", maxArgs: 0,
			summary: "list running runs",
			help: `Lists the runs running on this host, newest first; --all adds recently
ended ones. STARTED is the local date and time.`,
			flags: []*flagDef{flagStudentFilter, {name: "all", short: "a", usage: "ended runs too"}},
			run:   (*app).ps,
		},
		{
			name: "show", args: "ID", minArgs: 1, maxArgs: 1, argComplete: compRuns,
			summary: "show one run",
			run:     (*app).show,
		},
		{
			name: "logs", args: "ID", minArgs: 1, maxArgs: 1, argComplete: compRuns,
			summary: "print a run's output",
			help: `Prints the output of run ID that idexd still holds (for keep_ended after
its end); -f follows it until the run ends. Control characters are
escaped on a terminal, as for run, unless --raw.`,
			flags: []*flagDef{
				{name: "follow", short: "f", usage: "follow until the run ends"},
				{name: "after", arg: "SEQ", usage: "only events after this sequence number", parse: parseSeq},
				flagRaw,
			},
			run: (*app).logs,
		},
		{
			name: "stop", args: "[ID...]", minArgs: 0, maxArgs: -1, argComplete: compLive,
			summary: "stop runs, or every run of a student; returns once the processes are gone",
			help: `Stops each run ID, or with --student every run of that student on this
host (an admin's command: idexd answers forbidden to the web tier's
group), and refuses the student's starts that wait for a free slot
(student_stopped). Returns once every stopped run's processes are gone;
prints each run's id and end reason. idexd logs who asked.

  idexctl stop 3f2a9c0d1e4b5a69
  idexctl stop --student mallory`,
			flags: []*flagDef{{name: "student", arg: "NAME", usage: "stop every run of this student (admin)",
				parse: parseStudent, complete: compStudents}},
			run: (*app).stop,
		},
		{
			name: "history", maxArgs: 0,
			summary: "list ended runs from the store",
			help:    `Lists ended runs from the store (shared by every host on PostgreSQL), newest first.`,
			flags: []*flagDef{
				flagStudentFilter,
				{name: "since", arg: "WHEN", usage: "only runs started since then: a duration ago (1h, 30m) or a date (2006-01-02, \"2006-01-02 15:04\")", parse: parseSince},
				{name: "reason", arg: "REASON", usage: "only runs that ended for this reason: " + reasonWords(), parse: parseReason, complete: reasonWords()},
				{name: "limit", arg: "N", usage: "at most N runs (default 50)", parse: positive("a number of runs", 10000)},
			},
			run: (*app).history,
		},
		{
			name: "health", maxArgs: 0,
			summary: "show idexd's health; exit 0 ok, 1 degraded or draining, 2 unreachable",
			help:    `Shows idexd's health and exits 0 when ok, 1 when degraded or draining, 2 when idexd cannot be reached: a monitoring check as it is.`,
			run:     (*app).health,
		},
		{
			name: "drain", maxArgs: 0,
			summary: "refuse new runs on this host (running ones go on)",
			run:     (*app).drain,
		},
		{
			name: "resume", maxArgs: 0,
			summary: "accept new runs again after drain",
			run:     (*app).resume,
		},
		{
			name: "version", maxArgs: 0,
			summary: "show the versions of idexctl and idexd",
			run:     (*app).version,
		},
		{
			name: "completion", args: "bash|zsh", minArgs: 1, maxArgs: 1, argComplete: strings.Join(shells, " "),
			summary: "print a shell completion script",
			help: `Prints the completion script for the shell. The package installs both;
by hand:

  idexctl completion bash > /etc/bash_completion.d/idexctl
  idexctl completion zsh > "${fpath[1]}/_idexctl"`,
			run: (*app).completion,
		},
		{
			name: "help", args: "[COMMAND]", maxArgs: 1, argComplete: compCommands,
			summary: "show help for idexctl or one command",
			run:     (*app).help,
		},
		// For the shell completion scripts: the candidates at a position.
		{name: "__complete", maxArgs: -1, hidden: true, run: (*app).complete},
		// For `make man`: the man page in roff.
		{name: "__man", maxArgs: 0, hidden: true, run: (*app).man},
	}
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

func visibleCommands() []*command {
	var out []*command
	for _, c := range commands {
		if !c.hidden {
			out = append(out, c)
		}
	}
	return out
}

func unknownCommand(name string) error {
	names := []string{}
	for _, c := range visibleCommands() {
		names = append(names, c.name)
	}
	msg := fmt.Sprintf("unknown command %q", name)
	if s := suggest(name, names); s != "" {
		msg += fmt.Sprintf(" (did you mean %s?)", s)
	}
	return usagef(nil, "%s", msg)
}
