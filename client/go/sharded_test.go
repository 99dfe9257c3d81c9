package optd_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	optd "github.com/optd/optd/client/go"
	"github.com/optd/optd/client/go/optdv1"
)

// Sharded sessions (README, Sharding): three optd processes on 127.0.0.1:0, started by the first
// test that needs them and stopped by TestMain (stopShards), against the one whole server of
// TestMain holding the same sessions unsharded.

// The model of the sharded tests: emb (16000 elements) is cut into three row ranges with
// splitMin = 4096; the other tensors stay whole.
var (
	modelNames  = []string{"emb", "w1", "b1", "w2", "b2"}
	modelShapes = map[string][]int64{"emb": {1000, 16}, "w1": {16, 32}, "b1": {32},
		"w2": {32, 4}, "b2": {4}}
)

const splitMin = 4096

var shardServers struct {
	once  sync.Once
	procs []*optdProcess
	addrs []string
	err   error
}

// shardAddresses starts the three shards once and returns their addresses.
func shardAddresses(t *testing.T) []string {
	t.Helper()
	shardServers.once.Do(func() {
		for i := 0; i < 3; i++ {
			p, err := startOptd()
			if err != nil {
				shardServers.err = err
				return
			}
			shardServers.procs = append(shardServers.procs, p)
			shardServers.addrs = append(shardServers.addrs, p.addr)
		}
	})
	if shardServers.err != nil {
		t.Fatalf("starting the shards: %v", shardServers.err)
	}
	return append([]string(nil), shardServers.addrs...)
}

// stopShards stops the shards this test binary started (by PID); TestMain calls it.
func stopShards() error {
	var first error
	for _, p := range shardServers.procs {
		if err := p.stop(); err != nil && first == nil {
			first = fmt.Errorf("%v\n%s", err, p.stderrTail())
		}
	}
	return first
}

func dialShards(t *testing.T, addresses []string) *optd.ShardedClient {
	t.Helper()
	sc, err := optd.NewShardedClient(addresses, optd.WithTimeout(20*time.Second), optd.WithBlock())
	if err != nil {
		t.Fatalf("NewShardedClient(%q): %v", addresses, err)
	}
	t.Cleanup(func() { sc.Close() })
	return sc
}

func numElements(shape []int64) int {
	n := 1
	for _, d := range shape {
		n *= int(d)
	}
	return n
}

// randomTensors are the model's tensors filled with scale * N(0, 1), reproducibly from seed.
func randomTensors(seed int64, scale float32) []optd.Tensor {
	rng := rand.New(rand.NewSource(seed))
	out := make([]optd.Tensor, len(modelNames))
	for i, name := range modelNames {
		values := make([]float32, numElements(modelShapes[name]))
		for j := range values {
			values[j] = scale * float32(rng.NormFloat64())
		}
		out[i] = optd.Tensor{Name: name, Shape: modelShapes[name], Values: values}
	}
	return out
}

func gradientsAt(step, worker int) []optd.Tensor {
	return randomTensors(int64(1000*step+worker+1), 0.1)
}

// sameBits fails the test unless got holds want's tensors (by name) with identical bits.
func sameBits(t *testing.T, what string, got, want []optd.Tensor) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d tensors, want %d", what, len(got), len(want))
	}
	for _, w := range want {
		g, ok := optd.Find(got, w.Name)
		if !ok {
			t.Fatalf("%s: no tensor %q", what, w.Name)
		}
		if fmt.Sprint(g.Shape) != fmt.Sprint(w.Shape) || len(g.Values) != len(w.Values) ||
			fmt.Sprint(g.Rows) != fmt.Sprint(w.Rows) {
			t.Fatalf("%s: %q has shape %v (%d values, rows %v), want %v (%d values, rows %v)",
				what, w.Name, g.Shape, len(g.Values), g.Rows, w.Shape, len(w.Values), w.Rows)
		}
		for i := range w.Values {
			if math.Float32bits(g.Values[i]) != math.Float32bits(w.Values[i]) {
				t.Fatalf("%s: %q[%d] = %v, want %v (bit for bit)", what, w.Name, i, g.Values[i],
					w.Values[i])
			}
		}
	}
}

func adamConfig() *optdv1.SessionConfig {
	cfg := optd.Adam(1e-2)
	cfg.GetOptimizer().GetAdam().WeightDecay = proto.Float64(0.01)
	return cfg
}

func createSharded(t *testing.T, ctx context.Context, sc *optd.ShardedClient, id string,
	cfg *optdv1.SessionConfig, seed int64) *optd.ShardedSession {
	t.Helper()
	s, err := sc.CreateShardedSession(ctx, id, cfg, randomTensors(seed, 1),
		&optd.PlacementOptions{SplitMinElements: splitMin})
	if err != nil {
		t.Fatalf("CreateShardedSession(%s): %v", id, err)
	}
	t.Cleanup(func() { s.Delete(context.Background()) })
	return s
}

func createWhole(t *testing.T, ctx context.Context, id string, cfg *optdv1.SessionConfig, seed int64) *optd.Client {
	t.Helper()
	c := dial(t)
	if _, err := c.CreateSession(ctx, id, cfg, randomTensors(seed, 1)); err != nil {
		t.Fatalf("CreateSession(%s): %v", id, err)
	}
	t.Cleanup(func() { c.DeleteSession(context.Background(), id) })
	return c
}

func TestShardedClientRefusesBadAddresses(t *testing.T) {
	for _, tc := range []struct {
		addresses []string
		want      string
	}{
		{nil, "at least two shard addresses"},
		{[]string{"127.0.0.1:1"}, "at least two shard addresses"},
		{[]string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1"}, `addresses[2] = "127.0.0.1:1" is repeated`},
		{[]string{"127.0.0.1:1", ""}, "addresses[1] is empty"},
	} {
		_, err := optd.NewShardedClient(tc.addresses)
		if !errors.Is(err, optd.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewShardedClient(%q) = %v; want INVALID_ARGUMENT containing %q", tc.addresses,
				err, tc.want)
		}
	}
	ctx := testContext(t)
	for _, tc := range []struct {
		name string
		port int
		want string
	}{
		{"127.0.0.1", 50051, `"127.0.0.1" resolves to 1 address(es) ["127.0.0.1:50051"]`},
		{"", 50051, "name is empty"},
		{"127.0.0.1", 0, "port = 0 is out of range"},
	} {
		_, err := optd.ResolveShards(ctx, tc.name, tc.port)
		if !errors.Is(err, optd.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ResolveShards(%q, %d) = %v; want INVALID_ARGUMENT containing %q", tc.name,
				tc.port, err, tc.want)
		}
	}
}

// One worker (ASYNC, Adam): the sharded session's parameters are bit for bit one server's, after
// every step, in a pull, and in a pull of some tensors.
func TestShardedAdamGivesTheBitsOfOneServer(t *testing.T) {
	ctx := testContext(t)
	sc := dialShards(t, shardAddresses(t))
	id := sessionID(t)
	s := createSharded(t, ctx, sc, id, adamConfig(), 7)
	whole := createWhole(t, ctx, id, adamConfig(), 7)

	var emb []string
	for _, sl := range s.Placement().GetSlices() {
		if sl.GetTensor() == "emb" {
			emb = append(emb, fmt.Sprintf("%s@%d", sl.GetName(), sl.GetShard()))
		}
	}
	if got := strings.Join(emb, " "); got != "emb:rows:0:333@0 emb:rows:333:666@1 emb:rows:666:1000@2" {
		t.Fatalf("emb is placed as %s", got)
	}
	if fmt.Sprint(s.Tensors()) != fmt.Sprint(modelNames) || s.Placement().GetFingerprint() == 0 {
		t.Fatalf("Tensors() = %v, fingerprint %#x", s.Tensors(), s.Placement().GetFingerprint())
	}

	w := s.NewWorker("solo")
	ref := whole.NewWorker(id, "solo")
	const steps = 6
	for step := 0; step < steps; step++ {
		loss := float64(step)
		r, err := w.Step(ctx, gradientsAt(step, 0), &optd.StepOptions{Loss: &loss})
		if err != nil {
			t.Fatalf("sharded step %d: %v", step, err)
		}
		want, err := ref.Step(ctx, gradientsAt(step, 0), &optd.StepOptions{Loss: &loss})
		if err != nil {
			t.Fatalf("whole step %d: %v", step, err)
		}
		sameBits(t, fmt.Sprintf("step %d", step), r.Parameters, want.Parameters)
		if r.Version != int64(step+1) || !r.ShardVersions.Agree() || len(r.Shards) != 3 ||
			r.Sequence != int64(step+1) || r.Duplicate || r.LearningRate != want.LearningRate {
			t.Fatalf("step %d = %+v", step, r)
		}
		if math.Abs(r.GradientNorm-want.GradientNorm) > 1e-6*want.GradientNorm {
			t.Fatalf("step %d: gradient norm %v, one server's %v", step, r.GradientNorm,
				want.GradientNorm)
		}
		for k, sr := range r.Shards {
			if sr.Version != int64(step+1) || sr.Parameters != nil {
				t.Fatalf("step %d: shard %d's result %+v", step, k, sr)
			}
		}
	}

	p, err := s.Pull(ctx, nil)
	wp, werr := whole.Pull(ctx, id, nil)
	if err != nil || werr != nil {
		t.Fatalf("Pull: %v, %v", err, werr)
	}
	sameBits(t, "pull", p.Tensors, wp.Tensors)
	if p.Version != steps || fmt.Sprint(p.ShardVersions) != "[6 6 6]" {
		t.Fatalf("pull version %d, shard versions %v", p.Version, p.ShardVersions)
	}
	// Some tensors, in the order asked: only the shards holding them are asked.
	some, err := w.Pull(ctx, &optd.PullOptions{Names: []string{"b2", "emb"}})
	if err != nil {
		t.Fatal(err)
	}
	if some.Tensors[0].Name != "b2" || some.Tensors[1].Name != "emb" || len(some.Tensors) != 2 {
		t.Fatalf("pull of b2 and emb returned %d tensors, first %q", len(some.Tensors), some.Tensors[0].Name)
	}
	sameBits(t, "pull of b2 and emb", some.Tensors, []optd.Tensor{wp.Tensors[4], wp.Tensors[0]})
	_, err = s.Pull(ctx, &optd.PullOptions{Names: []string{"emb", "nope"}})
	if !errors.Is(err, optd.ErrInvalidArgument) || !strings.Contains(err.Error(), `names[1] "nope" is not a tensor`) {
		t.Fatalf("pull of an unknown tensor = %v", err)
	}
	infos, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k, info := range infos {
		if info.GetVersion() != steps || info.GetConfig().GetPlacement().GetShard() != uint32(k) {
			t.Fatalf("shard %d: version %d, placement shard %d", k, info.GetVersion(),
				info.GetConfig().GetPlacement().GetShard())
		}
	}
}

// Three SYNC workers: every shard's barrier combines the same gradients, so the result is bit for
// bit one server's.
func TestShardedSyncWorkersGiveTheBitsOfOneServer(t *testing.T) {
	ctx := testContext(t)
	sc := dialShards(t, shardAddresses(t))
	id := sessionID(t)
	ids := []string{"a", "b", "c"}
	cfg := adamConfig()
	cfg.Consistency = &optdv1.Consistency{Mode: optdv1.Consistency_MODE_SYNC, WorkerIds: ids,
		BarrierTimeoutSeconds: 30}
	createSharded(t, ctx, sc, id, cfg, 3)
	whole := createWhole(t, ctx, id, cfg, 3)
	const steps = 5

	// Each worker of the sharded session attaches through a client of its own, the addresses in
	// another order each time.
	run := func(rank int, step func(step int, version *int64) (int64, error)) error {
		version := int64(0)
		for k := 0; k < steps; k++ {
			v, err := step(k, &version)
			if err != nil {
				return fmt.Errorf("worker %s, step %d: %w", ids[rank], k, err)
			}
			if v != int64(k+1) {
				return fmt.Errorf("worker %s, step %d: version %d", ids[rank], k, v)
			}
			version = v
		}
		return nil
	}
	errs := make(chan error, 2*len(ids))
	var wg sync.WaitGroup
	for rank := range ids {
		addrs := shardAddresses(t)
		addrs[0], addrs[rank] = addrs[rank], addrs[0]
		attached, err := dialShards(t, addrs).AttachShardedSession(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		sw, ww := attached.NewWorker(ids[rank]), whole.NewWorker(id, ids[rank])
		wg.Add(2)
		go func(rank int) {
			defer wg.Done()
			errs <- run(rank, func(k int, version *int64) (int64, error) {
				r, err := sw.Step(ctx, gradientsAt(k, rank), &optd.StepOptions{Version: version,
					Return: optdv1.ReturnParameters_RETURN_PARAMETERS_NONE})
				if err != nil {
					return 0, err
				}
				if r.Workers != 3 || r.Parameters != nil {
					return 0, fmt.Errorf("reply %+v", r)
				}
				return r.Version, nil
			})
		}(rank)
		go func(rank int) {
			defer wg.Done()
			errs <- run(rank, func(k int, version *int64) (int64, error) {
				r, err := ww.Step(ctx, gradientsAt(k, rank), &optd.StepOptions{Version: version,
					Return: optdv1.ReturnParameters_RETURN_PARAMETERS_NONE})
				if err != nil {
					return 0, err
				}
				return r.Version, nil
			})
		}(rank)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	s, err := sc.AttachShardedSession(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.Pull(ctx, nil)
	wp, werr := whole.Pull(ctx, id, nil)
	if err != nil || werr != nil {
		t.Fatalf("Pull: %v, %v", err, werr)
	}
	if p.Version != steps || wp.Version != steps {
		t.Fatalf("versions %d (shards %v) and %d, want %d", p.Version, p.ShardVersions, wp.Version, steps)
	}
	sameBits(t, "SYNC pull", p.Tensors, wp.Tensors)
}

// Row-sparse gradients are cut by rows (a shard whose range has none gets an empty row set), and
// RETURN_PARAMETERS_TOUCHED replies are put back together with the model's row numbers.
func TestShardedRowSparseStep(t *testing.T) {
	ctx := testContext(t)
	sc := dialShards(t, shardAddresses(t))
	id := sessionID(t)
	s := createSharded(t, ctx, sc, id, optd.SGD(0.1), 5)
	whole := createWhole(t, ctx, id, optd.SGD(0.1), 5)
	sw, ww := s.NewWorker("sparse"), whole.NewWorker(id, "sparse")

	for i, rows := range [][]int64{{5, 400, 401, 999}, {3}, {700, 2, 2}} {
		grads := gradientsAt(i, 0)
		values := make([]float32, 16*len(rows))
		for j := range values {
			values[j] = float32(j%7) - 3
		}
		grads[0] = optd.Tensor{Name: "emb", Shape: modelShapes["emb"], Rows: rows, Values: values}
		for _, ret := range []optdv1.ReturnParameters{optdv1.ReturnParameters_RETURN_PARAMETERS_ALL,
			optdv1.ReturnParameters_RETURN_PARAMETERS_TOUCHED} {
			opts := &optd.StepOptions{Return: ret}
			r, err := sw.Step(ctx, grads, opts)
			if err != nil {
				t.Fatalf("rows %v: %v", rows, err)
			}
			want, err := ww.Step(ctx, grads, opts)
			if err != nil {
				t.Fatal(err)
			}
			sameBits(t, fmt.Sprintf("rows %v, %v", rows, ret), r.Parameters, want.Parameters)
		}
	}
	p, _ := s.Pull(ctx, nil)
	wp, _ := whole.Pull(ctx, id, nil)
	sameBits(t, "pull after row-sparse steps", p.Tensors, wp.Tensors)

	// A row outside the tensor is refused before anything is sent.
	grads := gradientsAt(9, 0)
	grads[0] = optd.Tensor{Name: "emb", Shape: modelShapes["emb"], Rows: []int64{1000},
		Values: make([]float32, 16)}
	if _, err := sw.Step(ctx, grads, nil); !errors.Is(err, optd.ErrInvalidArgument) ||
		!strings.Contains(err.Error(), `"emb": rows[0] = 1000 is out of range: must be in [0, 1000)`) {
		t.Fatalf("row 1000 = %v", err)
	}
}

// Several ASYNC workers: every step is applied once on every shard, and the shards' versions
// advance together.
func TestShardedAsyncWorkersApplyEveryStepOnceOnEveryShard(t *testing.T) {
	ctx := testContext(t)
	sc := dialShards(t, shardAddresses(t))
	id := sessionID(t)
	s := createSharded(t, ctx, sc, id, optd.SGD(0.01), 11)
	const workers, steps = 3, 5
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for rank := 0; rank < workers; rank++ {
		wg.Add(1)
		go func(rank int) {
			defer wg.Done()
			w := s.NewWorker(fmt.Sprintf("async-%d", rank))
			for k := 0; k < steps && errs[rank] == nil; k++ {
				_, errs[rank] = w.Step(ctx, gradientsAt(k, rank),
					&optd.StepOptions{Return: optdv1.ReturnParameters_RETURN_PARAMETERS_NONE})
			}
		}(rank)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	p, err := s.Pull(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(p.ShardVersions) != "[15 15 15]" {
		t.Fatalf("shard versions %v, want 15 each", p.ShardVersions)
	}
	// SGD without momentum: p0 - lr * (sum of every gradient), in any order.
	want := randomTensors(11, 1)
	for rank := 0; rank < workers; rank++ {
		for k := 0; k < steps; k++ {
			for i, g := range gradientsAt(k, rank) {
				for j := range g.Values {
					want[i].Values[j] -= 0.01 * g.Values[j]
				}
			}
		}
	}
	for i, w := range want {
		for j := range w.Values {
			if d := math.Abs(float64(p.Tensors[i].Values[j] - w.Values[j])); d > 1e-5 {
				t.Fatalf("%s[%d] = %v, want %v", w.Name, j, p.Tensors[i].Values[j], w.Values[j])
			}
		}
	}
}

// Another client attaches with the addresses in another order: each shard says which part it
// holds. Too few addresses, a server without the session, or one holding it unsharded are refused.
func TestAttachWithTheAddressesInAnotherOrder(t *testing.T) {
	ctx := testContext(t)
	addrs := shardAddresses(t)
	sc := dialShards(t, addrs)
	id := sessionID(t)
	s := createSharded(t, ctx, sc, id, adamConfig(), 2)
	if _, err := s.NewWorker("first").Step(ctx, gradientsAt(0, 0), nil); err != nil {
		t.Fatal(err)
	}

	reversed := []string{addrs[2], addrs[0], addrs[1]}
	other, err := dialShards(t, reversed).AttachShardedSession(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(other.Addresses()) != fmt.Sprint(addrs) ||
		other.Placement().GetFingerprint() != s.Placement().GetFingerprint() {
		t.Fatalf("attached: addresses %v (want %v in shard order), fingerprint %#x", other.Addresses(),
			addrs, other.Placement().GetFingerprint())
	}
	r, err := other.NewWorker("second").Step(ctx, gradientsAt(1, 0), nil)
	if err != nil || r.Version != 2 {
		t.Fatalf("second worker's step = %+v, %v", r, err)
	}
	p, err := s.Pull(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	sameBits(t, "the attached worker's reply", r.Parameters, p.Tensors)

	_, err = dialShards(t, addrs[:2]).AttachShardedSession(ctx, id)
	if !errors.Is(err, optd.ErrFailedPrecondition) || !strings.Contains(err.Error(), "placed over 3 shards") {
		t.Fatalf("attach with two of three addresses = %v", err)
	}
	_, err = dialShards(t, []string{addrs[0], serverAddr, addrs[1]}).AttachShardedSession(ctx, id)
	var se *optd.ShardError
	if !errors.Is(err, optd.ErrNotFound) || !errors.As(err, &se) || se.Address != serverAddr ||
		status.Code(err) != codes.NotFound {
		t.Fatalf("attach with a server lacking the session = %v", err)
	}
	createWhole(t, ctx, id, adamConfig(), 2) // the same id, unsharded, on the whole server
	_, err = dialShards(t, []string{addrs[0], addrs[1], serverAddr}).AttachShardedSession(ctx, id)
	if !errors.Is(err, optd.ErrFailedPrecondition) || !strings.Contains(err.Error(), "is not sharded") {
		t.Fatalf("attach with a server holding the session unsharded = %v", err)
	}
	_, err = sc.AttachShardedSession(ctx, id+"-unknown")
	if !errors.Is(err, optd.ErrNotFound) || optd.Code(err) != codes.NotFound {
		t.Fatalf("attach to an unknown session = %v", err)
	}
}

// A step naming another placement, or none, is refused by the shard and applies nothing; so is a
// worker's step after the session was created again with another placement.
func TestAStepNamingAnotherPlacementIsRefused(t *testing.T) {
	ctx := testContext(t)
	sc := dialShards(t, shardAddresses(t))
	id := sessionID(t)
	s := createSharded(t, ctx, sc, id, adamConfig(), 4)
	var mine []optd.Tensor
	for _, sl := range s.Placement().GetSlices() {
		if sl.GetShard() == 0 {
			shape := append([]int64{sl.GetRowEnd() - sl.GetRowBegin()}, sl.GetShape()[1:]...)
			mine = append(mine, optd.Tensor{Name: sl.GetName(), Shape: shape,
				Values: make([]float32, numElements(shape))})
		}
	}
	shard0 := s.Clients()[0]
	for fp, want := range map[uint64]string{12345: "names fingerprint 12345", 0: "names none"} {
		_, err := shard0.Step(ctx, id, mine, &optd.StepOptions{PlacementFingerprint: fp})
		if !errors.Is(err, optd.ErrFailedPrecondition) || !strings.Contains(err.Error(), want) {
			t.Fatalf("step with fingerprint %d = %v; want FAILED_PRECONDITION containing %q", fp, err, want)
		}
	}
	r, err := shard0.Step(ctx, id, mine,
		&optd.StepOptions{PlacementFingerprint: s.Placement().GetFingerprint()})
	if err != nil || r.Version != 1 {
		t.Fatalf("step with the right fingerprint = %+v, %v", r, err)
	}
	// Shard 0 is a step ahead: the shards' versions disagree, and the results say so.
	w := s.NewWorker("stale-map")
	sr, err := w.Step(ctx, gradientsAt(0, 0), nil)
	if err != nil || fmt.Sprint(sr.ShardVersions) != "[2 1 1]" || sr.ShardVersions.Agree() ||
		sr.Version != 1 {
		t.Fatalf("step with shard 0 ahead = %+v, %v; want shard versions [2 1 1], Version 1", sr, err)
	}
	if p, err := s.Pull(ctx, nil); err != nil || fmt.Sprint(p.ShardVersions) != "[2 1 1]" ||
		p.ShardVersions.Agree() || p.Version != 1 {
		t.Fatalf("pull with shard 0 ahead = %+v, %v", p, err)
	}

	// The session is created again with emb whole: an old worker's map is refused everywhere.
	if err := s.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	again, err := sc.CreateShardedSession(ctx, id, adamConfig(), randomTensors(4, 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Delete(context.Background())
	_, err = w.Step(ctx, gradientsAt(0, 0), nil)
	var se *optd.ShardError
	if !errors.Is(err, optd.ErrFailedPrecondition) || !errors.As(err, &se) || se.Shard < 0 {
		t.Fatalf("a step with the old placement = %v; want a FAILED_PRECONDITION *ShardError", err)
	}
	infos, err := again.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k, info := range infos {
		if info.GetVersion() != 0 {
			t.Fatalf("shard %d is at version %d: the refused step was applied", k, info.GetVersion())
		}
	}
}

// A shard refusing the creation leaves no part of the session anywhere; bad steps are refused
// before anything is sent.
func TestShardedCreateIsAllOrNothingAndBadInputsAreRefused(t *testing.T) {
	ctx := testContext(t)
	addrs := shardAddresses(t)
	sc := dialShards(t, addrs)
	id := sessionID(t)
	taken := sc.Clients()[2]
	if _, err := taken.CreateSession(ctx, id, optd.SGD(1), []optd.Tensor{vec("x", 1)}); err != nil {
		t.Fatal(err)
	}
	_, err := sc.CreateShardedSession(ctx, id, adamConfig(), randomTensors(1, 1),
		&optd.PlacementOptions{SplitMinElements: splitMin})
	var se *optd.ShardError
	if !errors.Is(err, optd.ErrAlreadyExists) || !errors.As(err, &se) || se.Shard != 2 ||
		se.Address != addrs[2] || !strings.Contains(err.Error(), "on shard 2 ("+addrs[2]+")") {
		t.Fatalf("create over a taken id = %v; want ALREADY_EXISTS on shard 2", err)
	}
	for k, c := range sc.Clients()[:2] {
		if _, err := c.GetSession(ctx, id); !errors.Is(err, optd.ErrNotFound) {
			t.Fatalf("shard %d after the failed creation: %v; want NOT_FOUND (deleted again)", k, err)
		}
	}
	if err := taken.DeleteSession(ctx, id); err != nil {
		t.Fatal(err)
	}

	_, err = sc.CreateShardedSession(ctx, "", adamConfig(), randomTensors(1, 1), nil)
	if !errors.Is(err, optd.ErrInvalidArgument) {
		t.Fatalf("create without an id = %v", err)
	}
	// Three shards, two small whole tensors: a shard would hold nothing.
	_, err = sc.CreateShardedSession(ctx, id, adamConfig(), []optd.Tensor{vec("a", 1), vec("b", 2)}, nil)
	if !errors.Is(err, optd.ErrInvalidArgument) {
		t.Fatalf("create with fewer tensors than shards = %v", err)
	}
	// Optimizers needing the whole model are refused at planning.
	ngd := &optdv1.SessionConfig{Optimizer: &optdv1.OptimizerConfig{
		Kind: &optdv1.OptimizerConfig_NormalizedGd{NormalizedGd: &optdv1.NormalizedGd{}}}}
	_, err = sc.CreateShardedSession(ctx, id, ngd, randomTensors(1, 1), nil)
	if !errors.Is(err, optd.ErrFailedPrecondition) {
		t.Fatalf("create with normalized GD = %v", err)
	}

	s := createSharded(t, ctx, sc, id, adamConfig(), 1)
	w := s.NewWorker("bad-inputs")
	grads := gradientsAt(0, 0)
	for _, tc := range []struct {
		grads []optd.Tensor
		want  string
	}{
		{grads[1:], `no gradient for ["emb"]`},
		{append(gradientsAt(0, 0), vec("nope", 1)), `gradients[5] "nope" is not a tensor`},
		{append(gradientsAt(0, 0), grads[4]), `gradients[5] "b2" is repeated`},
		{append([]optd.Tensor{vec("b2", 1)}, grads[:4]...), `gradients[0] "b2" has shape [1]; the tensor's is [4]`},
	} {
		if _, err := w.Step(ctx, tc.grads, nil); !errors.Is(err, optd.ErrInvalidArgument) ||
			!strings.Contains(err.Error(), tc.want) {
			t.Errorf("step = %v; want INVALID_ARGUMENT containing %q", err, tc.want)
		}
	}
	infos, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k, info := range infos {
		if info.GetVersion() != 0 {
			t.Fatalf("shard %d at version %d after refused steps", k, info.GetVersion())
		}
	}
}

var workerSummary = regexp.MustCompile(`(?m)^sharded over 3 shards: placement fingerprint 0x[0-9a-f]+\n` +
	`worker (\S+) steps 150 duplicates \d+ aborted \d+ first_sequence 1 last_sequence \d+ ` +
	`incarnation [1-9]\d* version (\d+) final loss \S+$`)

// The example worker (cmd/worker, $OPTD_GO_WORKER as test.sh builds it) with -addresses: two of
// them at once against the three shards; one creates the session, the other attaches.
func TestExampleWorkerAgainstShards(t *testing.T) {
	bin := os.Getenv("OPTD_GO_WORKER")
	if bin == "" {
		t.Skip("OPTD_GO_WORKER is not set (client/go/test.sh sets it to the worker it builds)")
	}
	addrs := strings.Join(shardAddresses(t), ",")
	id := sessionID(t)
	out := make([][]byte, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range out {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			cmd := exec.Command(bin, "-addresses", addrs, "-session", id, "-dim", "12", "-steps", "150",
				"-worker", fmt.Sprintf("go-shard-%d", i), "-max_loss", "1", "-timeout", "60s")
			out[i], errs[i] = cmd.CombinedOutput()
		}(i)
	}
	wg.Wait()
	for i := range out {
		if errs[i] != nil || !workerSummary.Match(out[i]) {
			t.Fatalf("worker %d: %v\n%s", i, errs[i], out[i])
		}
	}
	sc := dialShards(t, shardAddresses(t))
	s, err := sc.AttachShardedSession(testContext(t), id)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Delete(context.Background())
	p, err := s.Pull(testContext(t), nil)
	if err != nil || fmt.Sprint(p.ShardVersions) != "[300 300 300]" || len(s.Placement().GetSlices()) != 3 {
		t.Fatalf("after two workers of 150 steps: %+v, %v; placement %v", p, err, s.Placement())
	}
}

// A step whose replies are lost on some shards is retried there with the same sequence and
// answered as a duplicate: applied once on every shard.
func TestShardedStepRetriesAreAppliedOnce(t *testing.T) {
	ctx := testContext(t)
	lose, calls := loseFirstReplies(2)
	sc, err := optd.NewShardedClient(shardAddresses(t), lose, fastRetry,
		optd.WithTimeout(20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	id := sessionID(t)
	s := createSharded(t, ctx, sc, id, optd.SGD(0.5), 6)
	whole := createWhole(t, ctx, id, optd.SGD(0.5), 6)
	w, ref := s.NewWorker("retried"), whole.NewWorker(id, "retried")
	if err := w.Join(ctx); err != nil {
		t.Fatal(err)
	}
	for k, wk := range w.Workers() {
		if wk.Incarnation() <= 0 || wk.NextSequence() != 1 {
			t.Fatalf("shard %d after Join: incarnation %d, next sequence %d", k, wk.Incarnation(),
				wk.NextSequence())
		}
	}
	for step := 0; step < 2; step++ {
		r, err := w.Step(ctx, gradientsAt(step, 0), nil)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		want, err := ref.Step(ctx, gradientsAt(step, 0), nil)
		if err != nil {
			t.Fatal(err)
		}
		sameBits(t, fmt.Sprintf("step %d", step), r.Parameters, want.Parameters)
		duplicates := 0
		for _, sr := range r.Shards {
			if sr.Duplicate {
				duplicates++
			}
			if sr.Sequence != int64(step+1) {
				t.Fatalf("step %d sent sequence %d to a shard", step, sr.Sequence)
			}
		}
		wantDup, wantAttempts := 0, 1
		if step == 0 {
			wantDup, wantAttempts = 2, 2
		}
		if r.Version != int64(step+1) || duplicates != wantDup || r.Duplicate ||
			r.Attempts != wantAttempts {
			t.Fatalf("step %d = %+v: %d shards answered duplicate, want %d", step, r, duplicates, wantDup)
		}
	}
	if n := atomic.LoadInt32(calls); n != 8 {
		t.Errorf("%d Step calls, want 8 (3 + 2 retries + 3)", n)
	}
	p, err := s.Pull(ctx, nil)
	if err != nil || fmt.Sprint(p.ShardVersions) != "[2 2 2]" {
		t.Fatalf("pull: %+v, %v", p, err)
	}
}

var readmeGoSnippet = regexp.MustCompile("(?s)<!-- optd-sharding-go-snippet -->\n```go\n(.*?\n)```")

// README "Sharding": the Go program runs as written against the three shards, twice (it deletes
// its session).
func TestReadmeShardingGoSnippet(t *testing.T) {
	if os.Getenv("GOPATH") == "" || os.Getenv("GO111MODULE") != "off" {
		t.Skip("needs the GOPATH-mode environment client/go/test.sh sets")
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := readmeGoSnippet.FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md: no Go block after <!-- optd-sharding-go-snippet -->")
	}
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/main.go", m[1], 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", dir+"/snippet", dir+"/main.go")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build of the README snippet: %v\n%s", err, out)
	}
	for run := 0; run < 2; run++ {
		cmd := exec.CommandContext(ctx, dir+"/snippet")
		cmd.Env = append(os.Environ(), "OPTD_SHARDS="+strings.Join(shardAddresses(t), ","))
		out, err := cmd.CombinedOutput()
		for _, want := range []string{"emb rows [333, 666) on shard 1\n", "w rows [0, 16) on shard 0\n",
			"version 1 emb [1000 16] shard versions [1 1 1]\n"} {
			if err != nil || !strings.Contains(string(out), want) {
				t.Fatalf("run %d: %v; want %q in\n%s", run, err, want, out)
			}
		}
	}
}
