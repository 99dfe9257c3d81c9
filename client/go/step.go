package optd

import (
	"context"
	"math/rand"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/optd/optd/client/go/optdv1"
)

// StepOptions is what a step sends besides the gradients; nil means the zero value (anonymous,
// no sequence, every parameter returned as float32).
type StepOptions struct {
	// Who sends the gradient: 1-128 characters of [A-Za-z0-9._:-]. Required in SYNC sessions and
	// with a Sequence.
	WorkerID string
	// Idempotency key with WorkerID: 0 means none; otherwise it must increase with each new step
	// of the worker. A step with a sequence is retried on UNAVAILABLE (see RetryPolicy).
	Sequence int64
	// The loss observed for this gradient, if any (reported by the server, never used by the math).
	Loss *float64
	// The session version the gradient was computed at; required in SYNC and BOUNDED sessions.
	Version *int64
	// Which parameters the reply carries: all (default), none, or the touched ones.
	Return optdv1.ReturnParameters
	// Wire encoding of the returned parameters (decoded to float32 either way).
	ReturnDType optdv1.DType
	// Wire encoding of the gradients sent. BF16 and F16 halve the bytes and round the gradient.
	GradientDType optdv1.DType
}

// StepResult is the outcome of one step.
type StepResult struct {
	// The session's version after this step.
	Version int64
	// The version of Parameters: Version, or later for a duplicate.
	ParametersVersion int64
	// The parameters after the step, as StepOptions.Return asked.
	Parameters []Tensor
	// L2 norm of the gradient as received, before clipping (SYNC: of the combined gradient).
	GradientNorm float64
	// The learning rate the step used.
	LearningRate float64
	// True if this answers a retry: the step had been applied once, earlier, with this outcome.
	Duplicate bool
	// SYNC: the gradients the step combined, and the expected workers missing when the barrier
	// proceeded on its quorum.
	Workers        int32
	MissingWorkers []string
	// Session version at arrival minus StepOptions.Version (0 when no version was sent).
	Staleness int64
	// Calls made for this step (1 unless it was retried).
	Attempts int
}

// RetryPolicy says how steps with a WorkerID and Sequence > 0 are retried. Attempt k (k >= 2)
// waits min(MaxBackoff, InitialBackoff * Multiplier^(k-2)), with +-20% jitter, after the failure of
// attempt k-1. Only the Codes are retried; the caller's context bounds the whole.
type RetryPolicy struct {
	MaxAttempts    int           // >= 1; 1 disables retries
	InitialBackoff time.Duration // > 0
	MaxBackoff     time.Duration // >= InitialBackoff
	Multiplier     float64       // >= 1
	// Codes retried; empty means UNAVAILABLE only. ABORTED (stale gradient) is never worth
	// retrying unchanged: pull and recompute.
	Codes []codes.Code
}

// DefaultRetryPolicy: up to 5 attempts, backoff 50 ms doubling to at most 2 s, on UNAVAILABLE.
var DefaultRetryPolicy = RetryPolicy{MaxAttempts: 5, InitialBackoff: 50 * time.Millisecond,
	MaxBackoff: 2 * time.Second, Multiplier: 2}

func (p RetryPolicy) check() error {
	if p.MaxAttempts < 1 || p.InitialBackoff <= 0 || p.MaxBackoff < p.InitialBackoff || p.Multiplier < 1 {
		return newError("Dial", codes.InvalidArgument, "retry policy %+v is out of range: needs "+
			"MaxAttempts >= 1, InitialBackoff > 0, MaxBackoff >= InitialBackoff, Multiplier >= 1", p)
	}
	return nil
}

func (p RetryPolicy) retries(c codes.Code) bool {
	if len(p.Codes) == 0 {
		return c == codes.Unavailable
	}
	for _, x := range p.Codes {
		if x == c {
			return true
		}
	}
	return false
}

var (
	jitterMu sync.Mutex
	jitter   = rand.New(rand.NewSource(time.Now().UnixNano()))
)

// backoff is the wait before attempt (attempt >= 2).
func (p RetryPolicy) backoff(attempt int) time.Duration {
	d := float64(p.InitialBackoff)
	for i := 2; i < attempt && d < float64(p.MaxBackoff); i++ {
		d *= p.Multiplier
	}
	if d > float64(p.MaxBackoff) {
		d = float64(p.MaxBackoff)
	}
	jitterMu.Lock()
	f := 0.8 + 0.4*jitter.Float64()
	jitterMu.Unlock()
	return time.Duration(d * f)
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (o *StepOptions) request(op, sessionID string, grads []Tensor) (*optdv1.StepRequest, error) {
	if o == nil {
		o = &StepOptions{}
	}
	tensors, err := toProtos(op, grads, o.GradientDType)
	if err != nil {
		return nil, err
	}
	return &optdv1.StepRequest{
		SessionId: sessionID, WorkerId: o.WorkerID, Gradients: tensors, Loss: o.Loss,
		ReturnParameters: o.Return, ReturnDtype: o.ReturnDType, Sequence: o.Sequence,
		Version: o.Version,
	}, nil
}

func stepResult(op string, r *optdv1.StepResponse, attempts int) (*StepResult, error) {
	params, err := fromProtos(op, r.GetParameters())
	if err != nil {
		return nil, err
	}
	return &StepResult{
		Version: r.GetVersion(), ParametersVersion: r.GetParametersVersion(), Parameters: params,
		GradientNorm: r.GetGradientNorm(), LearningRate: r.GetLearningRate(),
		Duplicate: r.GetDuplicate(), Workers: r.GetWorkers(), MissingWorkers: r.GetMissingWorkers(),
		Staleness: r.GetStaleness(), Attempts: attempts,
	}, nil
}

// Step applies one gradient per session tensor (by name, any order): all of it or, on error, none.
// With opts.WorkerID and opts.Sequence > 0 the step is idempotent and is retried per the client's
// RetryPolicy; a retry the server had already applied comes back with Duplicate set (and is not
// applied again). Errors: NOT_FOUND, INVALID_ARGUMENT (a missing, unknown or malformed gradient,
// a non-finite value), ABORTED with CurrentVersion (stale gradient in BOUNDED / SYNC),
// FAILED_PRECONDITION (a sequence not above the worker's last one and no longer remembered).
func (c *Client) Step(ctx context.Context, sessionID string, grads []Tensor, opts *StepOptions) (*StepResult, error) {
	req, err := opts.request("Step", sessionID, grads)
	if err != nil {
		return nil, err
	}
	return c.stepRequest(ctx, req)
}

// StepRequest sends a prepared request (e.g. one built with the generated types for row-sparse
// gradients in mixed dtypes), with the same retries and error handling as Step.
func (c *Client) StepRequest(ctx context.Context, req *optdv1.StepRequest) (*StepResult, error) {
	return c.stepRequest(ctx, req)
}

func (c *Client) stepRequest(ctx context.Context, req *optdv1.StepRequest) (*StepResult, error) {
	idempotent := req.GetWorkerId() != "" && req.GetSequence() > 0
	policy := c.opts.retry
	for attempt := 1; ; attempt++ {
		cctx, cancel := c.callContext(ctx)
		var trailer metadata.MD
		resp, err := c.stub.Step(cctx, req, c.callOptions(&trailer)...)
		if err == nil {
			cancel()
			return stepResult("Step", resp, attempt)
		}
		werr := wrapError(cctx, "Step", err, trailer)
		cancel()
		if !idempotent || attempt >= policy.MaxAttempts || !policy.retries(Code(werr)) ||
			ctx.Err() != nil {
			return nil, werr
		}
		if sleep(ctx, policy.backoff(attempt+1)) != nil {
			return nil, werr
		}
	}
}

// Worker steps one session as one worker id, numbering its steps itself so that every step is
// idempotent (retried on UNAVAILABLE, never applied twice). Not safe for concurrent use.
type Worker struct {
	c         *Client
	sessionID string
	workerID  string
	next      int64
}

// NewWorker returns a Worker for sessionID with id workerID. Its first sequence number is derived
// from the clock (microseconds since 1970), so a restarted worker process with the same id keeps
// numbering above its previous run; SetNextSequence overrides it.
func (c *Client) NewWorker(sessionID, workerID string) *Worker {
	return &Worker{c: c, sessionID: sessionID, workerID: workerID, next: time.Now().UnixMicro()}
}

// ID is the worker id.
func (w *Worker) ID() string { return w.workerID }

// NextSequence is the sequence number the next Step will use.
func (w *Worker) NextSequence() int64 { return w.next }

// SetNextSequence sets the sequence number of the next Step (it must be above every sequence the
// worker used in this session, unless it is meant as a retry).
func (w *Worker) SetNextSequence(seq int64) { w.next = seq }

// Step is Client.Step with the worker's id and its next sequence number (opts.WorkerID and
// opts.Sequence are ignored). The sequence is consumed whatever the outcome.
func (w *Worker) Step(ctx context.Context, grads []Tensor, opts *StepOptions) (*StepResult, error) {
	o := StepOptions{}
	if opts != nil {
		o = *opts
	}
	o.WorkerID = w.workerID
	o.Sequence = w.next
	w.next++
	return w.c.Step(ctx, w.sessionID, grads, &o)
}
