"""Helpers shared by the durability review tests: an optd with --checkpoint_dir, SIGKILL by PID, and
one-line RPCs on a session of one tensor "w".

``ckdir`` is a pytest fixture (a temporary --checkpoint_dir); import it into a test module.
"""

import os
import signal
import tempfile
import time

import grpc
import numpy as np
import pytest

from optd_testing import OptdProcess, to_tensor

RPC_TIMEOUT_S = 30.0


@pytest.fixture
def ckdir():
    with tempfile.TemporaryDirectory(prefix="optd-durability-") as d:
        yield d


def start(ckdir, *args, interval="0"):
    extra = [f"--checkpoint_interval={interval}", *args]
    if ckdir is not None:
        extra.insert(0, f"--checkpoint_dir={ckdir}")
    return OptdProcess(extra_args=extra, metrics=False, wrapper=()).start()


def kill(optd):
    """SIGKILL, by PID, a server this test started."""
    if optd.channel is not None:
        optd.channel.close()
        optd.channel = None
    os.kill(optd.proc.pid, signal.SIGKILL)
    optd.proc.wait(10)
    optd.stop()


def opt(pb2, kind="adam", **kw):
    cls = {"adam": pb2.Adam, "sgd": pb2.Sgd, "adamw": pb2.AdamW, "nadam": pb2.NAdam}[kind]
    return pb2.OptimizerConfig(**{kind: cls(**kw)})


def create(optd, sid, n=8, kind="adam", shape=None, **kw):
    pb2 = optd.pb2
    if not kw:
        kw = {"lr": 0.01}
    values = np.linspace(-1, 1, n, dtype=np.float32)
    if shape is not None:
        values = values.reshape(shape)
    return optd.stub.CreateSession(pb2.CreateSessionRequest(
        session_id=sid, config=pb2.SessionConfig(optimizer=opt(pb2, kind, **kw)),
        tensors=[to_tensor("w", values)]), timeout=RPC_TIMEOUT_S)


def step(optd, sid, n=8, scale=0.5, shape=None, **kw):
    pb2 = optd.pb2
    g = np.full(n, scale, np.float32)
    if shape is not None:
        g = g.reshape(shape)
    return optd.stub.Step(pb2.StepRequest(session_id=sid, gradients=[to_tensor("w", g)], **kw),
                          timeout=RPC_TIMEOUT_S)


def pull(optd, sid, **kw):
    return optd.stub.Pull(optd.pb2.PullRequest(session_id=sid, **kw), timeout=RPC_TIMEOUT_S)


def checkpoint(optd, sid):
    return optd.stub.Checkpoint(optd.pb2.CheckpointRequest(session_id=sid), timeout=RPC_TIMEOUT_S)


def get(optd, sid):
    return optd.stub.GetSession(optd.pb2.GetSessionRequest(session_id=sid), timeout=RPC_TIMEOUT_S)


def delete(optd, sid):
    return optd.stub.DeleteSession(optd.pb2.DeleteSessionRequest(session_id=sid),
                                   timeout=RPC_TIMEOUT_S)


def code_of(fn):
    try:
        fn()
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def listed_ids(optd):
    r = optd.stub.ListSessions(optd.pb2.ListSessionsRequest(page_size=1000), timeout=RPC_TIMEOUT_S)
    return [s.session_id for s in r.sessions]


def wait_unloaded(optd, sid, timeout=15.0):
    deadline = time.monotonic() + timeout
    while sid in listed_ids(optd):
        assert time.monotonic() < deadline, f"session {sid} was not unloaded within {timeout} s"
        time.sleep(0.1)
