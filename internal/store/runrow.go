package store

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/idexd/idexd/internal/api"
)

// The run rows of both stores: one table layout, one set of statements,
// written here once. Each store gives its Dialect (placeholders, how a
// time and a JSON value travel) and scans rows with its own driver into a
// RunRow.

// Dialect is how a store's driver takes the statements' values.
type Dialect struct {
	// Placeholder names the i-th argument (1-based): "?" or "$i".
	Placeholder func(i int) string
	// Time is a time as the column holds it.
	Time func(time.Time) any
	// JSON is an encoded JSON value as the column takes it.
	JSON func([]byte) any
	// OrderByID orders by id bytewise, as SQLite does by default.
	OrderByID string
}

// RunColumns are the columns of a run's row, in RunRow's order.
const RunColumns = `id, host, student, uid, gid, script, script_sha256, args, mode, limits, state, reason, exit_code, signal, error,
	started_at, ended_at, wall_ms, cpu_ms, peak_memory_bytes, output_bytes, truncated`

func (d Dialect) places(n int) string {
	p := make([]string, n)
	for i := range p {
		p[i] = d.Placeholder(i + 1)
	}
	return strings.Join(p, ", ")
}

// StartSQL inserts the "started" record; StartArgs are its values.
func (d Dialect) StartSQL() string {
	return `INSERT INTO runs (id, host, student, uid, gid, script, script_sha256, args, mode, limits, state, started_at)
		VALUES (` + d.places(12) + `)`
}

// StartArgs are StartSQL's values for r.
func (d Dialect) StartArgs(r *api.Run) ([]any, error) {
	args, lim, err := encodeRunJSON(r)
	if err != nil {
		return nil, err
	}
	return []any{r.ID, r.Host, r.Student, r.UID, r.GID, r.Script, r.ScriptSHA256, d.JSON(args), string(r.Mode), d.JSON(lim),
		string(api.StateRunning), d.Time(r.StartedAt)}, nil
}

// EndSQL writes the final record, inserting the row if the start was
// never written, so an end is never lost; EndArgs are its values.
func (d Dialect) EndSQL() string {
	return `INSERT INTO runs (id, host, student, uid, gid, script, script_sha256, args, mode, limits, state, started_at,
			reason, exit_code, signal, error, ended_at, wall_ms, cpu_ms, peak_memory_bytes, output_bytes, truncated)
		VALUES (` + d.places(22) + `)
		ON CONFLICT (id) DO UPDATE SET state = excluded.state, reason = excluded.reason, exit_code = excluded.exit_code,
			signal = excluded.signal, error = excluded.error, ended_at = excluded.ended_at, wall_ms = excluded.wall_ms,
			cpu_ms = excluded.cpu_ms, peak_memory_bytes = excluded.peak_memory_bytes,
			output_bytes = excluded.output_bytes, truncated = excluded.truncated`
}

// EndArgs are EndSQL's values for r.
func (d Dialect) EndArgs(r *api.Run) ([]any, error) {
	args, lim, err := encodeRunJSON(r)
	if err != nil {
		return nil, err
	}
	var ended any
	if r.EndedAt != nil {
		ended = d.Time(*r.EndedAt)
	}
	return []any{r.ID, r.Host, r.Student, r.UID, r.GID, r.Script, r.ScriptSHA256, d.JSON(args), string(r.Mode), d.JSON(lim),
		string(r.State), d.Time(r.StartedAt), string(r.Reason), r.ExitCode, r.Signal, r.Error, ended, r.WallMS, r.CPUMS,
		r.PeakMemoryBytes, r.OutputBytes, r.Truncated}, nil
}

// GetRunSQL selects the row of one run (its id is the argument).
func (d Dialect) GetRunSQL() string {
	return `SELECT ` + RunColumns + ` FROM runs WHERE id = ` + d.Placeholder(1)
}

// ListRunsSQL selects the rows f asks for, newest first, and its values.
func (d Dialect) ListRunsSQL(f RunFilter) (string, []any) {
	var where []string
	var args []any
	add := func(col string, v any) {
		args = append(args, v)
		where = append(where, col+" = "+d.Placeholder(len(args)))
	}
	if f.Student != "" {
		add("student", f.Student)
	}
	if f.State != "" {
		add("state", string(f.State))
	}
	if f.Reason != "" {
		add("reason", string(f.Reason))
	}
	if f.Host != "" {
		add("host", f.Host)
	}
	if !f.Since.IsZero() {
		args = append(args, d.Time(f.Since))
		where = append(where, "started_at >= "+d.Placeholder(len(args)))
	}
	q := `SELECT ` + RunColumns + ` FROM runs`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY started_at DESC, " + d.OrderByID + " DESC"
	if f.Limit > 0 {
		args = append(args, f.Limit)
		q += " LIMIT " + d.Placeholder(len(args))
	}
	return q, args
}

// RunRow is a row of RunColumns as a driver scans it.
type RunRow struct {
	Run                 api.Run
	Args, Limits        []byte
	Mode, State, Reason string
	ExitCode            *int64
	StartedAt           time.Time
	EndedAt             *time.Time
}

// Dest are the scan destinations of RunColumns, but for the two times,
// which each driver reads its own way (started, ended).
func (row *RunRow) Dest(started, ended any) []any {
	r := &row.Run
	return []any{&r.ID, &r.Host, &r.Student, &r.UID, &r.GID, &r.Script, &r.ScriptSHA256, &row.Args, &row.Mode, &row.Limits,
		&row.State, &row.Reason, &row.ExitCode, &r.Signal, &r.Error, started, ended, &r.WallMS, &r.CPUMS, &r.PeakMemoryBytes,
		&r.OutputBytes, &r.Truncated}
}

// Decode completes the run from the row's encoded columns.
func (row *RunRow) Decode() (api.Run, error) {
	r := row.Run
	if err := json.Unmarshal(row.Args, &r.Args); err != nil {
		return api.Run{}, fmt.Errorf("decode args of run %s: %w", r.ID, err)
	}
	if len(r.Args) == 0 {
		r.Args = nil
	}
	if err := json.Unmarshal(row.Limits, &r.Limits); err != nil {
		return api.Run{}, fmt.Errorf("decode limits of run %s: %w", r.ID, err)
	}
	r.Mode, r.State, r.Reason = api.Mode(row.Mode), api.State(row.State), api.Reason(row.Reason)
	if row.ExitCode != nil {
		c := int(*row.ExitCode)
		r.ExitCode = &c
	}
	r.StartedAt = row.StartedAt.UTC()
	if row.EndedAt != nil {
		t := row.EndedAt.UTC()
		r.EndedAt = &t
	}
	return r, nil
}

// encodeRunJSON encodes args (never null) and limits.
func encodeRunJSON(r *api.Run) (args, limits []byte, err error) {
	a := r.Args
	if a == nil {
		a = []string{}
	}
	if args, err = json.Marshal(a); err != nil {
		return nil, nil, fmt.Errorf("encode args of run %s: %w", r.ID, err)
	}
	if limits, err = json.Marshal(r.Limits); err != nil {
		return nil, nil, fmt.Errorf("encode limits of run %s: %w", r.ID, err)
	}
	return args, limits, nil
}
