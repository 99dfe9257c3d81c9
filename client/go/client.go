package optd

import (
	"context"
	"time"

	"google.golang.org/grpc"
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

// Option configures Dial (and NewClient, which ignores the options that only concern dialing).
type Option func(*options)

type options struct {
	timeout         time.Duration
	maxMessageBytes int
	waitForReady    bool
	block           bool
	retry           RetryPolicy
	dialOptions     []grpc.DialOption
}

func defaultOptions() options {
	return options{timeout: DefaultTimeout, maxMessageBytes: DefaultMaxMessageBytes,
		retry: DefaultRetryPolicy}
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
}

// Dial makes a client for the server at addr ("host:port", or any gRPC target such as
// "dns:///host:port" or "unix:/path"), over an insecure channel unless WithDialOptions supplies
// credentials. ctx bounds the dial only with WithBlock. InvalidArgument for an empty address or an
// option out of range. Close the client when done.
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
	dialOpts := []grpc.DialOption{
		grpc.WithInsecure(), // grpc-go 1.33 has no credentials/insecure package
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(o.maxMessageBytes),
			grpc.MaxCallSendMsgSize(o.maxMessageBytes)),
	}
	if o.block {
		dialOpts = append(dialOpts, grpc.WithBlock())
	}
	dialOpts = append(dialOpts, o.dialOptions...)
	conn, err := grpc.DialContext(ctx, addr, dialOpts...)
	if err != nil {
		if ctx.Err() != nil {
			return nil, wrapError(ctx, "Dial", ctx.Err(), nil)
		}
		return nil, wrapError(ctx, "Dial", err, nil)
	}
	c := newClient(conn, o)
	c.conn = conn
	return c, nil
}

// NewClient makes a client over an existing connection (which the caller keeps and closes). The
// options that concern dialing are ignored.
func NewClient(conn grpc.ClientConnInterface, opts ...Option) *Client {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	return newClient(conn, o)
}

func newClient(conn grpc.ClientConnInterface, o options) *Client {
	return &Client{stub: optdv1.NewOptimizerClient(conn), health: healthpb.NewHealthClient(conn), opts: o}
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
	opts := []grpc.CallOption{grpc.WaitForReady(c.opts.waitForReady)}
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
		return zero, wrapError(cctx, op, err, trailer)
	}
	return resp, nil
}

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
}

// PullResult is what Pull returns.
type PullResult struct {
	Version int64
	Tensors []Tensor
}

// Pull reads parameters without stepping.
func (c *Client) Pull(ctx context.Context, sessionID string, opts *PullOptions) (*PullResult, error) {
	if opts == nil {
		opts = &PullOptions{}
	}
	req := &optdv1.PullRequest{SessionId: sessionID, Names: opts.Names, Dtype: opts.DType,
		Rows: opts.Rows}
	resp, err := unary(ctx, c, "Pull", req, c.stub.Pull)
	if err != nil {
		return nil, err
	}
	tensors, err := fromProtos("Pull", resp.GetTensors())
	if err != nil {
		return nil, err
	}
	return &PullResult{Version: resp.GetVersion(), Tensors: tensors}, nil
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
