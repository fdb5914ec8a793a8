package client

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"

	"github.com/idexd/idexd/internal/api"
)

// filesPath is the URL path of a student's file: each segment escaped, so
// that a name with '?' or '%' stays a name. A `..` segment is sent as it
// is, and refused by idexd (invalid_path).
func filesPath(student, p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return "/v1/students/" + url.PathEscape(student) + "/files/" + strings.Join(segs, "/")
}

// ListFiles lists a directory of the student's ("" is the directory itself).
func (c *Client) ListFiles(ctx context.Context, student, dir string) (api.FileList, error) {
	var l api.FileList
	path := "/v1/students/" + url.PathEscape(student) + "/files?" + url.Values{"path": {dir}}.Encode()
	return l, c.send(ctx, "GET", path, nil, &l)
}

// ReadFile returns the bytes of a regular file of the student's.
func (c *Client) ReadFile(ctx context.Context, student, p string) ([]byte, error) {
	resp, err := c.do(ctx, "GET", filesPath(student, p), nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close() //nolint:errcheck // read to the end below
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read %s of %s: %w", p, student, err)
	}
	return b, nil
}

// WriteFile replaces (or creates) a file of the student's, atomically;
// parents creates missing directories.
func (c *Client) WriteFile(ctx context.Context, student, p string, data []byte, parents bool) (api.FileInfo, error) {
	path := filesPath(student, p)
	if parents {
		path += "?parents=1"
	}
	if data == nil {
		data = []byte{}
	}
	var info api.FileInfo
	return info, c.send(ctx, "PUT", path, data, &info)
}

// RemoveFile removes a file or an empty directory of the student's.
func (c *Client) RemoveFile(ctx context.Context, student, p string) error {
	return c.send(ctx, "DELETE", filesPath(student, p), nil, nil)
}

// MoveFile renames a file or directory of the student's; it never
// replaces the destination (file_exists).
func (c *Client) MoveFile(ctx context.Context, student, from, to string, parents bool) (api.FileInfo, error) {
	q := url.Values{"move_to": {to}}
	if parents {
		q.Set("parents", "1")
	}
	var info api.FileInfo
	return info, c.send(ctx, "POST", filesPath(student, from)+"?"+q.Encode(), nil, &info)
}
