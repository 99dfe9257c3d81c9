package optd

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// CurrentVersionKey is the trailing-metadata key under which the server sends the session's
// current version with an ABORTED unary reply.
const CurrentVersionKey = "optd-current-version"

// RejoinKey is the trailing-metadata key ("1") of a FAILED_PRECONDITION unary Step whose worker
// must join the session again (StepError.Rejoin on a stream).
const RejoinKey = "optd-rejoin"

// ServerIncarnationKey is the trailing-metadata key under which the server sends its incarnation
// (an id new in each server process) with an error (StepError.ServerIncarnation on a stream).
const ServerIncarnationKey = "optd-server-incarnation"

// Error is the error every Client method returns: the canonical gRPC code and message of the
// server's status (or of a check the client made before calling). It implements GRPCStatus, so
// status.Code and status.FromError see through it, and Is, so errors.Is(err, ErrNotFound) and the
// other sentinels match by code.
type Error struct {
	// Op is the method that failed ("CreateSession", "Step", ...).
	Op string

	code           codes.Code
	message        string
	currentVersion int64  // -1: unknown
	rejoin         bool   // FAILED_PRECONDITION: the worker must join the session again
	incarnation    string // the answering server process ("": unknown, e.g. unreachable)
	restarted      bool   // incarnation differs from the previous reply's (see ServerRestarted)
	tlsFailure     bool   // UNAVAILABLE from a failed TLS handshake (see TLSFailure)
	cause          error  // context.Canceled / context.DeadlineExceeded when the caller's ctx ended
}

// Code is the canonical gRPC status code.
func (e *Error) Code() codes.Code { return e.code }

// Message is the status message (for server errors, the server's text, which names the field, the
// value and the valid range of a rejected request).
func (e *Error) Message() string { return e.message }

// CurrentVersion is the session's version that came with an ABORTED step (a stale gradient in a
// BOUNDED or SYNC session, or a SYNC barrier that failed): the worker should pull and recompute.
// ok is false when the error carries no version.
func (e *Error) CurrentVersion() (version int64, ok bool) {
	return e.currentVersion, e.currentVersion >= 0
}

// Rejoin reports whether the server refused a keyed step because it cannot place the worker (it
// forgot it, the worker id joined again elsewhere, or the session was restored without it): a
// FAILED_PRECONDITION after which the worker must join again (JoinSession). The refused step was
// not applied if the call was its first attempt; a refused retry may have been (a Worker or
// StreamLoop then returns a *StepOutcomeUnknownError).
func (e *Error) Rejoin() bool { return e.rejoin }

// ServerIncarnation is the id of the server process that answered with this error ("" when no
// server answered, e.g. UNAVAILABLE, or for the client's own checks; the server sends it with the
// errors of Step and StreamSteps steps only, not with those of other calls). It changes at each server
// start: after a restart the server restored its sessions from their checkpoints.
func (e *Error) ServerIncarnation() string { return e.incarnation }

// ServerRestarted reports whether the error came from another server process than the previous
// reply the client (for a Worker or StreamLoop: the worker) saw, i.e. the server restarted in
// between and its sessions were restored from their checkpoints (steps after a session's
// DurableVersion were lost). An ABORTED step with ServerRestarted is a gradient computed at a lost
// version: pull the restored parameters and recompute.
func (e *Error) ServerRestarted() bool { return e.restarted }

// TLSFailure reports whether the call failed in the TLS handshake (an UNAVAILABLE whose message
// names the address, "TLS handshake failed", gRPC's detail and the option to check). Such calls
// are not retried: they would fail the same way.
func (e *Error) TLSFailure() bool { return e.tlsFailure }

// Error formats as "optd: Op: CODE: message".
func (e *Error) Error() string {
	op := ""
	if e.Op != "" {
		op = e.Op + ": "
	}
	return fmt.Sprintf("optd: %s%s: %s", op, codeName(e.code), e.message)
}

// GRPCStatus returns the error as a *status.Status (code and message), for status.Code and
// status.FromError.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.code, e.message) }

// Is reports whether target is the sentinel of e's code (ErrNotFound, ErrInvalidArgument, ...).
func (e *Error) Is(target error) bool {
	s, ok := target.(*codeSentinel)
	return ok && s.code == e.code
}

// Unwrap returns context.Canceled or context.DeadlineExceeded when the call ended because the
// caller's context did, and nil otherwise.
func (e *Error) Unwrap() error { return e.cause }

// codeSentinel is the type of the Err* values: errors.Is(err, ErrNotFound) is true for an *Error
// whose code is codes.NotFound.
type codeSentinel struct{ code codes.Code }

func (s *codeSentinel) Error() string { return "optd: " + codeName(s.code) }

// Sentinels for errors.Is, one per canonical code a client acts on.
var (
	ErrInvalidArgument    error = &codeSentinel{codes.InvalidArgument}
	ErrNotFound           error = &codeSentinel{codes.NotFound}
	ErrAlreadyExists      error = &codeSentinel{codes.AlreadyExists}
	ErrFailedPrecondition error = &codeSentinel{codes.FailedPrecondition}
	ErrAborted            error = &codeSentinel{codes.Aborted}
	ErrUnavailable        error = &codeSentinel{codes.Unavailable}
	ErrDeadlineExceeded   error = &codeSentinel{codes.DeadlineExceeded}
	ErrCanceled           error = &codeSentinel{codes.Canceled}
	ErrResourceExhausted  error = &codeSentinel{codes.ResourceExhausted}
	ErrInternal           error = &codeSentinel{codes.Internal}
)

// ErrStepOutcomeUnknown matches a *StepOutcomeUnknownError with errors.Is.
var ErrStepOutcomeUnknown = errors.New("optd: step outcome unknown")

// StepOutcomeUnknownError is what a Worker's Step (or StreamLoop) returns when a retried step was
// refused with Rejoin: an earlier attempt's reply was lost (UNAVAILABLE, a dropped stream), and by
// the retry the server could no longer place the worker (it forgot it, or its id joined again
// elsewhere). The step may have been applied once, or not at all; never twice. The worker has
// joined again (NewIncarnation; 0 if that join failed, and then its next step joins), so its next
// step works; pull the parameters if the difference matters.
//
// It wraps the refusal: errors.Is(err, ErrFailedPrecondition), optd.Code(err) and status.Code(err)
// see FAILED_PRECONDITION, and errors.Is(err, ErrStepOutcomeUnknown) tells it apart.
type StepOutcomeUnknownError struct {
	// The worker and the refused step's key.
	WorkerID                    string
	WorkerIncarnation, Sequence int64
	// The incarnation the worker joined as afterwards (0: the join failed; the next step joins).
	NewIncarnation int64
	// Attempts made for the step.
	Attempts int
	// The server's refusal.
	Err *Error
	// Why joining again failed, if it did.
	JoinErr error
}

func (e *StepOutcomeUnknownError) Error() string {
	joined := fmt.Sprintf("it has joined the session again as incarnation %d; its next step works",
		e.NewIncarnation)
	if e.JoinErr != nil {
		joined = fmt.Sprintf("joining again failed (%v); its next step joins again", e.JoinErr)
	}
	return fmt.Sprintf("optd: %s: FAILED_PRECONDITION: the outcome of step sequence %d of worker %s "+
		"(incarnation %d) is unknown: the reply of an earlier attempt was lost and the retry (attempt "+
		"%d) was refused because the server can no longer place the worker (%s); the step may have "+
		"been applied once or not at all; %s", e.Err.Op, e.Sequence, e.WorkerID, e.WorkerIncarnation,
		e.Attempts, e.Err.message, joined)
}

// Unwrap returns the server's refusal (an *Error with code FAILED_PRECONDITION).
func (e *StepOutcomeUnknownError) Unwrap() error { return e.Err }

// Is matches ErrStepOutcomeUnknown (and, through Unwrap, ErrFailedPrecondition).
func (e *StepOutcomeUnknownError) Is(target error) bool { return target == ErrStepOutcomeUnknown }

// GRPCStatus is FAILED_PRECONDITION with the error's text, for status.Code and status.FromError.
func (e *StepOutcomeUnknownError) GRPCStatus() *status.Status {
	return status.New(codes.FailedPrecondition, e.Error())
}

// Code returns the gRPC code of err: codes.OK for nil, the code of an *Error (also when wrapped,
// e.g. by fmt.Errorf("...: %w", err)), status.Code(err) otherwise.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.code
	}
	return status.Code(err)
}

// codeName is the canonical upper-case name ("NOT_FOUND"), as the server and the C++ client print
// codes.
func codeName(c codes.Code) string {
	switch c {
	case codes.OK:
		return "OK"
	case codes.Canceled:
		return "CANCELLED"
	case codes.Unknown:
		return "UNKNOWN"
	case codes.InvalidArgument:
		return "INVALID_ARGUMENT"
	case codes.DeadlineExceeded:
		return "DEADLINE_EXCEEDED"
	case codes.NotFound:
		return "NOT_FOUND"
	case codes.AlreadyExists:
		return "ALREADY_EXISTS"
	case codes.PermissionDenied:
		return "PERMISSION_DENIED"
	case codes.ResourceExhausted:
		return "RESOURCE_EXHAUSTED"
	case codes.FailedPrecondition:
		return "FAILED_PRECONDITION"
	case codes.Aborted:
		return "ABORTED"
	case codes.OutOfRange:
		return "OUT_OF_RANGE"
	case codes.Unimplemented:
		return "UNIMPLEMENTED"
	case codes.Internal:
		return "INTERNAL"
	case codes.Unavailable:
		return "UNAVAILABLE"
	case codes.DataLoss:
		return "DATA_LOSS"
	case codes.Unauthenticated:
		return "UNAUTHENTICATED"
	}
	return "CODE(" + strconv.Itoa(int(c)) + ")"
}

// newError makes an *Error with an explicit code (client-side checks, stream step errors).
func newError(op string, code codes.Code, format string, args ...interface{}) *Error {
	return &Error{Op: op, code: code, message: fmt.Sprintf(format, args...), currentVersion: -1}
}

// wrapError turns the error of a gRPC call into an *Error. trailer is the call's trailing metadata
// (may be nil); ctx is the caller's context, to tell a caller's cancellation from a server status.
func wrapError(ctx context.Context, op string, err error, trailer metadata.MD) error {
	if err == nil {
		return nil
	}
	if e, ok := err.(*Error); ok {
		return e
	}
	var e *Error
	switch {
	case errors.Is(err, context.Canceled):
		e = &Error{Op: op, code: codes.Canceled, message: err.Error()}
	case errors.Is(err, context.DeadlineExceeded):
		e = &Error{Op: op, code: codes.DeadlineExceeded, message: err.Error()}
	default:
		st, _ := status.FromError(err) // a non-status error becomes codes.Unknown with its text
		e = &Error{Op: op, code: st.Code(), message: st.Message()}
	}
	e.currentVersion = -1
	if v := trailer.Get(CurrentVersionKey); len(v) > 0 {
		if n, perr := strconv.ParseInt(v[0], 10, 64); perr == nil && n >= 0 {
			e.currentVersion = n
		}
	}
	if v := trailer.Get(RejoinKey); len(v) > 0 && e.code == codes.FailedPrecondition {
		e.rejoin = v[0] == "1"
	}
	if v := trailer.Get(ServerIncarnationKey); len(v) > 0 {
		e.incarnation = v[0]
	}
	if ctx != nil && ctx.Err() != nil && (e.code == codes.Canceled || e.code == codes.DeadlineExceeded) {
		e.cause = ctx.Err()
	}
	return e
}
