"""What calls return (StepResult, PullResult, CheckpointResult) and how they are retried
(RetryPolicy), shared by optd.Client, optd.Session and optd.StepStream; all importable from optd
and optd.client too."""

import dataclasses
import random
from typing import Dict, List, Optional, Union

import grpc
import numpy as np

from optd.errors import InternalError, InvalidArgumentError
from optd.state import OptimizerState
from optd.tensors import RowSparse, from_tensor

__all__ = ["RetryPolicy", "NO_RETRY", "StepResult", "PullResult", "CheckpointResult"]


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
    #: Which point ``parameters`` are: "training" (the parameters the optimizer steps) or
    #: "evaluation" (Schedule-Free's x, DoG's iterate average; step(return_point=...)).
    point: str = "training"
    #: The optimizer's estimates after the step (Prodigy's and D-Adaptation's "d" and
    #: "effective_lr", DoG's "eta", ...); empty for optimizers that keep none.
    estimates: Dict[str, float] = dataclasses.field(default_factory=dict)

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
                   durable_version=reply.durable_version, point=_point_name(reply.point),
                   estimates=dict(reply.optimizer_estimates))


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
    #: "training" or "evaluation": see StepResult.point.
    point: str = "training"


_POINTS = {"training": 0, "train": 0, "y": 0, "evaluation": 1, "eval": 1, "x": 1}


def _point_value(point: Union[str, int]) -> int:
    if isinstance(point, int) and not isinstance(point, bool) and point in (0, 1):
        return point
    if isinstance(point, str):
        value = _POINTS.get(point.strip().lower().replace("parameter_point_", ""))
        if value is not None:
            return value
    raise InvalidArgumentError(f"point = {point!r}; must be 'training' or 'evaluation'")


def _point_name(value: int) -> str:
    return "evaluation" if value == 1 else "training"


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
