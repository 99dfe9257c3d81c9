// Package optd is the Go client of an optd server: the optd.v1.Optimizer gRPC service, which keeps
// named float32 parameters and an optimizer's state per session and applies the gradients workers
// send.
//
//	import optd "github.com/optd/optd/client/go"
//
//	c, err := optd.Dial(ctx, "127.0.0.1:50051", optd.WithTimeout(10*time.Second))
//	if err != nil { ... }
//	defer c.Close()
//	_, err = c.CreateSession(ctx, "demo", optd.SGD(0.5), []optd.Tensor{
//		{Name: "w", Shape: []int64{8}, Values: make([]float32, 8)},
//	})
//	w := c.NewWorker("demo", "w0") // joins at its first step, numbers the steps
//	r, err := w.Step(ctx, grads, nil)
//	// r.Version, r.Parameters[0].Values ...
//
// # Tensors
//
// A Tensor is float32 values in row-major order with a shape; on the wire it travels as
// little-endian F32 bytes, or BF16 / F16 when StepOptions.GradientDType, StepOptions.ReturnDType or
// PullOptions.DType ask for it (the client decodes every reply to float32). Tensor.Rows makes a
// tensor row-sparse. The generated messages live in package optdv1
// (github.com/optd/optd/client/go/optdv1); SessionConfig and UpdateSessionRequest are passed
// through as they are (proto3 optional fields are pointers: use proto.Float64, or the SGD and Adam
// helpers).
//
// # Errors
//
// Every method returns either nil or an *Error (or a *StepOutcomeUnknownError, which wraps one)
// carrying the canonical gRPC code and message of the server's status (or of the client's own
// check, for a malformed Tensor, which is codes.InvalidArgument before any RPC). Test it with
// errors.Is against the sentinels (errors.Is(err, optd.ErrNotFound)), with optd.Code(err), or with
// status.Code(err) from google.golang.org/grpc/status (an *Error has a GRPCStatus method). An
// ABORTED step (a stale gradient in a BOUNDED or SYNC session) also carries the session's current
// version: (*Error).CurrentVersion; a FAILED_PRECONDITION step whose worker must join again has
// (*Error).Rejoin. A call ended by its context (or by the client's per-call timeout) also matches
// context.Canceled or context.DeadlineExceeded with errors.Is.
//
// # Retries and exactly-once steps
//
// A Step with a WorkerID and a Sequence > 0 is idempotent on the server: a retry of an applied
// step is answered from its first outcome with Duplicate set and is not applied twice. Such steps
// are retried automatically, with exponential backoff, when the call fails with UNAVAILABLE (see
// RetryPolicy and WithRetry); steps without a sequence are never retried, since a lost reply would
// apply them twice. A Worker numbers its steps itself, and StreamLoop runs a whole worker loop over
// one StreamSteps stream, reconnecting and re-pulling as needed.
//
// # Workers and joins
//
// A Worker (and StreamLoop with a WorkerID) joins the session before its first step
// (JoinSession): each join starts a new incarnation of the worker id, whose steps carry the
// incarnation and sequences 1, 2, 3, ... A restarted process may therefore reuse its worker id: its
// steps are applied, and the old process's late retries are refused. When the server can no longer
// place a worker (FAILED_PRECONDITION with (*Error).Rejoin: a session remembers at most 1024
// workers, the least recently active forgotten first; or another process joined with the same id),
// the worker joins again and resends the step if the refused call was its first attempt, since
// nothing was applied. If it was a retry of an attempt whose reply was lost, the step may or may
// not have been applied: the error is a *StepOutcomeUnknownError (errors.Is(err,
// ErrStepOutcomeUnknown)), the worker has joined again, and its next step works.
//
// # Server restarts and checkpoints
//
// A server run with --checkpoint_dir checkpoints its sessions (every --checkpoint_interval, on
// Client.Checkpoint and at shutdown) and restores them when it starts again. Every reply says
// which server process answered (StepResult.ServerIncarnation, PullResult, JoinResult; the errors
// of steps: (*Error).ServerIncarnation) and how far the session is durable
// (StepResult.DurableVersion, PullResult.DurableVersion: steps after it are lost if the server is
// killed). A Worker (ServerIncarnation, ServerRestarts, DurableVersion) and StreamLoop
// (LoopStats.ServerRestarts) notice when that process changes: StepResult.ServerRestarted and
// (*Error).ServerRestarted. Dialed clients cap gRPC's reconnect backoff at 1 s
// (WithMaxReconnectBackoff) and DefaultRetryPolicy waits about 11 s in all, so a step in flight
// reaches a server restarted within seconds. Its gradient, computed at a version the restored
// session no longer has, is refused as stale (ABORTED, with CurrentVersion the checkpoint's
// version): StreamLoop (also with LoopOptions.Unary) pulls the restored parameters and goes on;
// a loop of Worker.Step calls does the same when it sends StepOptions.Version. A refusal with
// Rejoin from a restarted server (the checkpoint predates the worker's join) is resent after
// joining again, since nothing of that incarnation is in the restored session. StreamLoop reopens
// a stream the server cancels at its graceful shutdown.
//
//	cp, err := c.Checkpoint(ctx, "demo")                  // cp.Version, cp.Path, cp.Bytes
//	_, err = c.CreateSessionFromCheckpoint(ctx, "demo-slow",
//		optd.CheckpointSource{SessionID: "demo"}, optd.Adam(0.001)) // a fork, another lr
//	p, err := c.Pull(ctx, "demo", &optd.PullOptions{OptimizerState: true}) // p.OptimizerState
//
// # Concurrency
//
// A Client is safe for concurrent use by any number of goroutines. A Worker and a StepStream are
// not: one goroutine drives each.
package optd
