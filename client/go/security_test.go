package optd_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	optd "github.com/optd/optd/client/go"
)

// TestSecurityEndToEnd runs the Go client against an optd with mTLS and bearer tokens that
// tests/security_clients_test.py started (it runs this test with the environment below; under a
// plain `go test` the test is skipped, since the server and certificates are that file's):
//
//	OPTD_SECURITY_ADDR    the server, 127.0.0.1:PORT (--tls_cert, --tls_client_ca, --auth_tokens_file)
//	OPTD_SECURITY_PKI     the folder of tests/security_testing.py's certificates
//	OPTD_SECURITY_WRITER  a writer token, OPTD_SECURITY_READER a reader token of the same tenant
//
// One session end to end (create, unary and stream steps, pull, delete) with TLS, a client
// certificate and the writer token, then the refusals and their messages: a wrong CA, an expired
// client certificate, one from another CA, none at all, no token, a wrong token, a reader writing.
func TestSecurityEndToEnd(t *testing.T) {
	addr := os.Getenv("OPTD_SECURITY_ADDR")
	if addr == "" {
		t.Skip("driven by tests/security_clients_test.py (OPTD_SECURITY_ADDR unset)")
	}
	pki := os.Getenv("OPTD_SECURITY_PKI")
	writer, reader := os.Getenv("OPTD_SECURITY_WRITER"), os.Getenv("OPTD_SECURITY_READER")
	file := func(name string) string { return filepath.Join(pki, name) }
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dialWith := func(t *testing.T, opts ...optd.Option) *optd.Client {
		t.Helper()
		c, err := optd.Dial(ctx, addr, append(opts, optd.WithTimeout(10*time.Second))...)
		if err != nil {
			t.Fatalf("Dial: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	good := optd.WithTLS(file("ca.pem"), file("alice.pem"), file("alice.key"))

	t.Run("session", func(t *testing.T) {
		c := dialWith(t, good, optd.WithToken(writer))
		const id = "go-security"
		if _, err := c.CreateSession(ctx, id, optd.SGD(0.5),
			[]optd.Tensor{{Name: "w", Shape: []int64{4}, Values: []float32{1, 2, 3, 4}}}); err != nil {
			t.Fatalf("CreateSession: %v", err)
		}
		grad := []optd.Tensor{{Name: "w", Shape: []int64{4}, Values: []float32{1, 1, 1, 1}}}
		if _, err := c.Step(ctx, id, grad, nil); err != nil {
			t.Fatalf("Step: %v", err)
		}
		stream, err := c.StreamSteps(ctx)
		if err != nil {
			t.Fatalf("StreamSteps: %v", err)
		}
		r, err := stream.Step(id, grad, nil)
		if err != nil {
			t.Fatalf("stream Step: %v", err)
		}
		if err := stream.Close(); err != nil {
			t.Fatalf("stream Close: %v", err)
		}
		if r.Version != 2 {
			t.Fatalf("version after a unary and a stream step = %d, want 2", r.Version)
		}
		pulled, err := c.Pull(ctx, id, nil)
		if err != nil {
			t.Fatalf("Pull: %v", err)
		}
		want := []float32{0, 1, 2, 3} // SGD lr 0.5, two steps of gradient 1
		for i, v := range pulled.Tensors[0].Values {
			if v != want[i] {
				t.Fatalf("pulled w = %v, want %v", pulled.Tensors[0].Values, want)
			}
		}
		if err := c.DeleteSession(ctx, id); err != nil {
			t.Fatalf("DeleteSession: %v", err)
		}
		if _, err := c.GetSession(ctx, id); !errors.Is(err, optd.ErrNotFound) {
			t.Fatalf("GetSession after delete: %v, want NOT_FOUND", err)
		}
	})

	t.Run("reader's stream", func(t *testing.T) {
		c := dialWith(t, good, optd.WithToken(reader))
		stream, err := c.StreamSteps(ctx)
		if err != nil {
			t.Fatalf("StreamSteps: %v", err)
		}
		defer stream.Close()
		_, err = stream.Step("go-never", []optd.Tensor{{Name: "w", Shape: []int64{1},
			Values: []float32{1}}}, nil)
		want := "optd at " + addr + " refused StreamSteps (PERMISSION_DENIED)"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("a reader's stream step: %v, want an error with %q", err, want)
		}
	})

	// Each case: the options, whether a TLS handshake failure is certain, and what the message of a
	// CreateSession (never retried) must say.
	cases := []struct {
		name      string
		opts      []optd.Option
		handshake bool
		want      []string
	}{
		{"wrong CA", []optd.Option{optd.WithTLS(file("other_ca.pem"), file("alice.pem"),
			file("alice.key")), optd.WithToken(writer)}, true,
			[]string{"UNAVAILABLE", "TLS handshake failed with optd at " + addr, "x509",
				"other_ca.pem", "CA file given to WithTLS"}},
		{"expired client certificate", []optd.Option{optd.WithTLS(file("ca.pem"),
			file("expired.pem"), file("expired.key")), optd.WithToken(writer)}, false,
			[]string{"UNAVAILABLE", "TLS handshake failed with optd at " + addr,
				"refused the client certificate", "expired.pem", "EXPIRED"}},
		{"client certificate of another CA", []optd.Option{optd.WithTLS(file("ca.pem"),
			file("other_client.pem"), file("other_client.key")), optd.WithToken(writer)}, false,
			[]string{"UNAVAILABLE", "TLS handshake failed with optd at " + addr,
				"refused the client certificate", "other_client.pem", "issued by CN=other_ca"}},
		{"no client certificate", []optd.Option{optd.WithTLS(file("ca.pem"), "", ""),
			optd.WithToken(writer)}, false,
			[]string{"UNAVAILABLE", "TLS handshake failed with optd at " + addr,
				"requires a client certificate"}},
		{"no token", []optd.Option{good, optd.WithToken("")}, false,
			[]string{"UNAUTHENTICATED", "refused CreateSession", "refused the call without a token",
				"no token was sent"}},
		{"wrong token", []optd.Option{good, optd.WithToken("not-a-token")}, false,
			[]string{"UNAUTHENTICATED", "refused CreateSession", "refused the token",
				"a token was sent (from WithToken)"}},
		{"reader writing", []optd.Option{good, optd.WithToken(reader)}, false,
			[]string{"PERMISSION_DENIED", "optd at " + addr + " refused CreateSession"}},
	}
	for _, tc := range cases {
		tc := tc
		t.Run(tc.name, func(t *testing.T) {
			c := dialWith(t, tc.opts...)
			_, err := c.CreateSession(ctx, "go-refused", optd.SGD(0.5),
				[]optd.Tensor{{Name: "w", Shape: []int64{1}, Values: []float32{0}}})
			if err == nil {
				t.Fatalf("CreateSession succeeded; want a refusal")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), writer) || strings.Contains(err.Error(), reader) {
				t.Errorf("error %q shows a token", err)
			}
			var e *optd.Error
			if !errors.As(err, &e) || e.TLSFailure() != tc.handshake {
				t.Errorf("TLSFailure() of %q: want %v", err, tc.handshake)
			}
		})
	}
	// Nothing was created by the refused calls.
	c := dialWith(t, good, optd.WithToken(writer))
	if _, err := c.GetSession(ctx, "go-refused"); !errors.Is(err, optd.ErrNotFound) {
		t.Fatalf("GetSession(go-refused) = %v, want NOT_FOUND", err)
	}
}
