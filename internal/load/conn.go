package load

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
	"time"

	"github.com/idexd/idexd/internal/api"
)

// Conn is a minimal client of idexd's protocol. internal/client would do,
// but it keeps idle keep-alive connections for 30 s and cannot be told to
// drop them: each one is a goroutine and an fd inside the daemon, which
// would read as a leak when the daemon's counts are compared after the
// load. Conn owns its transport and closes them (CloseIdle) first.
type Conn struct {
	socket string
	tr     *http.Transport
	hc     *http.Client
}

// Dial returns a Conn for the socket; it connects lazily, per request.
// maxIdle is how many idle connections are kept for reuse.
func Dial(socket string, maxIdle int) *Conn {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:        maxIdle,
		MaxIdleConnsPerHost: maxIdle,
		IdleConnTimeout:     30 * time.Second,
	}
	return &Conn{socket: socket, tr: tr, hc: &http.Client{Transport: tr}}
}

// CloseIdle closes the idle connections, so that the daemon's goroutines
// and fds for them go away.
func (c *Conn) CloseIdle() { c.tr.CloseIdleConnections() }

// do sends one request; a non-2xx answer comes back as *api.Error.
func (c *Conn) do(ctx context.Context, method, path string, body any) (*http.Response, error) {
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
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s on %s: %w", method, path, c.socket, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close() //nolint:errcheck // error bodies are small and read whole
	raw, rerr := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var eb api.ErrorBody
	if rerr == nil && json.Unmarshal(raw, &eb) == nil && eb.Error != nil {
		return nil, eb.Error
	}
	return nil, &api.Error{Code: api.CodeInternal, Message: fmt.Sprintf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(raw))}
}

func (c *Conn) call(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close() //nolint:errcheck // read to the end below
	if out == nil {
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return fmt.Errorf("%s %s: read answer: %w", method, path, err)
		}
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	// Read the rest (the encoder's newline) so the connection is reused.
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	return nil
}

// EnsureStudent is PUT /v1/students/{name}.
func (c *Conn) EnsureStudent(ctx context.Context, name string) (api.Student, error) {
	var s api.Student
	return s, c.call(ctx, "PUT", "/v1/students/"+url.PathEscape(name), nil, &s)
}

// StartRun is POST /v1/runs.
func (c *Conn) StartRun(ctx context.Context, req api.RunRequest) (api.Run, error) {
	var r api.Run
	return r, c.call(ctx, "POST", "/v1/runs", req, &r)
}

// GetRun is GET /v1/runs/{id}.
func (c *Conn) GetRun(ctx context.Context, id string) (api.Run, error) {
	var r api.Run
	return r, c.call(ctx, "GET", "/v1/runs/"+url.PathEscape(id), nil, &r)
}

// StopRun is POST /v1/runs/{id}/stop: it answers once the run has ended.
func (c *Conn) StopRun(ctx context.Context, id string) (api.Run, error) {
	var r api.Run
	return r, c.call(ctx, "POST", "/v1/runs/"+url.PathEscape(id)+"/stop", nil, &r)
}

// WriteStdin is POST /v1/runs/{id}/stdin.
func (c *Conn) WriteStdin(ctx context.Context, id string, p []byte, eof bool) error {
	path := "/v1/runs/" + url.PathEscape(id) + "/stdin"
	if eof {
		path += "?eof=1"
	}
	if p == nil {
		p = []byte{}
	}
	return c.call(ctx, "POST", path, p, nil)
}

// ListRuns is GET /v1/runs with a state (may be empty) and a limit.
func (c *Conn) ListRuns(ctx context.Context, state api.State, limit int) ([]api.Run, error) {
	q := url.Values{}
	if state != "" {
		q.Set("state", string(state))
	}
	q.Set("limit", strconv.Itoa(limit))
	var l api.RunList
	return l.Runs, c.call(ctx, "GET", "/v1/runs?"+q.Encode(), nil, &l)
}

// Health is GET /v1/health; a degraded daemon answers 503 with the same
// body, which is returned without error.
func (c *Conn) Health(ctx context.Context) (api.Health, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://idexd/v1/health", nil)
	if err != nil {
		return api.Health{}, fmt.Errorf("health: %w", err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return api.Health{}, fmt.Errorf("health on %s: %w", c.socket, err)
	}
	defer resp.Body.Close() //nolint:errcheck // read whole below
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return api.Health{}, fmt.Errorf("health: read: %w", err)
	}
	var h api.Health
	if err := json.Unmarshal(raw, &h); err != nil || h.Status == "" {
		return api.Health{}, fmt.Errorf("health: HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(raw))
	}
	return h, nil
}

// DebugState is GET /v1/debug/state (admin: the load runs as root).
func (c *Conn) DebugState(ctx context.Context) (api.DebugState, error) {
	var s api.DebugState
	return s, c.call(ctx, "GET", "/v1/debug/state", nil, &s)
}

// Stream is one open event stream.
type Stream struct {
	body io.ReadCloser
	dec  *json.Decoder
}

// Events opens GET /v1/runs/{id}/events?after=SEQ; follow=false returns
// only the events there are now.
func (c *Conn) Events(ctx context.Context, id string, after int64, follow bool) (*Stream, error) {
	path := "/v1/runs/" + url.PathEscape(id) + "/events?after=" + strconv.FormatInt(after, 10)
	if !follow {
		path += "&follow=0"
	}
	//nolint:bodyclose // the body belongs to the Stream; Stream.Close closes it
	resp, err := c.do(ctx, "GET", path, nil)
	if err != nil {
		return nil, err
	}
	return &Stream{body: resp.Body, dec: json.NewDecoder(bufio.NewReader(resp.Body))}, nil
}

// Next returns the next event, io.EOF at the stream's end.
func (s *Stream) Next() (api.Event, error) {
	var ev api.Event
	if err := s.dec.Decode(&ev); err != nil {
		if errors.Is(err, io.EOF) {
			return api.Event{}, io.EOF
		}
		return api.Event{}, fmt.Errorf("read event: %w", err)
	}
	return ev, nil
}

// Close drops the stream; the run goes on. Safe to call from another
// goroutine to cut a reader off mid-read.
func (s *Stream) Close() error { return s.body.Close() }

// AllEvents returns every event of a run kept in memory, from seq 1.
func (c *Conn) AllEvents(ctx context.Context, id string) ([]api.Event, error) {
	st, err := c.Events(ctx, id, 0, false)
	if err != nil {
		return nil, err
	}
	defer st.Close() //nolint:errcheck // read to its end
	var out []api.Event
	for {
		ev, err := st.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("events of run %s: %w", id, err)
		}
		out = append(out, ev)
	}
}
