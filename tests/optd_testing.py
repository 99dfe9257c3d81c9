"""Shared helpers for Python tests that drive the real optd binary.

* ``build_dir()``: the CMake build directory, from ``OPTD_BUILD_DIR`` (default ``<repo>/build``).
* ``load_stubs()``: imports the generated ``optd.v1`` modules from ``<build>/python``.
* ``OptdProcess``: starts ``<build>/server/optd --listen=127.0.0.1:0``, reads the bound port from its
  ``optd listening on HOST:PORT`` line and stops it with SIGTERM (SIGKILL after a grace period).
  Metrics are off (``--metrics_listen=``) unless ``metrics=True``: then the Prometheus exporter
  listens on 127.0.0.1:0, its address is read from the ``optd metrics on HOST:PORT`` line
  (``.metrics_address``) and ``.metrics_text()`` fetches ``/metrics``. ``extra_args`` come last, so
  they can override either flag. ``wrapper`` is a command prefix that execs optd in its own process
  (``["prlimit", "--as=N"]``), so ``.proc.pid`` is still optd's. ``.status()`` reads its
  /proc/<pid>/status (VmRSS, VmSize, Threads), ``.open_fds()`` counts its descriptors,
  ``.memory_budget()`` is the budget it announced at start-up, ``.stop(timeout)`` waits that long.
* ``optd_server``: a module-scoped pytest fixture yielding a started ``OptdProcess`` (``.address``,
  ``.stub``, ``.pb2``). A missing binary or missing stubs FAIL the test: in CI that is a bug, not a
  reason to skip.
* ``to_tensor`` / ``from_tensor``: numpy float32 <-> ``optd_pb2.Tensor`` without per-element loops.
* ``to_sparse_tensor`` / ``from_sparse_tensor``: the same for row-sparse tensors (``Tensor.rows``);
  ``current_version_of``: the "optd-current-version" trailing metadata of an ABORTED unary reply.
* ``StepStream``: a StreamSteps call whose replies are read on a thread, so each can be awaited with
  a timeout (a reply that never comes fails the test instead of hanging it).

Run with Debian's interpreter: ``/usr/bin/python3 -m pytest -q tests/...``.
"""

import atexit
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_MESSAGE_BYTES = 256 << 20
STARTUP_TIMEOUT_S = 20.0
CHANNEL_READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0

_LISTEN_LINE = re.compile(r"^optd listening on (?P<host>\S+):(?P<port>\d+)\s*$")
_METRICS_LINE = re.compile(r"^optd metrics on (?P<host>\S+):(?P<port>\d+)\s*$")
_BUDGET_LINE = re.compile(r"optd: memory budget (\d+) bytes")


class OptdSetupError(RuntimeError):
    """The build (binary or stubs) is missing or the server did not start."""


def build_dir() -> Path:
    return Path(os.environ.get("OPTD_BUILD_DIR") or REPO_ROOT / "build").resolve()


def binary_path() -> Path:
    return build_dir() / "server" / "optd"


def stub_dir() -> Path:
    return build_dir() / "python"


_stubs = None


def load_stubs():
    """Returns (optd_pb2, optd_pb2_grpc) from <build>/python; raises OptdSetupError if absent."""
    global _stubs
    if _stubs is None:
        d = stub_dir()
        for name in ("optd_pb2.py", "optd_pb2_grpc.py"):
            if not (d / "optd" / "v1" / name).is_file():
                raise OptdSetupError(
                    f"generated Python stub {d / 'optd' / 'v1' / name} is missing: build the "
                    f"optd_python_proto target (OPTD_BUILD_DIR={build_dir()})")
        if str(d) not in sys.path:
            sys.path.insert(0, str(d))
        from optd.v1 import optd_pb2, optd_pb2_grpc  # pylint: disable=import-outside-toplevel
        _stubs = (optd_pb2, optd_pb2_grpc)
    return _stubs


# ---------------------------------------------------------------------------------------------------
# Tensors.

def to_tensor(name: str, array) -> "optd_pb2.Tensor":
    """A float32 optd_pb2.Tensor (little-endian bytes, row-major) from anything numpy accepts."""
    optd_pb2, _ = load_stubs()
    arr = np.ascontiguousarray(array, dtype="<f4")
    return optd_pb2.Tensor(name=name, shape=arr.shape, dtype=optd_pb2.DTYPE_F32,
                           data=arr.tobytes())


def from_tensor(tensor) -> np.ndarray:
    """The float32 values of a DTYPE_F32 optd_pb2.Tensor, shaped (a read-only view of its bytes)."""
    optd_pb2, _ = load_stubs()
    if tensor.dtype != optd_pb2.DTYPE_F32:
        raise ValueError(f"tensor {tensor.name!r}: dtype {tensor.dtype}, expected DTYPE_F32")
    shape = tuple(tensor.shape)
    count = int(np.prod(shape, dtype=np.int64))
    if len(tensor.data) != 4 * count:
        raise ValueError(f"tensor {tensor.name!r}: {len(tensor.data)} data bytes for shape {shape} "
                         f"(expected {4 * count})")
    return np.frombuffer(tensor.data, dtype="<f4").reshape(shape)


def to_sparse_tensor(name: str, shape, indices, rows) -> "optd_pb2.Tensor":
    """A row-sparse float32 optd_pb2.Tensor of `shape`: `rows[i]` is row `indices[i]` (repeats
    allowed). The `rows` field is set even when `indices` is empty."""
    optd_pb2, _ = load_stubs()
    shape = tuple(int(d) for d in shape)
    arr = np.ascontiguousarray(rows, dtype="<f4").reshape((len(indices),) + shape[1:])
    t = optd_pb2.Tensor(name=name, shape=shape, dtype=optd_pb2.DTYPE_F32, data=arr.tobytes())
    t.rows.SetInParent()
    t.rows.indices.extend(int(i) for i in indices)
    return t


def from_sparse_tensor(tensor):
    """(indices int64 [n], rows float32 [n, *shape[1:]]) of a row-sparse DTYPE_F32 optd_pb2.Tensor."""
    optd_pb2, _ = load_stubs()
    if not tensor.HasField("rows"):
        raise ValueError(f"tensor {tensor.name!r} is not row-sparse (no rows field)")
    if tensor.dtype != optd_pb2.DTYPE_F32:
        raise ValueError(f"tensor {tensor.name!r}: dtype {tensor.dtype}, expected DTYPE_F32")
    indices = np.asarray(tensor.rows.indices, dtype=np.int64)
    row_shape = tuple(tensor.shape)[1:]
    count = len(indices) * int(np.prod(row_shape, dtype=np.int64))
    if len(tensor.data) != 4 * count:
        raise ValueError(f"tensor {tensor.name!r}: {len(tensor.data)} data bytes for "
                         f"{len(indices)} rows of {row_shape} (expected {4 * count})")
    return indices, np.frombuffer(tensor.data, dtype="<f4").reshape((len(indices),) + row_shape)


def current_version_of(rpc_error):
    """The session version an ABORTED unary reply carries in its trailing metadata
    ("optd-current-version"), as an int, or None when it carries none."""
    for key, value in rpc_error.trailing_metadata() or ():
        if key == "optd-current-version":
            return int(value)
    return None


# ---------------------------------------------------------------------------------------------------
# The server process.

_live = {}  # pid -> Popen of servers this module started and has not stopped yet.


def _kill_leftovers():
    for proc in list(_live.values()):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


atexit.register(_kill_leftovers)


class OptdProcess:
    """One optd server process started by this test run (never anything else)."""

    def __init__(self, extra_args=(), metrics=False, wrapper=(), credentials=None,
                 target_name=None):
        self.binary = binary_path()
        # grpc.ChannelCredentials for .channel (TLS servers); None: an insecure channel.
        self.credentials = credentials
        self.target_name = target_name  # grpc.ssl_target_name_override, when set
        self.extra_args = list(extra_args)
        self.wrapper = list(wrapper)
        self.metrics = metrics
        self.metrics_address = None  # "host:port" of /metrics, when the exporter is on
        self.proc = None
        self.address = None
        self.port = None
        self.channel = None
        self.stub = None
        self.pb2 = None
        self.pb2_grpc = None
        self.stdout_lines = []
        self._stderr = None
        self._reader = None
        self._listen = threading.Event()

    # -- start -------------------------------------------------------------------------------------

    def start(self):
        if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
            raise OptdSetupError(f"optd binary {self.binary} is missing or not executable: build "
                                 f"the project first (OPTD_BUILD_DIR={build_dir()})")
        self.pb2, self.pb2_grpc = load_stubs()
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        metrics_flag = "--metrics_listen=127.0.0.1:0" if self.metrics else "--metrics_listen="
        args = [*self.wrapper, str(self.binary), "--listen=127.0.0.1:0", metrics_flag,
                *self.extra_args]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._stderr)
        _live[self.proc.pid] = self.proc
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._listen.wait(0.05):
            if self.proc.poll() is not None:
                self._reader.join(1.0)
                if self._listen.is_set():
                    break
                raise OptdSetupError(f"optd exited with status {self.proc.returncode} before "
                                     f"printing its listen line\n{self.output()}")
            if time.monotonic() > deadline:
                self.stop()
                raise OptdSetupError(f"optd printed no 'optd listening on HOST:PORT' line within "
                                     f"{STARTUP_TIMEOUT_S:.0f} s\n{self.output()}")
        if self.proc.poll() is not None:
            raise OptdSetupError(f"optd exited with status {self.proc.returncode} right after "
                                 f"start-up\n{self.output()}")
        if self.metrics and self.metrics_address is None:
            self.stop()
            raise OptdSetupError(f"optd printed no 'optd metrics on HOST:PORT' line before its "
                                 f"listen line\n{self.output()}")

        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        if self.target_name:
            options.append(("grpc.ssl_target_name_override", self.target_name))
        self.channel = (grpc.insecure_channel(self.address, options=options)
                        if self.credentials is None else
                        grpc.secure_channel(self.address, self.credentials, options=options))
        try:
            grpc.channel_ready_future(self.channel).result(timeout=CHANNEL_READY_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            self.stop()
            raise OptdSetupError(f"no gRPC connection to optd at {self.address} within "
                                 f"{CHANNEL_READY_TIMEOUT_S:.0f} s\n{self.output()}") from None
        self.stub = self.pb2_grpc.OptimizerStub(self.channel)
        return self

    def _read_stdout(self):
        # Drains stdout for the whole life of the process so the server never blocks on a full pipe.
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.stdout_lines.append(line)
            m = _METRICS_LINE.match(line)  # printed before the listen line
            if m and self.metrics_address is None:
                self.metrics_address = f"{m.group('host')}:{m.group('port')}"
            m = _LISTEN_LINE.match(line)
            if m and not self._listen.is_set():
                self.port = int(m.group("port"))
                self.address = f"{m.group('host')}:{self.port}"
                self._listen.set()

    def metrics_text(self, timeout=10.0) -> str:
        """The exporter's /metrics page (Prometheus text format)."""
        if self.metrics_address is None:
            raise OptdSetupError("optd was started without metrics (OptdProcess(metrics=True))")
        url = f"http://{self.metrics_address}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode("utf-8")

    # -- stop --------------------------------------------------------------------------------------

    def stop(self, timeout=None):
        """SIGTERM, wait up to `timeout` (default STOP_TIMEOUT_S), then SIGKILL. Returns
        (returncode, killed)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is None:
            return None, False
        killed = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                killed = True
        _live.pop(self.proc.pid, None)
        if self._reader is not None:
            self._reader.join(2.0)
        return self.proc.returncode, killed

    def stderr_text(self) -> str:
        """Everything optd wrote to stderr so far."""
        if self._stderr is None:
            return ""
        # pread: the file offset, shared with the server's descriptor, stays where it is.
        return os.pread(self._stderr.fileno(), 1 << 24, 0).decode("utf-8", "replace")

    def memory_budget(self, timeout=5.0) -> int:
        """The memory budget optd announced at start-up ("optd: memory budget N bytes")."""
        deadline = time.monotonic() + timeout
        while True:
            m = _BUDGET_LINE.search(self.stderr_text())
            if m:
                return int(m.group(1))
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise OptdSetupError(f"optd announced no memory budget\n{self.output()}")
            time.sleep(0.02)

    def status(self) -> dict:
        """The server's /proc/<pid>/status as {field: int}, kB fields in bytes (VmRSS, VmSize)."""
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                parts = value.split()
                if len(parts) == 2 and parts[1] == "kB":
                    out[key] = int(parts[0]) * 1024
                elif len(parts) == 1 and parts[0].isdigit():
                    out[key] = int(parts[0])
        return out

    def open_fds(self) -> int:
        """How many file descriptors the server has open (/proc/<pid>/fd)."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def output(self) -> str:
        """stdout and (the tail of) stderr so far, for failure messages."""
        err = ""
        if self._stderr is not None:
            self._stderr.flush()
            self._stderr.seek(0)
            err = self._stderr.read().decode("utf-8", "replace")[-8000:]
        return ("--- optd stdout ---\n" + "\n".join(self.stdout_lines) +
                "\n--- optd stderr (tail) ---\n" + err)


def start_optd(extra_args=(), metrics=False, wrapper=()) -> OptdProcess:
    return OptdProcess(extra_args, metrics=metrics, wrapper=wrapper).start()


@pytest.fixture(scope="module")
def optd_server():
    """A real optd server for the test module. Setup FAILS (never skips) if it cannot start."""
    server, error = None, None
    try:
        server = start_optd()
    except OptdSetupError as e:
        error = str(e)
    if server is None:
        pytest.fail(error, pytrace=False)
    try:
        yield server
    finally:
        returncode, killed = server.stop()
    if killed:
        pytest.fail(f"optd did not exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM\n{server.output()}",
                    pytrace=False)
    if returncode != 0:
        pytest.fail(f"optd exited with status {returncode} after SIGTERM\n{server.output()}",
                    pytrace=False)


# ---------------------------------------------------------------------------------------------------
# Streams.

class StepStream:
    """One StreamSteps call whose replies are read on a thread of their own, so a test can wait
    for each with a timeout: ``send(request)``, ``recv(timeout)`` (the next StreamStepsResponse;
    ``queue.Empty`` if none came in time, the call's ``grpc.RpcError`` if it ended with one,
    ``EOFError`` if it ended OK), ``close()`` (half-close), ``cancel()``, ``status()`` (the code
    the call ended with, once it has)."""

    _END = object()

    def __init__(self, stub, timeout):
        import queue  # pylint: disable=import-outside-toplevel
        self._requests = queue.Queue()
        self._replies = queue.Queue()
        self.call = stub.StreamSteps(iter(self._requests.get, None), timeout=timeout)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        try:
            for response in self.call:
                self._replies.put(response)
            self._replies.put(self._END)
        except grpc.RpcError as e:
            self._replies.put(e)

    def send(self, request):
        self._requests.put(request)

    def recv(self, timeout):
        item = self._replies.get(timeout=timeout)
        if item is self._END:
            self._replies.put(item)
            raise EOFError("the stream ended")
        if isinstance(item, grpc.RpcError):
            self._replies.put(item)
            raise item
        return item

    def close(self):
        self._requests.put(None)

    def cancel(self):
        self._requests.put(None)
        self.call.cancel()

    def join(self, timeout):
        """Waits for the call to end; True if it did."""
        self._reader.join(timeout)
        return not self._reader.is_alive()
