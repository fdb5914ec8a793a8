package bench

import (
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// These check the arithmetic and parsing only; nothing here is timed.

func TestPercentileIsNearestRank(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	for _, c := range []struct {
		q    float64
		want float64
	}{{0, 1}, {20, 1}, {50, 3}, {95, 5}, {99, 5}, {100, 5}} {
		if got := percentile(xs, c.q); got != c.want {
			t.Errorf("percentile(%v, %v) = %v, want %v", xs, c.q, got, c.want)
		}
	}
	if xs[0] != 5 {
		t.Errorf("percentile sorted its input in place: %v", xs)
	}
}

func TestPairRatios(t *testing.T) {
	var p pairs
	p.add(12, 10)
	p.add(30, 10)
	p.add(5, 0) // a zero bare sample has no ratio
	got := p.ratios()
	if len(got) != 2 || got[0] != 1.2 || got[1] != 3 {
		t.Errorf("ratios = %v, want [1.2 3]", got)
	}
}

func TestCheckRecordsMisses(t *testing.T) {
	var tb table
	pass, miss := row{name: "a"}, row{name: "b"}
	tb.check(&pass, atMost(1.1, "x"), 1.05, "")
	tb.check(&miss, atLeast(200, " MB/s"), 68, "too slow")
	if pass.result != "PASS" || miss.result != "MISS" {
		t.Errorf("results %q %q, want PASS MISS", pass.result, miss.result)
	}
	if len(tb.misses) != 1 || !strings.Contains(tb.misses[0], "too slow") || !strings.Contains(tb.misses[0], ">= 200 MB/s") {
		t.Errorf("misses = %q", tb.misses)
	}
}

func TestParseSteps(t *testing.T) {
	log := `time=2026-11-29T04:30:00Z level=INFO msg="run started" run=r1 student=lat script=hi.py uid=200000 pid=1 start_ms=7 steps="admit=0.50ms claim=0.01ms cgroup=0.30ms exec=6.00ms"
time=2026-11-29T04:30:00Z level=INFO msg="run ended" run=r1 reason=exited
time=2026-11-29T04:30:01Z level=INFO msg="run started" run=r2 student=lat script=hi.py uid=200000 pid=2 start_ms=20 steps="admit=1.00ms cgroup=0.40ms spawn=3.00ms cgroup_join=12.00ms exec=4.00ms"
time=2026-11-29T04:30:02Z level=INFO msg="run started" run=r3 student=lat script=hi.py uid=200000 pid=3 start_ms=9 steps="admit=0.70ms claim=0.02ms cgroup=0.20ms exec=8.00ms"
`
	warm, cold := parseSteps(log)
	if warm.n != 2 || cold.n != 1 {
		t.Fatalf("warm %d cold %d, want 2 and 1", warm.n, cold.n)
	}
	if got := strings.Join(cold.names, ","); got != "admit,cgroup,spawn,cgroup_join,exec" {
		t.Errorf("cold steps %s", got)
	}
	if cold.med["cgroup_join"] != 12 || cold.total != 20.4 {
		t.Errorf("cold cgroup_join %v total %v, want 12 and 20.4", cold.med["cgroup_join"], cold.total)
	}
	if warm.med["exec"] != 6 {
		t.Errorf("warm exec median %v, want 6 (nearest rank of 6, 8)", warm.med["exec"])
	}
	if s := stepsText(log); !strings.Contains(s, "2 warm starts, 1 cold") {
		t.Errorf("stepsText = %q", s)
	}
}

func TestTableLayout(t *testing.T) {
	var tb table
	tb.section("latency")
	tb.add(row{name: "p50", idexd: "12.00 ms", bare: "10.00 ms", ratio: "1.20x", pairRatio: "1.19x", target: "<= 1.1x", result: "MISS"})
	tb.add(row{name: "RSS", idexd: "20.0 MiB"})
	out := tb.String()
	for _, want := range []string{"\nlatency\n", "p50", "1.20x", "MISS", "RSS"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "# latency") {
		t.Errorf("section marker leaked:\n%s", out)
	}
}

func TestProblemsCountsWarningsByMessage(t *testing.T) {
	dir := t.TempDir()
	d := &daemon{log: dir + "/idexd.log"}
	log := `time=1 level=INFO msg="run started" run=a
time=2 level=WARN msg="read cpu time" run=a err=x
time=3 level=WARN msg="read cpu time" run=b err=y
time=4 level=ERROR msg="record run end" err=z
time="2026" level=warning msg="falling back to slower kill implementation: open x"
`
	if err := os.WriteFile(d.log, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	got := d.problems("test")
	if len(got) != 3 {
		t.Fatalf("problems = %q, want 3 kinds", got)
	}
	if !strings.Contains(got[0], `2 x WARN "read cpu time"`) || !strings.Contains(got[1], `1 x ERROR "record run end"`) {
		t.Errorf("problems = %q", got)
	}
}

func TestRatioChangeAgainstBefore(t *testing.T) {
	// after and before share their bare samples: bare p50 20 ms,
	// after p50 24 ms (1.20x), before p50 23 ms (1.15x): +0.05x.
	var after, before pairs
	for _, s := range []struct{ a, b, bare float64 }{{24, 23, 20}, {30, 29, 25}, {22, 21, 19}} {
		after.add(s.a, s.bare)
		before.add(s.b, s.bare)
	}
	if got := ratioChange(&after, &before, 50); math.Abs(got-0.05) > 1e-9 {
		t.Errorf("ratioChange p50 = %v, want 0.05", got)
	}
	var tb table
	r := row{name: "start->end p50 ratio, idexd - before"}
	tb.check(&r, beforeChangeTarget, ratioChange(&after, &before, 50), "")
	if r.result != "PASS" {
		t.Errorf("+0.05x against a target of at most 0.05x: %q, want PASS", r.result)
	}
	after.idexd[0] = 25 // 1.25x against 1.15x
	r = row{name: "start->end p50 ratio, idexd - before"}
	tb.check(&r, beforeChangeTarget, ratioChange(&after, &before, 50), "")
	if r.result != "MISS" {
		t.Errorf("+0.10x: %q, want MISS", r.result)
	}
	if got := ratioChange(&pairs{}, &pairs{}, 50); !math.IsNaN(got) {
		t.Errorf("no samples: %v, want NaN", got)
	}
}

func TestParseIdexdBefore(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "idexd")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	base := []string{"-idexd", exe, "-idexctl", exe}
	o, err := parseOptions(base, io.Discard)
	if err != nil || o.IdexdBefore != "" {
		t.Fatalf("without -idexd-before: %q, %v; want none", o.IdexdBefore, err)
	}
	if o, err = parseOptions(append(base, "-idexd-before", exe), io.Discard); err != nil || o.IdexdBefore != exe {
		t.Errorf("-idexd-before %s: %q, %v", exe, o.IdexdBefore, err)
	}
	if _, err := parseOptions(append(base, "-idexd-before", filepath.Join(dir, "missing")), io.Discard); err == nil {
		t.Error("-idexd-before of a missing file was accepted")
	}
}

// TestParsePgpgin: the disk reads idexbench reports per run come from
// pgpgin, wherever it sits in /proc/vmstat.
func TestParsePgpgin(t *testing.T) {
	got, err := parsePgpgin("nr_free_pages 5\npgpgin 70123\npgpgout 9\n")
	if err != nil || got != 70123 {
		t.Errorf("parsePgpgin: %d, %v; want 70123", got, err)
	}
	if _, err := parsePgpgin("nr_free_pages 5\npgpgout 9\n"); err == nil {
		t.Error("parsePgpgin without the line: no error")
	}
	if _, err := parsePgpgin("pgpgin x\n"); err == nil {
		t.Error("parsePgpgin of a non-number: no error")
	}
	if n, err := diskReadKiB(); err != nil || n <= 0 {
		t.Errorf("diskReadKiB of this machine: %d, %v; want a positive count", n, err)
	}
}
