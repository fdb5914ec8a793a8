package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/idexd/idexd/internal/api"
	"github.com/idexd/idexd/internal/run"
)

func TestScrape(t *testing.T) {
	m := New()
	m.Watch(Sources{
		Active:      func() int { return 3 },
		LockCounts:  func() (int64, int64) { return 10, 7 },
		LocksLost:   func() int64 { return 2 },
		WarmStarts:  func() int64 { return 5 },
		Networks:    func() (int64, int64, int64) { return 8, 3, 1 },
		WarmCgroups: func() (int64, int64) { return 40, 6 },
		Queue:       func() (int, time.Duration) { return 7, 1500 * time.Millisecond },
	})
	h := m.Hooks()
	h.Started(&api.Run{ID: "r1"}, 12*time.Millisecond)
	h.Ended(&api.Run{ID: "r1", Reason: api.ReasonOOMKilled}, 4*time.Millisecond)
	h.Ended(&api.Run{ID: "r2", Reason: api.ReasonExited}, 0)
	m.Refused(api.CodeLocked)
	h.Admission(run.AdmittedAtOnce, "", 0)
	h.Admission(run.Queued, "", 0)
	h.Admission(run.AdmittedAfterWait, "", 2*time.Second)
	h.Admission(run.Refused, api.CodeStudentBusy, 0)
	h.Admission(run.Refused, api.CodeStudentBusy, 0)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, err := io.ReadAll(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"idexd_runs_started_total 1",
		`idexd_runs_ended_total{reason="oom_killed"} 1`,
		`idexd_runs_ended_total{reason="exited"} 1`,
		`idexd_requests_refused_total{code="locked"} 1`,
		"idexd_runs_active 3",
		"idexd_lock_acquired_total 10",
		"idexd_lock_released_total 7",
		"idexd_lock_lost_total 2",
		"idexd_runs_warm_started_total 5",
		`idexd_network_namespaces_total{from="kept"} 8`,
		`idexd_network_namespaces_total{from="spare"} 3`,
		`idexd_network_namespaces_total{from="made"} 1`,
		`idexd_warm_cgroups_total{from="reused"} 40`,
		`idexd_warm_cgroups_total{from="made"} 6`,
		"idexd_run_start_seconds_count 1",
		"idexd_run_stop_seconds_count 1",
		`idexd_admissions_total{outcome="admitted"} 1`,
		`idexd_admissions_total{outcome="queued"} 1`,
		`idexd_admissions_total{outcome="waited"} 1`,
		`idexd_admissions_total{outcome="refused"} 2`,
		`idexd_admissions_refused_total{code="student_busy"} 2`,
		"idexd_queue_wait_seconds_count 1",
		"idexd_queue_length 7",
		"idexd_queue_oldest_wait_seconds 1.5",
		"go_goroutines",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
}
