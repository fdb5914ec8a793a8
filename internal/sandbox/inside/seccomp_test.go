package inside

import (
	"encoding/binary"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestDecodeFilter: the instructions idexd sends come out as the kernel
// takes them, and a filter that is empty, too long or cut mid-instruction
// is refused (a helper never runs a program without its filter).
func TestDecodeFilter(t *testing.T) {
	want := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 4},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 1, Jf: 2, K: 0xc000003e},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	var b []byte
	for _, f := range want {
		b = binary.NativeEndian.AppendUint16(b, f.Code)
		b = append(b, f.Jt, f.Jf)
		b = binary.NativeEndian.AppendUint32(b, f.K)
	}
	prog, err := decodeFilter(b)
	if err != nil {
		t.Fatal(err)
	}
	got := unsafeSlice(prog)
	if len(got) != len(want) {
		t.Fatalf("%d instructions, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("instruction %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	for _, bad := range [][]byte{nil, b[:7], b[:len(b)-1], make([]byte, 4097*FilterInstructionSize)} {
		if _, err := decodeFilter(bad); err == nil {
			t.Errorf("decodeFilter of %d bytes: no error", len(bad))
		}
	}
}

func unsafeSlice(p *unix.SockFprog) []unix.SockFilter {
	return unsafe.Slice(p.Filter, p.Len)
}
