"""Fault tests: clients that misbehave (issue #11). Each starts its own optd and checks that other
clients are served normally, that the server's memory stays bounded, that nothing changed that
should not have, and that it exits with status 0 on SIGTERM.

* A client that never reads its replies (raw HTTP/2, tests/raw_http2.py: the socket is never read
  and no flow-control window is ever granted, so the server cannot send more than 64 KB in all):
  - on one StreamSteps stream, it pipelines ~200 steps whose replies are all parameters (16 MB).
    The server applies the first, holds its reply and reads no further: the others are never
    applied. Meanwhile small steps from another client take milliseconds, the big session keeps
    stepping for others, the server's RSS stays within one stuck reply and one copy, and once the
    client disconnects its stuck reply is let go (`reply_bytes` 0) and the whole memory budget is
    available again (a session the size of what is left is created).
  - on many calls at once (48 StreamSteps streams or unary Step / Pull calls on one connection,
    one request each, replies in F32 or BF16): the server's RSS stays within its memory budget
    (--max_memory_bytes) plus a fixed allowance, other clients are served; three such clients in
    turn take no more memory than the first, and once they are gone their stuck replies are let
    go and the whole budget is available again.
* 500 idle StreamSteps streams (10 grpcio channels of 50; half of them did one step first): the
  server counts 500 started streams, adds no thread per stream, serves other clients' steps with
  bounded latency; closing them ends every one (OK when half-closed, CANCELLED when cancelled),
  and the server's descriptors and threads come back to where they were.

Run: /usr/bin/python3 -m pytest -q tests/fault_clients_test.py   (OPTD_BUILD_DIR picks the build)
"""

import queue
import re
import statistics
import time

import grpc
import numpy as np
import pytest

from optd_testing import from_tensor, start_optd, to_sparse_tensor, to_tensor
from raw_http2 import FlowControlExhausted, RawGrpcConnection

RPC_TIMEOUT_S = 30.0
SHUTDOWN_GRACE_S = 10  # optd's default --shutdown_grace
MIB = 1 << 20
BUDGET = 160 * MIB  # --max_memory_bytes of these servers
BIG_ROWS, BIG_DIM = 65536, 64  # 4M parameters: a 16 MB reply in F32, 8 MB in BF16
# The small step of a well-behaved client: this long at most, this long at the median (two
# shared cores, another test running beside this one).
SMALL_STEP_MAX_S = 2.0
SMALL_STEP_MEDIAN_S = 0.2


def start_server(extra_args=(), metrics=False):
    return start_optd([f"--max_memory_bytes={BUDGET}", *extra_args], metrics=metrics)


def stop_cleanly(server):
    """SIGTERM: the process must exit with status 0 (within --shutdown_grace + 5 s, its default
    grace: these tests are not about shutdown; fault_lifecycle_test.py is)."""
    code, killed = server.stop(timeout=SHUTDOWN_GRACE_S + 8)
    assert not killed, f"optd did not exit after SIGTERM (SIGKILL needed)\n{server.output()}"
    assert code == 0, f"optd exited with status {code} after SIGTERM\n{server.output()}"


def sgd(pb2, lr=0.5):
    return pb2.SessionConfig(optimizer=pb2.OptimizerConfig(sgd=pb2.Sgd(lr=lr)))


def create(stub, pb2, session_id, values):
    stub.CreateSession(pb2.CreateSessionRequest(
        session_id=session_id, config=sgd(pb2), tensors=[to_tensor("w", values)]),
        timeout=RPC_TIMEOUT_S)


def small_steps(stub, pb2, session_id, count):
    """`count` small steps; their latencies in seconds."""
    latencies = []
    for _ in range(count):
        start = time.monotonic()
        stub.Step(pb2.StepRequest(session_id=session_id,
                                  gradients=[to_tensor("w", np.ones(4, np.float32))]),
                  timeout=RPC_TIMEOUT_S)
        latencies.append(time.monotonic() - start)
    return latencies


def check_latencies(latencies, what):
    assert max(latencies) < SMALL_STEP_MAX_S, f"{what}: slowest small step {max(latencies):.3f} s"
    assert statistics.median(latencies) < SMALL_STEP_MEDIAN_S, (
        f"{what}: median small step {statistics.median(latencies):.3f} s")


def version(stub, pb2, session_id):
    return stub.GetSession(pb2.GetSessionRequest(session_id=session_id),
                           timeout=RPC_TIMEOUT_S).version


def memory(stub, pb2, session_id):
    return stub.GetSession(pb2.GetSessionRequest(session_id=session_id),
                           timeout=RPC_TIMEOUT_S).memory


def budget_in_use(stub, pb2):
    """What the live sessions hold against the budget (all but the exactly-once tables)."""
    sessions = stub.ListSessions(pb2.ListSessionsRequest(page_size=1000),
                                 timeout=RPC_TIMEOUT_S).sessions
    return sum(s.memory.total_bytes - s.memory.exactly_once_bytes for s in sessions)


def check_budget_all_free(stub, pb2):
    """A session the size of what the budget has left (less 1 MiB) is admitted: nothing else
    (requests, replies, copies) still holds any of it. The session is deleted again."""
    free = BUDGET - budget_in_use(stub, pb2) - MIB
    n = free // 4  # SGD without momentum: 4 bytes per parameter
    try:
        stub.CreateSession(pb2.CreateSessionRequest(
            session_id="fill", config=sgd(pb2),
            tensors=[pb2.Tensor(name="w", shape=[n], dtype=pb2.DTYPE_BF16, data=bytes(2 * n))]),
            timeout=RPC_TIMEOUT_S)
    except grpc.RpcError as e:
        pytest.fail(f"a session of {4 * n} bytes (the budget's free part less 1 MiB) was refused: "
                    f"something still holds budget after the client left: {e.details()}")
    stub.DeleteSession(pb2.DeleteSessionRequest(session_id="fill"), timeout=RPC_TIMEOUT_S)


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def sparse_step(pb2, session_id, row, return_parameters=None, dtype=None):
    """A step whose gradient is one row of ones: ~300 bytes asking for a 16 MB reply."""
    req = pb2.StepRequest(session_id=session_id, gradients=[to_sparse_tensor(
        "w", (BIG_ROWS, BIG_DIM), [row], np.ones((1, BIG_DIM), np.float32))])
    if return_parameters is not None:
        req.return_parameters = return_parameters
    if dtype is not None:
        req.return_dtype = dtype
    return req


# ---------------------------------------------------------------------------------------------------
# A client that never reads.

def test_a_stream_that_never_reads_holds_one_reply_and_others_are_served():
    server = start_server()
    pb2, stub = server.pb2, server.stub
    try:
        create(stub, pb2, "big", np.zeros((BIG_ROWS, BIG_DIM), np.float32))
        create(stub, pb2, "other", np.zeros(4, np.float32))
        small_steps(stub, pb2, "other", 20)  # warm
        baseline = server.status()["VmRSS"]

        bad = RawGrpcConnection("127.0.0.1", server.port)
        try:
            stream = bad.start_call("/optd.v1.Optimizer/StreamSteps")
            sent = 0
            try:
                for i in range(1000):
                    bad.send_message(stream, sparse_step(pb2, "big", i).SerializeToString())
                    sent += 1
            except FlowControlExhausted:
                pass
            assert sent > 100, sent
            # The first is applied; its 16 MB reply cannot be sent, so nothing more is read.
            wait_for(lambda: version(stub, pb2, "big") == 1, 10, "the stream's first step")
            rss = [server.status()["VmRSS"]]
            latencies = small_steps(stub, pb2, "other", 50)
            rss.append(server.status()["VmRSS"])
            # Others step the same session: its buffer is copied once (the stuck reply holds the
            # old one) and charged to the budget.
            for _ in range(5):
                reply = stub.Step(sparse_step(pb2, "big", BIG_ROWS - 1,
                                              return_parameters=pb2.RETURN_PARAMETERS_NONE),
                                  timeout=RPC_TIMEOUT_S)
            assert reply.version == 6, f"only the stream's first step may be applied: {reply}"
            held = memory(stub, pb2, "big")
            assert held.reply_bytes == 4 * BIG_ROWS * BIG_DIM, held
            time.sleep(1.0)
            latencies += small_steps(stub, pb2, "other", 50)
            rss.append(server.status()["VmRSS"])
            check_latencies(latencies, "beside a stream that never reads")
            # One stuck 16 MB reply, one copy, and allowance for allocator and gRPC buffers.
            assert max(rss) - baseline < 64 * MIB, (
                f"RSS grew {(max(rss) - baseline) / MIB:.0f} MiB beside a stream that never "
                f"reads (samples {[r // MIB for r in rss]} MiB, baseline {baseline // MIB})")
        finally:
            bad.close()

        wait_for(lambda: memory(stub, pb2, "big").reply_bytes == 0, 10,
                 "the stuck reply let go after the client disconnected")
        check_budget_all_free(stub, pb2)
        pulled = stub.Pull(pb2.PullRequest(session_id="big"), timeout=RPC_TIMEOUT_S)
        assert pulled.version == 6
        want = np.zeros((BIG_ROWS, BIG_DIM), np.float32)
        want[0] = -0.5  # the stream's first step
        want[BIG_ROWS - 1] = -2.5  # the other client's five
        np.testing.assert_array_equal(from_tensor(pulled.tensors[0]), want)
        del pulled
        check_latencies(small_steps(stub, pb2, "other", 20), "after the client left")
        print(f"a stream that never reads: {sent} requests pipelined, RSS +"
              f"{(max(rss) - baseline) / MIB:.0f} MiB, small steps median "
              f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    finally:
        stop_cleanly(server)


def settled_rss(server, below=None, timeout_s=10.0):
    """The server's RSS once it is idle and its trimmer (2 s without allocations) has run: waits
    until RSS is under `below` (or 3 s when None), at most timeout_s, and returns the last value."""
    deadline = time.monotonic() + (3.0 if below is None else timeout_s)
    rss = server.status()["VmRSS"]
    while time.monotonic() < deadline and (below is None or rss >= below):
        time.sleep(0.25)
        rss = server.status()["VmRSS"]
    return rss


MANY = 48  # calls, one request each, on one connection that is never read
ROUNDS = 3  # one such client after another


@pytest.mark.parametrize("method,dtype", [("StreamSteps", "F32"), ("StreamSteps", "BF16"),
                                          ("Step", "BF16"), ("Pull", "BF16")])
def test_many_calls_that_never_read_stay_within_the_memory_budget(method, dtype):
    server = start_server()
    pb2, stub = server.pb2, server.stub
    wire = {"F32": pb2.DTYPE_F32, "BF16": pb2.DTYPE_BF16}[dtype]
    try:
        create(stub, pb2, "big", np.zeros((BIG_ROWS, BIG_DIM), np.float32))
        create(stub, pb2, "other", np.zeros(4, np.float32))
        small_steps(stub, pb2, "other", 20)
        baseline = server.status()["VmRSS"]
        settled_baseline = settled_rss(server)
        peaks, settled = [], []
        for round_ in range(ROUNDS):
            bad = RawGrpcConnection("127.0.0.1", server.port)
            try:
                for i in range(MANY):
                    if method == "Pull":
                        payload = pb2.PullRequest(session_id="big", dtype=wire)
                    else:
                        payload = sparse_step(pb2, "big", i, dtype=wire)
                    call = bad.start_call(f"/optd.v1.Optimizer/{method}")
                    bad.send_message(call, payload.SerializeToString(),
                                     end_stream=method != "StreamSteps")
                # Every call is served before this small step (or at least started): then RSS
                # is sampled until it stops growing.
                latencies = small_steps(stub, pb2, "other", 5)
                rss = [server.status()["VmRSS"]]
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    time.sleep(0.25)
                    rss.append(server.status()["VmRSS"])
                    if len(rss) >= 5 and rss[-1] <= rss[-5]:
                        break
                latencies += small_steps(stub, pb2, "other", 20)
                assert max(latencies) < 15, f"other clients waited {max(latencies):.1f} s"
                peaks.append(max(rss))
                grown = max(rss) - baseline
                assert grown < BUDGET + 64 * MIB, (
                    f"round {round_ + 1}: {MANY} {method} calls with {dtype} replies that are "
                    f"never read grew the server's RSS by {grown // MIB} MiB, beyond its memory budget "
                    f"of {BUDGET // MIB} MiB (+64 MiB allowance); "
                    f"big session memory {memory(stub, pb2, 'big')}")
            finally:
                bad.close()
            wait_for(lambda: memory(stub, pb2, "big").reply_bytes == 0, 10,
                     "stuck replies let go after the client disconnected")
            # Idle, the server hands back what the round freed: the next round's peak is its own,
            # not this one's free memory that malloc kept plus its own.
            settled.append(settled_rss(server, below=settled_baseline + 64 * MIB))
        print(f"{MANY} {method} calls, {dtype} replies, never read: RSS +"
              f"{[(p - baseline) // MIB for p in peaks]} MiB in {ROUNDS} rounds; idle after each: "
              f"{[(r - settled_baseline) // MIB for r in settled]} MiB")
        # Once the server is idle, optd hands freed memory back to the kernel (README
        # "Configuration"): whatever the disconnected clients of each round held is gone.
        assert max(settled) < settled_baseline + 64 * MIB, (
            f"idle after each round, RSS stayed {[(r - settled_baseline) // MIB for r in settled]} "
            f"MiB over the idle baseline: what the disconnected clients held was not released")
        check_budget_all_free(stub, pb2)
        check_latencies(small_steps(stub, pb2, "other", 20), "after the client left")
    finally:
        stop_cleanly(server)


# ---------------------------------------------------------------------------------------------------
# 500 idle streams.

IDLE_CHANNELS = 10
IDLE_PER_CHANNEL = 50


def metric(text, name, method, code=None):
    labels = f'grpc_method="{method}",grpc_service="optd.v1.Optimizer",grpc_type="bidi_stream"'
    if code is not None:
        labels = f'grpc_code="{code}",' + labels
    m = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    assert m, f"no {name}{{{labels}}} in /metrics"
    return float(m.group(1))


def handled_total(text, method):
    """grpc_server_handled_total of a bidi method, summed over its codes."""
    pattern = (rf'^grpc_server_handled_total\{{grpc_code="\w+",grpc_method="{method}",'
               rf'grpc_service="optd.v1.Optimizer",grpc_type="bidi_stream"\}} (\S+)$')
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def test_500_idle_streams_cost_no_thread_each_and_close_cleanly():
    server = start_server(metrics=True)
    pb2, stub = server.pb2, server.stub
    channels, calls, requests = [], [], []
    try:
        create(stub, pb2, "idle", np.zeros(4, np.float32))
        create(stub, pb2, "other", np.zeros(4, np.float32))
        small_steps(stub, pb2, "other", 20)
        before = server.status()
        fds_before = server.open_fds()

        start = time.monotonic()
        for c in range(IDLE_CHANNELS):
            channel = grpc.insecure_channel(server.address)
            channels.append(channel)
            s = server.pb2_grpc.OptimizerStub(channel)
            for _ in range(IDLE_PER_CHANNEL):
                q = queue.Queue()
                requests.append(q)
                calls.append(s.StreamSteps(iter(q.get, None), timeout=120))
        # Half of them step once (and so are certainly open on the server), then all stay idle.
        for i in range(0, len(calls), 2):
            requests[i].put(pb2.StepRequest(session_id="idle",
                                            gradients=[to_tensor("w", np.ones(4, np.float32))],
                                            return_parameters=pb2.RETURN_PARAMETERS_NONE))
        for i in range(0, len(calls), 2):
            response = next(calls[i])
            assert response.WhichOneof("result") == "reply", response
        opened = time.monotonic() - start
        wait_for(lambda: metric(server.metrics_text(), "grpc_server_started_total",
                                "StreamSteps") == len(calls), 20, f"{len(calls)} streams started")
        assert version(stub, pb2, "idle") == len(calls) // 2

        latencies = small_steps(stub, pb2, "other", 100)
        check_latencies(latencies, f"beside {len(calls)} idle streams")
        during = server.status()
        assert during["Threads"] <= before["Threads"] + 8, (
            f"{len(calls)} idle streams took threads: {before['Threads']} -> {during['Threads']}")
        assert during["VmRSS"] - before["VmRSS"] < 128 * MIB, (
            f"{len(calls)} idle streams took {(during['VmRSS'] - before['VmRSS']) // MIB} MiB")

        # Close them: four in five half-closed (they end OK), one in five cancelled.
        cancelled = set(range(0, len(calls), 5))
        for i, (q, call) in enumerate(zip(requests, calls)):
            if i in cancelled:
                call.cancel()
            else:
                q.put(None)
        deadline = time.monotonic() + 20
        for i, call in enumerate(calls):
            if i in cancelled:
                continue
            rest = list(call)
            assert not rest, f"stream {i}: replies after the half-close: {rest}"
            assert call.code() == grpc.StatusCode.OK, (i, call.code(), call.details())
            assert time.monotonic() < deadline, "closing the idle streams took over 20 s"
        for i in cancelled:
            assert calls[i].code() == grpc.StatusCode.CANCELLED, (i, calls[i].code())
        for channel in channels:
            channel.close()
        channels.clear()

        # Every stream finished on the server. (It records a cancelled stream as grpc_code="OK",
        # as it does a half-closed one: only the total is checked.)
        wait_for(lambda: handled_total(server.metrics_text(), "StreamSteps") == len(calls), 20,
                 "every idle stream finished on the server")
        wait_for(lambda: server.open_fds() <= fds_before, 20,
                 f"the server's descriptors back to {fds_before} (now {server.open_fds()})")
        after = server.status()
        assert after["Threads"] <= before["Threads"] + 8, (before["Threads"], after["Threads"])
        check_latencies(small_steps(stub, pb2, "other", 50), "after the idle streams closed")
        assert version(stub, pb2, "idle") == len(calls) // 2
        print(f"{len(calls)} idle streams opened in {opened:.1f} s; threads {before['Threads']} -> "
              f"{during['Threads']} -> {after['Threads']}; RSS {before['VmRSS'] // MIB} -> "
              f"{during['VmRSS'] // MIB} MiB; small step median "
              f"{statistics.median(latencies) * 1000:.1f} ms")
    finally:
        for channel in channels:
            channel.close()
        stop_cleanly(server)
