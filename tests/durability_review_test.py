"""Hostile review of durability (issue #12) and hardening (issue #11), against the real binary.

Tests marked ``# Found in review (fixed):`` pin a bug a review found (the comment says what was
wrong); the others pin behaviour that was checked and found right. About 30 s.

Run: /usr/bin/python3 -m pytest -q tests/durability_review_test.py   (OPTD_BUILD_DIR picks the build)
"""

import math
import os
import signal
import struct
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from durability_testing import (RPC_TIMEOUT_S, checkpoint, ckdir, code_of, create, get, kill,
                                listed_ids, opt, pull, start, step, wait_unloaded)
from optd_testing import OptdProcess, current_version_of, from_tensor, to_tensor, to_sparse_tensor



def state_arrays(pull_reply):
    out = {}
    for t in pull_reply.optimizer_state.tensors:
        for a in t.arrays:
            out[(t.tensor, a.name)] = np.frombuffer(a.data, "<f4").copy()
    return out


def import_request(pb2, sid, pulled, replace=None, step=None):
    """An UpdateSessionRequest importing `pulled`'s state, arrays replaced as `replace` says."""
    state = pb2.OptimizerState()
    state.CopyFrom(pulled.optimizer_state)
    for t in state.tensors:
        if step is not None:
            t.step = step
        for a in t.arrays:
            if replace is not None and a.name in replace:
                a.data = np.full(len(a.data) // 4, replace[a.name], np.float32).tobytes()
    return pb2.UpdateSessionRequest(session_id=sid, optimizer_state=state)


# ---------------------------------------------------------------------------------------------------
# Graceful restart loses run-time changes that did not move the version.

def test_update_session_hyperparameters_survive_graceful_restart(ckdir):
    # Found in review (fixed): CheckpointAll (shutdown and interval) skips a session whose version equals its durable
    # version (checkpointer.cc CheckpointAll: `if (version == DurableVersion(id)) continue;`), so an
    # UpdateSession (lr, schedule, clipping) made after the last checkpoint, with no step since, is
    # silently lost by a clean SIGTERM restart. README: "a clean stop and restart loses no step at
    # all" and a checkpoint holds "everything the session needs to go on as if it had never
    # stopped".
    optd = start(ckdir)
    try:
        pb2 = optd.pb2
        create(optd, "hp", kind="sgd", lr=0.1)
        step(optd, "hp")
        assert checkpoint(optd, "hp").version == 1
        optd.stub.UpdateSession(pb2.UpdateSessionRequest(
            session_id="hp", optimizer=opt(pb2, "sgd", lr=0.5),
            clipping=pb2.Clipping(max_norm=2.0)), timeout=RPC_TIMEOUT_S)
        assert get(optd, "hp").config.optimizer.sgd.lr == 0.5
    finally:
        optd.stop()
    optd = start(ckdir)
    try:
        s = get(optd, "hp")
        assert s.version == 1
        assert s.config.optimizer.sgd.lr == 0.5, "the lr change was lost by a graceful restart"
        assert s.config.clipping.max_norm == 2.0
    finally:
        optd.stop()


def test_imported_optimizer_state_survives_graceful_restart(ckdir):
    # Found in review (fixed): same root cause as above: UpdateSession(optimizer_state) does not move the version, so a
    # clean shutdown after a checkpoint does not write the imported state; the restart silently
    # brings back the old moments.
    optd = start(ckdir)
    try:
        pb2 = optd.pb2
        create(optd, "imp")
        step(optd, "imp")
        checkpoint(optd, "imp")
        pulled = pull(optd, "imp", include_optimizer_state=True)
        optd.stub.UpdateSession(import_request(pb2, "imp", pulled, {"exp_avg": 0.25}),
                                timeout=RPC_TIMEOUT_S)
        before = state_arrays(pull(optd, "imp", include_optimizer_state=True))
        assert np.all(before[("w", "exp_avg")] == 0.25)
    finally:
        optd.stop()
    optd = start(ckdir)
    try:
        after = state_arrays(pull(optd, "imp", include_optimizer_state=True))
        assert np.array_equal(after[("w", "exp_avg")], before[("w", "exp_avg")]), \
            "the imported optimizer state was lost by a graceful restart"
    finally:
        optd.stop()


def test_imported_state_survives_checkpoint_and_sigkill_bit_for_bit(ckdir):
    optd = start(ckdir)
    try:
        pb2 = optd.pb2
        create(optd, "bits", n=64)
        step(optd, "bits", n=64)
        pulled = pull(optd, "bits", include_optimizer_state=True)
        state = pb2.OptimizerState()
        state.CopyFrom(pulled.optimizer_state)
        rng = np.random.default_rng(1)
        for a in state.tensors[0].arrays:
            a.data = np.abs(rng.standard_normal(64)).astype(np.float32).tobytes()
        state.tensors[0].step = 7
        optd.stub.UpdateSession(pb2.UpdateSessionRequest(session_id="bits", optimizer_state=state),
                                timeout=RPC_TIMEOUT_S)
        checkpoint(optd, "bits")
        want = pull(optd, "bits", include_optimizer_state=True)
        kill(optd)
        optd = start(ckdir)
        got = pull(optd, "bits", include_optimizer_state=True)
        assert got.optimizer_state == want.optimizer_state
        assert got.tensors[0].data == want.tensors[0].data
        # and the next step is the same on both sides (deterministic)
        a = step(optd, "bits", n=64, return_parameters=pb2.RETURN_PARAMETERS_ALL)
        assert a.version == 2
    finally:
        optd.stop()


# ---------------------------------------------------------------------------------------------------
# Idle unload with --checkpoint_dir.

def test_delete_of_an_unloaded_session_deletes_it(ckdir):
    # Found in review (fixed): DoDeleteSession calls store_->Delete (session_store.cc Remove), which looks only at the
    # loaded sessions: an idle-unloaded session is NOT_FOUND and Checkpointer::Forget is never
    # called. The client cannot delete it; it is reloaded on the next use, and every restart brings
    # it back from its checkpoint.
    optd = start(ckdir, "--session_idle_timeout=1s")
    try:
        create(optd, "gone")
        step(optd, "gone")
        wait_unloaded(optd, "gone")
        code, details = code_of(lambda: optd.stub.DeleteSession(
            optd.pb2.DeleteSessionRequest(session_id="gone"), timeout=RPC_TIMEOUT_S))
        assert code == grpc.StatusCode.OK, f"deleting an unloaded session: {code} {details}"
        assert code_of(lambda: get(optd, "gone"))[0] == grpc.StatusCode.NOT_FOUND
    finally:
        optd.stop()
    optd = start(ckdir)
    try:
        assert code_of(lambda: get(optd, "gone"))[0] == grpc.StatusCode.NOT_FOUND, \
            "a deleted session came back after a restart"
    finally:
        optd.stop()


def test_unloaded_session_reloads_with_its_version_and_parameters(ckdir):
    optd = start(ckdir, "--session_idle_timeout=1s")
    try:
        create(optd, "nap")
        for _ in range(3):
            step(optd, "nap")
        want = pull(optd, "nap")
        wait_unloaded(optd, "nap")
        got = pull(optd, "nap")
        assert got.version == 3 and got.tensors[0].data == want.tensors[0].data
        assert got.durable_version == 3
    finally:
        optd.stop()


def test_create_over_an_unloaded_session_id(ckdir):
    # Found in review (fixed): SessionStore::Create checks only the loaded sessions, so an unloaded session's id can be
    # created again while its checkpoints stay in session-<id>/. The new session reports the old
    # one's durable_version, its own low-version checkpoints sort below the old ones (Prune with
    # --checkpoint_keep=1 deletes the new file at once), and a restart restores the OLD session.
    # Either refuse (ALREADY_EXISTS: the id is still in use, it reloads on its next use) or replace
    # the old session's checkpoints.
    optd = start(ckdir, "--session_idle_timeout=1s", "--checkpoint_keep=1")
    try:
        create(optd, "again")
        for _ in range(3):
            step(optd, "again")
        wait_unloaded(optd, "again")
        code, _ = code_of(lambda: create(optd, "again", n=4))
        if code == grpc.StatusCode.ALREADY_EXISTS:
            return
        assert code == grpc.StatusCode.OK
        s = get(optd, "again")
        assert s.version == 0 and s.num_parameters == 4
        # -1, or 0 when CreateSession writes the first checkpoint (kCreate)
        assert s.durable_version in (-1, 0), f"a brand-new session reports durable_version " \
                                             f"{s.durable_version}"
        checkpoint(optd, "again")
    finally:
        optd.stop()
    optd = start(ckdir)
    try:
        s = get(optd, "again")
        assert (s.version, s.num_parameters) == (0, 4), \
            f"restart restored the old session (version {s.version}, {s.num_parameters} params)"
    finally:
        optd.stop()


def test_step_during_idle_unload_checkpoint_is_not_lost(ckdir):
    # Found in review (fixed): SessionStore::UnloadIdle checkpoints the session (before_unload: Snapshot at version V,
    # then a long write), then Remove()s it. A Step that arrives during the write is applied to the
    # session being unloaded and acknowledged (version V+1), but the session reloaded later comes
    # from the checkpoint at V: an acknowledged step is lost without any crash. The idle check
    # (last_used, busy) is not repeated after the checkpoint and nothing stops steps meanwhile.
    rows, dim = 1 << 17, 64  # 8.4M parameters, Adam: ~100 MB checkpoint
    optd = start(ckdir, "--session_idle_timeout=1s")
    try:
        pb2 = optd.pb2
        create(optd, "big", n=rows * dim, shape=(rows, dim))

        def sparse_step():
            g = to_sparse_tensor("w", (rows, dim), [5], np.ones((1, dim), np.float32))
            return optd.stub.Step(pb2.StepRequest(
                session_id="big", gradients=[g], return_parameters=pb2.RETURN_PARAMETERS_NONE),
                timeout=RPC_TIMEOUT_S)

        step(optd, "big", n=rows * dim, shape=(rows, dim))  # moments allocated: the file is large
        folder = Path(ckdir) / "session-big"
        acked = None
        refused = False  # fixed: a session being unloaded refuses steps (UNAVAILABLE, retry)
        deadline = time.monotonic() + 20
        while acked is None and not refused and time.monotonic() < deadline:
            if folder.is_dir() and any(".tmp-" in p.name for p in folder.iterdir()):
                try:
                    acked = sparse_step().version  # the unload's checkpoint is being written
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAVAILABLE, e.details()
                    assert "being unloaded" in e.details(), e.details()
                    refused = True
            time.sleep(0.001)
        assert acked is not None or refused, "never saw the idle unload's checkpoint being written"
        wait_unloaded(optd, "big")
        got = optd.stub.GetSession(pb2.GetSessionRequest(session_id="big"),
                                   timeout=RPC_TIMEOUT_S).version
        assert acked is None or got >= acked, (
            f"step acknowledged at version {acked}, session reloaded at {got}")
    finally:
        optd.stop()


def test_more_than_1024_unloaded_sessions_all_reload(ckdir):
    # Found in review (fixed): SessionStore remembers only the last kRememberedUnloads = 1024 unloads, and Find reloads
    # a session only if it is in that list. With --checkpoint_dir, the 1025th-oldest unloaded
    # session is NOT_FOUND ("session x not found") although its checkpoint is on disk (and a
    # restart brings it back). Reload should consult the checkpoint folder.
    n = 1040
    optd = start(ckdir, "--session_idle_timeout=1s", "--max_sessions=2000")
    try:
        pb2 = optd.pb2
        for i in range(n):
            optd.stub.CreateSession(pb2.CreateSessionRequest(
                session_id=f"m{i:05d}", config=pb2.SessionConfig(optimizer=opt(pb2, "sgd", lr=1)),
                tensors=[to_tensor("w", np.zeros(1, np.float32))]), timeout=RPC_TIMEOUT_S)
        deadline = time.monotonic() + 40
        while listed_ids(optd):
            assert time.monotonic() < deadline, "sessions were not unloaded within 40 s"
            time.sleep(0.2)
        missing = [i for i in (0, 5, 10, n - 1)
                   if code_of(lambda: get(optd, f"m{i:05d}"))[0] != grpc.StatusCode.OK]
        assert not missing, f"unloaded sessions {missing} cannot be reloaded"
    finally:
        optd.stop()


# ---------------------------------------------------------------------------------------------------
# Forks.

def test_fork_honours_or_refuses_schedule_and_clipping(ckdir):
    # Found in review (fixed): DoFork merges only config.optimizer; config.schedule, config.clipping and
    # config.consistency of the request are silently ignored (optimizer_service.cc DoFork). The
    # proto says "a config given here replaces the checkpoint's hyperparameters". A client asking a
    # rollback with clipping gets a session without it and no error.
    optd = start(ckdir)
    try:
        pb2 = optd.pb2
        create(optd, "src", kind="sgd", lr=0.1)
        step(optd, "src")
        checkpoint(optd, "src")
        config = pb2.SessionConfig(
            optimizer=opt(pb2, "sgd", lr=0.05), clipping=pb2.Clipping(max_norm=0.001),
            schedule=pb2.LrSchedule(exponential=pb2.LrSchedule.Exponential(gamma=0.5)))
        code, details = code_of(lambda: optd.stub.CreateSession(pb2.CreateSessionRequest(
            session_id="fk", from_session_checkpoint="src", config=config), timeout=RPC_TIMEOUT_S))
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert "clipping" in details or "schedule" in details
            return
        assert code == grpc.StatusCode.OK, details
        s = get(optd, "fk")
        assert s.config.optimizer.sgd.lr == 0.05
        assert s.config.clipping.max_norm == 0.001, "fork silently dropped config.clipping"
        assert s.config.schedule.HasField("exponential"), "fork silently dropped config.schedule"
    finally:
        optd.stop()


def test_fork_basics_and_errors(ckdir):
    optd = start(ckdir, "--max_memory_bytes=40000000")
    try:
        pb2 = optd.pb2
        create(optd, "a", kind="sgd", lr=0.1)
        step(optd, "a")
        step(optd, "a")
        ck = checkpoint(optd, "a")
        assert ck.version == 2

        def fork(**kw):
            return optd.stub.CreateSession(pb2.CreateSessionRequest(**kw), timeout=RPC_TIMEOUT_S)

        C = grpc.StatusCode
        assert code_of(lambda: fork(session_id="x", from_checkpoint=ck.path,
                                    from_session_checkpoint="a"))[0] == C.INVALID_ARGUMENT
        assert code_of(lambda: fork(session_id="x", from_session_checkpoint="a",
                                    tensors=[to_tensor("w", np.zeros(8, np.float32))]))[0] \
            == C.INVALID_ARGUMENT
        assert code_of(lambda: fork(from_session_checkpoint="a"))[0] == C.INVALID_ARGUMENT
        code, details = code_of(lambda: fork(session_id="x", from_session_checkpoint="a",
                                             config=pb2.SessionConfig(optimizer=opt(pb2, "adam"))))
        assert code == C.INVALID_ARGUMENT, details
        for bad in (-1.0, math.nan, math.inf):
            code, details = code_of(lambda: fork(
                session_id="x", from_session_checkpoint="a",
                config=pb2.SessionConfig(optimizer=opt(pb2, "sgd", lr=bad))))
            assert code == C.INVALID_ARGUMENT and "lr" in details, (bad, code, details)
        assert code_of(lambda: fork(session_id="a", from_session_checkpoint="a"))[0] \
            == C.ALREADY_EXISTS
        assert code_of(lambda: fork(session_id="x", from_session_checkpoint="nobody"))[0] \
            == C.NOT_FOUND
        code, details = code_of(lambda: fork(session_id="x", from_session_checkpoint="b/../a"))
        assert code == C.INVALID_ARGUMENT, details
        code, details = code_of(lambda: fork(session_id="x", from_checkpoint="/etc/passwd"))
        assert code in (C.PERMISSION_DENIED, C.NOT_FOUND), details
        code, details = code_of(lambda: fork(session_id="x", from_checkpoint="A" * 100000))
        assert code != C.OK and len(details) < 1000, (code, len(details))
        # A damaged checkpoint: DATA_LOSS.
        damaged = Path(ckdir) / "session-a" / "00000000000000000099.ckpt"
        data = bytearray(Path(ck.path).read_bytes())
        data[30] ^= 0xFF
        damaged.write_bytes(bytes(data))
        code, details = code_of(lambda: fork(session_id="x", from_checkpoint=str(damaged)))
        assert code == C.DATA_LOSS, details
        damaged.unlink()
        # A good fork keeps the version, takes the new lr, and is stepped independently.
        s = fork(session_id="b", from_checkpoint=ck.path,
                 config=pb2.SessionConfig(optimizer=opt(pb2, "sgd", lr=0.01)))
        assert s.version == 2 and s.config.optimizer.sgd.lr == 0.01 and s.durable_version in (-1, 2)
        assert pull(optd, "b").tensors[0].data == pull(optd, "a").tensors[0].data
        assert step(optd, "b").version == 3
        assert pull(optd, "a").version == 2
        # Beyond the memory budget: RESOURCE_EXHAUSTED.
        big = 4_000_000
        optd.stub.CreateSession(pb2.CreateSessionRequest(
            session_id="huge", config=pb2.SessionConfig(optimizer=opt(pb2, "sgd", lr=1)),
            tensors=[to_tensor("w", np.zeros(big, np.float32))]), timeout=RPC_TIMEOUT_S)
        checkpoint(optd, "huge")
        optd.stub.CreateSession(pb2.CreateSessionRequest(
            session_id="filler", config=pb2.SessionConfig(optimizer=opt(pb2, "sgd", lr=1)),
            tensors=[to_tensor("w", np.zeros(2_500_000, np.float32))]), timeout=RPC_TIMEOUT_S)
        code, details = code_of(lambda: fork(session_id="huge2", from_session_checkpoint="huge"))
        assert code == C.RESOURCE_EXHAUSTED, details
        assert "max_memory_bytes" in details
    finally:
        optd.stop()
    # The fork survives a graceful restart (shutdown checkpoint).
    optd = start(ckdir)
    try:
        s = get(optd, "b")
        assert s.version == 3 and s.config.optimizer.sgd.lr == 0.01
    finally:
        optd.stop()


def test_fork_sgd_momentum(ckdir):
    # Found in review (fixed): UpdateSession may turn SGD momentum on (README: "state that UpdateSession adds (SGD
    # momentum turned on)"), but a fork with the same change is refused with a message about the
    # checkpoint's internal arrays ("optimizer state of tensor 0 has 0 arrays; sgd with these
    # options keeps 1 (momentum_buffer)"): Session::Restore imports the checkpoint's state laid out
    # for the OLD options. The fork should behave like UpdateSession (new momentum buffer created
    # at the first step), or be refused naming config.optimizer.sgd.momentum.
    optd = start(ckdir)
    try:
        pb2 = optd.pb2
        create(optd, "plain", kind="sgd", lr=0.1)
        step(optd, "plain")
        checkpoint(optd, "plain")
        code, details = code_of(lambda: optd.stub.CreateSession(pb2.CreateSessionRequest(
            session_id="mom", from_session_checkpoint="plain",
            config=pb2.SessionConfig(optimizer=opt(pb2, "sgd", momentum=0.9))),
            timeout=RPC_TIMEOUT_S))
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert "momentum" in details and "config.optimizer" in details, details
            return
        assert code == grpc.StatusCode.OK, details
        assert get(optd, "mom").config.optimizer.sgd.momentum == 0.9
        assert step(optd, "mom").version == 2
    finally:
        optd.stop()


# ---------------------------------------------------------------------------------------------------
# Optimizer state import and export.

@pytest.mark.parametrize("replace", [{"exp_avg": math.nan}, {"exp_avg": math.inf},
                                     {"exp_avg_sq": math.inf}, {"exp_avg_sq": -1.0}],
                         ids=["exp_avg_nan", "exp_avg_inf", "exp_avg_sq_inf", "exp_avg_sq_negative"])
def test_import_non_finite_or_invalid_state_is_refused_and_changes_nothing(replace):
    # Found in review (fixed): Optimizer::ImportState (server/optim/optimizer.cc) checks names, counts and lengths but
    # not the values: NaN / inf moments and a negative exp_avg_sq are accepted, and the next step
    # with a finite gradient turns the parameters NaN. Steps refuse a single NaN gradient element
    # ("every value must be finite"); an import is the same kind of client input and the README
    # promises bad input "changes nothing".
    optd = start(None)
    try:
        pb2 = optd.pb2
        create(optd, "nan")
        step(optd, "nan")
        pulled = pull(optd, "nan", include_optimizer_state=True)
        code, details = code_of(lambda: optd.stub.UpdateSession(
            import_request(pb2, "nan", pulled, replace), timeout=RPC_TIMEOUT_S))
        r = step(optd, "nan")
        assert code == grpc.StatusCode.INVALID_ARGUMENT, \
            f"{replace} accepted; the next step left {r.non_finite_parameters} parameters non-finite"
        assert r.non_finite_parameters == 0
    finally:
        optd.stop()


def test_import_huge_step_does_not_break_the_next_step():
    # Found in review (fixed): an imported step counter of 2^63-1 is accepted; the next step increments
    # it past int64 (undefined behaviour) and bias correction turns the parameters NaN. It should
    # be refused with the valid range, or work.
    optd = start(None)
    try:
        pb2 = optd.pb2
        create(optd, "stp")
        step(optd, "stp")
        pulled = pull(optd, "stp", include_optimizer_state=True)
        code, details = code_of(lambda: optd.stub.UpdateSession(
            import_request(pb2, "stp", pulled, step=2**63 - 1), timeout=RPC_TIMEOUT_S))
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert "step" in details
            return
        assert code == grpc.StatusCode.OK
        r = step(optd, "stp")
        assert r.non_finite_parameters == 0, "a huge imported step made the parameters NaN"
        assert optd.proc.poll() is None
    finally:
        optd.stop()


def test_import_refusals_change_nothing():
    optd = start(None)
    try:
        pb2 = optd.pb2
        create(optd, "ref")
        step(optd, "ref")
        pulled = pull(optd, "ref", include_optimizer_state=True)
        before = state_arrays(pulled)

        def bad(mutate, lr=None):
            req = import_request(pb2, "ref", pulled)
            mutate(req.optimizer_state)
            if lr is not None:
                req.optimizer.CopyFrom(opt(pb2, "adam", lr=lr))
            return code_of(lambda: optd.stub.UpdateSession(req, timeout=RPC_TIMEOUT_S))

        C = grpc.StatusCode
        cases = {
            "no tensors": lambda s: s.ClearField("tensors"),
            "unknown tensor": lambda s: setattr(s.tensors[0], "tensor", "nope"),
            "negative step": lambda s: setattr(s.tensors[0], "step", -1),
            "wrong length": lambda s: setattr(s.tensors[0].arrays[0], "data", b"\0" * 12),
            "unknown array": lambda s: setattr(s.tensors[0].arrays[0], "name", "zzz"),
            "duplicate array": lambda s: setattr(s.tensors[0].arrays[1], "name", "exp_avg"),
            "extra array": lambda s: s.tensors[0].arrays.add().CopyFrom(s.tensors[0].arrays[0]),
            "bf16 array": lambda s: setattr(s.tensors[0].arrays[0], "dtype", pb2.DTYPE_BF16),
            "global scalar": lambda s: s.scalars.__setitem__("x", 1.0),
            "tensor scalar": lambda s: s.tensors[0].scalars.__setitem__("mu_product", 1.0),
            "duplicate tensor": lambda s: s.tensors.add().CopyFrom(s.tensors[0]),
            "long name": lambda s: setattr(s.tensors[0], "tensor", "T" * 100000),
        }
        for name, mutate in cases.items():
            code, details = bad(mutate, lr=0.5)
            assert code == C.INVALID_ARGUMENT, (name, code, details)
            assert len(details) < 1000, (name, len(details))
            assert "T" * 65 not in details, name
            s = get(optd, "ref")
            assert s.config.optimizer.adam.lr == pytest.approx(0.01), name
            assert state_arrays(pull(optd, "ref", include_optimizer_state=True)).keys() \
                == before.keys()
            for k, v in state_arrays(pull(optd, "ref", include_optimizer_state=True)).items():
                assert np.array_equal(v, before[k]), name
    finally:
        optd.stop()


def test_import_into_sgd_without_momentum_is_refused_or_paid_for():
    # Found in review (fixed): SGD with momentum 0 reserves no optimizer state (0 B/parameter), yet its state export
    # names an (empty) "momentum_buffer", and UpdateSession(optimizer_state) with a full
    # momentum_buffer is ACCEPTED: 4 B/parameter allocated outside the memory budget
    # (Session::Update reserves only for options changes, never for an import). Here a 3M-parameter
    # session under a 20 MB budget ends up holding 24 MB, and the budget still says 12 MB are in
    # use. The import should be refused (momentum 0 keeps no state) or reserved first
    # (RESOURCE_EXHAUSTED over the budget).
    optd = start(None, "--max_memory_bytes=20000000")
    try:
        pb2 = optd.pb2
        n = 3_000_000
        optd.stub.CreateSession(pb2.CreateSessionRequest(
            session_id="plain", config=pb2.SessionConfig(optimizer=opt(pb2, "sgd", lr=0.1)),
            tensors=[to_tensor("w", np.zeros(n, np.float32))]), timeout=RPC_TIMEOUT_S)
        st = pb2.OptimizerState()
        t = st.tensors.add(tensor="w")
        t.arrays.add(name="momentum_buffer", data=np.ones(n, np.float32).tobytes())
        code, details = code_of(lambda: optd.stub.UpdateSession(pb2.UpdateSessionRequest(
            session_id="plain", optimizer_state=st), timeout=RPC_TIMEOUT_S))
        mem = get(optd, "plain").memory
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), \
            f"import accepted: the session now holds {mem.total_bytes} bytes under a budget of " \
            f"20000000 ({mem.optimizer_state_bytes} of optimizer state never reserved)"
        assert mem.optimizer_state_bytes == 0
    finally:
        optd.stop()


def test_pull_optimizer_state_with_names_rows_bf16():
    optd = start(None)
    try:
        pb2 = optd.pb2
        create(optd, "p", n=16, shape=(4, 4))
        step(optd, "p", n=16, shape=(4, 4))
        r = pull(optd, "p", include_optimizer_state=True, dtype=pb2.DTYPE_BF16)
        assert r.version == 1
        for t in r.optimizer_state.tensors:
            assert t.step == 1
            for a in t.arrays:
                assert a.dtype == pb2.DTYPE_F32 and len(a.data) == 16 * 4
        code, details = code_of(lambda: pull(optd, "p", include_optimizer_state=True,
                                             rows=[pb2.TensorRows(name="w", indices=[0])]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "rows" in details
    finally:
        optd.stop()


# ---------------------------------------------------------------------------------------------------
# Checkpoint RPC, replies, restart semantics.

def test_checkpoint_rpc_errors(ckdir):
    C = grpc.StatusCode
    optd = start(None)
    try:
        create(optd, "c")
        code, details = code_of(lambda: checkpoint(optd, "c"))
        assert code == C.FAILED_PRECONDITION and "--checkpoint_dir" in details
        assert step(optd, "c").durable_version == -1
    finally:
        optd.stop()
    optd = start(ckdir)
    try:
        for sid in ("", "nope", "a/../../etc", "x" * 200000):
            code, details = code_of(lambda: checkpoint(optd, sid))
            assert code in (C.NOT_FOUND, C.INVALID_ARGUMENT), (sid[:10], code)
            assert len(details) < 1000 and "x" * 65 not in details
        assert not [p for p in Path(ckdir).iterdir() if p.name != ".optd.lock"], (
            "a refused Checkpoint created a folder")
    finally:
        optd.stop()


def test_incarnation_durable_version_and_abort_after_restore(ckdir):
    optd = start(ckdir)
    try:
        pb2 = optd.pb2
        s = create(optd, "r")
        inc1 = s.server_incarnation
        assert inc1 and s.durable_version in (-1, 0)
        r = step(optd, "r")
        assert r.server_incarnation == inc1 and r.durable_version in (-1, 0)
        assert checkpoint(optd, "r").version == 1
        assert pull(optd, "r").durable_version == 1
        for _ in range(3):
            r = step(optd, "r")
        assert r.version == 4 and r.durable_version == 1 and r.server_incarnation == inc1
        kill(optd)
        optd = start(ckdir)
        s = get(optd, "r")
        assert s.server_incarnation != inc1 and s.version == 1 and s.durable_version == 1
        with pytest.raises(grpc.RpcError) as e:
            step(optd, "r", version=4)
        assert e.value.code() == grpc.StatusCode.ABORTED
        assert current_version_of(e.value) == 1
        md = dict(e.value.trailing_metadata() or ())
        assert md.get("optd-server-incarnation") == s.server_incarnation
        assert step(optd, "r", version=1).version == 2
    finally:
        optd.stop()


def test_sigkill_during_a_large_checkpoint_restores_the_previous_one(ckdir):
    n = 8 << 20
    optd = start(ckdir)
    try:
        pb2 = optd.pb2
        create(optd, "L", n=n, kind="sgd", lr=0.1, momentum=0.9)
        step(optd, "L", n=n)
        assert checkpoint(optd, "L").version == 1
        want = pull(optd, "L").tensors[0].data
        step(optd, "L", n=n)
        folder = Path(ckdir) / "session-L"
        t = threading.Thread(target=lambda: code_of(lambda: checkpoint(optd, "L")), daemon=True)
        t.start()
        deadline = time.monotonic() + 20
        while not any(".tmp-" in p.name for p in folder.iterdir()):
            assert time.monotonic() < deadline, "never saw the checkpoint being written"
            time.sleep(0.0005)
        kill(optd)
        t.join(10)
        optd = start(ckdir)
        r = pull(optd, "L")
        assert r.version == 1 and r.tensors[0].data == want
        assert not any(".tmp-" in p.name for p in folder.iterdir()), "a temporary file was left"
    finally:
        optd.stop()


def test_checkpoint_keep_is_honoured(ckdir):
    optd = start(ckdir, "--checkpoint_keep=2")
    try:
        create(optd, "k")
        for _ in range(4):
            step(optd, "k")
            checkpoint(optd, "k")
        files = sorted(p.name for p in (Path(ckdir) / "session-k").iterdir())
        assert files == ["00000000000000000003.ckpt", "00000000000000000004.ckpt"], files
    finally:
        optd.stop()


def test_graceful_restart_keeps_every_session_at_its_last_version(ckdir):
    optd = start(ckdir)
    try:
        for i in range(5):
            create(optd, f"g{i}")
            for _ in range(i):
                step(optd, f"g{i}")
        want = {f"g{i}": pull(optd, f"g{i}").tensors[0].data for i in range(5)}
        optd.stub.DeleteSession(optd.pb2.DeleteSessionRequest(session_id="g4"),
                                timeout=RPC_TIMEOUT_S)
        code = optd.stop()[0]
        assert code == 0
    finally:
        optd.stop()
    optd = start(ckdir)
    try:
        assert listed_ids(optd) == ["g0", "g1", "g2", "g3"]
        for i in range(4):
            r = pull(optd, f"g{i}")
            assert r.version == i and r.tensors[0].data == want[f"g{i}"]
        # A deleted then re-created id does not resurrect the old one.
        create(optd, "g4", n=3)
        s = get(optd, "g4")
        assert s.num_parameters == 3 and s.version == 0 and s.durable_version in (-1, 0)
    finally:
        optd.stop()


def test_checkpoint_of_a_sync_session_with_an_open_barrier(ckdir):
    optd = start(ckdir)
    try:
        pb2 = optd.pb2
        optd.stub.CreateSession(pb2.CreateSessionRequest(
            session_id="sy", config=pb2.SessionConfig(
                optimizer=opt(pb2, "sgd", lr=0.1),
                consistency=pb2.Consistency(mode=pb2.Consistency.MODE_SYNC, workers=2)),
            tensors=[to_tensor("w", np.zeros(8, np.float32))]), timeout=RPC_TIMEOUT_S)
        fut = optd.stub.Step.future(pb2.StepRequest(
            session_id="sy", worker_id="a", version=0,
            gradients=[to_tensor("w", np.ones(8, np.float32))]), timeout=RPC_TIMEOUT_S)
        time.sleep(0.2)
        t0 = time.monotonic()
        assert checkpoint(optd, "sy").version == 0
        assert time.monotonic() - t0 < 5
        r2 = optd.stub.Step(pb2.StepRequest(
            session_id="sy", worker_id="b", version=0,
            gradients=[to_tensor("w", np.ones(8, np.float32))]), timeout=RPC_TIMEOUT_S)
        assert r2.version == 1 and fut.result().version == 1
    finally:
        optd.stop()


def test_two_servers_on_one_checkpoint_dir_are_refused(ckdir):
    # Found in review (fixed): nothing stops a second optd from using the same --checkpoint_dir (no lock file). Both
    # restore the same sessions and write the same session-<id>/ folders: one's DeleteSession is
    # undone by the other's next checkpoint, and their same-version files overwrite each other.
    # optd already refuses to share a port for the same reason; it should refuse to share the
    # folder (e.g. flock on DIR/LOCK) and exit 1 naming it.
    first = start(ckdir)
    try:
        second = OptdProcess(extra_args=[f"--checkpoint_dir={ckdir}"], metrics=False, wrapper=())
        try:
            second.start()
            started = True
        except Exception:
            started = False
        finally:
            second.stop()
        assert not started, "a second optd started on a --checkpoint_dir another optd is using"
    finally:
        first.stop()


def test_restore_over_budget_then_recreate_does_not_bring_back_the_old_session(ckdir):
    # Found in review (fixed): a session skipped at start-up (its checkpoint needs more than
    # --max_memory_bytes) leaves its folder; CreateSession of the same id then succeeds and writes
    # lower-version checkpoints beside the old ones, and the next restart restores the OLD one.
    n = 2_000_000
    optd = start(ckdir)
    try:
        create(optd, "ob", n=n, kind="sgd", lr=0.1)
        for _ in range(3):
            step(optd, "ob", n=n)
    finally:
        optd.stop()
    optd = start(ckdir, "--max_memory_bytes=4000000")
    try:
        # It exists (on disk) but does not fit: the error says so, naming the budget.
        code, details = code_of(lambda: get(optd, "ob"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max_memory_bytes" in details, (
            code, details)
        assert "ob" in optd.stderr_text()
        code, _ = code_of(lambda: create(optd, "ob", n=4, kind="sgd", lr=0.1))
        if code != grpc.StatusCode.OK:
            return  # refusing the id is fine too
        checkpoint(optd, "ob")
    finally:
        optd.stop()
    optd = start(ckdir)
    try:
        s = get(optd, "ob")
        assert (s.num_parameters, s.version) == (4, 0), \
            f"restart restored the old session ({s.num_parameters} params, version {s.version})"
    finally:
        optd.stop()


def test_fork_with_amsgrad_turned_on_names_the_field(ckdir):
    # Found in review (fixed): (minor, error contract) a fork whose config turns Adam(W) amsgrad on (refused, as
    # UpdateSession refuses it) is answered "optimizer state of tensor 0 has 2 arrays; adamw with
    # these options keeps 3 (exp_avg, exp_avg_sq, max_exp_avg_sq)": an internal message about the
    # checkpoint's arrays that names neither the field (config.optimizer.adamw.amsgrad) nor why.
    optd = start(ckdir)
    try:
        pb2 = optd.pb2
        create(optd, "aw", kind="adamw", lr=0.01)
        step(optd, "aw")
        checkpoint(optd, "aw")
        code, details = code_of(lambda: optd.stub.CreateSession(pb2.CreateSessionRequest(
            session_id="aw2", from_session_checkpoint="aw",
            config=pb2.SessionConfig(optimizer=opt(pb2, "adamw", amsgrad=True))),
            timeout=RPC_TIMEOUT_S))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "amsgrad" in details and "config.optimizer" in details, details
    finally:
        optd.stop()


def test_periodic_checkpoints_and_idle_sessions_are_not_rewritten(ckdir):
    optd = start(ckdir, interval="1s")
    try:
        create(optd, "per")
        step(optd, "per")
        deadline = time.monotonic() + 10
        while get(optd, "per").durable_version != 1:
            assert time.monotonic() < deadline, "no periodic checkpoint within 10 s"
            time.sleep(0.1)
        folder = Path(ckdir) / "session-per"
        mtime = max(p.stat().st_mtime_ns for p in folder.iterdir())
        time.sleep(2.2)  # two more intervals with no step: nothing rewritten
        assert max(p.stat().st_mtime_ns for p in folder.iterdir()) == mtime
    finally:
        optd.stop()


def test_wrapped_step_counter_does_not_make_the_checkpoint_unrestorable(ckdir):
    # Found in review (fixed): follow-on of the huge-step import: the step counter wraps from 2^63-1 to -2^63 (signed
    # overflow in the optimizer's step increment), the Checkpoint RPC happily writes it, and at the
    # next start Optimizer::ImportState refuses it ("step = -9223372036854775808 is out of range");
    # the restart silently falls back to an older checkpoint (here the CreateSession one, version
    # 0): the newest checkpoint, reported durable, can never be restored.
    optd = start(ckdir)
    try:
        pb2 = optd.pb2
        create(optd, "wrap")
        step(optd, "wrap")
        pulled = pull(optd, "wrap", include_optimizer_state=True)
        code, _ = code_of(lambda: optd.stub.UpdateSession(
            import_request(pb2, "wrap", pulled, step=2**63 - 1), timeout=RPC_TIMEOUT_S))
        if code != grpc.StatusCode.OK:
            return  # refused at import: fine
        step(optd, "wrap")
        code, _ = code_of(lambda: checkpoint(optd, "wrap"))
        if code != grpc.StatusCode.OK:
            return  # refused to write an invalid state: fine
        durable = get(optd, "wrap").durable_version
        kill(optd)
        optd = start(ckdir)
        s = get(optd, "wrap")
        assert s.version == durable, \
            f"durable_version was {durable} but the restart restored version {s.version}:\n" + \
            optd.stderr_text()[-400:]
    finally:
        optd.stop()


def test_import_error_quotes_at_most_64_bytes_of_a_scalar_name():
    # Found in review (fixed): Optimizer::ImportState's "optimizer state has scalar \"%s\"; adam keeps no model-wide
    # scalars" quotes the client's scalar name whole (the per-tensor messages use substr(0, 64)).
    # A 100 KB name makes a 100 KB grpc-message: the client gets RESOURCE_EXHAUSTED "received
    # initial metadata size exceeds limit" instead of the INVALID_ARGUMENT, exactly what README
    # "bad values in errors" promises cannot happen.
    optd = start(None)
    try:
        pb2 = optd.pb2
        create(optd, "sc")
        step(optd, "sc")
        pulled = pull(optd, "sc", include_optimizer_state=True)
        req = import_request(pb2, "sc", pulled)
        req.optimizer_state.scalars["X" * 100000] = 1.0
        code, details = code_of(lambda: optd.stub.UpdateSession(req, timeout=RPC_TIMEOUT_S))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details[:200])
        assert len(details) < 1000 and "X" * 65 not in details
    finally:
        optd.stop()


def test_import_of_a_non_finite_nadam_mu_product_is_refused():
    # Found in review (fixed): same class as the NaN moments: NAdam's per-tensor scalar "mu_product" is checked by name
    # only (the message even says "keeps a finite \"mu_product\""); NaN is accepted and the next
    # finite step makes every parameter NaN.
    optd = start(None)
    try:
        pb2 = optd.pb2
        create(optd, "na", kind="nadam", lr=0.01)
        step(optd, "na")
        req = import_request(pb2, "na", pull(optd, "na", include_optimizer_state=True))
        req.optimizer_state.tensors[0].scalars["mu_product"] = math.nan
        code, _ = code_of(lambda: optd.stub.UpdateSession(req, timeout=RPC_TIMEOUT_S))
        r = step(optd, "na")
        assert code == grpc.StatusCode.INVALID_ARGUMENT, \
            f"NaN mu_product accepted; the next step left {r.non_finite_parameters} NaN parameters"
    finally:
        optd.stop()


def test_fork_id_errors_quote_at_most_64_bytes(ckdir):
    optd = start(ckdir)
    try:
        pb2 = optd.pb2
        for kw in ({"session_id": "Y" * 100000, "from_session_checkpoint": "a"},
                   {"session_id": "x", "from_session_checkpoint": "Y" * 100000},
                   {"session_id": "x", "from_checkpoint": "Y" * 100000 + ".ckpt"}):
            code, details = code_of(lambda: optd.stub.CreateSession(
                pb2.CreateSessionRequest(**kw), timeout=RPC_TIMEOUT_S))
            assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                            grpc.StatusCode.PERMISSION_DENIED), (code, details[:200])
            assert len(details) < 1000 and "Y" * 65 not in details, details[:200]
    finally:
        optd.stop()


def test_checkpoints_under_concurrent_steps_are_consistent_cuts(ckdir):
    optd = start(ckdir)
    try:
        pb2 = optd.pb2
        create(optd, "cut", n=256)
        seen = {}
        stop = threading.Event()

        def stepper():
            rng = np.random.default_rng(3)
            while not stop.is_set():
                g = rng.standard_normal(256).astype(np.float32)
                r = optd.stub.Step(pb2.StepRequest(session_id="cut", gradients=[to_tensor("w", g)]),
                                   timeout=RPC_TIMEOUT_S)
                seen[r.version] = r.parameters[0].data

        t = threading.Thread(target=stepper, daemon=True)
        t.start()
        versions = []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            versions.append(checkpoint(optd, "cut").version)
        stop.set()
        t.join(10)
        assert versions == sorted(versions)
        kill(optd)
        optd = start(ckdir)
        r = pull(optd, "cut", include_optimizer_state=True)
        assert r.version == versions[-1]
        assert r.tensors[0].data == seen[r.version], "restored parameters are not those of its version"
        assert r.optimizer_state.tensors[0].step == r.version
    finally:
        optd.stop()


def test_sigterm_under_load_loses_no_acknowledged_step(ckdir):
    optd = start(ckdir, "--shutdown_grace=2s")
    try:
        pb2 = optd.pb2
        create(optd, "load", n=1024)
        acked = []
        done = threading.Event()

        def stepper():
            g = to_tensor("w", np.full(1024, 0.1, np.float32))
            while not done.is_set():
                try:
                    acked.append(optd.stub.Step(pb2.StepRequest(
                        session_id="load", gradients=[g],
                        return_parameters=pb2.RETURN_PARAMETERS_NONE), timeout=5).version)
                except grpc.RpcError:
                    return

        threads = [threading.Thread(target=stepper, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        optd.proc.send_signal(signal.SIGTERM)
        assert optd.proc.wait(20) == 0
        done.set()
        for t in threads:
            t.join(10)
        optd.stop()
        assert acked
        optd = start(ckdir)
        assert get(optd, "load").version >= max(acked)
    finally:
        done.set()
        optd.stop()
