// Package logging builds idexd's *slog.Logger: structured text on stderr,
// or, when stderr is connected to the systemd journal, journald's native
// protocol, so that every attribute is a journal field and an operator can
// ask `journalctl -u idexd RUN=<id>` for one run's lines.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"syscall"

	"github.com/coreos/go-systemd/v22/journal"
)

// New returns a logger at level writing to w, or to the journal when w is
// os.Stderr and stderr is the journal's stream.
func New(level slog.Level, w io.Writer) *slog.Logger {
	if f, ok := w.(*os.File); ok && f == os.Stderr && stderrIsJournal() && journal.Enabled() {
		return slog.New(&journalHandler{level: level, fallback: slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})})
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// stderrIsJournal follows systemd's rule: JOURNAL_STREAM names the
// device and inode of the stream that stderr must still be.
func stderrIsJournal() bool {
	v := os.Getenv("JOURNAL_STREAM")
	if v == "" {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(2, &st); err != nil {
		return false
	}
	return v == fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

type journalHandler struct {
	level    slog.Level
	attrs    []slog.Attr
	groups   []string
	fallback slog.Handler
}

func (h *journalHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	vars := map[string]string{}
	var text strings.Builder
	text.WriteString(r.Message)
	add := func(a slog.Attr) {
		key := fieldName(h.groups, a.Key)
		val := a.Value.Resolve().String()
		vars[key] = val
		fmt.Fprintf(&text, " %s=%s", a.Key, quote(val))
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(func(a slog.Attr) bool {
		add(a)
		return true
	})
	if err := journal.Send(text.String(), priority(r.Level), vars); err != nil {
		// The journal went away: the line still goes to stderr, which
		// journald (or whoever reads it now) records as text.
		return h.fallback.Handle(ctx, r)
	}
	return nil
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	n := *h
	n.attrs = append(append([]slog.Attr{}, h.attrs...), as...)
	n.fallback = h.fallback.WithAttrs(as)
	return &n
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	n := *h
	n.groups = append(append([]string{}, h.groups...), name)
	n.fallback = h.fallback.WithGroup(name)
	return &n
}

// fieldName makes a journal field name: upper case letters, digits and
// underscores, not starting with an underscore (those are systemd's).
func fieldName(groups []string, key string) string {
	full := strings.Join(append(append([]string{}, groups...), key), "_")
	b := []byte(strings.ToUpper(full))
	for i, c := range b {
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') {
			b[i] = '_'
		}
	}
	s := strings.TrimLeft(string(b), "_0123456789")
	if s == "" {
		s = "ATTR"
	}
	return s
}

func quote(s string) string {
	if strings.ContainsAny(s, " \t\n\"=") {
		return fmt.Sprintf("%q", s)
	}
	return s
}

func priority(l slog.Level) journal.Priority {
	switch {
	case l >= slog.LevelError:
		return journal.PriErr
	case l >= slog.LevelWarn:
		return journal.PriWarning
	case l >= slog.LevelInfo:
		return journal.PriInfo
	default:
		return journal.PriDebug
	}
}
