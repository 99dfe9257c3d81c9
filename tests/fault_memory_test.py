"""Fault tests under an address-space limit (issue #11): optd started by `prlimit --as=CAP`.

CAP is what an idle optd maps on this machine (measured first: gRPC's threads and glibc's arenas
take hundreds of MB of address space before the first request) plus 1.25 GiB, about 2 GB here.
optd runs with its default memory budget, which is derived from the limit.

* Memory exhaustion: Adam sessions of ~16M parameters are created until one is refused. The
  refusal is RESOURCE_EXHAUSTED with the numbers (what the session needs, the budget), never
  UNIMPLEMENTED or a dropped call. Every session admitted then steps (unary and StreamSteps: every
  call answered, every reply OK) and ends exactly where a small session of the same values does
  (Adam is element-wise: the big sessions hold the small one's values tiled), which itself matches
  a numpy Adam. SIGTERM then ends the process with status 0 within --shutdown_grace + 4 s.
  The session size is chosen from the announced budget so that the last admitted session leaves
  about 9 bytes per parameter free: room for a dense BF16 step (request + decoded gradient), too
  little for another session, so the refusal is the budget's and every step must succeed.
* Load: 64 workers over 8 SGD sessions, keyed steps (half of the workers joined, with an
  incarnation), ~10% of the steps sent twice (after the reply, concurrently, after the reply on a
  new channel, or after the first attempt was cancelled unread and its channel closed), and ~2%
  reconnects; a quarter of the workers use StreamSteps. Every session ends EXACTLY at
  init - lr * sum(each step once) (integer gradients, lr = 0.5: float sums are exact in any
  order), first replies' versions are 1..N per session, and every retry whose first reply arrived
  is answered duplicate = true with that reply's version.

Run: /usr/bin/python3 -m pytest -q tests/fault_memory_test.py   (OPTD_BUILD_DIR picks the build)
"""

import concurrent.futures
import queue
import time

import grpc
import numpy as np
import pytest

from optd_testing import StepStream, from_tensor, start_optd, to_tensor

GIB = 1 << 30
HEADROOM = 5 * GIB // 4  # address space beyond what idle optd maps
GRACE_S = 2
EXIT_MARGIN_S = 4  # SIGTERM must end the process within GRACE_S + this
RPC_TIMEOUT_S = 60.0
STREAM_REPLY_TIMEOUT_S = 15.0  # a 16M-parameter Adam step takes ~0.7 s here

_idle_vm_size = None


def idle_vm_size():
    """VmSize of an idle optd (no limit) after it has served one call: what it maps before work."""
    global _idle_vm_size
    if _idle_vm_size is None:
        server = start_optd()
        try:
            pb2 = server.pb2
            server.stub.ListSessions(pb2.ListSessionsRequest(), timeout=RPC_TIMEOUT_S)
            time.sleep(0.2)
            _idle_vm_size = server.status()["VmSize"]
        finally:
            code, killed = server.stop()
        assert code == 0 and not killed, server.output()
    return _idle_vm_size


def start_capped(extra_args=()):
    cap = idle_vm_size() + HEADROOM
    server = start_optd([f"--shutdown_grace={GRACE_S}s", *extra_args],
                        wrapper=["prlimit", f"--as={cap}"])
    return server, cap


def stop_within_grace(server):
    """SIGTERM; the problems seen (exit status, time), as a list of strings."""
    start = time.monotonic()
    code, killed = server.stop(timeout=GRACE_S + EXIT_MARGIN_S + 6)
    elapsed = time.monotonic() - start
    problems = []
    if killed:
        problems.append(f"SIGTERM did not end optd within {GRACE_S + EXIT_MARGIN_S + 6} s "
                        f"(SIGKILL needed)")
    elif code != 0:
        problems.append(f"optd exited with status {code} {elapsed:.1f} s after SIGTERM")
    elif elapsed > GRACE_S + EXIT_MARGIN_S:
        problems.append(f"optd took {elapsed:.1f} s to exit after SIGTERM "
                        f"(--shutdown_grace={GRACE_S}s)")
    return problems


def bf16_tensor(pb2, name, values):
    """A DTYPE_BF16 tensor of float32 values that BF16 holds exactly (checked)."""
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4")
    assert not (bits & 0xFFFF).any(), "values must be exact in bfloat16"
    return pb2.Tensor(name=name, shape=values.shape, dtype=pb2.DTYPE_BF16,
                      data=(bits >> 16).astype("<u2").tobytes())


# ---------------------------------------------------------------------------------------------------
# Memory exhaustion.

PERIOD = 4096  # the pattern tiled along every big session's rows
SESSION_BYTES_PER_PARAMETER = 12  # float32 parameters + Adam's two moments


def numpy_adam(p, grads, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        p = p - lr / (1 - beta1 ** t) * m / (np.sqrt(v) / np.sqrt(1 - beta2 ** t) + eps)
    return p


def test_sessions_until_refused_then_every_step_answered_exactly_and_sigterm_exits():
    server, cap = start_capped()
    pb2, stub = server.pb2, server.stub
    problems, created, n = [], [], 0
    try:
        budget = server.memory_budget()
        # k sessions fit, the (k+1)-th does not, and ~9 bytes per parameter stay free.
        k = max(1, budget // (SESSION_BYTES_PER_PARAMETER * (16 << 20)))
        rows = int(budget / (SESSION_BYTES_PER_PARAMETER * (k + 0.75) * PERIOD))
        n = rows * PERIOD
        assert n >= 1 << 20, f"budget {budget} leaves no room for a meaningful session"
        rng = np.random.default_rng(11)
        init = (rng.integers(-64, 65, PERIOD) / 16).astype(np.float32)
        grads = [(rng.integers(-8, 9, PERIOD) / 4).astype(np.float32) for _ in range(2)]
        adam = pb2.SessionConfig(optimizer=pb2.OptimizerConfig(adam=pb2.Adam()))
        # The big sessions' initial values and gradients: the pattern tiled, sent as BF16.
        big_init = bf16_tensor(pb2, "w", np.tile(init, (rows, 1)))
        big_grads = [bf16_tensor(pb2, "w", np.tile(g, (rows, 1))) for g in grads]

        stub.CreateSession(pb2.CreateSessionRequest(
            session_id="pattern", config=adam, tensors=[to_tensor("w", init)]),
            timeout=RPC_TIMEOUT_S)
        refusal = None
        for i in range(k + 3):
            try:
                stub.CreateSession(pb2.CreateSessionRequest(
                    session_id=f"big-{i}", config=adam, tensors=[big_init]),
                    timeout=RPC_TIMEOUT_S)
                created.append(f"big-{i}")
            except grpc.RpcError as e:
                refusal = e
                break
        assert refusal is not None, f"{k + 3} sessions of {n} parameters were all admitted"
        assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (
            f"session {len(created)}: {refusal.code()} {refusal.details()!r}\n{server.output()}")
        needed = SESSION_BYTES_PER_PARAMETER * n
        assert str(needed) in refusal.details() and str(budget) in refusal.details(), (
            f"the refusal must name what the session needs ({needed}) and the budget ({budget}): "
            f"{refusal.details()!r}")
        assert len(created) == k, (
            f"budget {budget}: expected {k} sessions of {n} parameters to fit, {len(created)} did")

        # Every admitted session steps: unary first, then all of them again on one stream.
        def step_request(session_id, i, big):
            grad = big_grads[i] if big else to_tensor("w", grads[i])
            return pb2.StepRequest(session_id=session_id, gradients=[grad],
                                   return_parameters=pb2.RETURN_PARAMETERS_NONE)

        stub.Step(step_request("pattern", 0, False), timeout=RPC_TIMEOUT_S)
        stub.Step(step_request("pattern", 1, False), timeout=RPC_TIMEOUT_S)
        stepped = {}
        for session_id in created:
            try:
                reply = stub.Step(step_request(session_id, 0, True), timeout=RPC_TIMEOUT_S)
                stepped[session_id] = 1
                if reply.version != 1:
                    problems.append(f"{session_id}: unary step replied version {reply.version}")
            except grpc.RpcError as e:
                problems.append(f"{session_id}: unary Step failed: {e.code()} {e.details()!r}")

        stream = StepStream(stub, timeout=30 + 3 * len(created))
        try:
            for session_id in created:
                stream.send(step_request(session_id, 1, True))
                try:
                    response = stream.recv(timeout=STREAM_REPLY_TIMEOUT_S)
                except queue.Empty:
                    problems.append(f"{session_id}: no StreamSteps reply within "
                                    f"{STREAM_REPLY_TIMEOUT_S:.0f} s")
                    break
                except (grpc.RpcError, EOFError) as e:
                    problems.append(f"{session_id}: the stream ended instead of replying: {e}")
                    break
                if response.WhichOneof("result") != "reply":
                    problems.append(f"{session_id}: StreamSteps answered {response.error}")
                    continue
                stepped[session_id] = stepped.get(session_id, 0) + 1
                if response.reply.version != stepped[session_id]:
                    problems.append(f"{session_id}: stream step replied version "
                                    f"{response.reply.version}")
        finally:
            stream.cancel()

        # Exact: each big session holds the pattern session's values, tiled.
        small = from_tensor(stub.Pull(pb2.PullRequest(session_id="pattern"),
                                      timeout=RPC_TIMEOUT_S).tensors[0])
        np.testing.assert_allclose(small, numpy_adam(init, grads), rtol=1e-6, atol=1e-7)
        assert np.abs(small - init).max() > 1e-3, "two Adam steps changed nothing"
        for session_id in created:
            if stepped.get(session_id) != 2:
                continue
            pulled = stub.Pull(pb2.PullRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
            assert pulled.version == 2
            values = from_tensor(pulled.tensors[0])
            mismatched = int((values != small).sum())  # broadcast over rows
            if mismatched:
                problems.append(f"{session_id}: {mismatched} of {n} parameters differ from the "
                                f"pattern session's after the same two steps")
            del pulled, values

        # Still full: the next session is refused again; a small one is served.
        with pytest.raises(grpc.RpcError) as again:
            stub.CreateSession(pb2.CreateSessionRequest(
                session_id="big-again", config=adam, tensors=[big_init]), timeout=RPC_TIMEOUT_S)
        assert again.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, again.value
        stub.CreateSession(pb2.CreateSessionRequest(
            session_id="small", config=adam, tensors=[to_tensor("w", init)]),
            timeout=RPC_TIMEOUT_S)
        assert stub.Step(step_request("small", 0, False),
                         timeout=RPC_TIMEOUT_S).version == 1
    finally:
        problems += stop_within_grace(server)
    assert not problems, (
        f"under prlimit --as={cap} (budget {server.memory_budget()} bytes), {len(created)} "
        f"Adam sessions of {n} parameters:\n  " + "\n  ".join(problems) + "\n" + server.output())


# ---------------------------------------------------------------------------------------------------
# Load: 64 workers over 8 sessions, retries and reconnects, under the limit.

SESSIONS = 8
WORKERS = 64  # worker w steps session w % SESSIONS
STEPS = 150
LR = 0.5  # a power of two: lr * integer is exact
TENSORS = [("emb/w", (16, 32)), ("bias", (7,))]
LOAD_TIMEOUT_S = 120.0

# What happens around each (worker, step).
NO_RETRY, RETRY_AFTER, RETRY_CONCURRENT, RETRY_RECONNECT, RETRY_LOST, RECONNECT = range(6)
PLAN_P = [0.88, 0.025, 0.02, 0.025, 0.03, 0.02]
# RETRY_AFTER: sent again on the same channel after the reply. RETRY_CONCURRENT: sent twice
# at once (a stream: written twice before reading). RETRY_RECONNECT: sent again after the reply
# on a new channel, which the worker keeps. RETRY_LOST: the first send is cancelled unread and its
# channel closed; sent again on a new channel (applied once, whether the first arrived or not).
# RECONNECT: the worker closes its channel and opens a new one before sending (no retry).


class LoadPlan:
    def __init__(self, seed):
        rng = np.random.default_rng(seed)
        self.initial = [[rng.integers(-64, 65, size=shape).astype(np.float32)
                         for _, shape in TENSORS] for _ in range(SESSIONS)]
        self.grads = [rng.integers(-8, 9, size=(WORKERS, STEPS) + shape).astype(np.float32)
                      for _, shape in TENSORS]
        self.events = rng.choice(len(PLAN_P), size=(WORKERS, STEPS), p=PLAN_P)

    def expected(self, s):
        mine = [w for w in range(WORKERS) if w % SESSIONS == s]
        return [(init.astype(np.float64) - LR * g[mine].astype(np.float64).sum(axis=(0, 1)))
                .astype(np.float32) for init, g in zip(self.initial[s], self.grads)]

    def request(self, pb2, w, step, incarnation):
        return pb2.StepRequest(
            session_id=f"load-{w % SESSIONS}", worker_id=f"worker-{w:02d}", sequence=step + 1,
            worker_incarnation=incarnation, return_parameters=pb2.RETURN_PARAMETERS_NONE,
            gradients=[to_tensor(name, g[w, step]) for (name, _), g in zip(TENSORS, self.grads)])


class WorkerLog:
    def __init__(self):
        self.versions = [None] * STEPS  # the version each step was applied as
        self.duplicates = 0  # retries answered duplicate = true
        self.lost_first_applied = 0  # RETRY_LOST whose cancelled first send had been applied
        self.reconnects = 0


def check_duplicate(where, dup, first):
    assert dup.duplicate, f"{where}: a retry must be answered duplicate = true\n{first}\n{dup}"
    assert dup.version == first.version, f"{where}: retry version {dup.version}\n{first}\n{dup}"
    assert dup.gradient_norm == first.gradient_norm, f"{where}\n{first}\n{dup}"


def unary_worker(server, plan, w, incarnation):
    pb2, pb2_grpc = server.pb2, server.pb2_grpc
    log = WorkerLog()
    channel = grpc.insecure_channel(server.address)
    stub = pb2_grpc.OptimizerStub(channel)

    def reconnect():
        nonlocal channel, stub
        channel.close()
        channel = grpc.insecure_channel(server.address)
        stub = pb2_grpc.OptimizerStub(channel)
        log.reconnects += 1

    try:
        for s in range(STEPS):
            where = f"worker {w} step {s + 1}"
            req = plan.request(pb2, w, s, incarnation)
            event = plan.events[w, s]
            if event == RECONNECT:
                reconnect()
            if event == RETRY_CONCURRENT:
                f1 = stub.Step.future(req, timeout=RPC_TIMEOUT_S)
                f2 = stub.Step.future(req, timeout=RPC_TIMEOUT_S)
                r1, r2 = f1.result(), f2.result()
                assert [r1.duplicate, r2.duplicate].count(False) == 1, f"{where}\n{r1}\n{r2}"
                first, dup = (r1, r2) if not r1.duplicate else (r2, r1)
                check_duplicate(where, dup, first)
                log.duplicates += 1
            elif event == RETRY_LOST:
                lost = stub.Step.future(req, timeout=RPC_TIMEOUT_S)
                lost.cancel()
                reconnect()
                first = stub.Step(req, timeout=RPC_TIMEOUT_S)
                if first.duplicate:  # the cancelled send had been applied: this is its outcome
                    log.lost_first_applied += 1
                    log.duplicates += 1
            else:
                first = stub.Step(req, timeout=RPC_TIMEOUT_S)
                assert not first.duplicate, f"{where}: a first send replied duplicate\n{first}"
                if event in (RETRY_AFTER, RETRY_RECONNECT):
                    if event == RETRY_RECONNECT:
                        reconnect()
                    check_duplicate(where, stub.Step(req, timeout=RPC_TIMEOUT_S), first)
                    log.duplicates += 1
            log.versions[s] = first.version
    finally:
        channel.close()
    return log


def stream_worker(server, plan, w, incarnation):
    pb2, pb2_grpc = server.pb2, server.pb2_grpc
    log = WorkerLog()
    channel = grpc.insecure_channel(server.address)
    stream = StepStream(pb2_grpc.OptimizerStub(channel), timeout=LOAD_TIMEOUT_S)

    def recv(where):
        response = stream.recv(timeout=RPC_TIMEOUT_S)
        assert response.WhichOneof("result") == "reply", f"{where}: {response}"
        return response.reply

    def reconnect(cancel=False):
        nonlocal channel, stream
        if cancel:
            stream.cancel()
        else:
            stream.close()
            assert stream.join(RPC_TIMEOUT_S), "a half-closed stream did not end"
        channel.close()
        channel = grpc.insecure_channel(server.address)
        stream = StepStream(pb2_grpc.OptimizerStub(channel), timeout=LOAD_TIMEOUT_S)
        log.reconnects += 1

    try:
        for s in range(STEPS):
            where = f"stream worker {w} step {s + 1}"
            req = plan.request(pb2, w, s, incarnation)
            event = plan.events[w, s]
            if event == RECONNECT:
                reconnect()
            if event == RETRY_LOST:
                stream.send(req)
                reconnect(cancel=True)  # the reply, if any, is never read
                stream.send(req)
                first = recv(where)
                if first.duplicate:
                    log.lost_first_applied += 1
                    log.duplicates += 1
            else:
                stream.send(req)
                if event == RETRY_CONCURRENT:
                    stream.send(req)  # pipelined
                first = recv(where)
                assert not first.duplicate, f"{where}: a first send replied duplicate\n{first}"
                if event == RETRY_CONCURRENT:
                    check_duplicate(where, recv(where), first)
                    log.duplicates += 1
                elif event in (RETRY_AFTER, RETRY_RECONNECT):
                    if event == RETRY_RECONNECT:
                        reconnect()
                    stream.send(req)
                    check_duplicate(where, recv(where), first)
                    log.duplicates += 1
            log.versions[s] = first.version
        stream.close()
        assert stream.join(RPC_TIMEOUT_S), "a half-closed stream did not end"
    finally:
        stream.cancel()
        channel.close()
    return log


def test_64_workers_8_sessions_retries_and_reconnects_under_the_limit_apply_each_step_once():
    server, cap = start_capped()
    pb2, stub = server.pb2, server.stub
    plan = LoadPlan(seed=20240611)
    problems = []
    try:
        sgd = pb2.SessionConfig(optimizer=pb2.OptimizerConfig(sgd=pb2.Sgd(lr=LR)))
        for s in range(SESSIONS):
            stub.CreateSession(pb2.CreateSessionRequest(
                session_id=f"load-{s}", config=sgd,
                tensors=[to_tensor(name, a) for (name, _), a in zip(TENSORS, plan.initial[s])]),
                timeout=RPC_TIMEOUT_S)
        # Even workers join (steps carry their incarnation); odd ones send plain keyed steps.
        incarnations = [0] * WORKERS
        for w in range(0, WORKERS, 2):
            joined = stub.JoinSession(pb2.JoinSessionRequest(
                session_id=f"load-{w % SESSIONS}", worker_id=f"worker-{w:02d}"),
                timeout=RPC_TIMEOUT_S)
            assert joined.next_sequence == 1 and joined.worker_incarnation > 0, joined
            incarnations[w] = joined.worker_incarnation

        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
            futures = [pool.submit(stream_worker if w % 4 == 3 else unary_worker,
                                   server, plan, w, incarnations[w]) for w in range(WORKERS)]
            done, not_done = concurrent.futures.wait(futures, timeout=LOAD_TIMEOUT_S)
            assert not not_done, f"{len(not_done)} workers still running after {LOAD_TIMEOUT_S} s"
            logs = [f.result() for f in futures]
        elapsed = time.monotonic() - start

        for s in range(SESSIONS):
            mine = [w for w in range(WORKERS) if w % SESSIONS == s]
            versions = sorted(v for w in mine for v in logs[w].versions)
            assert versions == list(range(1, len(mine) * STEPS + 1)), (
                f"session load-{s}: the steps' versions must be 1..{len(mine) * STEPS}, each once")
            pulled = stub.Pull(pb2.PullRequest(session_id=f"load-{s}"), timeout=RPC_TIMEOUT_S)
            assert pulled.version == len(mine) * STEPS
            for (name, _), t, want in zip(TENSORS, pulled.tensors, plan.expected(s)):
                np.testing.assert_array_equal(
                    from_tensor(t), want,
                    err_msg=f"load-{s} {name}: not init - lr * sum(each step once)")
        events = {name: int((plan.events == e).sum()) for e, name in enumerate(
            ["none", "after", "concurrent", "reconnect", "lost", "reconnect-only"])}
        retries = sum(v for k, v in events.items() if k not in ("none", "reconnect-only"))
        assert 0.07 * WORKERS * STEPS < retries < 0.13 * WORKERS * STEPS, events
        duplicates = sum(log.duplicates for log in logs)
        lost_applied = sum(log.lost_first_applied for log in logs)
        assert duplicates == retries - events["lost"] + lost_applied, (duplicates, events)
        print(f"load: {WORKERS * STEPS} steps, {retries} retries ({events}), {duplicates} "
              f"duplicates, {lost_applied} cancelled first sends had been applied, "
              f"{sum(log.reconnects for log in logs)} reconnects, {elapsed:.1f} s")
    finally:
        problems += stop_within_grace(server)
    assert not problems, "\n".join(problems) + "\n" + server.output()
