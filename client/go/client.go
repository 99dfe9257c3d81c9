package optd

import (
	"context"
	"errors"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/optd/optd/client/go/optdv1"
)

// ServiceName is the gRPC service optd serves, for Health.
const ServiceName = "optd.v1.Optimizer"

// DefaultMaxMessageBytes is the largest message sent or received by default, the server's limit.
const DefaultMaxMessageBytes = 256 << 20

// DefaultTimeout is the default deadline of each unary call.
const DefaultTimeout = 30 * time.Second

// DefaultMaxReconnectBackoff caps gRPC's wait between two attempts to reconnect to the server
// (gRPC's own default grows to 120 s), so a restarted server is reached about a second after it
// is back.
const DefaultMaxReconnectBackoff = time.Second

// Option configures Dial (and NewClient, which ignores the options that only concern dialing).
type Option func(*options)

type options struct {
	timeout         time.Duration
	maxMessageBytes int
	waitForReady    bool
	block           bool
	retry           RetryPolicy
	reconnect       time.Duration
	dialOptions     []grpc.DialOption
	// WithTLS, WithTLSServerName, WithToken (security.go)
	tls                                   bool
	tlsCA, tlsCert, tlsKey, tlsServerName string
	token                                 string
	tokenSet                              bool
}

func defaultOptions() options {
	return options{timeout: DefaultTimeout, maxMessageBytes: DefaultMaxMessageBytes,
		retry: DefaultRetryPolicy, reconnect: DefaultMaxReconnectBackoff}
}

// WithTimeout sets the deadline of each unary call (each attempt of a retried Step), counted from
// when the call starts; the context's own deadline still applies when it is earlier. 0 means no
// deadline besides the context's. Default DefaultTimeout. Streams are bounded by their context
// only.
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithMaxMessageBytes sets the largest message sent or received, in [1, 2^31-1] (Dial only).
// Default DefaultMaxMessageBytes, which matches the server's.
func WithMaxMessageBytes(n int) Option { return func(o *options) { o.maxMessageBytes = n } }

// WithWaitForReady makes calls wait (until their deadline) for the server to become reachable
// instead of failing at once with UNAVAILABLE.
func WithWaitForReady(wait bool) Option { return func(o *options) { o.waitForReady = wait } }

// WithBlock makes Dial wait, bounded by its context, until the connection is up (Dial only).
// Without it connecting is lazy and an unreachable server shows up as UNAVAILABLE on the first call.
func WithBlock() Option { return func(o *options) { o.block = true } }

// WithRetry sets how idempotent steps (WorkerID and Sequence > 0) are retried. Default
// DefaultRetryPolicy; RetryPolicy{MaxAttempts: 1} turns retries off.
func WithRetry(p RetryPolicy) Option { return func(o *options) { o.retry = p } }

// WithMaxReconnectBackoff caps the wait between gRPC's attempts to reconnect after the connection
// drops (Dial only; in [100ms, 120s]). Default DefaultMaxReconnectBackoff. With RetryPolicy it
// decides how soon a worker reaches a restarted server.
func WithMaxReconnectBackoff(d time.Duration) Option { return func(o *options) { o.reconnect = d } }

// WithDialOptions adds gRPC dial options (after the client's own: insecure transport and message
// limits), e.g. TLS transport credentials (Dial only).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOptions = append(o.dialOptions, opts...) }
}

// Client is a connection to one optd server. It is safe for concurrent use.
type Client struct {
	conn   *grpc.ClientConn // nil when made by NewClient
	stub   optdv1.OptimizerClient
	health healthpb.HealthClient
	opts   options
	server incarnations // the server processes this client's replies came from
	sec    *security    // token, and the context of refusals' messages
}

// incarnations remembers the server incarnation of the last reply seen, to tell when the server
// restarted. Safe for concurrent use.
type incarnations struct {
	mu       sync.Mutex
	last     string
	restarts int
}

// observe records the incarnation of a reply ("" is ignored) and reports whether it differs from
// the previous one seen (the server restarted in between).
func (t *incarnations) observe(inc string) bool {
	if inc == "" {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	restarted := t.last != "" && t.last != inc
	if restarted {
		t.restarts++
	}
	t.last = inc
	return restarted
}

func (t *incarnations) get() (string, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last, t.restarts
}

// observeErr records the incarnation of a server error and sets its ServerRestarted.
func (t *incarnations) observeErr(err error) {
	var e *Error
	if errors.As(err, &e) && e.incarnation != "" {
		e.restarted = t.observe(e.incarnation)
	}
}

// Dial makes a client for the server at addr ("host:port", or any gRPC target such as
// "dns:///host:port" or "unix:/path"), over an insecure channel unless WithTLS is given. The
// token (WithToken, else $OPTD_TOKEN) goes with every call. ctx bounds the dial only with
// WithBlock. InvalidArgument for an empty address, an option out of range, or a TLS file that
// cannot be read (or a key that does not go with its certificate). Close the client when done.
func Dial(ctx context.Context, addr string, opts ...Option) (*Client, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if addr == "" {
		return nil, newError("Dial", codes.InvalidArgument, "address is empty")
	}
	if err := o.check(); err != nil {
		return nil, err
	}
	sec, creds, err := newSecurity(addr, &o)
	if err != nil {
		return nil, err
	}
	transport := grpc.WithInsecure() // grpc-go 1.33 has no credentials/insecure package
	if creds != nil {
		transport = grpc.WithTransportCredentials(creds)
	}
	dialOpts := []grpc.DialOption{
		transport,
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(o.maxMessageBytes),
			grpc.MaxCallSendMsgSize(o.maxMessageBytes)),
	}
	bo := backoff.DefaultConfig
	bo.MaxDelay = o.reconnect
	if bo.BaseDelay > bo.MaxDelay {
		bo.BaseDelay = bo.MaxDelay
	}
	dialOpts = append(dialOpts, grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo,
		MinConnectTimeout: 20 * time.Second}))
	if o.block {
		dialOpts = append(dialOpts, grpc.WithBlock())
	}
	dialOpts = append(dialOpts, o.dialOptions...)
	conn, err := grpc.DialContext(ctx, addr, dialOpts...)
	if err != nil && ctx.Err() == nil {
		return nil, sec.explain(wrapError(ctx, "Dial", err, nil))
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, wrapError(ctx, "Dial", ctx.Err(), nil)
		}
		return nil, wrapError(ctx, "Dial", err, nil)
	}
	c := newClient(conn, o, sec)
	c.conn = conn
	return c, nil
}

// NewClient makes a client over an existing connection (which the caller keeps and closes). The
// options that concern dialing (WithTLS included) are ignored; the token (WithToken, else
// $OPTD_TOKEN; none if unusable) is sent.
func NewClient(conn grpc.ClientConnInterface, opts ...Option) *Client {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	o.tls = false
	o.tlsServerName = ""
	sec, _, err := newSecurity("the server", &o)
	if err != nil {
		sec = &security{address: "the server"}
	}
	sec.custom = true
	return newClient(conn, o, sec)
}

func newClient(conn grpc.ClientConnInterface, o options, sec *security) *Client {
	return &Client{stub: optdv1.NewOptimizerClient(conn), health: healthpb.NewHealthClient(conn),
		opts: o, sec: sec}
}

func (o *options) check() error {
	if o.maxMessageBytes < 1 || int64(o.maxMessageBytes) > 1<<31-1 {
		return newError("Dial", codes.InvalidArgument,
			"max message bytes = %d is out of range: must be in [1, 2147483647]", o.maxMessageBytes)
	}
	if o.timeout < 0 {
		return newError("Dial", codes.InvalidArgument, "timeout = %v is out of range: must be >= 0",
			o.timeout)
	}
	if o.reconnect < 100*time.Millisecond || o.reconnect > 120*time.Second {
		return newError("Dial", codes.InvalidArgument,
			"max reconnect backoff = %v is out of range: must be in [100ms, 120s]", o.reconnect)
	}
	return o.retry.check()
}

// Close closes the connection made by Dial (a no-op for NewClient).
func (c *Client) Close() error {
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// Conn is the underlying connection (nil for a client made by NewClient).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Stub is the generated optd.v1.Optimizer client, for requests this package does not wrap. Its
// errors are plain gRPC status errors, without the client's timeout or retries.
func (c *Client) Stub() optdv1.OptimizerClient { return c.stub }

// callContext applies the per-call timeout.
func (c *Client) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.opts.timeout > 0 {
		return context.WithTimeout(ctx, c.opts.timeout)
	}
	return context.WithCancel(ctx)
}

func (c *Client) callOptions(trailer *metadata.MD) []grpc.CallOption {
	opts := append([]grpc.CallOption{grpc.WaitForReady(c.opts.waitForReady)},
		c.sec.callOption()...)
	if trailer != nil {
		opts = append(opts, grpc.Trailer(trailer))
	}
	return opts
}

// unary runs one unary RPC with the client's timeout and wraps its error.
func unary[Req, Resp any](ctx context.Context, c *Client, op string, req Req,
	call func(context.Context, Req, ...grpc.CallOption) (Resp, error)) (Resp, error) {
	cctx, cancel := c.callContext(ctx)
	defer cancel()
	var trailer metadata.MD
	resp, err := call(cctx, req, c.callOptions(&trailer)...)
	if err != nil {
		var zero Resp
		werr := c.sec.explain(wrapError(cctx, op, err, trailer))
		c.server.observeErr(werr)
		return zero, werr
	}
	return resp, nil
}

// ServerIncarnation is the incarnation of the server process that sent the last reply this client
// saw ("" before any), and ServerRestarts how many times it changed: how many server restarts
// this client lived through.
func (c *Client) ServerIncarnation() (incarnation string, restarts int) { return c.server.get() }

// CreateSession creates a session with the given id (empty: the server generates one), config and
// initial parameters (sent as float32) and returns it with every default filled in.
// ALREADY_EXISTS if the id is taken; INVALID_ARGUMENT for a bad id, tensor or hyperparameter.
func (c *Client) CreateSession(ctx context.Context, sessionID string, config *optdv1.SessionConfig,
	params []Tensor) (*optdv1.Session, error) {
	tensors, err := toProtos("CreateSession", params, optdv1.DType_DTYPE_F32)
	if err != nil {
		return nil, err
	}
	req := &optdv1.CreateSessionRequest{SessionId: sessionID, Config: config, Tensors: tensors}
	return unary(ctx, c, "CreateSession", req, c.stub.CreateSession)
}

// GetSession returns the session's description (config, tensors, version, ...). NOT_FOUND if
// there is no such session.
func (c *Client) GetSession(ctx context.Context, sessionID string) (*optdv1.Session, error) {
	return unary(ctx, c, "GetSession", &optdv1.GetSessionRequest{SessionId: sessionID},
		c.stub.GetSession)
}

// ListSessions returns every session, sorted by id, following page tokens to the last page.
// pageSize is the number asked for per call: 0 takes the server's default (100); at most 1000.
func (c *Client) ListSessions(ctx context.Context, pageSize int32) ([]*optdv1.Session, error) {
	var all []*optdv1.Session
	req := &optdv1.ListSessionsRequest{PageSize: pageSize}
	for {
		resp, err := unary(ctx, c, "ListSessions", req, c.stub.ListSessions)
		if err != nil {
			return nil, err
		}
		all = append(all, resp.GetSessions()...)
		if resp.GetNextPageToken() == "" {
			return all, nil
		}
		req = &optdv1.ListSessionsRequest{PageSize: pageSize, PageToken: resp.GetNextPageToken()}
	}
}

// UpdateSession changes hyperparameters, the schedule or the clipping of req.SessionId for the
// next step, keeping the optimizer state, and returns the session. NOT_FOUND; INVALID_ARGUMENT
// (another optimizer kind, a value out of range).
func (c *Client) UpdateSession(ctx context.Context, req *optdv1.UpdateSessionRequest) (*optdv1.Session, error) {
	return unary(ctx, c, "UpdateSession", req, c.stub.UpdateSession)
}

// DeleteSession deletes a session. NOT_FOUND if there is no such session.
func (c *Client) DeleteSession(ctx context.Context, sessionID string) error {
	_, err := unary(ctx, c, "DeleteSession", &optdv1.DeleteSessionRequest{SessionId: sessionID},
		c.stub.DeleteSession)
	return err
}

// PullOptions selects what Pull reads; the zero value (or nil) reads every tensor as float32.
type PullOptions struct {
	// Tensors to return, by name; empty means all of them, in creation order.
	Names []string
	// Wire encoding of the values (decoded to float32 either way).
	DType optdv1.DType
	// For the tensors named here, only these rows, returned as row-sparse tensors.
	Rows []*optdv1.TensorRows
	// Also return the whole optimizer state (PullResult.OptimizerState), at the same version as
	// the parameters. Not with Rows.
	OptimizerState bool
	// The training point (zero value), or the evaluation point of an optimizer that keeps one
	// (Schedule-Free's x, DoG's average; FAILED_PRECONDITION for the others). Not with Rows.
	Point optdv1.ParameterPoint
}

// PullResult is what Pull returns.
type PullResult struct {
	Version int64
	Tensors []Tensor
	// The server process that answered (new at each server start) and the session's newest
	// checkpointed version (-1: none; steps after it are lost if the server is killed).
	ServerIncarnation string
	DurableVersion    int64
	// With PullOptions.OptimizerState: the optimizer's state, as torch.optim names it (per tensor:
	// its step count and F32 arrays such as "exp_avg"; decode them with FromProto). It can be
	// given back with UpdateSession (UpdateSessionRequest.OptimizerState).
	OptimizerState *optdv1.OptimizerState
	// The point Tensors are (PullOptions.Point).
	Point optdv1.ParameterPoint
}

// Pull reads parameters without stepping.
func (c *Client) Pull(ctx context.Context, sessionID string, opts *PullOptions) (*PullResult, error) {
	if opts == nil {
		opts = &PullOptions{}
	}
	req := &optdv1.PullRequest{SessionId: sessionID, Names: opts.Names, Dtype: opts.DType,
		Rows: opts.Rows, IncludeOptimizerState: opts.OptimizerState, Point: opts.Point}
	resp, err := unary(ctx, c, "Pull", req, c.stub.Pull)
	if err != nil {
		return nil, err
	}
	c.server.observe(resp.GetServerIncarnation())
	tensors, err := fromProtos("Pull", resp.GetTensors())
	if err != nil {
		return nil, err
	}
	return &PullResult{Version: resp.GetVersion(), Tensors: tensors,
		ServerIncarnation: resp.GetServerIncarnation(), DurableVersion: resp.GetDurableVersion(),
		OptimizerState: resp.GetOptimizerState(), Point: resp.GetPoint()}, nil
}

// CheckpointResult is what Checkpoint returns.
type CheckpointResult struct {
	// The version checkpointed (now the session's DurableVersion).
	Version int64
	// The checkpoint file, on the server (for CheckpointSource.Path), and its size.
	Path  string
	Bytes int64
}

// Checkpoint writes a checkpoint of the session now and returns once it is durable. NOT_FOUND;
// FAILED_PRECONDITION when the server runs without --checkpoint_dir; RESOURCE_EXHAUSTED,
// PERMISSION_DENIED or INTERNAL when the write fails (older checkpoints stay intact).
func (c *Client) Checkpoint(ctx context.Context, sessionID string) (*CheckpointResult, error) {
	resp, err := unary(ctx, c, "Checkpoint", &optdv1.CheckpointRequest{SessionId: sessionID},
		c.stub.Checkpoint)
	if err != nil {
		return nil, err
	}
	return &CheckpointResult{Version: resp.GetVersion(), Path: resp.GetPath(),
		Bytes: resp.GetBytes()}, nil
}

// CheckpointSource names the checkpoint a session starts from: exactly one of Path (a checkpoint
// file on the server, CheckpointResult.Path) and SessionID (that session's newest checkpoint).
type CheckpointSource struct {
	Path      string
	SessionID string
}

// CreateSessionFromCheckpoint creates session sessionID (empty: the server generates one) from a
// checkpoint: a fork with the checkpoint's parameters, optimizer state, schedule state and
// version, and a new exactly-once table (workers join it afresh). config, if not nil, replaces the
// checkpoint's hyperparameters (same optimizer kind), e.g. to try another learning rate from the
// same point. FAILED_PRECONDITION when the server runs without --checkpoint_dir; NOT_FOUND for no
// such checkpoint; ALREADY_EXISTS; INVALID_ARGUMENT (both or neither of Path and SessionID, another
// optimizer kind).
func (c *Client) CreateSessionFromCheckpoint(ctx context.Context, sessionID string,
	from CheckpointSource, config *optdv1.SessionConfig) (*optdv1.Session, error) {
	if (from.Path == "") == (from.SessionID == "") {
		return nil, newError("CreateSession", codes.InvalidArgument,
			"CheckpointSource needs exactly one of Path and SessionID (got Path %q, SessionID %q)",
			from.Path, from.SessionID)
	}
	req := &optdv1.CreateSessionRequest{SessionId: sessionID, Config: config,
		FromCheckpoint: from.Path, FromSessionCheckpoint: from.SessionID}
	return unary(ctx, c, "CreateSession", req, c.stub.CreateSession)
}

// Health runs the grpc.health.v1 Check of service ("" is the server as a whole, ServiceName the
// optimizer service): true if SERVING. NOT_FOUND if the server does not know service.
func (c *Client) Health(ctx context.Context, service string) (bool, error) {
	resp, err := unary(ctx, c, "Health", &healthpb.HealthCheckRequest{Service: service},
		c.health.Check)
	if err != nil {
		return false, err
	}
	return resp.GetStatus() == healthpb.HealthCheckResponse_SERVING, nil
}

// SGD is a SessionConfig for plain SGD with learning rate lr (other fields take torch's defaults).
func SGD(lr float64) *optdv1.SessionConfig {
	return &optdv1.SessionConfig{Optimizer: &optdv1.OptimizerConfig{
		Kind: &optdv1.OptimizerConfig_Sgd{Sgd: &optdv1.Sgd{Lr: proto.Float64(lr)}}}}
}

// Adam is a SessionConfig for Adam with learning rate lr (other fields take torch's defaults).
func Adam(lr float64) *optdv1.SessionConfig {
	return &optdv1.SessionConfig{Optimizer: &optdv1.OptimizerConfig{
		Kind: &optdv1.OptimizerConfig_Adam{Adam: &optdv1.Adam{Lr: proto.Float64(lr)}}}}
}
