package bench

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// pairs holds the samples of one measurement, idexd and bare taken in
// turn: pair i is idexd[i] and bare[i], taken back to back, so a burst of
// noise on the machine hits both sides of a pair alike.
type pairs struct {
	idexd []float64
	bare  []float64
}

func (p *pairs) add(idexd, bare float64) {
	p.idexd = append(p.idexd, idexd)
	p.bare = append(p.bare, bare)
}

// ratios returns idexd/bare for every pair.
func (p *pairs) ratios() []float64 {
	out := make([]float64, 0, len(p.idexd))
	for i := range p.idexd {
		if p.bare[i] > 0 {
			out = append(out, p.idexd[i]/p.bare[i])
		}
	}
	return out
}

// percentile is the nearest-rank percentile (q in 0..100) of xs: always a
// sample that was really measured, never an interpolation.
func percentile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	rank := int(math.Ceil(q / 100 * float64(len(s))))
	rank = min(max(rank, 1), len(s))
	return s[rank-1]
}

func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// target is a goal from issue 7, checked against one figure.
type target struct {
	text string
	ok   func(v float64) bool
}

func atMost(v float64, unit string) target {
	return target{text: fmt.Sprintf("<= %s%s", trimFloat(v), unit), ok: func(x float64) bool { return x <= v }}
}

func atLeast(v float64, unit string) target {
	return target{text: fmt.Sprintf(">= %s%s", trimFloat(v), unit), ok: func(x float64) bool { return x >= v }}
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}

// row is one line of the results table.
type row struct {
	name      string
	idexd     string
	bare      string
	ratio     string // of the two figures shown
	pairRatio string // median of the per-pair ratios
	target    string
	result    string // PASS, MISS or empty when the row has no target
}

// table is the results table, in sections.
type table struct {
	rows   []row
	misses []string
}

func (t *table) section(name string) { t.rows = append(t.rows, row{name: "# " + name}) }

func (t *table) add(r row) { t.rows = append(t.rows, r) }

// check sets r's target and result from value v, and records a miss.
func (t *table) check(r *row, tg target, v float64, why string) {
	r.target = tg.text
	if math.IsNaN(v) {
		r.result = "n/a"
		return
	}
	if tg.ok(v) {
		r.result = "PASS"
		return
	}
	r.result = "MISS"
	t.misses = append(t.misses, fmt.Sprintf("%s: %s, target %s. %s", r.name, trimFloat(v), tg.text, why))
}

func ratioText(a, b float64) string {
	if b <= 0 || math.IsNaN(a) || math.IsNaN(b) {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func msText(v float64) string {
	if math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf("%.2f ms", v)
}

// String lays the table out in fixed-width columns.
func (t *table) String() string {
	head := row{name: "measure", idexd: "idexd", bare: "bare", ratio: "ratio", pairRatio: "pair-ratio p50", target: "target", result: "result"}
	all := append([]row{head}, t.rows...)
	w := make([]int, 7)
	for _, r := range all {
		if strings.HasPrefix(r.name, "# ") {
			continue
		}
		for i, c := range r.cells() {
			w[i] = max(w[i], len(c))
		}
	}
	var b strings.Builder
	for _, r := range all {
		if strings.HasPrefix(r.name, "# ") {
			fmt.Fprintf(&b, "\n%s\n", r.name[2:])
			continue
		}
		c := r.cells()
		line := fmt.Sprintf("  %-*s  %*s  %*s  %*s  %*s  %-*s  %s", w[0], c[0], w[1], c[1], w[2], c[2], w[3], c[3], w[4], c[4], w[5], c[5], c[6])
		b.WriteString(strings.TrimRight(line, " "))
		b.WriteByte('\n')
	}
	return b.String()
}

func (r row) cells() []string {
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	return []string{r.name, dash(r.idexd), dash(r.bare), dash(r.ratio), dash(r.pairRatio), r.target, r.result}
}

// rawLine formats samples for the raw-samples appendix, in the order taken.
func rawLine(name string, xs []float64, prec int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%d):", name, len(xs))
	for _, x := range xs {
		fmt.Fprintf(&b, " %.*f", prec, x)
	}
	return b.String()
}
