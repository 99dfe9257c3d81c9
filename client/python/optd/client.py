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

import os
import re
import secrets
import socket
import time
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
import numpy as np

from optd import _health, _pb
from optd import config as _config
from optd import native as _native
# DEFAULT: "use the client's (or session's) setting", for ``timeout`` and ``version``.
from optd.forks import DEFAULT, NPZ_FORMAT, _SessionsFromFiles  # noqa: F401 (NPZ_FORMAT)
from optd.errors import InvalidArgumentError, OptdError, UnimplementedError, error_from_rpc
# The results and the retry policy live in results.py; they stay importable from here.
from optd.results import (NO_RETRY, CheckpointResult, PullResult, RetryPolicy, StepResult,
                          _decode_all, _point_name, _point_value)
from optd.security import Pem, Security, retriable
from optd.state import OptimizerState
from optd.tensors import DTypeLike, dtype_value, to_tensor

__all__ = ["Client", "Session", "StepStream", "StepResult", "PullResult", "CheckpointResult",
           "RetryPolicy", "NO_RETRY", "Gradients", "DEFAULT_ADDRESS",
           "DEFAULT_MAX_RECONNECT_BACKOFF"]

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE_BYTES = 256 << 20
#: Seconds: the longest gRPC waits between attempts to reconnect to a server that went away
#: (gRPC's own default is 120 s), so a restarted server is found within about a second.
DEFAULT_MAX_RECONNECT_BACKOFF = 1.0

#: Gradients (or initial values): a mapping name -> array-like / RowSparse / torch tensor, or a
#: sequence of (name, value) pairs.
Gradients = Union[Mapping[str, Any], Sequence[Tuple[str, Any]]]


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


class Client(_SessionsFromFiles):
    """A connection to one optd server (the optd.v1.Optimizer service and grpc.health.v1).

    Args:
        address: "host:port" or any gRPC target ("dns:///host:port", "unix:/path"). A list of
            addresses, one per shard of a sharded deployment, makes an optd.ShardedClient instead
            (same options; see optd.sharded).
        timeout: default deadline of each call in seconds (``None``: none). Each method also takes
            ``timeout=``.
        retry: the RetryPolicy of retriable calls (reads and keyed Steps).
        tls_ca: the CA certificate (PEM file path, or PEM bytes) the server's certificate must
            chain to; turns TLS on. ``tls=True``: TLS with the system's root certificates.
        tls_cert, tls_key: the client certificate and its key (PEM), for a server that requires
            client certificates (mTLS, optd --tls_client_ca); they turn TLS on too.
        tls_server_name: the name the server's certificate must hold, when not the host of
            ``address``.
        token: bearer token sent as ``authorization: Bearer <token>`` with every call (streams
            included); None (default): the ``OPTD_TOKEN`` environment variable; "": none. Over a
            plaintext channel (no TLS) only for loopback. See optd.security for the errors.
        credentials: grpc.ChannelCredentials for a TLS channel built by the caller (not with
            the tls_* arguments; default: insecure unless tls_* are given).
        metadata: (key, value) pairs sent with every call.
        max_message_bytes: largest message sent or received; the default matches the server's.
        wait_for_ready: True: calls wait (until their deadline) for the server to come up instead
            of failing at once with UNAVAILABLE.
        max_reconnect_backoff: seconds; caps gRPC's wait between reconnection attempts (channel
            option ``grpc.max_reconnect_backoff_ms``) so a restarted server is found quickly.
        channel_options: extra gRPC channel arguments (they win over the ones above).
        channel: use this channel instead of making one (address and channel options are ignored).
        native: steps through the native extension (optd.native): None (default) when available
            and possible (no ``credentials``, no ``channel``; TLS and the token as above are
            carried over), False never, True always (else UnimplementedError saying why not).

    Connecting is lazy: an unreachable server shows up as UnavailableError on the first call.
    Use as a context manager, or call close().
    """

    def __new__(cls, address: Any = DEFAULT_ADDRESS, **options: Any):
        # A list of addresses is a sharded deployment (optd.sharded).
        if isinstance(address, (list, tuple)):
            from optd.sharded import ShardedClient  # pylint: disable=import-outside-toplevel
            return ShardedClient(address, **options)
        return super().__new__(cls)

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: Optional[float] = 30.0,
                 retry: RetryPolicy = RetryPolicy(),
                 tls: bool = False, tls_ca: Optional[Pem] = None,
                 tls_cert: Optional[Pem] = None, tls_key: Optional[Pem] = None,
                 tls_server_name: Optional[str] = None, token: Optional[str] = None,
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
        if channel is not None and (tls or tls_ca is not None or tls_cert is not None or
                                    tls_key is not None or tls_server_name is not None):
            raise InvalidArgumentError("tls/tls_ca/tls_cert/tls_key/tls_server_name make the "
                                       "channel: not with channel= (whose credentials are its own)")
        #: TLS and token settings, and the explanations of refusals (optd.security).
        self.security = Security(address if channel is None else "the server", tls=tls,
                                 tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                                 tls_server_name=tls_server_name, token=token,
                                 credentials=credentials)
        given_keys = {key.lower() for key, _ in metadata}
        self.metadata: Tuple[Tuple[str, str], ...] = tuple(metadata) + tuple(
            kv for kv in self.security.metadata() if kv[0] not in given_keys)
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
            options = [(k, v) for k, v in defaults if k not in given] + \
                self.security.channel_options() + list(channel_options)
            credentials = self.security.credentials
            channel = (grpc.secure_channel(address, credentials, options=options)
                       if credentials is not None else
                       grpc.insecure_channel(address, options=options))
        self.channel: grpc.Channel = channel
        # Steps take the native path (optd/native.py) when the extension can make the same channel
        # (plaintext or this client's TLS settings; not the caller's credentials= or channel=).
        self._native: Optional[_native.LazyTransport] = None
        possible = (_native.available() and self._owns_channel and
                    not self.security.custom_credentials)
        if native and not possible:
            raise UnimplementedError(
                "native=True: " + (_native.reason() or "the native path makes its own channel; "
                                   "not with credentials= or channel="))
        if possible and native is not False:
            self._native = _native.LazyTransport(
                address, timeout=timeout, max_message_bytes=max_message_bytes,
                wait_for_ready=wait_for_ready, max_reconnect_backoff=max_reconnect_backoff,
                metadata=self.metadata, security=self.security,
                channel_options=self.security.channel_options() + list(channel_options))
        self.pb2 = _pb.pb2()
        self.stub = _pb.pb2_grpc().OptimizerStub(channel)
        self._health = channel.unary_unary("/grpc.health.v1.Health/Check",
                                           request_serializer=_health.encode_request,
                                           response_deserializer=_health.decode_status)

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
                error = self.rpc_error(e, method)
            if attempt >= policy.max_attempts or not retriable(error, policy.retry_codes):
                error.attempts = attempt
                # Name what was tried, as the C++ client does (not for an explained TLS failure).
                if error.code in _TRANSPORT_CODES and not getattr(error, "tls_failure", False):
                    error.message = (f"{error.message} [{method} to {self.address}: {attempt} "
                                     f"attempt{'' if attempt == 1 else 's'} in "
                                     f"{time.monotonic() - start:.2f} s"
                                     f"{', not retried' if policy.max_attempts == 1 else ''}]")
                    error.args = (error.message,)
                raise error
            time.sleep(policy.backoff(attempt))

    def rpc_error(self, error: grpc.RpcError, method: str) -> OptdError:
        """The typed OptdError of a failed call of ``method``, refusals explained (see
        optd.security: a refused token, a refused call, a failed TLS handshake)."""
        return self.security.explain(error_from_rpc(error), method)

    def create_session(self, tensors: Gradients, optimizer: Any = "adam", *,
                       session_id: str = "", schedule: Any = None, clipping: Any = None,
                       consistency: Any = None, worker_id: Optional[str] = None,
                       timeout: Any = DEFAULT,
                       param_groups: Optional[Sequence[Mapping[str, Any]]] = None,
                       **hyperparameters: Any) -> "Session":
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
            param_groups: parameter groups (torch.optim's param_groups), each a dict
                {"tensors": [names], hyperparameter: value, ...} whose values override the
                session's for those tensors; the tensors in no group take the session's.

        Raises AlreadyExistsError, InvalidArgumentError (the message names the field),
        ResourceExhaustedError.
        """
        pb2 = self.pb2
        if isinstance(optimizer, pb2.SessionConfig):
            if hyperparameters or schedule is not None or clipping is not None or \
                    consistency is not None or param_groups is not None:
                raise InvalidArgumentError("create_session: with a SessionConfig, give no other "
                                           "configuration arguments")
            config = optimizer
        else:
            config = _config.session_config(optimizer, schedule=schedule, clipping=clipping,
                                            consistency=consistency, param_groups=param_groups,
                                            **hyperparameters)
        request = pb2.CreateSessionRequest(session_id=session_id, config=config,
                                           tensors=_tensors(tensors))
        info, _ = self._call("CreateSession", request, timeout)
        return Session(self, info.session_id, worker_id=worker_id, version=info.version,
                       info=info)

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
                       timeout: Any = DEFAULT,
                       param_groups: Optional[Mapping[int, Mapping[str, Any]]] = None,
                       **hyperparameters: Any):
        """Changes hyperparameters for the next step, keeping the optimizer state; returns the
        updated optd_pb2.Session.

        ``optimizer`` is the session's kind (or an OptimizerConfig); with only keywords
        (``update_session(id, lr=0.01)``) the kind is read from the session first. Only the fields
        given change. ``schedule`` replaces the schedule (starting at the current step);
        ``clipping`` replaces the clipping (a number means max_norm). ``optimizer_state`` (an
        optd.OptimizerState, or an optd_pb2.OptimizerState) replaces the optimizer state: refused
        whole (InvalidArgumentError, nothing changed) if it does not fit the session's optimizer.
        ``param_groups`` {index: {hyperparameter: value}} changes parameter groups' (the
        session's ``config.param_groups[index]``); the keywords change the session's own (the
        tensors in no group).
        """
        pb2 = self.pb2
        request = pb2.UpdateSessionRequest(session_id=session_id)
        if optimizer is None and (hyperparameters or param_groups):
            optimizer = _config.optimizer_kind(self.get_session(session_id,
                                                                timeout=timeout).config.optimizer)
        if optimizer is not None and (hyperparameters or not param_groups or
                                      not isinstance(optimizer, str)):
            request.optimizer.CopyFrom(_config.optimizer_config(optimizer, **hyperparameters))
        for index, fields in (param_groups or {}).items():
            request.param_groups.add(index=index, optimizer=_config.optimizer_config(
                _config.optimizer_kind(_config.optimizer_config(optimizer)), **fields))
        if schedule is not None:
            request.schedule.CopyFrom(_config._as(_config.schedule, schedule))
        if clipping is not None:
            request.clipping.CopyFrom(_config._as(_config.clipping, clipping))
        if optimizer_state is not None:
            request.optimizer_state.CopyFrom(
                optimizer_state.to_proto() if isinstance(optimizer_state, OptimizerState)
                else optimizer_state)
        return self._call("UpdateSession", request, timeout)[0]

    def restore_session(self, session_id: str, version: int, *, timeout: Any = DEFAULT):
        """Restores the session to its checkpoint at exactly ``version`` (one of
        ``get_session(id).checkpoint_versions``; UpdateSessionRequest.restore_version): its
        parameters, optimizer state, schedule and exactly-once table become the checkpoint's and
        later checkpoints are removed; steps in flight end with AbortedError. Returns the
        restored optd_pb2.Session. FailedPreconditionError without --checkpoint_dir,
        NotFoundError for a version with no checkpoint."""
        request = self.pb2.UpdateSessionRequest(session_id=session_id,
                                                restore_version=int(version))
        return self._call("UpdateSession", request, timeout)[0]

    def delete_session(self, session_id: str, *, timeout: Any = DEFAULT) -> None:
        """Deletes the session. NotFoundError if there is none."""
        self._call("DeleteSession", self.pb2.DeleteSessionRequest(session_id=session_id), timeout)

    def pull(self, session_id: str, names: Optional[Sequence[str]] = None, *,
             dtype: DTypeLike = "f32", rows: Optional[Mapping[str, Sequence[int]]] = None,
             optimizer_state: bool = False, point: Union[str, int] = "training",
             timeout: Any = DEFAULT) -> PullResult:
        """Reads parameters without stepping: ``names`` (all, in creation order, when None) as
        ``dtype`` on the wire, decoded to float32; ``rows`` {name: indices} reads only those rows
        (as RowSparse). ``optimizer_state=True`` also returns the whole optimizer state
        (PullResult.optimizer_state, an optd.OptimizerState at the same version; not with
        ``rows``). ``point="evaluation"`` reads the evaluation point of an optimizer that keeps
        one (Schedule-Free's x, DoG's iterate average; FailedPreconditionError for others)."""
        pb2 = self.pb2
        request = pb2.PullRequest(session_id=session_id, names=list(names or ()),
                                  dtype=dtype_value(dtype),
                                  include_optimizer_state=bool(optimizer_state),
                                  point=_point_value(point))
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
                          durable_version=reply.durable_version, optimizer_state=state,
                          point=_point_name(reply.point))

    def step_request(self, session_id: str, gradients: Gradients, *, worker_id: str = "",
                     sequence: int = 0, version: Optional[int] = None,
                     loss: Optional[float] = None, return_parameters: Union[str, bool] = "all",
                     return_dtype: DTypeLike = "f32", gradient_dtype: DTypeLike = "f32",
                     worker_incarnation: int = 0, return_point: Union[str, int] = "training"):
        """The optd_pb2.StepRequest that step() would send."""
        request = self.pb2.StepRequest(session_id=session_id, worker_id=worker_id or "",
                                       gradients=_tensors(gradients, gradient_dtype),
                                       return_parameters=_return_mode(return_parameters),
                                       return_dtype=dtype_value(return_dtype),
                                       sequence=int(sequence),
                                       worker_incarnation=int(worker_incarnation),
                                       return_point=_point_value(return_point))
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
             out: Optional[Mapping[str, np.ndarray]] = None,
             return_point: Union[str, int] = "training") -> StepResult:
        """Applies one gradient per session tensor (dense arrays or RowSparse): all or nothing.

        A raw step: Session.step is the worker loop's call (it joins, numbers and rejoins).
        ``worker_id`` + ``sequence`` (> 0, increasing per worker) make the step idempotent; only
        then is it retried (per ``retry``, default the client's policy) on UNAVAILABLE or
        DEADLINE_EXCEEDED, and a retry of an applied step comes back with ``duplicate=True``.
        ``worker_incarnation`` is the worker's incarnation from join_session (0: the worker did
        not join, and its sequences follow the unjoined rules). ``version`` is the session
        version the gradient was computed at (required in SYNC and BOUNDED sessions).
        ``return_parameters``: "all", "none" or "touched"; ``return_dtype``/``gradient_dtype``:
        "f32", "bf16" or "f16" on the wire. ``return_point="evaluation"``: the returned parameters
        are the evaluation point (Schedule-Free's x; with "all" or "none").

        ``out`` {name: writable float32 C-contiguous array}: each dense returned parameter of that
        name and size is written into its array (in place; StepResult.parameters holds the array).

        Raises NotFoundError, InvalidArgumentError, AbortedError (``.current_version``),
        FailedPreconditionError (a reused sequence; ``.rejoin`` when the worker must join
        again), DeadlineExceededError, UnavailableError.
        """
        request = self._new_step(session_id, gradients, worker_id=worker_id, sequence=sequence,
                                 version=version, loss=loss, return_parameters=return_parameters,
                                 return_dtype=return_dtype, gradient_dtype=gradient_dtype,
                                 worker_incarnation=worker_incarnation, return_point=return_point)
        return self.send_step(request, timeout=timeout, retry=retry, out=out)

    def _new_step(self, session_id: str, gradients: Gradients, *, worker_id: str = "",
                  sequence: int = 0, version: Optional[int] = None, loss: Optional[float] = None,
                  return_parameters: Union[str, bool] = "all", return_dtype: DTypeLike = "f32",
                  gradient_dtype: DTypeLike = "f32", worker_incarnation: int = 0,
                  return_point: Union[str, int] = "training"):
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
                    dtype_value(return_dtype), dtype_value(gradient_dtype),
                    _point_value(return_point))
        return self.step_request(session_id, gradients, worker_id=worker_id, sequence=sequence,
                                 version=version, loss=loss, return_parameters=return_parameters,
                                 return_dtype=return_dtype, gradient_dtype=gradient_dtype,
                                 worker_incarnation=worker_incarnation, return_point=return_point)

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
                              server_incarnation=f[10], durable_version=f[11],
                              point=_point_name(f[12]), estimates=f[13])
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
            raise self.rpc_error(e, "Health") from None
        return status == 1  # SERVING


# Defined in modules of their own, which import the names above: bound here last, so that
# ``optd.client.Session`` and ``optd.client.StepStream`` keep working.
from optd.session import Session  # noqa: E402  pylint: disable=wrong-import-position,cyclic-import
from optd.stream import StepStream  # noqa: E402  pylint: disable=wrong-import-position
