package client_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/client"
)

// TestErrorWithoutBody: an answer that is not idexd's (no error body)
// still comes back as an *api.Error with the code its status means.
func TestErrorWithoutBody(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/runs/x" {
			http.Error(w, "gone", http.StatusNotFound)
			return
		}
		http.Error(w, "teapot", http.StatusTeapot)
	})}
	go func() { _ = srv.Serve(ln) }() // ends with Close
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := client.New(sock)
	if _, err := c.GetRun(ctx, "x"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("plain 404: %v, want not_found", err)
	}
	var ae *api.Error
	if _, err := c.GetRun(ctx, "y"); !errors.As(err, &ae) || ae.Code != api.CodeInternal {
		t.Fatalf("plain 418: %v, want internal", err)
	}
}

// TestDialAndIdleConnections: a Client dials through Dial when given one,
// reuses its connection, and gives it back on CloseIdleConnections (each
// idle connection is a goroutine and an fd in the daemon).
func TestDialAndIdleConnections(t *testing.T) {
	c, dials := dialCounted(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"version":"v","api":"v1"}` + "\n")) // the client reads it or fails
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 3 {
		if v, err := c.Version(ctx); err != nil || v.API != "v1" {
			t.Fatalf("version: %+v %v", v, err)
		}
	}
	if *dials != 1 {
		t.Fatalf("%d dials for 3 requests in a row, want 1 (the connection reused)", *dials)
	}
	c.CloseIdleConnections()
	if _, err := c.Version(ctx); err != nil {
		t.Fatal(err)
	}
	if *dials != 2 {
		t.Fatalf("%d dials after CloseIdleConnections, want 2", *dials)
	}
}

// TestFollowedRunsShareAConnection: a followed run's stream read to its end
// event and closed leaves the connection for the next run, even from a
// server whose body's terminator comes after the end event (idexd before
// it wrote them together, or any proxy that splits them): Close reads it.
func TestFollowedRunsShareAConnection(t *testing.T) {
	c, dials := dialCounted(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusCreated)
		run := `{"id":"r1","student":"alice","script":"hi.py","state":"running"}`
		_, _ = w.Write([]byte(`{"seq":0,"type":"started","run":` + run + "}\n" + `{"seq":1,"type":"end","run":` + run + "}\n"))
		_ = http.NewResponseController(w).Flush()
		time.Sleep(50 * time.Millisecond) // the terminator comes late
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 3 {
		r, evs, err := c.StartRunFollow(ctx, api.RunRequest{Student: "alice", Script: "hi.py"})
		if err != nil || r.ID != "r1" {
			t.Fatalf("followed start: %+v %v", r, err)
		}
		if ev, err := evs.Next(); err != nil || ev.Type != api.EventEnd {
			t.Fatalf("event: %+v %v, want the end", ev, err)
		}
		if err := evs.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if *dials != 1 {
		t.Fatalf("%d dials for 3 followed runs in a row, want 1 (the connection reused)", *dials)
	}
}

// dialCounted serves h on a Unix socket until the test ends, and returns a
// Client of it that counts its dials.
func dialCounted(t *testing.T, h http.HandlerFunc) (*client.Client, *int) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: h}
	go func() { _ = srv.Serve(ln) }() // ends with Close
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("close server: %v", err)
		}
	})
	dials := new(int)
	return &client.Client{Dial: func(ctx context.Context) (net.Conn, error) {
		*dials++
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}, dials
}

// TestCloseFromAnotherGoroutine: a reader cut off by a Close on another
// goroutine (idexload's reattaching readers do it on a timer), before or
// after Next read the end event, and a second Close racing the first, are
// all safe: run with -race, this failed on the unguarded end flag.
func TestCloseFromAnotherGoroutine(t *testing.T) {
	c, _ := dialCounted(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		run := `{"id":"r1","student":"alice","script":"hi.py","state":"running"}`
		_, _ = w.Write([]byte(`{"seq":1,"type":"started","run":` + run + "}\n"))
		_ = http.NewResponseController(w).Flush()
		if r.URL.Query().Get("after") == "1" {
			<-r.Context().Done() // never ends: only a Close frees the reader
			return
		}
		_, _ = w.Write([]byte(`{"seq":2,"type":"end","run":` + run + "}\n"))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, after := range []int64{0, 1} {
		evs, err := c.Events(ctx, "r1", after)
		if err != nil {
			t.Fatal(err)
		}
		closed := make(chan error, 1)
		go func() {
			time.Sleep(20 * time.Millisecond)
			closed <- evs.Close()
		}()
		var last api.Event
		var readErr error
		for {
			ev, err := evs.Next()
			if err != nil {
				readErr = err
				break
			}
			last = ev
		}
		second := evs.Close()
		first := <-closed
		if (first == nil) != (second == nil) || (first != nil && !errors.Is(second, first)) {
			t.Errorf("after=%d: the second Close returned %v, the first %v", after, second, first)
		}
		switch after {
		case 0:
			if last.Type != api.EventEnd || !errors.Is(readErr, io.EOF) {
				t.Errorf("whole stream: last event %+v, then %v; want the end, then EOF", last, readErr)
			}
			if first != nil {
				t.Errorf("closing a stream read to its end: %v", first)
			}
		case 1:
			if errors.Is(readErr, io.EOF) {
				t.Errorf("a reader cut off mid-stream read %v, want an error", readErr)
			}
		}
	}
}
