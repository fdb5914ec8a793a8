package pgstore

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// fakeServer accepts one connection as a PostgreSQL server would and asks
// for the password with auth (cleartext or MD5), as a program squatting the
// database's port would. It reports what the client answered.
func fakeServer(t *testing.T, auth pgproto3.BackendMessage) (addr string, answer <-chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		be := pgproto3.NewBackend(c, c)
		if _, err := be.ReceiveStartupMessage(); err != nil {
			got <- "startup: " + err.Error()
			return
		}
		be.Send(auth)
		if err := be.Flush(); err != nil {
			got <- "send: " + err.Error()
			return
		}
		m, err := be.Receive()
		if err != nil {
			got <- "nothing (" + err.Error() + ")"
			return
		}
		switch m := m.(type) {
		case *pgproto3.PasswordMessage:
			got <- "password " + m.Password
		default:
			got <- fmt.Sprintf("%T", m)
		}
	}()
	return ln.Addr().String(), got
}

// TestPasswordNeverSentInClearOrMD5: a server that asks for the password
// in clear text or as MD5 gets none, unless the URL says require_auth
// itself; idexd's open fails saying why.
func TestPasswordNeverSentInClearOrMD5(t *testing.T) {
	for name, auth := range map[string]pgproto3.BackendMessage{
		"cleartext": &pgproto3.AuthenticationCleartextPassword{},
		"md5":       &pgproto3.AuthenticationMD5Password{Salt: [4]byte{1, 2, 3, 4}},
	} {
		t.Run(name, func(t *testing.T) {
			addr, answer := fakeServer(t, auth)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			url := fmt.Sprintf("postgres://idexd:hunter2@%s/idexd?sslmode=disable&connect_timeout=5", addr)
			s, err := Open(ctx, url, "host-a", nil)
			if err == nil {
				_ = s.Close()
				t.Fatal("open succeeded against a server that asked for the password in the open")
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("open error shows the password: %v", err)
			}
			if got := <-answer; strings.Contains(got, "hunter2") || strings.HasPrefix(got, "password") {
				t.Fatalf("the fake server got %q: want no password", got)
			} else {
				t.Logf("open: %v; the server got %s", err, got)
			}
		})
	}
	t.Run("opted in", func(t *testing.T) {
		addr, answer := fakeServer(t, &pgproto3.AuthenticationCleartextPassword{})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		url := fmt.Sprintf("postgres://idexd:hunter2@%s/idexd?sslmode=disable&connect_timeout=5&require_auth=password", addr)
		if s, err := Open(ctx, url, "host-a", nil); err == nil {
			_ = s.Close()
		}
		if got := <-answer; got != "password hunter2" {
			t.Fatalf("with require_auth=password in the URL the server got %q, want the password: the opt-in must still work", got)
		}
	})
}
