package cli

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/idexd/idexd/internal/version"
)

// man prints idexctl(1) in roff, from the command table: `make man`
// builds the packaged page with it.
func (a *app) man(_ context.Context, _ *call) (int, error) {
	return 0, writeMan(a.stdout)
}

func writeMan(w io.Writer) error {
	var b strings.Builder
	// No date: the same source gives the same page (reproducible builds).
	fmt.Fprintf(&b, ".TH IDEXCTL 1 \"\" \"idexctl %s\" \"idexd\"\n", roff(version.Version))
	b.WriteString(".SH NAME\nidexctl \\- control idexd, which runs students' Python scripts\n")
	b.WriteString(".SH SYNOPSIS\n.B idexctl\n[\\fB\\-\\-socket\\fR \\fIPATH\\fR] [\\fB\\-\\-json\\fR] \\fICOMMAND\\fR [\\fIFLAGS\\fR] [\\fIARGS\\fR]\n")
	b.WriteString(".SH DESCRIPTION\n")
	manText(&b, intro+"\n\n"+socketNote)
	b.WriteString(".SH GLOBAL OPTIONS\n")
	manFlags(&b, append(append([]*flagDef{}, globalFlags...), flagVersion))
	b.WriteString(".SH COMMANDS\n")
	for _, c := range visibleCommands() {
		fmt.Fprintf(&b, ".SS %s\n.PP\n\\fBidexctl %s\\fR\n", roff(c.name), roff(c.synopsis()))
		text := c.help
		if text == "" {
			text = upperFirst(c.summary) + "."
		}
		manText(&b, text)
		if len(c.flags) > 0 {
			manFlags(&b, c.flags)
		}
	}
	b.WriteString(`.SH EXIT STATUS
.B idexctl run
exits with` + "\n" + roffLine(exitCodes) + ".\n" + `.B idexctl health
exits 0 when idexd is ok, 1 when degraded or draining, 2 when unreachable.
Every command exits 1 when idexctl itself fails (bad usage, a refusal, no connection)
and 0 on success.
.SH ENVIRONMENT
.TP
.B IDEX_SOCKET
idexd's socket when \fB\-\-socket\fR is not given.
.SH FILES
.TP
.I /run/idexd/idexd.sock
idexd's socket (0660 root:idex): members of group \fBidex\fR may run and stop,
members of \fBidex\-admin\fR (and root) may do everything.
.SH SEE ALSO
.BR idexd (8),
.IR /usr/share/doc/idexd/README.md ,
.I /usr/share/doc/idexd/protocol.md
`)
	_, err := io.WriteString(w, b.String())
	return err
}

// manText writes help text: paragraphs, and lines indented by two spaces
// as literal examples.
func manText(b *strings.Builder, text string) {
	for _, para := range strings.Split(text, "\n\n") {
		lines := strings.Split(para, "\n")
		if strings.HasPrefix(lines[0], "  ") {
			b.WriteString(".PP\n.RS 4\n.nf\n")
			for _, l := range lines {
				b.WriteString(roffLine(strings.TrimPrefix(l, "  ")) + "\n")
			}
			b.WriteString(".fi\n.RE\n")
			continue
		}
		b.WriteString(".PP\n")
		for _, l := range lines {
			b.WriteString(roffLine(l) + "\n")
		}
	}
}

func manFlags(b *strings.Builder, defs []*flagDef) {
	for _, f := range defs {
		b.WriteString(".TP\n")
		if f.short != "" {
			fmt.Fprintf(b, "\\fB\\-%s\\fR, ", roff(f.short))
		}
		fmt.Fprintf(b, "\\fB%s\\fR", roff(flagName(f)))
		if f.arg != "" {
			fmt.Fprintf(b, " \\fI%s\\fR", roff(f.arg))
		}
		b.WriteString("\n" + roffLine(f.usage) + "\n")
	}
}

// roff escapes text for roff: backslashes and hyphens (which roff would
// turn into typographic dashes that cannot be copied into a shell).
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	return strings.ReplaceAll(s, "-", `\-`)
}

// roffLine escapes a line of text; one starting with . or ' would be a
// request.
func roffLine(s string) string {
	s = roff(s)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}
