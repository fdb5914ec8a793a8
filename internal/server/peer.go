package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Role is what a peer may do.
type Role int

const (
	RoleNone Role = iota
	// RoleClient is the web tier: run, read, write stdin, stop, health.
	RoleClient
	// RoleAdmin may do everything.
	RoleAdmin
)

func (r Role) String() string {
	switch r {
	case RoleClient:
		return "client"
	case RoleAdmin:
		return "admin"
	default:
		return "none"
	}
}

// Peer is who is on the other end of a connection, read once when it opens.
type Peer struct {
	UID, GID uint32
	PID      int32
	Groups   []uint32
	Err      error
}

// attrs name the peer in a log line; the error only when there is one.
func (p Peer) attrs() []any {
	a := []any{"peer_uid", p.UID, "peer_gid", p.GID, "peer_pid", p.PID}
	if p.Err != nil {
		a = append(a, "peer_err", p.Err)
	}
	return a
}

type peerKey struct{}

// connContext reads SO_PEERCRED of a new connection into its context.
func connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, peerKey{}, readPeer(c))
}

func peerFrom(ctx context.Context) Peer {
	p, ok := ctx.Value(peerKey{}).(Peer)
	if !ok {
		return Peer{Err: errors.New("connection has no peer credentials (not a Unix socket)")}
	}
	return p
}

func readPeer(c net.Conn) Peer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Peer{Err: fmt.Errorf("connection from %s is not a Unix socket", c.RemoteAddr())}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{Err: fmt.Errorf("peer credentials: %w", err)}
	}
	var p Peer
	if err := raw.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil {
			p.Err = fmt.Errorf("peer credentials: %w", err)
			return
		}
		p.UID, p.GID, p.PID = cred.Uid, cred.Gid, cred.Pid
		// The groups the peer had when it connected, kept with the
		// socket: its /proc entry may be gone, or another process's.
		if p.Groups, err = peerGroups(int(fd)); err != nil {
			p.Err = fmt.Errorf("peer groups: %w", err)
		}
	}); err != nil {
		return Peer{Err: fmt.Errorf("peer credentials: %w", err)}
	}
	return p
}

// peerGroups reads SO_PEERGROUPS (Linux 4.13): the supplementary groups
// of the process that connected, as they were when it did.
func peerGroups(fd int) ([]uint32, error) {
	n := 64
	for {
		buf := make([]uint32, n)
		size := uint32(4 * n)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch {
		case errno == 0:
			return buf[:size/4], nil
		case errno == unix.ERANGE && int(size/4) > n:
			n = int(size / 4) // the kernel said how many there are
		default:
			return nil, errno
		}
	}
}

// roleOf decides a peer's role from its uid and groups.
func roleOf(p Peer, clientGID, adminGID uint32) Role {
	if p.UID == 0 {
		return RoleAdmin
	}
	in := func(gid uint32) bool {
		if p.GID == gid {
			return true
		}
		for _, g := range p.Groups {
			if g == gid {
				return true
			}
		}
		return false
	}
	switch {
	case in(adminGID):
		return RoleAdmin
	case in(clientGID):
		return RoleClient
	}
	return RoleNone
}
