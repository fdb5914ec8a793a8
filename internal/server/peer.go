package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

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
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{Err: fmt.Errorf("peer credentials: %w", err)}
	}
	if serr != nil {
		return Peer{Err: fmt.Errorf("peer credentials: %w", serr)}
	}
	p := Peer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}
	// SO_PEERCRED has no supplementary groups; the peer's own /proc entry
	// has the groups it holds now. If it is gone, only its gid counts.
	p.Groups, p.Err = procGroups(cred.Pid)
	return p
}

func procGroups(pid int32) ([]uint32, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, fmt.Errorf("read groups of pid %d: %w", pid, err)
	}
	defer f.Close() //nolint:errcheck // read-only file
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		var gs []uint32
		for _, g := range strings.Fields(rest) {
			v, err := strconv.ParseUint(g, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("parse groups of pid %d: %w", pid, err)
			}
			gs = append(gs, uint32(v))
		}
		return gs, nil
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read groups of pid %d: %w", pid, err)
	}
	return nil, nil
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
