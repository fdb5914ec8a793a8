package sandbox

import (
	"encoding/binary"
	"testing"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/idexd/idexd/internal/sandbox/inside"
)

// TestPolicyAssembles: every name in the allow-list is a syscall of this
// architecture (the compiler refuses unknown names), and the program fits
// the kernel's limit of 4096 instructions.
func TestPolicyAssembles(t *testing.T) {
	prog, err := compileFilter()
	if err != nil {
		t.Fatal(err)
	}
	n := len(prog) / inside.FilterInstructionSize
	if n == 0 || n > 4096 || len(prog)%inside.FilterInstructionSize != 0 {
		t.Fatalf("filter of %d bytes", len(prog))
	}
	t.Logf("seccomp filter: %d instructions for %d allowed syscalls", n, len(allowed))
}

// TestTreeDecidesAsElastic: the searched filter answers every syscall as
// elastic's linear assembly of the same policy does, judged by running both
// in x/net/bpf's interpreter over every syscall number below 1024 and the
// x32 range, on this and other architectures, with arguments that the
// policy's conditions look at (socket domains, personality values, clone
// flags, garbage in the upper half).
func TestTreeDecidesAsElastic(t *testing.T) {
	p := Policy()
	linear, err := p.Assemble()
	if err != nil {
		t.Fatal(err)
	}
	tree, err := assembleTree(Policy())
	if err != nil {
		t.Fatal(err)
	}
	vmLinear, err := bpf.NewVM(linear)
	if err != nil {
		t.Fatal(err)
	}
	vmTree, err := bpf.NewVM(tree)
	if err != nil {
		t.Fatal(err)
	}
	// The interpreter loads words big-endian; each 32-bit field is written
	// so that it reads what the kernel's native load would.
	data := func(nr, archID uint32, arg0 uint64) []byte {
		b := make([]byte, 64)
		binary.BigEndian.PutUint32(b[0:], nr)
		binary.BigEndian.PutUint32(b[4:], archID)
		lo, hi := 16, 20 // little-endian: the low word first
		if binary.NativeEndian.Uint16([]byte{0, 1}) == 1 {
			lo, hi = 20, 16
		}
		binary.BigEndian.PutUint32(b[lo:], uint32(arg0))
		binary.BigEndian.PutUint32(b[hi:], uint32(arg0>>32))
		return b
	}
	args := []uint64{0, 1, 2, 0xffffffff, 1 << 32, 1<<32 | unix.AF_INET, uint64(unix.SIGCHLD), unix.CLONE_VM | unix.CLONE_THREAD,
		0x8, 0x20000, 0x20008, 0x3, 0x400000}
	for af := uint64(0); af < 50; af++ {
		args = append(args, af)
	}
	for bit := 0; bit < 64; bit++ {
		args = append(args, 1<<bit, 1<<bit|uint64(unix.SIGCHLD))
	}
	var nrs []uint32
	for nr := uint32(0); nr < 1024; nr++ {
		nrs = append(nrs, nr)
	}
	for nr := uint32(0); nr < 600; nr++ {
		nrs = append(nrs, 0x40000000|nr)
	}
	nrs = append(nrs, 0x7fffffff, 0xffffffff)
	// The syscalls whose arguments the policy looks at get every argument.
	conditional := map[uint32]bool{unix.SYS_CLONE: true, unix.SYS_SOCKET: true, unix.SYS_PERSONALITY: true, unix.SYS_CLONE3: true}
	checked, allows := 0, 0
	for _, archID := range []uint32{uint32(arch.X86_64.ID), uint32(arch.I386.ID), uint32(arch.AARCH64.ID), 0, 0xffffffff} {
		for _, nr := range nrs {
			as := args[:3]
			if conditional[nr] {
				as = args
			}
			for _, a := range as {
				in := data(nr, archID, a)
				want, err := vmLinear.Run(in)
				if err != nil {
					t.Fatal(err)
				}
				got, err := vmTree.Run(in)
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Fatalf("syscall %#x arch %#x arg0 %#x: tree %#x, elastic %#x", nr, archID, a, got, want)
				}
				checked++
				if uint32(got) == uint32(seccomp.ActionAllow) {
					allows++
				}
			}
		}
	}
	// A comparison that never saw an allowed syscall would prove nothing.
	if allows < len(allowed) {
		t.Fatalf("%d of %d inputs allowed: fewer than the allow-list's names", allows, checked)
	}
	t.Logf("%d inputs, %d allowed; %d instructions against elastic's %d", checked, allows, len(tree), len(linear))
}
