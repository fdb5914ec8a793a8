package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

const intro = `idexctl talks to idexd, which runs students' Python scripts, over its Unix socket.`

const socketNote = `The socket is --socket, else $IDEX_SOCKET, else /run/idexd/idexd.sock.
Flags may stand before or after a command's arguments; "--" ends them.`

// overview is `idexctl help`: every command with its summary.
func (a *app) overview(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\nUsage:\n  idexctl [--socket PATH] [--json] COMMAND [FLAGS] [ARGS]\n\nCommands:\n", intro)
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	for _, c := range visibleCommands() {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("format help: %w", err)
	}
	b.WriteString("\nGlobal flags:\n")
	if err := writeFlags(&b, append(append([]*flagDef{}, globalFlags...), flagVersion)); err != nil {
		return err
	}
	fmt.Fprintf(&b, "\n%s\n\nRun 'idexctl help COMMAND' (or 'idexctl COMMAND --help') for a command's flags,\n'man idexctl' for all of it.\n", socketNote)
	_, err := io.WriteString(w, b.String())
	return err
}

// flagVersion is only read before a command (idexctl --version).
var flagVersion = &flagDef{name: "version", usage: "show idexctl's version"}

// commandHelp is `idexctl help NAME` and `idexctl NAME --help`.
func (a *app) commandHelp(w io.Writer, c *command) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: idexctl %s\n\n", c.synopsis())
	if c.help != "" {
		b.WriteString(c.help)
	} else {
		b.WriteString(upperFirst(c.summary) + ".")
	}
	b.WriteString("\n")
	if len(c.flags) > 0 {
		b.WriteString("\nFlags:\n")
		if err := writeFlags(&b, c.flags); err != nil {
			return err
		}
	}
	b.WriteString("\nGlobal flags:\n")
	if err := writeFlags(&b, globalFlags); err != nil {
		return err
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func writeFlags(w io.Writer, defs []*flagDef) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, f := range defs {
		fmt.Fprintf(tw, "  %s\t%s\n", flagLabel(f), f.usage)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("format help: %w", err)
	}
	return nil
}

// flagLabel is how a flag is shown in help: "-f, --follow", "--limit N".
func flagLabel(f *flagDef) string {
	s := flagName(f)
	if f.short != "" {
		s = "-" + f.short + ", " + s
	}
	if f.arg != "" {
		s += " " + f.arg
	}
	return s
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func (a *app) help(_ context.Context, c *call) (int, error) {
	if len(c.args) == 0 {
		return 0, a.overview(a.stdout)
	}
	cmd := lookup(c.args[0])
	if cmd == nil || cmd.hidden {
		return ExitError, unknownCommand(c.args[0])
	}
	return 0, a.commandHelp(a.stdout, cmd)
}
