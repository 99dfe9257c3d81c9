"""Typed errors: one exception class per canonical gRPC status code.

Every failed call raises a subclass of :class:`OptdError` carrying the server's status code
(``.code``, a :class:`grpc.StatusCode`) and message (``.message``, which names the field, the value
and the valid range for a rejected request). ``except optd.OptdError`` catches them all;
``except optd.NotFoundError`` one kind. Some also derive from the matching built-in exception, so
generic code keeps working: ``InvalidArgumentError`` is a ``ValueError``, ``NotFoundError`` a
``LookupError``, ``DeadlineExceededError`` a ``TimeoutError``, ``UnavailableError`` a
``ConnectionError``.

Errors found before any RPC (an array whose size does not match its shape, an unknown
hyperparameter name) raise ``InvalidArgumentError`` too, as the server would.

A keyed step the server cannot place (it forgot the worker, or another process joined with the
same worker id) is ``FailedPreconditionError`` with ``rejoin = True``; a Session handles it (it
joins again and resends the step, or raises ``StepOutcomeUnknownError`` when the step was a retry
whose first outcome was lost).

Server restarts (durability, README "Durability"): every error carries ``server_incarnation``, the
server process that answered (trailing metadata ``optd-server-incarnation``, or
``StepError.server_incarnation`` on a stream; "" when the server sent none, e.g. when it could not
be reached). A Session compares it with the incarnation of the session's last reply: a stale step
refused because the server restarted from an older checkpoint is an ``AbortedError`` with
``server_restarted = True`` (pull the restored parameters and go on). ``CheckpointError`` is what
``optd.checkpoint.read`` raises for a damaged or truncated checkpoint file (no RPC involved).
"""

from typing import Dict, Optional, Type

import grpc

__all__ = [
    "OptdError", "CancelledError", "UnknownError", "InvalidArgumentError", "DeadlineExceededError",
    "NotFoundError", "AlreadyExistsError", "PermissionDeniedError", "ResourceExhaustedError",
    "FailedPreconditionError", "AbortedError", "OutOfRangeError", "UnimplementedError",
    "InternalError", "UnavailableError", "DataLossError", "UnauthenticatedError",
    "StepOutcomeUnknownError", "ShardRestartedError", "CheckpointError", "error_from_rpc", "error_from_status",
    "CURRENT_VERSION_METADATA_KEY", "REJOIN_METADATA_KEY", "SERVER_INCARNATION_METADATA_KEY",
]

#: Trailing-metadata key of an ABORTED Step: the session's version when the step was refused.
CURRENT_VERSION_METADATA_KEY = "optd-current-version"
#: Trailing-metadata key ("1") of a FAILED_PRECONDITION Step whose worker must join the session
#: again (StepError.rejoin on a stream).
REJOIN_METADATA_KEY = "optd-rejoin"
#: Trailing-metadata key of a failed call: the server process (incarnation) that answered it.
SERVER_INCARNATION_METADATA_KEY = "optd-server-incarnation"


class OptdError(Exception):
    """A call to optd failed. ``code`` is the gRPC status code, ``message`` the server's text."""

    #: The status code this class stands for (``None`` only on the base class).
    CODE: Optional[grpc.StatusCode] = None

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(message)
        self.code: grpc.StatusCode = code if code is not None else (self.CODE or
                                                                     grpc.StatusCode.UNKNOWN)
        self.message: str = message
        #: The server process that answered (from the trailing metadata / StepError); "" if the
        #: server sent none (e.g. it could not be reached).
        self.server_incarnation: str = ""
        #: True for an UnavailableError of a failed TLS handshake (optd.security): the message
        #: names the option to check, and the call is not retried.
        self.tls_failure: bool = False

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.name}, message={self.message!r})"


class CancelledError(OptdError):
    """CANCELLED: the call was cancelled (usually by the caller)."""
    CODE = grpc.StatusCode.CANCELLED


class UnknownError(OptdError):
    """UNKNOWN."""
    CODE = grpc.StatusCode.UNKNOWN


class InvalidArgumentError(OptdError, ValueError):
    """INVALID_ARGUMENT: a field is out of range, a shape or name does not match, a NaN gradient."""
    CODE = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceededError(OptdError, TimeoutError):
    """DEADLINE_EXCEEDED: the call outlived its timeout."""
    CODE = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFoundError(OptdError, LookupError):
    """NOT_FOUND: there is no such session."""
    CODE = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(OptdError):
    """ALREADY_EXISTS: the session id is taken."""
    CODE = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(OptdError):
    """PERMISSION_DENIED."""
    CODE = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(OptdError):
    """RESOURCE_EXHAUSTED: too many sessions, or a message over the size limit."""
    CODE = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(OptdError):
    """FAILED_PRECONDITION: e.g. a step's sequence number is not above the worker's last one.

    ``rejoin`` is True when the server cannot place a keyed step of the worker (it was forgotten,
    another process joined with its id, or the session was restored without it): the worker must
    join again (JoinSession) before its next step. The refused step was not applied if it was the
    request's first attempt; a refused retry may have been (see StepOutcomeUnknownError).
    """
    CODE = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None,
                 rejoin: bool = False) -> None:
        super().__init__(message, code)
        self.rejoin: bool = bool(rejoin)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(code=FAILED_PRECONDITION, message={self.message!r}, "
                f"rejoin={self.rejoin})")


class StepOutcomeUnknownError(FailedPreconditionError):
    """A retried step was refused with rejoin: whether it was applied is unknown.

    An earlier attempt of the step reached the server but its reply was lost (UNAVAILABLE or
    DEADLINE_EXCEEDED), and by the time of the retry the server could no longer place the worker
    (it was forgotten, or its worker id joined again elsewhere). The step may have been applied
    once, or not at all; it was never applied twice. The Session has already joined again
    (``new_incarnation``; None if that join failed, then the next step joins), so its next step
    works; re-pull the parameters if the difference matters.

    ``sequence`` and ``worker_incarnation`` are the refused step's key; ``worker_id`` the worker.
    """

    def __init__(self, message: str, *, worker_id: str = "", worker_incarnation: int = 0,
                 sequence: int = 0, new_incarnation: Optional[int] = None,
                 cause: Optional[OptdError] = None) -> None:
        super().__init__(message, grpc.StatusCode.FAILED_PRECONDITION, rejoin=True)
        self.worker_id = worker_id
        self.worker_incarnation = worker_incarnation
        self.sequence = sequence
        self.new_incarnation = new_incarnation
        self.cause = cause

    def __repr__(self) -> str:
        return (f"StepOutcomeUnknownError(worker_id={self.worker_id!r}, worker_incarnation="
                f"{self.worker_incarnation}, sequence={self.sequence}, new_incarnation="
                f"{self.new_incarnation}, message={self.message!r})")


class AbortedError(OptdError):
    """ABORTED: a stale gradient (BOUNDED), another version or an expired barrier (SYNC).

    ``current_version`` is the session's version when the step was refused (from the trailing
    metadata ``optd-current-version`` or ``StepError.current_version``), or ``None`` when the
    server did not send one. Re-pull the parameters at that version and step again.

    ``server_restarted`` is True when a Session saw the refusal come from another server process
    than the session's last reply: the server restarted and restored the session from its newest
    checkpoint, which is older than the worker's version (the steps after it were lost). Pull the
    restored parameters (version ``current_version``) and recompute the gradient.
    """
    CODE = grpc.StatusCode.ABORTED

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None,
                 current_version: Optional[int] = None) -> None:
        super().__init__(message, code)
        self.current_version: Optional[int] = current_version
        self.server_restarted: bool = False

    def __repr__(self) -> str:
        return (f"AbortedError(code=ABORTED, message={self.message!r}, "
                f"current_version={self.current_version}, "
                f"server_restarted={self.server_restarted})")


class ShardRestartedError(AbortedError):
    """A shard of a sharded session restarted (from a checkpoint older than the others' state),
    and the step's worker restored every shard to their newest common checkpoint: version
    ``current_version``. ``shards``: the shards seen restarted. The step was not applied
    everywhere: pull (at ``current_version``) and step again (README, Sharding)."""

    def __init__(self, message: str, current_version: int, shards) -> None:
        super().__init__(message, grpc.StatusCode.ABORTED, current_version)
        self.server_restarted = True
        self.shards = list(shards)


class OutOfRangeError(OptdError):
    """OUT_OF_RANGE."""
    CODE = grpc.StatusCode.OUT_OF_RANGE


class UnimplementedError(OptdError):
    """UNIMPLEMENTED: the server does not offer this method."""
    CODE = grpc.StatusCode.UNIMPLEMENTED


class InternalError(OptdError):
    """INTERNAL: a bug in the server or a reply the client cannot decode."""
    CODE = grpc.StatusCode.INTERNAL


class UnavailableError(OptdError, ConnectionError):
    """UNAVAILABLE: the server cannot be reached (or the session went away under a barrier)."""
    CODE = grpc.StatusCode.UNAVAILABLE


class DataLossError(OptdError):
    """DATA_LOSS."""
    CODE = grpc.StatusCode.DATA_LOSS


class UnauthenticatedError(OptdError):
    """UNAUTHENTICATED: a missing or bad token."""
    CODE = grpc.StatusCode.UNAUTHENTICATED


class CheckpointError(DataLossError, ValueError):
    """A checkpoint file is damaged or truncated (a checksum, the magic, a length or the manifest
    does not check out), or is not an optd checkpoint; raised by optd.checkpoint.read. ``path`` is
    the file."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message, grpc.StatusCode.DATA_LOSS)
        self.path = path


_BY_CODE: Dict[grpc.StatusCode, Type[OptdError]] = {
    cls.CODE: cls
    for cls in (CancelledError, UnknownError, InvalidArgumentError, DeadlineExceededError,
                NotFoundError, AlreadyExistsError, PermissionDeniedError, ResourceExhaustedError,
                FailedPreconditionError, AbortedError, OutOfRangeError, UnimplementedError,
                InternalError, UnavailableError, DataLossError, UnauthenticatedError)
}
_BY_NUMBER: Dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def error_from_status(code, message: str, current_version: Optional[int] = None,
                      rejoin: bool = False, server_incarnation: str = "") -> OptdError:
    """The typed error for ``code`` (a grpc.StatusCode or its number, as in ``StepError.code``);
    ``current_version`` goes to an AbortedError, ``rejoin`` to a FailedPreconditionError;
    ``server_incarnation`` to every error."""
    if not isinstance(code, grpc.StatusCode):
        code = _BY_NUMBER.get(int(code), grpc.StatusCode.UNKNOWN)
    cls = _BY_CODE.get(code, UnknownError)
    if cls is AbortedError:
        error: OptdError = AbortedError(message, code, current_version)
    elif cls is FailedPreconditionError:
        error = FailedPreconditionError(message, code, rejoin)
    else:
        error = cls(message, code)
    error.server_incarnation = server_incarnation or ""
    return error


def error_from_rpc(error: grpc.RpcError) -> OptdError:
    """The typed error for a failed gRPC call (reads ``optd-current-version`` for ABORTED,
    ``optd-rejoin`` for FAILED_PRECONDITION and ``optd-server-incarnation`` for all)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    current_version, rejoin, incarnation = None, False, ""
    if hasattr(error, "trailing_metadata"):
        for key, value in error.trailing_metadata() or ():
            if key == SERVER_INCARNATION_METADATA_KEY:
                incarnation = value.decode("utf-8", "replace") if isinstance(value, bytes) \
                    else str(value)
            elif key == CURRENT_VERSION_METADATA_KEY and code == grpc.StatusCode.ABORTED:
                try:
                    current_version = int(value)
                except (TypeError, ValueError):
                    pass
            elif key == REJOIN_METADATA_KEY and code == grpc.StatusCode.FAILED_PRECONDITION:
                rejoin = value in ("1", b"1")
    return error_from_status(code or grpc.StatusCode.UNKNOWN, details or "", current_version,
                             rejoin, incarnation)
