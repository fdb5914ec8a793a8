package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
)

// FuzzOutputEvent: whatever bytes a program writes come out of the JSON
// event unchanged.
func FuzzOutputEvent(f *testing.F) {
	for _, s := range [][]byte{[]byte("hello\n"), {0xff, 0xfe}, []byte("é"), {0xc3}, {}, []byte("\x00\x1b[31m")} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		if len(p) == 0 {
			return
		}
		b, err := json.Marshal(OutputEvent(7, EventStdout, p))
		if err != nil {
			t.Fatal(err)
		}
		var ev Event
		if err := json.Unmarshal(b, &ev); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ev.Bytes(), p) || ev.Seq != 7 || ev.Type != EventStdout {
			t.Fatalf("event %s gave back %q, want %q", b, ev.Bytes(), p)
		}
	})
}

func TestErrorsIsByCode(t *testing.T) {
	err := fmt.Errorf("start run x: %w", &Error{Code: CodeLocked, Message: "held", RunID: "r1"})
	if !errors.Is(err, ErrLocked) || errors.Is(err, ErrNotFound) {
		t.Fatalf("errors.Is by code failed for %v", err)
	}
	e := AsError(err)
	if e.Code != CodeLocked || e.RunID != "r1" || e.Message != "start run x: held" {
		t.Fatalf("AsError kept %+v", e)
	}
	w := fmt.Errorf("ensure student x: %w", Wrap(CodeStoreUnavailable, context.Canceled, "list runs"))
	if !errors.Is(w, context.Canceled) || !errors.Is(w, ErrStoreUnavailable) || AsError(w).Message != "ensure student x: list runs: context canceled" {
		t.Fatalf("Wrap lost its cause or code: %v", w)
	}
	if AsError(errors.New("boom")).Code != CodeInternal {
		t.Fatal("an uncoded error must be internal")
	}
}

func TestLimitsPolicy(t *testing.T) {
	def := Limits{MemoryMB: 256, Pids: 64, CPUPercent: 100, WallSeconds: 30, CPUSeconds: 30, OutputKB: 1024}
	max := Limits{MemoryMB: 1024, Pids: 256, CPUPercent: 200, WallSeconds: 600, CPUSeconds: 600, OutputKB: 16384}
	l, err := Limits{MemoryMB: 64}.Effective(def, max)
	if err != nil || l.MemoryMB != 64 || l.Pids != def.Pids {
		t.Fatalf("lowering: %+v %v", l, err)
	}
	if _, err := (Limits{Pids: max.Pids + 1}).Effective(def, max); !errors.Is(err, ErrLimitTooHigh) {
		t.Fatalf("above max: %v", err)
	}
	if _, err := (Limits{CPUSeconds: -1}).Effective(def, max); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("negative: %v", err)
	}
	if err := def.Fit(max); err != nil {
		t.Fatalf("defaults within max: %v", err)
	}
	if errs := (Limits{MemoryMB: 1}).Unset(); len(errs) != 5 {
		t.Fatalf("unset fields of a partial set: %v", errs)
	}
}
