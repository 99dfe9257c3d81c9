package optd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
)

// TokenEnv is the environment variable a client reads its bearer token from when WithToken is
// not given.
const TokenEnv = "OPTD_TOKEN"

// WithTLS turns TLS on (Dial only). caFile is the PEM file of the CA the server's certificate must
// chain to ("" = the system's roots); certFile and keyFile are the PEM files of the client
// certificate and its key, for a server run with --tls_client_ca (mTLS; both "" for none). The
// files are read by Dial: dial again to use renewed ones.
func WithTLS(caFile, certFile, keyFile string) Option {
	return func(o *options) {
		o.tls, o.tlsCA, o.tlsCert, o.tlsKey = true, caFile, certFile, keyFile
	}
}

// WithTLSServerName sets the name the server's certificate must hold, when it is not the host of
// the address (Dial only, with WithTLS).
func WithTLSServerName(name string) Option { return func(o *options) { o.tlsServerName = name } }

// WithToken sets the bearer token sent as "authorization: Bearer <token>" metadata with every
// call, streams included ("" = none). Without this option the token is the OPTD_TOKEN
// environment variable. A token also travels over a plaintext channel, which is acceptable on
// loopback only; use WithTLS for anything else.
func WithToken(token string) Option {
	return func(o *options) { o.token, o.tokenSet = token, true }
}

// security is a client's transport security: the token and what is needed to explain refusals.
type security struct {
	address     string
	tls         bool   // TLS by WithTLS
	custom      bool   // the caller's own connection or dial options (NewClient)
	caName      string // "tls ca=FILE" or "" (system roots)
	certFile    string
	token       string
	tokenSource string // "WithToken" or "$OPTD_TOKEN"
}

// tokenCredentials sends the token with every call; allowed over plaintext (loopback).
type tokenCredentials struct{ token string }

func (t tokenCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + t.token}, nil
}

func (t tokenCredentials) RequireTransportSecurity() bool { return false }

// newSecurity resolves the options: the token (WithToken or $OPTD_TOKEN) and, with WithTLS, the
// transport credentials (nil without TLS).
func newSecurity(address string, o *options) (*security, credentials.TransportCredentials, error) {
	s := &security{address: address, tls: o.tls}
	token, source := o.token, "WithToken"
	if !o.tokenSet {
		token, source = os.Getenv(TokenEnv), "$"+TokenEnv
	}
	token = strings.TrimSpace(token)
	for _, r := range token {
		if r < 0x21 || r > 0x7e { // never echo the token
			return nil, nil, newError("Dial", codes.InvalidArgument, "the token from %s holds a "+
				"character that cannot be sent as gRPC metadata (only printable ASCII without spaces)",
				source)
		}
	}
	if token != "" {
		s.token, s.tokenSource = token, source
	}
	if !o.tls {
		if o.tlsServerName != "" {
			return nil, nil, newError("Dial", codes.InvalidArgument,
				"WithTLSServerName needs WithTLS")
		}
		return s, nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.tlsServerName}
	if o.tlsCA != "" {
		data, err := readPEM("tls ca", o.tlsCA)
		if err != nil {
			return nil, nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(data) {
			return nil, nil, newError("Dial", codes.InvalidArgument,
				"tls ca = %q holds no usable certificate", o.tlsCA)
		}
		cfg.RootCAs = pool
		s.caName = "tls ca=" + o.tlsCA
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return nil, nil, newError("Dial", codes.InvalidArgument, "the client certificate and its "+
			"key go together: give both files to WithTLS, or neither")
	}
	if o.tlsCert != "" {
		if _, err := readPEM("tls cert", o.tlsCert); err != nil {
			return nil, nil, err
		}
		if _, err := readPEM("tls key", o.tlsKey); err != nil {
			return nil, nil, err
		}
		pair, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return nil, nil, newError("Dial", codes.InvalidArgument,
				"tls cert = %q and key = %q: %v", o.tlsCert, o.tlsKey, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
		s.certFile = o.tlsCert
	}
	return s, credentials.NewTLS(cfg), nil
}

func readPEM(what, file string) ([]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, newError("Dial", codes.InvalidArgument, "%s = %q: cannot read it (%v)", what,
			file, errors.Unwrap(err))
	}
	if !strings.Contains(string(data), "-----BEGIN") {
		return nil, newError("Dial", codes.InvalidArgument,
			"%s = %q is not a PEM file (no -----BEGIN line)", what, file)
	}
	return data, nil
}

func (s *security) callOption() []grpc.CallOption {
	if s == nil || s.token == "" {
		return nil
	}
	return []grpc.CallOption{grpc.PerRPCCredentials(tokenCredentials{s.token})}
}

// explain rewrites the message of a refused token or call and of a failed TLS handshake (see
// Error); err is returned, changed in place.
func (s *security) explain(err error) error {
	var e *Error
	if s == nil || !errors.As(err, &e) {
		return err
	}
	switch e.code {
	case codes.Unauthenticated:
		what, sent := "the call without a token", "no token was sent: use WithToken or set "+TokenEnv
		if s.token != "" {
			what = "the token"
			sent = fmt.Sprintf("a token was sent (from %s) and the server did not accept it: check "+
				"that it is current and listed in the server's --auth_tokens_file", s.tokenSource)
		} else if s.certFile != "" {
			sent = fmt.Sprintf("no token was sent (use WithToken or set %s), and the client "+
				"certificate (%s) maps to no tenant on the server", TokenEnv, s.certFile)
		}
		e.message = fmt.Sprintf("optd at %s refused %s: the server refused %s (UNAUTHENTICATED): "+
			"%s; %s", s.address, e.Op, what, e.message, sent)
	case codes.PermissionDenied:
		e.message = fmt.Sprintf("optd at %s refused %s (PERMISSION_DENIED): %s", s.address, e.Op,
			e.message)
	case codes.Unavailable:
		if m, handshake := s.transport(e.message); m != "" {
			e.message = m
			e.tlsFailure = handshake && (s.tls || s.custom)
		}
	}
	return err
}

// transport is the message of an UNAVAILABLE that a TLS setting may explain ("" if none), and
// whether the handshake itself failed (certain, never retried). A connection the server closes
// right after the handshake (how a refused client certificate shows with TLS 1.3: "connection
// closed", "broken pipe", ...) cannot be told from a server going away, so it is explained but
// still retried.
func (s *security) transport(detail string) (string, bool) {
	low := strings.ToLower(detail)
	has := func(subs ...string) bool {
		for _, sub := range subs {
			if strings.Contains(low, sub) {
				return true
			}
		}
		return false
	}
	handshake := has("authentication handshake failed", "x509:", "tls: ",
		"first record does not look like a tls handshake")
	closed := !handshake && has("connection closed", "broken pipe",
		"use of closed network connection", "connection reset", "eof")
	if !handshake && !closed {
		return "", false
	}
	if !s.tls && !s.custom {
		if low != "connection closed" {
			return "", false
		}
		return fmt.Sprintf("optd at %s closed the connection (plaintext channel): %s. If the "+
			"server uses TLS (--tls_cert), use WithTLS with its CA (and a client certificate if it "+
			"asks for one)", s.address, detail), false
	}
	head := fmt.Sprintf("TLS handshake failed with optd at %s: %s", s.address, detail)
	switch {
	case has("first record does not look like a tls handshake", "wrong version number"):
		return head + ". The server does not speak TLS on this port (a plaintext optd?): drop " +
			"WithTLS, or start optd with --tls_cert/--tls_key", true
	case has("x509:", "certificate verify failed", "unknown authority"):
		ca := s.caName
		if ca == "" {
			ca = "the system's root certificates"
		}
		return fmt.Sprintf("%s. The server's certificate was not accepted: check the CA file "+
			"given to WithTLS (now %s): it must be the CA that signed the server's certificate, "+
			"and the certificate must name this host (or use WithTLSServerName)", head, ca), true
	case closed && s.certFile != "":
		return fmt.Sprintf("%s. The server closed the connection during or right after the "+
			"handshake: it probably refused the client certificate: check the certificate and key "+
			"given to WithTLS (%s%s): it must be signed by the CA of the server's --tls_client_ca "+
			"and be valid now", head, s.certFile, certSummary(s.certFile)), false
	case closed:
		return head + ". The server closed the connection during or right after the handshake: " +
			"it probably requires a client certificate (mTLS, --tls_client_ca): give one to " +
			"WithTLS", false
	}
	return fmt.Sprintf("%s. Check the CA (%s) and client certificate (%s) given to WithTLS", head,
		s.caName, s.certFile), true
}

// certSummary is ": subject ..., issued by ..., valid A to B[; it EXPIRED ...]" of a certificate
// file, or "" if it cannot be read.
func certSummary(file string) string {
	data, err := os.ReadFile(file)
	if err != nil {
		return ""
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return ""
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return ""
	}
	out := fmt.Sprintf(": subject %s, issued by %s, valid %s to %s", cert.Subject, cert.Issuer,
		cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339))
	now := time.Now()
	switch {
	case now.After(cert.NotAfter):
		out += "; it EXPIRED on " + cert.NotAfter.UTC().Format(time.RFC3339)
	case now.Before(cert.NotBefore):
		out += "; it is NOT VALID YET (from " + cert.NotBefore.UTC().Format(time.RFC3339) + ")"
	}
	return out
}
