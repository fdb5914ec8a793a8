package client_test

import (
	"context"
	"errors"
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
