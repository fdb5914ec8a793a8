// Package client is the Go client of idexd's control protocol, used by
// idexctl and the tests. Errors from the server come back as *api.Error, so
// callers test them with errors.Is(err, api.ErrLocked) and friends.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/idexd/idexd/internal/api"
)

// DefaultSocket is where idexd listens unless told otherwise.
const DefaultSocket = "/run/idexd/idexd.sock"

// Client talks to one idexd. The zero value uses DefaultSocket. Its
// fields are read once, at the first request.
type Client struct {
	Socket string
	// ClientGroup names the group to join in permission errors.
	ClientGroup string
	// Dial, if set, opens each connection instead of dialing Socket.
	Dial func(ctx context.Context) (net.Conn, error)
	// Transport, if set, carries every request as it is (its own pool
	// and dialing); Socket, Dial and MaxIdleConns are then unused.
	Transport http.RoundTripper
	// MaxIdleConns is how many idle connections are kept for reuse
	// (default 16).
	MaxIdleConns int

	once sync.Once // builds hc: a Client is used from many goroutines
	hc   *http.Client
}

// New returns a client for socket.
func New(socket string) *Client { return &Client{Socket: socket} }

func (c *Client) socket() string {
	if c.Socket == "" {
		return DefaultSocket
	}
	return c.Socket
}

func (c *Client) http() *http.Client {
	c.once.Do(func() {
		tr := c.Transport
		if tr == nil {
			dial := c.Dial
			if dial == nil {
				sock := c.socket()
				dial = func(ctx context.Context) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", sock)
				}
			}
			idle := c.MaxIdleConns
			if idle <= 0 {
				idle = 16
			}
			tr = &http.Transport{
				DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
				MaxIdleConns:        idle,
				MaxIdleConnsPerHost: idle,
				IdleConnTimeout:     30 * time.Second,
			}
		}
		c.hc = &http.Client{Transport: tr}
	})
	return c.hc
}

// CloseIdleConnections closes the connections kept for reuse: each is a
// goroutine and an fd in the daemon, which a leak check would count.
func (c *Client) CloseIdleConnections() { c.http().CloseIdleConnections() }

// DialError explains why the socket could not be reached.
type DialError struct {
	Socket string
	Err    error
	Hint   string
}

func (e *DialError) Error() string {
	return fmt.Sprintf("cannot connect to %s: %v (%s)", e.Socket, e.Err, e.Hint)
}

func (e *DialError) Unwrap() error { return e.Err }

func (c *Client) dialError(err error) error {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "dial" {
		return err
	}
	group := c.ClientGroup
	if group == "" {
		group = "idex"
	}
	hint := "is idexd running? try: systemctl status idexd"
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.EACCES, syscall.EPERM:
			hint = "is your user in group " + group + "?"
		}
		return &DialError{Socket: c.socket(), Err: errno, Hint: hint}
	}
	return &DialError{Socket: c.socket(), Err: op.Err, Hint: hint}
}

// send does one request. body (if not nil) is sent as JSON, or raw when it
// is a []byte; the response is decoded into out (if not nil).
func (c *Client) send(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close() //nolint:errcheck // the body was read to the end
	if out == nil {
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return fmt.Errorf("%s %s: read response: %w", method, path, err)
		}
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	// Read the rest (the encoder's newline) so the connection is reused.
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return fmt.Errorf("%s %s: read response: %w", method, path, err)
	}
	return nil
}

// do sends a request and returns a 2xx response, or the server's error.
func (c *Client) do(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	ctype := ""
	switch b := body.(type) {
	case nil:
	case []byte:
		rd, ctype = bytes.NewReader(b), "application/octet-stream"
	default:
		buf, err := json.Marshal(b)
		if err != nil {
			return nil, fmt.Errorf("%s %s: encode body: %w", method, path, err)
		}
		rd, ctype = bytes.NewReader(buf), "application/json"
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://idexd"+path, rd)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return nil, c.dialError(err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close() //nolint:errcheck // error bodies are small and read whole
	var eb api.ErrorBody
	raw, rerr := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if rerr == nil && json.Unmarshal(raw, &eb) == nil && eb.Error != nil {
		return nil, eb.Error
	}
	return nil, &api.Error{Code: codeOfStatus(resp.StatusCode), Message: fmt.Sprintf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(raw))}
}

// codeOfStatus is the code of an error answer without an error body
// (something else answered on the socket): the statuses that have one code.
func codeOfStatus(status int) api.Code {
	if c, ok := statusCodes[status]; ok {
		return c
	}
	return api.CodeInternal
}

var statusCodes = map[int]api.Code{
	http.StatusBadRequest: api.CodeInvalidRequest, http.StatusForbidden: api.CodeForbidden,
	http.StatusNotFound: api.CodeNotFound, http.StatusMethodNotAllowed: api.CodeMethodNotAllowed,
	http.StatusRequestEntityTooLarge: api.CodeBodyTooLarge, http.StatusGatewayTimeout: api.CodeTimeout,
}

// StartRun starts a run.
func (c *Client) StartRun(ctx context.Context, req api.RunRequest) (api.Run, error) {
	var r api.Run
	return r, c.send(ctx, "POST", "/v1/runs", req, &r)
}

// StartRunFollow starts a run and follows its events in the same request
// (POST /v1/runs?follow=1): one round trip where StartRun and Events take
// two. The events begin at seq 1, as Events(ctx, id, 0) would give them;
// the stream lives as long as ctx. A daemon that predates follow answers
// with the run alone, and then Events is opened for it.
func (c *Client) StartRunFollow(ctx context.Context, req api.RunRequest) (api.Run, *Events, error) {
	//nolint:bodyclose // the body belongs to the returned Events; its Close closes it
	resp, err := c.do(ctx, "POST", "/v1/runs?follow=1", req)
	if err != nil {
		return api.Run{}, nil, err
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/x-ndjson") {
		var r api.Run
		err := json.NewDecoder(resp.Body).Decode(&r)
		if _, cerr := io.Copy(io.Discard, resp.Body); err == nil {
			err = cerr
		}
		if cerr := resp.Body.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return api.Run{}, nil, fmt.Errorf("POST /v1/runs: decode response: %w", err)
		}
		evs, err := c.Events(ctx, r.ID, 0)
		return r, evs, err
	}
	dec := json.NewDecoder(bufio.NewReader(resp.Body))
	var first api.Event
	if err := dec.Decode(&first); err != nil || first.Type != api.EventStarted || first.Run == nil {
		cerr := resp.Body.Close()
		if err == nil {
			err = fmt.Errorf("first event is %q, want %q with the run", first.Type, api.EventStarted)
		}
		return api.Run{}, nil, errors.Join(fmt.Errorf("POST /v1/runs?follow=1: %w", err), cerr)
	}
	// any: the stream has begun, so a cut before the end is unexpected.
	return *first.Run, &Events{body: resp.Body, dec: dec, follow: true, any: true}, nil
}

// GetRun returns a run.
func (c *Client) GetRun(ctx context.Context, id string) (api.Run, error) {
	var r api.Run
	return r, c.send(ctx, "GET", "/v1/runs/"+url.PathEscape(id), nil, &r)
}

// ListFilter selects runs.
type ListFilter struct {
	Student string
	State   api.State
	Reason  api.Reason
	Since   time.Time
	Limit   int
}

// ListRuns lists runs, newest first.
func (c *Client) ListRuns(ctx context.Context, f ListFilter) ([]api.Run, error) {
	q := url.Values{}
	if f.Student != "" {
		q.Set("student", f.Student)
	}
	if f.State != "" {
		q.Set("state", string(f.State))
	}
	if f.Reason != "" {
		q.Set("reason", string(f.Reason))
	}
	if !f.Since.IsZero() {
		q.Set("since", f.Since.UTC().Format(time.RFC3339))
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	var l api.RunList
	return l.Runs, c.send(ctx, "GET", "/v1/runs?"+q.Encode(), nil, &l)
}

// StopRun stops a run and returns it once its cgroup is empty.
func (c *Client) StopRun(ctx context.Context, id string) (api.Run, error) {
	var r api.Run
	return r, c.send(ctx, "POST", "/v1/runs/"+url.PathEscape(id)+"/stop", nil, &r)
}

// InterruptRun delivers Ctrl-C to a run's program: SIGINT to its process
// group. A program that catches KeyboardInterrupt goes on.
func (c *Client) InterruptRun(ctx context.Context, id string) error {
	return c.send(ctx, "POST", "/v1/runs/"+url.PathEscape(id)+"/interrupt", nil, nil)
}

// ResizeRun sets the size of a terminal-mode run's terminal; the program
// gets SIGWINCH.
func (c *Client) ResizeRun(ctx context.Context, id string, t api.Terminal) error {
	return c.send(ctx, "POST", "/v1/runs/"+url.PathEscape(id)+"/resize", t, nil)
}

// StopStudent stops every run of a student (admin) and returns them as
// they ended, once their processes are gone.
func (c *Client) StopStudent(ctx context.Context, name string) (api.StudentStop, error) {
	var out api.StudentStop
	return out, c.send(ctx, "POST", "/v1/students/"+url.PathEscape(name)+"/stop", nil, &out)
}

// WriteStdin feeds the run's stdin; eof closes it afterwards.
func (c *Client) WriteStdin(ctx context.Context, id string, p []byte, eof bool) error {
	path := "/v1/runs/" + url.PathEscape(id) + "/stdin"
	if eof {
		path += "?eof=1"
	}
	if p == nil {
		p = []byte{}
	}
	return c.send(ctx, "POST", path, p, nil)
}

// Health returns the health report. A degraded or draining daemon answers
// 503 with the report, which is returned without error.
func (c *Client) Health(ctx context.Context) (api.Health, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://idexd/v1/health", nil)
	if err != nil {
		return api.Health{}, fmt.Errorf("health: %w", err)
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return api.Health{}, c.dialError(err)
	}
	defer resp.Body.Close() //nolint:errcheck // read whole below
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return api.Health{}, fmt.Errorf("health: read: %w", err)
	}
	var h api.Health
	if err := json.Unmarshal(raw, &h); err != nil || h.Status == "" {
		var eb api.ErrorBody
		if json.Unmarshal(raw, &eb) == nil && eb.Error != nil {
			return api.Health{}, eb.Error
		}
		return api.Health{}, fmt.Errorf("health: HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(raw))
	}
	return h, nil
}

// EnsureStudent creates the student if needed.
func (c *Client) EnsureStudent(ctx context.Context, name string) (api.Student, error) {
	var s api.Student
	return s, c.send(ctx, "PUT", "/v1/students/"+url.PathEscape(name), nil, &s)
}

// GetStudent reads a student.
func (c *Client) GetStudent(ctx context.Context, name string) (api.Student, error) {
	var s api.Student
	return s, c.send(ctx, "GET", "/v1/students/"+url.PathEscape(name), nil, &s)
}

// ListStudents lists every known student.
func (c *Client) ListStudents(ctx context.Context) ([]api.Student, error) {
	var l api.StudentList
	return l.Students, c.send(ctx, "GET", "/v1/students", nil, &l)
}

// Drain refuses new runs on this host.
func (c *Client) Drain(ctx context.Context) (api.Health, error) {
	var h api.Health
	return h, c.send(ctx, "POST", "/v1/drain", nil, &h)
}

// Resume accepts new runs again.
func (c *Client) Resume(ctx context.Context) (api.Health, error) {
	var h api.Health
	return h, c.send(ctx, "POST", "/v1/resume", nil, &h)
}

// Version returns the daemon's version.
func (c *Client) Version(ctx context.Context) (api.VersionInfo, error) {
	var v api.VersionInfo
	return v, c.send(ctx, "GET", "/v1/version", nil, &v)
}

// DebugState returns the daemon's resource counts (admin).
func (c *Client) DebugState(ctx context.Context) (api.DebugState, error) {
	var s api.DebugState
	return s, c.send(ctx, "GET", "/v1/debug/state", nil, &s)
}

// Events is a stream of a run's events.
type Events struct {
	body   io.ReadCloser
	dec    *json.Decoder
	follow bool
	any    bool // an event was read
	// done is set by Next and read by Close, which may run on another
	// goroutine to cut a blocked reader off.
	done      atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// Events opens the run's event stream after seq (0: from the start) and
// follows it until the run's end.
func (c *Client) Events(ctx context.Context, id string, after int64) (*Events, error) {
	return c.events(ctx, id, after, true)
}

// EventsNow returns the events there are now, without waiting for more.
func (c *Client) EventsNow(ctx context.Context, id string, after int64) (*Events, error) {
	return c.events(ctx, id, after, false)
}

func (c *Client) events(ctx context.Context, id string, after int64, follow bool) (*Events, error) {
	path := "/v1/runs/" + url.PathEscape(id) + "/events?after=" + strconv.FormatInt(after, 10)
	if !follow {
		path += "&follow=0"
	}
	//nolint:bodyclose // the body belongs to the returned Events; its Close closes it
	resp, err := c.do(ctx, "GET", path, nil)
	if err != nil {
		return nil, err
	}
	return &Events{body: resp.Body, dec: json.NewDecoder(bufio.NewReader(resp.Body)), follow: follow}, nil
}

// AllEvents returns every event of a run kept in memory, from seq 1.
func (c *Client) AllEvents(ctx context.Context, id string) ([]api.Event, error) {
	evs, err := c.EventsNow(ctx, id, 0)
	if err != nil {
		return nil, err
	}
	defer evs.Close() //nolint:errcheck // read to its end
	var out []api.Event
	for {
		ev, err := evs.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("events of run %s: %w", id, err)
		}
		out = append(out, ev)
	}
}

// Next returns the next event; io.EOF after the end event (or, for
// EventsNow, after the last event there was, or when the stream began
// after the end event: nothing was missing). A stream cut before its end
// (the daemon went away) is io.ErrUnexpectedEOF.
func (e *Events) Next() (api.Event, error) {
	if e.done.Load() {
		return api.Event{}, io.EOF
	}
	var ev api.Event
	if err := e.dec.Decode(&ev); err != nil {
		// The server ends a followed stream cleanly only after the end
		// event, or at once when the run ended before the stream's start;
		// a connection cut mid-stream reads as io.ErrUnexpectedEOF.
		if errors.Is(err, io.EOF) && (!e.follow || !e.any) {
			return api.Event{}, io.EOF
		}
		if errors.Is(err, io.EOF) {
			return api.Event{}, io.ErrUnexpectedEOF
		}
		return api.Event{}, fmt.Errorf("read event: %w", err)
	}
	e.any = true
	if ev.Type == api.EventEnd {
		e.done.Store(true)
	}
	return ev, nil
}

// Close ends the stream; the run goes on. After the end event it reads
// the body's terminator first: a body closed before its EOF costs the
// connection, and the next run a new one (an accept, a goroutine and its
// buffers on the daemon's side). Close may be called from another
// goroutine to unblock a Next (a reader cut off on a timer); only the first
// call closes, and every call returns its result.
func (e *Events) Close() error {
	e.closeOnce.Do(func() { e.closeErr = e.close() })
	return e.closeErr
}

func (e *Events) close() error {
	if e.done.Load() {
		// The terminator follows the end event at once; the limit bounds
		// what a misbehaving server could make us read.
		if _, err := io.Copy(io.Discard, io.LimitReader(e.body, maxDrain)); err != nil {
			return errors.Join(fmt.Errorf("read the end of the event stream: %w", err), e.body.Close())
		}
	}
	return e.body.Close()
}

// maxDrain bounds what Close reads after the end event.
const maxDrain = 64 << 10
