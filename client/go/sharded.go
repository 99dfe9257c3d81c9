// Sessions sharded over several optd servers (README, Sharding).
//
// A sharded session spans N optd servers ("shards"), each holding an ordinary session of the same
// id over its slices of the model: whole tensors, or row ranges of a large tensor. The placement
// (which shard holds which slice) is planned once by a server (PlanPlacement, so every client
// plans alike), given to every shard at creation and stored there; a client attaching later reads
// it back from the shards. Every step names the placement's fingerprint, so a client holding
// another map is refused. A ShardedWorker cuts each step along the placement, sends the pieces to
// every shard at once (one goroutine per shard, each through that shard's Worker: joins, sequence
// numbers, retries) and puts the replies back together, so the caller sees whole tensors.

package optd

import (
	"context"
	"fmt"
	"math"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/optd/optd/client/go/optdv1"
)

// ShardedClient holds one Client per shard of a sharded deployment. It is safe for concurrent
// use; Close it when done.
type ShardedClient struct {
	addresses []string
	clients   []*Client // clients[i] is connected to addresses[i]
}

// NewShardedClient dials every shard (the options apply to each, as in Dial; with WithBlock each
// dial waits at most the WithTimeout duration). At least two distinct addresses are needed, in
// any order: a session that exists says which part each shard holds, and CreateShardedSession
// puts shard i on addresses[i]. InvalidArgument for fewer than two addresses, an empty or a
// repeated one, or a bad option; a failed dial is a *ShardError naming the address.
func NewShardedClient(addresses []string, opts ...Option) (*ShardedClient, error) {
	const op = "NewShardedClient"
	if len(addresses) < 2 {
		return nil, newError(op, codes.InvalidArgument, "addresses = %q: a sharded client needs "+
			"at least two shard addresses (use Dial for one server)", addresses)
	}
	if len(addresses) > maxShards {
		return nil, newError(op, codes.InvalidArgument, "%d addresses: a session spans at most %d "+
			"shards", len(addresses), maxShards)
	}
	first := make(map[string]int, len(addresses))
	for i, a := range addresses {
		if a == "" {
			return nil, newError(op, codes.InvalidArgument, "addresses[%d] is empty", i)
		}
		if j, ok := first[a]; ok {
			return nil, newError(op, codes.InvalidArgument, "addresses[%d] = %q is repeated "+
				"(addresses[%d]): give each shard's address once", i, a, j)
		}
		first[a] = i
	}
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.check(); err != nil {
		return nil, err
	}
	ctx, cancel := context.Background(), context.CancelFunc(func() {})
	if o.timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
	}
	defer cancel()
	s := &ShardedClient{addresses: append([]string(nil), addresses...),
		clients: make([]*Client, len(addresses))}
	errs := forEachShard(len(addresses), func(i int) (err error) {
		s.clients[i], err = Dial(ctx, addresses[i], opts...)
		return err
	})
	if err := shardFailure(s.addresses, false, errs); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// maxShards is the most shards a placement has (Placement.shards: 2 to 64).
const maxShards = 64

// ResolveShards returns "ip:port" for every address name resolves to (a Kubernetes headless
// service resolves to the IPs of its pods), sorted and without repeats, for NewShardedClient:
//
//	addrs, err := optd.ResolveShards(ctx, "optd-shards.ml.svc.cluster.local", 50051)
//
// UNAVAILABLE if the lookup fails (the name is unknown, or no DNS server answers: pods not up yet
// may be worth waiting for); INVALID_ARGUMENT for an empty name, a port outside [1, 65535], or a
// name resolving to fewer than two addresses.
func ResolveShards(ctx context.Context, name string, port int) ([]string, error) {
	const op = "ResolveShards"
	if name == "" {
		return nil, newError(op, codes.InvalidArgument, "name is empty")
	}
	if port < 1 || port > 65535 {
		return nil, newError(op, codes.InvalidArgument, "port = %d is out of range: must be in "+
			"[1, 65535]", port)
	}
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, name)
	if err != nil {
		return nil, newError(op, codes.Unavailable, "cannot resolve %q: %v", name, err)
	}
	addrs := joinHostsPort(ips, port)
	if len(addrs) < 2 {
		return nil, newError(op, codes.InvalidArgument, "%q resolves to %d address(es) %q: a "+
			"sharded client needs at least two (is every shard's pod up and ready?)", name,
			len(addrs), addrs)
	}
	return addrs, nil
}

// joinHostsPort is "ip:port" ("[ip]:port" for IPv6) of each IP, sorted, repeats removed.
func joinHostsPort(ips []net.IPAddr, port int) []string {
	seen := make(map[string]bool, len(ips))
	var out []string
	for _, ip := range ips {
		a := net.JoinHostPort(ip.String(), strconv.Itoa(port))
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	sort.Strings(out)
	return out
}

// Addresses are the shards' addresses, as given.
func (s *ShardedClient) Addresses() []string { return append([]string(nil), s.addresses...) }

// Clients are the shards' clients, in the order of Addresses.
func (s *ShardedClient) Clients() []*Client { return append([]*Client(nil), s.clients...) }

// Close closes every shard's connection.
func (s *ShardedClient) Close() error {
	var first error
	for _, c := range s.clients {
		if c != nil {
			if err := c.Close(); err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}

// PlacementOptions are how CreateShardedSession (and PlanPlacement) place a model; nil means the
// zero value.
type PlacementOptions struct {
	// Tensors of at least this many elements and two rows are cut into one row range per shard
	// when the optimizer is element-wise; 0 takes the server's default (4Mi elements). >= 0.
	SplitMinElements int64
	// With --checkpoint_dir, every shard checkpoints the session at each multiple of this version
	// (Placement.checkpoint_every_versions), so that after a shard restarts every shard can be
	// restored to a common version (README, Sharding). 0 takes DefaultCheckpointEvery; < 0: none.
	CheckpointEvery int64
}

// DefaultCheckpointEvery is PlacementOptions.CheckpointEvery's default (as the Python client's).
const DefaultCheckpointEvery = 100

func (p *PlacementOptions) checkpointEvery() int64 {
	switch {
	case p == nil || p.CheckpointEvery == 0:
		return DefaultCheckpointEvery
	case p.CheckpointEvery < 0:
		return 0
	}
	return p.CheckpointEvery
}

// PlanPlacement returns the placement of a model with these tensors (only Name and Shape are read,
// in order) over the client's shards, for a session of config's optimizer and clipping. The first
// shard plans it; every server plans alike. FAILED_PRECONDITION for an optimizer or clipping a
// sharded session cannot run (they need the whole model in every step); INVALID_ARGUMENT names
// the field.
func (s *ShardedClient) PlanPlacement(ctx context.Context, config *optdv1.SessionConfig,
	tensors []Tensor, popts *PlacementOptions) (*optdv1.Placement, error) {
	if popts == nil {
		popts = &PlacementOptions{}
	}
	req := &optdv1.PlanPlacementRequest{Optimizer: config.GetOptimizer(),
		Clipping: config.GetClipping(), Shards: uint32(len(s.clients)),
		SplitMinElements: popts.SplitMinElements}
	for _, t := range tensors {
		req.Tensors = append(req.Tensors, &optdv1.TensorInfo{Name: t.Name, Shape: t.Shape})
	}
	c := s.clients[0]
	p, err := unary(ctx, c, "PlanPlacement", req, c.stub.PlanPlacement)
	if err != nil {
		return nil, &ShardError{Shard: -1, Address: s.addresses[0], Err: err}
	}
	return p, nil
}

// CreateShardedSession creates session sessionID on every shard and returns it: the placement is
// planned first (PlanPlacement), then shard 0 (on Addresses()[0]) is created, then the other
// shards at once, shard i on Addresses()[i], each with its slices' initial values (params cut by
// rows for a split tensor) and the whole placement. Creating shard 0 first makes it the lock of
// the id: of several clients creating the same session at once, one creates it and the others get
// ALREADY_EXISTS having created nothing (they may attach instead; AttachShardedSession is
// NOT_FOUND until every shard has it). If a shard refuses, the shards already created are deleted
// again, so no half-created session is left, and its error is returned (a *ShardError); deleting
// is best effort (a shard unreachable by then keeps its part: Client.DeleteSession removes it).
//
// sessionID is required (every shard holds the session under it); params are dense. The config's
// Placement is ignored (the plan's is used) and param groups are refused by the shards.
func (s *ShardedClient) CreateShardedSession(ctx context.Context, sessionID string,
	config *optdv1.SessionConfig, params []Tensor, popts *PlacementOptions) (*ShardedSession, error) {
	const op = "CreateShardedSession"
	if sessionID == "" {
		return nil, newError(op, codes.InvalidArgument, "session id is empty: a sharded session "+
			"needs one (every shard holds it under the same id)")
	}
	for i, t := range params {
		if err := t.check(); err != nil {
			return nil, newError(op, codes.InvalidArgument, "params[%d]: %v", i, err)
		}
		if t.Rows != nil {
			return nil, newError(op, codes.InvalidArgument, "params[%d] %q is row-sparse: initial "+
				"values must be dense", i, t.Name)
		}
	}
	placement, err := s.PlanPlacement(ctx, config, params, popts)
	if err != nil {
		return nil, err
	}
	byName := make(map[string]Tensor, len(params))
	for _, t := range params {
		byName[t.Name] = t
	}
	n := len(s.clients)
	infos := make([]*optdv1.Session, n)
	create := func(shard int) error {
		cfg := &optdv1.SessionConfig{}
		if config != nil {
			cfg = proto.Clone(config).(*optdv1.SessionConfig)
		}
		cfg.Placement = proto.Clone(placement).(*optdv1.Placement)
		cfg.Placement.Shard = uint32(shard)
		cfg.Placement.CheckpointEveryVersions = popts.checkpointEvery()
		var mine []Tensor
		for _, sl := range placement.GetSlices() {
			if int(sl.GetShard()) == shard {
				mine = append(mine, sliceRows(byName[sl.GetTensor()], sl))
			}
		}
		var err error
		infos[shard], err = s.clients[shard].CreateSession(ctx, sessionID, cfg, mine)
		return err
	}
	if err := create(0); err != nil {
		return nil, &ShardError{Shard: 0, Address: s.addresses[0], Err: err}
	}
	errs := forEachShard(n-1, func(i int) error { return create(i + 1) })
	errs = append([]error{nil}, errs...)
	if err := shardFailure(s.addresses, true, errs); err != nil {
		// Undo on a context of its own: ctx may be why a shard failed.
		undo, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		forEachShard(n, func(i int) error {
			if errs[i] != nil {
				return nil
			}
			return s.clients[i].DeleteSession(undo, sessionID)
		})
		return nil, err
	}
	return newShardedSession(sessionID, placement, s.clients, s.addresses, isSync(infos[0]))
}

// cleanupTimeout bounds deleting the shards of a session whose creation failed.
const cleanupTimeout = 30 * time.Second

// AttachShardedSession returns an existing sharded session, read from every shard (GetSession):
// each must hold a part of it under the same placement (same fingerprint), and together they must
// hold every part once, whatever the order of the client's addresses. NOT_FOUND (a *ShardError
// naming the address) if a shard has no such session; FAILED_PRECONDITION if a shard's session is
// not sharded, was placed over another number of shards, or the shards disagree on the placement
// or hold the same part.
func (s *ShardedClient) AttachShardedSession(ctx context.Context, sessionID string) (*ShardedSession, error) {
	const op = "AttachShardedSession"
	n := len(s.clients)
	infos := make([]*optdv1.Session, n)
	errs := forEachShard(n, func(i int) (err error) {
		infos[i], err = s.clients[i].GetSession(ctx, sessionID)
		return err
	})
	if err := shardFailure(s.addresses, false, errs); err != nil {
		return nil, err
	}
	byShard := make([]int, n) // shard -> index into s.clients, +1 (0: not seen yet)
	var placement *optdv1.Placement
	for i, info := range infos {
		p, addr := info.GetConfig().GetPlacement(), s.addresses[i]
		if p.GetShards() == 0 {
			return nil, newError(op, codes.FailedPrecondition, "session %s on %s is not sharded: "+
				"use Dial(%q) for it", sessionID, addr, addr)
		}
		if int(p.GetShards()) != n {
			return nil, newError(op, codes.FailedPrecondition, "session %s is placed over %d "+
				"shards (%s holds shard %d of %d), but the client has %d addresses: give every "+
				"shard's address, once", sessionID, p.GetShards(), addr, p.GetShard(),
				p.GetShards(), n)
		}
		if placement == nil {
			placement = p
		} else if p.GetFingerprint() != placement.GetFingerprint() {
			return nil, newError(op, codes.FailedPrecondition, "the shards disagree on session "+
				"%s's placement: %s holds shard %d with fingerprint %#x, %s shard %d with "+
				"fingerprint %#x (different sessions of that id)", sessionID, s.addresses[0],
				placement.GetShard(), placement.GetFingerprint(), addr, p.GetShard(),
				p.GetFingerprint())
		}
		k := int(p.GetShard())
		if k >= n {
			return nil, newError(op, codes.FailedPrecondition, "session %s on %s says it is shard "+
				"%d of %d", sessionID, addr, k, n)
		}
		if byShard[k] != 0 {
			return nil, newError(op, codes.FailedPrecondition, "%s and %s both hold shard %d of "+
				"session %s", s.addresses[byShard[k]-1], addr, k, sessionID)
		}
		byShard[k] = i + 1
	}
	// n distinct indices in [0, n): every shard is there once.
	clients, addresses := make([]*Client, n), make([]string, n)
	for k, i := range byShard {
		clients[k], addresses[k] = s.clients[i-1], s.addresses[i-1]
	}
	shard0 := infos[byShard[0]-1]
	return newShardedSession(sessionID, shard0.GetConfig().GetPlacement(), clients, addresses,
		isSync(shard0))
}

// ShardedSession is a session sharded over several optd servers, as CreateShardedSession or
// AttachShardedSession returned it: its placement, and the client of each shard. It is safe for
// concurrent use; each of its workers (NewWorker) is driven by one goroutine.
type ShardedSession struct {
	id        string
	placement *optdv1.Placement // shard 0's copy
	clients   []*Client         // clients[k] holds shard k
	addresses []string          // addresses[k] is clients[k]'s
	sync      bool              // a SYNC session: the shards' versions must agree
	names     []string          // the model's tensors, in order
	shapes    map[string][]int64
	slices    map[string][]*optdv1.PlacedSlice // by model tensor, in row order
}

func newShardedSession(id string, placement *optdv1.Placement, clients []*Client,
	addresses []string, sync bool) (*ShardedSession, error) {
	s := &ShardedSession{id: id, placement: placement, clients: clients, addresses: addresses,
		sync: sync, shapes: map[string][]int64{}, slices: map[string][]*optdv1.PlacedSlice{}}
	for _, sl := range placement.GetSlices() {
		name := sl.GetTensor()
		if _, ok := s.shapes[name]; !ok {
			s.names = append(s.names, name)
			s.shapes[name] = sl.GetShape()
		}
		if int(sl.GetShard()) >= len(clients) {
			return nil, newError("ShardedSession", codes.Internal, "placement of session %s puts "+
				"%s on shard %d of %d", id, sl.GetName(), sl.GetShard(), len(clients))
		}
		s.slices[name] = append(s.slices[name], sl)
	}
	return s, nil
}

// isSync reports whether a session is SYNC (its shards' versions must then agree).
func isSync(info *optdv1.Session) bool {
	return info.GetConfig().GetConsistency().GetMode() == optdv1.Consistency_MODE_SYNC
}

// ID is the session id (the same on every shard).
func (s *ShardedSession) ID() string { return s.id }

// Placement is the session's placement (shard 0's copy: Shard is 0). Do not modify it.
func (s *ShardedSession) Placement() *optdv1.Placement { return s.placement }

// Addresses are the shards' addresses in shard order: Addresses()[k] holds shard k.
func (s *ShardedSession) Addresses() []string { return append([]string(nil), s.addresses...) }

// Clients are the shards' clients in shard order.
func (s *ShardedSession) Clients() []*Client { return append([]*Client(nil), s.clients...) }

// Tensors are the names of the model's tensors, in order.
func (s *ShardedSession) Tensors() []string { return append([]string(nil), s.names...) }

// Info returns every shard's description of its session (GetSession), in shard order.
func (s *ShardedSession) Info(ctx context.Context) ([]*optdv1.Session, error) {
	out := make([]*optdv1.Session, len(s.clients))
	errs := forEachShard(len(s.clients), func(k int) (err error) {
		out[k], err = s.clients[k].GetSession(ctx, s.id)
		return err
	})
	if err := shardFailure(s.addresses, true, errs); err != nil {
		return nil, err
	}
	return out, nil
}

// Delete deletes the session on every shard (each is tried; the first failure is returned).
func (s *ShardedSession) Delete(ctx context.Context) error {
	errs := forEachShard(len(s.clients), func(k int) error {
		return s.clients[k].DeleteSession(ctx, s.id)
	})
	return shardFailure(s.addresses, true, errs)
}

// ShardVersions are the session versions the shards reported, in shard order (-1 for a shard that
// was not asked: a Pull of tensors it holds no slice of).
type ShardVersions []int64

// Agree reports whether every shard asked reported the same version.
func (v ShardVersions) Agree() bool {
	first := int64(-1)
	for _, x := range v {
		if x < 0 {
			continue
		}
		if first >= 0 && x != first {
			return false
		}
		first = x
	}
	return true
}

// lowest is the lowest version reported (-1 if none).
func (v ShardVersions) lowest() int64 {
	low := int64(-1)
	for _, x := range v {
		if x >= 0 && (low < 0 || x < low) {
			low = x
		}
	}
	return low
}

// ShardedPullResult is what a sharded Pull returns: PullResult with whole tensors, and the
// shards' versions. Version is their common version; when they differ (ASYNC steps in flight
// reach the shards at different times), the lowest, and ShardVersions.Agree() is false.
type ShardedPullResult struct {
	PullResult
	ShardVersions ShardVersions
}

// Pull reads whole tensors (every one, or PullOptions.Names, in that order) from the shards
// holding them, at once. DType and Point are passed on; Rows and OptimizerState are not supported
// on a sharded session yet (INVALID_ARGUMENT).
func (s *ShardedSession) Pull(ctx context.Context, opts *PullOptions) (*ShardedPullResult, error) {
	return s.pull(ctx, opts, func(ctx context.Context, k int, o *PullOptions) (*PullResult, error) {
		return s.clients[k].Pull(ctx, s.id, o)
	})
}

func (s *ShardedSession) pull(ctx context.Context, opts *PullOptions,
	pullShard func(ctx context.Context, k int, o *PullOptions) (*PullResult, error)) (*ShardedPullResult, error) {
	const op = "Pull"
	if opts == nil {
		opts = &PullOptions{}
	}
	if len(opts.Rows) > 0 || opts.OptimizerState {
		return nil, newError(op, codes.InvalidArgument, "PullOptions.Rows and OptimizerState are "+
			"not supported on sharded session %s yet: pull from its shards (Clients) by slice "+
			"name", s.id)
	}
	names := opts.Names
	if len(names) == 0 {
		names = s.names
	}
	seen := make(map[string]bool, len(names))
	perShard := make([][]string, len(s.clients))
	for i, name := range names {
		if _, ok := s.shapes[name]; !ok {
			return nil, newError(op, codes.InvalidArgument, "names[%d] %q is not a tensor of "+
				"session %s (tensors: %q)", i, name, s.id, s.names)
		}
		if seen[name] {
			return nil, newError(op, codes.InvalidArgument, "names[%d] %q is repeated", i, name)
		}
		seen[name] = true
		for _, sl := range s.slices[name] {
			perShard[sl.GetShard()] = append(perShard[sl.GetShard()], sl.GetName())
		}
	}
	results := make([]*PullResult, len(s.clients))
	errs := forEachShard(len(s.clients), func(k int) (err error) {
		if len(perShard[k]) == 0 {
			return nil
		}
		o := *opts
		o.Names = perShard[k]
		results[k], err = pullShard(ctx, k, &o)
		return err
	})
	if err := shardFailure(s.addresses, true, errs); err != nil {
		return nil, err
	}
	out := &ShardedPullResult{ShardVersions: make(ShardVersions, len(s.clients))}
	pieces := make([][]Tensor, len(s.clients))
	var first *PullResult
	for k, r := range results {
		out.ShardVersions[k] = -1
		if r == nil {
			continue
		}
		if first == nil {
			first = r
			out.DurableVersion = r.DurableVersion
		}
		out.ShardVersions[k] = r.Version
		pieces[k] = r.Tensors
		if r.DurableVersion < out.DurableVersion {
			out.DurableVersion = r.DurableVersion
		}
	}
	tensors, err := s.join(op, names, pieces)
	if err != nil {
		return nil, err
	}
	out.Version, out.Tensors = out.ShardVersions.lowest(), tensors
	out.ServerIncarnation, out.Point = first.ServerIncarnation, first.Point
	return out, nil
}

// cut splits whole-tensor gradients along the placement: parts[k] are shard k's, named by its
// slices. Every tensor of the session needs exactly one gradient, of the tensor's shape; a
// row-sparse gradient of a split tensor goes to each shard as the rows in its range, renumbered
// from the range's first (possibly none).
func (s *ShardedSession) cut(op string, grads []Tensor) ([][]Tensor, error) {
	byName := make(map[string]Tensor, len(grads))
	for i, g := range grads {
		shape, ok := s.shapes[g.Name]
		if !ok {
			return nil, newError(op, codes.InvalidArgument, "gradients[%d] %q is not a tensor of "+
				"session %s (tensors: %q)", i, g.Name, s.id, s.names)
		}
		if _, dup := byName[g.Name]; dup {
			return nil, newError(op, codes.InvalidArgument, "gradients[%d] %q is repeated", i, g.Name)
		}
		if !equalShape(g.Shape, shape) {
			return nil, newError(op, codes.InvalidArgument, "gradients[%d] %q has shape %v; the "+
				"tensor's is %v", i, g.Name, g.Shape, shape)
		}
		if err := g.check(); err != nil {
			return nil, newError(op, codes.InvalidArgument, "gradients[%d]: %v", i, err)
		}
		for j, r := range g.Rows {
			if r < 0 || r >= shape[0] {
				return nil, newError(op, codes.InvalidArgument, "gradients[%d] %q: rows[%d] = %d "+
					"is out of range: must be in [0, %d)", i, g.Name, j, r, shape[0])
			}
		}
		byName[g.Name] = g
	}
	if len(byName) != len(s.names) {
		var missing []string
		for _, name := range s.names {
			if _, ok := byName[name]; !ok {
				missing = append(missing, name)
			}
		}
		return nil, newError(op, codes.InvalidArgument, "no gradient for %q: a step of sharded "+
			"session %s needs one for every tensor (%q)", missing, s.id, s.names)
	}
	parts := make([][]Tensor, len(s.clients))
	for _, name := range s.names {
		for _, sl := range s.slices[name] {
			parts[sl.GetShard()] = append(parts[sl.GetShard()], sliceRows(byName[name], sl))
		}
	}
	return parts, nil
}

// sliceRows is slice sl's part of t (a whole tensor of sl's shape, dense or row-sparse), named as
// the shard names it.
func sliceRows(t Tensor, sl *optdv1.PlacedSlice) Tensor {
	shape := sl.GetShape()
	if len(shape) == 0 || (sl.GetRowBegin() == 0 && sl.GetRowEnd() == shape[0]) {
		t.Name = sl.GetName()
		return t
	}
	begin, end := sl.GetRowBegin(), sl.GetRowEnd()
	rowSize := int64(1)
	for _, d := range shape[1:] {
		rowSize *= d
	}
	out := Tensor{Name: sl.GetName(), Shape: append([]int64{end - begin}, shape[1:]...)}
	if t.Rows == nil {
		out.Values = t.Values[begin*rowSize : end*rowSize]
		return out
	}
	out.Rows = []int64{}
	for i, r := range t.Rows {
		if r >= begin && r < end {
			out.Rows = append(out.Rows, r-begin)
			out.Values = append(out.Values, t.Values[int64(i)*rowSize:int64(i+1)*rowSize]...)
		}
	}
	return out
}

// join puts the shards' slices of the named tensors back together (pieces[k]: shard k's reply;
// dense slices are concatenated, row-sparse ones merged with their rows renumbered).
func (s *ShardedSession) join(op string, names []string, pieces [][]Tensor) ([]Tensor, error) {
	out := make([]Tensor, 0, len(names))
	for _, name := range names {
		slices := s.slices[name]
		whole := Tensor{Name: name, Shape: s.shapes[name]}
		for j, sl := range slices {
			piece, ok := Find(pieces[sl.GetShard()], sl.GetName())
			if !ok {
				return nil, newError(op, codes.Internal, "the reply of shard %d (%s) lacks %q",
					sl.GetShard(), s.addresses[sl.GetShard()], sl.GetName())
			}
			if len(slices) == 1 {
				piece.Name = name
				whole = piece
				break
			}
			if j > 0 && (piece.Rows == nil) != (whole.Rows == nil) {
				return nil, newError(op, codes.Internal, "shard %d returned %q row-sparse and "+
					"another shard dense", sl.GetShard(), sl.GetName())
			}
			if piece.Rows != nil {
				if whole.Rows == nil {
					whole.Rows = []int64{}
				}
				for _, r := range piece.Rows {
					whole.Rows = append(whole.Rows, r+sl.GetRowBegin())
				}
			}
			whole.Values = append(whole.Values, piece.Values...)
		}
		if err := whole.check(); err != nil {
			return nil, newError(op, codes.Internal, "the shards' slices of %q do not make the "+
				"tensor: %v", name, err)
		}
		out = append(out, whole)
	}
	return out, nil
}

func equalShape(a, b []int64) bool {
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

// ShardedWorker steps a sharded session as one worker id: one Worker per shard (each joins its
// shard and numbers its own steps, so every step is idempotent on every shard and retried on
// UNAVAILABLE, never applied twice). Not safe for concurrent use: one goroutine drives it.
type ShardedWorker struct {
	s       *ShardedSession
	workers []*Worker // workers[k] steps shard k
}

// NewWorker returns a worker of the session with id workerID (required in SYNC sessions). It
// joins every shard at its first Step (or Join).
func (s *ShardedSession) NewWorker(workerID string) *ShardedWorker {
	w := &ShardedWorker{s: s, workers: make([]*Worker, len(s.clients))}
	for k, c := range s.clients {
		w.workers[k] = c.NewWorker(s.id, workerID)
	}
	return w
}

// ID is the worker id.
func (w *ShardedWorker) ID() string { return w.workers[0].ID() }

// Session is the worker's session.
func (w *ShardedWorker) Session() *ShardedSession { return w.s }

// Workers are the worker's Worker on each shard, in shard order (incarnations, next sequences,
// server restarts and durable versions are per shard). Use them between steps only.
func (w *ShardedWorker) Workers() []*Worker { return append([]*Worker(nil), w.workers...) }

// Join joins every shard at once (Worker.Join): a new incarnation of the worker on each, whose
// next step sends sequence 1. Step joins by itself; call Join to join early (e.g. before a SYNC
// session's first barrier) or to start afresh.
func (w *ShardedWorker) Join(ctx context.Context) error {
	errs := forEachShard(len(w.workers), func(k int) error { return w.workers[k].Join(ctx) })
	return shardFailure(w.s.addresses, true, errs)
}

// ShardedStepResult is the outcome of a sharded step: StepResult with whole Parameters (as
// StepOptions.Return asked) and the shards' outcomes put together, the shards' versions, and each
// shard's own result.
//
// Put together: GradientNorm is the norm over all shards; Duplicate is true if every shard
// answered a retry; Workers is the fewest combined and MissingWorkers every worker missing on
// some shard; Staleness, Attempts and Rejoins the largest; DurableVersion the lowest;
// ServerRestarted true if any shard restarted. LearningRate, Point, Estimates, Sequence,
// WorkerIncarnation and ServerIncarnation are shard 0's (sequences and incarnations are per
// shard: see Shards).
//
// Version and ParametersVersion are the shards' common versions. In ASYNC and BOUNDED sessions
// several workers' steps may reach the shards in different orders, so a reply's versions may
// differ between shards: then Version is the lowest (every shard has reached it) and
// ShardVersions.Agree() is false. In a SYNC session they never differ unless the shards are out
// of step; Step then fails with a *ShardVersionsError.
type ShardedStepResult struct {
	StepResult
	// The session version each shard reported after the step, in shard order.
	ShardVersions ShardVersions
	// Each shard's own outcome, in shard order, without Parameters (moved into StepResult's).
	Shards []*StepResult
}

// ShardVersionsError is the error of a step of a SYNC sharded session after which the shards
// report different versions: they are out of step (a shard restored from an older checkpoint
// than the others', or barriers that failed on some shards only). The step was applied where it
// was accepted; Result holds the shards' outcomes. Code FAILED_PRECONDITION: restart the session
// from a version common to every shard.
type ShardVersionsError struct {
	SessionID string
	Addresses []string // in shard order
	Versions  ShardVersions
	Result    *ShardedStepResult
}

func (e *ShardVersionsError) Error() string {
	parts := make([]string, len(e.Versions))
	for k, v := range e.Versions {
		parts[k] = fmt.Sprintf("shard %d (%s) at %d", k, e.Addresses[k], v)
	}
	return fmt.Sprintf("optd: Step: FAILED_PRECONDITION: the shards of SYNC session %s are out of "+
		"step after this step: %s; restart the session from a version every shard has",
		e.SessionID, strings.Join(parts, ", "))
}

// Is matches ErrFailedPrecondition.
func (e *ShardVersionsError) Is(target error) bool { return target == ErrFailedPrecondition }

// GRPCStatus is FAILED_PRECONDITION with the error's text.
func (e *ShardVersionsError) GRPCStatus() *status.Status {
	return status.New(codes.FailedPrecondition, e.Error())
}

// Step applies one gradient per tensor of the session (whole tensors, dense or row-sparse, by
// name, any order; every tensor needs one): it cuts them along the placement and sends each shard
// its part at once, through that shard's Worker (opts as for Worker.Step; PlacementFingerprint is
// set to the session's, and Version, needed in SYNC and BOUNDED sessions, goes to every shard).
// It returns when every shard has answered. If a shard fails, the error is a *ShardError naming
// it (and how many others failed); the shards that accepted the step keep it (each applied it
// once), and a SYNC step refused on some shards leaves the others waiting at their barrier until
// its deadline. INVALID_ARGUMENT, before anything is sent, for an unknown, repeated or missing
// gradient, a wrong shape or row index.
func (w *ShardedWorker) Step(ctx context.Context, grads []Tensor, opts *StepOptions) (*ShardedStepResult, error) {
	const op = "Step"
	parts, err := w.s.cut(op, grads)
	if err != nil {
		return nil, err
	}
	o := StepOptions{}
	if opts != nil {
		o = *opts
	}
	o.PlacementFingerprint = w.s.placement.GetFingerprint()
	n := len(w.workers)
	results := make([]*StepResult, n)
	errs := forEachShard(n, func(k int) (err error) {
		results[k], err = w.workers[k].Step(ctx, parts[k], &o)
		return err
	})
	if err := shardFailure(w.s.addresses, true, errs); err != nil {
		return nil, err
	}
	out := &ShardedStepResult{ShardVersions: make(ShardVersions, n), Shards: results}
	first := results[0]
	out.StepResult = *first
	out.Parameters, out.MissingWorkers = nil, nil
	missing := map[string]bool{}
	pieces := make([][]Tensor, n)
	var sumSquares float64
	for k, r := range results {
		out.ShardVersions[k] = r.Version
		pieces[k], r.Parameters = r.Parameters, nil
		sumSquares += r.GradientNorm * r.GradientNorm
		out.Duplicate = out.Duplicate && r.Duplicate
		out.ServerRestarted = out.ServerRestarted || r.ServerRestarted
		out.ParametersVersion = minInt64(out.ParametersVersion, r.ParametersVersion)
		out.DurableVersion = minInt64(out.DurableVersion, r.DurableVersion)
		out.Staleness = maxInt64(out.Staleness, r.Staleness)
		if r.Workers < out.Workers {
			out.Workers = r.Workers
		}
		if r.Attempts > out.Attempts {
			out.Attempts = r.Attempts
		}
		if r.Rejoins > out.Rejoins {
			out.Rejoins = r.Rejoins
		}
		for _, m := range r.MissingWorkers {
			if !missing[m] {
				missing[m] = true
				out.MissingWorkers = append(out.MissingWorkers, m)
			}
		}
	}
	sort.Strings(out.MissingWorkers)
	out.GradientNorm = math.Sqrt(sumSquares)
	out.Version = out.ShardVersions.lowest()
	if o.Return != optdv1.ReturnParameters_RETURN_PARAMETERS_NONE {
		if out.Parameters, err = w.s.join(op, w.s.names, pieces); err != nil {
			return nil, err
		}
	}
	if w.s.sync && !out.ShardVersions.Agree() {
		return nil, &ShardVersionsError{SessionID: w.s.id, Addresses: w.s.Addresses(),
			Versions: out.ShardVersions, Result: out}
	}
	return out, nil
}

// Pull is ShardedSession.Pull through the worker's Worker on each shard (which note the answering
// server processes and durable versions).
func (w *ShardedWorker) Pull(ctx context.Context, opts *PullOptions) (*ShardedPullResult, error) {
	return w.s.pull(ctx, opts, func(ctx context.Context, k int, o *PullOptions) (*PullResult, error) {
		return w.workers[k].Pull(ctx, o)
	})
}

func minInt64(a, b int64) int64 {
	if b < a {
		return b
	}
	return a
}

func maxInt64(a, b int64) int64 {
	if b > a {
		return b
	}
	return a
}

// forEachShard runs fn(0), ..., fn(n-1) at once, one goroutine each, and returns their errors
// once all have returned.
func forEachShard(n int, fn func(k int) error) []error {
	errs := make([]error, n)
	done := make(chan struct{}, n)
	for k := 0; k < n; k++ {
		go func(k int) {
			defer func() { done <- struct{}{} }()
			errs[k] = fn(k)
		}(k)
	}
	for k := 0; k < n; k++ {
		<-done
	}
	return errs
}

// ShardError is the failure of one shard (or one address, before the shards are known) in a call
// over several: that shard's error, with where it happened. Code(err), errors.Is with the
// sentinels (errors.Is(err, ErrNotFound)), errors.As to an *Error and status.Code see the
// shard's error through it.
type ShardError struct {
	// The shard's index in the session's placement; -1 when the call was not about a session's
	// shard (dialing, planning, attaching).
	Shard int
	// The server's address.
	Address string
	// The shard's error: an *Error, or a *StepOutcomeUnknownError.
	Err error
	// The other shards (or addresses) that failed in the same call, in order (their Others are
	// empty).
	Others []*ShardError
}

func (e *ShardError) Error() string {
	text := fmt.Sprintf("optd: %s: %s", e.where(), strings.TrimPrefix(e.Err.Error(), "optd: "))
	if len(e.Others) > 0 {
		also := make([]string, len(e.Others))
		for i, o := range e.Others {
			also[i] = o.where() + " " + codeName(Code(o.Err))
		}
		text += fmt.Sprintf(" (also failed: %s)", strings.Join(also, ", "))
	}
	return text
}

// where is "on shard K (ADDRESS)", or "at ADDRESS" without a shard.
func (e *ShardError) where() string {
	if e.Shard < 0 {
		return "at " + e.Address
	}
	return fmt.Sprintf("on shard %d (%s)", e.Shard, e.Address)
}

// Unwrap returns the shard's error.
func (e *ShardError) Unwrap() error { return e.Err }

// GRPCStatus is the shard's error code with the error's text.
func (e *ShardError) GRPCStatus() *status.Status { return status.New(Code(e.Err), e.Error()) }

// shardFailure is nil if every errs[k] is nil, else a *ShardError for the first failure (the
// lowest index: shards when byShard, else the addresses given).
func shardFailure(addresses []string, byShard bool, errs []error) error {
	var first *ShardError
	for k, err := range errs {
		if err == nil {
			continue
		}
		e := &ShardError{Shard: k, Address: addresses[k], Err: err}
		if !byShard {
			e.Shard = -1
		}
		if first == nil {
			first = e
		} else {
			first.Others = append(first.Others, e)
		}
	}
	if first == nil {
		return nil
	}
	return first
}
