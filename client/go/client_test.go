package optd_test

import (
	"context"
	"errors"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	optd "github.com/optd/optd/client/go"
	"github.com/optd/optd/client/go/optdv1"
)

func vec(name string, values ...float32) optd.Tensor {
	return optd.Tensor{Name: name, Shape: []int64{int64(len(values))}, Values: values}
}

func equal(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// createSGD creates a session with SGD(lr) and parameters w = init (and b = [0.5] when withB).
func createSGD(t *testing.T, c *optd.Client, lr float64, init ...float32) string {
	t.Helper()
	id := sessionID(t)
	s, err := c.CreateSession(testContext(t), id, optd.SGD(lr), []optd.Tensor{vec("w", init...)})
	if err != nil {
		t.Fatalf("CreateSession: %v", err)
	}
	if s.GetSessionId() != id || s.GetVersion() != 0 {
		t.Fatalf("CreateSession = %v", s)
	}
	return id
}

func TestCreateStepPullGetListDelete(t *testing.T) {
	c := dial(t)
	ctx := testContext(t)
	id := sessionID(t)
	params := []optd.Tensor{
		vec("w", 1, 2, 3, 4),
		{Name: "m", Shape: []int64{2, 2}, Values: []float32{0, 1, 2, 3}},
		{Name: "s", Values: []float32{8}}, // scalar
	}
	s, err := c.CreateSession(ctx, id, optd.SGD(0.5), params)
	if err != nil {
		t.Fatalf("CreateSession: %v", err)
	}
	if s.GetNumParameters() != 9 || len(s.GetTensors()) != 3 || s.GetConfig().GetOptimizer().GetSgd().GetMomentum() != 0 {
		t.Fatalf("CreateSession = %v", s)
	}

	loss := 1.5
	grads := []optd.Tensor{
		{Name: "s", Values: []float32{2}},
		vec("w", 2, 4, -2, 0),
		{Name: "m", Shape: []int64{2, 2}, Values: []float32{1, 1, 1, 1}},
	}
	r, err := c.Step(ctx, id, grads, &optd.StepOptions{WorkerID: "go-test", Loss: &loss})
	if err != nil {
		t.Fatalf("Step: %v", err)
	}
	if r.Version != 1 || r.ParametersVersion != 1 || r.Duplicate || r.LearningRate != 0.5 || r.Attempts != 1 {
		t.Fatalf("Step = %+v", r)
	}
	if want := math.Sqrt(4 + 4 + 16 + 4 + 0 + 4); math.Abs(r.GradientNorm-want) > 1e-6 {
		t.Errorf("GradientNorm = %v, want %v", r.GradientNorm, want)
	}
	w, _ := optd.Find(r.Parameters, "w")
	if !equal(w.Values, []float32{0, 0, 4, 4}) {
		t.Errorf("w after step = %v", w.Values)
	}

	p, err := c.Pull(ctx, id, nil)
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	if p.Version != 1 || len(p.Tensors) != 3 || p.Tensors[0].Name != "w" || p.Tensors[2].Name != "s" {
		t.Fatalf("Pull = %+v", p)
	}
	if !equal(p.Tensors[1].Values, []float32{-0.5, 0.5, 1.5, 2.5}) || !equal(p.Tensors[2].Values, []float32{7}) {
		t.Errorf("Pull values = %v %v", p.Tensors[1].Values, p.Tensors[2].Values)
	}
	// Names and a 16-bit wire encoding (exact for these values).
	p, err = c.Pull(ctx, id, &optd.PullOptions{Names: []string{"m"}, DType: optdv1.DType_DTYPE_BF16})
	if err != nil || len(p.Tensors) != 1 || !equal(p.Tensors[0].Values, []float32{-0.5, 0.5, 1.5, 2.5}) {
		t.Fatalf("Pull(m, BF16) = %+v, %v", p, err)
	}
	// Rows of m, row-sparse.
	p, err = c.Pull(ctx, id, &optd.PullOptions{Names: []string{"m"},
		Rows: []*optdv1.TensorRows{{Name: "m", Indices: []int64{1}}}})
	if err != nil || len(p.Tensors) != 1 || !equal(p.Tensors[0].Values, []float32{1.5, 2.5}) ||
		len(p.Tensors[0].Rows) != 1 || p.Tensors[0].Rows[0] != 1 {
		t.Fatalf("Pull(m rows [1]) = %+v, %v", p, err)
	}

	got, err := c.GetSession(ctx, id)
	if err != nil || got.GetVersion() != 1 || got.GetSessionId() != id {
		t.Fatalf("GetSession = %v, %v", got, err)
	}
	all, err := c.ListSessions(ctx, 1) // one per page: follows the page tokens
	if err != nil {
		t.Fatalf("ListSessions: %v", err)
	}
	found := false
	for i, s := range all {
		found = found || s.GetSessionId() == id
		if i > 0 && all[i-1].GetSessionId() >= s.GetSessionId() {
			t.Errorf("ListSessions not sorted: %q before %q", all[i-1].GetSessionId(), s.GetSessionId())
		}
	}
	if !found {
		t.Errorf("ListSessions has no %q", id)
	}
	if err := c.DeleteSession(ctx, id); err != nil {
		t.Fatalf("DeleteSession: %v", err)
	}
	if _, err := c.GetSession(ctx, id); !errors.Is(err, optd.ErrNotFound) {
		t.Fatalf("GetSession after delete: %v, want NOT_FOUND", err)
	}
}

func TestUpdateSession(t *testing.T) {
	c := dial(t)
	ctx := testContext(t)
	id := createSGD(t, c, 0.5, 1)
	s, err := c.UpdateSession(ctx, &optdv1.UpdateSessionRequest{SessionId: id,
		Optimizer: optd.SGD(0.25).GetOptimizer()})
	if err != nil || s.GetConfig().GetOptimizer().GetSgd().GetLr() != 0.25 {
		t.Fatalf("UpdateSession = %v, %v", s, err)
	}
	r, err := c.Step(ctx, id, []optd.Tensor{vec("w", 2)}, nil)
	if err != nil || r.LearningRate != 0.25 || !equal(r.Parameters[0].Values, []float32{0.5}) {
		t.Fatalf("Step after update = %+v, %v", r, err)
	}
	_, err = c.UpdateSession(ctx, &optdv1.UpdateSessionRequest{SessionId: id,
		Optimizer: optd.Adam(0.1).GetOptimizer()})
	if !errors.Is(err, optd.ErrInvalidArgument) {
		t.Fatalf("UpdateSession to another optimizer kind: %v, want INVALID_ARGUMENT", err)
	}
}

func TestErrorCodes(t *testing.T) {
	c := dial(t)
	ctx := testContext(t)
	id := createSGD(t, c, 0.5, 1, 2)

	// NOT_FOUND, from every call on a missing session.
	missing := "go-no-such-session"
	_, errGet := c.GetSession(ctx, missing)
	_, errStep := c.Step(ctx, missing, []optd.Tensor{vec("w", 1, 1)}, nil)
	_, errPull := c.Pull(ctx, missing, nil)
	errDelete := c.DeleteSession(ctx, missing)
	for name, err := range map[string]error{"GetSession": errGet, "Step": errStep, "Pull": errPull,
		"DeleteSession": errDelete} {
		var e *optd.Error
		if !errors.As(err, &e) || e.Code() != codes.NotFound || e.Op != name ||
			!strings.Contains(e.Message(), missing) {
			t.Errorf("%s(missing) = %v, want an *optd.Error NOT_FOUND naming the session", name, err)
		}
		if !errors.Is(err, optd.ErrNotFound) || errors.Is(err, optd.ErrInvalidArgument) ||
			status.Code(err) != codes.NotFound || optd.Code(err) != codes.NotFound {
			t.Errorf("%s(missing): code checks fail for %v", name, err)
		}
	}
	if want := "optd: GetSession: NOT_FOUND: "; !strings.HasPrefix(errGet.Error(), want) {
		t.Errorf("Error() = %q, want prefix %q", errGet.Error(), want)
	}

	// ALREADY_EXISTS.
	_, err := c.CreateSession(ctx, id, optd.SGD(0.5), []optd.Tensor{vec("w", 1, 2)})
	if !errors.Is(err, optd.ErrAlreadyExists) || optd.Code(err) != codes.AlreadyExists {
		t.Errorf("CreateSession(taken id) = %v, want ALREADY_EXISTS", err)
	}

	// INVALID_ARGUMENT from the server, naming the field; nothing changes.
	_, err = c.CreateSession(ctx, sessionID(t), optd.SGD(-1), []optd.Tensor{vec("w", 1)})
	if !errors.Is(err, optd.ErrInvalidArgument) || !strings.Contains(err.Error(), "lr") {
		t.Errorf("CreateSession(lr -1) = %v, want INVALID_ARGUMENT naming lr", err)
	}
	_, err = c.CreateSession(ctx, "bad id!", optd.SGD(1), []optd.Tensor{vec("w", 1)})
	if !errors.Is(err, optd.ErrInvalidArgument) {
		t.Errorf("CreateSession(bad id) = %v, want INVALID_ARGUMENT", err)
	}
	nan := float32(math.NaN())
	_, err = c.Step(ctx, id, []optd.Tensor{vec("w", 1, nan)}, nil)
	if !errors.Is(err, optd.ErrInvalidArgument) || !strings.Contains(err.Error(), "nan") {
		t.Errorf("Step(NaN) = %v, want INVALID_ARGUMENT naming nan", err)
	}
	_, err = c.Step(ctx, id, []optd.Tensor{vec("v", 1, 1)}, nil)
	if !errors.Is(err, optd.ErrInvalidArgument) {
		t.Errorf("Step(unknown tensor) = %v, want INVALID_ARGUMENT", err)
	}
	_, err = c.Step(ctx, id, []optd.Tensor{vec("w", 1, 1)}, &optd.StepOptions{Sequence: 3})
	if !errors.Is(err, optd.ErrInvalidArgument) {
		t.Errorf("Step(sequence without worker) = %v, want INVALID_ARGUMENT", err)
	}
	if s, err := c.GetSession(ctx, id); err != nil || s.GetVersion() != 0 {
		t.Errorf("version after refused steps = %v, %v; want 0", s.GetVersion(), err)
	}

	// INVALID_ARGUMENT from the client, before any RPC: values that do not match the shape.
	_, err = c.Step(ctx, id, []optd.Tensor{{Name: "w", Shape: []int64{3}, Values: []float32{1, 2}}}, nil)
	var e *optd.Error
	if !errors.As(err, &e) || e.Code() != codes.InvalidArgument || e.Op != "Step" ||
		!strings.Contains(e.Message(), "2 values for shape [3]") {
		t.Errorf("Step(2 values for shape [3]) = %v", err)
	}

	// The caller's context: CANCELLED that is also context.Canceled.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = c.GetSession(cctx, id)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, optd.ErrCanceled) {
		t.Errorf("GetSession(cancelled ctx) = %v, want CANCELLED / context.Canceled", err)
	}

	// Dial bounded by its context.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	dctx, dcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer dcancel()
	if _, err := optd.Dial(dctx, closed, optd.WithBlock()); !errors.Is(err, optd.ErrDeadlineExceeded) ||
		!errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dial(closed port, WithBlock, 200 ms) = %v, want DEADLINE_EXCEEDED", err)
	}

	// Bad Dial arguments.
	if _, err := optd.Dial(ctx, ""); !errors.Is(err, optd.ErrInvalidArgument) {
		t.Errorf("Dial(\"\") = %v", err)
	}
	if _, err := optd.Dial(ctx, serverAddr, optd.WithMaxMessageBytes(0)); !errors.Is(err, optd.ErrInvalidArgument) {
		t.Errorf("Dial(max message bytes 0) = %v", err)
	}
}

func TestAbortedCarriesCurrentVersion(t *testing.T) {
	c := dial(t)
	ctx := testContext(t)
	id := sessionID(t)
	cfg := optd.SGD(0.5)
	cfg.Consistency = &optdv1.Consistency{Mode: optdv1.Consistency_MODE_BOUNDED, MaxStaleness: 0}
	if _, err := c.CreateSession(ctx, id, cfg, []optd.Tensor{vec("w", 1)}); err != nil {
		t.Fatal(err)
	}
	v0 := int64(0)
	if _, err := c.Step(ctx, id, []optd.Tensor{vec("w", 1)}, &optd.StepOptions{Version: &v0}); err != nil {
		t.Fatal(err)
	}
	_, err := c.Step(ctx, id, []optd.Tensor{vec("w", 1)}, &optd.StepOptions{Version: &v0})
	var e *optd.Error
	if !errors.As(err, &e) || !errors.Is(err, optd.ErrAborted) {
		t.Fatalf("stale Step = %v, want ABORTED", err)
	}
	if v, ok := e.CurrentVersion(); !ok || v != 1 {
		t.Errorf("CurrentVersion = %d, %v; want 1", v, ok)
	}
}

func TestHealth(t *testing.T) {
	c := dial(t)
	for _, service := range []string{"", optd.ServiceName} {
		ok, err := c.Health(testContext(t), service)
		if err != nil || !ok {
			t.Errorf("Health(%q) = %v, %v", service, ok, err)
		}
	}
	if _, err := c.Health(testContext(t), "no.such.Service"); !errors.Is(err, optd.ErrNotFound) {
		t.Errorf("Health(unknown) = %v, want NOT_FOUND", err)
	}
}

// loseFirstReplies makes the first n Step replies look lost: the call reaches the server (which
// applies the step) but the client sees UNAVAILABLE.
func loseFirstReplies(n int32) (optd.Option, *int32) {
	var calls int32
	return optd.WithDialOptions(grpc.WithUnaryInterceptor(func(ctx context.Context, method string,
		req, reply interface{}, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if method == "/optd.v1.Optimizer/Step" && atomic.AddInt32(&calls, 1) <= n {
			return status.Error(codes.Unavailable, "injected: reply lost")
		}
		return err
	})), &calls
}

var fastRetry = optd.WithRetry(optd.RetryPolicy{MaxAttempts: 4, InitialBackoff: 5 * time.Millisecond,
	MaxBackoff: 20 * time.Millisecond, Multiplier: 2})

func TestStepRetryIsAppliedOnce(t *testing.T) {
	lose, calls := loseFirstReplies(2)
	c := dial(t, lose, fastRetry)
	ctx := testContext(t)
	id := createSGD(t, c, 0.5, 4)

	// Two replies lost: the third attempt gets the first outcome, marked duplicate.
	r, err := c.Step(ctx, id, []optd.Tensor{vec("w", 2)}, &optd.StepOptions{WorkerID: "w0", Sequence: 1})
	if err != nil {
		t.Fatalf("Step: %v", err)
	}
	if !r.Duplicate || r.Attempts != 3 || r.Version != 1 || !equal(r.Parameters[0].Values, []float32{3}) {
		t.Fatalf("retried Step = %+v, want duplicate, 3 attempts, version 1, w = [3]", r)
	}
	if atomic.LoadInt32(calls) != 3 {
		t.Errorf("%d Step calls, want 3", *calls)
	}
	// Resending the same sequence by hand: still not applied again.
	r, err = c.Step(ctx, id, []optd.Tensor{vec("w", 2)}, &optd.StepOptions{WorkerID: "w0", Sequence: 1})
	if err != nil || !r.Duplicate || r.Version != 1 {
		t.Fatalf("resent Step = %+v, %v", r, err)
	}
	if s, _ := c.GetSession(ctx, id); s.GetVersion() != 1 {
		t.Fatalf("version %d after one step and its retries, want 1", s.GetVersion())
	}
	// A Worker numbers its steps: each new step is applied. (Unjoined mode here; joins:
	// join_test.go.)
	wk := c.NewWorker(id, "w1")
	wk.SetNextSequence(10)
	for i := 0; i < 3; i++ {
		if r, err := wk.Step(ctx, []optd.Tensor{vec("w", 2)}, nil); err != nil || r.Duplicate || r.Version != int64(2+i) {
			t.Fatalf("Worker.Step %d = %+v, %v", i, r, err)
		}
	}
	if wk.NextSequence() != 13 || wk.Incarnation() != 0 {
		t.Errorf("NextSequence = %d, Incarnation = %d; want 13 and 0 (unjoined: SetNextSequence before "+
			"the first step)", wk.NextSequence(), wk.Incarnation())
	}
	// A sequence below the last one and out of the server's replay window: FAILED_PRECONDITION.
	for seq := int64(2); seq <= 20; seq++ {
		if _, err := c.Step(ctx, id, []optd.Tensor{vec("w", 0)}, &optd.StepOptions{WorkerID: "w0", Sequence: seq}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = c.Step(ctx, id, []optd.Tensor{vec("w", 0)}, &optd.StepOptions{WorkerID: "w0", Sequence: 1})
	if !errors.Is(err, optd.ErrFailedPrecondition) {
		t.Errorf("forgotten old sequence: %v, want FAILED_PRECONDITION", err)
	}
}

func TestStepWithoutSequenceIsNotRetried(t *testing.T) {
	lose, calls := loseFirstReplies(1)
	c := dial(t, lose, fastRetry)
	ctx := testContext(t)
	id := createSGD(t, c, 0.5, 4)
	_, err := c.Step(ctx, id, []optd.Tensor{vec("w", 2)}, &optd.StepOptions{WorkerID: "w0"})
	if !errors.Is(err, optd.ErrUnavailable) || atomic.LoadInt32(calls) != 1 {
		t.Fatalf("Step without sequence = %v after %d calls, want UNAVAILABLE after 1", err, *calls)
	}
	if s, _ := c.GetSession(ctx, id); s.GetVersion() != 1 {
		t.Fatalf("version %d, want 1 (applied once, reply lost)", s.GetVersion())
	}
}

func TestUnreachableServerIsUnavailable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0") // a port nobody serves once closed
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c, err := optd.Dial(testContext(t), addr, fastRetry, optd.WithTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	r, err := c.Step(testContext(t), "s", []optd.Tensor{vec("w", 1)}, &optd.StepOptions{WorkerID: "w", Sequence: 1})
	if !errors.Is(err, optd.ErrUnavailable) {
		t.Fatalf("Step to a closed port = %+v, %v; want UNAVAILABLE", r, err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("4 attempts took %v", time.Since(start))
	}
}

func TestStepStream(t *testing.T) {
	c := dial(t)
	ctx := testContext(t)
	id := createSGD(t, c, 0.5, 0, 0)
	s, err := c.StreamSteps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Step(id, []optd.Tensor{vec("w", 2, -2)}, nil)
	if err != nil || r.Version != 1 || !equal(r.Parameters[0].Values, []float32{-1, 1}) {
		t.Fatalf("stream step 1 = %+v, %v", r, err)
	}
	// A refused step does not end the stream.
	_, err = s.Step(id, []optd.Tensor{vec("nope", 2, -2)}, nil)
	if !errors.Is(err, optd.ErrInvalidArgument) || s.Err() != nil {
		t.Fatalf("refused stream step = %v (stream err %v)", err, s.Err())
	}
	_, err = s.Step("go-missing", []optd.Tensor{vec("w", 2, -2)}, nil)
	if !errors.Is(err, optd.ErrNotFound) || s.Err() != nil {
		t.Fatalf("stream step on missing session = %v (stream err %v)", err, s.Err())
	}
	r, err = s.Step(id, []optd.Tensor{vec("w", 2, -2)}, &optd.StepOptions{Return: optdv1.ReturnParameters_RETURN_PARAMETERS_NONE})
	if err != nil || r.Version != 2 || len(r.Parameters) != 0 {
		t.Fatalf("stream step 2 = %+v, %v", r, err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// quadratic is the GradientFunc of 0.5 * ||w - target||^2 over the tensor "w".
func quadratic(target []float32) optd.GradientFunc {
	return func(_ context.Context, s *optd.LoopState) ([]optd.Tensor, *float64, error) {
		w := s.Params[0].Values
		g := make([]float32, len(w))
		loss := 0.0
		for i := range w {
			g[i] = w[i] - target[i]
			loss += 0.5 * float64(g[i]) * float64(g[i])
		}
		return []optd.Tensor{vec("w", g...)}, &loss, nil
	}
}

func TestStreamLoop(t *testing.T) {
	c := dial(t)
	ctx := testContext(t)
	id := createSGD(t, c, 0.5, 0, 0, 0)
	target := []float32{1, -2, 3}
	var seen []int64
	st, err := c.StreamLoop(ctx, id, optd.LoopOptions{Steps: 40, WorkerID: "loop",
		OnStep: func(step int, r *optd.StepResult) { seen = append(seen, r.Version) }}, quadratic(target))
	if err != nil {
		t.Fatalf("StreamLoop: %v", err)
	}
	// The loop joined: sequences 1..40 of its incarnation.
	if st.Steps != 40 || st.Version != 40 || st.FirstSequence != 1 || st.LastSequence != 40 ||
		st.Incarnation <= 0 || st.Rejoins != 0 ||
		st.Duplicates != 0 || st.Aborted != 0 || st.Reconnects != 0 || len(seen) != 40 || seen[39] != 40 {
		t.Fatalf("stats = %+v", st)
	}
	if !equal(st.Params[0].Values, target) { // lr 0.5 halves the error each step: exact at 40
		t.Errorf("params = %v, want %v", st.Params[0].Values, target)
	}
}

// failOneRecv makes the n-th reply received on any Optimizer stream look lost: the reply is read
// (so the server did apply the step) and the stream fails with UNAVAILABLE.
func failOneRecv(n int32) optd.Option {
	var recvs int32
	return optd.WithDialOptions(grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc,
		cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		s, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			return nil, err
		}
		return &flakyStream{ClientStream: s, recvs: &recvs, failAt: n}, nil
	}))
}

type flakyStream struct {
	grpc.ClientStream
	recvs  *int32
	failAt int32
}

func (f *flakyStream) RecvMsg(m interface{}) error {
	err := f.ClientStream.RecvMsg(m)
	if err == nil && atomic.AddInt32(f.recvs, 1) == f.failAt {
		return status.Error(codes.Unavailable, "injected: connection lost")
	}
	return err
}

func TestStreamLoopReconnectsAndIsAppliedOnce(t *testing.T) {
	c := dial(t, failOneRecv(5), fastRetry)
	ctx := testContext(t)
	id := createSGD(t, c, 0.5, 0)
	st, err := c.StreamLoop(ctx, id, optd.LoopOptions{Steps: 10, WorkerID: "flaky"},
		quadratic([]float32{8}))
	if err != nil {
		t.Fatalf("StreamLoop: %v", err)
	}
	if st.Steps != 10 || st.Reconnects != 1 || st.Duplicates != 1 || st.Version != 10 || st.LastSequence != 10 {
		t.Fatalf("stats = %+v, want 10 steps, 1 reconnect, 1 duplicate, version 10", st)
	}
	if s, _ := c.GetSession(ctx, id); s.GetVersion() != 10 {
		t.Fatalf("session version %d, want 10", s.GetVersion())
	}
	// Without a worker id the failure ends the loop (a resend could apply the step twice).
	c2 := dial(t, failOneRecv(2), fastRetry)
	_, err = c2.StreamLoop(ctx, id, optd.LoopOptions{Steps: 5}, quadratic([]float32{8}))
	if !errors.Is(err, optd.ErrUnavailable) {
		t.Fatalf("anonymous StreamLoop with a lost reply = %v, want UNAVAILABLE", err)
	}
}

// Two workers in a SYNC session: every step combines both gradients; both loops see every version.
func TestStreamLoopSync(t *testing.T) {
	c := dial(t)
	ctx := testContext(t)
	id := sessionID(t)
	cfg := optd.SGD(0.5)
	cfg.Consistency = &optdv1.Consistency{Mode: optdv1.Consistency_MODE_SYNC, WorkerIds: []string{"a", "b"},
		Reduce: optdv1.Consistency_REDUCE_SUM, BarrierTimeoutSeconds: 20}
	if _, err := c.CreateSession(ctx, id, cfg, []optd.Tensor{vec("w", 0, 0)}); err != nil {
		t.Fatal(err)
	}
	const steps = 15
	var wg sync.WaitGroup
	stats := make([]*optd.LoopStats, 2)
	errs := make([]error, 2)
	for i, worker := range []string{"a", "b"} {
		wg.Add(1)
		go func(i int, worker string) {
			defer wg.Done()
			// Constant gradients [1, 2] from each: a SUM step moves w by -0.5 * [2, 4].
			stats[i], errs[i] = c.StreamLoop(ctx, id, optd.LoopOptions{Steps: steps, WorkerID: worker},
				func(context.Context, *optd.LoopState) ([]optd.Tensor, *float64, error) {
					return []optd.Tensor{vec("w", 1, 2)}, nil, nil
				})
		}(i, worker)
	}
	wg.Wait()
	for i := range errs {
		if errs[i] != nil {
			t.Fatalf("worker %d: %v", i, errs[i])
		}
		if stats[i].Steps != steps || stats[i].Version != steps {
			t.Errorf("worker %d stats = %+v", i, stats[i])
		}
	}
	p, err := c.Pull(ctx, id, nil)
	if err != nil || p.Version != steps || !equal(p.Tensors[0].Values, []float32{-steps, -2 * steps}) {
		t.Fatalf("Pull = %+v, %v; want version %d, w = [-%d, -%d]", p, err, steps, steps, 2*steps)
	}
}

// Two workers in a BOUNDED(0) session: stale gradients are refused, re-pulled and recomputed, and
// every step is applied exactly once.
func TestStreamLoopBoundedRecomputesStale(t *testing.T) {
	c := dial(t)
	ctx := testContext(t)
	id := sessionID(t)
	cfg := optd.SGD(0.25)
	cfg.Consistency = &optdv1.Consistency{Mode: optdv1.Consistency_MODE_BOUNDED, MaxStaleness: 0}
	if _, err := c.CreateSession(ctx, id, cfg, []optd.Tensor{vec("w", 0)}); err != nil {
		t.Fatal(err)
	}
	const steps = 30
	var wg sync.WaitGroup
	var aborted int64
	errs := make([]error, 2)
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			st, err := c.StreamLoop(ctx, id, optd.LoopOptions{Steps: steps, WorkerID: "b" + string(rune('0'+i)),
				MaxConsecutiveAborts: 10000}, quadratic([]float32{4}))
			errs[i] = err
			if st != nil {
				atomic.AddInt64(&aborted, int64(st.Aborted))
			}
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("worker %d: %v", i, err)
		}
	}
	s, err := c.GetSession(ctx, id)
	if err != nil || s.GetVersion() != 2*steps {
		t.Fatalf("version = %d, %v; want %d", s.GetVersion(), err, 2*steps)
	}
	t.Logf("%d stale gradients recomputed", aborted)
}

func TestGradientDTypes(t *testing.T) {
	c := dial(t)
	ctx := testContext(t)
	id := createSGD(t, c, 1, 0, 0, 0)
	for _, dt := range []optdv1.DType{optdv1.DType_DTYPE_BF16, optdv1.DType_DTYPE_F16} {
		r, err := c.Step(ctx, id, []optd.Tensor{vec("w", -1, 0.5, -0.25)},
			&optd.StepOptions{GradientDType: dt, ReturnDType: dt})
		if err != nil {
			t.Fatalf("%v: %v", dt, err)
		}
		if dt == optdv1.DType_DTYPE_F16 && !equal(r.Parameters[0].Values, []float32{2, -1, 0.5}) {
			t.Errorf("after %v steps: %v", dt, r.Parameters[0].Values)
		}
	}
}

func TestRawStubAndProtoHelpers(t *testing.T) {
	c := dial(t)
	id := createSGD(t, c, 0.5, 1)
	s, err := c.Stub().GetSession(testContext(t), &optdv1.GetSessionRequest{SessionId: id})
	if err != nil || !proto.Equal(s.GetConfig().GetOptimizer(), &optdv1.OptimizerConfig{Kind: &optdv1.OptimizerConfig_Sgd{
		Sgd: &optdv1.Sgd{Lr: proto.Float64(0.5), Momentum: proto.Float64(0), Dampening: proto.Float64(0),
			WeightDecay: proto.Float64(0), Nesterov: proto.Bool(false), Maximize: proto.Bool(false)}}}) {
		t.Fatalf("raw GetSession = %v, %v", s, err)
	}
}
