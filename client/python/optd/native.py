"""The Python client's native data path: steps through ``optd._native``, a C++ extension over the
C++ client (client/python/native), instead of grpcio.

Chosen automatically: ``optd.Client`` steps through the extension when it can be imported and the
client's channel is one the extension can make itself (an address, plaintext or the client's
``tls_*`` settings; no ``credentials`` and no ``channel`` object); otherwise, and always when the environment variable ``OPTD_PURE_PYTHON`` is
set to anything but "" or "0", steps go through grpcio. Both paths have the same API and give the
same results, bit for bit: the same request bytes, the same retries (``RetryPolicy``), the same
typed errors and messages. TLS, mTLS and the token (``tls_*``, ``token``) are the client's own:
the extension's channel is made of the same PEM bytes and sends the same metadata, and refusals
are explained by the same ``optd.security`` code on both paths. Everything other than Step (sessions, Pull, streams, health) always
goes through grpcio.

What the native path saves: gradients (numpy arrays, or torch CPU tensors through
``Tensor.numpy()``) are read in place through the buffer protocol (no ``tobytes``); BF16 and F16
are converted in C++; parameters come back as read-only numpy views of the reply (F32) or are
decoded straight into caller-given arrays (``out=``: ``RemoteOptimizer`` passes the parameters'
own storage); the GIL is released during the call, so threads of one process overlap.

    optd.native.available()   # True when steps can go native in this process
    optd.native.reason()      # why not, when they cannot
"""

import os
import threading
from typing import Any, Dict, List, Optional, Tuple

import grpc
import numpy as np

from optd.errors import OptdError, error_from_status
from optd.tensors import RowSparse, to_tensor

__all__ = ["available", "reason", "NativeStep", "ENV_PURE_PYTHON"]

#: Set to anything but "" or "0" to force the pure-Python (grpcio) path.
ENV_PURE_PYTHON = "OPTD_PURE_PYTHON"

_CODES = {code.value[0]: code for code in grpc.StatusCode}
_F32 = np.dtype("<f4")
_ext: Any = None
_why = ""


def _load() -> None:
    global _ext, _why
    if os.environ.get(ENV_PURE_PYTHON, "") not in ("", "0"):
        _why = f"{ENV_PURE_PYTHON}={os.environ[ENV_PURE_PYTHON]} forces the pure-Python path"
        return
    try:
        from optd import _native  # pylint: disable=import-outside-toplevel
        _native.set_row_sparse(RowSparse)
        _ext = _native
    except ImportError as e:
        _why = (f"the optd._native extension is not importable ({e}); build it with the "
                f"project's CMake (target optd_native) or install client/python with pybind11-dev")


_load()


def available() -> bool:
    """Whether steps can take the native path in this process."""
    return _ext is not None


def reason() -> str:
    """Why the native path is not available ("" when it is)."""
    return _why


class NativeStep:
    """A step request for the native path: the fields of an optd_pb2.StepRequest, with the
    gradients as float32 C-contiguous arrays (not yet encoded). Built by Client._new_step; sent by
    Client.send_step. ``to_proto()`` gives the equivalent StepRequest."""

    __slots__ = ("session_id", "worker_id", "sequence", "worker_incarnation", "version", "loss",
                 "return_parameters", "return_dtype", "gradient_dtype", "names", "arrays",
                 "return_point")

    def __init__(self, session_id: str = "", names: Optional[List[str]] = None,
                 arrays: Optional[List[np.ndarray]] = None, worker_id: str = "",
                 sequence: int = 0, worker_incarnation: int = 0, version: Optional[int] = None,
                 loss: Optional[float] = None, return_parameters: int = 0,
                 return_dtype: int = 0, gradient_dtype: int = 0, return_point: int = 0) -> None:
        self.session_id = session_id
        self.names = names if names is not None else []
        self.arrays = arrays if arrays is not None else []
        self.worker_id = worker_id
        self.sequence = sequence
        self.worker_incarnation = worker_incarnation
        self.version = version
        self.loss = loss
        self.return_parameters = return_parameters
        self.return_dtype = return_dtype
        self.gradient_dtype = gradient_dtype
        self.return_point = return_point

    def CopyFrom(self, other: "NativeStep") -> None:  # noqa: N802 (protobuf's name)
        for slot in self.__slots__:
            setattr(self, slot, getattr(other, slot))

    def HasField(self, name: str) -> bool:  # noqa: N802
        return getattr(self, name) is not None

    def to_proto(self, pb2):
        """The optd_pb2.StepRequest with the same fields and bytes."""
        request = pb2.StepRequest(
            session_id=self.session_id, worker_id=self.worker_id,
            gradients=[to_tensor(n, a, self.gradient_dtype)
                       for n, a in zip(self.names, self.arrays)],
            return_parameters=self.return_parameters, return_dtype=self.return_dtype,
            sequence=self.sequence, worker_incarnation=self.worker_incarnation,
            return_point=self.return_point)
        if self.loss is not None:
            request.loss = self.loss
        if self.version is not None:
            request.version = self.version
        return request


def float32_view(value: Any) -> Optional[np.ndarray]:
    """A float32 C-contiguous ndarray of a dense gradient (a view when it already is one: numpy
    arrays and torch CPU tensors are not copied); None for what the native path does not take
    (RowSparse, sparse or non-CPU torch tensors: the caller uses the pure path)."""
    if type(value) is np.ndarray and value.dtype == _F32 and value.flags.c_contiguous:
        return value  # the common case, first
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        if getattr(value, "is_sparse", False) or value.device.type != "cpu":
            return None
        value = value.detach()
        if str(value.dtype) != "torch.float32":
            value = value.float()
        value = value.contiguous().numpy()
    elif not isinstance(value, np.ndarray):
        if isinstance(value, RowSparse):
            return None
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        return None  # the pure path raises the error naming the tensor
    return np.asarray(arr, dtype="<f4", order="C")  # (ascontiguousarray makes scalars 1-d)


_retry_tuples: Dict[int, Tuple[Any, Tuple[Any, ...]]] = {}


def _retry_tuple(policy) -> Tuple[Any, ...]:
    """An optd.RetryPolicy as the extension takes it (policies are frozen: cached by identity,
    the policy kept with its tuple so that the id stays its own)."""
    cached = _retry_tuples.get(id(policy))
    if cached is None or cached[0] is not policy:
        if len(_retry_tuples) > 256:
            _retry_tuples.clear()
        cached = (policy, (policy.max_attempts, policy.initial_backoff, policy.max_backoff,
                           policy.multiplier, policy.jitter,
                           sorted(code.value[0] for code in policy.retry_codes)))
        _retry_tuples[id(policy)] = cached
    return cached[1]


class Transport:
    """The native client of one optd.Client (its own C++ channel, made with the same arguments as
    the grpcio one)."""

    def __init__(self, address: str, *, timeout: Optional[float], max_message_bytes: int,
                 wait_for_ready: bool, max_reconnect_backoff: float,
                 metadata: Tuple[Tuple[str, str], ...], security,
                 channel_options: List[Tuple[str, Any]]) -> None:
        self.address = address
        self._security = security  # optd.security.Security: TLS settings, explanations
        ca, cert, key = security.pems
        self._client = _ext.Client(address, timeout, max_message_bytes, wait_for_ready,
                                   max_reconnect_backoff, list(metadata),
                                   [(k, v) for k, v in channel_options], security.tls,
                                   ca or b"", cert or b"", key or b"")

    def step(self, request: NativeStep, timeout: Optional[float], policy,
             out: Optional[Dict[str, np.ndarray]] = None) -> Tuple[Any, ...]:
        """Sends ``request``; returns StepResult's fields (version, parameters,
        parameters_version, gradient_norm, learning_rate, duplicate, workers, missing_workers,
        staleness, attempts, server_incarnation, durable_version, point, estimates); parameters
        written into ``out`` are its arrays. Raises the typed OptdError with ``attempts`` set,
        refusals explained as on the pure path (optd.security)."""
        try:
            return self._client.step(
                request.session_id, request.names, request.arrays, request.worker_id,
                request.sequence, request.worker_incarnation, request.version, request.loss,
                request.return_parameters, request.return_dtype, request.gradient_dtype,
                request.return_point, timeout, _retry_tuple(policy), out)
        except _ext.StatusError as e:
            error = to_error(e.args)
            explained = self._security.explain(error, "Step")
            explained.attempts = error.attempts
            raise explained from None


class LazyTransport:
    """A Transport made on first use (a client that never steps makes no second channel)."""

    def __init__(self, address: str, **options: Any) -> None:
        self._address, self._options = address, options
        self._lock = threading.Lock()
        self._transport: Optional[Transport] = None

    def get(self) -> Transport:
        with self._lock:
            if self._transport is None:
                self._transport = Transport(self._address, **self._options)
            return self._transport

    def close(self) -> None:
        with self._lock:
            self._transport = None


def to_error(args: Tuple[Any, ...]) -> OptdError:
    """The typed OptdError of a StatusError's (code, message, current_version, rejoin,
    server_incarnation, attempts)."""
    code, message, current_version, rejoin, incarnation, attempts = args
    error = error_from_status(_CODES.get(code, grpc.StatusCode.UNKNOWN), message,
                              current_version, rejoin, incarnation)
    error.attempts = attempts
    return error
