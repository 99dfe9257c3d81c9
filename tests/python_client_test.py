"""The Python client (client/python/optd) against the real optd binary.

Covers the API (sessions, pull, step, update, health), numpy round trips in F32/BF16/F16 (encoding
checked bit for bit against torch's bfloat16 and numpy's float16), every typed error with its gRPC
code (those the server produces, from a real server; the rest through the code -> class mapping),
deadlines, retries of keyed steps without double application, StreamSteps worker loops, SYNC with
several workers, row-sparse gradients, joins (a restarted worker is a new incarnation whose steps
are applied; a forgotten worker joins again by itself; a retry whose outcome cannot be known raises
StepOutcomeUnknownError), and that the package installs offline with pip.

Run: /usr/bin/python3 -m pytest -q tests/python_client_test.py   (OPTD_BUILD_DIR picks the build)
"""

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time

import grpc
import numpy as np
import pytest

from optd_testing import REPO_ROOT, build_dir, load_stubs, start_optd

# optd from the source tree, its generated optd.v1 from <build>/python (one package over both
# folders). Drop a namespace-only 'optd' another test module may have imported with the stubs.
sys.path.insert(0, str(REPO_ROOT / "client" / "python"))
if "optd" in sys.modules and getattr(sys.modules["optd"], "__file__", None) is None:
    del sys.modules["optd"]
load_stubs()
import optd  # noqa: E402  pylint: disable=wrong-import-position

RNG = np.random.default_rng(1234)


@pytest.fixture(scope="module")
def client(optd_server):
    with optd.Client(optd_server.address, timeout=20.0) as c:
        yield c


@pytest.fixture(scope="module")
def pure_client(optd_server):
    """A client whose steps go through grpcio whatever the path under test: the tests that inject
    faults by replacing ``client.stub.Step`` (the native path's retries are the C++ client's,
    tested in client/cpp/retry_test.cc)."""
    with optd.Client(optd_server.address, timeout=20.0, native=False) as c:
        yield c


def test_the_path_under_test_is_the_one_asked_for(client):
    # ctest runs this file twice: python_client_test (OPTD_EXPECT_NATIVE=1: the extension must be
    # there and used) and python_client_pure_test (OPTD_PURE_PYTHON=1).
    if os.environ.get("OPTD_EXPECT_NATIVE") == "1":
        assert optd.native.available(), optd.native.reason()
        assert client.native
    if os.environ.get("OPTD_PURE_PYTHON") == "1":
        assert not optd.native.available() and not client.native


def _unique(prefix):
    _unique.n = getattr(_unique, "n", 0) + 1
    return f"{prefix}-{os.getpid()}-{_unique.n}"


class FakeRpcError(grpc.RpcError):
    """What a lost reply looks like to the client: a failed call with a code."""

    def __init__(self, code, details="injected", trailing=()):
        super().__init__(details)
        self._code, self._details, self._trailing = code, details, tuple(trailing)

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing


# ---------------------------------------------------------------------------------------------------
# Encoding (no server).

def test_bf16_encoding_matches_torch_round_to_nearest_even():
    torch = pytest.importorskip("torch")
    values = np.concatenate([
        RNG.standard_normal(10000).astype(np.float32) * 10.0 ** RNG.integers(-30, 30, 10000),
        # ties (exactly halfway between two bf16 values): even and odd lower halves
        np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x3F80FFFF, 0x7F7FFFFF, 0x00008000,
                  0x00018000, 0x7F800000, 0xFF800000, 0x00000000, 0x80000000],
                 dtype=np.uint32).view(np.float32),
    ])
    ours = optd.float32_to_bf16_bits(values)
    theirs = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)
    back = optd.decode(optd.encode(values, "bf16"), values.shape, "bf16")
    np.testing.assert_array_equal(back, torch.from_numpy(values).to(torch.bfloat16).float().numpy())
    nan = optd.float32_to_bf16_bits(np.array([np.nan, -np.nan], np.float32))
    assert np.isnan(optd.bf16_bits_to_float32(nan)).all()


def test_f16_and_f32_encoding():
    x = RNG.standard_normal((3, 5)).astype(np.float32) * 100
    assert optd.encode(x) == x.tobytes()
    assert optd.encode(x.astype(np.float64), "f32") == x.tobytes()
    assert optd.encode(x, "f16") == x.astype("<f2").tobytes()
    np.testing.assert_array_equal(optd.decode(x.tobytes(), (3, 5)), x)
    np.testing.assert_array_equal(optd.decode(optd.encode(x, "f16"), (3, 5), "f16"),
                                  x.astype(np.float16).astype(np.float32))
    with pytest.raises(optd.InvalidArgumentError, match="data bytes"):
        optd.decode(b"\0" * 7, (2,), "f32")
    with pytest.raises(optd.InvalidArgumentError):
        optd.dtype_value("int8")
    assert [optd.dtype_value(d) for d in ("f32", "BF16", np.float16, "float32")] == [0, 1, 2, 0]


def test_every_status_code_maps_to_its_error_class():
    expected = {
        grpc.StatusCode.CANCELLED: optd.CancelledError,
        grpc.StatusCode.UNKNOWN: optd.UnknownError,
        grpc.StatusCode.INVALID_ARGUMENT: optd.InvalidArgumentError,
        grpc.StatusCode.DEADLINE_EXCEEDED: optd.DeadlineExceededError,
        grpc.StatusCode.NOT_FOUND: optd.NotFoundError,
        grpc.StatusCode.ALREADY_EXISTS: optd.AlreadyExistsError,
        grpc.StatusCode.PERMISSION_DENIED: optd.PermissionDeniedError,
        grpc.StatusCode.RESOURCE_EXHAUSTED: optd.ResourceExhaustedError,
        grpc.StatusCode.FAILED_PRECONDITION: optd.FailedPreconditionError,
        grpc.StatusCode.ABORTED: optd.AbortedError,
        grpc.StatusCode.OUT_OF_RANGE: optd.OutOfRangeError,
        grpc.StatusCode.UNIMPLEMENTED: optd.UnimplementedError,
        grpc.StatusCode.INTERNAL: optd.InternalError,
        grpc.StatusCode.UNAVAILABLE: optd.UnavailableError,
        grpc.StatusCode.DATA_LOSS: optd.DataLossError,
        grpc.StatusCode.UNAUTHENTICATED: optd.UnauthenticatedError,
    }
    for code, cls in expected.items():
        for e in (optd.error_from_rpc(FakeRpcError(code, "msg")),
                  optd.error_from_status(code.value[0], "msg")):  # StepError carries the number
            assert type(e) is cls and isinstance(e, optd.OptdError)
            assert e.code == code and e.message == "msg" and code.name in str(e)
    assert isinstance(optd.InvalidArgumentError("x"), ValueError)
    assert isinstance(optd.NotFoundError("x"), LookupError)
    assert isinstance(optd.DeadlineExceededError("x"), TimeoutError)
    assert isinstance(optd.UnavailableError("x"), ConnectionError)
    assert optd.error_from_status(10, "stale", 7).current_version == 7
    # FAILED_PRECONDITION says whether the worker must join again (metadata or StepError.rejoin).
    assert not optd.error_from_status(9, "reused").rejoin
    assert optd.error_from_status(9, "forgotten", rejoin=True).rejoin
    rejoin = optd.error_from_rpc(FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "forgotten",
                                              trailing=[("optd-rejoin", "1")]))
    assert type(rejoin) is optd.FailedPreconditionError and rejoin.rejoin
    unknown = optd.StepOutcomeUnknownError("lost", worker_id="w", worker_incarnation=3, sequence=4,
                                           new_incarnation=5)
    assert isinstance(unknown, optd.FailedPreconditionError) and unknown.rejoin
    assert unknown.code == grpc.StatusCode.FAILED_PRECONDITION and "lost" in str(unknown)


def test_config_builders():
    c = optd.optimizer_config("Adam", lr=0.01, betas=(0.8, 0.9), amsgrad=True)
    assert c.adam.lr == 0.01 and c.adam.beta1 == 0.8 and c.adam.beta2 == 0.9 and c.adam.amsgrad
    n = optd.optimizer_config("ngd", norm="per_tensor", guard="MAX_EPS")
    assert n.WhichOneof("kind") == "normalized_gd" and n.normalized_gd.norm == 1
    assert n.normalized_gd.guard == 1
    s = optd.schedule("one_cycle", max_lr=1.0, total_steps=10, anneal_strategy="linear")
    assert s.one_cycle.anneal_strategy == 1
    k = optd.consistency("sync", workers=2, worker_ids=["a", "b"], reduce="sum")
    assert k.mode == 1 and list(k.worker_ids) == ["a", "b"] and k.reduce == 1
    with pytest.raises(optd.InvalidArgumentError, match="optimizer.adam.betaa"):
        optd.optimizer_config("adam", betaa=0.9)
    with pytest.raises(optd.InvalidArgumentError, match="not known"):
        optd.optimizer_config("adamax")
    with pytest.raises(optd.InvalidArgumentError, match="Mode"):
        optd.consistency("eventual")


# ---------------------------------------------------------------------------------------------------
# Sessions, pull, step, update.

def test_session_lifecycle_and_health(client):
    assert client.health() and client.health("optd.v1.Optimizer")
    with pytest.raises(optd.NotFoundError):
        client.health("no.such.Service")
    sid = _unique("life")
    w = RNG.standard_normal((4, 3)).astype(np.float32)
    session = client.create_session({"w": w, "b": np.zeros(3)}, "sgd", lr=0.5, session_id=sid)
    assert session.session_id == sid and session.version == 0
    info = session.info()
    assert info.config.optimizer.sgd.lr == 0.5 and info.config.optimizer.sgd.momentum == 0.0
    assert [t.name for t in info.tensors] == ["w", "b"] and info.num_parameters == 15
    assert sid in [s.session_id for s in client.list_sessions(page_size=1)]
    pulled = session.pull()
    np.testing.assert_array_equal(pulled.tensors["w"], w)
    assert list(pulled.tensors) == ["w", "b"] and pulled.version == 0
    assert list(session.pull(["b"]).tensors) == ["b"]

    g = {"b": np.ones(3, np.float32), "w": np.full((4, 3), 0.25, np.float32)}  # any order
    result = session.step(g, loss=1.5)
    assert (result.version, result.duplicate, result.attempts, result.sequence) == (1, False, 1, 1)
    np.testing.assert_allclose(result.parameters["w"], w - 0.125, rtol=1e-6)
    np.testing.assert_allclose(result.parameters["b"], -0.5)
    assert result.learning_rate == 0.5
    assert abs(result.gradient_norm - np.sqrt(3 + 12 * 0.0625)) < 1e-6
    assert session.version == 1 and session.sequence == 1
    none = session.step(g, return_parameters="none")
    assert none.parameters == {} and none.version == 2

    # A session may also be generated (empty id) and attached to by id.
    anon = client.create_session({"x": np.zeros(2)}, "adam")
    assert anon.session_id
    attached = client.session(anon.session_id, worker_id="other")
    assert attached.info().config.optimizer.adam.lr == pytest.approx(1e-3)
    anon.delete()
    session.delete()
    with pytest.raises(optd.NotFoundError, match=sid):
        session.info()


def test_numpy_round_trip_in_every_dtype(client):
    x = (RNG.standard_normal((64, 33)) * 3).astype(np.float32)
    session = client.create_session({"x": x}, "sgd", lr=1.0)
    np.testing.assert_array_equal(session.pull().tensors["x"], x)
    for dtype in ("bf16", "f16"):
        got = session.pull(dtype=dtype).tensors["x"]
        assert got.dtype == np.float32 and got.shape == x.shape
        np.testing.assert_array_equal(got, optd.decode(optd.encode(x, dtype), x.shape, dtype))
    # A gradient sent as BF16 is rounded exactly as the client encodes it; replies in F16.
    g = RNG.standard_normal((64, 33)).astype(np.float32)
    r = session.step({"x": g}, gradient_dtype="bf16", return_dtype="f16")
    expected = x - optd.decode(optd.encode(g, "bf16"), g.shape, "bf16")
    np.testing.assert_array_equal(session.pull().tensors["x"], expected)
    np.testing.assert_array_equal(r.parameters["x"],
                                  expected.astype(np.float16).astype(np.float32))
    # Torch tensors and float64 arrays are accepted as values.
    torch = pytest.importorskip("torch")
    r = session.step({"x": torch.zeros(64, 33, dtype=torch.float64)})
    np.testing.assert_array_equal(r.parameters["x"], expected)
    session.delete()


def test_row_sparse_gradients_and_rows(client):
    table = RNG.standard_normal((10, 4)).astype(np.float32)
    session = client.create_session({"emb": table}, "sgd", lr=1.0)
    grad = optd.RowSparse([7, 2, 7], np.ones((3, 4), np.float32), (10, 4))
    r = session.step({"emb": grad}, return_parameters="touched")
    touched = r.parameters["emb"]
    assert isinstance(touched, optd.RowSparse) and list(touched.indices) == [2, 7]
    np.testing.assert_allclose(touched.values, table[[2, 7]] - [[1], [2]], rtol=1e-6)
    rows = session.pull(rows={"emb": [7, 0]}).tensors["emb"]
    assert list(rows.indices) == [7, 0]
    np.testing.assert_allclose(rows.values, [table[7] - 2, table[0]], rtol=1e-6)
    session.delete()


def test_update_session_lr_schedule_and_clipping(client):
    session = client.create_session({"w": np.zeros(4)}, "sgd", lr=0.1)
    g = {"w": np.ones(4, np.float32)}
    assert session.step(g).learning_rate == pytest.approx(0.1)
    info = session.update(lr=0.5, momentum=0.0)
    assert info.config.optimizer.sgd.lr == 0.5 and info.learning_rate == 0.5
    assert session.step(g).learning_rate == pytest.approx(0.5)
    # A new schedule continues at the current step count k = 2: lr(k) = 0.5 * 0.5^k.
    session.update(schedule=optd.schedule("step", step_size=1, gamma=0.5))
    assert [session.step(g).learning_rate for _ in range(3)] == pytest.approx([0.125, 0.0625,
                                                                               0.03125])
    session.update(schedule="constant", clipping=1.0, lr=1.0)
    before = session.pull().tensors["w"].copy()
    r = session.step({"w": np.full(4, 3.0, np.float32)})
    assert r.gradient_norm == pytest.approx(6.0)  # reported before clipping
    assert np.linalg.norm(before - r.parameters["w"]) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(optd.InvalidArgumentError, match="lr"):
        session.update(lr=-1.0)
    with pytest.raises(optd.InvalidArgumentError):
        session.update("adam", lr=0.1)  # another optimizer kind
    session.delete()


# ---------------------------------------------------------------------------------------------------
# Errors from a real server.

def test_errors_from_the_server_carry_code_and_message(client):
    sid = _unique("err")
    client.create_session({"w": np.zeros(2)}, "adam", session_id=sid)
    with pytest.raises(optd.AlreadyExistsError) as e:
        client.create_session({"w": np.zeros(2)}, "adam", session_id=sid)
    assert e.value.code == grpc.StatusCode.ALREADY_EXISTS and sid in e.value.message
    with pytest.raises(optd.InvalidArgumentError) as e:
        client.create_session({"w": np.zeros(2)}, "adam", beta1=1.5)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.optimizer.adam.beta1" in e.value.message and "[0, 1)" in e.value.message
    with pytest.raises(optd.NotFoundError) as e:
        client.step("no-such-session", {"w": np.zeros(2)})
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(optd.InvalidArgumentError, match="nan"):
        client.step(sid, {"w": np.array([0.0, np.nan])})
    with pytest.raises(optd.InvalidArgumentError, match="shape"):
        client.step(sid, {"w": np.zeros(3)})
    client.delete_session(sid)
    with pytest.raises(optd.NotFoundError):
        client.delete_session(sid)


def test_aborted_carries_the_current_version_unary_and_stream(client):
    session = client.create_session({"w": np.zeros(2)}, "sgd", lr=0.1,
                                    consistency=optd.consistency("bounded", max_staleness=1))
    g = {"w": np.ones(2, np.float32)}
    for _ in range(3):
        session.step(g)
    with pytest.raises(optd.AbortedError) as e:
        session.step(g, version=0)  # 3 versions old, at most 1 allowed
    assert e.value.code == grpc.StatusCode.ABORTED and e.value.current_version == 3
    assert session.version == 3  # the worker learned the current version
    assert session.step(g).version == 4
    with session.stream(timeout=10) as stream:
        with pytest.raises(optd.AbortedError) as e:
            stream.step(g, version=1)
        assert e.value.current_version == 4
        assert stream.step(g).version == 5  # the stream goes on
    session.delete()


def test_failed_precondition_for_a_forgotten_sequence(client):
    session = client.create_session({"w": np.zeros(2)}, "sgd", lr=0.1)
    g = {"w": np.ones(2, np.float32)}
    for _ in range(20):  # the server remembers the last 16 outcomes per worker
        session.step(g)
    key = dict(worker_id=session.worker_id, worker_incarnation=session.incarnation)
    again = client.step(session.session_id, g, sequence=19, **key)
    assert again.duplicate and again.version == 19
    with pytest.raises(optd.FailedPreconditionError) as e:
        client.step(session.session_id, g, sequence=1, **key)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and "sequence" in e.value.message
    assert not e.value.rejoin  # the worker is known: only this sequence is
    # The worker joined: a step of it without its incarnation is refused, never guessed at.
    with pytest.raises(optd.FailedPreconditionError) as e:
        client.step(session.session_id, g, worker_id=session.worker_id, sequence=21)
    assert e.value.rejoin and "worker_incarnation" in e.value.message
    assert session.info().version == 20
    session.delete()


def test_resource_exhausted_from_a_server_with_one_session():
    server = start_optd(extra_args=["--max_sessions=1"])
    try:
        with optd.Client(server.address) as c:
            c.create_session({"w": np.zeros(1)}, "sgd", lr=1.0, session_id="one")
            with pytest.raises(optd.ResourceExhaustedError) as e:
                c.create_session({"w": np.zeros(1)}, "sgd", lr=1.0, session_id="two")
            assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        assert server.stop() == (0, False)


def test_unavailable_when_nothing_listens():
    with socket.socket() as s:  # a port that was free a moment ago and now has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with optd.Client(f"127.0.0.1:{port}", timeout=5,
                     retry=optd.RetryPolicy(max_attempts=3, initial_backoff=0.01)) as c:
        start = time.monotonic()
        with pytest.raises(optd.UnavailableError) as e:
            c.get_session("x")
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - start < 5


def test_deadline_exceeded_is_per_call(client):
    # A SYNC session of two workers: one worker alone waits at the barrier past its deadline.
    session = client.create_session(
        {"w": np.zeros(2)}, "sgd", lr=0.1,
        consistency=optd.consistency("sync", workers=2, barrier_timeout_seconds=1.0))
    start = time.monotonic()
    with pytest.raises(optd.DeadlineExceededError) as e:
        session.step({"w": np.ones(2)}, timeout=0.3, retry=optd.NO_RETRY)
    elapsed = time.monotonic() - start
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and isinstance(e.value, TimeoutError)
    assert 0.25 < elapsed < 1.0
    assert session.info().version == 0  # the call gave up; its gradient waits, applied nowhere
    session.delete()  # closes the barrier (its expiry without a quorum: tests/sync_test.py)


# ---------------------------------------------------------------------------------------------------
# Retries: same idempotency key, applied once.

def test_retry_after_a_lost_reply_is_answered_as_duplicate_and_applied_once(pure_client,
                                                                            monkeypatch):
    client = pure_client
    w0 = np.ones(3, np.float32)
    session = client.create_session({"w": w0}, "sgd", lr=0.5)
    real_step = client.stub.Step
    calls = []

    def lossy_step(request, **kwargs):
        calls.append((request.worker_id, request.sequence))
        reply = real_step(request, **kwargs)  # the server applies it ...
        if len(calls) == 1:
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "reply lost")  # ... the reply is lost
        return reply

    monkeypatch.setattr(client.stub, "Step", lossy_step)
    r = session.step({"w": np.ones(3, np.float32)})
    assert calls == [(session.worker_id, 1), (session.worker_id, 1)]  # same key twice
    assert r.duplicate and r.attempts == 2 and r.version == 1
    np.testing.assert_allclose(r.parameters["w"], w0 - 0.5)
    assert session.info().version == 1  # applied once
    np.testing.assert_allclose(session.pull().tensors["w"], w0 - 0.5)

    # A request lost on the way out: the retry is the first the server sees (not a duplicate).
    calls.clear()

    def lost_request(request, **kwargs):
        calls.append(request.sequence)
        if len(calls) == 1:
            raise FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "request lost")
        return real_step(request, **kwargs)

    monkeypatch.setattr(client.stub, "Step", lost_request)
    r = session.step({"w": np.ones(3, np.float32)})
    assert calls == [2, 2] and not r.duplicate and r.attempts == 2 and r.version == 2
    assert session.info().version == 2

    # Without an idempotency key a Step is never retried.
    calls.clear()
    monkeypatch.setattr(client.stub, "Step", lossy_step)
    with pytest.raises(optd.UnavailableError):
        client.step(session.session_id, {"w": np.ones(3, np.float32)})
    assert len(calls) == 1 and session.info().version == 3

    # Retries stop after max_attempts; other codes are not retried.
    calls.clear()

    def always_unavailable(request, **kwargs):
        calls.append(request.sequence)
        raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)

    monkeypatch.setattr(client.stub, "Step", always_unavailable)
    with pytest.raises(optd.UnavailableError):
        session.step({"w": np.ones(3)}, retry=optd.RetryPolicy(max_attempts=3,
                                                                initial_backoff=0.001))
    assert calls == [3, 3, 3]  # the session's next sequence, three attempts
    monkeypatch.setattr(client.stub, "Step", real_step)
    with pytest.raises(optd.InvalidArgumentError):
        session.step({"w": np.ones(4)})
    session.delete()


def test_retry_of_a_sync_contribution_waits_for_the_same_barrier(client):
    session = client.create_session({"w": np.zeros(2)}, "sgd", lr=1.0,
                                    consistency=optd.consistency("sync", workers=2,
                                                                 barrier_timeout_seconds=20))
    a = client.session(session.session_id, worker_id="a", version=0)
    b = client.session(session.session_id, worker_id="b", version=0)
    results = {}

    def worker_a():  # its first attempt times out at the barrier; the retry attaches to it
        results["a"] = a.step({"w": np.array([1.0, 0.0], np.float32)}, timeout=0.5,
                              retry=optd.RetryPolicy(max_attempts=10, initial_backoff=0.05))

    t = threading.Thread(target=worker_a)
    t.start()
    time.sleep(1.2)
    results["b"] = b.step({"w": np.array([0.0, 1.0], np.float32)})
    t.join(10)
    assert results["a"].version == results["b"].version == 1 and results["b"].workers == 2
    assert results["a"].attempts >= 2
    np.testing.assert_allclose(session.pull().tensors["w"], [-0.5, -0.5])
    assert session.info().version == 1
    session.delete()


# ---------------------------------------------------------------------------------------------------
# Streams and SYNC workers.

def test_stream_worker_loop(client):
    # Fit w to a target through the stream: each gradient depends on the previous reply.
    target = np.array([1.0, -2.0, 3.0], np.float32)
    session = client.create_session({"w": np.zeros(3)}, "adam", lr=0.1)
    w = np.zeros(3, np.float32)

    def gradients():
        for _ in range(150):
            yield {"w": 2 * (w - target)}

    versions = []
    for result in session.stream_steps(gradients(), timeout=10):
        w = result.parameters["w"]
        versions.append(result.version)
    assert versions == list(range(1, 151))
    np.testing.assert_allclose(w, target, atol=0.05)

    # Pipelined: five requests in flight, replies in order; an error in the middle is one reply.
    with session.stream(timeout=10) as stream:
        seqs = [stream.submit({"w": np.zeros(3)}) for _ in range(2)]
        seqs.append(stream.submit({"w": np.zeros(4)}))  # refused
        seqs += [stream.submit({"w": np.zeros(3)}) for _ in range(2)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        out = []
        for _ in range(5):
            try:
                out.append(stream.result().version)
            except optd.InvalidArgumentError as e:
                out.append(e.code.name)
    assert out == [151, 152, "INVALID_ARGUMENT", 153, 154]

    # errors="yield" keeps the loop going.
    items = [{"w": np.zeros(3)}, {"w": np.zeros(2)}, {"w": np.zeros(3)}]
    got = list(session.stream_steps(items, errors="yield", timeout=10))
    assert got[0].version == 155 and isinstance(got[1], optd.InvalidArgumentError)
    assert got[2].version == 156

    # A client-level stream for any session.
    with client.stream(timeout=10) as stream:
        r = stream.step({"w": np.zeros(3)}, session_id=session.session_id, worker_id="x",
                        sequence=1)
        assert r.version == 157
        with pytest.raises(optd.NotFoundError):
            stream.step({"w": np.zeros(3)}, session_id="no-such-session")
    session.delete()


def test_sync_session_with_worker_threads(client):
    workers = 3
    session = client.create_session(
        {"w": np.zeros(2)}, "sgd", lr=1.0,
        consistency=optd.consistency("sync", workers=workers, barrier_timeout_seconds=10))
    results = [[] for _ in range(workers)]

    def run(k):
        with optd.Client(client.address) as own:  # each worker its own channel
            me = own.session(session.session_id, worker_id=f"w{k}", version=0)
            with me.stream(timeout=10) as stream:
                for _ in range(5):
                    r = stream.step({"w": np.full(2, float(k), np.float32)})
                    results[k].append((r.version, r.workers, r.parameters["w"].tolist()))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results[0] == results[1] == results[2]
    assert [v for v, _, _ in results[0]] == [1, 2, 3, 4, 5]
    assert all(n == workers for _, n, _ in results[0])
    np.testing.assert_allclose(results[0][-1][2], [-5.0, -5.0])  # mean gradient 1, five steps
    session.delete()


# ---------------------------------------------------------------------------------------------------
# Joins: incarnations of a worker id, forgotten workers, outcomes that cannot be known.

# A session remembers at most this many workers (the least recently active is forgotten first).
REMEMBERED_WORKERS = 1024


def _crowd_out(address, session_id, prefix, n=REMEMBERED_WORKERS + 1):
    """Makes the session forget every worker active before: n other workers join and step once
    each (unary, no parameters back), over their own channel. Returns the steps applied (n)."""
    with optd.Client(address, timeout=20.0) as other:
        g = {"w": np.zeros(2, np.float32)}
        for i in range(n):
            worker_id = f"{prefix}-{i}"
            joined = other.join_session(session_id, worker_id)
            r = other.step(session_id, g, worker_id=worker_id, sequence=joined.next_sequence,
                           worker_incarnation=joined.worker_incarnation,
                           return_parameters="none")
            assert not r.duplicate
    return n


def test_a_restarted_worker_is_a_new_incarnation_whose_steps_are_applied(client):
    session = client.create_session({"w": np.zeros(2)}, "sgd", lr=1.0)
    sid, g = session.session_id, {"w": np.ones(2, np.float32)}
    first = client.session(sid, worker_id="trainer-0")
    assert first.incarnation is None  # it joins at its first step
    for k in range(3):
        r = first.step(g)
        assert (r.version, r.sequence, r.duplicate) == (k + 1, k + 1, False)
    assert r.worker_incarnation == first.incarnation > 0
    old_request = first.request(g)  # what the old process would (re)send next: sequence 4

    # The process restarts: a new client, the same worker id, sequences from 1 again. Before
    # joins, these steps were answered as duplicates of the old process's and not applied.
    with optd.Client(client.address) as restarted_client:
        restarted = restarted_client.session(sid, worker_id="trainer-0")
        for k in range(3):
            r = restarted.step(g)
            assert (r.version, r.sequence, r.duplicate, r.rejoins) == (4 + k, k + 1, False, 0)
        assert restarted.incarnation > first.incarnation
        np.testing.assert_allclose(restarted.pull().tensors["w"], [-6.0, -6.0])

        # A late request of the old incarnation (a retry still on its way) is refused, unapplied.
        with pytest.raises(optd.FailedPreconditionError) as e:
            client.send_step(old_request)
        assert e.value.rejoin and "superseded" in e.value.message
        assert session.info().version == 6

        # Two live processes with one worker id take it from each other: a new step of either is
        # refused once, joins again and is applied (once).
        r = first.step(g)
        assert (r.version, r.rejoins, r.sequence) == (7, 1, 1)
        r = restarted.step(g)
        assert (r.version, r.rejoins, r.sequence) == (8, 1, 1)
    session.delete()


def test_a_forgotten_worker_joins_again_and_its_step_is_applied_once(client):
    session = client.create_session({"w": np.zeros(2)}, "sgd", lr=1.0)
    sid, g = session.session_id, {"w": np.ones(2, np.float32)}
    worker = client.session(sid, worker_id="forgotten")
    assert worker.step(g).version == 1
    incarnation = worker.incarnation
    start = time.monotonic()
    version = 1 + _crowd_out(client.address, sid, "crowd-a")
    assert time.monotonic() - start < 30, "1025 joins and steps should take a few seconds"

    # The server forgot the worker: its next step is refused with rejoin before anything is
    # applied, so the Session joins again and resends it under the new incarnation.
    r = worker.step(g)
    assert (r.version, r.duplicate, r.rejoins, r.sequence) == (version + 1, False, 1, 1)
    assert worker.incarnation > incarnation and r.worker_incarnation == worker.incarnation
    r = worker.step(g)
    assert (r.version, r.rejoins, r.sequence) == (version + 2, 0, 2)
    version += 2

    # A retry after a lost reply, across a forced forget: the first attempt was applied, the
    # server forgot the worker, the retry is refused and the client cannot know the outcome.
    # Injected into grpcio's stub: on the pure path only.
    if client.native:
        session.delete()
        return
    real_step = client.stub.Step
    calls = []

    def reply_lost_then_forgotten(request, **kwargs):
        calls.append((request.worker_incarnation, request.sequence))
        reply = real_step(request, **kwargs)  # applied ...
        if len(calls) == 1:
            _crowd_out(client.address, sid, "crowd-b")  # ... then forgotten ...
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "reply lost")  # ... reply lost
        return reply

    client.stub.Step = reply_lost_then_forgotten
    try:
        with pytest.raises(optd.StepOutcomeUnknownError) as e:
            worker.step(g, retry=optd.RetryPolicy(max_attempts=3, initial_backoff=0.001))
    finally:
        client.stub.Step = real_step
    assert len(calls) == 2 and calls[0] == calls[1]  # the same request, resent once, not more
    assert e.value.new_incarnation == worker.incarnation and worker.sequence == 0
    version += 1 + REMEMBERED_WORKERS + 1  # the lost-reply step was applied, once
    assert session.info().version == version
    r = worker.step(g)
    assert (r.version, r.sequence, r.duplicate, r.rejoins) == (version + 1, 1, False, 0)
    session.delete()


def test_stream_steps_join_again_when_the_server_forgot_the_worker(client):
    session = client.create_session({"w": np.zeros(2)}, "sgd", lr=1.0)
    sid, g = session.session_id, {"w": np.ones(2, np.float32)}
    worker = client.session(sid, worker_id="streamer")
    with worker.stream(timeout=20) as stream:
        r = stream.step(g)
        assert (r.version, r.sequence) == (1, 1)
        incarnation = worker.incarnation
        version = 1 + _crowd_out(client.address, sid, "crowd-s")
        # Three steps in flight under the forgotten incarnation: each is refused (not applied)
        # and resent in order under the new one, and the stream goes on.
        seqs = [stream.submit(g) for _ in range(3)]
        assert seqs == [2, 3, 4]
        results = [stream.result() for _ in range(3)]
        assert [r.version for r in results] == [version + 1, version + 2, version + 3]
        assert [r.sequence for r in results] == [1, 2, 3]
        assert [r.rejoins for r in results] == [1, 1, 1] and not any(r.duplicate for r in results)
        assert worker.incarnation > incarnation
        assert all(r.worker_incarnation == worker.incarnation for r in results)
        assert stream.step(g).rejoins == 0
    assert session.info().version == version + 4

    # A restarted process's stream loop: its first steps are applied, not answered as duplicates.
    with optd.Client(client.address) as restarted_client:
        restarted = restarted_client.session(sid, worker_id="streamer")
        got = list(restarted.stream_steps([g, g, g], timeout=20))
        assert [(r.sequence, r.duplicate) for r in got] == [(1, False), (2, False), (3, False)]
        assert [r.version for r in got] == [version + 5, version + 6, version + 7]
        assert restarted.incarnation > worker.incarnation
    session.delete()


# ---------------------------------------------------------------------------------------------------
# Offline installability.

def test_pip_installs_offline_into_a_target_and_works(tmp_path, optd_server):
    # A copy of client/python with the .proto where the build expects it (../../proto), so the
    # in-tree build does not write into the repository.
    src = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "client" / "python", src / "client" / "python",
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "v1"))
    shutil.copytree(REPO_ROOT / "proto", src / "proto")
    target = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    # OPTD_NATIVE=0: the pure package (the copy has no C++ sources); the install with the native
    # extension, in a venv as README says, is tests/python_install_test.py.
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PYTHONDONTWRITEBYTECODE="1", OPTD_NATIVE="0")
    env.pop("PYTHONPATH", None)
    start = time.monotonic()
    proc = subprocess.run(
        ["/usr/bin/python3", "-m", "pip", "install", "--no-build-isolation", "--no-deps",
         "--no-index", "--no-cache-dir", "--target", str(target), str(src / "client" / "python")],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - start < 300
    for name in ("__init__.py", "optd_pb2.py", "optd_pb2_grpc.py"):
        assert (target / "optd" / "v1" / name).is_file()
    script = textwrap.dedent(f"""
        import numpy as np, optd
        from optd.v1 import optd_pb2
        assert optd.__file__.startswith({str(target)!r}), optd.__file__
        assert optd_pb2.__file__.startswith({str(target)!r}), optd_pb2.__file__
        c = optd.Client({optd_server.address!r})
        s = c.create_session({{"w": np.zeros(2)}}, "sgd", lr=1.0)
        print(s.step({{"w": np.ones(2)}}).parameters["w"].tolist())
        s.delete()
    """)
    run = subprocess.run(["/usr/bin/python3", "-c", script], cwd=tmp_path,
                         env=dict(env, PYTHONPATH=str(target)), capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "[-1.0, -1.0]"


def test_stubs_come_from_the_build_tree_in_a_checkout():
    from optd.v1 import optd_pb2  # pylint: disable=import-outside-toplevel
    assert optd_pb2.__file__.startswith(str(build_dir() / "python")), optd_pb2.__file__
    assert optd.__file__.startswith(str(REPO_ROOT / "client" / "python"))


def test_learning_rate_free_estimates_and_the_evaluation_point(client):
    """Session.step returns the optimizer's estimates; Schedule-Free answers with x on request, and
    an optimizer without an evaluation point refuses it (FailedPreconditionError)."""
    w = {"w": RNG.standard_normal((4, 3)).astype(np.float32)}
    prodigy = client.create_session(w, "prodigy", session_id=_unique("prodigy"))
    result = prodigy.step({"w": np.ones((4, 3), np.float32)})
    assert result.point == "training"
    assert set(result.estimates) == {"d", "effective_lr"}
    assert result.estimates["d"] == pytest.approx(1e-6)  # d0: the first step cannot move it
    assert dict(prodigy.info().optimizer_estimates) == result.estimates
    with pytest.raises(optd.FailedPreconditionError, match="keeps no evaluation point"):
        prodigy.pull(point="evaluation")
    prodigy.delete()

    sf = client.create_session(w, "schedulefree_sgd", lr=0.1, session_id=_unique("sf"))
    y = sf.step({"w": np.ones((4, 3), np.float32)})
    x = sf.step({"w": np.ones((4, 3), np.float32)}, return_point="evaluation")
    assert (y.point, x.point) == ("training", "evaluation")
    pulled_x = sf.pull(point="evaluation")
    pulled_y = sf.pull()
    assert pulled_x.point == "evaluation" and pulled_y.point == "training"
    np.testing.assert_array_equal(pulled_x.tensors["w"], x.parameters["w"])
    assert not np.array_equal(pulled_x.tensors["w"], pulled_y.tensors["w"])
    with pytest.raises(optd.InvalidArgumentError):
        sf.pull(point="sideways")
    sf.delete()
