package cli

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/students"
)

// flagDef is one flag of a command. Help, the man page and shell
// completion are all printed from these, so what a flag is called, what
// it takes and what it accepts is said once.
type flagDef struct {
	name  string // long name: --name (-name is accepted too)
	short string // one-letter alias, or ""
	arg   string // the value's placeholder in help (NAME, DURATION); "" for a switch
	usage string
	// parse turns the text after the flag into its value, or says what
	// is wrong and how to write it. nil for a switch.
	parse func(string) (any, error)
	// complete offers values for completion: a compXxx kind or fixed
	// words (see candidates).
	complete string
	required bool
}

// Completion kinds of flag values and positional arguments.
const (
	compStudents = "@students" // known students (asks idexd)
	compRuns     = "@runs"     // recent runs (asks idexd)
	compLive     = "@live"     // running runs (asks idexd)
	compCommands = "@commands"
	compFiles    = "@files" // the shell's own file names
)

// Flags shared by several commands: one definition each.
var (
	flagSocket = &flagDef{name: "socket", arg: "PATH",
		usage: "idexd's socket (default: $IDEX_SOCKET, else /run/idexd/idexd.sock)",
		parse: parseNonEmpty, complete: compFiles}
	flagJSON = &flagDef{name: "json", usage: "print protocol objects as JSON, one a line"}
	flagHelp = &flagDef{name: "help", short: "h", usage: "show help"}

	flagStudentFilter = &flagDef{name: "student", arg: "NAME", usage: "only this student's runs",
		parse: parseStudent, complete: compStudents}
	flagRaw = &flagDef{name: "raw",
		usage: "write the program's output as it is, control characters included, even to a terminal"}
)

// globalFlags are accepted before the command and after it.
var globalFlags = []*flagDef{flagSocket, flagJSON, flagHelp}

// usageError is bad usage: Main adds where to read the command's help.
type usageError struct {
	cmd string
	msg string
}

func (e *usageError) Error() string { return e.msg }

func usagef(cmd *command, format string, a ...any) error {
	name := ""
	if cmd != nil {
		name = cmd.name
	}
	return &usageError{cmd: name, msg: fmt.Sprintf(format, a...)}
}

// call is one parsed invocation of a command.
type call struct {
	cmd  *command
	args []string
	vals map[string]any
}

func (c *call) isSet(name string) bool { _, ok := c.vals[name]; return ok }

func (c *call) bool(name string) bool { v, _ := c.vals[name].(bool); return v }

func (c *call) str(name string) string { v, _ := c.vals[name].(string); return v }

func (c *call) int64(name string) int64 { v, _ := c.vals[name].(int64); return v }

func (c *call) duration(name string) time.Duration { v, _ := c.vals[name].(time.Duration); return v }

// parseArgs reads a command's flags and positional arguments. Flags may
// come anywhere, before or after the arguments, as --name VALUE,
// --name=VALUE or -name VALUE; the first "--" ends them, and is not an
// argument itself, so that arguments starting with "-" can follow it.
func parseArgs(cmd *command, words []string, vals map[string]any) (*call, error) {
	c := &call{cmd: cmd, vals: vals}
	defs := append(append([]*flagDef{}, cmd.flags...), globalFlags...)
	for i := 0; i < len(words); i++ {
		w := words[i]
		if w == "--" {
			c.args = append(c.args, words[i+1:]...)
			break
		}
		if len(w) < 2 || w[0] != '-' {
			c.args = append(c.args, w)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(w, "-"), "=")
		f := findFlag(defs, name)
		if f == nil {
			return nil, unknownFlag(cmd, defs, w)
		}
		if f.parse == nil {
			if hasValue {
				b, err := strconv.ParseBool(value)
				if err != nil {
					return nil, usagef(cmd, "%s takes no value (got %q)", flagName(f), value)
				}
				c.vals[f.name] = b
				continue
			}
			c.vals[f.name] = true
			continue
		}
		if !hasValue {
			if i+1 >= len(words) {
				return nil, usagef(cmd, "%s needs a value: %s %s", flagName(f), flagName(f), f.arg)
			}
			i++
			value = words[i]
		}
		v, err := f.parse(value)
		if err != nil {
			return nil, usagef(cmd, "%s %s: %v", flagName(f), value, err)
		}
		c.vals[f.name] = v
	}
	if c.bool("help") {
		return c, nil
	}
	for _, f := range cmd.flags {
		if f.required && !c.isSet(f.name) {
			return nil, usagef(cmd, "%s is required: idexctl %s", flagName(f), cmd.synopsis())
		}
	}
	if len(c.args) < cmd.minArgs || (cmd.maxArgs >= 0 && len(c.args) > cmd.maxArgs) {
		return nil, usagef(cmd, "usage: idexctl %s", cmd.synopsis())
	}
	return c, nil
}

func findFlag(defs []*flagDef, name string) *flagDef {
	for _, f := range defs {
		if name == f.name || (f.short != "" && name == f.short) {
			return f
		}
	}
	return nil
}

func flagName(f *flagDef) string { return "--" + f.name }

func unknownFlag(cmd *command, defs []*flagDef, w string) error {
	msg := fmt.Sprintf("unknown flag %s", w)
	name, _, _ := strings.Cut(strings.TrimLeft(w, "-"), "=")
	names := make([]string, 0, len(defs))
	for _, f := range defs {
		names = append(names, f.name)
	}
	if s := suggest(name, names); s != "" {
		msg += fmt.Sprintf(" (did you mean --%s?)", s)
	}
	if cmd.passesArgs {
		msg += fmt.Sprintf("\nthe script's own arguments that start with - go after --: idexctl %s %s -- %s", cmd.name, "[FLAGS] SCRIPT", w)
	}
	return usagef(cmd, "%s", msg)
}

// suggest returns the candidate closest to s when it is close enough to
// be a typo (an edit distance of at most 2), else "".
func suggest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := editDistance(s, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// ---- values: each parser says what is wrong and how to write it ----

func parseNonEmpty(s string) (any, error) {
	if s == "" {
		return nil, errors.New("must not be empty")
	}
	return s, nil
}

// parseStudent validates a name as idexd does, so that a typo is refused
// here rather than found as an empty list.
func parseStudent(s string) (any, error) {
	if err := students.ValidName(s); err != nil {
		msg := "student names are lower-case Unix names (^[a-z_][a-z0-9_-]{0,31}$)"
		if low := strings.ToLower(s); low != s && students.ValidName(low) == nil {
			msg += fmt.Sprintf("; did you mean %s?", low)
		}
		return nil, errors.New(msg)
	}
	return s, nil
}

// parseDuration reads a positive Go duration and, for a bare number,
// says which unit to add.
func parseDuration(s string) (any, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		if n, nerr := strconv.ParseFloat(s, 64); nerr == nil && n > 0 {
			return nil, fmt.Errorf("a duration needs a unit: %ss (or %sm, 1h30m, 500ms)", s, s)
		}
		return nil, errors.New("want a duration like 30s, 2m or 1h30m")
	}
	if d <= 0 {
		return nil, errors.New("must be positive, like 30s")
	}
	return d, nil
}

// parseSince reads how far back to look: a duration (1h) or a time
// (2006-01-02, 2006-01-02 15:04, RFC 3339).
func parseSince(s string) (any, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return nil, errors.New("must be positive, like 1h")
		}
		return time.Now().Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339, "2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return nil, fmt.Errorf("a duration needs a unit: %sh (or %sm, 30s)", s, s)
	}
	return nil, errors.New("want a duration (1h, 30m) or a date and time (2006-01-02, \"2006-01-02 15:04\")")
}

// positive returns a parser of a whole number in [1, max].
func positive(what string, max int64) func(string) (any, error) {
	return func(s string) (any, error) {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 1 || n > max {
			return nil, fmt.Errorf("want %s from 1 to %d", what, max)
		}
		return n, nil
	}
}

func parseSeq(s string) (any, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return nil, errors.New("want a sequence number, 0 or more (the seq of the last event seen)")
	}
	return n, nil
}

func reasonWords() string {
	w := make([]string, len(api.Reasons))
	for i, r := range api.Reasons {
		w[i] = string(r)
	}
	return strings.Join(w, " ")
}

func parseReason(s string) (any, error) {
	for _, r := range api.Reasons {
		if string(r) == s {
			return r, nil
		}
	}
	msg := "want one of " + strings.ReplaceAll(reasonWords(), " ", ", ")
	if sg := suggest(s, strings.Fields(reasonWords())); sg != "" {
		msg = fmt.Sprintf("did you mean %s? (%s)", sg, msg)
	}
	return nil, errors.New(msg)
}

// size units, largest first so that "MiB" is not read as "B".
var sizeUnits = []struct {
	suffix string
	kib    int64
}{{"GiB", 1 << 20}, {"GB", 1 << 20}, {"G", 1 << 20}, {"MiB", 1 << 10}, {"MB", 1 << 10}, {"M", 1 << 10}, {"KiB", 1}, {"KB", 1}, {"K", 1}}

// parseSizeKiB reads 256MiB, 1GiB, 512KiB (or the same without "iB");
// a bare number is in bareKiB units.
func parseSizeKiB(s string, bareKiB int64) (int64, error) {
	t := strings.TrimSpace(s)
	mult := bareKiB
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.kib
			break
		}
	}
	v, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || v <= 0 || v > math.MaxInt64/mult {
		return 0, errors.New("want a positive size like 512KiB, 256MiB or 1GiB")
	}
	return v * mult, nil
}

// ParseMiB reads sizes like 256MiB, 256M, 1GiB, 1G or 512 (MiB), rounded
// up to whole MiB.
func ParseMiB(s string) (int64, error) {
	kib, err := parseSizeKiB(s, 1<<10)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	return (kib + 1023) / 1024, nil
}

func parseMemory(s string) (any, error) {
	kib, err := parseSizeKiB(s, 1<<10)
	if err != nil {
		return nil, err
	}
	return (kib + 1023) / 1024, nil
}

func parseOutput(s string) (any, error) {
	kib, err := parseSizeKiB(s, 1)
	if err != nil {
		return nil, err
	}
	return kib, nil
}

func parseShell(s string) (any, error) {
	for _, sh := range shells {
		if s == sh {
			return s, nil
		}
	}
	return nil, fmt.Errorf("want one of %s", strings.Join(shells, ", "))
}
