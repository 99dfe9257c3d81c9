"""Crash loop: optd killed with SIGKILL at random moments, restarted on the same port and folder, 20
times, while 4 workers train one SYNC session. A restart loses only what was never durable, and
what it restores is exact.

* The session: Adam, 256,000 + 1,000 parameters, SYNC with K = 4 workers (threads, each with its
  own channel), keyed steps. Worker k's gradient for version v is a fixed function of (k, v):
  integers in [-1000, 1000] times 2^-16, so the mean of the four is exact in float32 and in double.
  The parameters at version v therefore do not depend on when crashes happened: a reference optd
  (never killed, an ASYNC session stepped once per version with the float32 mean) has them.
* optd runs with --checkpoint_dir and --checkpoint_interval=150ms. Each cycle: the workers run,
  optd is killed with SIGKILL after a random 0.2-1.2 s (mid-step, mid-barrier, mid-checkpoint), the
  workers' calls fail, optd is restarted on the same port and folder, and before the workers go on:
    - optd says it restored the session, and logs no checkpoint it could not restore;
    - the restored version is at least every durable_version a reply announced before the kill
      (nothing reported durable is lost) and never goes back;
    - the restored parameters equal the reference's at that version, bit for bit;
    - a new server_incarnation is announced.
  The workers then pick up from the restored version: a gradient for a version ahead of it is
  ABORTED (stale) with the current version, as after any restart.
* At the end optd is stopped gracefully (SIGTERM) and restarted: the final checkpoint holds the very
  last version any worker was told of, and its parameters equal the reference's.

Run: /usr/bin/python3 -m pytest -q tests/crash_loop_test.py   (OPTD_BUILD_DIR picks the build)
Takes about 40 s.
"""

import random
import socket
import tempfile
import threading
import time

import grpc
import numpy as np
import pytest

from optd_testing import OptdProcess, current_version_of, from_tensor, load_stubs, to_tensor

K = 4
CYCLES = 20
TENSORS = [("w", (512, 500)), ("b", (1000,))]
SIZES = [int(np.prod(shape)) for _, shape in TENSORS]
RPC_TIMEOUT_S = 30.0
SESSION = "crash-loop"
SEED = random.randrange(1 << 30)


def gradient(k: int, version: int):
    """Worker k's gradient for version v: small integers times 2^-16 (sums and means are exact)."""
    rng = np.random.default_rng([k, version])
    flat = rng.integers(-1000, 1001, size=sum(SIZES), dtype=np.int32).astype(np.float32)
    flat *= np.float32(2.0 ** -16)
    out, at = [], 0
    for (_, shape), n in zip(TENSORS, SIZES):
        out.append(flat[at:at + n].reshape(shape))
        at += n
    return out


def mean_gradient(version: int):
    parts = [gradient(k, version) for k in range(K)]
    return [sum(p[i] for p in parts) / np.float32(K) for i in range(len(TENSORS))]


def initial_values():
    rng = np.random.default_rng(7)
    return [rng.standard_normal(shape).astype(np.float32) for _, shape in TENSORS]


def adam(pb2):
    return pb2.OptimizerConfig(adam=pb2.Adam(lr=1e-3))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def values_of(response):
    return [from_tensor(t) for t in response.tensors]


class Reference:
    """A never-killed optd whose ASYNC session steps once per version with the exact mean."""

    def __init__(self):
        self.optd = OptdProcess().start()
        pb2 = self.optd.pb2
        self.optd.stub.CreateSession(pb2.CreateSessionRequest(
            session_id="ref", config=pb2.SessionConfig(optimizer=adam(pb2)),
            tensors=[to_tensor(name, a) for (name, _), a in zip(TENSORS, initial_values())]),
            timeout=RPC_TIMEOUT_S)
        self.version = 0

    def at(self, version: int):
        """The parameters at `version` (versions only move forward)."""
        assert version >= self.version, f"the reference cannot go back from {self.version}"
        pb2 = self.optd.pb2
        while self.version < version:
            g = mean_gradient(self.version)
            reply = self.optd.stub.Step(pb2.StepRequest(
                session_id="ref", gradients=[to_tensor(name, a) for (name, _), a in
                                             zip(TENSORS, g)]), timeout=RPC_TIMEOUT_S)
            self.version = reply.version
        pulled = self.optd.stub.Pull(pb2.PullRequest(session_id="ref"), timeout=RPC_TIMEOUT_S)
        assert pulled.version == version
        return values_of(pulled)

    def stop(self):
        self.optd.stop()


class Workers:
    """K worker threads stepping the SYNC session; they pause while `running` is clear."""

    def __init__(self, address, pb2):
        self.address = address
        self.pb2 = pb2
        self.running = threading.Event()
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.latest_version = 0      # the newest version any reply announced
        # The newest version each server process (incarnation) announced: a SIGKILLed one may have
        # announced versions its successor never reached.
        self.latest_by_incarnation = {}
        self.max_durable = -1        # the newest durable_version any reply announced
        self.incarnations = set()
        self.errors = []             # unexpected failures: the test fails on any
        self.steps = 0
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True)
                        for k in range(K)]

    def start(self):
        for t in self.threads:
            t.start()

    def _run(self, k):
        pb2 = self.pb2
        channel = grpc.insecure_channel(self.address, options=[
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.initial_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 200)])
        stub = load_stubs()[1].OptimizerStub(channel)
        version = None
        try:
            while not self.done.is_set():
                if not self.running.wait(0.05):
                    version = None  # a restart may have moved the session: ask again
                    continue
                try:
                    if version is None:
                        version = stub.Pull(pb2.PullRequest(session_id=SESSION, names=["b"]),
                                            timeout=RPC_TIMEOUT_S).version
                    reply = stub.Step(pb2.StepRequest(
                        session_id=SESSION, worker_id=f"worker-{k}", sequence=version + 1,
                        version=version, return_parameters=pb2.RETURN_PARAMETERS_NONE,
                        gradients=[to_tensor(name, a) for (name, _), a in
                                   zip(TENSORS, gradient(k, version))]),
                        timeout=RPC_TIMEOUT_S)
                    with self.lock:
                        self.steps += 1
                        self.latest_version = max(self.latest_version, reply.version)
                        self.latest_by_incarnation[reply.server_incarnation] = max(
                            self.latest_by_incarnation.get(reply.server_incarnation, 0),
                            reply.version)
                        self.max_durable = max(self.max_durable, reply.durable_version)
                        self.incarnations.add(reply.server_incarnation)
                    version = reply.version
                except grpc.RpcError as e:
                    code = e.code()
                    if code == grpc.StatusCode.ABORTED:
                        # Stale after a restart (or a barrier failed by the crash): go on from
                        # the version optd holds.
                        current = current_version_of(e)
                        version = current if current is not None and current >= 0 else None
                    elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                  grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN,
                                  grpc.StatusCode.INTERNAL):
                        # The server died under the call (a reset stream can surface as
                        # UNKNOWN/INTERNAL in grpcio): wait for the restart.
                        version = None
                        time.sleep(0.02)
                    else:
                        with self.lock:
                            self.errors.append(f"worker {k}: {code.name}: {e.details()}")
                        return
        finally:
            channel.close()


def start_optd(port, folder):
    # A short grace: the workers' idle connections would otherwise hold a SIGTERM for the whole
    # default 10 s, and the graceful stop below must end in optd's own shutdown checkpoint.
    return OptdProcess(extra_args=[f"--listen=127.0.0.1:{port}", f"--checkpoint_dir={folder}",
                                   "--checkpoint_interval=150ms", "--checkpoint_keep=2",
                                   "--shutdown_grace=2s"]).start()


def check_restored(optd, reference, previous_version, max_durable, cycle):
    # optd logs the restore count just after its listen line: wait for it (bounded).
    deadline = time.monotonic() + 10
    while "sessions restored" not in optd.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    stderr = optd.stderr_text()
    assert "1 sessions restored" in stderr, f"cycle {cycle}: {optd.output()}"
    assert "cannot be restored" not in stderr and "could not" not in stderr, optd.output()
    pulled = optd.stub.Pull(optd.pb2.PullRequest(session_id=SESSION), timeout=RPC_TIMEOUT_S)
    assert pulled.version >= previous_version, (
        f"cycle {cycle}: restored version {pulled.version} went back from {previous_version}")
    assert pulled.version >= max_durable, (
        f"cycle {cycle}: restored version {pulled.version}, but a reply said version "
        f"{max_durable} was durable")
    assert pulled.durable_version == pulled.version
    want = reference.at(pulled.version)
    for (name, _), got, w in zip(TENSORS, values_of(pulled), want):
        assert np.array_equal(got.view(np.uint32), w.view(np.uint32)), (
            f"cycle {cycle}: tensor {name} at version {pulled.version} differs from the reference "
            f"(max |diff| {np.max(np.abs(got - w))})")
    return pulled


def test_sigkill_at_random_moments_loses_nothing_durable_and_restores_exactly():
    rng = random.Random(SEED)
    print(f"crash loop seed {SEED}")
    port = free_port()
    reference = Reference()
    folder = tempfile.TemporaryDirectory(prefix="optd-crash-loop-")
    optd = start_optd(port, folder.name)
    pb2 = optd.pb2
    cons = pb2.Consistency(mode=pb2.Consistency.MODE_SYNC, workers=K, barrier_timeout_seconds=60)
    optd.stub.CreateSession(pb2.CreateSessionRequest(
        session_id=SESSION, config=pb2.SessionConfig(optimizer=adam(pb2), consistency=cons),
        tensors=[to_tensor(name, a) for (name, _), a in zip(TENSORS, initial_values())]),
        timeout=RPC_TIMEOUT_S)
    workers = Workers(f"127.0.0.1:{port}", pb2)
    workers.start()
    restored_version = 0
    incarnations = {optd.stub.Pull(pb2.PullRequest(session_id=SESSION, names=["b"]),
                                   timeout=RPC_TIMEOUT_S).server_incarnation}
    try:
        for cycle in range(CYCLES):
            workers.running.set()
            time.sleep(rng.uniform(0.2, 1.2))
            workers.running.clear()
            optd.proc.kill()  # SIGKILL: no shutdown checkpoint
            optd.stop()
            assert not workers.errors, workers.errors
            with workers.lock:
                max_durable = workers.max_durable
            optd = start_optd(port, folder.name)
            pulled = check_restored(optd, reference, restored_version, max_durable, cycle)
            assert pulled.server_incarnation not in incarnations
            incarnations.add(pulled.server_incarnation)
            restored_version = pulled.version

        # The last run ends gracefully: the shutdown checkpoint holds the last version its
        # process told (or the version it restored, if it told none: under load the workers may
        # not step at all in 0.5 s, and versions told by the SIGKILLed processes before it may
        # never be reached again).
        last_incarnation = pulled.server_incarnation
        workers.running.set()
        time.sleep(0.5)
        workers.running.clear()
        time.sleep(0.3)  # calls in flight finish (a barrier waiting for a paused worker stays)
        returncode, killed = optd.stop(timeout=60)
        assert not killed, f"optd did not stop within 60 s of SIGTERM\n{optd.output()}"
        assert returncode == 0, f"optd exited with {returncode} after SIGTERM\n{optd.output()}"
        assert not workers.errors, workers.errors
        optd = start_optd(port, folder.name)
        pulled = check_restored(optd, reference, restored_version, workers.max_durable, CYCLES)
        with workers.lock:
            told = workers.latest_by_incarnation.get(last_incarnation, restored_version)
        assert pulled.version == told, (
            f"a graceful stop lost versions: restored {pulled.version}, its process told "
            f"{told} (newest told by any process: {workers.latest_version})")
        assert workers.steps > CYCLES * K, f"the workers barely stepped ({workers.steps} steps)"
        print(f"crash loop: {CYCLES} SIGKILLs, {workers.steps} steps, final version "
              f"{pulled.version}")
    finally:
        workers.done.set()
        for t in workers.threads:
            t.join(10)
        optd.stop()
        reference.stop()
        folder.cleanup()
