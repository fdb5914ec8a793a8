package load

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/client"
)

// ConnOptions configure the connection hog: one client that opens many
// connections to the daemon and holds them, plus readers that follow a
// flooding run's events and never read.
type ConnOptions struct {
	Socket string
	PID    int
	// Conns are opened and held: the even ones never send a byte, the odd
	// ones send one request, read the answer and stay open (keep-alive).
	Conns int
	// StuckReaders follow a flooding run's event stream and never read.
	StuckReaders int
	// Students each run a quick script RunsEach times while the
	// connections are held: these must start and end normally.
	Students, RunsEach int
	// Wait is how long the connections stay held after the runs; then the
	// ones the server closed are counted.
	Wait time.Duration
	// HeaderTimeout and IdleTimeout are the daemon's: a connection that
	// sent nothing must be closed after HeaderTimeout, an idle keep-alive
	// one after IdleTimeout, when Wait is longer than that (plus 5 s).
	HeaderTimeout, IdleTimeout time.Duration
	// MaxRSSKiB bounds the daemon's RSS while everything is held.
	MaxRSSKiB int64
	Out       io.Writer
}

// ConnReport is what the connection hog found.
type ConnReport struct {
	Conns                        int
	FDsBefore, FDsHeld, FDsAfter int
	RSSBefore, RSSHeld, RSSAfter int64 // KiB
	RunsOK                       int
	FloodReason                  api.Reason
	ClosedSilent, ClosedIdle     int
	Wait                         time.Duration
	Failed                       []string
}

// Pass reports whether every check held.
func (r *ConnReport) Pass() bool { return len(r.Failed) == 0 }

// Connections runs the connection hog.
func Connections(ctx context.Context, o ConnOptions) (*ConnReport, error) {
	if o.Conns <= 0 {
		o.Conns = 1000
	}
	if o.StuckReaders < 0 {
		o.StuckReaders = 0
	}
	if o.Students <= 0 {
		o.Students = 10
	}
	if o.RunsEach <= 0 {
		o.RunsEach = 3
	}
	if o.HeaderTimeout <= 0 {
		o.HeaderTimeout = 10 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 2 * time.Minute
	}
	if o.MaxRSSKiB <= 0 {
		o.MaxRSSKiB = 200 << 10
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if err := raiseNofile(uint64(o.Conns + o.StuckReaders + 256)); err != nil {
		return nil, err
	}
	pid := o.PID
	if pid == 0 {
		var err error
		if pid, err = FindDaemonPID(o.Socket); err != nil {
			return nil, err
		}
	}
	c := &client.Client{Socket: o.Socket, MaxIdleConns: o.Students}
	defer c.CloseIdleConnections()
	rep := &ConnReport{Conns: o.Conns, Wait: o.Wait}
	fail := func(format string, args ...any) { rep.Failed = append(rep.Failed, fmt.Sprintf(format, args...)) }
	before, err := SampleProc(pid)
	if err != nil {
		return nil, err
	}
	rep.FDsBefore, rep.RSSBefore = before.FDs, before.RSSKiB

	var conns []net.Conn
	defer func() {
		for _, cn := range conns {
			_ = cn.Close() //nolint:errcheck // giving them back is all that is left
		}
	}()
	readers := make([]*bufio.Reader, 0, o.Conns)
	for i := 0; i < o.Conns; i++ {
		cn, err := net.Dial("unix", o.Socket)
		if err != nil {
			return rep, fmt.Errorf("connection %d: %w", i, err)
		}
		conns = append(conns, cn)
		br := bufio.NewReader(cn)
		readers = append(readers, br)
		if i%2 == 1 {
			if err := oneRequest(cn, br); err != nil {
				return rep, fmt.Errorf("request on connection %d: %w", i, err)
			}
		}
	}
	// A flood whose readers never read: the run must end output_limit
	// without waiting for them.
	st, err := c.EnsureStudent(ctx, "hogflood")
	if err != nil {
		return rep, fmt.Errorf("create student hogflood: %w", err)
	}
	if err := writeScript(st.Workdir, "flood.py", "import sys\nwhile True:\n    sys.stdout.write('y' * 65536)\n"); err != nil {
		return rep, err
	}
	flood, err := c.StartRun(ctx, api.RunRequest{Student: "hogflood", Script: "flood.py", Limits: api.Limits{OutputKB: 4096}})
	if err != nil {
		return rep, fmt.Errorf("start the flood: %w", err)
	}
	for i := 0; i < o.StuckReaders; i++ {
		cn, err := net.Dial("unix", o.Socket)
		if err != nil {
			return rep, fmt.Errorf("stuck reader %d: %w", i, err)
		}
		conns = append(conns, cn)
		if _, err := fmt.Fprintf(cn, "GET /v1/runs/%s/events?after=0 HTTP/1.1\r\nHost: idexd\r\n\r\n", flood.ID); err != nil {
			return rep, fmt.Errorf("stuck reader %d: %w", i, err)
		}
	}
	held, err := SampleProc(pid)
	if err != nil {
		return rep, err
	}
	rep.FDsHeld, rep.RSSHeld = held.FDs, held.RSSKiB
	fmt.Fprintf(o.Out, "idexload: %d connections and %d stuck readers held: daemon fds %d -> %d, RSS %.1f -> %.1f MiB\n",
		o.Conns, o.StuckReaders, before.FDs, held.FDs, float64(before.RSSKiB)/1024, float64(held.RSSKiB)/1024)

	// Other students' runs start and end normally: bounded, not timed.
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < o.Students; i++ {
		name := fmt.Sprintf("hogother%02d", i)
		st, err := c.EnsureStudent(ctx, name)
		if err != nil {
			return rep, fmt.Errorf("create student %s: %w", name, err)
		}
		if err := writeScript(st.Workdir, "hi.py", "print('hi')\n"); err != nil {
			return rep, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < o.RunsEach; j++ {
				r, out, err := RunToEnd(ctx, c, api.RunRequest{Student: name, Script: "hi.py"})
				mu.Lock()
				if err == nil && r.Reason == api.ReasonExited && out == "hi\n" {
					rep.RunsOK++
				} else {
					fail("run of %s with the connections held: %s %q %v", name, r.Reason, out, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(time.Minute)
	for {
		r, err := c.GetRun(ctx, flood.ID)
		if err == nil && r.State == api.StateEnded {
			rep.FloodReason = r.Reason
			if r.Reason != api.ReasonOutputLimit {
				fail("the flood with %d stuck readers ended %s, want output_limit", o.StuckReaders, r.Reason)
			}
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			fail("the flood with %d stuck readers has not ended within a minute (%v)", o.StuckReaders, err)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := sleepCtx(ctx, o.Wait); err != nil {
		return rep, err
	}
	for i := 0; i < o.Conns; i++ {
		if err := conns[i].SetReadDeadline(time.Now().Add(5 * time.Millisecond)); err != nil {
			return rep, fmt.Errorf("poll connection %d: %w", i, err)
		}
		if _, err := readers[i].ReadByte(); errors.Is(err, io.EOF) {
			if i%2 == 0 {
				rep.ClosedSilent++
			} else {
				rep.ClosedIdle++
			}
		}
	}
	after, err := SampleProc(pid)
	if err != nil {
		return rep, err
	}
	rep.FDsAfter, rep.RSSAfter = after.FDs, after.RSSKiB
	if m := max(rep.RSSHeld, rep.RSSAfter); m > o.MaxRSSKiB {
		fail("daemon RSS %.1f MiB with %d connections held, limit %.1f MiB", float64(m)/1024, o.Conns, float64(o.MaxRSSKiB)/1024)
	}
	silent, idle := (o.Conns+1)/2, o.Conns/2
	if o.Wait > o.HeaderTimeout+2*time.Second && rep.ClosedSilent != silent {
		fail("the server closed %d of %d connections that never sent a request after %s (header timeout %s)", rep.ClosedSilent, silent, o.Wait, o.HeaderTimeout)
	}
	if o.Wait > o.IdleTimeout+5*time.Second && rep.ClosedIdle != idle {
		fail("the server closed %d of %d idle keep-alive connections after %s (idle timeout %s)", rep.ClosedIdle, idle, o.Wait, o.IdleTimeout)
	}
	return rep, nil
}

// oneRequest sends GET /v1/version on a raw connection and reads the
// answer, leaving the connection open.
func oneRequest(cn net.Conn, br *bufio.Reader) error {
	if _, err := io.WriteString(cn, "GET /v1/version HTTP/1.1\r\nHost: idexd\r\n\r\n"); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	return errors.Join(err, resp.Body.Close())
}

// raiseNofile raises the soft RLIMIT_NOFILE to at least n (up to the hard
// limit): each held connection is an fd of this process too.
func raiseNofile(n uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("read RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur >= n {
		return nil
	}
	if lim.Max < n {
		return fmt.Errorf("RLIMIT_NOFILE hard limit %d is below the %d fds needed", lim.Max, n)
	}
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", n, err)
	}
	return nil
}

// RunToEnd starts a run and reads its events to the end; it returns the
// final run and everything the run wrote.
func RunToEnd(ctx context.Context, c *client.Client, req api.RunRequest) (api.Run, string, error) {
	r, err := c.StartRun(ctx, req)
	if err != nil {
		return api.Run{}, "", err
	}
	st, err := c.Events(ctx, r.ID, 0)
	if err != nil {
		return r, "", fmt.Errorf("events of run %s: %w", r.ID, err)
	}
	defer st.Close() //nolint:errcheck // read to its end
	var out []byte
	for {
		ev, err := st.Next()
		if err != nil {
			return r, string(out), fmt.Errorf("events of run %s: %w", r.ID, err)
		}
		out = append(out, ev.Bytes()...)
		if ev.Type == api.EventEnd {
			return *ev.Run, string(out), nil
		}
	}
}

// Print writes the summary; the last line says PASS or FAIL.
func (r *ConnReport) Print(w io.Writer) {
	fmt.Fprintf(w, "idexload: %d connections held: daemon fds %d -> %d -> %d, RSS %.1f -> %.1f -> %.1f MiB (before, held, after %s)\n",
		r.Conns, r.FDsBefore, r.FDsHeld, r.FDsAfter, float64(r.RSSBefore)/1024, float64(r.RSSHeld)/1024, float64(r.RSSAfter)/1024, r.Wait)
	fmt.Fprintf(w, "  other students' runs: %d ended normally; the flood with stuck readers ended %s\n", r.RunsOK, r.FloodReason)
	fmt.Fprintf(w, "  closed by the server after %s: %d of %d silent connections, %d of %d idle keep-alive ones\n",
		r.Wait, r.ClosedSilent, (r.Conns+1)/2, r.ClosedIdle, r.Conns/2)
	for _, f := range r.Failed {
		fmt.Fprintf(w, "  fail: %s\n", f)
	}
	if !r.Pass() {
		fmt.Fprintln(w, "FAIL")
		return
	}
	fmt.Fprintln(w, "PASS")
}
