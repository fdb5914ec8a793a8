package netns_test

import (
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/netns"
	"github.com/idexd/idexd/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

func newSupply(t testing.TB, cfg netns.Config) *netns.Supply {
	t.Helper()
	testutil.RequireRoot(t)
	cfg.Log = testutil.Logger(t)
	s, err := netns.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func inode(t *testing.T, fd int) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func hostInode(t *testing.T) uint64 {
	t.Helper()
	var st unix.Stat_t
	// This goroutine's thread: the supply's worker may be the main one.
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// inside runs fn on a thread that has joined n, then lets the thread go
// (it is never unlocked, so Go ends it with the goroutine).
func inside(t *testing.T, n *netns.NS, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(n.FD(), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func TestFreshNamespaceHasOnlyLoopbackUp(t *testing.T) {
	s := newSupply(t, netns.Config{Spares: 1, MaxKept: 4})
	n, err := s.Get("ada")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = n.Close() }()
	if inode(t, n.FD()) == hostInode(t) {
		t.Fatalf("the run's namespace %d is idexd's own %d", inode(t, n.FD()), hostInode(t))
	}
	inside(t, n, func() error {
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		if len(ifs) != 1 || ifs[0].Name != "lo" || ifs[0].Flags&net.FlagUp == 0 {
			return fmt.Errorf("interfaces %+v, want lo alone and up", ifs)
		}
		// Serving and connecting on 127.0.0.1 works.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer func() { _ = l.Close() }()
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// TestKeptForTheSameStudentOnly: a clean namespace comes back to its
// student's next run and never to another student's.
func TestKeptForTheSameStudentOnly(t *testing.T) {
	s := newSupply(t, netns.Config{Spares: 2, MaxKept: 8})
	a, err := s.Get("ada")
	if err != nil {
		t.Fatal(err)
	}
	ino := inode(t, a.FD())
	s.Put("ada", a)
	if s.Kept() != 1 {
		t.Fatalf("kept %d after a clean Put, want 1", s.Kept())
	}
	b, err := s.Get("bob")
	if err != nil {
		t.Fatal(err)
	}
	if inode(t, b.FD()) == ino {
		t.Fatal("bob's run got ada's namespace")
	}
	a2, err := s.Get("ada")
	if err != nil {
		t.Fatal(err)
	}
	if inode(t, a2.FD()) != ino {
		t.Fatal("ada's next run did not get her kept namespace")
	}
	if st := s.Stats(); st.Kept != 1 {
		t.Fatalf("stats %+v, want 1 kept", st)
	}
	s.Put("bob", b)
	s.Put("ada", a2)
}

// TestSocketsLeftMeanANewNamespace: a namespace with a socket in it, a
// listener still held or a connection in TIME_WAIT, is not kept.
func TestSocketsLeftMeanANewNamespace(t *testing.T) {
	s := newSupply(t, netns.Config{Spares: 1, MaxKept: 8})
	cases := []struct {
		name  string
		leave func() (func(), error)
	}{
		{"listener held", func() (func(), error) {
			l, err := net.Listen("tcp", "127.0.0.1:5000")
			if err != nil {
				return nil, err
			}
			return func() { _ = l.Close() }, nil
		}},
		{"time-wait", func() (func(), error) {
			l, err := net.Listen("tcp", "127.0.0.1:5001")
			if err != nil {
				return nil, err
			}
			defer func() { _ = l.Close() }()
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				return nil, err
			}
			sc, err := l.Accept()
			if err != nil {
				return nil, err
			}
			// The server closes first: its side waits in TIME_WAIT once
			// the client has closed too.
			if err := sc.Close(); err != nil {
				return nil, err
			}
			time.Sleep(20 * time.Millisecond)
			return func() {}, c.Close()
		}},
		{"unix datagram", func() (func(), error) {
			fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return nil, err
			}
			return func() { _ = unix.Close(fd) }, nil
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n, err := s.Get("ada")
			if err != nil {
				t.Fatal(err)
			}
			ino := inode(t, n.FD())
			var release func()
			inside(t, n, func() error {
				var err error
				release, err = c.leave()
				return err
			})
			s.Put("ada", n)
			release()
			n2, err := s.Get("ada")
			if err != nil {
				t.Fatal(err)
			}
			if inode(t, n2.FD()) == ino {
				t.Fatal("a namespace with a socket left was kept")
			}
			if err := n2.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestEvictionAndIdle(t *testing.T) {
	s := newSupply(t, netns.Config{Spares: 1, MaxKept: 2, Idle: 200 * time.Millisecond})
	var got []*netns.NS
	for _, st := range []string{"a", "b", "c"} {
		n, err := s.Get(st)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, n)
	}
	first := inode(t, got[0].FD())
	for i, st := range []string{"a", "b", "c"} {
		s.Put(st, got[i])
	}
	if s.Kept() != 2 {
		t.Fatalf("kept %d, want MaxKept 2", s.Kept())
	}
	n, err := s.Get("a")
	if err != nil {
		t.Fatal(err)
	}
	if inode(t, n.FD()) == first {
		t.Fatal("the least recently used namespace was not the one evicted")
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Kept() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if k := s.Kept(); k != 0 {
		t.Fatalf("%d namespaces still kept after Idle", k)
	}
}

// TestManyStudentsAtOnce: concurrent Gets and Puts never hand one
// namespace to two holders, and a student only ever gets back their own.
func TestManyStudentsAtOnce(t *testing.T) {
	// Nothing is dropped here (MaxKept above all it can hold): a dropped
	// namespace's inode number may be given to a new one.
	s := newSupply(t, netns.Config{Spares: 4, MaxKept: 1000})
	var (
		mu    sync.Mutex
		owner = map[uint64]string{} // inode -> student whose it has been
		held  = map[uint64]bool{}
		wg    sync.WaitGroup
	)
	errc := make(chan error, 64)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				st := fmt.Sprintf("s%d", (w+rand.IntN(4))%24)
				n, err := s.Get(st)
				if err != nil {
					errc <- err
					return
				}
				var stt unix.Stat_t
				if err := unix.Fstat(n.FD(), &stt); err != nil {
					errc <- err
					return
				}
				mu.Lock()
				if held[stt.Ino] {
					errc <- fmt.Errorf("namespace %d handed out twice", stt.Ino)
				}
				if o, ok := owner[stt.Ino]; ok && o != st {
					errc <- fmt.Errorf("namespace %d went from %s to %s", stt.Ino, o, st)
				}
				held[stt.Ino], owner[stt.Ino] = true, st
				mu.Unlock()
				time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
				mu.Lock()
				held[stt.Ino] = false
				mu.Unlock()
				s.Put(st, n)
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if st := s.Stats(); st.Kept == 0 {
		t.Errorf("stats %+v: no namespace was reused", st)
	}
}

// TestCloseLeavesNoFD: a namespace holds more than its own fd (the files
// that list its sockets); closing the supply closes every one of them, and
// a namespace handed out and closed by its holder leaves nothing either.
func TestCloseLeavesNoFD(t *testing.T) {
	testutil.RequireRoot(t)
	before := testutil.OpenFDs(t)
	s, err := netns.New(netns.Config{Spares: 2, MaxKept: 8, Log: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var held []*netns.NS
	for _, st := range []string{"a", "b", "c"} {
		n, err := s.Get(st)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, n)
	}
	s.Put("a", held[0])
	s.Put("b", held[1])
	if err := held[2].Close(); err != nil {
		t.Fatal(err)
	}
	if s.Kept() != 2 {
		t.Fatalf("kept %d, want 2", s.Kept())
	}
	if during := testutil.OpenFDs(t); during < before+2*4 {
		t.Fatalf("%d fds open with two namespaces kept, %d before: want at least 4 more per namespace", during, before)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if after := testutil.OpenFDs(t); after != before {
		t.Fatalf("%d fds open after Close, %d before", after, before)
	}
}

// BenchmarkGetPut is a run's round trip through the supply: its
// student's kept namespace out, checked for sockets and kept again.
func BenchmarkGetPut(b *testing.B) {
	s := newSupply(b, netns.Config{Spares: 1, MaxKept: 8})
	for b.Loop() {
		n, err := s.Get("ada")
		if err != nil {
			b.Fatal(err)
		}
		s.Put("ada", n)
	}
	if st := s.Stats(); st.Kept == 0 {
		b.Fatal("no namespace came back kept")
	}
}
