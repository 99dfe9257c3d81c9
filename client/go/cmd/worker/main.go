// Command worker is a minimal optd worker in Go, the counterpart of examples/cpp/quadratic_worker.
// It fits w (a vector of -dim elements) to the target t[i] = i - dim/2 by minimising
// 0.5 * ||w - t||^2 through an optd session: each step it computes the gradient w - t locally,
// sends it with the loss, and continues from the parameters the server returns.
//
//	optd-go-worker -server 127.0.0.1:50051 -session demo -steps 200 -worker go-worker
//
// Against a server with TLS and tokens: -tls_ca ca.pem (-tls_cert PEM -tls_key PEM for mTLS), and
// the token in OPTD_TOKEN (or -token).
//
// It creates the session (Adam, lr 0.1) when it does not exist yet and otherwise steps the
// existing one, so several workers (in any language) can share a session. By default it steps
// over one StreamSteps stream (Client.StreamLoop); -unary sends one Step call per step
// (StreamLoop with LoopOptions.Unary, a Worker's calls). Either way it outlasts a server restart
// (with --checkpoint_dir): it reconnects, pulls the restored parameters and goes on. Either way the worker joins the session first (a new incarnation of its
// worker id, so a restarted worker may reuse the id) and every step carries the worker id, the
// incarnation and a sequence number (1, 2, ...), so steps are retried on UNAVAILABLE and never
// applied twice. -first_sequence N > 0 skips the join (unjoined mode: sequences from N, no
// incarnation).
//
// It prints "step N version V loss L" every 50 steps, then one summary line
//
//	worker W steps N duplicates D aborted A first_sequence F last_sequence S incarnation I version V final loss L
//
// (I is the incarnation of the last step: 0 in unjoined mode)
//
// and exits 0 if the final loss is below -max_loss (1 on an error, 2 if the loss is too high).
//
// Sharded: -addresses a,b,c (two or more shard addresses, in any order; -server is then unused)
// steps a session sharded over those servers (README, Sharding) with a ShardedWorker: one unary
// Step per shard per step, at once, each carrying the placement's fingerprint. If the session does
// not exist it is created (Adam, lr 0.1), w cut into one row range per shard: w is split when it
// has at least -split_min_elements elements (default 1: always; 0 takes the server's default of
// 4Mi, which leaves a small w whole and the plan refused, since every shard needs a slice);
// otherwise the worker attaches to it (a session of the one tensor w of -dim elements, created by
// any client), waiting up to 10 s for a creator still creating it. -unary is implied (no streams
// yet) and -first_sequence works as above, on every shard. Each
// step sends the version its gradient was computed at, so the worker runs in ASYNC, BOUNDED and
// SYNC sessions (created by another program with more workers); a stale gradient (ABORTED) is
// recomputed after a pull. Before the summary line (the same, with shard 0's sequences and
// incarnation) it prints
//
//	sharded over N shards: placement fingerprint F
//
// For example:
//
//	optd-go-worker -addresses 127.0.0.1:50061,127.0.0.1:50062,127.0.0.1:50063 -session demo
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	optd "github.com/optd/optd/client/go"
)

func main() {
	server := flag.String("server", "127.0.0.1:50051", "optd address")
	session := flag.String("session", "quadratic", "session id (created as Adam(lr=0.1) if absent)")
	dim := flag.Int("dim", 8, "length of w")
	steps := flag.Int("steps", 200, "steps to run")
	worker := flag.String("worker", "go-worker", "worker id sent with each step")
	firstSeq := flag.Int64("first_sequence", 0, "sequence number of the first step, without joining "+
		"the session (0: join, and number from 1)")
	unary := flag.Bool("unary", false, "one Step call per step instead of a StreamSteps stream")
	maxLoss := flag.Float64("max_loss", 1e-2, "exit 2 if the final loss is not below this")
	timeout := flag.Duration("timeout", 10*time.Minute, "bound on the whole run")
	tlsCA := flag.String("tls_ca", "", "PEM file of the CA of the server's certificate (turns TLS on)")
	tlsCert := flag.String("tls_cert", "", "PEM file of the client certificate (mTLS), with -tls_key")
	tlsKey := flag.String("tls_key", "", "PEM file of the client certificate's key")
	token := flag.String("token", "", "bearer token (default: the OPTD_TOKEN environment variable)")
	addresses := flag.String("addresses", "", "comma-separated addresses of the shards of a sharded "+
		"session (two or more; replaces -server)")
	splitMin := flag.Int64("split_min_elements", 1, "sharded: tensors of at least this many "+
		"elements are split into row ranges when the session is created (0: the server's default)")
	flag.Parse()
	var dialOpts []optd.Option
	if *tlsCA != "" || *tlsCert != "" || *tlsKey != "" {
		dialOpts = append(dialOpts, optd.WithTLS(*tlsCA, *tlsCert, *tlsKey))
	}
	if *token != "" {
		dialOpts = append(dialOpts, optd.WithToken(*token))
	}
	if *dim < 1 || *steps < 0 {
		fmt.Fprintln(os.Stderr, "worker: -dim must be >= 1 and -steps >= 0")
		os.Exit(1)
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var code int
	var err error
	if *addresses != "" {
		code, err = runSharded(ctx, strings.Split(*addresses, ","), *session, *dim, *steps, *worker,
			*firstSeq, *splitMin, *maxLoss, dialOpts)
	} else {
		code, err = run(ctx, *server, *session, *dim, *steps, *worker, *firstSeq, *unary, *maxLoss,
			dialOpts)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "worker: %v\n", err)
	}
	os.Exit(code)
}

func run(ctx context.Context, server, session string, dim, steps int, worker string, firstSeq int64,
	unary bool, maxLoss float64, dialOpts []optd.Option) (int, error) {
	c, err := optd.Dial(ctx, server, dialOpts...)
	if err != nil {
		return 1, err
	}
	defer c.Close()

	// Create the session unless another worker already did.
	_, err = c.CreateSession(ctx, session, optd.Adam(0.1), initialModel(dim))
	if err != nil && !errors.Is(err, optd.ErrAlreadyExists) {
		return 1, err
	}
	gradient := quadratic(dim)

	var loss float64
	st, err := c.StreamLoop(ctx, session, optd.LoopOptions{
		Steps: steps, WorkerID: worker, FirstSequence: firstSeq, Unary: unary,
		OnStep: func(step int, r *optd.StepResult) {
			if step%50 == 0 {
				fmt.Printf("step %4d  version %5d  loss %.6f\n", step, r.Version, loss)
			}
		},
	}, func(_ context.Context, s *optd.LoopState) ([]optd.Tensor, *float64, error) {
		grads, l := gradient(s.Params[0].Values)
		loss = l
		return grads, &l, nil
	})
	if err != nil {
		return 1, err
	}
	stats, version := *st, st.Version
	if stats.ServerRestarts > 0 {
		fmt.Printf("the server restarted %d time(s); continued from the restored session\n",
			stats.ServerRestarts)
	}
	fmt.Printf("worker %s steps %d duplicates %d aborted %d first_sequence %d last_sequence %d "+
		"incarnation %d version %d final loss %.6f\n", worker, stats.Steps, stats.Duplicates,
		stats.Aborted, stats.FirstSequence, stats.LastSequence, stats.Incarnation, version, loss)
	if loss < maxLoss {
		return 0, nil
	}
	return 2, nil
}

// initialModel is the session's one tensor, w = 0.
func initialModel(dim int) []optd.Tensor {
	return []optd.Tensor{{Name: "w", Shape: []int64{int64(dim)}, Values: make([]float32, dim)}}
}

// quadratic returns the gradient of 0.5 * ||w - t||^2 and the loss, at w.
func quadratic(dim int) func(w []float32) ([]optd.Tensor, float64) {
	target := make([]float32, dim)
	for i := range target {
		target[i] = float32(i) - float32(dim)/2
	}
	return func(w []float32) ([]optd.Tensor, float64) {
		g := make([]float32, dim)
		loss := 0.0
		for i := range g {
			g[i] = w[i] - target[i]
			loss += 0.5 * float64(g[i]) * float64(g[i])
		}
		return []optd.Tensor{{Name: "w", Shape: []int64{int64(dim)}, Values: g}}, loss
	}
}

// maxConsecutiveAborts bounds the stale-gradient recomputations in a row of runSharded.
const maxConsecutiveAborts = 100

// runSharded is run over the shards at addresses: a ShardedWorker's unary steps.
func runSharded(ctx context.Context, addresses []string, session string, dim, steps int,
	worker string, firstSeq, splitMin int64, maxLoss float64, dialOpts []optd.Option) (int, error) {
	sc, err := optd.NewShardedClient(addresses, dialOpts...)
	if err != nil {
		return 1, err
	}
	defer sc.Close()
	s, err := sc.CreateShardedSession(ctx, session, optd.Adam(0.1), initialModel(dim),
		&optd.PlacementOptions{SplitMinElements: splitMin})
	if errors.Is(err, optd.ErrAlreadyExists) {
		s, err = attach(ctx, sc, session)
	}
	if err != nil {
		return 1, err
	}
	wk := s.NewWorker(worker)
	if firstSeq > 0 {
		for _, w := range wk.Workers() {
			w.SetNextSequence(firstSeq)
		}
	} else if err := wk.Join(ctx); err != nil {
		return 1, err
	}
	first := wk.Workers()[0].NextSequence()
	gradient := quadratic(dim)
	p, err := wk.Pull(ctx, nil)
	if err != nil {
		return 1, err
	}
	w, version := p.Tensors[0].Values, p.Version
	var loss float64
	var r *optd.ShardedStepResult
	applied, duplicates, aborted, aborts := 0, 0, 0, 0
	for applied < steps {
		grads, l := gradient(w)
		loss = l
		r, err = wk.Step(ctx, grads, &optd.StepOptions{Loss: &l, Version: &version})
		if errors.Is(err, optd.ErrAborted) && aborts < maxConsecutiveAborts {
			aborted++
			aborts++
			if p, err = wk.Pull(ctx, nil); err != nil {
				return 1, err
			}
			w, version = p.Tensors[0].Values, p.Version
			continue
		}
		if err != nil {
			return 1, err
		}
		aborts = 0
		applied++
		if r.Duplicate {
			duplicates++
		}
		w, version = r.Parameters[0].Values, r.Version
		if applied%50 == 0 {
			fmt.Printf("step %4d  version %5d  loss %.6f\n", applied, version, loss)
		}
	}
	last, incarnation := int64(0), wk.Workers()[0].Incarnation()
	if r != nil {
		last = r.Sequence
	}
	fmt.Printf("sharded over %d shards: placement fingerprint %#x\n", len(addresses),
		s.Placement().GetFingerprint())
	fmt.Printf("worker %s steps %d duplicates %d aborted %d first_sequence %d last_sequence %d "+
		"incarnation %d version %d final loss %.6f\n", worker, applied, duplicates, aborted, first,
		last, incarnation, version, loss)
	if loss < maxLoss {
		return 0, nil
	}
	return 2, nil
}

// attach attaches to a sharded session another worker created, waiting (up to 10 s) while it is
// still being created on some shards (NOT_FOUND there).
func attach(ctx context.Context, sc *optd.ShardedClient, session string) (*optd.ShardedSession, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := sc.AttachShardedSession(ctx, session)
		if !errors.Is(err, optd.ErrNotFound) || time.Now().After(deadline) {
			return s, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
