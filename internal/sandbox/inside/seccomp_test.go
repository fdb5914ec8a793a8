package inside

import (
	"testing"
)

// TestPolicyAssembles: every name in the allow-list is a syscall of this
// architecture (the compiler refuses unknown names), and the program fits
// the kernel's limit of 4096 instructions.
func TestPolicyAssembles(t *testing.T) {
	prog, err := compileFilter()
	if err != nil {
		t.Fatal(err)
	}
	if prog.Len == 0 || prog.Len > 4096 {
		t.Fatalf("filter of %d instructions", prog.Len)
	}
	t.Logf("seccomp filter: %d instructions for %d allowed syscalls", prog.Len, len(allowed))
}
