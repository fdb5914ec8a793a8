package server

import (
	"io"
	"net/http"
	"path"
	"strconv"
	"strings"

	"github.com/idexd/idexd/internal/api"
)

// The file routes: GET/PUT/DELETE/POST /v1/students/{name}/files/{path...}
// and the listing GET /v1/students/{name}/files?path=DIR (see package files).

// withFiles adapts a file route's handler to the route table.
func (s *Server) withFiles(h func(fs Files, w http.ResponseWriter, r *http.Request) error) func(w http.ResponseWriter, r *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		if s.cfg.Files == nil {
			return api.Errorf(api.CodeNotFound, "the file routes are not enabled on this idexd")
		}
		return h(s.cfg.Files, w, r)
	}
}

func (s *Server) listFiles(fs Files, w http.ResponseWriter, r *http.Request) error {
	l, err := fs.List(r.Context(), r.PathValue("name"), r.URL.Query().Get("path"))
	if err != nil {
		return err
	}
	writeJSON(w, s.log, http.StatusOK, l)
	return nil
}

func (s *Server) getFile(fs Files, w http.ResponseWriter, r *http.Request) error {
	f, info, err := fs.Open(r.Context(), r.PathValue("name"), r.PathValue("path"))
	if err != nil {
		return err
	}
	defer f.Close() //nolint:errcheck // read-only file
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(info.Size, 10))
	w.Header().Set("Last-Modified", info.Mtime.Format(http.TimeFormat))
	w.WriteHeader(http.StatusOK)
	// The size was checked against the cap; a file that grew since is
	// cut there, so the answer is what Content-Length promised.
	if _, err := io.CopyN(w, f, info.Size); err != nil {
		s.log.Info("send a file", "student", r.PathValue("name"), "path", info.Path, "err", err)
	}
	return nil
}

func (s *Server) putFile(fs Files, w http.ResponseWriter, r *http.Request) error {
	var info api.FileInfo
	var err error
	if r.ContentLength > fs.MaxBytes() {
		err = api.Errorf(api.CodeFileTooLarge, "the body is %d bytes, over the %d that may be written at once (file_max_mb)", r.ContentLength, fs.MaxBytes())
	} else {
		info, err = fs.Write(r.Context(), r.PathValue("name"), r.PathValue("path"), r.Body, flag(r, "parents"))
	}
	if err != nil {
		// A client sends its whole body before it reads the answer: read
		// what is left (within a bound), so that it gets the refusal
		// rather than a broken pipe.
		if _, derr := io.Copy(io.Discard, io.LimitReader(r.Body, 4*fs.MaxBytes())); derr != nil {
			s.log.Debug("discard a refused body", "err", derr)
		}
		return err
	}
	writeJSON(w, s.log, http.StatusOK, info)
	return nil
}

func (s *Server) deleteFile(fs Files, w http.ResponseWriter, r *http.Request) error {
	if err := fs.Remove(r.Context(), r.PathValue("name"), r.PathValue("path")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) moveFile(fs Files, w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	if !q.Has("move_to") {
		return api.Errorf(api.CodeInvalidRequest, "POST on a file needs ?move_to=PATH")
	}
	info, err := fs.Move(r.Context(), r.PathValue("name"), r.PathValue("path"), q.Get("move_to"), flag(r, "parents"))
	if err != nil {
		return err
	}
	writeJSON(w, s.log, http.StatusOK, info)
	return nil
}

func flag(r *http.Request, name string) bool {
	v := r.URL.Query().Get(name)
	return v == "1" || v == "true"
}

// withDisk adds the student's disk usage, when idexd serves files.
func (s *Server) withDisk(r *http.Request, st *api.Student) {
	if s.cfg.Files != nil {
		st.Disk = s.cfg.Files.Disk(r.Context(), *st)
	}
}

// cleanPaths answers invalid_path for a request path that is not clean
// (`..`, `//`, `/./`) instead of letting the mux redirect it: a redirect of
// /v1/students/a/files/../../b/files/x would name another student's file
// to a client that follows redirects.
func (s *Server) cleanPaths(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		if strings.HasPrefix(p, "/v1/") && p != path.Clean(p) && p != path.Clean(p)+"/" {
			writeError(w, s.log, api.Errorf(api.CodeInvalidPath, "request path %q is not clean (no '..', '.' or '//' segments)", p))
			return
		}
		next.ServeHTTP(w, r)
	})
}
