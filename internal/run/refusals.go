package run

import (
	"cmp"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/idexd/idexd/internal/api"
)

// burstLog tells the operator who was refused a start and why without a
// line per request: when a class presses Run on a full host, hundreds of
// refusals of one kind come within seconds. The first refusal of a code
// is logged at once, with the student and the reason; those that follow
// within the window are counted per student and logged as one line when
// the window ends. The next refusal after that starts a new burst.
type burstLog struct {
	log    *slog.Logger
	window time.Duration

	mu     sync.Mutex
	bursts map[api.Code]*burst
}

type burst struct {
	first    time.Time
	more     int
	students map[string]int
	others   int // students past maxNames, counted together
	timer    *time.Timer
}

// maxNames bounds the students one burst names (and the memory it holds).
const maxNames = 20

func newBurstLog(log *slog.Logger, window time.Duration) *burstLog {
	return &burstLog{log: log, window: window, bursts: map[api.Code]*burst{}}
}

func (b *burstLog) refused(student string, err *api.Error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if bu := b.bursts[err.Code]; bu != nil {
		bu.more++
		if _, ok := bu.students[student]; ok || len(bu.students) < maxNames {
			bu.students[student]++
		} else {
			bu.others++
		}
		return
	}
	b.log.Warn("run start refused", "code", err.Code, "student", student, "reason", err.Message)
	code := err.Code
	b.bursts[code] = &burst{first: time.Now(), students: map[string]int{},
		timer: time.AfterFunc(b.window, func() { b.flush(code) })}
}

// flush ends the burst of code, logging what it held beyond its first
// refusal.
func (b *burstLog) flush(code api.Code) {
	b.mu.Lock()
	bu := b.bursts[code]
	delete(b.bursts, code)
	b.mu.Unlock()
	if bu == nil || bu.more == 0 {
		return
	}
	bu.timer.Stop()
	names := slices.SortedFunc(maps.Keys(bu.students), func(x, y string) int {
		return cmp.Or(cmp.Compare(bu.students[y], bu.students[x]), cmp.Compare(x, y))
	})
	var sb strings.Builder
	for i, n := range names {
		if i > 0 {
			sb.WriteByte(' ')
		}
		fmt.Fprintf(&sb, "%s:%d", n, bu.students[n])
	}
	if bu.others > 0 {
		fmt.Fprintf(&sb, " (+%d refusals of other students)", bu.others)
	}
	b.log.Warn("run starts refused in a burst", "code", code, "more", bu.more,
		"over", time.Since(bu.first).Round(time.Millisecond), "students", sb.String())
}

// flushAll logs every open burst now (at shutdown).
func (b *burstLog) flushAll() {
	b.mu.Lock()
	codes := slices.Collect(maps.Keys(b.bursts))
	b.mu.Unlock()
	for _, c := range codes {
		b.flush(c)
	}
}
