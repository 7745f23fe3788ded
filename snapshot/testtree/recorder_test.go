package testtree

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// recorder is a testing.TB that records failures instead of failing the test,
// so that a test can assert that Compare fails. Methods it does not override
// (TempDir, Cleanup, Name, ...) go to the real test.
//
// FailNow, Fatal, Fatalf and the Skip family stop the calling goroutine with
// runtime.Goexit, as the testing package does, so the function under test
// must run in a goroutine of its own: use record.
type recorder struct {
	testing.TB

	mu      sync.Mutex
	errs    []string // Error, Errorf, Fatal, Fatalf messages
	logs    []string // Log, Logf and Skip messages
	failed  bool
	stopped bool // FailNow or SkipNow was called
	skipped bool
}

// record runs f with a fresh recorder in its own goroutine and returns the
// recorder once f has returned or stopped. A panic in f fails t.
func record(t *testing.T, f func(tb testing.TB)) *recorder {
	t.Helper()
	r := &recorder{TB: t}
	done := make(chan any, 1)
	go func() {
		// recover returns nil while runtime.Goexit unwinds, so FailNow and
		// SkipNow arrive here as a normal return.
		defer func() { done <- recover() }()
		f(r)
	}()
	if p := <-done; p != nil {
		t.Fatalf("panic under the recorder: %v", p)
	}
	return r
}

func (r *recorder) Helper() {}

func (r *recorder) add(to *[]string, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	*to = append(*to, strings.TrimSuffix(msg, "\n"))
}

func (r *recorder) Log(args ...any)                 { r.add(&r.logs, fmt.Sprintln(args...)) }
func (r *recorder) Logf(format string, args ...any) { r.add(&r.logs, fmt.Sprintf(format, args...)) }

func (r *recorder) Fail() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = true
}

func (r *recorder) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

func (r *recorder) Error(args ...any) {
	r.add(&r.errs, fmt.Sprintln(args...))
	r.Fail()
}

func (r *recorder) Errorf(format string, args ...any) {
	r.add(&r.errs, fmt.Sprintf(format, args...))
	r.Fail()
}

func (r *recorder) FailNow() {
	r.Fail()
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recorder) Fatal(args ...any) {
	r.add(&r.errs, fmt.Sprintln(args...))
	r.FailNow()
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.add(&r.errs, fmt.Sprintf(format, args...))
	r.FailNow()
}

func (r *recorder) SkipNow() {
	r.mu.Lock()
	r.skipped, r.stopped = true, true
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recorder) Skip(args ...any) {
	r.add(&r.logs, fmt.Sprintln(args...))
	r.SkipNow()
}

func (r *recorder) Skipf(format string, args ...any) {
	r.add(&r.logs, fmt.Sprintf(format, args...))
	r.SkipNow()
}

func (r *recorder) Skipped() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.skipped
}

// report returns everything recorded, for failure messages.
func (r *recorder) report() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, e := range r.errs {
		fmt.Fprintf(&b, "\n  error: %s", e)
	}
	for _, l := range r.logs {
		fmt.Fprintf(&b, "\n  log:   %s", l)
	}
	if b.Len() == 0 {
		return " (nothing recorded)"
	}
	return b.String()
}

// TestRecorder checks the fake itself: a test of Compare that fails to fail
// is only as good as the recorder that watches it.
func TestRecorder(t *testing.T) {
	t.Run("errors go on", func(t *testing.T) {
		after := false
		r := record(t, func(tb testing.TB) {
			tb.Helper()
			tb.Errorf("one %d", 1)
			tb.Error("two", 2)
			after = true
		})
		if !after || r.stopped || !r.Failed() || len(r.errs) != 2 || r.errs[0] != "one 1" || r.errs[1] != "two 2" {
			t.Fatalf("after=%v stopped=%v failed=%v errs=%q", after, r.stopped, r.Failed(), r.errs)
		}
	})
	for _, stop := range []struct {
		name string
		f    func(tb testing.TB)
		skip bool
	}{
		{"Fatalf", func(tb testing.TB) { tb.Fatalf("fatal %s", "x") }, false},
		{"Fatal", func(tb testing.TB) { tb.Fatal("fatal x") }, false},
		{"FailNow", func(tb testing.TB) { tb.FailNow() }, false},
		{"Skip", func(tb testing.TB) { tb.Skip("no rsync") }, true},
		{"Skipf", func(tb testing.TB) { tb.Skipf("no %s", "rsync") }, true},
	} {
		t.Run(stop.name+" stops", func(t *testing.T) {
			after, deferred := false, false
			r := record(t, func(tb testing.TB) {
				defer func() { deferred = true }()
				stop.f(tb)
				after = true
			})
			if after || !deferred || !r.stopped {
				t.Fatalf("after=%v deferred=%v stopped=%v: want the function stopped, its defers run", after, deferred, r.stopped)
			}
			if r.Failed() == stop.skip || r.Skipped() != stop.skip {
				t.Fatalf("failed=%v skipped=%v", r.Failed(), r.Skipped())
			}
		})
	}
	t.Run("logs do not fail", func(t *testing.T) {
		r := record(t, func(tb testing.TB) { tb.Logf("note %d", 1); tb.Log("note", 2) })
		if r.Failed() || len(r.logs) != 2 || len(r.errs) != 0 {
			t.Fatalf("failed=%v logs=%q errs=%q", r.Failed(), r.logs, r.errs)
		}
	})
}
