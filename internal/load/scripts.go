package load

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/idexd/idexd/internal/api"
)

// Kind is one script of the mix.
type Kind string

// The mix. Every script first writes a marker file named after its token
// into its working directory, so that the files check can prove each run
// wrote where it should and nowhere else.
const (
	KindQuick     Kind = "quick"     // prints one line, tries to write outside its directory
	KindSlow      Kind = "slow"      // sleeps
	KindInput     Kind = "input"     // reads input(); the load answers over stdin
	KindException Kind = "exception" // uncaught exception: exit 1
	KindExit3     Kind = "exit3"     // sys.exit(3)
	KindAbort     Kind = "abort"     // os.abort(): SIGABRT
	KindForkBomb  Kind = "forkbomb"  // held by the pids limit until the wall clock
	KindFlood     Kind = "flood"     // output past output_kb
	KindMemHog    Kind = "memhog"    // past memory_mb: the kernel's OOM killer
	KindHold      Kind = "hold"      // prints ready, then waits on stdin (--hold)
	KindSleeper   Kind = "sleeper"   // prints up, sleeps 600 s (--cycles)
)

// markerPrefix starts every marker file a run writes; escapePrefix every
// file a run tried to write outside its directory.
const (
	markerPrefix = "idexload-mark-"
	escapePrefix = "idexload-escape-"
	scriptPrefix = "idexload_"
)

// prelude marks the run and defines cgroups(): the run's /proc/self/cgroup
// on one line. A run has a PID namespace of its own, so its pid means
// nothing on the host; its cgroup paths are the host's.
const prelude = `import os, sys
tok = sys.argv[1]
with open("` + markerPrefix + `" + tok, "w") as f:
    f.write(tok)
def cgroups():
    return ";".join(open("/proc/self/cgroup").read().split())
`

// kindSpec is how a kind is written, limited and judged.
type kindSpec struct {
	kind   Kind
	weight int // share of the mix, out of the sum of weights
	src    string
	limits api.Limits
	// natural is the reason a run ends with when nobody stops it.
	natural api.Reason
	// mayNotMark: the natural end can come before the script wrote its
	// marker (a wall-clock timeout on a starved machine).
	mayNotMark bool
	// check judges a run that ended for its natural reason; out and errOut
	// are its stdout and stderr.
	check func(tok string, r *api.Run, out, errOut string) error
}

// File is the script's name in every student's directory.
func (k Kind) File() string { return scriptPrefix + string(k) + ".py" }

var specs = []kindSpec{
	{kind: KindQuick, weight: 30, natural: api.ReasonExited,
		limits: api.Limits{MemoryMB: 64, WallSeconds: 30, CPUSeconds: 10},
		src: prelude + `other = sys.argv[2]
for p in ("../` + escapePrefix + `" + tok, "../" + other + "/` + escapePrefix + `" + tok):
    try:
        with open(p, "w") as f:
            f.write(tok)
        print("escaped", p)
    except OSError:
        pass
print("quick", tok)
`,
		check: func(tok string, r *api.Run, out, errOut string) error {
			return exact(r, 0, out, "quick "+tok+"\n", errOut)
		}},
	{kind: KindSlow, weight: 20, natural: api.ReasonExited,
		limits: api.Limits{MemoryMB: 64, WallSeconds: 30, CPUSeconds: 10},
		src: prelude + `import time
print("start", cgroups(), flush=True)
time.sleep(float(sys.argv[2]))
print("done", tok)
`,
		check: func(tok string, r *api.Run, out, errOut string) error {
			first, rest, _ := strings.Cut(out, "\n")
			if !strings.HasPrefix(first, "start ") {
				return fmt.Errorf("stdout %q does not begin with start CGROUPS", out)
			}
			return exact(r, 0, rest, "done "+tok+"\n", errOut)
		}},
	{kind: KindInput, weight: 15, natural: api.ReasonExited,
		limits: api.Limits{MemoryMB: 64, WallSeconds: 30, CPUSeconds: 10},
		src: prelude + `name = input("name? ")
print("hello", name)
`,
		check: func(tok string, r *api.Run, out, errOut string) error {
			return exact(r, 0, out, "name? hello "+tok+"\n", errOut)
		}},
	{kind: KindException, weight: 6, natural: api.ReasonExited,
		limits: api.Limits{MemoryMB: 64, WallSeconds: 30, CPUSeconds: 10},
		src:    prelude + `raise ValueError("idexload " + tok)` + "\n",
		check: func(tok string, r *api.Run, out, errOut string) error {
			if !strings.Contains(errOut, "ValueError: idexload "+tok+"\n") {
				return fmt.Errorf("stderr %q has no ValueError", errOut)
			}
			return exact(r, 1, out, "", "")
		}},
	{kind: KindExit3, weight: 6, natural: api.ReasonExited,
		limits: api.Limits{MemoryMB: 64, WallSeconds: 30, CPUSeconds: 10},
		src:    prelude + `print("bye", tok)` + "\nsys.exit(3)\n",
		check: func(tok string, r *api.Run, out, errOut string) error {
			return exact(r, 3, out, "bye "+tok+"\n", errOut)
		}},
	{kind: KindAbort, weight: 6, natural: api.ReasonSignaled,
		limits: api.Limits{MemoryMB: 64, WallSeconds: 30, CPUSeconds: 10},
		src:    prelude + `print("abort", tok, flush=True)` + "\nos.abort()\n",
		check: func(tok string, r *api.Run, out, errOut string) error {
			if r.Signal != "SIGABRT" || r.ExitCode != nil {
				return fmt.Errorf("signal %q exit %v, want SIGABRT", r.Signal, intp(r.ExitCode))
			}
			if out != "abort "+tok+"\n" || errOut != "" {
				return fmt.Errorf("stdout %q stderr %q", out, errOut)
			}
			return nil
		}},
	// The bomb's CPU share is small: it must be contained, not starve the
	// 2-core machine that runs the rest of the mix.
	{kind: KindForkBomb, weight: 3, natural: api.ReasonTimedOut, mayNotMark: true,
		limits: api.Limits{MemoryMB: 128, Pids: 16, CPUPercent: 20, WallSeconds: 2, CPUSeconds: 10},
		src: prelude + `print("bomb", tok, flush=True)
while True:
    try:
        os.fork()
    except OSError:
        pass
`,
		// Under heavy load the wall clock may end it before its first
		// line is whole: only a prefix of that line is right.
		check: func(tok string, r *api.Run, out, _ string) error {
			if !strings.HasPrefix("bomb "+tok+"\n", out) {
				return fmt.Errorf("stdout %q, want a prefix of %q", out, "bomb "+tok+"\n")
			}
			return nil
		}},
	{kind: KindFlood, weight: 7, natural: api.ReasonOutputLimit,
		limits: api.Limits{MemoryMB: 64, WallSeconds: 30, CPUSeconds: 10, OutputKB: 64},
		src: prelude + `line = "x" * 1023 + "\n"
while True:
    sys.stdout.write(line * 64)
`,
		check: func(_ string, r *api.Run, out, _ string) error {
			if !r.Truncated || r.OutputBytes != 64<<10 || int64(len(out)) != 64<<10 {
				return fmt.Errorf("truncated %v output_bytes %d, %d bytes seen, want true and %d", r.Truncated, r.OutputBytes, len(out), 64<<10)
			}
			return nil
		}},
	{kind: KindMemHog, weight: 7, natural: api.ReasonOOMKilled,
		// The wall limit is only a backstop: filling 48 MiB next to its
		// limit with no swap, the interpreter's file pages are reclaimed
		// and faulted back until the OOM killer acts: 0.27-0.31 s of CPU
		// even for a bare python in a v1 memory group here. With 64 runs
		// in flight on 2 cores each gets 1/32 of a CPU: on a quiet machine
		// 19 of 358 memhogs of make soak's mix needed more than 30 s.
		limits: api.Limits{MemoryMB: 48, WallSeconds: 120, CPUSeconds: 10},
		// bytes * n writes every page, so the memory is really used.
		src: prelude + `print("hog", tok, flush=True)
a = []
while True:
    a.append(b"x" * (1 << 20))
`,
		check: func(tok string, r *api.Run, out, _ string) error {
			if out != "hog "+tok+"\n" {
				return fmt.Errorf("stdout %q", out)
			}
			return nil
		}},
}

var holdSpec = kindSpec{kind: KindHold, natural: api.ReasonExited,
	limits: api.Limits{MemoryMB: 64, WallSeconds: 600, CPUSeconds: 10},
	src: prelude + `print("ready", cgroups(), flush=True)
name = input()
print("bye", name)
`,
	check: func(tok string, r *api.Run, out, errOut string) error {
		_, rest, _ := strings.Cut(out, "\n")
		return exact(r, 0, rest, "bye "+tok+"\n", errOut)
	}}

var sleeperSpec = kindSpec{kind: KindSleeper, natural: api.ReasonStopped,
	limits: api.Limits{MemoryMB: 64, WallSeconds: 600, CPUSeconds: 10},
	src:    "import time\nprint(\"up\", flush=True)\ntime.sleep(600)\n",
}

// ParseMix reads "quick=30,slow=20,..." into weights; kinds left out keep
// weight 0. An empty string is the default mix.
func ParseMix(s string) (map[Kind]int, error) {
	out := map[Kind]int{}
	if s == "" {
		for _, sp := range specs {
			out[sp.kind] = sp.weight
		}
		return out, nil
	}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("mix %q: %q is not kind=weight", s, part)
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("mix %q: weight of %s must be a number >= 0, got %q", s, k, v)
		}
		found := false
		for _, sp := range specs {
			if string(sp.kind) == k {
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("mix %q: unknown kind %q", s, k)
		}
		out[Kind(k)] = n
	}
	return out, nil
}

func exact(r *api.Run, code int, out, wantOut, errOut string) error {
	if r.ExitCode == nil || *r.ExitCode != code {
		return fmt.Errorf("exit code %v signal %q, want %d", intp(r.ExitCode), r.Signal, code)
	}
	if out != wantOut {
		return fmt.Errorf("stdout %q, want %q", out, wantOut)
	}
	if errOut != "" {
		return fmt.Errorf("stderr %q, want nothing", errOut)
	}
	return nil
}

func intp(p *int) any {
	if p == nil {
		return nil
	}
	return *p
}
