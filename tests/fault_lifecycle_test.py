"""Fault tests: the server's life (issue #11). SIGTERM while work is in flight, SIGTERM after large
messages, and a second server on a port that is taken. Every optd here is started by the test
and stopped by it.

* SIGTERM with in-flight work (--shutdown_grace=2s): four workers stepping unary calls, two
  stepping on streams, a SYNC barrier with one of its two workers waiting, an idle stream and a
  client that never reads a reply stuck in the server. Every call gets an answer: OK,
  UNAVAILABLE or CANCELLED, never a hang; the barrier's waiter gets UNAVAILABLE at once ("shutting
  down") and nothing was applied at the barrier; every worker thread ends; the versions of the OK
  replies are distinct (each step applied once); the process exits 0 within the grace + 4 s.
* SIGTERM after large messages, nothing in flight: a 32M-parameter session created and pulled
  (64 MB in, 128 MB out), then SIGTERM: exit status 0 within --shutdown_grace (2 s) + 4 s. Four
  servers in a row (what delays the exit is a matter of timing: one server may be lucky).
* Two servers, one port: optd on 127.0.0.1:0, then a second optd with --listen on that port (and
  one with --metrics_listen on the first's metrics port): it exits non-zero within seconds and
  says why, naming the address; the first keeps serving, from new connections too, with its
  session intact.

Run: /usr/bin/python3 -m pytest -q tests/fault_lifecycle_test.py   (OPTD_BUILD_DIR picks the build)
"""

import concurrent.futures
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np
import pytest

from optd_testing import (REPO_ROOT, StepStream, binary_path, from_tensor, load_stubs, start_optd,
                          to_sparse_tensor, to_tensor)
from raw_http2 import RawGrpcConnection

sys.path.insert(0, str(REPO_ROOT / "client" / "python"))
load_stubs()

RPC_TIMEOUT_S = 30.0
GRACE_S = 2
EXIT_MARGIN_S = 4  # the process must be gone within GRACE_S + this after SIGTERM
ENDED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


def sgd(pb2, lr=0.5):
    return pb2.SessionConfig(optimizer=pb2.OptimizerConfig(sgd=pb2.Sgd(lr=lr)))


def sigterm_and_wait(server):
    """Sends SIGTERM; returns (exit status, seconds to exit); SIGKILL after GRACE_S + 15 s."""
    start = time.monotonic()
    code, killed = server.stop(timeout=GRACE_S + 15)
    elapsed = time.monotonic() - start
    assert not killed, f"optd still running {elapsed:.0f} s after SIGTERM\n{server.output()}"
    return code, elapsed


# ---------------------------------------------------------------------------------------------------
# SIGTERM during in-flight steps.

ASYNC_SHAPE = (256, 256)  # 256 KB replies: more than a never-read connection lets through


class Outcome:
    def __init__(self):
        self.ok_versions = []
        self.final = None  # the status code that ended the worker
        self.details = ""
        self.unexpected = []  # (code, details) of answers that are neither OK nor ENDED


def unary_worker(address, pb2, pb2_grpc, w, started, stop_by):
    out = Outcome()
    channel = grpc.insecure_channel(address)
    stub = pb2_grpc.OptimizerStub(channel)
    grad = [to_tensor("w", np.ones(ASYNC_SHAPE, np.float32))]
    try:
        for seq in range(1, 100000):
            if time.monotonic() > stop_by:
                out.unexpected.append(("still stepping", "no error by the deadline"))
                break
            try:
                reply = stub.Step(pb2.StepRequest(session_id="async", worker_id=f"u{w}",
                                                  sequence=seq, gradients=grad),
                                  timeout=RPC_TIMEOUT_S)
                out.ok_versions.append(reply.version)
                if seq == 20:
                    started.release()
            except grpc.RpcError as e:
                out.final, out.details = e.code(), e.details()
                if e.code() not in ENDED:
                    out.unexpected.append((e.code(), e.details()))
                break
    finally:
        channel.close()
    return out


def stream_worker(address, pb2, pb2_grpc, w, started, stop_by):
    out = Outcome()
    channel = grpc.insecure_channel(address)
    stream = StepStream(pb2_grpc.OptimizerStub(channel), timeout=RPC_TIMEOUT_S)
    grad = [to_tensor("w", np.ones(ASYNC_SHAPE, np.float32))]
    try:
        for seq in range(1, 100000):
            if time.monotonic() > stop_by:
                out.unexpected.append(("still stepping", "no error by the deadline"))
                break
            stream.send(pb2.StepRequest(session_id="async", worker_id=f"s{w}", sequence=seq,
                                        gradients=grad))
            try:
                response = stream.recv(timeout=GRACE_S + EXIT_MARGIN_S + 2)
            except grpc.RpcError as e:
                out.final, out.details = e.code(), e.details()
                if e.code() not in ENDED:
                    out.unexpected.append((e.code(), e.details()))
                break
            except queue.Empty:
                out.unexpected.append(("no answer", f"step {seq}: no reply and no status"))
                break
            except EOFError:
                out.unexpected.append(("ended OK", "the stream ended OK with a request unanswered"))
                break
            if response.WhichOneof("result") != "reply":
                out.final, out.details = grpc.StatusCode.UNAVAILABLE, response.error.message
                if response.error.code != grpc.StatusCode.UNAVAILABLE.value[0]:
                    out.unexpected.append((response.error.code, response.error.message))
                break
            out.ok_versions.append(response.reply.version)
            if seq == 20:
                started.release()
    finally:
        stream.cancel()
        channel.close()
    return out


def test_sigterm_answers_every_in_flight_call_and_exits_0_within_grace():
    server = start_optd([f"--shutdown_grace={GRACE_S}s"])
    pb2, pb2_grpc, stub = server.pb2, server.pb2_grpc, server.stub
    stub.CreateSession(pb2.CreateSessionRequest(
        session_id="async", config=sgd(pb2),
        tensors=[to_tensor("w", np.zeros(ASYNC_SHAPE, np.float32))]), timeout=RPC_TIMEOUT_S)
    sync = sgd(pb2)
    sync.consistency.mode = pb2.Consistency.MODE_SYNC
    sync.consistency.workers = 2
    sync.consistency.barrier_timeout_seconds = 120
    stub.CreateSession(pb2.CreateSessionRequest(
        session_id="sync", config=sync, tensors=[to_tensor("w", np.zeros(4, np.float32))]),
        timeout=RPC_TIMEOUT_S)

    channels = []
    bad = None
    try:
        # The SYNC waiter: one of the barrier's two workers.
        sync_channel = grpc.insecure_channel(server.address)
        channels.append(sync_channel)
        waiter = pb2_grpc.OptimizerStub(sync_channel).Step.future(pb2.StepRequest(
            session_id="sync", worker_id="lonely", version=0,
            gradients=[to_tensor("w", np.ones(4, np.float32))]), timeout=RPC_TIMEOUT_S)
        deadline = time.monotonic() + 10
        while stub.GetSession(pb2.GetSessionRequest(session_id="sync"),
                              timeout=RPC_TIMEOUT_S).memory.barrier_bytes == 0:
            assert time.monotonic() < deadline, "the SYNC waiter never reached the barrier"
            time.sleep(0.02)
        # An idle stream, and a client whose stuck 256 KB reply the server cannot send.
        idle_channel = grpc.insecure_channel(server.address)
        channels.append(idle_channel)
        idle = StepStream(pb2_grpc.OptimizerStub(idle_channel), timeout=RPC_TIMEOUT_S)
        bad = RawGrpcConnection("127.0.0.1", server.port)
        bad_call = bad.start_call("/optd.v1.Optimizer/StreamSteps")
        bad.send_message(bad_call, pb2.StepRequest(session_id="async", gradients=[
            to_sparse_tensor("w", ASYNC_SHAPE, [0], np.zeros((1, ASYNC_SHAPE[1]), np.float32))
        ]).SerializeToString())

        started = threading.Semaphore(0)
        stop_by = time.monotonic() + 60
        with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
            futures = [pool.submit(unary_worker, server.address, pb2, pb2_grpc, w, started,
                                   stop_by) for w in range(4)]
            futures += [pool.submit(stream_worker, server.address, pb2, pb2_grpc, w, started,
                                    stop_by) for w in range(2)]
            for _ in range(6):  # every worker has stepped 20 times and is still at it
                assert started.acquire(timeout=30), "a worker did not get going"

            term = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            try:
                waiter.result(timeout=GRACE_S + EXIT_MARGIN_S)
                pytest.fail("the SYNC barrier's lone waiter got OK: a barrier of 2 applied 1")
            except grpc.RpcError as e:
                waited = time.monotonic() - term
                assert e.code() == grpc.StatusCode.UNAVAILABLE, (e.code(), e.details())
                assert "shutting down" in e.details(), e.details()
                assert waited < 1.5, f"the SYNC waiter was answered {waited:.1f} s after SIGTERM"
            except grpc.FutureTimeoutError:
                pytest.fail("the SYNC barrier's waiter got no answer after SIGTERM")

            done, not_done = concurrent.futures.wait(futures, timeout=GRACE_S + EXIT_MARGIN_S + 2)
            assert not not_done, f"{len(not_done)} workers hung after SIGTERM"
            outcomes = [f.result() for f in futures]
            ended = time.monotonic() - term
        with pytest.raises(grpc.RpcError) as idle_end:
            idle.recv(timeout=GRACE_S + EXIT_MARGIN_S)
        assert idle_end.value.code() in ENDED, idle_end.value

        code = server.proc.wait(timeout=GRACE_S + 15)
        exited = time.monotonic() - term
        for w, out in enumerate(outcomes):
            assert not out.unexpected, (
                f"worker {w}: answers other than OK/UNAVAILABLE/CANCELLED: {out.unexpected}")
            assert out.final in ENDED, (w, out.final, out.details)
            assert len(out.ok_versions) >= 20
        versions = [v for out in outcomes for v in out.ok_versions]
        assert len(set(versions)) == len(versions), "two OK replies with one version"
        assert code == 0, f"optd exited with status {code} after SIGTERM\n{server.output()}"
        assert exited < GRACE_S + EXIT_MARGIN_S, (
            f"optd exited {exited:.1f} s after SIGTERM (--shutdown_grace={GRACE_S}s)\n"
            f"{server.output()}")
        print(f"SIGTERM: workers ended after {ended:.2f} s ({[o.final.name for o in outcomes]}), "
              f"exit {code} after {exited:.2f} s; {len(versions)} steps answered OK")
    finally:
        if bad is not None:
            bad.close()
        for channel in channels:
            channel.close()
        server.stop()


# ---------------------------------------------------------------------------------------------------
# SIGTERM after large messages.

def test_sigterm_after_large_messages_exits_0_within_grace():
    n = 32 << 20
    for attempt in range(4):
        server = start_optd([f"--shutdown_grace={GRACE_S}s"])
        pb2, stub = server.pb2, server.stub
        try:
            stub.CreateSession(pb2.CreateSessionRequest(
                session_id="large", config=sgd(pb2),
                tensors=[pb2.Tensor(name="w", shape=[n], dtype=pb2.DTYPE_BF16,
                                    data=bytes(2 * n))]), timeout=RPC_TIMEOUT_S)
            pulled = stub.Pull(pb2.PullRequest(session_id="large"), timeout=RPC_TIMEOUT_S)
            assert len(pulled.tensors[0].data) == 4 * n
            del pulled
        finally:
            code, elapsed = sigterm_and_wait(server)
        assert code == 0 and elapsed < GRACE_S + EXIT_MARGIN_S, (
            f"server {attempt + 1}: nothing in flight, SIGTERM: exit status {code} after "
            f"{elapsed:.1f} s (--shutdown_grace={GRACE_S}s)\n{server.output()}")


# ---------------------------------------------------------------------------------------------------
# SIGTERM with idle clients: nothing to wait for.

def test_sigterm_with_idle_clients_and_idle_streams_exits_at_once_not_after_the_grace():
    """Connected clients that carry no call (an idle grpcio channel, an idle C++ channel of the
    Python native path) and streams waiting for their next request hold nothing that shutdown must
    finish: optd exits 0 at once, not after --shutdown_grace (60 s here). gRPC alone waits for each
    client to answer its GOAWAY (an idle client polls seconds later, or never) and for every open
    stream until the grace ends. The streams' next steps get UNAVAILABLE; the steps made before
    SIGTERM are in the shutdown checkpoint."""
    import optd  # pylint: disable=import-outside-toplevel
    grace_s = 60
    with tempfile.TemporaryDirectory() as folder:
        server = start_optd([f"--shutdown_grace={grace_s}s", f"--checkpoint_dir={folder}"])
        clients = [optd.Client(server.address, native=native)
                   for native in ([False, True] if optd.native.available() else [False])]
        session = clients[0].create_session({"w": np.zeros(4, np.float32)}, "sgd", lr=1.0)
        streams = []
        for i, client in enumerate(clients):
            worker = client.session(session.session_id, worker_id=f"idle{i}")
            worker.step({"w": np.ones(4, np.float32)})  # the channel is connected, then idle
            stream = worker.stream().__enter__()
            stream.step({"w": np.ones(4, np.float32)})  # the stream waits for its next request
            streams.append(stream)
        raw = grpc.insecure_channel(server.address)
        raw_stream = StepStream(server.pb2_grpc.OptimizerStub(raw), timeout=RPC_TIMEOUT_S)
        try:
            code, elapsed = sigterm_and_wait(server)
            assert code == 0 and elapsed < EXIT_MARGIN_S, (
                f"SIGTERM with idle clients and streams: exit status {code} after {elapsed:.1f} s "
                f"(--shutdown_grace={grace_s}s)\n{server.output()}")
            for stream in streams:
                with pytest.raises(optd.UnavailableError):
                    stream.step({"w": np.ones(4, np.float32)})
        finally:
            raw_stream.cancel()
            raw.close()
            for client in clients:
                client.close()
        restarted = start_optd([f"--checkpoint_dir={folder}"])
        try:
            with optd.Client(restarted.address) as client:
                pulled = client.session(session.session_id).pull()
                assert pulled.version == 2 * len(clients)
                np.testing.assert_array_equal(pulled.tensors["w"],
                                              np.full(4, -2.0 * len(clients), np.float32))
        finally:
            restarted.stop()


# ---------------------------------------------------------------------------------------------------
# Two servers on one port.

SECOND_TIMEOUT_S = 10.0


def run_second(args):
    """Runs a second optd to its end (SIGKILL if it is still running after SECOND_TIMEOUT_S)."""
    start = time.monotonic()
    try:
        result = subprocess.run([str(binary_path()), *args], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=SECOND_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:  # subprocess.run killed it
        pytest.fail(f"the second optd {args} was still running after {SECOND_TIMEOUT_S:.0f} s: "
                    f"{e.stdout!r}")
    return result, time.monotonic() - start


def test_a_second_server_on_a_taken_port_exits_and_the_first_keeps_serving():
    first = start_optd(metrics=True)
    pb2, stub = first.pb2, first.stub
    try:
        initial = np.arange(12, dtype=np.float32).reshape(3, 4)
        stub.CreateSession(pb2.CreateSessionRequest(
            session_id="kept", config=sgd(pb2), tensors=[to_tensor("w", initial)]),
            timeout=RPC_TIMEOUT_S)
        stub.Step(pb2.StepRequest(session_id="kept",
                                  gradients=[to_tensor("w", np.ones((3, 4), np.float32))]),
                  timeout=RPC_TIMEOUT_S)

        address = f"127.0.0.1:{first.port}"
        second, elapsed = run_second([f"--listen={address}", "--metrics_listen="])
        assert second.returncode != 0, f"a second optd on {address} ran:\n{second.stdout}"
        assert "another process" in second.stderr and address in second.stderr, second.stderr
        assert "optd listening" not in second.stdout, second.stdout
        assert elapsed < 5, f"the second optd took {elapsed:.1f} s to give up"

        third, elapsed = run_second(["--listen=127.0.0.1:0",
                                     f"--metrics_listen={first.metrics_address}"])
        assert third.returncode != 0, f"a second exporter on {first.metrics_address} ran"
        assert first.metrics_address in third.stderr, third.stderr
        assert elapsed < 5, f"the second optd took {elapsed:.1f} s to give up"

        # The first serves old and new connections, with its session as it was.
        assert "optd_sessions" in first.metrics_text()
        for _ in range(8):
            channel = grpc.insecure_channel(address)
            try:
                other = first.pb2_grpc.OptimizerStub(channel)
                got = other.Pull(pb2.PullRequest(session_id="kept"), timeout=RPC_TIMEOUT_S)
                assert got.version == 1
                np.testing.assert_array_equal(from_tensor(got.tensors[0]), initial - 0.5)
                sessions = other.ListSessions(pb2.ListSessionsRequest(), timeout=RPC_TIMEOUT_S)
                assert [s.session_id for s in sessions.sessions] == ["kept"]
            finally:
                channel.close()
        reply = stub.Step(pb2.StepRequest(session_id="kept",
                                          gradients=[to_tensor("w", np.ones((3, 4), np.float32))]),
                          timeout=RPC_TIMEOUT_S)
        assert reply.version == 2
    finally:
        code, _ = sigterm_and_wait(first)
    assert code == 0, first.output()
