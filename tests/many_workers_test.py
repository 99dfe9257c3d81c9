"""Many workers, one model: the concurrency invariant of ASYNC sessions, exactly-once retries.

32 workers (Python threads, each with its own channel) send 200 steps each to one SGD session
(lr = 0.5, small-integer gradients: every partial sum is exact in float32, so the order in which
steps are applied cannot change the result). About 10% of the requests are retried by the client
with the same worker_id and sequence: concurrently with the first send, right after its reply, or
several steps later (within the server's replay window). Afterwards:

* the parameters equal init - lr * (sum of every distinct step's gradient) EXACTLY (a retry applied
  twice, or a lost step, changes them);
* the session version equals the number of distinct steps, and the versions of the first replies are
  exactly 1..N, each once (each step atomic, none lost);
* every retry replied duplicate = true with the first reply's version (and outcome);
* ASYNC staleness: every reply's staleness = (version at arrival) - (request version)
  = reply.version - 1 - request.version.

The same with StreamSteps (one stream per worker; a retry is the same request written again on the
stream, pipelined or after the reply). Also: a forgotten or never-applied sequence number below the
worker's last one is FAILED_PRECONDITION (unary and in a stream, which goes on) and changes nothing,
and deterministic ASYNC staleness.

Run: /usr/bin/python3 -m pytest -q tests/many_workers_test.py   (OPTD_BUILD_DIR picks the build)
"""

import concurrent.futures
import queue
import threading
import time

import grpc
import numpy as np
import pytest

from optd_testing import from_tensor, to_tensor

WORKERS = 32
STEPS = 200
LR = 0.5  # a power of two: lr * integer is exact
TENSORS = [("emb/w", (3, 4)), ("bias", (5,))]
RPC_TIMEOUT_S = 30.0
STREAM_TIMEOUT_S = 120.0
JOIN_TIMEOUT_S = 150.0

# Client retry plan, per (worker, step): ~10% of the requests are sent again.
NO_RETRY, RETRY_AFTER, RETRY_CONCURRENT, RETRY_LATE = 0, 1, 2, 3
RETRY_P = [0.90, 0.04, 0.04, 0.02]
LATE_LAG = 6  # a late retry re-sends the request of LATE_LAG steps earlier (< kReplayWindow = 16)

ABORTED = grpc.StatusCode.ABORTED.value[0]
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]


# ---------------------------------------------------------------------------------------------------
# Helpers.

def sgd_config(pb2, lr=LR):
    return pb2.SessionConfig(optimizer=pb2.OptimizerConfig(sgd=pb2.Sgd(lr=lr)))


def create_session(stub, pb2, session_id, initial, config=None):
    stub.CreateSession(pb2.CreateSessionRequest(
        session_id=session_id, config=config or sgd_config(pb2),
        tensors=[to_tensor(name, a) for (name, _), a in zip(TENSORS, initial)]),
        timeout=RPC_TIMEOUT_S)


def delete_session(stub, pb2, session_id):
    try:
        stub.DeleteSession(pb2.DeleteSessionRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
    except grpc.RpcError:
        pass


def pull(stub, pb2, session_id):
    reply = stub.Pull(pb2.PullRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
    return reply.version, [from_tensor(t).copy() for t in reply.tensors]


class Plan:
    """Seeded integer gradients and the retry plan of every (worker, step)."""

    def __init__(self, seed):
        rng = np.random.default_rng(seed)
        self.initial = [rng.integers(-64, 65, size=shape).astype(np.float32)
                        for _, shape in TENSORS]
        self.grads = [rng.integers(-8, 9, size=(WORKERS, STEPS) + shape).astype(np.float32)
                      for _, shape in TENSORS]
        self.retry = rng.choice(4, size=(WORKERS, STEPS), p=RETRY_P)
        self.retry[:, :LATE_LAG][self.retry[:, :LATE_LAG] == RETRY_LATE] = RETRY_AFTER

    def expected(self):
        # Every value is a multiple of 0.5 below 2^20: exact in float64 and in float32.
        return [(init.astype(np.float64) - LR * g.astype(np.float64).sum(axis=(0, 1)))
                .astype(np.float32) for init, g in zip(self.initial, self.grads)]

    def request(self, pb2, session_id, w, s, version):
        return pb2.StepRequest(
            session_id=session_id, worker_id=f"worker-{w:02d}", sequence=s + 1, version=version,
            return_parameters=pb2.RETURN_PARAMETERS_NONE,
            gradients=[to_tensor(name, g[w, s]) for (name, _), g in zip(TENSORS, self.grads)])


class WorkerLog:
    def __init__(self):
        self.versions = [None] * STEPS  # version of each step's first (non-duplicate) reply
        self.retries = {RETRY_AFTER: 0, RETRY_CONCURRENT: 0, RETRY_LATE: 0}


def check_first_reply(w, s, reply, sent_version, last_version):
    where = f"worker {w} step {s + 1}"
    assert not reply.duplicate, f"{where}: first send replied duplicate = true\n{reply}"
    assert reply.version > last_version, (
        f"{where}: version {reply.version} not above the worker's previous {last_version}")
    assert reply.parameters_version >= reply.version, f"{where}\n{reply}"
    assert reply.staleness == reply.version - 1 - sent_version, (
        f"{where}: ASYNC staleness {reply.staleness}; the request was computed at version "
        f"{sent_version} and the step was applied as version {reply.version}, so the session was at "
        f"{reply.version - 1} on arrival: staleness must be {reply.version - 1 - sent_version}")
    assert len(reply.parameters) == 0, f"{where}: RETURN_PARAMETERS_NONE returned parameters"


def check_duplicate(w, s, dup, first, how):
    where = f"worker {w} step {s + 1} ({how} retry)"
    assert dup.duplicate, (f"{where}: a retry with the same worker_id and sequence must reply "
                           f"duplicate = true\nfirst: {first}\nretry: {dup}")
    assert dup.version == first.version, (
        f"{where}: retry replied version {dup.version}, the first reply {first.version}")
    assert dup.parameters_version >= first.version, f"{where}\n{dup}"
    assert dup.gradient_norm == first.gradient_norm, f"{where}\nfirst: {first}\nretry: {dup}"
    assert dup.learning_rate == first.learning_rate, f"{where}\nfirst: {first}\nretry: {dup}"
    assert dup.staleness == first.staleness, f"{where}\nfirst: {first}\nretry: {dup}"
    assert len(dup.parameters) == 0, f"{where}: RETURN_PARAMETERS_NONE returned parameters"


def run_workers(target):
    """Runs target(w) for every worker in its own thread; re-raises the first failure."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = [pool.submit(target, w) for w in range(WORKERS)]
        done, not_done = concurrent.futures.wait(futures, timeout=JOIN_TIMEOUT_S)
        assert not not_done, f"{len(not_done)} workers still running after {JOIN_TIMEOUT_S} s"
        return [f.result() for f in futures]


def check_totals(stub, pb2, session_id, plan, logs):
    all_versions = [v for log in logs for v in log.versions]
    assert None not in all_versions
    assert sorted(all_versions) == list(range(1, WORKERS * STEPS + 1)), (
        "the first replies' versions must be exactly 1..N, each once (each step applied once, "
        "atomically)")
    session = stub.GetSession(pb2.GetSessionRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
    assert session.version == WORKERS * STEPS, (
        f"session version {session.version}, expected {WORKERS * STEPS} distinct steps")
    version, values = pull(stub, pb2, session_id)
    assert version == WORKERS * STEPS
    for (name, _), got, want in zip(TENSORS, values, plan.expected()):
        np.testing.assert_array_equal(
            got, want, err_msg=f"{name}: final parameters != init - lr * sum(each step once)")
    retries = {k: sum(log.retries[k] for log in logs) for k in logs[0].retries}
    total = sum(retries.values())
    # The plan retries ~10% of the requests, with each kind present.
    assert 0.06 * WORKERS * STEPS < total < 0.14 * WORKERS * STEPS, retries
    assert all(n > 0 for n in retries.values()), retries


def new_channel(address):
    return grpc.insecure_channel(address)


# ---------------------------------------------------------------------------------------------------
# The concurrency invariant.

def test_concurrent_unary_steps_with_retries_apply_each_step_once(optd_server):
    pb2 = optd_server.pb2
    plan = Plan(seed=20240601)
    session_id = "many-workers.unary"
    create_session(optd_server.stub, pb2, session_id, plan.initial)
    start = time.monotonic()
    try:
        def worker(w):
            log = WorkerLog()
            requests = []
            channel = new_channel(optd_server.address)
            try:
                stub = optd_server.pb2_grpc.OptimizerStub(channel)
                last_version = 0
                for s in range(STEPS):
                    req = plan.request(pb2, session_id, w, s, last_version)
                    requests.append(req)
                    kind = plan.retry[w, s]
                    if kind == RETRY_CONCURRENT:
                        f1 = stub.Step.future(req, timeout=RPC_TIMEOUT_S)
                        f2 = stub.Step.future(req, timeout=RPC_TIMEOUT_S)
                        r1, r2 = f1.result(), f2.result()
                        assert [r1.duplicate, r2.duplicate].count(False) == 1, (
                            f"worker {w} step {s + 1}: of two concurrent sends of one request "
                            f"exactly one must be applied (duplicate = false)\n{r1}\n{r2}")
                        first, dup = (r1, r2) if not r1.duplicate else (r2, r1)
                        check_first_reply(w, s, first, last_version, last_version)
                        check_duplicate(w, s, dup, first, "concurrent")
                    else:
                        first = stub.Step(req, timeout=RPC_TIMEOUT_S)
                        check_first_reply(w, s, first, last_version, last_version)
                        if kind == RETRY_AFTER:
                            dup = stub.Step(req, timeout=RPC_TIMEOUT_S)
                            check_duplicate(w, s, dup, first, "after-reply")
                    if kind != NO_RETRY:
                        log.retries[kind] += 1
                    log.versions[s] = first.version
                    last_version = first.version
                    if kind == RETRY_LATE:
                        old = s - LATE_LAG
                        dup = stub.Step(requests[old], timeout=RPC_TIMEOUT_S)
                        assert dup.duplicate, (f"worker {w}: re-sent step {old + 1} after step "
                                               f"{s + 1} must be a duplicate\n{dup}")
                        assert dup.version == log.versions[old], (
                            f"worker {w}: late retry of step {old + 1} replied version "
                            f"{dup.version}, first reply {log.versions[old]}")
                        assert dup.parameters_version >= last_version, (
                            f"worker {w}: late retry's parameters_version {dup.parameters_version} "
                            f"is older than the worker's own last step {last_version}")
            finally:
                channel.close()
            return log

        logs = run_workers(worker)
        check_totals(optd_server.stub, pb2, session_id, plan, logs)
    finally:
        delete_session(optd_server.stub, pb2, session_id)
    elapsed = time.monotonic() - start
    assert elapsed < JOIN_TIMEOUT_S


class StreamWorker:
    """One StreamSteps call: requests are written from a queue, replies read in order."""

    def __init__(self, stub):
        self._q = queue.Queue()
        self._replies = stub.StreamSteps(iter(self._q.get, None), timeout=STREAM_TIMEOUT_S)

    def send(self, request):
        self._q.put(request)

    def recv(self):
        return next(self._replies)

    def close(self):
        self._q.put(None)
        rest = list(self._replies)
        assert not rest, f"replies after the last request: {rest}"


def test_concurrent_stream_steps_with_retries_apply_each_step_once(optd_server):
    pb2 = optd_server.pb2
    plan = Plan(seed=20240602)
    session_id = "many-workers.stream"
    create_session(optd_server.stub, pb2, session_id, plan.initial)
    try:
        def reply_of(w, s, response):
            assert response.WhichOneof("result") == "reply", (
                f"worker {w} step {s + 1}: stream reply is an error\n{response}")
            return response.reply

        def worker(w):
            log = WorkerLog()
            requests = []
            channel = new_channel(optd_server.address)
            try:
                stream = StreamWorker(optd_server.pb2_grpc.OptimizerStub(channel))
                last_version = 0
                for s in range(STEPS):
                    req = plan.request(pb2, session_id, w, s, last_version)
                    requests.append(req)
                    kind = plan.retry[w, s]
                    stream.send(req)
                    if kind == RETRY_CONCURRENT:
                        stream.send(req)  # pipelined: written before the first reply is read
                    first = reply_of(w, s, stream.recv())
                    check_first_reply(w, s, first, last_version, last_version)
                    if kind == RETRY_CONCURRENT:
                        check_duplicate(w, s, reply_of(w, s, stream.recv()), first, "pipelined")
                    elif kind == RETRY_AFTER:
                        stream.send(req)
                        check_duplicate(w, s, reply_of(w, s, stream.recv()), first, "after-reply")
                    if kind != NO_RETRY:
                        log.retries[kind] += 1
                    log.versions[s] = first.version
                    last_version = first.version
                    if kind == RETRY_LATE:
                        old = s - LATE_LAG
                        stream.send(requests[old])
                        dup = reply_of(w, old, stream.recv())
                        assert dup.duplicate and dup.version == log.versions[old], (
                            f"worker {w}: late retry of step {old + 1} (first version "
                            f"{log.versions[old]})\n{dup}")
                        assert dup.parameters_version >= last_version, f"worker {w}\n{dup}"
                stream.close()
            finally:
                channel.close()
            return log

        logs = run_workers(worker)
        check_totals(optd_server.stub, pb2, session_id, plan, logs)
    finally:
        delete_session(optd_server.stub, pb2, session_id)


# ---------------------------------------------------------------------------------------------------
# Sequence numbers the server cannot honour.

def test_forgotten_or_never_applied_sequence_is_failed_precondition(optd_server):
    pb2, stub = optd_server.pb2, optd_server.stub
    session_id = "many-workers.sequence"
    initial = [np.zeros(shape, np.float32) for _, shape in TENSORS]
    create_session(stub, pb2, session_id, initial)

    def req(seq, worker="fp-worker", scale=1.0):
        return pb2.StepRequest(
            session_id=session_id, worker_id=worker, sequence=seq,
            return_parameters=pb2.RETURN_PARAMETERS_NONE,
            gradients=[to_tensor(name, np.full(shape, scale, np.float32))
                       for name, shape in TENSORS])

    def expect_unchanged(version):
        v, values = pull(stub, pb2, session_id)
        assert v == version, f"a refused step changed the version: {v}, expected {version}"
        for got, want in zip(values, expected):
            np.testing.assert_array_equal(got, want, err_msg="a refused step changed parameters")

    try:
        replies = [stub.Step(req(seq), timeout=RPC_TIMEOUT_S) for seq in range(1, 21)]
        assert [r.version for r in replies] == list(range(1, 21))
        expected = [a - LR * 20 for a in initial]

        # Sequence 1 is below the last one (20) and out of the replay window (16): forgotten.
        with pytest.raises(grpc.RpcError) as err:
            stub.Step(req(1), timeout=RPC_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value
        msg = err.value.details()
        assert "fp-worker" in msg and "sequence" in msg and "20" in msg, (
            f"the message must name the worker, the sequence and the last one: {msg!r}")
        expect_unchanged(20)

        # Sequence 5 is still remembered: a duplicate with its first outcome.
        dup = stub.Step(req(5), timeout=RPC_TIMEOUT_S)
        assert dup.duplicate and dup.version == 5 and dup.parameters_version == 20, dup
        expect_unchanged(20)

        # Jump to 30; 25 was never applied and is below the last one.
        assert stub.Step(req(30), timeout=RPC_TIMEOUT_S).version == 21
        expected = [a - LR * 21 for a in initial]
        with pytest.raises(grpc.RpcError) as err:
            stub.Step(req(25), timeout=RPC_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value
        assert "fp-worker" in err.value.details() and "25" in err.value.details(), err.value
        expect_unchanged(21)

        # The same in a stream: the refusal is a StepError and the stream goes on.
        channel = new_channel(optd_server.address)
        try:
            stream = StreamWorker(optd_server.pb2_grpc.OptimizerStub(channel))
            stream.send(req(3))
            r = stream.recv()
            assert r.WhichOneof("result") == "error", r
            assert r.error.code == FAILED_PRECONDITION, r
            assert "fp-worker" in r.error.message, r
            stream.send(req(31))
            r = stream.recv()
            assert r.WhichOneof("result") == "reply" and r.reply.version == 22, r
            assert not r.reply.duplicate
            stream.close()
        finally:
            channel.close()
        expected = [a - LR * 22 for a in initial]
        expect_unchanged(22)

        # Another worker's sequences are its own.
        assert stub.Step(req(1, worker="other-worker"), timeout=RPC_TIMEOUT_S).version == 23
        expected = [a - LR * 23 for a in initial]

        # A sequence needs a worker id; a negative one is out of range.
        for bad in (pb2.StepRequest(session_id=session_id, sequence=40,
                                    gradients=req(40).gradients),
                    req(-1)):
            with pytest.raises(grpc.RpcError) as err:
                stub.Step(bad, timeout=RPC_TIMEOUT_S)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
            assert "sequence" in err.value.details() or "worker_id" in err.value.details()
        expect_unchanged(23)
    finally:
        delete_session(stub, pb2, session_id)


# ---------------------------------------------------------------------------------------------------
# ASYNC staleness, deterministically.

def test_async_staleness_is_reported(optd_server):
    pb2, stub = optd_server.pb2, optd_server.stub
    session_id = "many-workers.staleness"
    create_session(stub, pb2, session_id, [np.zeros(shape, np.float32) for _, shape in TENSORS])

    def step(worker, version=None, seq=0):
        kw = {} if version is None else {"version": version}
        return stub.Step(pb2.StepRequest(
            session_id=session_id, worker_id=worker, sequence=seq,
            return_parameters=pb2.RETURN_PARAMETERS_NONE,
            gradients=[to_tensor(name, np.ones(shape, np.float32)) for name, shape in TENSORS],
            **kw), timeout=RPC_TIMEOUT_S)

    try:
        pulled, _ = pull(stub, pb2, session_id)
        assert pulled == 0
        for i in range(3):
            r = step("b", version=i)
            assert (r.version, r.staleness) == (i + 1, 0), r
        r = step("a", version=0, seq=1)  # computed at 0, the session is at 3
        assert (r.version, r.staleness) == (4, 3), r
        again = step("a", version=0, seq=1)  # its retry: the same outcome
        assert again.duplicate and (again.version, again.staleness) == (4, 3), again
        r = step("a")  # no version: staleness 0
        assert (r.version, r.staleness) == (5, 0), r
        r = step("b", version=2)
        assert (r.version, r.staleness) == (6, 3), r
        with pytest.raises(grpc.RpcError) as err:  # ahead of the session
            step("a", version=99)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert "99" in err.value.details(), err.value
        assert pull(stub, pb2, session_id)[0] == 6
    finally:
        delete_session(stub, pb2, session_id)
