package optd

import (
	"context"
	"errors"
	"math/rand"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/optd/optd/client/go/optdv1"
)

// StepOptions is what a step sends besides the gradients; nil means the zero value (anonymous,
// no sequence, every parameter returned as float32).
type StepOptions struct {
	// Who sends the gradient: 1-128 characters of [A-Za-z0-9._:-]. Required in SYNC sessions and
	// with a Sequence.
	WorkerID string
	// Idempotency key with WorkerID: 0 means none; otherwise it must increase with each new step
	// of the worker (of its incarnation). A step with a sequence is retried on UNAVAILABLE (see
	// RetryPolicy).
	Sequence int64
	// The worker's incarnation from JoinSession (0: the worker did not join, and its sequences
	// follow the unjoined rules). A Worker fills it in.
	WorkerIncarnation int64
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
	// Which point the returned parameters are: the training point (zero value) or the evaluation
	// point of an optimizer that keeps one (Schedule-Free's x, DoG's average; with all or none).
	ReturnPoint optdv1.ParameterPoint
	// The fingerprint of the placement of a sharded session (Placement.Fingerprint); 0 for a
	// session that is not sharded. A ShardedWorker fills it in; a shard refuses any other value
	// with FAILED_PRECONDITION, applying nothing.
	PlacementFingerprint uint64
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
	// Calls made for this step (1 unless it was retried; a step resent after a rejoin counts
	// from 1 again).
	Attempts int
	// The key the step was sent with: sequence and worker incarnation (0: none).
	Sequence, WorkerIncarnation int64
	// How many times the worker joined again during this step (the server had forgotten it, so
	// the refused step was resent under the new incarnation; nothing had been applied).
	Rejoins int
	// The server process that answered (an id new at each server start) and the session's newest
	// checkpointed version (-1: none, or the server runs without --checkpoint_dir): steps after it
	// are lost if the server is killed.
	ServerIncarnation string
	DurableVersion    int64
	// The reply came from another server process than the previous reply this worker (for
	// Client.Step: this client) saw: the server restarted and restored the session from its
	// checkpoint, so this step applied to the restored parameters.
	ServerRestarted bool
	// The point Parameters are (StepOptions.ReturnPoint).
	Point optdv1.ParameterPoint
	// The optimizer's estimates after the step (Prodigy's and D-Adaptation's "d", DoG's "eta").
	Estimates map[string]float64
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
	// retrying unchanged: pull and recompute. Besides these, a CANCELLED the caller did not cause
	// (its context is live: a server shutting down cancelled the call) is always retried.
	Codes []codes.Code
}

// DefaultRetryPolicy: up to 10 attempts, backoff 100 ms doubling to at most 2 s (about 11 s of
// waiting in all), on UNAVAILABLE: with the reconnect backoff capped at 1 s
// (DefaultMaxReconnectBackoff), a step outlasts a server restart of several seconds.
var DefaultRetryPolicy = RetryPolicy{MaxAttempts: 10, InitialBackoff: 100 * time.Millisecond,
	MaxBackoff: 2 * time.Second, Multiplier: 2}

func (p RetryPolicy) check() error {
	if p.MaxAttempts < 1 || p.InitialBackoff <= 0 || p.MaxBackoff < p.InitialBackoff || p.Multiplier < 1 {
		return newError("Dial", codes.InvalidArgument, "retry policy %+v is out of range: needs "+
			"MaxAttempts >= 1, InitialBackoff > 0, MaxBackoff >= InitialBackoff, Multiplier >= 1", p)
	}
	return nil
}

// retriesErr is retries for a call's error, also true for a CANCELLED that did not come from ctx
// (the server cancelled the call: it is shutting down).
func (p RetryPolicy) retriesErr(ctx context.Context, err error) bool {
	var e *Error
	if errors.As(err, &e) && e.tlsFailure { // fails the same way again
		return false
	}
	c := Code(err)
	return p.retries(c) || (c == codes.Canceled && ctx.Err() == nil)
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
		Version: o.Version, WorkerIncarnation: o.WorkerIncarnation, ReturnPoint: o.ReturnPoint,
		PlacementFingerprint: o.PlacementFingerprint,
	}, nil
}

func stepResult(op string, req *optdv1.StepRequest, r *optdv1.StepResponse, attempts int) (*StepResult, error) {
	params, err := fromProtos(op, r.GetParameters())
	if err != nil {
		return nil, err
	}
	return &StepResult{
		Version: r.GetVersion(), ParametersVersion: r.GetParametersVersion(), Parameters: params,
		GradientNorm: r.GetGradientNorm(), LearningRate: r.GetLearningRate(),
		Duplicate: r.GetDuplicate(), Workers: r.GetWorkers(), MissingWorkers: r.GetMissingWorkers(),
		Staleness: r.GetStaleness(), Attempts: attempts, Sequence: req.GetSequence(),
		WorkerIncarnation: req.GetWorkerIncarnation(), ServerIncarnation: r.GetServerIncarnation(),
		DurableVersion: r.GetDurableVersion(), Point: r.GetPoint(),
		Estimates: r.GetOptimizerEstimates(),
	}, nil
}

// Step applies one gradient per session tensor (by name, any order): all of it or, on error, none.
// It is the raw call: a Worker joins, numbers its steps and joins again when needed. With
// opts.WorkerID and opts.Sequence > 0 the step is idempotent and is retried per the client's
// RetryPolicy; a retry the server had already applied comes back with Duplicate set (and is not
// applied again). Errors: NOT_FOUND, INVALID_ARGUMENT (a missing, unknown or malformed gradient,
// a non-finite value), ABORTED with CurrentVersion (stale gradient in BOUNDED / SYNC),
// FAILED_PRECONDITION (a sequence not above the worker's last one and no longer remembered; with
// Rejoin when the server cannot place the worker and it must join again).
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
	r, _, err := c.stepAttempts(ctx, req)
	return r, err
}

// stepAttempts is stepRequest that also returns the attempts made when the step fails.
func (c *Client) stepAttempts(ctx context.Context, req *optdv1.StepRequest) (*StepResult, int, error) {
	idempotent := req.GetWorkerId() != "" && req.GetSequence() > 0
	policy := c.opts.retry
	for attempt := 1; ; attempt++ {
		cctx, cancel := c.callContext(ctx)
		var trailer metadata.MD
		resp, err := c.stub.Step(cctx, req, c.callOptions(&trailer)...)
		if err == nil {
			cancel()
			r, err := stepResult("Step", req, resp, attempt)
			if r != nil {
				r.ServerRestarted = c.server.observe(r.ServerIncarnation)
			}
			return r, attempt, err
		}
		werr := c.sec.explain(wrapError(cctx, "Step", err, trailer))
		c.server.observeErr(werr)
		cancel()
		if !idempotent || attempt >= policy.MaxAttempts || !policy.retriesErr(ctx, werr) ||
			ctx.Err() != nil {
			return nil, attempt, werr
		}
		if sleep(ctx, policy.backoff(attempt+1)) != nil {
			return nil, attempt, werr
		}
	}
}

// JoinResult is what JoinSession returns.
type JoinResult struct {
	// Send with every keyed step of this incarnation (StepOptions.WorkerIncarnation).
	WorkerIncarnation int64
	// The first sequence number of the incarnation (1).
	NextSequence int64
	// The session's version at the join.
	Version int64
	// The server process that answered (JoinSessionResponse carries no durable version).
	ServerIncarnation string
}

// JoinSession starts a new incarnation of workerID on the session: its steps then carry
// WorkerIncarnation and sequences from NextSequence, and steps of its earlier incarnations (a
// previous process with the same id) are refused. A Worker joins by itself; this is for code that
// builds its own requests. Retried like a step (a retried join only leaves an unused
// incarnation). NOT_FOUND; INVALID_ARGUMENT for a bad worker id.
func (c *Client) JoinSession(ctx context.Context, sessionID, workerID string) (*JoinResult, error) {
	req := &optdv1.JoinSessionRequest{SessionId: sessionID, WorkerId: workerID}
	policy := c.opts.retry
	for attempt := 1; ; attempt++ {
		resp, err := unary(ctx, c, "JoinSession", req, c.stub.JoinSession)
		if err == nil {
			c.server.observe(resp.GetServerIncarnation())
			return &JoinResult{WorkerIncarnation: resp.GetWorkerIncarnation(),
				NextSequence: resp.GetNextSequence(), Version: resp.GetVersion(),
				ServerIncarnation: resp.GetServerIncarnation()}, nil
		}
		if attempt >= policy.MaxAttempts || !policy.retriesErr(ctx, err) || ctx.Err() != nil {
			return nil, err
		}
		if sleep(ctx, policy.backoff(attempt+1)) != nil {
			return nil, err
		}
	}
}

// maxRejoinsPerStep bounds how many times one step is resent after its worker joined again (each
// resend is a first attempt under the new incarnation).
const maxRejoinsPerStep = 3

// Worker steps one session as one worker id, numbering its steps itself so that every step is
// idempotent (retried on UNAVAILABLE, never applied twice). Not safe for concurrent use.
//
// Before its first step a Worker joins the session (JoinSession): each join starts a new
// incarnation of the worker id, whose steps carry the incarnation and sequences 1, 2, 3, ... So a
// restarted process may reuse its worker id: its steps are applied (not mistaken for the old
// process's), and the old process's late retries are refused. When the server can no longer place
// the worker (an *Error with Rejoin: it forgot the worker, since a session remembers at most 1024,
// or another process joined with the id), the Worker joins again and resends the step if the
// refused call was its first attempt (nothing was applied); if it was a retry of an attempt whose
// reply was lost, Step returns a *StepOutcomeUnknownError, and the next step works.
//
// Unjoined mode: SetNextSequence before the first step makes the worker skip the join and send
// that sequence and the following ones without an incarnation (the rules before joins existed: a
// restarted process must number above its previous run). If the server asks it to join, it does.
type Worker struct {
	c           *Client
	sessionID   string
	workerID    string
	joined      bool  // incarnation is from a join
	unjoined    bool  // SetNextSequence before any join: no incarnation is sent
	incarnation int64 // the last join's; 0 before
	next        int64
	server      incarnations // the server processes the worker's replies came from
	durable     int64        // the durable version of the last reply; -1 before
	resent      int          // steps resent after joining again, in all
}

// NewWorker returns a Worker for sessionID with id workerID. It joins the session at its first
// Step (or Join).
func (c *Client) NewWorker(sessionID, workerID string) *Worker {
	return &Worker{c: c, sessionID: sessionID, workerID: workerID, next: 1, durable: -1}
}

// ServerIncarnation is the incarnation of the server process that sent the worker's last reply
// ("" before any).
func (w *Worker) ServerIncarnation() string { inc, _ := w.server.get(); return inc }

// ServerRestarts is how many times the server process answering the worker changed: server
// restarts the worker lived through.
func (w *Worker) ServerRestarts() int { _, n := w.server.get(); return n }

// DurableVersion is the session's newest checkpointed version in the worker's last step reply
// (or Pull; -1 before any, or when none is durable).
func (w *Worker) DurableVersion() int64 { return w.durable }

// Pull is Client.Pull of the worker's session; the worker notes the answering server process.
func (w *Worker) Pull(ctx context.Context, opts *PullOptions) (*PullResult, error) {
	p, err := w.c.Pull(ctx, w.sessionID, opts)
	if err != nil {
		w.server.observeErr(err)
		return nil, err
	}
	w.server.observe(p.ServerIncarnation)
	w.durable = p.DurableVersion
	return p, nil
}

// observeStep notes the server process of a step's outcome (setting ServerRestarted on the result
// or error relative to the worker's previous reply) and the durable version.
func (w *Worker) observeStep(r *StepResult, err error) {
	if err != nil {
		w.server.observeErr(err)
		return
	}
	r.ServerRestarted = w.server.observe(r.ServerIncarnation)
	w.durable = r.DurableVersion
}

// ID is the worker id.
func (w *Worker) ID() string { return w.workerID }

// Incarnation is the worker's incarnation from its last join (0: it has not joined).
func (w *Worker) Incarnation() int64 { return w.incarnation }

// NextSequence is the sequence number the next Step will use (in the current incarnation; a join
// restarts it at 1).
func (w *Worker) NextSequence() int64 { return w.next }

// SetNextSequence sets the sequence number of the next Step. Before the worker's first join it
// puts the worker in unjoined mode (see Worker). After a join it sets the next sequence of the
// current incarnation (it must be above every sequence used in it, unless it is meant as a retry).
func (w *Worker) SetNextSequence(seq int64) {
	if !w.joined {
		w.unjoined = true
	}
	w.next = seq
}

// Join starts a new incarnation of the worker (JoinSession): the previous incarnation's steps are
// refused from now on, and the next step sends sequence 1. Step joins by itself when needed; call
// Join to join early or to start afresh.
func (w *Worker) Join(ctx context.Context) error {
	j, err := w.c.JoinSession(ctx, w.sessionID, w.workerID)
	if err != nil {
		w.server.observeErr(err)
		return err
	}
	w.server.observe(j.ServerIncarnation)
	w.joined, w.unjoined = true, false
	w.incarnation, w.next = j.WorkerIncarnation, j.NextSequence
	return nil
}

func (w *Worker) ensureJoined(ctx context.Context) error {
	if w.joined || w.unjoined || w.workerID == "" {
		return nil
	}
	return w.Join(ctx)
}

// nextRequest is the worker's next keyed request (consuming a sequence number).
func (w *Worker) nextRequest(op string, grads []Tensor, opts *StepOptions) (*optdv1.StepRequest, error) {
	o := StepOptions{}
	if opts != nil {
		o = *opts
	}
	o.WorkerID = w.workerID
	o.Sequence = w.next
	o.WorkerIncarnation = 0
	if w.joined {
		o.WorkerIncarnation = w.incarnation
	}
	w.next++
	return o.request(op, w.sessionID, grads)
}

// afterRejoin handles a step refused with Rejoin after `attempts` calls of req: it joins again
// (unless an earlier refusal of the same incarnation already did) and returns the request to
// resend (a first attempt: nothing was applied), or a *StepOutcomeUnknownError (a retry: an
// earlier attempt may have been applied), or the refusal itself after maxRejoinsPerStep resends.
//
// A refusal from a server process other than the one of the worker's previous reply
// (refusal.ServerRestarted) counts as a first attempt: the restarted server restored the session
// from a checkpoint that does not know this incarnation, so none of its steps are in the session.
func (w *Worker) afterRejoin(ctx context.Context, req *optdv1.StepRequest, refusal *Error, attempts, resends int) (*optdv1.StepRequest, error) {
	if refusal.restarted {
		attempts = 1
	}
	if attempts <= 1 && resends >= maxRejoinsPerStep {
		return nil, refusal
	}
	var joinErr error
	if !w.joined || w.incarnation == req.GetWorkerIncarnation() {
		w.joined, w.unjoined = false, false // if the join fails, the next step joins
		joinErr = w.Join(ctx)
	}
	if attempts <= 1 {
		if joinErr != nil {
			return nil, joinErr
		}
		resend := proto.Clone(req).(*optdv1.StepRequest)
		resend.WorkerIncarnation = w.incarnation
		resend.Sequence = w.next
		w.next++
		return resend, nil
	}
	unknown := &StepOutcomeUnknownError{WorkerID: w.workerID,
		WorkerIncarnation: req.GetWorkerIncarnation(), Sequence: req.GetSequence(),
		Attempts: attempts, Err: refusal, JoinErr: joinErr}
	if joinErr == nil {
		unknown.NewIncarnation = w.incarnation
	}
	return nil, unknown
}

// rejoinRefusal is err as an *Error with Rejoin, or nil.
func rejoinRefusal(err error) *Error {
	var e *Error
	if errors.As(err, &e) && e.code == codes.FailedPrecondition && e.rejoin {
		return e
	}
	return nil
}

// Step is Client.Step with the worker's id, incarnation and next sequence number (opts.WorkerID,
// opts.Sequence and opts.WorkerIncarnation are ignored); the worker joins first if it has not. The
// sequence is consumed whatever the outcome. Refused with Rejoin, the step is resent after joining
// again when that is safe (StepResult.Rejoins counts it); otherwise the error is a
// *StepOutcomeUnknownError (see Worker).
func (w *Worker) Step(ctx context.Context, grads []Tensor, opts *StepOptions) (*StepResult, error) {
	if err := w.ensureJoined(ctx); err != nil {
		return nil, err
	}
	req, err := w.nextRequest("Step", grads, opts)
	if err != nil {
		return nil, err
	}
	return w.send(ctx, req)
}

// send sends the worker's keyed request (with retries) and, refused with Rejoin, joins again and
// resends it when that is safe.
// The outcome of a step resent because a restarted server refused it is marked ServerRestarted.
func (w *Worker) send(ctx context.Context, req *optdv1.StepRequest) (*StepResult, error) {
	restarted := false
	for resends := 0; ; resends++ {
		r, attempts, err := w.c.stepAttempts(ctx, req)
		w.observeStep(r, err)
		if err == nil {
			r.Rejoins = resends
			r.ServerRestarted = r.ServerRestarted || restarted
			return r, nil
		}
		refusal := rejoinRefusal(err)
		if refusal == nil {
			markRestarted(err, restarted)
			return nil, err
		}
		restarted = restarted || refusal.restarted
		if req, err = w.afterRejoin(ctx, req, refusal, attempts, resends); err != nil {
			markRestarted(err, restarted)
			return nil, err
		}
		w.resent++
	}
}

// markRestarted sets ServerRestarted on err (an *Error, possibly wrapped) when restarted.
func markRestarted(err error, restarted bool) {
	var e *Error
	if restarted && errors.As(err, &e) {
		e.restarted = true
	}
}
