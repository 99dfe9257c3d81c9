package optd_test

// Durability (issue #12) from the Go client, against real optd processes of their own (not the
// shared TestMain server): each test starts optd with --checkpoint_dir in a temporary folder,
// kills it (SIGKILL, or a graceful SIGTERM) and starts it again on the same port, and checks that
// a worker loop (StreamLoop over a stream, and with Unary) finishes its steps across the restart,
// picking up the restored parameters. Also the Checkpoint RPC, forks from a checkpoint, the
// optimizer state in Pull and the server incarnation in replies and errors.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	optd "github.com/optd/optd/client/go"
	"github.com/optd/optd/client/go/optdv1"
)

// durableServer is one optd with a checkpoint folder, restartable on the same address.
type durableServer struct {
	t    *testing.T
	dir  string
	addr string
	p    *optdProcess
}

func startDurable(t *testing.T) *durableServer {
	t.Helper()
	s := &durableServer{t: t, dir: t.TempDir()}
	s.start("127.0.0.1:0")
	t.Cleanup(func() {
		if s.p != nil {
			s.p.stop()
		}
	})
	return s
}

func (s *durableServer) start(listen string) {
	s.t.Helper()
	p, err := startOptd("--listen="+listen, "--checkpoint_dir="+s.dir, "--checkpoint_interval=0",
		"--shutdown_grace=300ms")
	if err != nil {
		s.t.Fatalf("start optd: %v", err)
	}
	s.p, s.addr = p, p.addr
}

// kill ends the server with sig (SIGKILL: a crash; SIGTERM: a graceful shutdown, which
// checkpoints every session that moved) and waits for it to exit.
func (s *durableServer) kill(sig syscall.Signal) {
	s.t.Helper()
	_ = s.p.cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { _ = s.p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = s.p.cmd.Process.Kill()
		<-done
		s.t.Errorf("optd (pid %d) did not exit within 10 s of %v", s.p.cmd.Process.Pid, sig)
	}
	s.p = nil
}

// restart starts optd again on the same address and checkpoint folder.
func (s *durableServer) restart() {
	s.t.Helper()
	addr := s.addr
	// The port was just released; bind it again (bounded) until the kernel lets go of it.
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", addr)
		if err == nil {
			l.Close()
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.start(addr)
	if s.addr != addr {
		s.t.Fatalf("optd restarted on %s, not %s", s.addr, addr)
	}
}

func (s *durableServer) dial(t *testing.T) *optd.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := optd.Dial(ctx, s.addr, optd.WithTimeout(5*time.Second), optd.WithBlock())
	if err != nil {
		t.Fatalf("Dial(%s): %v", s.addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// quadratic is a 4-element session: w fits the target 1, 2, 3, 4 with SGD.
func createQuadratic(t *testing.T, ctx context.Context, c *optd.Client, id string) {
	t.Helper()
	if _, err := c.CreateSession(ctx, id, optd.SGD(0.05), []optd.Tensor{
		{Name: "w", Shape: []int64{4}, Values: make([]float32, 4)}}); err != nil {
		t.Fatalf("CreateSession: %v", err)
	}
}

func quadraticGradient(w []float32) []optd.Tensor {
	g := make([]float32, len(w))
	for i := range g {
		g[i] = w[i] - float32(i+1)
	}
	return []optd.Tensor{{Name: "w", Shape: []int64{int64(len(w))}, Values: g}}
}

// A worker loop of 60 steps: after 10 the session is checkpointed, after 20 the server is
// killed (or shut down) and started again. With SIGKILL the 10 steps after the checkpoint are
// lost: the loop's next gradient is stale (ABORTED), it pulls the restored parameters (version
// 10) and finishes its 60 steps, so the session ends at version 50. A graceful shutdown
// checkpoints everything: nothing is lost, the session ends at 60.
func runLoopAcrossRestart(t *testing.T, unary bool, sig syscall.Signal) {
	srv := startDurable(t)
	c := srv.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id := fmt.Sprintf("loop-%v-%d", unary, sig)
	createQuadratic(t, ctx, c, id)

	const steps = 60
	atTen, atTwenty := make(chan struct{}), make(chan struct{})
	resume := make(chan struct{})
	var once10, once20 sync.Once
	type outcome struct {
		stats *optd.LoopStats
		err   error
	}
	done := make(chan outcome, 1)
	go func() {
		st, err := c.StreamLoop(ctx, id, optd.LoopOptions{Steps: steps, WorkerID: "w0", Unary: unary},
			func(ctx context.Context, s *optd.LoopState) ([]optd.Tensor, *float64, error) {
				switch s.Step {
				case 10:
					once10.Do(func() { close(atTen); <-resume })
				case 20:
					once20.Do(func() { close(atTwenty); <-resume })
				}
				if sig == syscall.SIGTERM {
					time.Sleep(20 * time.Millisecond) // steps still running when the grace ends
				}
				return quadraticGradient(s.Params[0].Values), nil, nil
			})
		done <- outcome{st, err}
	}()
	wait := func(ch chan struct{}) {
		select {
		case <-ch:
		case o := <-done:
			t.Fatalf("loop ended early: %+v, %v", o.stats, o.err)
		case <-time.After(20 * time.Second):
			t.Fatal("the loop did not get there within 20 s")
		}
	}
	wait(atTen)
	cp, err := c.Checkpoint(ctx, id)
	if err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	if cp.Version != 10 || cp.Bytes <= 0 || cp.Path == "" {
		t.Fatalf("Checkpoint = %+v, want version 10, a path and bytes", cp)
	}
	resume <- struct{}{}
	wait(atTwenty)
	before, err := c.Pull(ctx, id, nil)
	if err != nil || before.Version != 20 || before.DurableVersion != 10 {
		t.Fatalf("Pull before the restart = %+v, %v; want version 20, durable 10", before, err)
	}
	start := time.Now()
	if sig == syscall.SIGKILL {
		srv.kill(sig)
		resume <- struct{}{} // the loop's next step finds no server and retries
		time.Sleep(300 * time.Millisecond)
	} else {
		resume <- struct{}{}
		time.Sleep(100 * time.Millisecond) // steps flow while the server drains
		srv.kill(sig)
	}
	srv.restart()
	var o outcome
	select {
	case o = <-done:
	case <-time.After(25 * time.Second):
		t.Fatal("the loop did not finish within 25 s of the restart")
	}
	t.Logf("restart at step 20 (%v, unary %v): loop done %.2f s later: %+v", sig, unary,
		time.Since(start).Seconds(), *o.stats)
	if o.err != nil {
		t.Fatalf("StreamLoop across the restart: %v (stats %+v)", o.err, *o.stats)
	}
	if o.stats.Steps != steps || o.stats.ServerRestarts != 1 {
		t.Errorf("stats = %+v; want %d steps and 1 server restart", *o.stats, steps)
	}
	after, err := c.Pull(ctx, id, nil)
	if err != nil {
		t.Fatalf("Pull after: %v", err)
	}
	if after.ServerIncarnation == before.ServerIncarnation || after.ServerIncarnation == "" {
		t.Errorf("server incarnation %q before and %q after the restart; want two different ids",
			before.ServerIncarnation, after.ServerIncarnation)
	}
	want := int64(steps)
	if sig == syscall.SIGKILL {
		want = steps - 10 // the 10 steps after the checkpoint were lost with the crash
		if o.stats.Aborted < 1 {
			t.Errorf("stats.Aborted = %d; want >= 1 (the stale step after the crash)",
				o.stats.Aborted)
		}
	}
	if after.Version != want {
		t.Errorf("session version after the loop = %d, want %d", after.Version, want)
	}
	if inc, n := c.ServerIncarnation(); n != 1 || inc != after.ServerIncarnation {
		t.Errorf("Client.ServerIncarnation() = %q, %d; want %q, 1", inc, n, after.ServerIncarnation)
	}
}

func TestStreamLoopOutlastsACrash(t *testing.T) { runLoopAcrossRestart(t, false, syscall.SIGKILL) }
func TestUnaryLoopOutlastsACrash(t *testing.T)  { runLoopAcrossRestart(t, true, syscall.SIGKILL) }
func TestStreamLoopOutlastsAGracefulRestart(t *testing.T) {
	runLoopAcrossRestart(t, false, syscall.SIGTERM)
}
func TestUnaryLoopOutlastsAGracefulRestart(t *testing.T) {
	runLoopAcrossRestart(t, true, syscall.SIGTERM)
}

// A Worker's unary steps across a crash: the in-flight step is retried until the server is back;
// the reply says the server restarted; the worker counts the restart.
func TestWorkerStepReportsTheRestart(t *testing.T) {
	srv := startDurable(t)
	c := srv.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	createQuadratic(t, ctx, c, "worker")
	w := c.NewWorker("worker", "w1")
	g := quadraticGradient(make([]float32, 4))
	r1, err := w.Step(ctx, g, nil)
	if err != nil {
		t.Fatalf("Step: %v", err)
	}
	// The session was checkpointed when it was created (version 0).
	if r1.ServerIncarnation == "" || r1.DurableVersion != 0 || r1.ServerRestarted {
		t.Fatalf("first step = %+v; want an incarnation, durable version 0, not restarted", r1)
	}
	if _, err := c.Checkpoint(ctx, "worker"); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	srv.kill(syscall.SIGKILL)
	go func() { time.Sleep(500 * time.Millisecond); srv.restart() }()
	r2, err := w.Step(ctx, g, nil) // ASYNC, no version: applied to the restored session
	if err != nil {
		t.Fatalf("Step across the crash: %v", err)
	}
	if !r2.ServerRestarted || r2.ServerIncarnation == r1.ServerIncarnation || r2.Version != 2 ||
		r2.DurableVersion != 1 || r2.Attempts < 2 {
		t.Errorf("step after the crash = %+v; want ServerRestarted, a new incarnation, version 2, "+
			"durable 1, >= 2 attempts", r2)
	}
	if w.ServerRestarts() != 1 || w.ServerIncarnation() != r2.ServerIncarnation ||
		w.DurableVersion() != 1 {
		t.Errorf("worker: restarts %d, incarnation %q, durable %d; want 1, %q, 1",
			w.ServerRestarts(), w.ServerIncarnation(), w.DurableVersion(), r2.ServerIncarnation)
	}
	// A gradient computed at a version the restored session lost: ABORTED from the new process.
	srv.kill(syscall.SIGKILL)
	srv.restart()
	stale := int64(5)
	_, err = w.Step(ctx, g, &optd.StepOptions{Version: &stale})
	var e *optd.Error
	if !errors.As(err, &e) || !errors.Is(err, optd.ErrAborted) || !e.ServerRestarted() ||
		e.ServerIncarnation() == "" || e.ServerIncarnation() == r2.ServerIncarnation {
		t.Fatalf("stale step after a restart: %v; want ABORTED with ServerRestarted and a new "+
			"ServerIncarnation", err)
	}
	if v, ok := e.CurrentVersion(); !ok || v != 1 {
		t.Errorf("CurrentVersion = %d, %v; want 1 (the checkpoint's)", v, ok)
	}
}

func TestCheckpointForkAndOptimizerState(t *testing.T) {
	srv := startDurable(t)
	c := srv.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.CreateSession(ctx, "base", optd.Adam(0.1), []optd.Tensor{
		{Name: "w", Shape: []int64{3}, Values: []float32{1, 2, 3}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Step(ctx, "base", []optd.Tensor{
		{Name: "w", Shape: []int64{3}, Values: []float32{0.1, -0.2, 0.3}}}, nil); err != nil {
		t.Fatal(err)
	}
	cp, err := c.Checkpoint(ctx, "base")
	if err != nil || cp.Version != 1 {
		t.Fatalf("Checkpoint = %+v, %v", cp, err)
	}
	if _, err := os.Stat(cp.Path); err != nil || !strings.HasPrefix(cp.Path, srv.dir) {
		t.Errorf("checkpoint file %s: %v", cp.Path, err)
	}
	lr := &optdv1.SessionConfig{Optimizer: &optdv1.OptimizerConfig{Kind: &optdv1.OptimizerConfig_Adam{
		Adam: &optdv1.Adam{Lr: proto.Float64(0.01)}}}}
	fork, err := c.CreateSessionFromCheckpoint(ctx, "fork", optd.CheckpointSource{Path: cp.Path}, lr)
	if err != nil {
		t.Fatalf("CreateSessionFromCheckpoint(path): %v", err)
	}
	if fork.GetVersion() != 1 || fork.GetConfig().GetOptimizer().GetAdam().GetLr() != 0.01 {
		t.Errorf("fork = version %d lr %v; want 1, 0.01", fork.GetVersion(),
			fork.GetConfig().GetOptimizer().GetAdam().GetLr())
	}
	if _, err := c.CreateSessionFromCheckpoint(ctx, "fork2",
		optd.CheckpointSource{SessionID: "base"}, nil); err != nil {
		t.Fatalf("CreateSessionFromCheckpoint(session): %v", err)
	}
	_, err = c.CreateSessionFromCheckpoint(ctx, "bad", optd.CheckpointSource{}, nil)
	if !errors.Is(err, optd.ErrInvalidArgument) {
		t.Errorf("empty CheckpointSource: %v; want INVALID_ARGUMENT", err)
	}
	_, err = c.CreateSessionFromCheckpoint(ctx, "bad", optd.CheckpointSource{SessionID: "none"}, nil)
	if !errors.Is(err, optd.ErrNotFound) {
		t.Errorf("fork of a session without checkpoint: %v; want NOT_FOUND", err)
	}
	p, err := c.Pull(ctx, "fork", &optd.PullOptions{OptimizerState: true})
	if err != nil {
		t.Fatal(err)
	}
	st := p.OptimizerState
	if st == nil || len(st.GetTensors()) != 1 || st.GetTensors()[0].GetStep() != 1 ||
		len(st.GetTensors()[0].GetArrays()) != 2 {
		t.Fatalf("optimizer state = %v; want one tensor at step 1 with exp_avg and exp_avg_sq", st)
	}
	// A fork is checkpointed when it is created: durable at the version it starts from.
	if p.DurableVersion != p.Version || p.ServerIncarnation == "" {
		t.Errorf("Pull: durable %d at version %d, incarnation %q; want durable = version and an id",
			p.DurableVersion, p.Version, p.ServerIncarnation)
	}
	// Errors carry the server's incarnation.
	_, err = c.Step(ctx, "nope", quadraticGradient(make([]float32, 4)), nil)
	var e *optd.Error
	if !errors.As(err, &e) || e.ServerIncarnation() != p.ServerIncarnation || e.ServerRestarted() {
		t.Errorf("NOT_FOUND error: %v, incarnation %q; want %q", err, e.ServerIncarnation(),
			p.ServerIncarnation)
	}
}

// Without --checkpoint_dir (the shared test server) Checkpoint and forks are refused.
func TestCheckpointNeedsACheckpointDir(t *testing.T) {
	c := dial(t)
	ctx := testContext(t)
	id := sessionID(t)
	createQuadratic(t, ctx, c, id)
	if _, err := c.Checkpoint(ctx, id); !errors.Is(err, optd.ErrFailedPrecondition) {
		t.Errorf("Checkpoint: %v; want FAILED_PRECONDITION", err)
	}
	p, err := c.Pull(ctx, id, nil)
	if err != nil || p.DurableVersion != -1 {
		t.Errorf("Pull: %+v, %v; want durable version -1", p, err)
	}
}

// The checkpoint predates the worker's join: the restarted server does not know the worker's
// incarnation and refuses its retried step with Rejoin. The loop joins again and resends (nothing
// of that incarnation is in the restored session; no StepOutcomeUnknownError), the resend is stale
// (computed at a lost version), and the loop pulls and finishes.
func runRejoinAfterRestart(t *testing.T, unary bool) {
	srv := startDurable(t)
	c := srv.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id := fmt.Sprintf("rejoin-%v", unary)
	createQuadratic(t, ctx, c, id)
	if _, err := c.Checkpoint(ctx, id); err != nil { // version 0, no worker yet
		t.Fatalf("Checkpoint: %v", err)
	}
	const steps = 30
	atTen, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	type outcome struct {
		stats *optd.LoopStats
		err   error
	}
	done := make(chan outcome, 1)
	go func() {
		st, err := c.StreamLoop(ctx, id, optd.LoopOptions{Steps: steps, WorkerID: "late", Unary: unary},
			func(ctx context.Context, s *optd.LoopState) ([]optd.Tensor, *float64, error) {
				if s.Step == 10 {
					once.Do(func() { close(atTen); <-resume })
				}
				return quadraticGradient(s.Params[0].Values), nil, nil
			})
		done <- outcome{st, err}
	}()
	select {
	case <-atTen:
	case o := <-done:
		t.Fatalf("loop ended early: %+v, %v", o.stats, o.err)
	case <-time.After(20 * time.Second):
		t.Fatal("the loop did not reach step 10 within 20 s")
	}
	srv.kill(syscall.SIGKILL)
	close(resume)
	time.Sleep(300 * time.Millisecond)
	srv.restart()
	var o outcome
	select {
	case o = <-done:
	case <-time.After(25 * time.Second):
		t.Fatal("the loop did not finish within 25 s of the restart")
	}
	if o.err != nil {
		t.Fatalf("StreamLoop across the restart: %v (stats %+v)", o.err, *o.stats)
	}
	if o.stats.Steps != steps || o.stats.Rejoins != 1 || o.stats.ServerRestarts != 1 {
		t.Errorf("stats = %+v; want %d steps, 1 rejoin, 1 server restart", *o.stats, steps)
	}
	after, err := c.Pull(ctx, id, nil)
	if err != nil || after.Version != steps-10 {
		t.Errorf("Pull after = %+v, %v; want version %d (the 10 steps before the crash lost)",
			after, err, steps-10)
	}
}

func TestStreamLoopRejoinsARestartedServer(t *testing.T) { runRejoinAfterRestart(t, false) }
func TestUnaryLoopRejoinsARestartedServer(t *testing.T)  { runRejoinAfterRestart(t, true) }
