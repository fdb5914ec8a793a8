package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/idexd/idexd/internal/api"
)

// fileVerbs are the subcommands of files.
var fileVerbs = []string{"ls", "cat", "put", "rm", "mv"}

// files is `idexctl files VERB --student NAME ...`: students' files
// through idexd.
func (a *app) files(ctx context.Context, c *call) (int, error) {
	student := c.str("student")
	verb, pos := c.args[0], c.args[1:]
	bad := func(want string) (int, error) {
		return ExitError, usagef(c.cmd, "files %s takes %s, got %d arguments", verb, want, len(pos))
	}
	switch verb {
	case "ls":
		if len(pos) > 1 {
			return bad("at most one directory")
		}
		dir := ""
		if len(pos) == 1 {
			dir = pos[0]
		}
		return a.filesLs(ctx, student, dir, c.bool("raw"))
	case "cat":
		if len(pos) != 1 {
			return bad("one path")
		}
		b, err := a.c.ReadFile(ctx, student, pos[0])
		if err != nil {
			return ExitError, err
		}
		if c.bool("raw") || !a.stdoutTTY {
			_, err = a.stdout.Write(b)
		} else {
			e := newEscaper(a.stdout)
			_, err = e.Write(b)
			err = errors.Join(err, e.Flush())
		}
		if err != nil {
			return ExitError, fmt.Errorf("write output: %w", err)
		}
		return 0, nil
	case "put":
		if len(pos) != 1 && len(pos) != 2 {
			return bad("a path and a local file (or -, stdin)")
		}
		return a.filesPut(ctx, student, pos, c.bool("parents"))
	case "rm":
		if len(pos) == 0 {
			return bad("one or more paths")
		}
		var errs []error
		for _, p := range pos {
			if err := a.c.RemoveFile(ctx, student, p); err != nil {
				errs = append(errs, fmt.Errorf("rm %s: %w", p, err))
			}
		}
		if len(errs) > 0 {
			return ExitError, errors.Join(errs...)
		}
		return 0, nil
	case "mv":
		if len(pos) != 2 {
			return bad("FROM and TO")
		}
		info, err := a.c.MoveFile(ctx, student, pos[0], pos[1], c.bool("parents"))
		if err != nil {
			return ExitError, err
		}
		return a.fileInfo(info)
	}
	return ExitError, usagef(c.cmd, "unknown files command %q: want one of %s", verb, strings.Join(fileVerbs, ", "))
}

func (a *app) filesLs(ctx context.Context, student, dir string, raw bool) (int, error) {
	l, err := a.c.ListFiles(ctx, student, dir)
	if err != nil {
		return ExitError, err
	}
	if a.json {
		return 0, a.printJSON(l)
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TYPE\tSIZE\tMODIFIED\tNAME")
	for _, e := range l.Entries {
		name := e.Name
		if !raw && a.stdoutTTY {
			name = escapeString(name)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", e.Type, e.Size, e.Mtime.Local().Format("2006-01-02 15:04:05"), name)
	}
	if l.Truncated {
		fmt.Fprintf(tw, "…\t\t\t(only the first %d entries)\n", len(l.Entries))
	}
	return 0, flushTable(tw)
}

func (a *app) filesPut(ctx context.Context, student string, pos []string, parents bool) (int, error) {
	src := a.stdin
	if len(pos) == 2 && pos[1] != "-" {
		f, err := os.Open(pos[1])
		if err != nil {
			return ExitError, fmt.Errorf("put: %w", err)
		}
		defer f.Close() //nolint:errcheck // read-only file
		src = f
	}
	data, err := io.ReadAll(src)
	if err != nil {
		return ExitError, fmt.Errorf("put: read input: %w", err)
	}
	info, err := a.c.WriteFile(ctx, student, pos[0], data, parents)
	if err != nil {
		return ExitError, err
	}
	return a.fileInfo(info)
}

func (a *app) fileInfo(info api.FileInfo) (int, error) {
	if a.json {
		return 0, a.printJSON(info)
	}
	fmt.Fprintf(a.stdout, "%s %s %d bytes\n", info.Path, info.Type, info.Size)
	return 0, nil
}

// diskLine describes a student's disk use for `idexctl student`.
func diskLine(d api.Disk) string {
	if d.EnforcedBy == "" {
		return ""
	}
	limit := func(used, lim int64, unit func(int64) string) string {
		if lim == 0 {
			return unit(used) + " (no limit)"
		}
		return unit(used) + " of " + unit(lim)
	}
	s := fmt.Sprintf("disk    %s, %s files (enforced by %s)\n",
		limit(d.UsedBytes, d.LimitBytes, mib), limit(d.UsedFiles, d.LimitFiles, func(n int64) string { return fmt.Sprint(n) }), d.EnforcedBy)
	if d.Over() {
		s += "        over quota: new runs and writes are refused until files are deleted\n"
	}
	if d.Error != "" {
		s += "        " + d.Error + "\n"
	}
	return s
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
