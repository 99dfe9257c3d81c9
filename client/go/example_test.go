package optd_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	optd "github.com/optd/optd/client/go"
)

// A worker that fits w to a target over one StreamSteps stream.
func ExampleClient_StreamLoop() {
	ctx := context.Background()
	c, err := optd.Dial(ctx, "127.0.0.1:50051", optd.WithTimeout(10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	_, err = c.CreateSession(ctx, "demo", optd.SGD(0.5),
		[]optd.Tensor{{Name: "w", Shape: []int64{3}, Values: []float32{0, 0, 0}}})
	if err != nil && !errors.Is(err, optd.ErrAlreadyExists) {
		log.Fatal(err)
	}
	target := []float32{1, 2, 3}
	stats, err := c.StreamLoop(ctx, "demo", optd.LoopOptions{Steps: 100, WorkerID: "worker-0"},
		func(_ context.Context, s *optd.LoopState) ([]optd.Tensor, *float64, error) {
			w := s.Params[0].Values
			g := make([]float32, len(w))
			loss := 0.0
			for i := range w {
				g[i] = w[i] - target[i]
				loss += 0.5 * float64(g[i]*g[i])
			}
			return []optd.Tensor{{Name: "w", Shape: []int64{3}, Values: g}}, &loss, nil
		})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(stats.Steps, stats.Params[0].Values)
}

// Idempotent unary steps: a Worker joins the session and numbers its steps, so retries are never
// applied twice and a restarted process may reuse the worker id.
func ExampleWorker_Step() {
	ctx := context.Background()
	c, err := optd.Dial(ctx, "127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	w := c.NewWorker("demo", "worker-1")
	r, err := w.Step(ctx, []optd.Tensor{{Name: "w", Shape: []int64{3}, Values: []float32{1, 1, 1}}}, nil)
	switch {
	case errors.Is(err, optd.ErrNotFound):
		log.Fatal("no such session")
	case errors.Is(err, optd.ErrStepOutcomeUnknown):
		// A retried step the server could no longer place: applied once or not at all. The
		// worker has joined again; pull the parameters if it matters, and go on.
		log.Printf("unknown outcome: %v", err)
		return
	case err != nil:
		log.Fatalf("step failed with %v: %v", optd.Code(err), err)
	}
	fmt.Println(r.Version, r.Duplicate)
}
