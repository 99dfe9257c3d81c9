"""A shard of a sharded session SIGKILLed while workers train, and restarted from its checkpoints
(#16, part 2), against real optd processes on 127.0.0.1.

Shows:
* aligned checkpoints: every shard writes the session at each multiple of
  Placement.checkpoint_every_versions, before that step is answered; GetSession lists the versions
  (Session.checkpoint_versions), and pruning keeps --checkpoint_keep of the aligned ones beside
  the newest;
* UpdateSessionRequest.restore_version: the session goes back to its checkpoint at that version
  (parameters, optimizer state, version; later checkpoints removed) and every refusal is clear
  (not alone, no --checkpoint_dir, a negative version, a version with no checkpoint);
* the failure: shard 1 of three is SIGKILLed while 2 SYNC workers (and, apart, 1 ASYNC worker)
  train, and restarted on its port from its folder, behind the other shards. The workers see
  ShardRestartedError from a step (one of them restores every shard to their newest common
  checkpoint), pull and go on; the session ends at the same version with the same bits as one
  server that trained without a failure.

Run: /usr/bin/python3 -m pytest -q tests/shard_failure_test.py   (OPTD_BUILD_DIR picks the build)
"""

import sys
import tempfile
import threading
import time

import numpy as np
import pytest

from optd_testing import REPO_ROOT, load_stubs, start_optd

sys.path.insert(0, str(REPO_ROOT / "client" / "python"))
if "optd" in sys.modules and getattr(sys.modules["optd"], "__file__", None) is None:
    del sys.modules["optd"]
load_stubs()
import optd  # noqa: E402  pylint: disable=wrong-import-position

SHAPES = {"emb": (600, 8), "w": (8, 4), "b": (4,)}
SPLIT = 1024  # emb is split into three row ranges
EVERY = 5     # aligned checkpoints at versions 5, 10, 15, ...
FINAL = 30    # versions each run trains to
KILL_AT = 17  # shard 1 is killed once the session has passed this version
RUN_TIMEOUT_S = 120


def initial():
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}


TARGET = {n: np.full(s, 0.5, np.float32) for n, s in SHAPES.items()}


def gradient(params, version, worker):
    """Depends only on the parameters, the version they are at and the worker: a run that goes
    back to version v and trains on computes what a run without the failure computed."""
    rng = np.random.default_rng(1000 * version + worker)
    return {n: (params[n] - TARGET[n] + 0.01 * rng.standard_normal(SHAPES[n])).astype(np.float32)
            for n in SHAPES}


class Shards:
    """Three optd shards, each with a checkpoint folder, that can be killed and restarted."""

    def __init__(self):
        self.folders = [tempfile.TemporaryDirectory() for _ in range(3)]
        self.servers = [start_optd([f"--checkpoint_dir={f.name}"]) for f in self.folders]
        self.addresses = [s.address for s in self.servers]

    def kill_and_restart(self, i):
        server = self.servers[i]
        server.proc.kill()
        server.proc.wait()
        server.stop()
        time.sleep(0.3)
        self.servers[i] = start_optd([f"--checkpoint_dir={self.folders[i].name}",
                                      f"--listen={self.addresses[i]}"])

    def close(self):
        for s in self.servers:
            s.stop()
        for f in self.folders:
            f.cleanup()


@pytest.fixture
def shards():
    s = Shards()
    try:
        yield s
    finally:
        s.close()


def worker_loop(session, worker, outcome, progress=None):
    """Pulls, steps with the gradient of what it pulled, until the session reaches FINAL."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            try:
                pulled = session.pull()
                if progress is not None:
                    progress(pulled.version)
                if pulled.version >= FINAL:
                    return
                session.step(gradient(pulled.tensors, pulled.version, worker))
            except optd.ShardRestartedError as e:
                outcome.setdefault("restarted", []).append((worker, e.current_version))
            except optd.AbortedError:
                pass  # another worker restored the shards meanwhile: pull again
            except optd.UnavailableError:
                time.sleep(0.1)
        outcome.setdefault("errors", []).append(f"worker {worker}: not done in time")
    except Exception as e:  # pylint: disable=broad-except
        outcome.setdefault("errors", []).append(f"worker {worker}: {e!r}")


def train(sessions, progress=None):
    outcome = {}
    threads = [threading.Thread(target=worker_loop, args=(s, w, outcome, progress))
               for w, s in enumerate(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(RUN_TIMEOUT_S + 10)
    assert not outcome.get("errors"), outcome
    return outcome


def reference(consistency, workers):
    """The same training on one server, without a failure."""
    server = start_optd()
    try:
        with optd.Client(server.address) as client:
            client.create_session(initial(), "adam", lr=0.05, session_id="ref",
                                  consistency=consistency)
            train([client.session("ref", worker_id=f"w{w}") for w in range(workers)])
            return client.session("ref").pull()
    finally:
        server.stop()


@pytest.mark.parametrize("mode,workers", [("sync", 2), ("async", 1)])
def test_a_shard_killed_while_training_comes_back_and_the_result_is_one_servers(
        shards, mode, workers):
    consistency = optd.consistency("sync", workers=2) if mode == "sync" else None
    expected = reference(consistency, workers)
    killed = threading.Event()

    def progress(version):
        if version >= KILL_AT and not killed.is_set():
            killed.set()
            shards.kill_and_restart(1)

    with optd.Client(shards.addresses) as client:
        client.create_session(initial(), "adam", lr=0.05, session_id="s", consistency=consistency,
                              split_min_elements=SPLIT, checkpoint_every=EVERY)
        sessions = [client.session("s", worker_id=f"w{w}") for w in range(workers)]
        outcome = train(sessions, progress=progress)
        assert killed.is_set()
        assert outcome.get("restarted"), "no worker saw the shard restart"
        # Every worker that saw it was told the common version it restored: an aligned one.
        for _, version in outcome["restarted"]:
            assert version % EVERY == 0 and version <= KILL_AT + 1, outcome
        final = client.session("s").pull()
        infos = client.session("s").info()
        assert [i.version for i in infos] == [FINAL] * 3
        assert final.version == expected.version == FINAL
        for name in SHAPES:
            np.testing.assert_array_equal(final.tensors[name], expected.tensors[name],
                                          err_msg=name)
        for s in sessions:
            s.close()


def test_aligned_checkpoints_are_listed_and_kept(shards):
    with optd.Client(shards.addresses) as client:
        session = client.create_session(initial(), "adam", lr=0.05, session_id="a",
                                        split_min_elements=SPLIT, checkpoint_every=2)
        for v in range(12):
            session.step(gradient(initial(), v, 0))
        for info in session.info():
            assert info.config.placement.checkpoint_every_versions == 2
            versions = list(info.checkpoint_versions)
            # --checkpoint_keep (3) newest, and 3 more aligned ones: 12, 10, 8 and 6, 4, 2.
            assert versions == [12, 10, 8, 6, 4, 2], versions
        session.close()


def test_restore_version_goes_back_and_refuses_clearly(shards):
    with optd.Client(shards.addresses[0]) as plain:
        s = plain.create_session({"w": np.zeros(3, np.float32)}, "sgd", lr=1.0, session_id="r")
        for _ in range(4):
            s.step({"w": np.ones(3, np.float32)})
        plain.checkpoint("r")
        for _ in range(2):
            s.step({"w": np.ones(3, np.float32)})
        plain.checkpoint("r")
        assert list(plain.get_session("r").checkpoint_versions) == [6, 4, 0]
        with pytest.raises(optd.NotFoundError, match=r"restore_version = 5: .*has 6, 4, 0"):
            plain.restore_session("r", 5)
        with pytest.raises(optd.InvalidArgumentError, match=r"restore_version = -1 .*>= 0"):
            plain.restore_session("r", -1)
        request = plain.pb2.UpdateSessionRequest(session_id="r", restore_version=4)
        request.clipping.max_norm = 1.0
        with pytest.raises(optd.InvalidArgumentError, match="must be alone"):
            plain._call("UpdateSession", request)  # pylint: disable=protected-access
        restored = s.restore(4)
        assert restored.version == 4 and list(restored.checkpoint_versions) == [4, 0]
        np.testing.assert_array_equal(s.pull().tensors["w"], np.full(3, -4.0, np.float32))
        # Steps go on from there.
        assert s.step({"w": np.ones(3, np.float32)}).version == 5
    memory_only = start_optd()
    try:
        with optd.Client(memory_only.address) as c:
            c.create_session({"w": np.zeros(3, np.float32)}, "sgd", lr=1.0, session_id="m")
            with pytest.raises(optd.FailedPreconditionError, match="--checkpoint_dir"):
                c.restore_session("m", 0)
    finally:
        memory_only.stop()
