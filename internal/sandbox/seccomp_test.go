package sandbox

import (
	"testing"

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
