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
// # Sharded sessions
//
// A session can span several optd servers ("shards", README "Sharding"): each holds an ordinary
// session of the same id over its slices of the model, whole tensors or row ranges of a large one
// (under an element-wise optimizer). A ShardedClient holds a Client per shard:
//
//	sc, err := optd.NewShardedClient([]string{"10.0.0.1:50051", "10.0.0.2:50051"}) // >= 2, any order
//	// or: addrs, err := optd.ResolveShards(ctx, "optd-shards", 50051) // a headless service
//	s, err := sc.CreateShardedSession(ctx, "big", optd.Adam(1e-3), model,
//		&optd.PlacementOptions{SplitMinElements: 1 << 20}) // 0: the server's 4Mi
//	// another process: s, err := sc.AttachShardedSession(ctx, "big")
//	w := s.NewWorker("w0")
//	r, err := w.Step(ctx, grads, &optd.StepOptions{Version: &version}) // whole tensors in and out
//	// r.Version, r.ShardVersions, r.Parameters; s.Pull(ctx, nil); s.Delete(ctx)
//
// CreateShardedSession has a server plan the placement (PlanPlacement), creates shard 0, then the
// others at once, each with its slices and the whole placement; if a shard refuses, the created
// ones are deleted again. AttachShardedSession reads the placement back from every shard and
// checks they agree and hold every part once, so the addresses may come in any order. A
// ShardedWorker is one Worker per shard: Step cuts the gradients along the placement (a
// row-sparse gradient by its rows), sends each shard its part at once (each request carrying the
// placement's fingerprint, which a shard holding another placement refuses with
// FAILED_PRECONDITION, applying nothing) and puts the replies back together; joins, sequence
// numbers, retries and exactly-once are each shard's Worker's. The shards' versions come back in
// ShardVersions: in ASYNC sessions several workers' steps may reach the shards in different
// orders, so they may differ (Version is then the lowest); in a SYNC session they must agree, and
// a step after which they do not is a *ShardVersionsError. A shard's failure is a *ShardError
// naming the shard and address, wrapping that shard's error (errors.Is, Code and status.Code see
// its code). The cmd/worker example steps shards with -addresses.
//
// # Concurrency
//
// A Client, a ShardedClient and a ShardedSession are safe for concurrent use by any number of
// goroutines. A Worker, a ShardedWorker and a StepStream are not: one goroutine drives each.
package optd
