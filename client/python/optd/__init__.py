"""optd: the Python client of the optd remote optimizer service.

    import numpy as np, optd

    with optd.Client("127.0.0.1:50051") as client:
        session = client.create_session({"w": np.zeros(8, np.float32)}, "adam", lr=0.1)
        for _ in range(100):
            result = session.step({"w": grad(w)})
            w = result.parameters["w"]

* ``optd.Client`` / ``optd.Session`` / ``optd.StepStream``: sessions, Pull, Step (with
  idempotent retries; a Session joins the session as its worker and joins again when the server
  asks), StreamSteps worker loops, UpdateSession, health (``optd.client``).
* ``optd.OptdError`` and one subclass per gRPC code, and ``optd.StepOutcomeUnknownError`` (a
  FailedPreconditionError: a retried step whose outcome cannot be known) (``optd.errors``).
* ``optd.optimizer_config``, ``optd.schedule``, ``optd.clipping``, ``optd.consistency``
  (``optd.config``).
* ``optd.encode`` / ``optd.decode`` / ``optd.RowSparse``: numpy <-> wire bytes (``optd.tensors``).
* ``optd.torch.RemoteOptimizer``: a torch.optim.Optimizer whose step runs on the server
  (imported on first use of ``optd.torch``; needs torch).
* Durability: ``client.checkpoint`` / ``session.checkpoint`` (``optd.CheckpointResult``),
  ``client.create_session_from_checkpoint`` (forks), ``optd.OptimizerState`` (``pull(...,
  optimizer_state=True)``, ``session.import_optimizer_state``), ``session.to_npz`` /
  ``client.create_session_from_npz``, and ``optd.checkpoint.read`` / ``newest`` for checkpoint
  files (``optd.CheckpointError``); replies carry ``server_incarnation`` / ``durable_version``.

The generated protobuf modules are ``optd.v1.optd_pb2`` and ``optd.v1.optd_pb2_grpc``.
"""

# The package may be split over several folders on sys.path: the sources (client/python/optd) and,
# in a source checkout, the stubs CMake generates (<build>/python/optd/v1). Installed, both are in
# one folder.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)  # noqa: F821

__version__ = "0.1.0"

from optd.errors import (  # noqa: E402
    AbortedError, AlreadyExistsError, CancelledError, DataLossError, DeadlineExceededError,
    FailedPreconditionError, InternalError, InvalidArgumentError, NotFoundError, OptdError,
    OutOfRangeError, PermissionDeniedError, ResourceExhaustedError, StepOutcomeUnknownError,
    ShardRestartedError, UnauthenticatedError, UnavailableError, UnimplementedError, UnknownError,
    error_from_rpc, error_from_status, CheckpointError)
from optd.state import OptimizerState, TensorState  # noqa: E402
from optd.tensors import (  # noqa: E402
    RowSparse, bf16_bits_to_float32, decode, dtype_name, dtype_value, encode,
    float32_to_bf16_bits, from_tensor, to_tensor)
from optd.config import (  # noqa: E402
    OPTIMIZERS, clipping, consistency, optimizer_config, optimizer_hyperparameters,
    optimizer_kind, schedule, session_config)
from optd.client import (  # noqa: E402
    DEFAULT, DEFAULT_ADDRESS, NO_RETRY, CheckpointResult, Client, PullResult, RetryPolicy, Session,
    StepResult, StepStream)
from optd import checkpoint  # noqa: E402
from optd.sharded import ShardedClient, ShardedSession  # noqa: E402
from optd import native  # noqa: E402

__all__ = [
    "Client", "Session", "ShardedClient", "ShardedSession", "StepStream", "StepResult", "PullResult", "CheckpointResult",
    "RetryPolicy", "NO_RETRY", "OptimizerState", "TensorState", "CheckpointError", "checkpoint",
    "DEFAULT", "DEFAULT_ADDRESS",
    "OptdError", "CancelledError", "UnknownError", "InvalidArgumentError", "DeadlineExceededError",
    "NotFoundError", "AlreadyExistsError", "PermissionDeniedError", "ResourceExhaustedError",
    "FailedPreconditionError", "AbortedError", "OutOfRangeError", "UnimplementedError",
    "InternalError", "UnavailableError", "DataLossError", "UnauthenticatedError",
    "StepOutcomeUnknownError", "ShardRestartedError", "error_from_rpc", "error_from_status",
    "RowSparse", "encode", "decode", "to_tensor", "from_tensor", "dtype_value", "dtype_name",
    "float32_to_bf16_bits", "bf16_bits_to_float32",
    "OPTIMIZERS", "optimizer_config", "optimizer_kind", "optimizer_hyperparameters", "schedule",
    "clipping", "consistency", "session_config",
]


def __getattr__(name):
    # ``optd.torch`` without an explicit ``import optd.torch`` (torch is imported only then).
    if name == "torch":
        import importlib  # pylint: disable=import-outside-toplevel
        return importlib.import_module("optd.torch")
    raise AttributeError(f"module 'optd' has no attribute {name!r}")
