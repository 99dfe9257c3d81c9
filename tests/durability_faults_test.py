"""Disk faults against the real optd binary: a checkpoint that cannot be written fails alone, loudly,
and loses nothing; a checkpoint that cannot be read is skipped for an older one; a folder optd
cannot use stops it at start-up.

* A file-size limit (``prlimit --fsize``, as a full disk behaves for one file): the Checkpoint RPC
  of a session too large for it is RESOURCE_EXHAUSTED naming the file, optd is not killed (SIGXFSZ
  is ignored), a small session still checkpoints, steps go on, the failure is counted in
  ``optd_checkpoint_failures_total{reason="resource_exhausted"}``, and no temporary file is left.
* A session's checkpoint folder removed under optd: the next checkpoint makes it again.
* The newest checkpoint damaged (one flipped byte; a truncated file): the restart logs it, counts it
  in ``optd_checkpoint_skipped_total`` and restores the previous checkpoint, bit for bit.
* A fork (CreateSession from_checkpoint) names a file: only optd's own checkpoints are read.
* ``--checkpoint_dir`` that is a regular file, or cannot be created, and ``--checkpoint_keep=0`` /
  a negative ``--checkpoint_interval``: optd exits non-zero at once, saying which flag and why.

Run: /usr/bin/python3 -m pytest -q tests/durability_faults_test.py
"""

import os
import re
import subprocess
import tempfile
from pathlib import Path

import grpc
import numpy as np
import pytest

from optd_testing import OptdProcess, binary_path, from_tensor, to_tensor

RPC_TIMEOUT_S = 30.0


def create(optd, session_id, n, optimizer="adam"):
    pb2 = optd.pb2
    rng = np.random.default_rng(len(session_id))
    values = rng.standard_normal(n).astype(np.float32)
    opt = pb2.OptimizerConfig(**{optimizer: getattr(pb2, optimizer.capitalize())(lr=0.01)})
    optd.stub.CreateSession(pb2.CreateSessionRequest(
        session_id=session_id, config=pb2.SessionConfig(optimizer=opt),
        tensors=[to_tensor("w", values)]), timeout=RPC_TIMEOUT_S)


def step(optd, session_id, n, scale=1.0):
    pb2 = optd.pb2
    g = np.full(n, scale, np.float32)
    return optd.stub.Step(pb2.StepRequest(session_id=session_id, gradients=[to_tensor("w", g)]),
                          timeout=RPC_TIMEOUT_S)


def pull(optd, session_id):
    r = optd.stub.Pull(optd.pb2.PullRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
    return r.version, from_tensor(r.tensors[0])


def checkpoint(optd, session_id):
    return optd.stub.Checkpoint(optd.pb2.CheckpointRequest(session_id=session_id),
                                timeout=RPC_TIMEOUT_S)


def metric(text, name, labels=""):
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_a_checkpoint_over_the_file_size_limit_fails_alone_and_optd_goes_on(tmp_path):
    # 1 MiB per file: a 1,000-parameter Adam session fits (about 13 KB), a 200,000-parameter one
    # (2.4 MB) does not.
    optd = OptdProcess(extra_args=[f"--checkpoint_dir={tmp_path}", "--checkpoint_interval=0"],
                       metrics=True, wrapper=["prlimit", f"--fsize={1 << 20}"]).start()
    try:
        create(optd, "small", 1000)
        create(optd, "large", 200_000)
        step(optd, "small", 1000)
        step(optd, "large", 200_000)
        assert checkpoint(optd, "small").version == 1
        with pytest.raises(grpc.RpcError) as e:
            checkpoint(optd, "large")
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
        assert "session-large" in e.value.details()
        assert optd.proc.poll() is None, "optd died writing past its file-size limit"
        # Nothing half-written is left (only its first checkpoint, written when it was created,
        # before its first step allocated Adam's moments); the session still steps; the small one
        # still checkpoints.
        assert sorted(p.name for p in (tmp_path / "session-large").iterdir()) == [
            f"{0:020d}.ckpt"]
        assert step(optd, "large", 200_000).version == 2
        step(optd, "small", 1000)
        assert checkpoint(optd, "small").version == 2
        text = optd.metrics_text()
        assert metric(text, "optd_checkpoint_failures_total",
                      '{reason="resource_exhausted"}') == 1.0, text
        assert "older checkpoints are intact" in optd.stderr_text()
    finally:
        optd.stop()


def test_a_folder_removed_under_optd_is_made_again(tmp_path):
    optd = OptdProcess(extra_args=[f"--checkpoint_dir={tmp_path}",
                                   "--checkpoint_interval=0"]).start()
    try:
        create(optd, "s", 1000)
        step(optd, "s", 1000)
        first = checkpoint(optd, "s")
        for f in (tmp_path / "session-s").iterdir():
            f.unlink()
        (tmp_path / "session-s").rmdir()
        step(optd, "s", 1000)
        second = checkpoint(optd, "s")
        assert second.version == first.version + 1
        assert Path(second.path).is_file()
    finally:
        optd.stop()


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, damage):
    args = [f"--checkpoint_dir={tmp_path}", "--checkpoint_interval=0", "--checkpoint_keep=3"]
    optd = OptdProcess(extra_args=args).start()
    try:
        create(optd, "s", 5000)
        step(optd, "s", 5000)
        older = checkpoint(optd, "s")
        want_version, want = pull(optd, "s")
        step(optd, "s", 5000, scale=-2.0)
        newest = checkpoint(optd, "s")
    finally:
        optd.proc.kill()  # no shutdown checkpoint: the newest file stays the damaged one
        optd.stop()
    data = bytearray(Path(newest.path).read_bytes())
    if damage == "flipped byte":
        data[len(data) - 100] ^= 0x01  # inside the last array
    else:
        data = data[:len(data) // 2]
    Path(newest.path).write_bytes(bytes(data))

    optd = OptdProcess(extra_args=args, metrics=True).start()
    try:
        version, got = pull(optd, "s")
        assert version == want_version == older.version
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
        assert f"checkpoint {newest.path} cannot be restored" in optd.stderr_text()
        assert metric(optd.metrics_text(), "optd_checkpoint_skipped_total") == 1.0
        # The session goes on from there.
        assert step(optd, "s", 5000).version == older.version + 1
    finally:
        optd.stop()


def run_optd(*args):
    return subprocess.run([str(binary_path()), "--listen=127.0.0.1:0", "--metrics_listen=", *args],
                          capture_output=True, text=True, timeout=30)


def test_a_checkpoint_dir_optd_cannot_use_stops_it_at_start_up(tmp_path):
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    r = run_optd(f"--checkpoint_dir={a_file}")
    assert r.returncode != 0 and str(a_file) in r.stderr, r.stderr

    r = run_optd("--checkpoint_dir=/proc/optd-cannot-be-made")
    assert r.returncode != 0 and "/proc/optd-cannot-be-made" in r.stderr, r.stderr

    r = run_optd(f"--checkpoint_dir={tmp_path}", "--checkpoint_keep=0")
    assert r.returncode != 0 and "checkpoint_keep" in r.stderr, r.stderr

    r = run_optd(f"--checkpoint_dir={tmp_path}", "--checkpoint_interval=-1s")
    assert r.returncode != 0 and "checkpoint_interval" in r.stderr, r.stderr


def test_a_fork_reads_only_optds_own_checkpoints(tmp_path):
    folder = tmp_path / "ckpt"
    optd = OptdProcess(extra_args=[f"--checkpoint_dir={folder}",
                                   "--checkpoint_interval=0"]).start()
    pb2 = optd.pb2
    try:
        create(optd, "origin", 100)
        path = checkpoint(optd, "origin").path
        outside = tmp_path / "copy.ckpt"
        outside.write_bytes(Path(path).read_bytes())
        for bad in ["/etc/passwd", str(outside), "../copy.ckpt", "/dev/zero", str(folder)]:
            with pytest.raises(grpc.RpcError) as e:
                optd.stub.CreateSession(pb2.CreateSessionRequest(session_id="fork",
                                                                 from_checkpoint=bad),
                                        timeout=RPC_TIMEOUT_S)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, (bad, e.value.details())
            assert "is not a checkpoint file in --checkpoint_dir" in e.value.details()
        # Its own, by the path Checkpoint answered or relative to the folder: a fork.
        relative = str(Path(path).relative_to(folder))
        for i, good in enumerate([path, relative]):
            optd.stub.CreateSession(pb2.CreateSessionRequest(session_id=f"fork{i}",
                                                             from_checkpoint=good),
                                    timeout=RPC_TIMEOUT_S)
            assert pull(optd, f"fork{i}")[1].tobytes() == pull(optd, "origin")[1].tobytes()
    finally:
        optd.stop()
