// Package server serves idexd's control protocol: HTTP/1.1 with JSON
// bodies on a Unix socket, under /v1/. Every route is in one sorted table
// with the role it needs, and the role is enforced in one place (handle),
// from the peer credentials read once per connection.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/version"
)

const (
	// maxJSONBody caps request bodies: a run request is a few hundred bytes.
	maxJSONBody = 1 << 20
	// maxStdinBody caps one stdin write.
	maxStdinBody = 1 << 20
	// requestTimeout bounds every request but event streams.
	requestTimeout = 60 * time.Second
	// defaultStreamWriteTimeout cuts off a stream reader that stopped
	// reading; the run does not notice, its events stay for the next reader.
	defaultStreamWriteTimeout = 30 * time.Second
)

// Config wires a Server.
type Config struct {
	// Engine answers every run, student and health route.
	Engine    Engine
	Log       *slog.Logger
	ClientGID uint32
	AdminGID  uint32
	// Metrics serves GET /metrics; nil disables it.
	Metrics http.Handler
	// Debug enables /v1/debug/hang (for the watchdog test).
	Debug bool
	// OnError is told the code of every error answer (metrics); may be nil.
	OnError func(api.Code)
	// StreamWriteTimeout cuts off an event reader that stopped reading;
	// zero means 30s.
	StreamWriteTimeout time.Duration
	// ReadTimeout bounds reading a whole request; zero means 60s. It does
	// not cut event streams: net/http clears the read deadline once the
	// request body is read (TestStreamOutlivesReadTimeout).
	ReadTimeout time.Duration
	// Files serves the file routes and students' disk usage; nil turns
	// them off.
	Files Files
}

// Server is the control API.
type Server struct {
	cfg     Config
	log     *slog.Logger
	started time.Time
	mux     *http.ServeMux
	root    http.Handler // mux behind the path check
	// hung is set by /v1/debug/hang: the watchdog self-check then fails.
	hung atomic.Bool
}

// New builds the server and its routes.
func New(cfg Config) *Server {
	if cfg.StreamWriteTimeout == 0 {
		cfg.StreamWriteTimeout = defaultStreamWriteTimeout
	}
	if cfg.ReadTimeout == 0 {
		cfg.ReadTimeout = 60 * time.Second
	}
	s := &Server{cfg: cfg, log: cfg.Log, started: time.Now(), mux: http.NewServeMux()}
	allow := map[string][]string{}
	var paths []string
	for _, rt := range s.routes() {
		s.mux.Handle(rt.method+" "+rt.path, s.handle(rt))
		if allow[rt.path] == nil {
			paths = append(paths, rt.path)
		}
		allow[rt.path] = append(allow[rt.path], rt.method)
	}
	// A known path with another method: 405 naming the methods it has
	// (a pattern with a method wins over the same one without).
	for _, p := range paths {
		methods := strings.Join(allow[p], ", ")
		s.mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", methods)
			writeError(w, s.log, api.Errorf(api.CodeMethodNotAllowed, "%s %s: the method must be %s", r.Method, r.URL.Path, methods))
		})
	}
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, s.log, api.Errorf(api.CodeNotFound, "no route %s %s", r.Method, r.URL.Path))
	})
	s.root = s.cleanPaths(s.mux)
	return s
}

// Handler is the root handler.
func (s *Server) Handler() http.Handler { return s.root }

// HTTPServer returns an http.Server that reads peer credentials.
func (s *Server) HTTPServer() *http.Server {
	return &http.Server{
		Handler:           s.root,
		ConnContext:       connContext,
		ReadHeaderTimeout: 10 * time.Second,
		// Whole requests are small (1 MiB at most); event streams write and
		// never read, so a read deadline does not cut them.
		ReadTimeout: s.cfg.ReadTimeout,
		// A client that holds connections open without asking anything
		// (1000 of them, say) gives them back after this long.
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
}

// Hung reports whether /v1/debug/hang was called.
func (s *Server) Hung() bool { return s.hung.Load() }

type route struct {
	method string
	path   string
	role   Role
	stream bool // no request deadline: the handler follows a run
	h      func(w http.ResponseWriter, r *http.Request) error
}

// routes is the whole API, sorted by path then method (a test checks).
func (s *Server) routes() []route {
	return []route{
		{method: "GET", path: "/metrics", role: RoleClient, h: s.metrics},
		{method: "POST", path: "/v1/debug/hang", role: RoleAdmin, h: s.debugHang},
		{method: "GET", path: "/v1/debug/state", role: RoleAdmin, h: s.debugState},
		{method: "POST", path: "/v1/drain", role: RoleAdmin, h: s.drain},
		{method: "GET", path: "/v1/health", role: RoleClient, h: s.health},
		{method: "POST", path: "/v1/resume", role: RoleAdmin, h: s.resume},
		{method: "GET", path: "/v1/runs", role: RoleClient, h: s.listRuns},
		{method: "POST", path: "/v1/runs", role: RoleClient, stream: true, h: s.startRun},
		{method: "GET", path: "/v1/runs/{id}", role: RoleClient, h: s.getRun},
		{method: "GET", path: "/v1/runs/{id}/events", role: RoleClient, stream: true, h: s.events},
		{method: "POST", path: "/v1/runs/{id}/interrupt", role: RoleClient, h: s.interrupt},
		{method: "POST", path: "/v1/runs/{id}/resize", role: RoleClient, h: s.resize},
		{method: "POST", path: "/v1/runs/{id}/stdin", role: RoleClient, h: s.stdin},
		{method: "POST", path: "/v1/runs/{id}/stop", role: RoleClient, h: s.stop},
		{method: "GET", path: "/v1/students", role: RoleAdmin, h: s.listStudents},
		{method: "GET", path: "/v1/students/{name}", role: RoleClient, h: s.getStudent},
		{method: "PUT", path: "/v1/students/{name}", role: RoleClient, h: s.putStudent},
		{method: "GET", path: "/v1/students/{name}/files", role: RoleClient, h: s.withFiles(s.listFiles)},
		{method: "DELETE", path: "/v1/students/{name}/files/{path...}", role: RoleClient, h: s.withFiles(s.deleteFile)},
		{method: "GET", path: "/v1/students/{name}/files/{path...}", role: RoleClient, h: s.withFiles(s.getFile)},
		{method: "POST", path: "/v1/students/{name}/files/{path...}", role: RoleClient, h: s.withFiles(s.moveFile)},
		{method: "PUT", path: "/v1/students/{name}/files/{path...}", role: RoleClient, h: s.withFiles(s.putFile)},
		{method: "POST", path: "/v1/students/{name}/stop", role: RoleAdmin, h: s.stopStudent},
		{method: "GET", path: "/v1/version", role: RoleClient, h: s.version},
	}
}

// handle is the one place where roles are enforced, deadlines set and
// errors written.
func (s *Server) handle(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := peerFrom(r.Context())
		role := roleOf(p, s.cfg.ClientGID, s.cfg.AdminGID)
		if role < rt.role {
			s.log.Warn("request refused", append([]any{"method", r.Method, "path", r.URL.Path,
				"role", role, "needs", rt.role}, p.attrs()...)...)
			writeError(w, s.log, api.Errorf(api.CodeForbidden, "%s %s needs role %s; uid %d has role %s", r.Method, rt.path, rt.role, p.UID, role))
			return
		}
		if !rt.stream {
			ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
			defer cancel()
			r = r.WithContext(ctx)
		}
		if err := rt.h(w, r); err != nil {
			if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
				// The client hung up: nobody reads an answer, and it is
				// no refusal to count.
				s.log.Info("client went away before the answer", "method", r.Method, "path", r.URL.Path, "peer_uid", p.UID, "err", err)
				return
			}
			e := api.AsError(err)
			if s.cfg.OnError != nil {
				s.cfg.OnError(e.Code)
			}
			if e.Code == api.CodeInternal {
				s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "peer_uid", p.UID, "err", err)
			}
			writeError(w, s.log, e)
		}
	})
}

func writeError(w http.ResponseWriter, log *slog.Logger, e *api.Error) {
	if e.RetryAfterS > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(e.RetryAfterS))
	}
	writeJSON(w, log, httpStatus(e.Code), api.ErrorBody{Error: e})
}

func writeJSON(w http.ResponseWriter, log *slog.Logger, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		log.Debug("write response", "err", err)
	}
}

// decode reads one JSON object, refusing unknown fields, trailing data
// and bodies over the cap.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	body := http.MaxBytesReader(w, r.Body, maxJSONBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return api.Errorf(api.CodeBodyTooLarge, "request body is over %d bytes", maxJSONBody)
		}
		return api.Errorf(api.CodeInvalidRequest, "decode request body: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return api.Errorf(api.CodeInvalidRequest, "request body has data after the JSON object")
	}
	return nil
}

// DecodeRunRequest is the request decoding of POST /v1/runs, exported for
// the fuzz test.
func DecodeRunRequest(body io.Reader) (api.RunRequest, error) {
	r, err := http.NewRequest("POST", "/v1/runs", body)
	if err != nil {
		return api.RunRequest{}, fmt.Errorf("build request: %w", err)
	}
	var req api.RunRequest
	err = decode(discardWriter{}, r, &req)
	return req, err
}

type discardWriter struct{}

func (discardWriter) Header() http.Header         { return http.Header{} }
func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (discardWriter) WriteHeader(int)             {}

// startRun starts a run. With ?follow=1 the answer goes on as the run's
// event stream (a "started" event with the run, then what GET events
// sends): the web tier's Run button costs one request instead of two.
// The route streams; the start alone has the request's deadline.
func (s *Server) startRun(w http.ResponseWriter, r *http.Request) error {
	follow := false
	switch v := r.URL.Query().Get("follow"); v {
	case "", "0":
	case "1":
		follow = true
	default:
		return api.Errorf(api.CodeInvalidRequest, "follow must be 0 or 1, got %q", v)
	}
	var req api.RunRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	started, err := s.cfg.Engine.StartRun(ctx, req)
	cancel()
	if err != nil {
		return err
	}
	if !follow {
		writeJSON(w, s.log, http.StatusCreated, started)
		return nil
	}
	s.streamEvents(w, r, started.ID, 0, true, http.StatusCreated, &api.Event{Type: api.EventStarted, Run: &started})
	return nil
}

func (s *Server) getRun(w http.ResponseWriter, r *http.Request) error {
	info, err := s.cfg.Engine.GetRun(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, s.log, http.StatusOK, info)
	return nil
}

func (s *Server) listRuns(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := api.RunFilter{Student: q.Get("student"), State: api.State(q.Get("state")), Reason: api.Reason(q.Get("reason")), Limit: 100}
	switch f.State {
	case "", api.StateRunning, api.StateEnded:
	default:
		return api.Errorf(api.CodeInvalidRequest, "state must be running or ended, got %q", f.State)
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			return api.Errorf(api.CodeInvalidRequest, "limit must be 1..10000, got %q", v)
		}
		f.Limit = n
	}
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return api.Errorf(api.CodeInvalidRequest, "since must be RFC 3339, got %q", v)
		}
		f.Since = t
	}
	runs, err := s.cfg.Engine.ListRuns(r.Context(), f)
	if err != nil {
		return err
	}
	writeJSON(w, s.log, http.StatusOK, api.RunList{Runs: runs})
	return nil
}

// events streams a run's events as NDJSON: everything after ?after=SEQ,
// then live ones, ending after the end event. With follow=0 it ends after
// the events there are now.
func (s *Server) events(w http.ResponseWriter, r *http.Request) error {
	var after int64
	if v := r.URL.Query().Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return api.Errorf(api.CodeInvalidRequest, "after must be a sequence number >= 0, got %q", v)
		}
		after = n
	}
	follow := r.URL.Query().Get("follow") != "0"
	id := r.PathValue("id")
	// Before the headers: an unknown run is a 404, not an empty stream.
	if _, _, _, err := s.cfg.Engine.Events(id, after); err != nil {
		return err
	}
	s.streamEvents(w, r, id, after, follow, http.StatusOK, nil)
	return nil
}

// streamEvents writes run id's events after seq as NDJSON under status,
// first (if not nil) before them. Once the headers are out, nothing is left
// to answer with an error: a failure ends the stream, and is logged.
func (s *Server) streamEvents(w http.ResponseWriter, r *http.Request, id string, after int64, follow bool, status int, first *api.Event) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(status)
	rc := http.NewResponseController(w)
	log := s.log.With("run", id)
	enc := json.NewEncoder(w)
	if first != nil {
		if err := enc.Encode(first); err != nil {
			log.Info("event reader went away", "after", after, "err", err)
			return
		}
	}
	// The headers go now: a program may print nothing for a long while,
	// and the reader should know at once that it is following.
	if err := rc.Flush(); err != nil {
		log.Info("event reader went away", "after", after, "err", err)
		return
	}
	for {
		evs, changed, ended, err := s.cfg.Engine.Events(id, after)
		if err != nil {
			// Forgotten meanwhile (keep_ended): the reader reconnects and
			// is told.
			log.Info("event stream ends: the run is no longer in memory", "after", after, "err", err)
			return
		}
		if len(evs) == 0 && ended {
			// Ended, and the reader has seen everything up to the end
			// (it reconnected with the end's seq): nothing will come.
			return
		}
		if len(evs) > 0 {
			for i := range evs {
				// Per event: a reader that reads, however slowly, goes on;
				// one that stopped is cut off after the timeout.
				if err := rc.SetWriteDeadline(time.Now().Add(s.cfg.StreamWriteTimeout)); err != nil {
					log.Debug("set stream deadline", "err", err)
				}
				if err := enc.Encode(&evs[i]); err != nil {
					log.Info("event reader went away", "after", after, "err", err)
					return
				}
				after = evs[i].Seq
				if evs[i].Type == api.EventEnd {
					// No flush: net/http flushes the end event with the
					// chunked body's terminator as the handler returns, so
					// the reader sees the end and the body's EOF in one
					// write, and its client can reuse the connection.
					return
				}
			}
			if err := rc.Flush(); err != nil {
				log.Info("event reader went away", "after", after, "err", err)
				return
			}
		}
		if !follow {
			return
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		}
	}
}

func (s *Server) stdin(w http.ResponseWriter, r *http.Request) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxStdinBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return api.Errorf(api.CodeBodyTooLarge, "stdin body is over %d bytes", maxStdinBody)
		}
		return api.Errorf(api.CodeInvalidRequest, "read stdin body: %v", err)
	}
	eof := r.URL.Query().Get("eof") == "1"
	if err := s.cfg.Engine.WriteStdin(r.Context(), r.PathValue("id"), body, eof); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) stop(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	s.log.Info("stop requested", append([]any{"run", id}, peerFrom(r.Context()).attrs()...)...)
	info, err := s.cfg.Engine.StopRun(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, s.log, http.StatusOK, info)
	return nil
}

// interrupt is Ctrl-C: the program may catch it and go on, unlike stop.
func (s *Server) interrupt(w http.ResponseWriter, r *http.Request) error {
	if err := s.cfg.Engine.InterruptRun(r.Context(), r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// resize sets a terminal-mode run's size: {"rows", "cols"}.
func (s *Server) resize(w http.ResponseWriter, r *http.Request) error {
	var t api.Terminal
	if err := decode(w, r, &t); err != nil {
		return err
	}
	if err := s.cfg.Engine.ResizeRun(r.Context(), r.PathValue("id"), t); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// stopStudent stops every run of a student (an admin's hand on a class
// that a student's runs disturb), logged with who asked.
func (s *Server) stopStudent(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	peer := peerFrom(r.Context()).attrs()
	s.log.Info("stop of every run of a student requested", append([]any{"student", name}, peer...)...)
	out, err := s.cfg.Engine.StopStudent(r.Context(), name)
	if err != nil {
		return err
	}
	ids := make([]string, len(out.Stopped))
	for i, stopped := range out.Stopped {
		ids[i] = stopped.ID
	}
	s.log.Info("stopped every run of a student", append([]any{"student", name, "runs", ids, "queued_cancelled", out.QueuedCancelled}, peer...)...)
	writeJSON(w, s.log, http.StatusOK, out)
	return nil
}

func (s *Server) putStudent(w http.ResponseWriter, r *http.Request) error {
	st, err := s.cfg.Engine.EnsureStudent(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	s.withDisk(r, &st)
	writeJSON(w, s.log, http.StatusOK, st)
	return nil
}

func (s *Server) getStudent(w http.ResponseWriter, r *http.Request) error {
	st, err := s.cfg.Engine.GetStudent(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	s.withDisk(r, &st)
	writeJSON(w, s.log, http.StatusOK, st)
	return nil
}

func (s *Server) listStudents(w http.ResponseWriter, r *http.Request) error {
	sts, err := s.cfg.Engine.ListStudents(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, s.log, http.StatusOK, api.StudentList{Students: sts})
	return nil
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) error {
	h := s.cfg.Engine.Health(r.Context())
	status := http.StatusOK
	if h.Status != api.HealthOK {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, s.log, status, h)
	return nil
}

func (s *Server) drain(w http.ResponseWriter, r *http.Request) error {
	s.cfg.Engine.SetDraining(true)
	s.log.Info("draining: new runs refused", append([]any{"runs_active", s.cfg.Engine.Active()}, peerFrom(r.Context()).attrs()...)...)
	writeJSON(w, s.log, http.StatusOK, s.cfg.Engine.Health(r.Context()))
	return nil
}

func (s *Server) resume(w http.ResponseWriter, r *http.Request) error {
	s.cfg.Engine.SetDraining(false)
	s.log.Info("resumed: accepting runs", peerFrom(r.Context()).attrs()...)
	writeJSON(w, s.log, http.StatusOK, s.cfg.Engine.Health(r.Context()))
	return nil
}

func (s *Server) version(w http.ResponseWriter, _ *http.Request) error {
	writeJSON(w, s.log, http.StatusOK, api.VersionInfo{Version: version.Version, API: api.Version})
	return nil
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Metrics == nil {
		return api.Errorf(api.CodeNotFound, "metrics are not enabled")
	}
	s.cfg.Metrics.ServeHTTP(w, r)
	return nil
}

func (s *Server) debugState(w http.ResponseWriter, r *http.Request) error {
	st, err := s.cfg.Engine.DebugState(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, s.log, http.StatusOK, st)
	return nil
}

func (s *Server) debugHang(w http.ResponseWriter, _ *http.Request) error {
	if !s.cfg.Debug {
		return api.Errorf(api.CodeForbidden, "debug endpoints are off (debug_endpoints = true enables them)")
	}
	s.hung.Store(true)
	s.log.Warn("debug: watchdog self-check will now fail")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// Listen returns a Unix listener on path: 0660 root:<clientGID>. It
// refuses when a live daemon answers there and removes a stale file.
func Listen(path string, clientGID uint32) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		return nil, errors.Join(fmt.Errorf("another idexd answers on %s: stop it first", path), c.Close())
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chown(path, 0, int(clientGID)); err != nil {
		return nil, errors.Join(fmt.Errorf("chown socket %s: %w", path, err), l.Close())
	}
	if err := os.Chmod(path, 0o660); err != nil {
		return nil, errors.Join(fmt.Errorf("chmod socket %s: %w", path, err), l.Close())
	}
	return l, nil
}
