"""SYNC and BOUNDED consistency against the real optd binary.

* Parity: K = 4 workers (threads, each with its own channel; unary Step or StreamSteps), 60 steps,
  each worker sending its own gradient with version = its last reply's version, match ONE torch
  optimizer (Adam; SGD with momentum) stepping on the mean (REDUCE_MEAN) or the sum (REDUCE_SUM) of
  the four gradients, rtol 1e-4 / atol 1e-5. Every worker gets the same new version and
  bit-identical parameters, workers = 4 and no missing workers.
* A stalled worker: K = 3, quorum 0, barrier_timeout_seconds 0.5: two workers send, the third never
  does: both calls fail with ABORTED naming the missing worker (configured worker_ids, or ids learned
  from an earlier barrier), with the current version in "optd-current-version", and nothing is
  applied; the next full barrier applies exactly its own gradients. With quorum 2 the step proceeds
  and the replies name the stalled worker in missing_workers.
* A stale gradient (version != current) is ABORTED with the current version in the trailing metadata
  (unary) or StepError.current_version (stream); a version ahead, no version, no worker id, or a
  worker not in worker_ids is INVALID_ARGUMENT. A retry of a contribution still waiting at the
  barrier gets the same outcome (duplicate = true); a second gradient of one worker for one barrier is
  INVALID_ARGUMENT.
* Waiting never blocks a server thread: 64 workers (K = 64) on a 2-core box; while 63 calls wait at
  the barrier, other RPCs are answered promptly; then every call completes with the same version.
* BOUNDED: a gradient S + 1 versions old is ABORTED (current version given), S old is applied with
  staleness S; version is required (INVALID_ARGUMENT without it).

Run: /usr/bin/python3 -m pytest -q tests/sync_test.py   (OPTD_BUILD_DIR picks the build)
"""

import concurrent.futures
import dataclasses
import queue
import time
import zlib

import grpc
import numpy as np
import pytest
import torch

from optd_testing import current_version_of, from_tensor, to_tensor

torch.set_num_threads(1)

RTOL = 1e-4
ATOL = 1e-5
STEPS = 60
K = 4
TENSORS = [("layer/w", (4, 3)), ("layer/b", (3,))]
RPC_TIMEOUT_S = 30.0
STREAM_TIMEOUT_S = 90.0
JOIN_TIMEOUT_S = 90.0
BARRIER_TIMEOUT_S = 0.5

ABORTED = grpc.StatusCode.ABORTED.value[0]


# ---------------------------------------------------------------------------------------------------
# Helpers.

def consistency(pb2, mode="MODE_SYNC", **kw):
    c = pb2.Consistency(mode=pb2.Consistency.Mode.Value(mode))
    for key, value in kw.items():
        if key == "reduce":
            value = pb2.Consistency.Reduce.Value(value)
        if key == "worker_ids":
            c.worker_ids.extend(value)
        else:
            setattr(c, key, value)
    return c


def config(pb2, kind, hp, cons):
    msg = {"sgd": pb2.Sgd, "adam": pb2.Adam}[kind](**hp)
    return pb2.SessionConfig(optimizer=pb2.OptimizerConfig(**{kind: msg}), consistency=cons)


def create(stub, pb2, session_id, cfg, initial):
    stub.CreateSession(pb2.CreateSessionRequest(
        session_id=session_id, config=cfg,
        tensors=[to_tensor(name, a) for (name, _), a in zip(TENSORS, initial)]),
        timeout=RPC_TIMEOUT_S)


def delete(stub, pb2, session_id):
    try:
        stub.DeleteSession(pb2.DeleteSessionRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
    except grpc.RpcError:
        pass


def pull(stub, pb2, session_id):
    reply = stub.Pull(pb2.PullRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
    return reply.version, [from_tensor(t).copy() for t in reply.tensors]


def step_request(pb2, session_id, worker, grads, version=None, sequence=0,
                 ret="RETURN_PARAMETERS_ALL"):
    kw = {} if version is None else {"version": version}
    return pb2.StepRequest(
        session_id=session_id, worker_id=worker, sequence=sequence,
        return_parameters=pb2.ReturnParameters.Value(ret),
        gradients=[to_tensor(name, g) for (name, _), g in zip(TENSORS, grads)], **kw)


def int_grads(rng):
    return [rng.integers(-8, 9, size=shape).astype(np.float32) for _, shape in TENSORS]


class StreamWorker:
    """One StreamSteps call: requests are written from a queue, replies read in order."""

    def __init__(self, stub):
        self._q = queue.Queue()
        self._replies = stub.StreamSteps(iter(self._q.get, None), timeout=STREAM_TIMEOUT_S)

    def step(self, request):
        self._q.put(request)
        return next(self._replies)

    def close(self):
        self._q.put(None)
        rest = list(self._replies)
        assert not rest, f"replies after the last request: {rest}"


def expect_aborted_with_version(err, version, *needles):
    assert err.code() == grpc.StatusCode.ABORTED, f"{err.code()}: {err.details()}"
    got = current_version_of(err)
    assert got == version, (f"ABORTED must carry the current version {version} in trailing metadata "
                            f"'optd-current-version'; got {got} ({err.trailing_metadata()})")
    for needle in needles:
        assert needle in err.details(), f"{needle!r} not in {err.details()!r}"


# ---------------------------------------------------------------------------------------------------
# Parity with one torch optimizer on the combined gradient.

@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    kind: str
    hp: dict
    reduce: str
    transport: str       # "unary" or "stream"
    worker_ids: bool     # configured ids, or any ids (learned)


CASES = [
    Case("adam-mean-unary-ids", "adam", dict(lr=0.01), "REDUCE_MEAN", "unary", True),
    Case("sgd-momentum-mean-stream", "sgd", dict(lr=0.05, momentum=0.9), "REDUCE_MEAN", "stream",
         False),
    Case("adam-sum-stream-ids", "adam", dict(lr=0.005, beta1=0.8, beta2=0.95, eps=1e-3),
         "REDUCE_SUM", "stream", True),
    Case("sgd-momentum-nesterov-sum-unary", "sgd",
         dict(lr=0.02, momentum=0.8, nesterov=True), "REDUCE_SUM", "unary", False),
]


def torch_optimizer(case, params):
    hp = dict(case.hp)
    if case.kind == "adam":
        betas = (hp.pop("beta1", 0.9), hp.pop("beta2", 0.999))
        return torch.optim.Adam(params, betas=betas, foreach=False, **hp)
    return torch.optim.SGD(params, foreach=False, **hp)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_sync_workers_match_one_torch_optimizer(optd_server, case):
    pb2, stub = optd_server.pb2, optd_server.stub
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    initial = [rng.standard_normal(shape).astype(np.float32) for _, shape in TENSORS]
    grads = [[[(rng.standard_normal(shape) * rng.uniform(0.2, 2.0)).astype(np.float32)
               for _, shape in TENSORS] for _ in range(K)] for _ in range(STEPS)]
    workers = [f"w{i}" for i in range(K)]
    cons = consistency(pb2, workers=K, reduce=case.reduce,
                       **({"worker_ids": workers} if case.worker_ids else {}))
    session_id = f"sync.{case.id}"
    create(stub, pb2, session_id, config(pb2, case.kind, case.hp, cons), initial)
    try:
        def worker(w):
            channel = grpc.insecure_channel(optd_server.address)
            try:
                wstub = optd_server.pb2_grpc.OptimizerStub(channel)
                stream = StreamWorker(wstub) if case.transport == "stream" else None
                replies = []
                version = 0
                for s in range(STEPS):
                    req = step_request(pb2, session_id, workers[w], grads[s][w], version=version,
                                       sequence=s + 1)
                    if stream is None:
                        reply = wstub.Step(req, timeout=RPC_TIMEOUT_S)
                    else:
                        r = stream.step(req)
                        assert r.WhichOneof("result") == "reply", f"worker {w} step {s + 1}: {r}"
                        reply = r.reply
                    replies.append(reply)
                    version = reply.version
                if stream is not None:
                    stream.close()
                return replies
            finally:
                channel.close()

        with concurrent.futures.ThreadPoolExecutor(max_workers=K) as pool:
            futures = [pool.submit(worker, w) for w in range(K)]
            _, not_done = concurrent.futures.wait(futures, timeout=JOIN_TIMEOUT_S)
            assert not not_done, f"SYNC workers still running after {JOIN_TIMEOUT_S} s"
            results = [f.result() for f in futures]

        params = [torch.tensor(a.copy(), requires_grad=True) for a in initial]
        opt = torch_optimizer(case, params)
        names = [name for name, _ in TENSORS]
        for s in range(STEPS):
            combined = []
            for t in range(len(TENSORS)):
                total = np.sum([grads[s][w][t].astype(np.float64) for w in range(K)], axis=0)
                combined.append((total / K if case.reduce == "REDUCE_MEAN" else total)
                                .astype(np.float32))
            for p, g in zip(params, combined):
                p.grad = torch.from_numpy(g.copy())
            opt.step()
            want = [p.detach().numpy().copy() for p in params]

            first = results[0][s]
            for w in range(K):
                r = results[w][s]
                where = f"{case.id}: step {s + 1}, worker {w}"
                assert r.version == s + 1, f"{where}: version {r.version}"
                assert r.parameters_version == s + 1, f"{where}\n{r}"
                assert r.workers == K and list(r.missing_workers) == [], f"{where}\n{r}"
                assert not r.duplicate and r.staleness == 0, f"{where}\n{r}"
                assert [t.name for t in r.parameters] == names, where
                assert [t.data for t in r.parameters] == [t.data for t in first.parameters], (
                    f"{where}: parameters differ from worker 0's reply of the same step")
                assert r.gradient_norm == first.gradient_norm, where
            got = [from_tensor(t) for t in first.parameters]
            for name, g, wv in zip(names, got, want):
                np.testing.assert_allclose(g, wv, rtol=RTOL, atol=ATOL,
                                           err_msg=f"{case.id}: step {s + 1}, {name} vs torch")
            norm = np.sqrt(sum(float(np.sum(np.square(c.astype(np.float64)))) for c in combined))
            np.testing.assert_allclose(first.gradient_norm, norm, rtol=1e-5,
                                       err_msg=f"{case.id}: step {s + 1}: gradient_norm must be "
                                               f"the combined gradient's")
        version, final = pull(stub, pb2, session_id)
        assert version == STEPS
        for g, t in zip(final, results[0][-1].parameters):
            np.testing.assert_array_equal(g, from_tensor(t))
    finally:
        delete(stub, pb2, session_id)


# ---------------------------------------------------------------------------------------------------
# A stalled worker.

def sgd_sync(pb2, **kw):
    return config(pb2, "sgd", dict(lr=0.5), consistency(pb2, **kw))


def send_concurrently(stub, requests, timeout=RPC_TIMEOUT_S):
    """Sends every request at once; returns (reply or RpcError) per request and the elapsed time."""
    start = time.monotonic()
    futures = [stub.Step.future(r, timeout=timeout) for r in requests]
    out = []
    for f in futures:
        try:
            out.append(f.result())
        except grpc.RpcError as e:
            out.append(e)
    return out, time.monotonic() - start


@pytest.mark.parametrize("ids", ["configured", "learned"])
def test_stalled_worker_aborts_barrier_and_applies_nothing(optd_server, ids):
    pb2, stub = optd_server.pb2, optd_server.stub
    rng = np.random.default_rng(7 if ids == "configured" else 8)
    initial = [rng.integers(-16, 17, size=shape).astype(np.float32) for _, shape in TENSORS]
    names = ["w0", "w1", "w2"]
    kw = dict(mode="MODE_SYNC", workers=3, quorum=0, reduce="REDUCE_SUM",
              barrier_timeout_seconds=BARRIER_TIMEOUT_S)
    if ids == "configured":
        kw["worker_ids"] = names
    session_id = f"sync.stalled-{ids}"
    create(stub, pb2, session_id, sgd_sync(pb2, **kw), initial)
    expected = [a.copy() for a in initial]
    version = 0
    try:
        if ids == "learned":  # one full barrier first, so the server knows the three ids
            g = [int_grads(rng) for _ in names]
            replies, _ = send_concurrently(stub, [step_request(pb2, session_id, n, g[i], 0)
                                                  for i, n in enumerate(names)])
            assert all(not isinstance(r, grpc.RpcError) and r.version == 1 for r in replies), replies
            expected = [e - 0.5 * sum(gi[t] for gi in g) for t, e in enumerate(expected)]
            version = 1

        g = [int_grads(rng) for _ in names]
        replies, elapsed = send_concurrently(
            stub, [step_request(pb2, session_id, n, g[i], version) for i, n in enumerate(names[:2])])
        for r in replies:
            assert isinstance(r, grpc.RpcError), f"a barrier short of its quorum must fail: {r}"
            expect_aborted_with_version(r, version, "w2")
            assert "w0" not in r.details().split("missing")[-1], (
                f"w0 sent its gradient and must not be named missing: {r.details()!r}")
        assert BARRIER_TIMEOUT_S * 0.9 <= elapsed < BARRIER_TIMEOUT_S + 5.0, (
            f"the barrier failed after {elapsed:.2f} s; its timeout is {BARRIER_TIMEOUT_S} s")
        got_version, values = pull(stub, pb2, session_id)
        assert got_version == version, "an expired barrier must not apply anything"
        for got, want in zip(values, expected):
            np.testing.assert_array_equal(got, want, err_msg="an expired barrier changed parameters")

        # The next barrier starts clean: exactly its own three gradients are applied.
        g = [int_grads(rng) for _ in names]
        replies, _ = send_concurrently(
            stub, [step_request(pb2, session_id, n, g[i], version) for i, n in enumerate(names)])
        for r in replies:
            assert not isinstance(r, grpc.RpcError), r
            assert r.version == version + 1 and r.workers == 3 and not r.missing_workers, r
        expected = [e - 0.5 * sum(gi[t] for gi in g) for t, e in enumerate(expected)]
        for got, want in zip([from_tensor(t) for t in replies[0].parameters], expected):
            np.testing.assert_array_equal(got, want)
    finally:
        delete(stub, pb2, session_id)


def test_quorum_lets_the_barrier_proceed_without_the_stalled_worker(optd_server):
    pb2, stub = optd_server.pb2, optd_server.stub
    rng = np.random.default_rng(9)
    initial = [rng.integers(-16, 17, size=shape).astype(np.float32) for _, shape in TENSORS]
    session_id = "sync.quorum"
    create(stub, pb2, session_id, sgd_sync(
        pb2, mode="MODE_SYNC", workers=3, worker_ids=["w0", "w1", "w2"], quorum=2,
        reduce="REDUCE_MEAN", barrier_timeout_seconds=BARRIER_TIMEOUT_S), initial)
    try:
        g = [int_grads(rng) for _ in range(2)]
        replies, elapsed = send_concurrently(
            stub, [step_request(pb2, session_id, f"w{i}", g[i], 0) for i in range(2)])
        assert elapsed >= BARRIER_TIMEOUT_S * 0.9, (
            f"with 2 of 3 gradients the barrier must wait for its timeout; it took {elapsed:.2f} s")
        assert elapsed < BARRIER_TIMEOUT_S + 5.0
        for r in replies:
            assert not isinstance(r, grpc.RpcError), f"quorum 2 of 3 must proceed: {r}"
            assert r.version == 1 and r.workers == 2, r
            assert list(r.missing_workers) == ["w2"], r
        assert replies[0].parameters[0].data == replies[1].parameters[0].data
        # REDUCE_MEAN: the mean of the gradients present (exact: halves of small integers).
        expected = [a - 0.5 * ((g[0][t] + g[1][t]) / 2) for t, a in enumerate(initial)]
        for got, want in zip([from_tensor(t) for t in replies[0].parameters], expected):
            np.testing.assert_array_equal(got, want)

        # The stalled worker wakes up with its gradient of version 0: stale.
        with pytest.raises(grpc.RpcError) as err:
            stub.Step(step_request(pb2, session_id, "w2", int_grads(rng), 0), timeout=RPC_TIMEOUT_S)
        expect_aborted_with_version(err.value, 1)

        # A full barrier proceeds at once (no wait for the deadline), with nobody missing.
        g = [int_grads(rng) for _ in range(3)]
        replies, elapsed = send_concurrently(
            stub, [step_request(pb2, session_id, f"w{i}", g[i], 1) for i in range(3)])
        for r in replies:
            assert not isinstance(r, grpc.RpcError), r
            assert r.version == 2 and r.workers == 3 and not r.missing_workers, r
        assert elapsed < BARRIER_TIMEOUT_S * 0.9, (
            f"a full barrier must proceed at once; it took {elapsed:.2f} s")
    finally:
        delete(stub, pb2, session_id)


# ---------------------------------------------------------------------------------------------------
# Stale and malformed SYNC requests; retries at the barrier.

def test_sync_stale_gradient_is_aborted_with_current_version(optd_server):
    pb2, stub = optd_server.pb2, optd_server.stub
    rng = np.random.default_rng(10)
    initial = [rng.integers(-16, 17, size=shape).astype(np.float32) for _, shape in TENSORS]
    session_id = "sync.stale"
    create(stub, pb2, session_id, sgd_sync(pb2, mode="MODE_SYNC", workers=2,
                                           worker_ids=["a", "b"], reduce="REDUCE_SUM"), initial)
    try:
        for v in range(2):
            replies, _ = send_concurrently(stub, [
                step_request(pb2, session_id, w, int_grads(rng), v) for w in ("a", "b")])
            assert all(not isinstance(r, grpc.RpcError) and r.version == v + 1 for r in replies)
        _, before = pull(stub, pb2, session_id)

        for stale in (0, 1):
            with pytest.raises(grpc.RpcError) as err:
                stub.Step(step_request(pb2, session_id, "a", int_grads(rng), stale),
                          timeout=RPC_TIMEOUT_S)
            expect_aborted_with_version(err.value, 2, str(stale))

        channel = grpc.insecure_channel(optd_server.address)
        try:
            stream = StreamWorker(optd_server.pb2_grpc.OptimizerStub(channel))
            r = stream.step(step_request(pb2, session_id, "b", int_grads(rng), 1))
            assert r.WhichOneof("result") == "error", r
            assert r.error.code == ABORTED and r.error.current_version == 2, r
            # Refusals that are not about staleness carry current_version = -1.
            r = stream.step(step_request(pb2, session_id, "b", int_grads(rng), None))
            assert r.WhichOneof("result") == "error", r
            assert r.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], r
            assert r.error.current_version == -1, r
            stream.close()
        finally:
            channel.close()

        bad = [
            (step_request(pb2, session_id, "a", int_grads(rng), 7), "7"),      # ahead
            (step_request(pb2, session_id, "a", int_grads(rng), None), "version"),  # no version
            (step_request(pb2, session_id, "", int_grads(rng), 2), "worker_id"),
            (step_request(pb2, session_id, "c", int_grads(rng), 2), '"c"'),    # not in worker_ids
        ]
        for req, needle in bad:
            with pytest.raises(grpc.RpcError) as err:
                stub.Step(req, timeout=RPC_TIMEOUT_S)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (req.version, err.value)
            assert needle in err.value.details(), err.value.details()

        version, after = pull(stub, pb2, session_id)
        assert version == 2
        for x, y in zip(before, after):
            np.testing.assert_array_equal(x, y, err_msg="a refused SYNC request changed parameters")
    finally:
        delete(stub, pb2, session_id)


def test_sync_retry_while_waiting_gets_the_same_outcome(optd_server):
    pb2, stub = optd_server.pb2, optd_server.stub
    rng = np.random.default_rng(11)
    initial = [np.zeros(shape, np.float32) for _, shape in TENSORS]
    session_id = "sync.retry"
    create(stub, pb2, session_id, sgd_sync(pb2, mode="MODE_SYNC", workers=2,
                                           reduce="REDUCE_SUM"), initial)
    try:
        ga, gb = int_grads(rng), int_grads(rng)
        req_a = step_request(pb2, session_id, "a", ga, 0, sequence=1)
        first = stub.Step.future(req_a, timeout=RPC_TIMEOUT_S)
        time.sleep(0.3)  # let it reach the barrier
        retry = stub.Step.future(req_a, timeout=RPC_TIMEOUT_S)
        time.sleep(0.3)
        assert not first.done() and not retry.done(), "nothing may complete before b sends"
        # Another gradient of the same worker for the same barrier: refused at once.
        with pytest.raises(grpc.RpcError) as err:
            stub.Step(step_request(pb2, session_id, "a", ga, 0, sequence=2), timeout=RPC_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        rb = stub.Step(step_request(pb2, session_id, "b", gb, 0, sequence=1), timeout=RPC_TIMEOUT_S)
        r1, r2 = first.result(), retry.result()
        assert (r1.version, r2.version, rb.version) == (1, 1, 1), (r1, r2, rb)
        assert [r1.duplicate, r2.duplicate].count(True) == 1, (r1, r2)
        assert not rb.duplicate and rb.workers == 2
        expected = [-0.5 * (a + b) for a, b in zip(ga, gb)]
        for r in (r1, r2, rb):
            for got, want in zip([from_tensor(t) for t in r.parameters], expected):
                np.testing.assert_array_equal(got, want)
        # After the barrier: the same request is a duplicate of version 1.
        again = stub.Step(req_a, timeout=RPC_TIMEOUT_S)
        assert again.duplicate and again.version == 1, again
        assert pull(stub, pb2, session_id)[0] == 1
    finally:
        delete(stub, pb2, session_id)


# ---------------------------------------------------------------------------------------------------
# Waiting never blocks a server thread.

def test_many_waiting_sync_calls_do_not_block_the_server(optd_server):
    pb2, stub = optd_server.pb2, optd_server.stub
    n = 64
    rounds = 3
    rng = np.random.default_rng(12)
    initial = [rng.integers(-16, 17, size=shape).astype(np.float32) for _, shape in TENSORS]
    session_id = "sync.many"
    other_id = "sync.many-other"
    create(stub, pb2, session_id, sgd_sync(pb2, mode="MODE_SYNC", workers=n,
                                           reduce="REDUCE_SUM"), initial)
    create(stub, pb2, other_id, config(pb2, "sgd", dict(lr=0.5), consistency(pb2, "MODE_ASYNC")),
           initial)
    channels = [grpc.insecure_channel(optd_server.address) for _ in range(4)]
    try:
        stubs = [optd_server.pb2_grpc.OptimizerStub(c) for c in channels]
        expected = [a.copy() for a in initial]
        for rnd in range(rounds):
            g = [int_grads(rng) for _ in range(n)]
            waiting = [stubs[i % 4].Step.future(
                step_request(pb2, session_id, f"worker-{i}", g[i], rnd), timeout=RPC_TIMEOUT_S)
                for i in range(n - 1)]
            # While n - 1 calls wait at the barrier, the server answers other calls promptly.
            time.sleep(0.3)
            for k in range(10):
                t0 = time.monotonic()
                stub.Pull(pb2.PullRequest(session_id=other_id), timeout=5.0)
                stub.GetSession(pb2.GetSessionRequest(session_id=session_id), timeout=5.0)
                r = stub.Step(step_request(pb2, other_id, "async", int_grads(rng),
                                           ret="RETURN_PARAMETERS_NONE"), timeout=5.0)
                assert r.version == rnd * 10 + k + 1
                assert time.monotonic() - t0 < 2.0, "the server is slow while SYNC calls wait"
            assert not any(f.done() for f in waiting), "a SYNC call completed without its barrier"
            assert pull(stub, pb2, session_id)[0] == rnd
            last = stub.Step(step_request(pb2, session_id, f"worker-{n - 1}", g[n - 1], rnd),
                             timeout=RPC_TIMEOUT_S)
            replies = [f.result(timeout=RPC_TIMEOUT_S) for f in waiting] + [last]
            expected = [e - 0.5 * np.sum([gi[t] for gi in g], axis=0)
                        for t, e in enumerate(expected)]
            for r in replies:
                assert r.version == rnd + 1 and r.workers == n and not r.missing_workers, r
                assert [t.data for t in r.parameters] == [t.data for t in last.parameters]
            for got, want in zip([from_tensor(t) for t in last.parameters], expected):
                np.testing.assert_array_equal(got, want)
    finally:
        for c in channels:
            c.close()
        delete(stub, pb2, session_id)
        delete(stub, pb2, other_id)


# ---------------------------------------------------------------------------------------------------
# BOUNDED staleness.

@pytest.mark.parametrize("max_staleness", [0, 2])
def test_bounded_staleness(optd_server, max_staleness):
    pb2, stub = optd_server.pb2, optd_server.stub
    rng = np.random.default_rng(13 + max_staleness)
    initial = [rng.integers(-16, 17, size=shape).astype(np.float32) for _, shape in TENSORS]
    session_id = f"bounded.s{max_staleness}"
    create(stub, pb2, session_id, config(pb2, "sgd", dict(lr=0.5), consistency(
        pb2, "MODE_BOUNDED", max_staleness=max_staleness)), initial)
    s = max_staleness
    try:
        expected = [a.copy() for a in initial]

        def apply(version, worker="w"):
            g = int_grads(rng)
            r = stub.Step(step_request(pb2, session_id, worker, g, version), timeout=RPC_TIMEOUT_S)
            for t in range(len(expected)):
                expected[t] = expected[t] - 0.5 * g[t]
            return r

        for v in range(5):
            assert apply(v).version == v + 1
        # S + 1 versions old: refused, nothing applied.
        with pytest.raises(grpc.RpcError) as err:
            stub.Step(step_request(pb2, session_id, "w", int_grads(rng), 5 - (s + 1)),
                      timeout=RPC_TIMEOUT_S)
        expect_aborted_with_version(err.value, 5)
        # S versions old: applied, staleness S.
        r = apply(5 - s)
        assert (r.version, r.staleness) == (6, s), r
        # Version is required.
        with pytest.raises(grpc.RpcError) as err:
            stub.Step(step_request(pb2, session_id, "w", int_grads(rng), None),
                      timeout=RPC_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert "version" in err.value.details(), err.value.details()
        # In a stream: the refusal carries current_version, and the stream goes on.
        channel = grpc.insecure_channel(optd_server.address)
        try:
            stream = StreamWorker(optd_server.pb2_grpc.OptimizerStub(channel))
            resp = stream.step(step_request(pb2, session_id, "w", int_grads(rng), 6 - (s + 1)))
            assert resp.WhichOneof("result") == "error", resp
            assert resp.error.code == ABORTED and resp.error.current_version == 6, resp
            g = int_grads(rng)
            resp = stream.step(step_request(pb2, session_id, "w", g, 6 - s))
            assert resp.WhichOneof("result") == "reply", resp
            assert (resp.reply.version, resp.reply.staleness) == (7, s), resp
            expected = [e - 0.5 * gt for e, gt in zip(expected, g)]
            stream.close()
        finally:
            channel.close()
        version, values = pull(stub, pb2, session_id)
        assert version == 7
        for got, want in zip(values, expected):
            np.testing.assert_array_equal(got, want)
    finally:
        delete(stub, pb2, session_id)
