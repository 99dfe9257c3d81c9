package optd_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	optd "github.com/optd/optd/client/go"
	"github.com/optd/optd/client/go/optdv1"
)

// rememberedWorkers is how many workers a session remembers (the least recently active is
// forgotten first).
const rememberedWorkers = 1024

// crowdOut makes session id forget every worker active before: rememberedWorkers + 1 other workers
// join and step once each (unary, no parameters back) over their own connection. It returns the
// steps applied.
func crowdOut(t *testing.T, ctx context.Context, id, prefix string, grad optd.Tensor) int64 {
	t.Helper()
	c := dial(t)
	start := time.Now()
	for i := 0; i <= rememberedWorkers; i++ {
		wk := c.NewWorker(id, fmt.Sprintf("%s-%d", prefix, i))
		r, err := wk.Step(ctx, []optd.Tensor{grad}, &optd.StepOptions{Return: optdv1.ReturnParameters_RETURN_PARAMETERS_NONE})
		if err != nil || r.Duplicate || r.Sequence != 1 {
			t.Fatalf("crowd worker %d: %+v, %v", i, r, err)
		}
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("%d joins and steps took %v", rememberedWorkers+1, d)
	}
	return rememberedWorkers + 1
}

func sessionVersion(t *testing.T, c *optd.Client, id string) int64 {
	t.Helper()
	s, err := c.GetSession(testContext(t), id)
	if err != nil {
		t.Fatal(err)
	}
	return s.GetVersion()
}

// A restarted process (a new client) with the same worker id joins as a new incarnation: its steps
// are applied, numbered from 1, and the old incarnation's late steps are refused.
func TestRestartedWorkerIsANewIncarnationWhoseStepsAreApplied(t *testing.T) {
	c := dial(t)
	ctx := testContext(t)
	id := createSGD(t, c, 1, 0)
	g := []optd.Tensor{vec("w", 1)}
	first := c.NewWorker(id, "trainer-0")
	if first.Incarnation() != 0 {
		t.Fatalf("Incarnation before any step = %d, want 0", first.Incarnation())
	}
	for k := int64(1); k <= 3; k++ {
		r, err := first.Step(ctx, g, nil)
		if err != nil || r.Version != k || r.Sequence != k || r.Duplicate || r.WorkerIncarnation != first.Incarnation() {
			t.Fatalf("first process, step %d = %+v, %v", k, r, err)
		}
	}
	old := first.Incarnation()
	if old <= 0 {
		t.Fatalf("Incarnation after joining = %d", old)
	}

	restarted := dial(t).NewWorker(id, "trainer-0") // the same id, from a new process
	for k := int64(1); k <= 3; k++ {
		r, err := restarted.Step(ctx, g, nil)
		if err != nil || r.Version != 3+k || r.Sequence != k || r.Duplicate || r.Rejoins != 0 {
			t.Fatalf("restarted process, step %d = %+v, %v (want applied, not a duplicate)", k, r, err)
		}
	}
	if restarted.Incarnation() <= old {
		t.Fatalf("restarted incarnation %d, want > %d", restarted.Incarnation(), old)
	}

	// A late retry of the old incarnation (its step 3), unary or on a stream: refused with Rejoin.
	late := &optd.StepOptions{WorkerID: "trainer-0", Sequence: 3, WorkerIncarnation: old}
	_, err := c.Step(ctx, id, g, late)
	var e *optd.Error
	if !errors.As(err, &e) || !e.Rejoin() || !errors.Is(err, optd.ErrFailedPrecondition) {
		t.Fatalf("late retry of the old incarnation = %v, want FAILED_PRECONDITION with Rejoin", err)
	}
	stream, err := c.StreamSteps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Step(id, g, late)
	if !errors.As(err, &e) || !e.Rejoin() || stream.Err() != nil {
		t.Fatalf("late retry on a stream = %v, want a FAILED_PRECONDITION reply with Rejoin", err)
	}
	if err := stream.Close(); err != nil {
		t.Fatal(err)
	}
	if v := sessionVersion(t, c, id); v != 6 {
		t.Fatalf("version %d, want 6: the late retries were applied", v)
	}

	// Two live processes with one id take it from each other: a new step of either is refused
	// once, joins again and is applied.
	r, err := first.Step(ctx, g, nil)
	if err != nil || r.Version != 7 || r.Rejoins != 1 || r.Sequence != 1 {
		t.Fatalf("old process's new step = %+v, %v", r, err)
	}
}

// The server forgets a worker when more than rememberedWorkers others were active since: the
// worker's next step is refused before anything is applied, so the Worker joins again and resends
// it; a retry after a lost reply cannot be told apart, so it is a *StepOutcomeUnknownError.
func TestForgottenWorkerJoinsAgainOrReportsAnUnknownOutcome(t *testing.T) {
	var armed int32
	var lost int32
	var ctx context.Context
	var id string
	// When armed, the next Step of worker "lossy" is applied, then the session forgets the
	// worker, then the reply is lost.
	loseAndForget := optd.WithDialOptions(grpc.WithUnaryInterceptor(func(cctx context.Context, method string,
		req, reply interface{}, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(cctx, method, req, reply, cc, opts...)
		if r, ok := req.(*optdv1.StepRequest); ok && r.GetWorkerId() == "lossy" && err == nil &&
			atomic.CompareAndSwapInt32(&armed, 1, 0) {
			atomic.AddInt32(&lost, 1)
			crowdOut(t, ctx, id, "crowd-b", vec("w", 0))
			return status.Error(codes.Unavailable, "injected: reply lost")
		}
		return err
	}))
	c := dial(t, loseAndForget, fastRetry)
	ctx = testContext(t)
	id = createSGD(t, c, 1, 0)
	g := []optd.Tensor{vec("w", 1)}

	wk := c.NewWorker(id, "lossy")
	if r, err := wk.Step(ctx, g, nil); err != nil || r.Version != 1 {
		t.Fatalf("first step = %+v, %v", r, err)
	}
	inc := wk.Incarnation()
	version := 1 + crowdOut(t, ctx, id, "crowd-a", vec("w", 0))

	r, err := wk.Step(ctx, g, nil)
	if err != nil || r.Version != version+1 || r.Rejoins != 1 || r.Sequence != 1 || r.Duplicate ||
		r.Attempts != 1 || wk.Incarnation() <= inc || r.WorkerIncarnation != wk.Incarnation() {
		t.Fatalf("step of a forgotten worker = %+v, %v (incarnation %d -> %d); want rejoined and applied",
			r, err, inc, wk.Incarnation())
	}
	version++

	atomic.StoreInt32(&armed, 1)
	seq, refusedInc := wk.NextSequence(), wk.Incarnation()
	_, err = wk.Step(ctx, g, nil)
	var unknown *optd.StepOutcomeUnknownError
	if !errors.As(err, &unknown) || !errors.Is(err, optd.ErrStepOutcomeUnknown) ||
		!errors.Is(err, optd.ErrFailedPrecondition) || optd.Code(err) != codes.FailedPrecondition ||
		status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("retry across a forget = %v (%T), want a *StepOutcomeUnknownError", err, err)
	}
	if atomic.LoadInt32(&lost) != 1 || unknown.Attempts != 2 || unknown.Sequence != seq ||
		unknown.WorkerIncarnation != refusedInc || unknown.WorkerID != "lossy" ||
		unknown.NewIncarnation != wk.Incarnation() || unknown.NewIncarnation <= refusedInc ||
		!unknown.Err.Rejoin() {
		t.Fatalf("unknown = %+v", unknown)
	}
	version += 1 + rememberedWorkers + 1 // the lost reply's step was applied, once
	if v := sessionVersion(t, c, id); v != version {
		t.Fatalf("version %d, want %d", v, version)
	}
	r, err = wk.Step(ctx, g, nil) // the next step works
	if err != nil || r.Version != version+1 || r.Sequence != 1 || r.Duplicate || r.Rejoins != 0 {
		t.Fatalf("step after an unknown outcome = %+v, %v", r, err)
	}
}

// forgetAtRecv makes the n-th reply received on an Optimizer stream look lost after the session
// forgot its worker: the reply is read (the step was applied), every worker is crowded out, and the
// stream fails with UNAVAILABLE.
func forgetAtRecv(t *testing.T, n int32, forget func()) optd.Option {
	var recvs int32
	return optd.WithDialOptions(grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc,
		cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		s, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			return nil, err
		}
		return &forgettingStream{ClientStream: s, recvs: &recvs, failAt: n, forget: forget}, nil
	}))
}

type forgettingStream struct {
	grpc.ClientStream
	recvs  *int32
	failAt int32
	forget func()
}

func (f *forgettingStream) RecvMsg(m interface{}) error {
	err := f.ClientStream.RecvMsg(m)
	if err == nil && atomic.AddInt32(f.recvs, 1) == f.failAt {
		f.forget()
		return status.Error(codes.Unavailable, "injected: connection lost")
	}
	return err
}

func TestStreamLoopJoinsAgainWhenForgotten(t *testing.T) {
	c := dial(t)
	ctx := testContext(t)
	id := createSGD(t, c, 0.5, 0)
	var crowded int64
	var incarnations []int64
	st, err := c.StreamLoop(ctx, id, optd.LoopOptions{Steps: 6, WorkerID: "looper",
		OnStep: func(step int, r *optd.StepResult) { incarnations = append(incarnations, r.WorkerIncarnation) }},
		func(ctx context.Context, s *optd.LoopState) ([]optd.Tensor, *float64, error) {
			if s.Step == 3 { // the server forgets the worker between its steps 3 and 4
				crowded = crowdOut(t, ctx, id, "crowd-l", vec("w", 0))
			}
			return []optd.Tensor{vec("w", 1)}, nil, nil
		})
	if err != nil {
		t.Fatalf("StreamLoop: %v", err)
	}
	if st.Steps != 6 || st.Rejoins != 1 || st.Duplicates != 0 || st.Version != 6+crowded ||
		st.FirstSequence != 1 || st.LastSequence != 3 || st.Incarnation != incarnations[5] {
		t.Fatalf("stats = %+v, want 6 steps, 1 rejoin, sequences 1..3 in the new incarnation", st)
	}
	if incarnations[0] != incarnations[2] || incarnations[3] == incarnations[2] || incarnations[3] != incarnations[5] {
		t.Fatalf("incarnations per step = %v", incarnations)
	}
	version := 6 + crowded

	// A restarted loop with the same worker id: its steps are applied, none a duplicate.
	st, err = dial(t).StreamLoop(ctx, id, optd.LoopOptions{Steps: 3, WorkerID: "looper"}, quadratic([]float32{0}))
	if err != nil || st.Steps != 3 || st.Duplicates != 0 || st.Rejoins != 0 || st.Version != version+3 ||
		st.LastSequence != 3 || st.Incarnation <= incarnations[5] {
		t.Fatalf("restarted StreamLoop = %+v, %v", st, err)
	}
	version += 3

	// The 2nd reply is lost after the server forgot the worker: the resend on a new stream is a
	// retry the server cannot place, so the loop ends with an unknown outcome.
	lc := dial(t, fastRetry, forgetAtRecv(t, 2, func() { crowded = crowdOut(t, ctx, id, "crowd-m", vec("w", 0)) }))
	st, err = lc.StreamLoop(ctx, id, optd.LoopOptions{Steps: 5, WorkerID: "looper"}, quadratic([]float32{0}))
	var unknown *optd.StepOutcomeUnknownError
	if !errors.As(err, &unknown) || unknown.Sequence != 2 || unknown.Attempts != 2 ||
		unknown.NewIncarnation <= unknown.WorkerIncarnation {
		t.Fatalf("StreamLoop across a lost reply and a forget = %+v, %v; want a *StepOutcomeUnknownError", st, err)
	}
	if st.Steps != 1 || st.Reconnects != 1 {
		t.Fatalf("stats = %+v, want 1 step before the unknown outcome, 1 reconnect", st)
	}
	if v := sessionVersion(t, c, id); v != version+2+crowded {
		t.Fatalf("version %d, want %d (the lost reply's step applied once)", v, version+2+crowded)
	}
}
