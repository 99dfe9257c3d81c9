"""optd.Client: the Python client of an optd server (optd.Session and optd.StepStream, in
session.py and stream.py, are described here too).

    import numpy as np, optd

    client = optd.Client("127.0.0.1:50051")
    session = client.create_session({"w": np.zeros((784, 10), np.float32)}, "adam", lr=1e-3)
    result = session.step({"w": grad}, loss=0.7)       # new version and parameters back
    w = result.parameters["w"]                          # float32 ndarray (read-only view)

Thread safety: a Client is thread-safe (one gRPC channel; every call has its own context). A Session
is one worker (one worker_id with its own increasing sequence numbers): drive it from one thread;
give each thread or process its own Session (``client.session(id, worker_id=...)``). A StepStream
is not thread-safe.

Workers and joins: before its first step a Session joins the session (JoinSession) as its worker
id. Each join starts a new *incarnation* of the worker: its steps carry the incarnation and number
their sequences 1, 2, 3, ... from there, so a restarted process that uses the same worker id is
never mistaken for the old one (whose late retries the server refuses). When the server can no
longer place the worker (FailedPreconditionError with ``rejoin``: it forgot the worker, or another
process joined with the same id) the Session joins again and resends the step if nothing was
applied; if the refused call was a retry of an attempt whose reply was lost, it raises
``StepOutcomeUnknownError`` instead (the step may or may not have been applied) and the next step
works.

Deadlines: every call takes ``timeout`` (seconds; ``None`` = no deadline); the default is the
Client's ``timeout`` (30 s).

Errors: every failure raises the typed subclass of ``optd.OptdError`` for its gRPC code.

Retries: reads (GetSession, ListSessions, Pull), JoinSession and Steps that carry an idempotency
key (``worker_id`` + ``sequence`` > 0; Session.step always sends one) are retried on UNAVAILABLE and
DEADLINE_EXCEEDED with exponential backoff (``RetryPolicy``). A retried Step reuses its key, so
the server applies it at most once and answers the retry with the first outcome
(``StepResult.duplicate``). CreateSession, UpdateSession, DeleteSession and unkeyed Steps are never
retried. (A retried JoinSession whose first reply was lost only leaves an unused incarnation.)
The default policy (10 attempts, 0.1 s doubling to 2 s, about 11 s in all) and the channel's
reconnect backoff, capped at 1 s, outlast a server restart of a few seconds.

Server restarts (durability): every reply names the server process that sent it
(``server_incarnation``) and the session's newest checkpointed version (``durable_version``). A
Session remembers the incarnation of its last reply; a reply from another process means the server
restarted and restored the session from its newest checkpoint (``StepResult.server_restarted``,
``Session.server_restarts``), and the Session's version follows the restored server, even when it
is lower. A step computed at a version the restored session no longer has is refused with
``AbortedError`` (``server_restarted = True``, ``current_version`` the restored version): pull and
go on. ``stream_steps`` reopens a failed stream and resends the unanswered step with the same
sequence number, within the retry budget.
"""

import dataclasses
import json
import os
import random
import re
import secrets
import socket
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
import numpy as np
from google.protobuf import json_format

from optd import _pb
from optd import config as _config
from optd import native as _native
from optd.errors import (InternalError, InvalidArgumentError, OptdError, UnimplementedError,
                         error_from_rpc)
from optd.state import OptimizerState
from optd.tensors import DTypeLike, RowSparse, dtype_value, from_tensor, to_tensor

__all__ = ["Client", "Session", "StepStream", "StepResult", "PullResult", "CheckpointResult",
           "RetryPolicy", "NO_RETRY", "Gradients", "DEFAULT_ADDRESS",
           "DEFAULT_MAX_RECONNECT_BACKOFF"]

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE_BYTES = 256 << 20
#: Seconds: the longest gRPC waits between attempts to reconnect to a server that went away
#: (gRPC's own default is 120 s), so a restarted server is found within about a second.
DEFAULT_MAX_RECONNECT_BACKOFF = 1.0

#: The "format" of the config.json inside a Session.to_npz file.
NPZ_FORMAT = "optd-session-npz-1"

#: Gradients (or initial values): a mapping name -> array-like / RowSparse / torch tensor, or a
#: sequence of (name, value) pairs.
Gradients = Union[Mapping[str, Any], Sequence[Tuple[str, Any]]]


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


#: "Use the client's (or session's) setting", for ``timeout`` and ``version`` arguments.
DEFAULT: Any = _Default()


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """When and how often a retriable call is tried again.

    ``max_attempts`` counts the first try (1 = no retry). The n-th retry waits
    ``min(max_backoff, initial_backoff * multiplier**(n-1))``, scaled by a random factor in
    ``[1 - jitter, 1 + jitter]``. Only the codes in ``retry_codes`` are retried. The default, 10
    attempts waiting 0.1 s doubling to 2 s (about 11 s in all), outlasts a server restart.
    """
    max_attempts: int = 10
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2
    retry_codes: frozenset = frozenset({grpc.StatusCode.UNAVAILABLE,
                                        grpc.StatusCode.DEADLINE_EXCEEDED})

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidArgumentError(f"RetryPolicy.max_attempts = {self.max_attempts}; must be "
                                       f">= 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1 or \
                not 0 <= self.jitter <= 1:
            raise InvalidArgumentError(f"RetryPolicy {self}: backoffs must be >= 0, multiplier "
                                       f">= 1 and jitter in [0, 1]")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first retry)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return base * (1.0 + self.jitter * (2.0 * random.random() - 1.0))


#: A policy that never retries.
NO_RETRY = RetryPolicy(max_attempts=1)


@dataclasses.dataclass
class StepResult:
    """The outcome of one step."""
    #: The session's version after this step.
    version: int
    #: Parameters after the step by name, in the server's order: float32 ndarrays (read-only views
    #: of the reply for F32), or RowSparse for touched rows. Empty with return_parameters="none".
    parameters: Dict[str, Union[np.ndarray, RowSparse]]
    #: The version of ``parameters``: ``version``, or later for a duplicate.
    parameters_version: int
    #: L2 norm of the gradient as received, before clipping (SYNC: of the combined gradient).
    gradient_norm: float
    #: The learning rate the step used.
    learning_rate: float
    #: True if this answers a retry: the step had been applied once, earlier.
    duplicate: bool
    #: SYNC: gradients combined into the step, and the expected workers that were missing.
    workers: int
    missing_workers: List[str]
    #: Session version at arrival minus the version the gradient was computed at.
    staleness: int
    #: The idempotency key sent (0: none) and how many attempts the call took (of the last
    #: request sent: a step resent after a join counts again from 1).
    sequence: int = 0
    attempts: int = 1
    #: The worker incarnation the step was sent with (0: none), and how many times the worker
    #: joined again during this step (the server had forgotten it; nothing was applied before).
    worker_incarnation: int = 0
    rejoins: int = 0
    #: The server process that answered (new at each server start), and the session's newest
    #: checkpointed version (-1: none, or no --checkpoint_dir): steps after it are lost if the
    #: server is killed.
    server_incarnation: str = ""
    durable_version: int = -1
    #: Set by a Session: the reply came from another server process than the session's previous
    #: reply (the server restarted and restored the session from its checkpoint).
    server_restarted: bool = False

    @classmethod
    def from_proto(cls, reply, sequence: int = 0, attempts: int = 1,
                   worker_incarnation: int = 0) -> "StepResult":
        return cls(version=reply.version, parameters=_decode_all(reply.parameters),
                   parameters_version=reply.parameters_version,
                   gradient_norm=reply.gradient_norm, learning_rate=reply.learning_rate,
                   duplicate=reply.duplicate, workers=reply.workers,
                   missing_workers=list(reply.missing_workers), staleness=reply.staleness,
                   sequence=sequence, attempts=attempts, worker_incarnation=worker_incarnation,
                   server_incarnation=reply.server_incarnation,
                   durable_version=reply.durable_version)


@dataclasses.dataclass
class PullResult:
    """Parameters read without stepping."""
    version: int
    #: By name, in the order asked (all: creation order); RowSparse for tensors pulled by rows.
    tensors: Dict[str, Union[np.ndarray, RowSparse]]
    #: See StepResult.
    server_incarnation: str = ""
    durable_version: int = -1
    #: With ``pull(optimizer_state=True)``: the optimizer state at ``version``.
    optimizer_state: Optional[OptimizerState] = None


@dataclasses.dataclass
class CheckpointResult:
    """A checkpoint the server wrote (Checkpoint RPC)."""
    #: The session version checkpointed.
    version: int
    #: The file, on the server's file system (``<checkpoint_dir>/session-<id>/<version>.ckpt``).
    path: str
    #: Its size.
    bytes: int


def _decode_all(tensors) -> Dict[str, Union[np.ndarray, RowSparse]]:
    out = {}
    for t in tensors:
        try:
            out[t.name] = from_tensor(t)
        except InvalidArgumentError as e:
            raise InternalError(f"cannot decode the server's tensor {t.name!r}: {e.message}") \
                from None
    return out


def _items(values: Gradients) -> List[Tuple[str, Any]]:
    if isinstance(values, Mapping):
        return list(values.items())
    items = list(values)
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise InvalidArgumentError("tensors must be a mapping name -> array or a sequence of "
                                       "(name, array) pairs")
    return items


def _tensors(values: Gradients, dtype: DTypeLike = "f32") -> list:
    return [to_tensor(name, value, dtype) for name, value in _items(values)]


_RETURN = {"all": 0, "none": 1, "touched": 2}
_RETURN_MODES = dict(_RETURN)  # the exact names, for the step path's fast lookup
#: Codes of a server that could not be reached or answer in time: their errors name the address
#: and the attempts made.
_TRANSPORT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _return_mode(value: Union[str, bool, int]) -> int:
    if isinstance(value, bool):
        return 0 if value else 1
    if isinstance(value, str):
        mode = _RETURN.get(value.lower().replace("return_parameters_", ""))
        if mode is None:
            raise InvalidArgumentError(f"return_parameters = {value!r}; must be 'all', 'none' or "
                                       f"'touched'")
        return mode
    if int(value) in (0, 1, 2):
        return int(value)
    raise InvalidArgumentError(f"return_parameters = {value!r}; must be 'all', 'none' or "
                               f"'touched'")


_WORKER_ID_BAD = re.compile(r"[^A-Za-z0-9._:-]")


def default_worker_id() -> str:
    """A worker id unique to this process and call: ``py-<host>-<pid>-<random>``."""
    host = _WORKER_ID_BAD.sub("_", socket.gethostname())[:64]
    return f"py-{host}-{os.getpid()}-{secrets.token_hex(4)}"


class Client:
    """A connection to one optd server (the optd.v1.Optimizer service and grpc.health.v1).

    Args:
        address: "host:port" or any gRPC target ("dns:///host:port", "unix:/path").
        timeout: default deadline of each call in seconds (``None``: none). Each method also takes
            ``timeout=``.
        retry: the RetryPolicy of retriable calls (reads and keyed Steps).
        credentials: grpc.ChannelCredentials for a TLS channel (default: insecure).
        metadata: (key, value) pairs sent with every call (e.g. an authorization token).
        max_message_bytes: largest message sent or received; the default matches the server's.
        wait_for_ready: True: calls wait (until their deadline) for the server to come up instead
            of failing at once with UNAVAILABLE.
        max_reconnect_backoff: seconds; caps gRPC's wait between reconnection attempts (channel
            option ``grpc.max_reconnect_backoff_ms``) so a restarted server is found quickly.
        channel_options: extra gRPC channel arguments (they win over the ones above).
        channel: use this channel instead of making one (address and channel options are ignored).
        native: steps through the native extension (optd.native): None (default) when available
            and possible (no ``credentials``, no ``channel``), False never, True always (else
            UnimplementedError saying why not).

    Connecting is lazy: an unreachable server shows up as UnavailableError on the first call.
    Use as a context manager, or call close().
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: Optional[float] = 30.0,
                 retry: RetryPolicy = RetryPolicy(),
                 credentials: Optional[grpc.ChannelCredentials] = None,
                 metadata: Sequence[Tuple[str, str]] = (),
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 wait_for_ready: bool = False,
                 max_reconnect_backoff: float = DEFAULT_MAX_RECONNECT_BACKOFF,
                 channel_options: Sequence[Tuple[str, Any]] = (),
                 channel: Optional[grpc.Channel] = None,
                 native: Optional[bool] = None) -> None:
        if channel is None and not address:
            raise InvalidArgumentError("address is empty; expected host:port")
        if not 1 <= max_message_bytes <= 2**31 - 1:
            raise InvalidArgumentError(f"max_message_bytes = {max_message_bytes}; must be in "
                                       f"[1, 2^31 - 1]")
        if timeout is not None and timeout <= 0:
            raise InvalidArgumentError(f"timeout = {timeout}; must be > 0 seconds or None")
        self.address = address
        self.timeout = timeout
        self.retry = retry
        self.metadata: Tuple[Tuple[str, str], ...] = tuple(metadata)
        self.wait_for_ready = wait_for_ready
        self._owns_channel = channel is None
        if not max_reconnect_backoff > 0:
            raise InvalidArgumentError(f"max_reconnect_backoff = {max_reconnect_backoff}; must be "
                                       f"> 0 seconds")
        if channel is None:
            backoff_ms = max(1, int(max_reconnect_backoff * 1000))
            given = {key for key, _ in channel_options}
            defaults = [("grpc.max_send_message_length", max_message_bytes),
                        ("grpc.max_receive_message_length", max_message_bytes),
                        ("grpc.max_reconnect_backoff_ms", backoff_ms),
                        ("grpc.initial_reconnect_backoff_ms", min(backoff_ms, 100))]
            options = [(k, v) for k, v in defaults if k not in given] + list(channel_options)
            channel = (grpc.secure_channel(address, credentials, options=options)
                       if credentials is not None else
                       grpc.insecure_channel(address, options=options))
        self.channel: grpc.Channel = channel
        # Steps take the native path (optd/native.py) when the extension can make the same channel.
        self._native: Optional[_native.LazyTransport] = None
        possible = _native.available() and self._owns_channel and credentials is None
        if native and not possible:
            raise UnimplementedError(
                "native=True: " + (_native.reason() or "the native path makes its own insecure "
                                   "channel; not with credentials= or channel="))
        if possible and native is not False:
            self._native = _native.LazyTransport(
                address, timeout=timeout, max_message_bytes=max_message_bytes,
                wait_for_ready=wait_for_ready, max_reconnect_backoff=max_reconnect_backoff,
                metadata=self.metadata, channel_options=list(channel_options))
        self.pb2 = _pb.pb2()
        self.stub = _pb.pb2_grpc().OptimizerStub(channel)
        self._health = channel.unary_unary("/grpc.health.v1.Health/Check",
                                           request_serializer=_health_request,
                                           response_deserializer=_health_status)

    # -- lifetime ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the channel (if the client made it). Idempotent."""
        if self._owns_channel and self.channel is not None:
            self.channel.close()
        if self._native is not None:
            self._native.close()
        self._owns_channel = False

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"optd.Client({self.address!r})"

    @property
    def native(self) -> bool:
        """Whether this client's steps take the native path (optd.native)."""
        return self._native is not None

    # -- calls -------------------------------------------------------------------------------------

    def _deadline(self, timeout: Any) -> Optional[float]:
        return self.timeout if timeout is DEFAULT else timeout

    def _call(self, method: str, request, timeout: Any = DEFAULT,
              retry: Optional[RetryPolicy] = None):
        """Calls ``method`` with the client's deadline and metadata; retries per ``retry`` (None:
        no retry). Returns (reply, attempts); raises the typed OptdError, with ``attempts`` set
        to the number of calls made."""
        policy = retry or NO_RETRY
        fn = getattr(self.stub, method)
        deadline = self._deadline(timeout)
        attempt, start = 0, time.monotonic()
        while True:
            attempt += 1
            try:
                reply = fn(request, timeout=deadline, metadata=self.metadata or None,
                           wait_for_ready=self.wait_for_ready)
                return reply, attempt
            except grpc.RpcError as e:
                error = error_from_rpc(e)
            if attempt >= policy.max_attempts or error.code not in policy.retry_codes:
                error.attempts = attempt
                if error.code in _TRANSPORT_CODES:  # name what was tried, as the C++ client does
                    error.message = (f"{error.message} [{method} to {self.address}: {attempt} "
                                     f"attempt{'' if attempt == 1 else 's'} in "
                                     f"{time.monotonic() - start:.2f} s"
                                     f"{', not retried' if policy.max_attempts == 1 else ''}]")
                    error.args = (error.message,)
                raise error
            time.sleep(policy.backoff(attempt))

    def create_session(self, tensors: Gradients, optimizer: Any = "adam", *,
                       session_id: str = "", schedule: Any = None, clipping: Any = None,
                       consistency: Any = None, worker_id: Optional[str] = None,
                       timeout: Any = DEFAULT, **hyperparameters: Any) -> "Session":
        """Creates a session and returns it as a Session (this process's worker on it).

        Args:
            tensors: the parameters and their initial values (name -> array; sent as float32).
            optimizer: a kind ("adam", "sgd", "normalized_gd", ...; see optd.OPTIMIZERS) with its
                hyperparameters as keywords (proto names; ``betas=`` accepted), or an
                OptimizerConfig, or a full SessionConfig (then no other config arguments).
            session_id: client-chosen id (1-128 of [A-Za-z0-9._-]); empty: the server makes one.
            schedule, clipping, consistency: see optd.schedule / optd.clipping /
                optd.consistency (a message, a dict or a name).
            worker_id: the Session's worker id (default: generated, unique per process).

        Raises AlreadyExistsError, InvalidArgumentError (the message names the field),
        ResourceExhaustedError.
        """
        pb2 = self.pb2
        if isinstance(optimizer, pb2.SessionConfig):
            if hyperparameters or schedule is not None or clipping is not None or \
                    consistency is not None:
                raise InvalidArgumentError("create_session: with a SessionConfig, give no other "
                                           "configuration arguments")
            config = optimizer
        else:
            config = _config.session_config(optimizer, schedule=schedule, clipping=clipping,
                                            consistency=consistency, **hyperparameters)
        request = pb2.CreateSessionRequest(session_id=session_id, config=config,
                                           tensors=_tensors(tensors))
        info, _ = self._call("CreateSession", request, timeout)
        return Session(self, info.session_id, worker_id=worker_id, version=info.version,
                       info=info)

    def create_session_from_checkpoint(self, session_id: str, path: Optional[str] = None, *,
                                       from_session: Optional[str] = None, optimizer: Any = None,
                                       worker_id: Optional[str] = None, timeout: Any = DEFAULT,
                                       **hyperparameters: Any) -> "Session":
        """Creates session ``session_id`` from a checkpoint (a fork): its parameters, optimizer
        state, schedule state and version, with a new exactly-once table.

        Args:
            session_id: the new session's id.
            path: a checkpoint file on the server (CheckpointResult.path), or
            from_session: a session id whose newest checkpoint to use (exactly one of the two).
            optimizer, hyperparameters: new hyperparameters replacing the checkpoint's (same
                optimizer kind), e.g. ``lr=0.01``. With only keywords the kind is read from
                ``from_session`` (GetSession) or, for ``path``, from the file when this machine
                can read it; otherwise give ``optimizer=``.
            worker_id: the returned Session's worker id.

        Needs a server with --checkpoint_dir (FailedPreconditionError without); NotFoundError for
        no such checkpoint.
        """
        if (path is None) == (from_session is None):
            raise InvalidArgumentError("create_session_from_checkpoint: give exactly one of path= "
                                       "and from_session=")
        pb2 = self.pb2
        request = pb2.CreateSessionRequest(session_id=session_id, from_checkpoint=path or "",
                                           from_session_checkpoint=from_session or "")
        if optimizer is not None or hyperparameters:
            if optimizer is None:
                optimizer = self._checkpoint_kind(path, from_session, timeout)
            request.config.optimizer.CopyFrom(_config.optimizer_config(optimizer,
                                                                       **hyperparameters))
        info, _ = self._call("CreateSession", request, timeout)
        return Session(self, info.session_id, worker_id=worker_id, version=info.version,
                       info=info)

    def _checkpoint_kind(self, path: Optional[str], from_session: Optional[str],
                         timeout: Any) -> str:
        """The optimizer kind of a checkpoint, to build a config from bare hyperparameters."""
        if from_session is not None:
            return _config.optimizer_kind(self.get_session(from_session,
                                                           timeout=timeout).config.optimizer)
        try:
            from optd import checkpoint as _checkpoint  # pylint: disable=import-outside-toplevel
            manifest = _checkpoint.read_manifest(path)
        except (OSError, OptdError) as e:
            raise InvalidArgumentError(f"create_session_from_checkpoint: cannot tell the optimizer "
                                       f"kind of {path} from here ({e}); give optimizer=") from None
        kinds = list(manifest.get("config", {}).get("optimizer", {}))
        if len(kinds) != 1:
            raise InvalidArgumentError(f"checkpoint {path} names optimizer {kinds}; give "
                                       f"optimizer=")
        return _config._canonical_kind(kinds[0])

    def create_session_from_npz(self, path: str, *, session_id: str = "",
                                worker_id: Optional[str] = None, timeout: Any = DEFAULT,
                                **hyperparameters: Any) -> "Session":
        """Creates a session from a file written by Session.to_npz: CreateSession with its
        parameters and configuration (``hyperparameters`` replace the saved ones, same kind),
        then UpdateSession with its optimizer state. The new session starts at version 0 (its
        step counters and state are the saved ones). If the state is refused the new session is
        deleted and the error raised."""
        data = np.load(path, allow_pickle=False)
        try:
            meta = json.loads(bytes(data["config.json"]).decode("utf-8"))
            if meta.get("format") != NPZ_FORMAT:
                raise InvalidArgumentError(f"{path} is not an optd session npz (format "
                                           f"{meta.get('format')!r})")
            config = json_format.Parse(json.dumps(meta["config"]), self.pb2.SessionConfig())
            if hyperparameters:
                kind = _config.optimizer_kind(config.optimizer)
                sub = getattr(config.optimizer, kind)
                _config._fill(sub, hyperparameters, f"optimizer.{kind}")
            names = list(meta["tensors"])
            tensors = [(name, np.asarray(data["parameters/" + name], dtype=np.float32))
                       for name in names]
            state = OptimizerState.from_flat(data, names, meta["optimizer_arrays"])
        except KeyError as e:
            raise InvalidArgumentError(f"{path} lacks {e} (not written by Session.to_npz?)") \
                from None
        finally:
            data.close()
        session = self.create_session(tensors, config, session_id=session_id,
                                      worker_id=worker_id, timeout=timeout)
        try:
            session.import_optimizer_state(state, timeout=timeout)
        except OptdError:
            try:
                session.delete(timeout=timeout)
            except OptdError:
                pass
            raise
        return session

    def checkpoint(self, session_id: str, *, timeout: Any = DEFAULT) -> CheckpointResult:
        """Checkpoint RPC: writes a checkpoint of the session now and returns when it is durable
        (retried like a read: writing one twice is harmless). FailedPreconditionError without
        --checkpoint_dir; NotFoundError; ResourceExhaustedError (disk full)."""
        reply, _ = self._call("Checkpoint", self.pb2.CheckpointRequest(session_id=session_id),
                              timeout, self.retry)
        return CheckpointResult(version=reply.version, path=reply.path, bytes=reply.bytes)

    def session(self, session_id: str, *, worker_id: Optional[str] = None,
                version: Optional[int] = None) -> "Session":
        """A Session for an existing session id, without any RPC (use .info() or .pull() to
        check it; the worker joins at its first step). ``worker_id``: this worker's id (required
        by SYNC sessions with worker_ids); default generated. Reusing the id of a worker that ran
        before (a restarted process) is safe: the join starts a new incarnation. ``version``: the
        version the worker's parameters are at, if known."""
        return Session(self, session_id, worker_id=worker_id, version=version)

    def join_session(self, session_id: str, worker_id: str, *, timeout: Any = DEFAULT):
        """JoinSession: starts a new incarnation of ``worker_id`` on the session and returns the
        optd_pb2.JoinSessionResponse (``worker_incarnation``, ``next_sequence``, ``version``).
        Steps of the worker then carry ``worker_incarnation`` and sequences from
        ``next_sequence``; steps of its earlier incarnations are refused. Session.step joins by
        itself: this is for code that builds its own requests. Retried like a read.
        NotFoundError, InvalidArgumentError (a bad worker id)."""
        request = self.pb2.JoinSessionRequest(session_id=session_id, worker_id=worker_id)
        return self._call("JoinSession", request, timeout, self.retry)[0]

    def get_session(self, session_id: str, *, timeout: Any = DEFAULT):
        """The session (optd_pb2.Session: config with defaults filled in, tensors, version,
        learning rate, state bytes). NotFoundError if there is none."""
        return self._call("GetSession", self.pb2.GetSessionRequest(session_id=session_id),
                          timeout, self.retry)[0]

    def list_sessions(self, page_size: int = 0, *, timeout: Any = DEFAULT) -> list:
        """Every session (optd_pb2.Session), sorted by id, following page tokens."""
        sessions, token = [], ""
        while True:
            reply, _ = self._call("ListSessions",
                                  self.pb2.ListSessionsRequest(page_size=page_size,
                                                               page_token=token),
                                  timeout, self.retry)
            sessions.extend(reply.sessions)
            token = reply.next_page_token
            if not token:
                return sessions

    def update_session(self, session_id: str, optimizer: Any = None, *, schedule: Any = None,
                       clipping: Any = None, optimizer_state: Optional[OptimizerState] = None,
                       timeout: Any = DEFAULT, **hyperparameters: Any):
        """Changes hyperparameters for the next step, keeping the optimizer state; returns the
        updated optd_pb2.Session.

        ``optimizer`` is the session's kind (or an OptimizerConfig); with only keywords
        (``update_session(id, lr=0.01)``) the kind is read from the session first. Only the fields
        given change. ``schedule`` replaces the schedule (starting at the current step);
        ``clipping`` replaces the clipping (a number means max_norm). ``optimizer_state`` (an
        optd.OptimizerState, or an optd_pb2.OptimizerState) replaces the optimizer state: refused
        whole (InvalidArgumentError, nothing changed) if it does not fit the session's optimizer.
        """
        pb2 = self.pb2
        request = pb2.UpdateSessionRequest(session_id=session_id)
        if optimizer is None and hyperparameters:
            optimizer = _config.optimizer_kind(self.get_session(session_id,
                                                                timeout=timeout).config.optimizer)
        if optimizer is not None:
            request.optimizer.CopyFrom(_config.optimizer_config(optimizer, **hyperparameters))
        if schedule is not None:
            request.schedule.CopyFrom(_config._as(_config.schedule, schedule))
        if clipping is not None:
            request.clipping.CopyFrom(_config._as(_config.clipping, clipping))
        if optimizer_state is not None:
            request.optimizer_state.CopyFrom(
                optimizer_state.to_proto() if isinstance(optimizer_state, OptimizerState)
                else optimizer_state)
        return self._call("UpdateSession", request, timeout)[0]

    def delete_session(self, session_id: str, *, timeout: Any = DEFAULT) -> None:
        """Deletes the session. NotFoundError if there is none."""
        self._call("DeleteSession", self.pb2.DeleteSessionRequest(session_id=session_id), timeout)

    def pull(self, session_id: str, names: Optional[Sequence[str]] = None, *,
             dtype: DTypeLike = "f32", rows: Optional[Mapping[str, Sequence[int]]] = None,
             optimizer_state: bool = False, timeout: Any = DEFAULT) -> PullResult:
        """Reads parameters without stepping: ``names`` (all, in creation order, when None) as
        ``dtype`` on the wire, decoded to float32; ``rows`` {name: indices} reads only those rows
        (as RowSparse). ``optimizer_state=True`` also returns the whole optimizer state
        (PullResult.optimizer_state, an optd.OptimizerState at the same version; not with
        ``rows``)."""
        pb2 = self.pb2
        request = pb2.PullRequest(session_id=session_id, names=list(names or ()),
                                  dtype=dtype_value(dtype),
                                  include_optimizer_state=bool(optimizer_state))
        for name, indices in (rows or {}).items():
            request.rows.add(name=name, indices=[int(i) for i in np.asarray(indices).ravel()])
        reply, _ = self._call("Pull", request, timeout, self.retry)
        tensors = _decode_all(reply.tensors)
        state = None
        if optimizer_state:
            state = OptimizerState.from_proto(reply.optimizer_state,
                                              None if names else list(tensors))
        return PullResult(version=reply.version, tensors=tensors,
                          server_incarnation=reply.server_incarnation,
                          durable_version=reply.durable_version, optimizer_state=state)

    def step_request(self, session_id: str, gradients: Gradients, *, worker_id: str = "",
                     sequence: int = 0, version: Optional[int] = None,
                     loss: Optional[float] = None, return_parameters: Union[str, bool] = "all",
                     return_dtype: DTypeLike = "f32", gradient_dtype: DTypeLike = "f32",
                     worker_incarnation: int = 0):
        """The optd_pb2.StepRequest that step() would send."""
        request = self.pb2.StepRequest(session_id=session_id, worker_id=worker_id or "",
                                       gradients=_tensors(gradients, gradient_dtype),
                                       return_parameters=_return_mode(return_parameters),
                                       return_dtype=dtype_value(return_dtype),
                                       sequence=int(sequence),
                                       worker_incarnation=int(worker_incarnation))
        if loss is not None:
            request.loss = float(loss)
        if version is not None:
            request.version = int(version)
        return request

    def step(self, session_id: str, gradients: Gradients, *, worker_id: str = "",
             sequence: int = 0, version: Optional[int] = None, loss: Optional[float] = None,
             return_parameters: Union[str, bool] = "all", return_dtype: DTypeLike = "f32",
             gradient_dtype: DTypeLike = "f32", timeout: Any = DEFAULT,
             retry: Optional[RetryPolicy] = None, worker_incarnation: int = 0,
             out: Optional[Mapping[str, np.ndarray]] = None) -> StepResult:
        """Applies one gradient per session tensor (dense arrays or RowSparse): all or nothing.

        A raw step: Session.step is the worker loop's call (it joins, numbers and rejoins).
        ``worker_id`` + ``sequence`` (> 0, increasing per worker) make the step idempotent; only
        then is it retried (per ``retry``, default the client's policy) on UNAVAILABLE or
        DEADLINE_EXCEEDED, and a retry of an applied step comes back with ``duplicate=True``.
        ``worker_incarnation`` is the worker's incarnation from join_session (0: the worker did
        not join, and its sequences follow the unjoined rules). ``version`` is the session
        version the gradient was computed at (required in SYNC and BOUNDED sessions).
        ``return_parameters``: "all", "none" or "touched"; ``return_dtype``/``gradient_dtype``:
        "f32", "bf16" or "f16" on the wire.

        ``out`` {name: writable float32 C-contiguous array}: each dense returned parameter of that
        name and size is written into its array (in place; StepResult.parameters holds the array).

        Raises NotFoundError, InvalidArgumentError, AbortedError (``.current_version``),
        FailedPreconditionError (a reused sequence; ``.rejoin`` when the worker must join
        again), DeadlineExceededError, UnavailableError.
        """
        request = self._new_step(session_id, gradients, worker_id=worker_id, sequence=sequence,
                                 version=version, loss=loss, return_parameters=return_parameters,
                                 return_dtype=return_dtype, gradient_dtype=gradient_dtype,
                                 worker_incarnation=worker_incarnation)
        return self.send_step(request, timeout=timeout, retry=retry, out=out)

    def _new_step(self, session_id: str, gradients: Gradients, *, worker_id: str = "",
                  sequence: int = 0, version: Optional[int] = None, loss: Optional[float] = None,
                  return_parameters: Union[str, bool] = "all", return_dtype: DTypeLike = "f32",
                  gradient_dtype: DTypeLike = "f32", worker_incarnation: int = 0):
        """The request step() sends: an optd.native.NativeStep when the native path takes it
        (dense gradients), else the optd_pb2.StepRequest of step_request."""
        if self._native is not None:
            if isinstance(gradients, dict):
                names, values = list(gradients), list(gradients.values())
            else:
                items = _items(gradients)
                names, values = [n for n, _ in items], [v for _, v in items]
            arrays = [_native.float32_view(v) for v in values]
            if not any(a is None for a in arrays):
                return _native.NativeStep(
                    session_id, names, arrays, worker_id or "", sequence, worker_incarnation,
                    version, loss, _RETURN_MODES.get(return_parameters) if
                    isinstance(return_parameters, str) and return_parameters in _RETURN_MODES
                    else _return_mode(return_parameters),
                    dtype_value(return_dtype), dtype_value(gradient_dtype))
        return self.step_request(session_id, gradients, worker_id=worker_id, sequence=sequence,
                                 version=version, loss=loss, return_parameters=return_parameters,
                                 return_dtype=return_dtype, gradient_dtype=gradient_dtype,
                                 worker_incarnation=worker_incarnation)

    def send_step(self, request, *, timeout: Any = DEFAULT, retry: Optional[RetryPolicy] = None,
                  out: Optional[Mapping[str, np.ndarray]] = None) -> StepResult:
        """Sends a built StepRequest (see step_request; or a NativeStep); retried only if it has
        a key. ``out``: see step. A failure raises its OptdError with ``attempts`` set to the
        calls made."""
        keyed = bool(request.worker_id) and request.sequence > 0
        policy = (retry or self.retry) if keyed else NO_RETRY
        if isinstance(request, _native.NativeStep):
            f = self._native.get().step(request, self._deadline(timeout), policy,
                                        dict(out) if out else None)
            return StepResult(*f[:9], sequence=request.sequence, attempts=f[9],
                              worker_incarnation=request.worker_incarnation,
                              server_incarnation=f[10], durable_version=f[11])
        reply, attempts = self._call("Step", request, timeout, policy)
        result = StepResult.from_proto(reply, sequence=request.sequence, attempts=attempts,
                                       worker_incarnation=request.worker_incarnation)
        for name, target in (out or {}).items():
            value = result.parameters.get(name)
            if isinstance(value, np.ndarray) and value.size == target.size:
                np.copyto(target, value.reshape(target.shape))
                result.parameters[name] = target
        return result

    def stream(self, *, timeout: Any = None) -> "StepStream":
        """Opens a StreamSteps stream for steps of any session (see StepStream). ``timeout`` is
        the deadline of each step's reply (default None: wait as long as it takes)."""
        return StepStream(self, None, step_timeout=self._deadline(timeout))

    def health(self, service: str = "", *, timeout: Any = DEFAULT) -> bool:
        """grpc.health.v1 Check: True if ``service`` ("" = the server, "optd.v1.Optimizer") is
        SERVING. NotFoundError for an unknown service."""
        try:
            status = self._health(service, timeout=self._deadline(timeout),
                                  metadata=self.metadata or None,
                                  wait_for_ready=self.wait_for_ready)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None
        return status == 1  # SERVING


def _health_request(service: str) -> bytes:
    """grpc.health.v1.HealthCheckRequest{service} encoded by hand (no extra stubs needed)."""
    data = service.encode("utf-8")
    if not data:
        return b""
    n, length = len(data), bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return b"\x0a" + bytes(length) + data


def _health_status(data: bytes) -> int:
    """HealthCheckResponse.status (field 1, varint) from its encoding; 0 (UNKNOWN) if absent."""
    i, status = 0, 0
    while i < len(data):
        key = data[i]
        i += 1
        if key == 0x08:
            shift, value = 0, 0
            while True:
                byte = data[i]
                i += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            status = value
        else:  # not expected; stop rather than misparse
            break
    return status


# Defined in modules of their own, which import the names above: bound here last, so that
# ``optd.client.Session`` and ``optd.client.StepStream`` keep working.
from optd.session import Session  # noqa: E402  pylint: disable=wrong-import-position,cyclic-import
from optd.stream import StepStream  # noqa: E402  pylint: disable=wrong-import-position
