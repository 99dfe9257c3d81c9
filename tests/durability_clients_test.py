"""Durability from the Python client (issue #12) against real optd processes that are SIGKILLed.

Each test runs optd with --checkpoint_dir in a temporary folder on a fixed free port, kills it
(SIGKILL: no shutdown checkpoint) and starts it again on the same port and folder:

* a Session sees the restart (StepResult.server_restarted, Session.server_incarnation and
  server_restarts), its version follows the restored session, and a step computed at a lost
  version is AbortedError with server_restarted;
* a RemoteOptimizer training loop survives a kill and restart in the middle (it pulls the restored
  parameters, skipped_steps >= 1) and finishes with a low loss;
* Session.stream_steps reopens its stream and resends the unanswered step with its sequence number;
* optd.checkpoint.read equals Pull(optimizer_state=True) bit for bit and refuses a flipped byte and
  a truncated file; the numpy-only reader in README.md (Durability), run verbatim, agrees;
* Session.to_npz / Client.create_session_from_npz round-trip every optimizer bit for bit;
* a fork from a checkpoint with another learning rate.

Run: /usr/bin/python3 -m pytest -q tests/durability_clients_test.py  (OPTD_BUILD_DIR: the build)
"""

import os
import re
import shutil
import socket
import sys
import tempfile
import textwrap
import threading
import time

import numpy as np
import pytest
import torch

from optd_testing import REPO_ROOT, OptdProcess, load_stubs, stub_dir as load_stubs_dir

sys.path.insert(0, str(REPO_ROOT / "client" / "python"))
if "optd" in sys.modules and getattr(sys.modules["optd"], "__file__", None) is None:
    del sys.modules["optd"]
load_stubs()
import optd  # noqa: E402  pylint: disable=wrong-import-position
import optd.checkpoint  # noqa: E402  pylint: disable=wrong-import-position
import optd.torch  # noqa: E402  pylint: disable=wrong-import-position

torch.set_num_threads(1)
RNG = np.random.default_rng(7)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DurableServer:
    """optd on a fixed port with a checkpoint folder; kill() is SIGKILL, restart() starts anew on
    the same port and folder."""

    def __init__(self, interval: str = "0") -> None:
        self.dir = tempfile.mkdtemp(prefix="optd-durable-py-")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.args = [f"--listen={self.address}", f"--checkpoint_dir={self.dir}",
                     f"--checkpoint_interval={interval}"]
        self.process = OptdProcess(extra_args=self.args).start()
        self.restart_seconds = []

    def kill(self) -> None:
        self.process.proc.kill()  # SIGKILL: no shutdown checkpoint
        self.process.proc.wait(10)
        self.process.stop()  # forgets the dead process

    def restart(self) -> None:
        start = time.monotonic()
        for attempt in range(50):  # the port may be busy for a moment after the kill
            try:
                self.process = OptdProcess(extra_args=self.args).start()
                break
            except Exception:  # pylint: disable=broad-except
                if attempt == 49:
                    raise
                time.sleep(0.1)
        self.restart_seconds.append(time.monotonic() - start)

    def kill_and_restart(self) -> None:
        self.kill()
        self.restart()

    def close(self) -> None:
        self.process.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def server():
    s = DurableServer()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def client(server):
    with optd.Client(server.address, timeout=20.0) as c:
        yield c


def grads(shapes, scale=1.0):
    return {name: (RNG.standard_normal(shape) * scale).astype(np.float32)
            for name, shape in shapes.items()}


SHAPES = {"w": (4, 3), "b": (3,)}


def initial():
    return {name: RNG.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}


# -- restarts --------------------------------------------------------------------------------------

def test_a_session_sees_the_restart_and_follows_the_restored_version(server, client):
    session = client.create_session(initial(), "adam", lr=0.05, session_id="restart")
    first = session.server_incarnation
    assert first and session.durable_version == 0  # checkpointed when created
    for _ in range(3):
        r = session.step(grads(SHAPES))
    assert r.server_incarnation == first and r.durable_version == 0 and not r.server_restarted
    assert session.checkpoint().version == 3 and session.durable_version == 3
    at_checkpoint = session.pull()
    for _ in range(2):  # lost in the crash
        r = session.step(grads(SHAPES))
    assert r.version == 5 and r.durable_version == 3

    server.kill_and_restart()
    with pytest.raises(optd.AbortedError) as refused:
        session.step(grads(SHAPES))  # computed at version 5: stale
    assert refused.value.server_restarted and refused.value.current_version == 3
    assert refused.value.server_incarnation not in ("", first)
    assert session.server_restarts == 1 and session.server_incarnation != first
    assert session.version == 3  # follows the restored server, lower than before
    pulled = session.pull()
    assert pulled.version == 3 and pulled.durable_version == 3
    for name in SHAPES:
        assert np.array_equal(pulled.tensors[name], at_checkpoint.tensors[name])
    r = session.step(grads(SHAPES))
    assert r.version == 4 and not r.server_restarted and r.attempts == 1

    # Checkpointed up to date, then killed: nothing lost; the next step is applied and its reply
    # says the server restarted.
    session.checkpoint()
    before = session.server_incarnation
    server.kill_and_restart()
    r = session.step(grads(SHAPES))
    assert r.server_restarted and r.version == 5 and r.durable_version == 4
    assert r.server_incarnation != before and session.server_restarts == 2
    # Restarts take well under the retry budget (10 attempts, 0.1 s doubling to 2 s).
    assert max(server.restart_seconds) < 5.0


def test_a_worker_that_joined_after_the_checkpoint_joins_again_after_the_restart(server, client):
    session = client.create_session(initial(), "sgd", lr=0.1, session_id="late-join")
    session.step(grads(SHAPES))
    session.checkpoint()  # version 1: knows only the first worker
    late = client.session("late-join", worker_id="late")
    assert late.step(grads(SHAPES)).version == 2  # joined after the checkpoint: lost
    old_incarnation = late.incarnation
    server.kill_and_restart()
    # The restored session does not know the late worker's incarnation (rejoin). A restarted
    # server cannot hold the step, so it is resent as new, not StepOutcomeUnknownError; computed
    # at the lost version 2, it is then stale.
    with pytest.raises(optd.AbortedError) as refused:
        late.step(grads(SHAPES))
    assert refused.value.server_restarted and refused.value.current_version == 1
    assert late.incarnation != old_incarnation and late.version == 1
    late.pull()
    r = late.step(grads(SHAPES))
    assert r.version == 2 and r.sequence == 2  # the refused resend used sequence 1


def test_remote_optimizer_training_survives_a_kill_and_restart(server, client):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = optd.torch.RemoteOptimizer(model.named_parameters(), client=client, optimizer="adam",
                                     lr=0.02, session_id="torch-restart")
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    y = (x @ torch.tensor([[1.0], [-2.0], [0.5]])).sin()
    killed = threading.Event()
    restarted = threading.Event()

    def crash():  # SIGKILL while the loop keeps stepping (its steps retry until optd is back)
        killed.wait(30)
        server.kill()
        time.sleep(0.5)
        server.restart()
        restarted.set()

    crasher = threading.Thread(target=crash, daemon=True)
    crasher.start()
    losses, steps, served_by = [], 120, []
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        skipped = opt.skipped_steps
        opt.step(loss=loss.item())
        served_by.append(None if opt.skipped_steps > skipped else
                         opt.last_result.server_incarnation)
        losses.append(loss.item())
        if step == 20:
            opt.session.checkpoint()
        if step == 30:
            killed.set()
    crasher.join(30)
    assert restarted.is_set()
    assert opt.skipped_steps >= 1 and opt.session.server_restarts == 1
    # The server holds what the model holds, and the loss went down across the crash.
    pulled = opt.session.pull()
    for name, p in opt.named_parameters():
        assert np.array_equal(pulled.tensors[name], p.detach().numpy()), name
    # The restored session was at the checkpoint (20); the steps the restarted server applied
    # came after it. (The loop went on stepping until the kill: those steps were lost.)
    assert served_by.count(None) == opt.skipped_steps
    assert pulled.version == 20 + served_by.count(pulled.server_incarnation)
    assert served_by[-1] == pulled.server_incarnation != served_by[0]
    assert losses[-1] < 0.5 * losses[0]
    opt.session.delete()


def test_stream_steps_survives_a_restart(server, client):
    session = client.create_session(initial(), "sgd", lr=0.01, momentum=0.9,
                                     session_id="stream-restart")
    incarnations = []

    def work(n, checkpoint_at, kill_at):
        for i in range(1, n + 1):
            if i == checkpoint_at:
                session.checkpoint()
            if i == kill_at:
                incarnations.append(session.server_incarnation)
                server.kill_and_restart()
            yield grads(SHAPES)

    # Checkpointed just before the kill: nothing is lost, every step is applied once.
    results = list(session.stream_steps(work(8, checkpoint_at=5, kill_at=5)))
    assert [r.version for r in results] == list(range(1, 9))
    assert [r.sequence for r in results] == list(range(1, 9))  # the resent step kept its number
    assert [r.server_restarted for r in results] == [False] * 4 + [True] + [False] * 3
    # (attempts counts the sends: 1 when the stream had failed before the step was put on it.)
    assert results[4].server_incarnation != incarnations[0]
    # Steps after the checkpoint are lost: the first step computed at a lost version is refused
    # (yielded), the next carries the restored version and is applied.
    outcomes = list(session.stream_steps(work(6, checkpoint_at=2, kill_at=5), errors="yield"))
    assert [getattr(o, "version", None) for o in outcomes[:4]] == [9, 10, 11, 12]
    refused = outcomes[4]
    assert isinstance(refused, optd.AbortedError) and refused.server_restarted
    assert refused.current_version == 9  # the checkpoint taken before the 2nd step (version 9)
    assert outcomes[5].version == 10 and session.server_restarts == 2


def test_stream_steps_with_a_kill_while_steps_are_in_flight(server, client):
    session = client.create_session(initial(), "adam", lr=0.01, session_id="stream-inflight")
    crashed = threading.Event()

    def crash():
        time.sleep(0.05)
        server.kill()
        time.sleep(0.3)
        server.restart()
        crashed.set()

    def work():
        for i in range(1, 400):
            if i == 3:
                session.checkpoint()  # version 2
                threading.Thread(target=crash, daemon=True).start()
            if crashed.is_set() and i > 3 and session.server_restarts and \
                    session.version is not None and session.version >= 8:
                return
            yield grads(SHAPES)

    outcomes = list(session.stream_steps(work(), errors="yield"))
    assert crashed.is_set() and session.server_restarts == 1
    new = session.server_incarnation
    # Every step either was answered by a server or refused as stale after the restart; the
    # restored session continued from the checkpoint with the steps the new server applied.
    for o in outcomes:
        assert isinstance(o, optd.StepResult) or \
            (isinstance(o, optd.AbortedError) and o.server_restarted), o
    applied_after = [o for o in outcomes
                     if isinstance(o, optd.StepResult) and o.server_incarnation == new]
    aborted = [o for o in outcomes if isinstance(o, optd.AbortedError)]
    assert len(aborted) <= 1  # one refusal at most: the next step carries the restored version
    assert session.pull().version == 2 + len(applied_after) == session.version
    sequences = [o.sequence for o in outcomes if isinstance(o, optd.StepResult)]
    assert sequences == sorted(sequences)


# -- checkpoint files ------------------------------------------------------------------------------

def _snippet() -> str:
    """The numpy-only reader of README.md's Durability section."""
    for name in ("README.md",):
        path = REPO_ROOT / name
        if not path.is_file():
            continue
        m = re.search(r"<!-- optd-checkpoint-reader -->\s*```python\n(.*?)```", path.read_text(),
                      re.S)
        if m:
            return m.group(1)
    raise AssertionError("no <!-- optd-checkpoint-reader --> python block in the README")


@pytest.mark.parametrize("kind,hp", [("adam", dict(lr=0.01, amsgrad=True)),
                                     ("nadam", dict(lr=0.01)),
                                     ("rmsprop", dict(lr=0.01, momentum=0.5, centered=True))])
def test_checkpoint_reader_equals_pull_bit_for_bit(server, client, kind, hp):
    session = client.create_session(initial(), kind, session_id=f"reader-{kind}", **hp)
    for _ in range(4):
        session.step(grads(SHAPES))
    written = session.checkpoint()
    assert optd.checkpoint.newest(server.dir, session.session_id) == written.path
    assert os.path.getsize(written.path) == written.bytes
    pulled = session.pull(optimizer_state=True)
    manifest, parameters, state = optd.checkpoint.read(written.path)
    assert manifest["session_id"] == session.session_id and manifest["version"] == 4
    assert list(parameters) == list(pulled.tensors)
    for name in SHAPES:
        assert parameters[name].tobytes() == np.asarray(pulled.tensors[name]).tobytes()
    assert state == pulled.optimizer_state  # arrays bit for bit, steps, scalars
    if kind == "nadam":
        assert state.tensors["w"].scalars["mu_product"] != 1.0

    # The README's numpy-only reader, verbatim.
    scope = {}
    exec(compile(_snippet(), "README snippet", "exec"), scope)  # pylint: disable=exec-used
    m2, p2, s2 = scope["read_checkpoint"](written.path)
    assert m2["version"] == 4
    for name in SHAPES:
        assert p2[name].tobytes() == parameters[name].tobytes()
        assert list(s2[name]) == [a for a, v in state.tensors[name].arrays.items() if v.size]
        for array, values in s2[name].items():
            assert values.tobytes() == state.tensors[name].arrays[array].tobytes()

    # Damage: a flipped byte anywhere (header, manifest, an array) and truncation are refused.
    data = open(written.path, "rb").read()
    array_offset = manifest["arrays"][-1]["offset"]
    damaged = os.path.join(server.dir, "damaged.ckpt")
    for where in (3, 40, array_offset + 5, len(data) - 1):
        flipped = bytearray(data)
        flipped[where] ^= 0x10
        open(damaged, "wb").write(bytes(flipped))
        with pytest.raises(optd.CheckpointError):
            optd.checkpoint.read(damaged)
        with pytest.raises(ValueError):
            scope["read_checkpoint"](damaged)
    # The reserved header word and the zero padding are covered by no checksum; optd.checkpoint
    # refuses them flipped all the same (the numpy snippet, which checks only the CRCs, does not).
    length = int.from_bytes(data[12:16], "little")
    for where in (21, 24 + length + 1):
        if where >= manifest["arrays"][0]["offset"]:
            continue  # no padding after this manifest
        flipped = bytearray(data)
        flipped[where] ^= 0x01
        open(damaged, "wb").write(bytes(flipped))
        with pytest.raises(optd.CheckpointError, match="reserved|padding"):
            optd.checkpoint.read(damaged)
    for size in (10, 30, array_offset + 2, len(data) - 1):
        open(damaged, "wb").write(data[:size])
        with pytest.raises(optd.CheckpointError, match="truncated|corrupt"):
            optd.checkpoint.read(damaged)
        with pytest.raises(ValueError):
            scope["read_checkpoint"](damaged)


# -- npz and forks ---------------------------------------------------------------------------------

NPZ_CASES = {
    "sgd": dict(lr=0.05, momentum=0.9), "adam": dict(lr=0.01), "adamw": dict(lr=0.01),
    "adagrad": dict(lr=0.05), "normalized_gd": dict(lr=0.05), "adadelta": dict(lr=0.5),
    "rmsprop": dict(lr=0.01, centered=True), "nadam": dict(lr=0.01), "radam": dict(lr=0.01),
    "lion": dict(lr=1e-3), "lamb": dict(lr=0.01), "lars": dict(lr=0.1),
    # The learning-rate-free and recent ones: model-wide scalars (d, eta, ...) travel too.
    "prodigy": dict(slice_p=2), "dadapt_adam": dict(decouple=True), "dadapt_sgd": dict(),
    "dog": dict(averaging=True), "ldog": dict(), "schedulefree_adamw": dict(lr=0.01),
    "schedulefree_sgd": dict(lr=0.1), "adafactor": dict(), "muon": dict(),
}


def test_npz_round_trip_for_every_optimizer(client, tmp_path):
    assert sorted(NPZ_CASES) == sorted(optd.OPTIMIZERS)
    for kind, hp in NPZ_CASES.items():
        session = client.create_session(initial(), kind, session_id=f"npz-{kind}", **hp)
        for _ in range(3):
            session.step(grads(SHAPES))
        path = str(tmp_path / f"{kind}.npz")
        saved = session.to_npz(path)
        copy = client.create_session_from_npz(path, session_id=f"npz-{kind}-copy")
        a, b = session.pull(optimizer_state=True), copy.pull(optimizer_state=True)
        for name in SHAPES:
            assert a.tensors[name].tobytes() == b.tensors[name].tobytes(), (kind, name)
        assert a.optimizer_state == b.optimizer_state == saved.optimizer_state, kind
        assert copy.info().config.optimizer == session.info().config.optimizer, kind
        g = grads(SHAPES)  # both continue alike, bit for bit
        ra, rb = session.step(g), copy.step(g)
        for name in SHAPES:
            assert ra.parameters[name].tobytes() == rb.parameters[name].tobytes(), (kind, name)
        session.delete()
        copy.delete()


def test_npz_with_other_hyperparameters_and_a_bad_file(client, tmp_path):
    session = client.create_session(initial(), "adam", lr=0.01, session_id="npz-hp")
    session.step(grads(SHAPES))
    path = str(tmp_path / "s.npz")
    session.to_npz(path)
    copy = client.create_session_from_npz(path, session_id="npz-hp-copy", lr=0.002)
    assert copy.info().config.optimizer.adam.lr == pytest.approx(0.002)
    assert copy.pull(optimizer_state=True).optimizer_state == \
        session.pull(optimizer_state=True).optimizer_state
    np.savez(str(tmp_path / "other.npz"), x=np.zeros(3))
    with pytest.raises(optd.InvalidArgumentError):
        client.create_session_from_npz(str(tmp_path / "other.npz"), session_id="npz-bad")


def test_a_fork_with_another_learning_rate(client):
    base = client.create_session(initial(), "sgd", lr=0.1, session_id="fork-base")
    base.step(grads(SHAPES))
    written = base.checkpoint()
    by_id = client.create_session_from_checkpoint("fork-a", from_session="fork-base", lr=0.01)
    by_path = client.create_session_from_checkpoint("fork-b", written.path, lr=0.001)
    same = client.create_session_from_checkpoint("fork-c", written.path)
    assert by_id.cached_info.version == by_path.cached_info.version == 1
    assert by_id.cached_info.config.optimizer.sgd.lr == pytest.approx(0.01)
    assert by_path.cached_info.config.optimizer.sgd.lr == pytest.approx(0.001)
    assert same.cached_info.config.optimizer.sgd.lr == pytest.approx(0.1)
    start = base.pull().tensors
    g = grads(SHAPES)
    for session, lr in ((base, 0.1), (by_id, 0.01), (by_path, 0.001), (same, 0.1)):
        r = session.step(g)
        assert r.version == 2
        for name in SHAPES:
            np.testing.assert_allclose(r.parameters[name], start[name] - np.float32(lr) * g[name],
                                       rtol=1e-6, atol=1e-7)
    with pytest.raises(optd.NotFoundError):
        client.create_session_from_checkpoint("fork-d", from_session="no-such-session")
    with pytest.raises(optd.InvalidArgumentError):
        client.create_session_from_checkpoint("fork-e")


# -- a server that is down for a while (issue #14) -------------------------------------------------

@pytest.mark.parametrize("native", [True, False], ids=["native", "pure"])
def test_a_keyed_step_sent_while_the_server_is_down_outlasts_the_restart(server, native):
    # The server is killed and comes back 4 s later on the same port: a step sent meanwhile is
    # retried (same key) past gRPC's reconnect backoff and applied once by the restarted server.
    # Once the retries are spent, the error names the address and what was tried.
    if native and not optd.native.available():
        pytest.skip(optd.native.reason())  # the pure suite (OPTD_PURE_PYTHON) has no native path
    with optd.Client(server.address, timeout=20.0, native=native) as c:
        session = c.create_session(initial(), "sgd", lr=0.1, session_id="down")
        session.step(grads(SHAPES))
        c.checkpoint("down")
        server.kill()
        restarter = threading.Timer(4.0, server.restart)
        restarter.start()
        try:
            start = time.monotonic()
            r = session.step(grads(SHAPES))
            elapsed = time.monotonic() - start
        finally:
            restarter.join()
        assert r.version == 2 and r.attempts > 1 and r.server_restarted, r
        assert 3.5 < elapsed < 15, elapsed
        server.kill()
        with pytest.raises(optd.UnavailableError) as e:
            session.step(grads(SHAPES), retry=optd.RetryPolicy(max_attempts=3,
                                                               initial_backoff=0.05))
        assert f"[Step to {server.address}: 3 attempts in " in e.value.message, e.value.message
        server.restart()


# -- README's Python snippets (issue #14) ----------------------------------------------------------

def test_every_readme_python_snippet_is_run_and_the_durability_ones_run_here(server):
    # Every ```python block of README.md is marked: optd-checkpoint-reader (run above, against
    # Pull), optd-security-snippet (run by tests/security_clients_test.py against a server with
    # TLS and tokens), optd-sharding-snippet (run by tests/sharding_test.py against three shards)
    # or optd-readme-python, run as written by a test against a real optd: the "Python client"
    # section's by tests/python_install_test.py (with the installed package), the others here,
    # against a server with --checkpoint_dir, twice each (a snippet leaves no session behind).
    import subprocess  # pylint: disable=import-outside-toplevel
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    python_client = (text.index("## Python client"), text.index("## Go client"))
    snippets = []
    for block in re.finditer(r"```python\n(.*?)\n *```", text, re.S):
        mark = text[:block.start()].rstrip().rsplit("\n", 1)[-1].strip()
        assert mark in ("<!-- optd-readme-python -->", "<!-- optd-checkpoint-reader -->",
                        "<!-- optd-security-snippet -->", "<!-- optd-sharding-snippet -->"), \
            f"README: an unmarked Python snippet (line {text[:block.start()].count(chr(10)) + 1})"
        if mark == "<!-- optd-readme-python -->" and \
                not python_client[0] < block.start() < python_client[1]:
            snippets.append(textwrap.dedent(block.group(1)))
    assert len(snippets) >= 3
    env = dict(os.environ, OPTD_ADDRESS=server.address,
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "client" / "python"),
                                           str(load_stubs_dir())]))
    for i, snippet in enumerate(snippets):
        for attempt in (1, 2):
            run = subprocess.run(["/usr/bin/python3", "-c", snippet], env=env, capture_output=True,
                                 text=True, timeout=120, check=False)
            assert run.returncode == 0, (f"README snippet {i + 1}, run {attempt}:\n{snippet}\n"
                                         f"{run.stdout}\n{run.stderr}")
