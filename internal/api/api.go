// Package api holds the wire types of idexd's control protocol: the objects
// the server sends and the client decodes, in one place so that the two can
// never disagree about a field name.
package api

import (
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"
)

// Version is the protocol version; every route lives under /v1/.
const Version = "v1"

// Mode says how the interpreter runs a script.
type Mode string

const (
	// ModeScript runs `python3 SCRIPT ARGS`, as a student would in a terminal.
	ModeScript Mode = "script"
	// ModeRepl runs `python3 -i SCRIPT`: the script's variables stay for the REPL.
	ModeRepl Mode = "repl"
)

// State is where a run is in its life.
type State string

const (
	StateRunning State = "running"
	StateEnded   State = "ended"
)

// Reason is the single reason a run ended.
type Reason string

const (
	ReasonExited      Reason = "exited"
	ReasonSignaled    Reason = "signaled"
	ReasonOOMKilled   Reason = "oom_killed"
	ReasonTimedOut    Reason = "timed_out"
	ReasonOutputLimit Reason = "output_limit"
	ReasonStopped     Reason = "stopped"
	ReasonShutdown    Reason = "shutdown"
	ReasonStartFailed Reason = "start_failed"
	ReasonLost        Reason = "lost"
	// ReasonInputTimeout: the program waited for input longer than
	// input_wait_seconds (an abandoned program).
	ReasonInputTimeout Reason = "input_timeout"
	// ReasonLockLost: the run's shared lock (a PostgreSQL lease) expired
	// while this host could not renew it and another run took it, so the
	// run was stopped to leave the script to that one.
	ReasonLockLost Reason = "lock_lost"
)

// Reasons lists every Reason, for clients that check or complete one
// (idexctl history --reason); TestReasonsListsEveryReason keeps it whole.
var Reasons = []Reason{
	ReasonExited, ReasonSignaled, ReasonOOMKilled, ReasonTimedOut, ReasonOutputLimit,
	ReasonStopped, ReasonShutdown, ReasonStartFailed, ReasonLost, ReasonLockLost, ReasonInputTimeout,
}

// Limits bound one run. A zero field means "the configured default".
type Limits struct {
	MemoryMB    int64 `json:"memory_mb,omitempty" toml:"memory_mb"`
	Pids        int64 `json:"pids,omitempty" toml:"pids"`
	CPUPercent  int64 `json:"cpu_percent,omitempty" toml:"cpu_percent"`
	WallSeconds int64 `json:"wall_seconds,omitempty" toml:"wall_seconds"`
	CPUSeconds  int64 `json:"cpu_seconds,omitempty" toml:"cpu_seconds"`
	OutputKB    int64 `json:"output_kb,omitempty" toml:"output_kb"`
}

// limitField is one field of Limits, named as on the wire.
type limitField struct {
	name string
	v    *int64
}

func (l *Limits) fields() []limitField {
	return []limitField{
		{"memory_mb", &l.MemoryMB}, {"pids", &l.Pids}, {"cpu_percent", &l.CPUPercent},
		{"wall_seconds", &l.WallSeconds}, {"cpu_seconds", &l.CPUSeconds}, {"output_kb", &l.OutputKB},
	}
}

// Fit returns an error naming the first field of l above max.
func (l Limits) Fit(max Limits) error {
	lf, mf := l.fields(), max.fields()
	for i := range lf {
		if *lf[i].v > *mf[i].v {
			return fmt.Errorf("%s %d is above the maximum %d", lf[i].name, *lf[i].v, *mf[i].v)
		}
	}
	return nil
}

// Unset names each field that is not positive: configured defaults and
// maximums must set every one.
func (l Limits) Unset() []error {
	var errs []error
	for _, f := range l.fields() {
		if *f.v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %d", f.name, *f.v))
		}
	}
	return errs
}

// Effective is the policy for a request's limits: unset ones (zero) take
// the defaults, and a request may lower any limit, or raise it up to max.
func (l Limits) Effective(defaults, max Limits) (Limits, error) {
	out := l
	of, df := out.fields(), defaults.fields()
	for i := range of {
		switch {
		case *of[i].v < 0:
			return Limits{}, Errorf(CodeInvalidRequest, "limits.%s must not be negative, got %d", of[i].name, *of[i].v)
		case *of[i].v == 0:
			*of[i].v = *df[i].v
		}
	}
	if err := out.Fit(max); err != nil {
		return Limits{}, Errorf(CodeLimitTooHigh, "limits: %v", err)
	}
	return out, nil
}

// RunRequest is the body of POST /v1/runs.
type RunRequest struct {
	Student string   `json:"student"`
	Script  string   `json:"script"`
	Args    []string `json:"args,omitempty"`
	Mode    Mode     `json:"mode,omitempty"`
	Limits  Limits   `json:"limits"`
	// Terminal, when set, runs the program on a pseudo-terminal of this
	// size: one output stream exactly as a terminal shows it (echo, line
	// editing, \r, colours), isatty() true, TERM=xterm-256color.
	Terminal *Terminal `json:"terminal,omitempty"`
	// Cwd is the directory the program starts in, relative to the
	// student's directory (an IDE runs a script from its own folder);
	// empty: the student's directory. Script is relative to it.
	Cwd string `json:"cwd,omitempty"`
	// WaitSeconds is how long the start may wait in this host's admission
	// queue for a free slot when the host runs max_runs already (at most
	// the configured max_wait_seconds; a longer wait is cut to it). 0:
	// refused at_capacity at once.
	WaitSeconds int `json:"wait_seconds,omitempty"`
}

// Run is the run object: what the server knows of one run.
type Run struct {
	ID              string     `json:"id"`
	Host            string     `json:"host,omitempty"`
	Student         string     `json:"student"`
	UID             uint32     `json:"uid"`
	GID             uint32     `json:"gid"`
	Script          string     `json:"script"`
	ScriptSHA256    string     `json:"script_sha256,omitempty"`
	Args            []string   `json:"args,omitempty"`
	Cwd             string     `json:"cwd,omitempty"`
	Terminal        *Terminal  `json:"terminal,omitempty"`
	Mode            Mode       `json:"mode"`
	State           State      `json:"state"`
	Reason          Reason     `json:"reason,omitempty"`
	ExitCode        *int       `json:"exit_code,omitempty"`
	Signal          string     `json:"signal,omitempty"`
	Error           string     `json:"error,omitempty"`
	Limits          Limits     `json:"limits"`
	StartedAt       time.Time  `json:"started_at"`
	EndedAt         *time.Time `json:"ended_at,omitempty"`
	WallMS          int64      `json:"wall_ms"`
	CPUMS           int64      `json:"cpu_ms"`
	PeakMemoryBytes int64      `json:"peak_memory_bytes"`
	OutputBytes     int64      `json:"output_bytes"`
	Truncated       bool       `json:"truncated"`
	// MemoryBytes is a live run's current memory (the cgroup's usage),
	// read when the run is asked for; 0 once it has ended.
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
	// WaitingInput is true while the program is blocked reading its empty
	// stdin (the web tier shows an input box then).
	WaitingInput bool `json:"waiting_input"`
	// InputWaitMS is how long the program waited for input in all: the
	// wall limit does not count it.
	InputWaitMS int64 `json:"input_wait_ms,omitempty"`
	// Message is one sentence for a student about how the run ended
	// (EndMessage); empty while it runs.
	Message string `json:"message,omitempty"`
}

// Terminal is a terminal's size in characters: the body of POST
// /v1/runs/{id}/resize, and RunRequest.Terminal.
type Terminal struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// MaxTerminalSide bounds rows and cols.
const MaxTerminalSide = 1000

// Check says what is wrong with a terminal size, if anything.
func (t *Terminal) Check() error {
	if t.Rows < 1 || t.Cols < 1 || t.Rows > MaxTerminalSide || t.Cols > MaxTerminalSide {
		return Errorf(CodeInvalidRequest, "terminal rows and cols must be 1..%d, got %dx%d", MaxTerminalSide, t.Rows, t.Cols)
	}
	return nil
}

// Ended reports whether the run has its final record.
func (r *Run) Ended() bool { return r.State == StateEnded }

// EventType tags an event of a run's stream.
type EventType string

const (
	EventStdout EventType = "stdout"
	EventStderr EventType = "stderr"
	// EventTruncated marks where output past the cap was cut.
	EventTruncated EventType = "truncated"
	// EventInputWait and EventInputResume: the program started, and
	// stopped, waiting for input.
	EventInputWait   EventType = "input_wait"
	EventInputResume EventType = "input_resume"
	// EventEnd is the last event of every stream; it carries the final run.
	EventEnd EventType = "end"
	// EventStarted opens the answer to POST /v1/runs?follow=1 and only it:
	// seq 0, with the run as it started (what POST /v1/runs answers), so
	// that one request starts a run and follows it.
	EventStarted EventType = "started"
)

// Event is one line of GET /v1/runs/{id}/events. Output that is valid UTF-8
// travels in Data; anything else travels byte for byte, base64-encoded, in
// B64, so that no byte a program writes is lost or altered on the way.
type Event struct {
	Seq  int64     `json:"seq"`
	Type EventType `json:"type"`
	Data string    `json:"data,omitempty"`
	B64  []byte    `json:"b64,omitempty"`
	Run  *Run      `json:"run,omitempty"`
}

// OutputEvent builds an output event, choosing the encoding that keeps every byte.
func OutputEvent(seq int64, t EventType, p []byte) Event {
	if utf8.Valid(p) {
		return Event{Seq: seq, Type: t, Data: string(p)}
	}
	return Event{Seq: seq, Type: t, B64: append([]byte(nil), p...)}
}

// Bytes returns the event's payload as the program wrote it.
func (e *Event) Bytes() []byte {
	if e.B64 != nil {
		return e.B64
	}
	return []byte(e.Data)
}

// Student is a student as idexd knows it.
type Student struct {
	Name    string `json:"name"`
	UID     uint32 `json:"uid"`
	GID     uint32 `json:"gid"`
	Workdir string `json:"workdir"`
	// Disk is the student's disk usage (GET and PUT /v1/students/{name}).
	Disk Disk `json:"disk,omitzero"`
}

// Check is one self-check of the health report.
type Check struct {
	Name    string `json:"name"`
	OK      bool   `json:"ok"`
	Message string `json:"message,omitempty"`
}

// Health is the body of GET /v1/health.
type Health struct {
	Status     string `json:"status"` // ok, degraded or draining
	Version    string `json:"version"`
	UptimeS    int64  `json:"uptime_s"`
	RunsActive int    `json:"runs_active"`
	CgroupMode string `json:"cgroup_mode"`
	Store      string `json:"store"`
	// Network is what network runs get: "none" (a namespace with only lo)
	// or "host" (the host's, the instance metadata service included).
	Network string `json:"network"`
	// Queue is the admission queue: starts waiting for a free slot.
	Queue  QueueHealth `json:"queue"`
	Checks []Check     `json:"checks"`
}

// QueueHealth is the admission queue as health shows it.
type QueueHealth struct {
	// Length is how many starts wait now, OldestWaitMS how long the one
	// that waits longest has waited.
	Length       int   `json:"length"`
	OldestWaitMS int64 `json:"oldest_wait_ms"`
	// Max is how many may wait at once (queue_max); 0: there is no queue
	// (max_wait_seconds = 0).
	Max int `json:"max"`
}

// StudentStop is the body of POST /v1/students/{name}/stop: every run of
// the student that was stopped, as it ended, and how many starts of the
// student that waited in the admission queue were refused
// (student_stopped).
type StudentStop struct {
	Student         string `json:"student"`
	Stopped         []Run  `json:"stopped"`
	QueuedCancelled int    `json:"queued_cancelled"`
}

// Health statuses.
const (
	HealthOK       = "ok"
	HealthDegraded = "degraded"
	HealthDraining = "draining"
)

// RunFilter selects runs (GET /v1/runs, and the store's queries); zero
// fields select everything.
type RunFilter struct {
	Student string
	State   State
	Reason  Reason
	Host    string
	Since   time.Time
	Limit   int
}

// DebugState is the body of GET /v1/debug/state: what the soak test
// checks for leaks.
type DebugState struct {
	Goroutines int `json:"goroutines"`
	FDs        int `json:"fds"`
	RunsActive int `json:"runs_active"`
	RunsKept   int `json:"runs_kept"`
	LocksHeld  int `json:"locks_held"`
	Cgroups    int `json:"cgroups"`
	// NetworksKept are network namespaces kept for students' next runs:
	// four fds of idexd's each (the namespace and three lists of its
	// sockets), part of FDs.
	NetworksKept int `json:"networks_kept"`
	// CgroupsKept are warm groups of ended runs kept for the next warm
	// helpers (hybrid hosts): one fd of idexd's each, part of FDs.
	CgroupsKept int `json:"cgroups_kept"`
	// CgroupFiles are the cgroup files warm groups keep open (hybrid
	// hosts): the kept groups' and the live warm helpers' and runs', one
	// fd each, part of FDs.
	CgroupFiles int `json:"cgroup_files"`
}

// VersionInfo is the body of GET /v1/version.
type VersionInfo struct {
	Version string `json:"version"`
	API     string `json:"api"`
}

// RunList is the body of GET /v1/runs.
type RunList struct {
	Runs []Run `json:"runs"`
}

// StudentList is the body of GET /v1/students.
type StudentList struct {
	Students []Student `json:"students"`
}

// MustJSON is for tests and examples: it panics only on types that cannot
// be encoded at all, which is a programming error.
func MustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
