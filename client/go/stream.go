package optd

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc/codes"

	"github.com/optd/optd/client/go/optdv1"
)

// StepStream is one StreamSteps stream: each Step writes one request and reads its reply, in
// order. A step the server refuses comes back as an *Error and the stream goes on; a stream-level
// failure (the connection drops, the context ends, the server ends the call) is returned by that
// Step and by every later one, and Err reports it. Not safe for concurrent use; Close it when done.
type StepStream struct {
	stream optdv1.Optimizer_StreamStepsClient
	ctx    context.Context
	cancel context.CancelFunc
	err    error // the stream-level failure, once there is one
	closed bool
	sec    *security // the client's, to explain refusals
}

// StreamSteps opens a StreamSteps stream. Its lifetime is bounded by ctx only (not by the client's
// per-call timeout).
func (c *Client) StreamSteps(ctx context.Context) (*StepStream, error) {
	sctx, cancel := context.WithCancel(ctx)
	stream, err := c.stub.StreamSteps(sctx, c.callOptions(nil)...)
	if err != nil {
		cancel()
		return nil, c.sec.explain(wrapError(sctx, "StreamSteps", err, nil))
	}
	return &StepStream{stream: stream, ctx: sctx, cancel: cancel, sec: c.sec}, nil
}

// Step sends one step on the stream and waits for its reply; see Client.Step for the options and
// errors (a refused step carries its code, message, CurrentVersion and Rejoin). No retries and no
// joins: StreamLoop joins, reconnects and resends idempotent steps.
func (s *StepStream) Step(sessionID string, grads []Tensor, opts *StepOptions) (*StepResult, error) {
	req, err := opts.request("StreamSteps", sessionID, grads)
	if err != nil {
		return nil, err
	}
	return s.StepRequest(req)
}

// StepRequest sends a prepared request on the stream; see Step.
func (s *StepStream) StepRequest(req *optdv1.StepRequest) (*StepResult, error) {
	if s.err != nil {
		return nil, s.err
	}
	if s.closed {
		return nil, newError("StreamSteps", codes.FailedPrecondition, "the stream is closed")
	}
	if err := s.stream.Send(req); err != nil {
		// io.EOF: the call has ended; its status comes from Recv.
		if errors.Is(err, io.EOF) {
			_, err = s.stream.Recv()
		}
		return nil, s.fail(err)
	}
	resp, err := s.stream.Recv()
	if err != nil {
		return nil, s.fail(err)
	}
	if e := resp.GetError(); e != nil {
		code := codes.Code(e.GetCode())
		return nil, s.sec.explain(&Error{Op: "StreamSteps", code: code, message: e.GetMessage(),
			currentVersion: e.GetCurrentVersion(), rejoin: e.GetRejoin() && code == codes.FailedPrecondition,
			incarnation: e.GetServerIncarnation()})
	}
	if resp.GetReply() == nil {
		return nil, s.fail(newError("StreamSteps", codes.Internal, "reply with neither result nor error"))
	}
	return stepResult("StreamSteps", req, resp.GetReply(), 1)
}

// fail records the stream-level error and ends the call.
func (s *StepStream) fail(err error) error {
	if errors.Is(err, io.EOF) {
		err = newError("StreamSteps", codes.Internal, "the server ended the stream before replying")
	}
	s.err = s.sec.explain(wrapError(s.ctx, "StreamSteps", err, s.stream.Trailer()))
	s.cancel()
	return s.err
}

// Err is the stream-level failure, or nil while the stream is usable.
func (s *StepStream) Err() error { return s.err }

// Close half-closes the stream, waits for the server to end it and returns the call's final
// status (nil for a clean end, or the earlier stream-level failure). Idempotent.
func (s *StepStream) Close() error {
	if s.closed || s.err != nil {
		s.closed = true
		s.cancel()
		return s.err
	}
	s.closed = true
	defer s.cancel()
	if err := s.stream.CloseSend(); err != nil {
		s.err = wrapError(s.ctx, "StreamSteps", err, nil)
		return s.err
	}
	for {
		if _, err := s.stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			s.err = s.sec.explain(wrapError(s.ctx, "StreamSteps", err, s.stream.Trailer()))
			return s.err
		}
	}
}

// LoopState is what a GradientFunc sees: the parameters to compute a gradient at.
type LoopState struct {
	// Step is the index (from 0) of the step being computed; a step recomputed after a stale
	// gradient keeps its index.
	Step int
	// Version is the session version of Params.
	Version int64
	// Params are the session's parameters at Version, as float32 (whatever LoopOptions.ReturnDType).
	Params []Tensor
}

// GradientFunc computes the gradient (one Tensor per session tensor) and, optionally, the loss at
// s.Params. An error stops StreamLoop, which returns it.
type GradientFunc func(ctx context.Context, s *LoopState) (grads []Tensor, loss *float64, err error)

// LoopOptions configures StreamLoop.
type LoopOptions struct {
	// Steps is how many steps to apply (refused and duplicate steps do not count twice).
	Steps int
	// WorkerID names the worker; with it the loop joins the session before its first step (a new
	// incarnation of the worker id: a restarted process may reuse it) and every step carries the
	// incarnation and a sequence number, so steps are idempotent and a step in flight when the
	// stream fails is resent on a new stream (the server answers it from its first outcome if it
	// had been applied). A step refused because the server forgot the worker is resent after
	// joining again; if that step was such a resend, the loop ends with a
	// *StepOutcomeUnknownError. Without WorkerID a stream failure ends the loop. Required for
	// SYNC sessions.
	WorkerID string
	// FirstSequence > 0 is unjoined mode (see Worker): no join, the steps carry no incarnation
	// and number from FirstSequence. 0: join.
	FirstSequence int64
	// Wire encodings of the gradients sent and of the parameters returned.
	GradientDType, ReturnDType optdv1.DType
	// MaxConsecutiveAborts bounds the stale-gradient retries (ABORTED: pull, recompute) in a row;
	// 0 means 100.
	MaxConsecutiveAborts int
	// OnStep, if set, is called after each applied step with its result.
	OnStep func(step int, r *StepResult)
	// Unary sends one Step call per step (a Worker's, retried per the RetryPolicy) instead of
	// using a StreamSteps stream; everything else is the same.
	Unary bool
}

// LoopStats reports what StreamLoop did.
type LoopStats struct {
	Steps      int   // steps applied (and answered)
	Duplicates int   // replies with Duplicate set (steps resent after a reconnect)
	Aborted    int   // stale gradients refused with ABORTED, then recomputed
	Reconnects int   // streams reopened after a failure
	Version    int64 // the session version after the last step
	// The sequence numbers used, first and last (0 without WorkerID), and the incarnation of the
	// last step sent (0: unjoined).
	FirstSequence, LastSequence, Incarnation int64
	// Times the worker joined again because the server had forgotten it.
	Rejoins int
	// Params are the parameters after the last step.
	Params []Tensor
	// Server restarts the loop lived through (the answering server process changed), the last
	// answering process, and the session's newest checkpointed version in the last reply (-1:
	// none).
	ServerRestarts    int
	ServerIncarnation string
	DurableVersion    int64
}

// StreamLoop runs a worker loop over one StreamSteps stream: it pulls the parameters, then, until
// opts.Steps steps have been applied, calls fn for a gradient at the current parameters, sends it
// with the version it was computed at, and continues from the parameters the reply returns. A
// stale gradient (ABORTED, in BOUNDED or SYNC sessions) makes it pull again and recompute; with a
// WorkerID, a failed stream (UNAVAILABLE or any code of the client's RetryPolicy) is reopened
// with backoff and the step resent, at most RetryPolicy.MaxAttempts times per step; a step refused
// with Rejoin is resent after joining again (see LoopOptions.WorkerID). A stream the server
// cancels (CANCELLED while ctx is live, e.g. at its graceful shutdown) is reopened like a failed
// one.
//
// Server restarts: after the server is killed (or shut down) and restarted with the same
// --checkpoint_dir, its sessions are back at their checkpoints' versions and the steps after were
// lost. The loop reconnects (RetryPolicy, WithMaxReconnectBackoff), its gradient, computed at a
// version the session no longer has, is refused as stale (ABORTED), and it pulls the restored
// parameters and goes on; if the restored session does not know the worker's incarnation (it
// joined after the checkpoint), it joins again first. Steps counts applied steps as the client saw
// them, so steps lost with the crash are not applied again (stats.ServerRestarts counts restarts).
//
// Any other error ends the loop and is returned with the stats so far.
func (c *Client) StreamLoop(ctx context.Context, sessionID string, opts LoopOptions, fn GradientFunc) (*LoopStats, error) {
	stats := &LoopStats{DurableVersion: -1}
	maxAborts := opts.MaxConsecutiveAborts
	if maxAborts <= 0 {
		maxAborts = 100
	}
	// wk numbers and joins the keyed steps (with a WorkerID) and tracks the server process.
	wk := c.NewWorker(sessionID, opts.WorkerID)
	keyed := opts.WorkerID != ""
	if keyed && opts.FirstSequence > 0 {
		wk.SetNextSequence(opts.FirstSequence)
	}
	defer func() {
		stats.ServerIncarnation, stats.ServerRestarts = wk.server.get()
	}()
	pull := func() (*LoopState, error) {
		p, err := wk.Pull(ctx, &PullOptions{DType: opts.ReturnDType})
		if err != nil {
			return nil, err
		}
		stats.DurableVersion = p.DurableVersion
		return &LoopState{Step: stats.Steps, Version: p.Version, Params: p.Tensors}, nil
	}
	state, err := pull()
	if err != nil {
		return stats, err
	}
	var stream *StepStream
	defer func() {
		if stream != nil {
			stream.Close()
		}
	}()
	policy := c.opts.retry
	aborts := 0
	for stats.Steps < opts.Steps {
		grads, loss, err := fn(ctx, state)
		if err != nil {
			return stats, err
		}
		version := state.Version
		so := &StepOptions{WorkerID: opts.WorkerID, Loss: loss, Version: &version,
			ReturnDType: opts.ReturnDType, GradientDType: opts.GradientDType}
		op := "StreamSteps"
		if opts.Unary {
			op = "Step"
		}
		var req *optdv1.StepRequest
		if keyed {
			if err := wk.ensureJoined(ctx); err != nil {
				return stats, err
			}
			req, err = wk.nextRequest(op, grads, so)
		} else {
			req, err = so.request(op, sessionID, grads)
		}
		if err != nil {
			return stats, err
		}
		sent := func(r *optdv1.StepRequest) {
			if stats.FirstSequence == 0 {
				stats.FirstSequence = r.GetSequence()
			}
			stats.LastSequence, stats.Incarnation = r.GetSequence(), r.GetWorkerIncarnation()
		}
		if keyed {
			sent(req)
		}
		var result *StepResult
		if opts.Unary {
			if keyed {
				resent := wk.resent
				result, err = wk.send(ctx, req)
				stats.Rejoins += wk.resent - resent
			} else {
				result, err = c.stepRequest(ctx, req)
				wk.observeStep(result, err)
			}
			if err != nil {
				if Code(err) != codes.Aborted {
					return stats, err
				}
				stats.Aborted++
				if aborts++; aborts > maxAborts {
					return stats, err
				}
				result = nil
			} else {
				if keyed { // a resend after a rejoin has another key
					sent(&optdv1.StepRequest{Sequence: result.Sequence,
						WorkerIncarnation: result.WorkerIncarnation})
				}
			}
		}
		resends := 0
		restarted := false // a refusal of this step came from a restarted server
		for attempt := 1; result == nil && !opts.Unary; attempt++ {
			if stream == nil {
				if stream, err = c.StreamSteps(ctx); err != nil {
					stream = nil
				}
			}
			if stream != nil {
				result, err = stream.StepRequest(req)
				wk.observeStep(result, err)
			}
			if err == nil {
				result.ServerRestarted = result.ServerRestarted || restarted
				break
			}
			if stream != nil && stream.Err() == nil { // the server refused this step
				if refusal := rejoinRefusal(err); refusal != nil && keyed {
					restarted = restarted || refusal.restarted
					if req, err = wk.afterRejoin(ctx, req, refusal, attempt, resends); err != nil {
						return stats, err
					}
					stats.Rejoins++
					resends++
					sent(req)
					attempt = 0 // the resend is a new request: its first attempt comes next
					continue
				}
				if Code(err) != codes.Aborted {
					return stats, err
				}
				stats.Aborted++
				if aborts++; aborts > maxAborts {
					return stats, err
				}
				break // pull and recompute below
			}
			if stream != nil {
				stream.Close()
				stream = nil
			}
			// A stream the server cancelled (its graceful shutdown) is reopened like a dropped one.
			if !keyed || attempt >= policy.MaxAttempts || !policy.retriesErr(ctx, err) ||
				ctx.Err() != nil {
				return stats, err
			}
			stats.Reconnects++
			if sleep(ctx, policy.backoff(attempt+1)) != nil {
				return stats, err
			}
		}
		if result == nil { // stale: start again from the session's current parameters
			if state, err = pull(); err != nil {
				return stats, err
			}
			continue
		}
		aborts = 0
		if result.Duplicate {
			stats.Duplicates++
		}
		if opts.OnStep != nil {
			opts.OnStep(stats.Steps, result)
		}
		stats.Steps++
		stats.Version = result.Version
		stats.DurableVersion = result.DurableVersion
		state = &LoopState{Step: stats.Steps, Version: result.ParametersVersion, Params: result.Parameters}
	}
	stats.Params = state.Params
	if stream != nil {
		err := stream.Close()
		stream = nil
		if err != nil {
			return stats, err
		}
	}
	return stats, nil
}
