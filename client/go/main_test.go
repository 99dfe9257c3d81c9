package optd_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	optd "github.com/optd/optd/client/go"
)

// The tests drive one real optd process, started by TestMain on 127.0.0.1:0 and stopped by PID
// (and three more, the shards of sharded_test.go, started when first needed).
// The binary: $OPTD_BINARY, else $OPTD_BUILD_DIR/server/optd, else <repo>/build/server/optd. A
// missing binary FAILS the run (in CI that is a bug, not a reason to skip).

var serverAddr string

var listenLine = regexp.MustCompile(`^optd listening on (\S+:\d+)\s*$`)

func optdBinary() string {
	if b := os.Getenv("OPTD_BINARY"); b != "" {
		return b
	}
	dir := os.Getenv("OPTD_BUILD_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "build")
	}
	return filepath.Join(dir, "server", "optd")
}

// optdProcess is one optd server this test binary started.
type optdProcess struct {
	cmd    *exec.Cmd
	addr   string
	stderr syncBuffer
}

// syncBuffer collects a process's stderr (written by exec's copying goroutine).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startOptd(extraArgs ...string) (*optdProcess, error) {
	bin := optdBinary()
	if st, err := os.Stat(bin); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("optd binary %s is missing or not executable: build the project "+
			"first (or set OPTD_BINARY / OPTD_BUILD_DIR)", bin)
	}
	p := &optdProcess{}
	args := []string{"--listen=127.0.0.1:0", "--metrics_listen="}
	for _, a := range extraArgs {
		if strings.HasPrefix(a, "--listen=") { // a fixed address (a restart on the same port)
			args = args[1:]
			break
		}
	}
	args = append(args, extraArgs...)
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stderr = &p.stderr
	// If this test binary dies without stopping it (a panic, the -timeout), the kernel kills optd.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	found := make(chan string, 1)
	go func() { // drains stdout for the life of the process
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := listenLine.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
		close(found)
	}()
	select {
	case addr, ok := <-found:
		if !ok {
			p.stop()
			return nil, fmt.Errorf("optd exited before printing its listen line\n%s", p.stderrTail())
		}
		p.addr = addr
	case <-time.After(20 * time.Second):
		p.stop()
		return nil, fmt.Errorf("optd printed no 'optd listening on HOST:PORT' line within 20 s\n%s",
			p.stderrTail())
	}
	return p, nil
}

func (p *optdProcess) stderrTail() string {
	s := p.stderr.String()
	if len(s) > 8000 {
		s = s[len(s)-8000:]
	}
	return "--- optd stderr ---\n" + s
}

// stop sends SIGTERM to the process it started (by PID), then SIGKILL after 10 s.
func (p *optdProcess) stop() error {
	if p.cmd.Process == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
		return fmt.Errorf("optd (pid %d) did not exit within 10 s of SIGTERM", p.cmd.Process.Pid)
	}
}

func TestMain(m *testing.M) {
	p, err := startOptd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: cannot start optd:", err)
		os.Exit(1)
	}
	serverAddr = p.addr
	code := m.Run()
	if err := stopShards(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: a shard did not stop cleanly: %v\n", err)
		code = 1
	}
	if err := p.stop(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: optd did not stop cleanly: %v\n%s", err, p.stderrTail())
		code = 1
	}
	os.Exit(code)
}

// dial connects to the test server; the client is closed at the end of the test.
func dial(t *testing.T, opts ...optd.Option) *optd.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := optd.Dial(ctx, serverAddr, append([]optd.Option{optd.WithTimeout(20 * time.Second),
		optd.WithBlock()}, opts...)...)
	if err != nil {
		t.Fatalf("Dial(%s): %v", serverAddr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var sessionCounter int64

// sessionID is a fresh, valid session id for the test.
func sessionID(t *testing.T) string {
	name := regexp.MustCompile(`[^A-Za-z0-9._-]`).ReplaceAllString(t.Name(), "-")
	return fmt.Sprintf("go-%s-%d", name, atomic.AddInt64(&sessionCounter, 1))
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
