// Package metrics exposes idexd's Prometheus metrics. The engine reports
// to it through run.Hooks and the server through Refused, so neither knows
// about Prometheus.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/run"
)

// Sources are read at scrape time.
type Sources struct {
	Active      func() int
	LockCounts  func() (acquired, released int64)
	LocksLost   func() int64
	StoreErrors func() int64
	WarmStarts  func() int64
	// HelpersReused counts helpers kept for another run.
	HelpersReused func() int64
	// Networks says where runs' network namespaces came from.
	Networks func() (kept, spare, made int64)
	// WarmCgroups says where warm helpers' cgroups came from.
	WarmCgroups func() (reused, made int64)
	// Queue is the admission queue: its length and its oldest wait.
	Queue func() (int, time.Duration)
}

// Metrics is the registry and its collectors.
type Metrics struct {
	reg          *prometheus.Registry
	started      prometheus.Counter
	ended        *prometheus.CounterVec
	refused      *prometheus.CounterVec
	startLatency prometheus.Histogram
	stopLatency  prometheus.Histogram
	admissions   *prometheus.CounterVec
	admitRefused *prometheus.CounterVec
	queueWait    prometheus.Histogram
}

// New registers every metric that the engine and the server feed; Watch
// adds those read from the engine, which needs New's hooks first.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		reg: reg,
		started: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "idexd_runs_started_total", Help: "Runs whose child started."}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "idexd_runs_ended_total", Help: "Runs ended, by reason."}, []string{"reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "idexd_requests_refused_total", Help: "Requests answered with an error, by code."}, []string{"code"}),
		startLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "idexd_run_start_seconds", Help: "From the start request to the interpreter's exec.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		stopLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "idexd_run_stop_seconds", Help: "From a kill (stop, timeout, limit) to cgroup empty and lock free.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "idexd_admissions_total",
			Help: "Run starts by what admission did: admitted (a slot at once), queued (waited for one), waited (got one after waiting), refused."},
			[]string{"outcome"}),
		admitRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "idexd_admissions_refused_total", Help: "Run starts refused by admission, by code (student_busy, rate_limited, at_capacity, draining, student_stopped)."},
			[]string{"code"}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "idexd_queue_wait_seconds", Help: "How long a start that got a slot waited in the admission queue.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 13)}),
	}
	for _, o := range []string{run.AdmittedAtOnce, run.Queued, run.AdmittedAfterWait, run.Refused} {
		m.admissions.WithLabelValues(o) // every outcome shows, 0 until it happens
	}
	reg.MustRegister(m.started, m.ended, m.refused, m.startLatency, m.stopLatency, m.admissions, m.admitRefused, m.queueWait,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Watch registers the metrics read from src at scrape time; nil fields
// are left out.
func (m *Metrics) Watch(src Sources) {
	reg := m.reg
	if src.Active != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "idexd_runs_active", Help: "Runs admitted and not yet ended."},
			func() float64 { return float64(src.Active()) }))
	}
	if src.LockCounts != nil {
		reg.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "idexd_lock_acquired_total", Help: "Execution locks taken."},
				func() float64 { a, _ := src.LockCounts(); return float64(a) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "idexd_lock_released_total", Help: "Execution locks given back."},
				func() float64 { _, r := src.LockCounts(); return float64(r) }))
	}
	if src.LocksLost != nil {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "idexd_lock_lost_total", Help: "Shared locks taken over by another run while held (the run then ends lock_lost)."},
			func() float64 { return float64(src.LocksLost()) }))
	}
	if src.StoreErrors != nil {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "idexd_store_errors_total", Help: "Store writes that failed (and were queued or refused)."},
			func() float64 { return float64(src.StoreErrors()) }))
	}
	if src.Queue != nil {
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "idexd_queue_length", Help: "Run starts waiting for a free slot."},
				func() float64 { n, _ := src.Queue(); return float64(n) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "idexd_queue_oldest_wait_seconds", Help: "How long the start that waits longest has waited."},
				func() float64 { _, d := src.Queue(); return d.Seconds() }))
	}
	if src.WarmStarts != nil {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "idexd_runs_warm_started_total", Help: "Runs started on a warm helper (no cgroup move on the start path)."},
			func() float64 { return float64(src.WarmStarts()) }))
	}
	if src.HelpersReused != nil {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "idexd_helpers_reused_total", Help: "Times a run's sandbox helper was kept, cleaned, for another run instead of a new one being made."},
			func() float64 { return float64(src.HelpersReused()) }))
	}
	if src.Networks != nil {
		for i, from := range []string{"kept", "spare", "made"} {
			reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name:        "idexd_network_namespaces_total",
				Help:        "Runs' network namespaces by where they came from: kept from the student's last run, a spare made ahead, made on the spot.",
				ConstLabels: prometheus.Labels{"from": from}},
				func() float64 {
					k, s, m := src.Networks()
					return float64([]int64{k, s, m}[i])
				}))
		}
	}
	if src.WarmCgroups != nil {
		for i, from := range []string{"reused", "made"} {
			reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name:        "idexd_warm_cgroups_total",
				Help:        "Cgroups made beside the students' (warm helpers', and cold runs' when warm_runs > 0) by where they came from: reused from a run that ended by itself (hybrid hosts), or made.",
				ConstLabels: prometheus.Labels{"from": from}},
				func() float64 {
					r, m := src.WarmCgroups()
					return float64([]int64{r, m}[i])
				}))
		}
	}
}

// Hooks feeds run events into the metrics.
func (m *Metrics) Hooks() run.Hooks {
	return run.Hooks{
		Started: func(_ *api.Run, latency time.Duration) {
			m.started.Inc()
			m.startLatency.Observe(latency.Seconds())
		},
		Ended: func(r *api.Run, stop time.Duration) {
			m.ended.WithLabelValues(string(r.Reason)).Inc()
			if stop > 0 {
				m.stopLatency.Observe(stop.Seconds())
			}
		},
		Admission: func(outcome string, code api.Code, waited time.Duration) {
			m.admissions.WithLabelValues(outcome).Inc()
			switch outcome {
			case run.Refused:
				m.admitRefused.WithLabelValues(string(code)).Inc()
			case run.AdmittedAfterWait:
				m.queueWait.Observe(waited.Seconds())
			}
		},
	}
}

// Refused counts an error answer.
func (m *Metrics) Refused(code api.Code) { m.refused.WithLabelValues(string(code)).Inc() }

// Handler serves the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
