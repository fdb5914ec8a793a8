package sandbox

import (
	"fmt"
	"math"
	"slices"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
)

// The elastic compiler tests a syscall against each allowed name in turn:
// 348 instructions for this policy. When a filter is loaded, the kernel
// runs it for every syscall number to find those it can let through
// without running it again (seccomp_cache_prepare, 5.11+), and through
// that list it cost 380-430 us of each run's start here. assembleTree finds
// the unconditional allow-list by binary search over ranges of syscall
// numbers instead (96-112 us; docs/sandbox.md) and leaves the rest of the
// policy to elastic, unchanged.

// Offsets in struct seccomp_data.
const (
	nrOffset   = 0
	archOffset = 4
)

// jumpToFallback marks a jump resolved once the tree's length is known.
const jumpToFallback = math.MaxUint32

// numberRange is a run of consecutive allowed syscall numbers.
type numberRange struct{ lo, hi uint32 }

// assembleTree compiles p as elastic's Policy.Assemble would, except for
// its first group, which must allow its syscalls whatever their arguments:
// those are found by binary search. Every syscall the search does not
// allow goes on to the rest of p as elastic assembles it (arch and x32
// checks, argument conditions, default action), so the decisions are the
// same as elastic's for the whole policy: the first group came first
// there too.
func assembleTree(p seccomp.Policy) ([]bpf.Instruction, error) {
	if len(p.Syscalls) == 0 {
		return nil, fmt.Errorf("seccomp policy has no syscall groups")
	}
	first := p.Syscalls[0]
	if first.Action != seccomp.ActionAllow || len(first.NamesWithCondtions) > 0 {
		return nil, fmt.Errorf("seccomp policy: the first group must allow syscalls without conditions (action %v, %d with conditions)", first.Action, len(first.NamesWithCondtions))
	}
	info, err := arch.GetInfo("")
	if err != nil {
		return nil, fmt.Errorf("seccomp policy: %w", err)
	}
	rest := p
	rest.Syscalls = p.Syscalls[1:]
	fallback, err := rest.Assemble()
	if err != nil {
		return nil, fmt.Errorf("assemble the rest of the seccomp policy: %w", err)
	}
	ranges, err := numberRanges(info, first.Names)
	if err != nil {
		return nil, err
	}
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: archOffset, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(info.ID), SkipTrue: 1},
		bpf.Jump{Skip: jumpToFallback},
		bpf.LoadAbsolute{Off: nrOffset, Size: 4},
	}
	if info.ID == arch.X86_64.ID {
		// x32 numbers carry this bit: never in the tree's ranges, but
		// elastic answers them, so they go on to it.
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: uint32(arch.X32.SeccompMask), SkipFalse: 1},
			bpf.Jump{Skip: jumpToFallback})
	}
	tree, err := searchTree(ranges)
	if err != nil {
		return nil, err
	}
	prog = append(prog, tree...)
	start := len(prog)
	for i, in := range prog {
		if j, ok := in.(bpf.Jump); ok && j.Skip == jumpToFallback {
			prog[i] = bpf.Jump{Skip: uint32(start - i - 1)}
		}
	}
	return append(prog, fallback...), nil
}

// numberRanges turns syscall names into sorted runs of numbers.
func numberRanges(info *arch.Info, names []string) ([]numberRange, error) {
	nrs := make([]uint32, 0, len(names))
	for _, name := range names {
		nr, ok := info.SyscallNames[name]
		if !ok {
			return nil, fmt.Errorf("seccomp policy: %q is not a syscall on %s", name, info.Name)
		}
		nrs = append(nrs, uint32(nr))
	}
	slices.Sort(nrs)
	nrs = slices.Compact(nrs)
	var ranges []numberRange
	for _, nr := range nrs {
		if n := len(ranges); n > 0 && ranges[n-1].hi+1 == nr {
			ranges[n-1].hi = nr
			continue
		}
		ranges = append(ranges, numberRange{nr, nr})
	}
	if len(ranges) == 0 {
		return nil, fmt.Errorf("seccomp policy: the allow-list is empty")
	}
	return ranges, nil
}

// segment is a run of syscall numbers from start up to the next
// segment's start, all allowed or none.
type segment struct {
	start uint32
	allow bool
}

// Where a branch of the search ends when it is not more of the tree.
const (
	toAllow    = -1
	toFallback = -2
)

// searchTree tests the syscall number in A against sorted ranges: it
// returns allow when A is in one, and jumps to the fallback when not. It is
// a binary search over the boundaries of the ranges, one comparison per
// node in pre-order, and every leaf is one of two shared instructions at
// its end: about two instructions per range, and eight comparisons for a
// syscall of this policy.
func searchTree(ranges []numberRange) ([]bpf.Instruction, error) {
	segs := []segment{{0, false}}
	for _, r := range ranges {
		if r.lo == 0 {
			segs[0].allow = true
		} else {
			segs = append(segs, segment{r.lo, true})
		}
		if r.hi < math.MaxUint32 {
			segs = append(segs, segment{r.hi + 1, false})
		}
	}
	type node struct {
		at      uint32
		yes, no int // instruction index, or toAllow / toFallback
	}
	var nodes []node
	var build func(segs []segment) int
	build = func(segs []segment) int {
		if len(segs) == 1 {
			if segs[0].allow {
				return toAllow
			}
			return toFallback
		}
		m := len(segs) / 2
		i := len(nodes)
		nodes = append(nodes, node{at: segs[m].start})
		nodes[i].no = build(segs[:m])
		nodes[i].yes = build(segs[m:])
		return i
	}
	build(segs)
	allowAt, fallbackAt := len(nodes), len(nodes)+1
	prog := make([]bpf.Instruction, 0, len(nodes)+2)
	skip := func(from, to int) (uint8, error) {
		switch to {
		case toAllow:
			to = allowAt
		case toFallback:
			to = fallbackAt
		}
		d := to - from - 1
		if d < 0 || d > math.MaxUint8 {
			return 0, fmt.Errorf("seccomp tree: a jump of %d instructions from %d does not fit a conditional jump", d, from)
		}
		return uint8(d), nil
	}
	for i, n := range nodes {
		yes, err := skip(i, n.yes)
		if err != nil {
			return nil, err
		}
		no, err := skip(i, n.no)
		if err != nil {
			return nil, err
		}
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: n.at, SkipTrue: yes, SkipFalse: no})
	}
	return append(prog, bpf.RetConstant{Val: uint32(seccomp.ActionAllow)}, bpf.Jump{Skip: jumpToFallback}), nil
}
