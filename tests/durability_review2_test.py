"""Second hostile review of durability (issue #12): bugs the fixes introduced or left.

Tests marked ``# Found in review (fixed):`` pin a bug the review found (the comment says what was
wrong); the others pin behaviour checked and found right.
About 30 s. Only 127.0.0.1, port 0; only processes this file starts are killed, by PID.

Run: /usr/bin/python3 -m pytest -q tests/durability_review2_test.py   (OPTD_BUILD_DIR picks the build)
"""

import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from durability_testing import (RPC_TIMEOUT_S, checkpoint, ckdir, code_of, create, delete, get,
                                kill, listed_ids, start, step, wait_unloaded)
from optd_testing import OptdProcess, OptdSetupError, to_tensor



def files_of(ckdir, sid):
    return sorted(p.name for p in (Path(ckdir) / f"session-{sid}").iterdir())


def damage(path):
    data = bytearray(Path(path).read_bytes())
    data[-1] ^= 0xFF  # the last array's CRC-32 no longer matches
    Path(path).write_bytes(bytes(data))


def assert_alive(optd, sid):
    assert optd.proc.poll() is None, (
        f"optd died (status {optd.proc.returncode}):\n{optd.stderr_text()[-2000:]}")
    assert get(optd, sid).session_id == sid


# ---------------------------------------------------------------------------------------------------
# Session ids are paths inside --checkpoint_dir: every RPC must treat them as ids.

def test_a_session_id_holding_a_path_does_not_crash_the_server(ckdir):
    # Found in review (fixed): GetSession (and every RPC that calls SessionStore::Find: UpdateSession, Pull, Join,
    # Checkpoint, Step) does not validate the id before SessionStore::Find builds a folder name from
    # it. "a/../session-a" names session a's folder; the reload reads a's checkpoint, Restore
    # inserts it under the id the FILE holds ("a"), which is loaded: ALREADY_EXISTS, and Find
    # retries Find(id) forever: unbounded recursion, optd dies of SIGSEGV. One request from any
    # client kills the server. Expected: INVALID_ARGUMENT (or NOT_FOUND), and optd goes on.
    optd = start(ckdir)
    try:
        create(optd, "a")
        step(optd, "a")
        code, _ = code_of(lambda: get(optd, "a/../session-a"))
        time.sleep(0.3)
        assert_alive(optd, "a")
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), code
    finally:
        optd.stop()


def test_a_copied_session_folder_does_not_crash_the_server(ckdir):
    # Found in review (fixed): an operator's backup copy of a session's folder (cp -r session-a session-a-copy) holds
    # checkpoints whose session_id is "a". At start-up it is skipped ("ALREADY_EXISTS: session a
    # already exists"), so "a-copy" exists on disk only; a request naming it reloads the file, gets
    # ALREADY_EXISTS for "a" and SessionStore::Find recurses forever: SIGSEGV, and again after every
    # restart. Expected: an error for "a-copy" (its files name another session), optd goes on.
    optd = start(ckdir)
    try:
        create(optd, "a")
        step(optd, "a")
    finally:
        optd.stop()
    shutil.copytree(Path(ckdir) / "session-a", Path(ckdir) / "session-a-copy")
    optd = start(ckdir)
    try:
        code, _ = code_of(lambda: get(optd, "a-copy"))
        time.sleep(0.3)
        assert_alive(optd, "a")
        assert code != grpc.StatusCode.OK or get(optd, "a-copy").session_id == "a-copy"
    finally:
        optd.stop()


def test_delete_with_a_path_id_removes_no_other_folder(ckdir):
    # Found in review (fixed): DoDeleteSession never validates session_id. SessionStore::Delete answers OK for any id
    # whose FolderOf(id) holds a "<digits>.ckpt" file, and Checkpointer::Forget then
    # remove_all(DIR/session-<id>): "a/../session-b" deletes session b's checkpoints (b, still
    # loaded, is lost at the next crash) and "a/../../victim" recursively deletes a folder OUTSIDE
    # --checkpoint_dir. Expected: INVALID_ARGUMENT (or NOT_FOUND), nothing removed.
    base = Path(ckdir)
    folder = base / "ck"
    victim = base / "victim"
    victim.mkdir()
    (victim / "00000000000000000001.ckpt").write_bytes(b"precious")
    optd = start(folder)
    try:
        create(optd, "a")
        create(optd, "b")
        step(optd, "b")
        assert checkpoint(optd, "b").version == 1
        c1, _ = code_of(lambda: delete(optd, "a/../session-b"))
        c2, _ = code_of(lambda: delete(optd, "a/../../victim"))
        assert victim.is_dir() and (victim / "00000000000000000001.ckpt").is_file(), (
            "DeleteSession removed a folder outside --checkpoint_dir")
        assert files_of(folder, "b") == ["00000000000000000000.ckpt", "00000000000000000001.ckpt"]
        assert c1 != grpc.StatusCode.OK and c2 != grpc.StatusCode.OK, (c1, c2)
        kill(optd)
        optd = start(folder)
        assert get(optd, "b").version == 1
    finally:
        optd.stop()


# ---------------------------------------------------------------------------------------------------
# The revision counter: "changed since its last checkpoint".

def test_graceful_shutdown_after_an_idle_reload_checkpoints_every_step(ckdir):
    # Found in review (fixed): Checkpointer::durable_ keeps, after an idle unload, {version 3, revision 3} of the
    # session that was unloaded; the reloaded session (Session::Restore) starts at revision 0 and
    # the reload (server.cc reload -> SessionStore::Find) never resets durable_. After exactly 3
    # more steps its revision is 3 again, CheckpointAll (shutdown, and every interval) compares
    # 3 == 3 and skips it: a clean SIGTERM loses steps 4-6 (README: "a clean stop and restart loses
    # no step at all"). Any number of changes equal to the old revision is skipped the same way.
    optd = start(ckdir, "--session_idle_timeout=1s")
    try:
        create(optd, "a")
        for _ in range(3):
            step(optd, "a")
        wait_unloaded(optd, "a")
        assert files_of(ckdir, "a")[-1] == "00000000000000000003.ckpt"
        for _ in range(3):
            r = step(optd, "a")
        assert r.version == 6
    finally:
        optd.stop()  # SIGTERM: the shutdown checkpoint
    optd = start(ckdir)
    try:
        assert get(optd, "a").version == 6, files_of(ckdir, "a")
    finally:
        optd.stop()


def test_periodic_checkpoint_after_an_idle_reload_is_not_skipped(ckdir):
    # Found in review (fixed): the same stale revision, seen by the --checkpoint_interval thread: a reloaded session
    # stepped as many times as it had changes before its unload is never checkpointed by the
    # interval (kept loaded by Pulls), so a SIGKILL loses steps the interval should have made
    # durable. Expected: within a few intervals the newest checkpoint is at version 4.
    optd = start(ckdir, "--session_idle_timeout=2s", interval="500ms")
    try:
        create(optd, "a")
        for _ in range(2):
            step(optd, "a")
        wait_unloaded(optd, "a")
        for _ in range(2):
            r = step(optd, "a")
        assert r.version == 4
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # Pulls keep it loaded (not idle); intervals pass
            optd.stub.Pull(optd.pb2.PullRequest(session_id="a"), timeout=RPC_TIMEOUT_S)
            if files_of(ckdir, "a")[-1] == "00000000000000000004.ckpt":
                break
            time.sleep(0.2)
        kill(optd)
        optd = start(ckdir)
        assert get(optd, "a").version == 4, files_of(ckdir, "a")
    finally:
        optd.stop()


def test_a_session_loaded_after_start_up_reports_its_durable_version(ckdir):
    # Found in review (fixed): a session that did not fit --max_memory_bytes at start-up and is loaded later by a
    # request (SessionStore::Find -> reload) has no Checkpointer::durable_ entry: every reply says
    # durable_version -1 although it is durable at version 2 (its file), and CheckpointAll rewrites
    # it although unchanged. Expected: durable_version 2 once loaded.
    n = 1_000_000  # 12 MB each with Adam; the budget holds one
    optd = start(ckdir)
    try:
        for sid in ("a", "b"):
            create(optd, sid, n=n)
            step(optd, sid, n=n)
            step(optd, sid, n=n)
    finally:
        optd.stop()
    optd = start(ckdir, "--max_memory_bytes=20000000")
    try:
        loaded = listed_ids(optd)
        assert len(loaded) == 1, loaded
        other = "b" if loaded == ["a"] else "a"
        code, details = code_of(lambda: get(optd, other))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max_memory_bytes" in details
        delete(optd, loaded[0])
        s = get(optd, other)
        assert s.version == 2
        assert s.durable_version == 2, s.durable_version
    finally:
        optd.stop()


# ---------------------------------------------------------------------------------------------------
# Reloading from disk.

def test_reload_uses_the_newest_checkpoint_that_reads_back_whole(ckdir):
    # Found in review (fixed): the reload of an unloaded session (server.cc: reload = Read(NewestFile(id))) reads only
    # the newest file: when it is damaged every request gets DATA_LOSS forever, while a restart
    # restores the previous checkpoint (Checkpointer::Restore skips damaged files). Expected: the
    # same as a restart: the session at its newest whole checkpoint (version 1).
    optd = start(ckdir, "--session_idle_timeout=1s")
    try:
        create(optd, "a")
        step(optd, "a")
        assert checkpoint(optd, "a").version == 1
        step(optd, "a")
        wait_unloaded(optd, "a")
        files = files_of(ckdir, "a")
        assert files[-1] == "00000000000000000002.ckpt", files
        damage(Path(ckdir) / "session-a" / files[-1])
        code, details = code_of(lambda: get(optd, "a"))
        assert code == grpc.StatusCode.OK, (code, details)
        assert get(optd, "a").version == 1
    finally:
        optd.stop()


def test_fork_from_a_session_whose_newest_checkpoint_is_damaged(ckdir):
    # BUG (minor): from_session_checkpoint reads only NewestFile: a damaged newest checkpoint makes
    # the fork DATA_LOSS though the session has older whole ones (which a restart would restore).
    # Expected: the fork starts from the newest checkpoint that reads back whole.
    optd = start(ckdir)
    try:
        create(optd, "a")
        step(optd, "a")
        assert checkpoint(optd, "a").version == 1
        step(optd, "a")
        assert checkpoint(optd, "a").version == 2
        damage(Path(ckdir) / "session-a" / "00000000000000000002.ckpt")
        pb2 = optd.pb2
        code, details = code_of(lambda: optd.stub.CreateSession(pb2.CreateSessionRequest(
            session_id="f", from_session_checkpoint="a"), timeout=RPC_TIMEOUT_S))
        assert code == grpc.StatusCode.OK, (code, details)
        assert get(optd, "f").version == 1
    finally:
        optd.stop()


def test_delete_racing_the_reload_of_an_unloaded_session_stays_deleted(ckdir):
    # Found in review (fixed): SessionStore::Find reloads outside every lock: reload (read + CRC of the file), then
    # Restore -> Insert. A DeleteSession arriving meanwhile finds nothing loaded, sees the file
    # (stored) and answers OK, Forget removes the folder; then Find inserts the session it read.
    # The deleted session is served again, and the shutdown checkpoint writes it back: it survives
    # a restart. Expected: once DeleteSession answered OK, the session is gone.
    n = 8_000_000  # a reload of ~0.1 s: the Delete lands inside it
    optd = start(ckdir, "--session_idle_timeout=1s")
    try:
        create(optd, "big", n=n)
        step(optd, "big", n=n)
        wait_unloaded(optd, "big")
        results = {}
        t = threading.Thread(target=lambda: results.update(get=code_of(lambda: get(optd, "big"))))
        t.start()
        time.sleep(0.04)
        results["delete"] = code_of(lambda: delete(optd, "big"))
        t.join(30)
        assert results["delete"][0] == grpc.StatusCode.OK
        assert code_of(lambda: get(optd, "big"))[0] == grpc.StatusCode.NOT_FOUND, results
    finally:
        optd.stop()
    assert not (Path(ckdir) / "session-big").exists(), "the deleted session was written back"


def vm_hwm_bytes(optd):
    for line in Path(f"/proc/{optd.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_requests_naming_an_over_budget_session_do_not_allocate_it_outside_the_budget(ckdir):
    # Found in review (fixed): a session left on disk because it does not fit --max_memory_bytes is read WHOLE
    # (ReadCheckpointFile: every array into memory) by each request naming it, and only then
    # refused by Session::Restore's budget reservation. Concurrent requests each hold a full copy
    # outside the budget: here a 40 MB budget, a 100 MB session, 12 concurrent GetSessions raise the
    # peak RSS by hundreds of MB; with a session of many GB a few requests OOM-kill the server.
    # README: "Every limit below is checked before anything is allocated". Expected: refused from
    # the manifest (sizes, optimizer) before the arrays are read.
    n = 25_000_000  # SGD without momentum: 100 MB of parameters
    optd = start(ckdir)
    try:
        optd.stub.CreateSession(optd.pb2.CreateSessionRequest(
            session_id="big", config=optd.pb2.SessionConfig(
                optimizer=optd.pb2.OptimizerConfig(sgd=optd.pb2.Sgd(lr=0.1))),
            tensors=[to_tensor("w", np.zeros(n, np.float32))]), timeout=RPC_TIMEOUT_S)
    finally:
        optd.stop()
    budget = 40_000_000
    optd = start(ckdir, f"--max_memory_bytes={budget}")
    try:
        before = vm_hwm_bytes(optd)  # start-up's own attempt included
        codes = []
        threads = [threading.Thread(target=lambda: codes.append(code_of(lambda: get(optd, "big"))))
                   for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(codes) == 12
        for code, details in codes:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max_memory_bytes" in details
        grown = vm_hwm_bytes(optd) - before
        # Found right: Create of its id is ALREADY_EXISTS, Delete removes it with its files.
        assert code_of(lambda: optd.stub.CreateSession(optd.pb2.CreateSessionRequest(
            session_id="big", tensors=[to_tensor("w", np.zeros(2, np.float32))],
            config=optd.pb2.SessionConfig(optimizer=optd.pb2.OptimizerConfig(
                sgd=optd.pb2.Sgd(lr=0.1)))), timeout=RPC_TIMEOUT_S))[0] == (
                    grpc.StatusCode.ALREADY_EXISTS)
        assert code_of(lambda: delete(optd, "big"))[0] == grpc.StatusCode.OK
        assert not (Path(ckdir) / "session-big").exists()
        assert grown <= budget, (
            f"peak RSS grew by {grown >> 20} MiB serving refusals under a {budget >> 20} MiB budget")
    finally:
        optd.stop()


def test_fork_changing_only_weight_decay_keeps_the_plateau_reduced_lr(ckdir):
    # Found in review (fixed): DoFork, for any config.optimizer without config.schedule, sets the schedule state's
    # plateau_lr back to the base lr, even when the lr did not change. UpdateSession with the same
    # optimizer keeps ReduceOnPlateau's reductions (LrSchedule::SetBaseLr runs only when the base
    # lr changes), and README says a fork's config follows "the rules of UpdateSession". Here a
    # fork meant only to add weight decay jumps from lr 0.001 back to 0.1: 100x.
    optd = start(ckdir)
    try:
        pb2 = optd.pb2
        sched = pb2.LrSchedule(reduce_on_plateau=pb2.LrSchedule.ReduceOnPlateau(
            factor=0.1, patience=0))
        optd.stub.CreateSession(pb2.CreateSessionRequest(
            session_id="p", config=pb2.SessionConfig(
                optimizer=pb2.OptimizerConfig(adam=pb2.Adam(lr=0.1)), schedule=sched),
            tensors=[to_tensor("w", np.zeros(4, np.float32))]), timeout=RPC_TIMEOUT_S)
        for loss in (1.0, 2.0, 3.0):  # two bad epochs: 0.1 -> 0.01 -> 0.001
            optd.stub.Step(pb2.StepRequest(session_id="p", loss=loss, gradients=[
                to_tensor("w", np.ones(4, np.float32))]), timeout=RPC_TIMEOUT_S)
        reduced = get(optd, "p").learning_rate
        assert reduced == pytest.approx(0.001)
        checkpoint(optd, "p")
        wd = pb2.OptimizerConfig(adam=pb2.Adam(weight_decay=0.01))
        fork = optd.stub.CreateSession(pb2.CreateSessionRequest(
            session_id="f", from_session_checkpoint="p",
            config=pb2.SessionConfig(optimizer=wd)), timeout=RPC_TIMEOUT_S)
        updated = optd.stub.UpdateSession(pb2.UpdateSessionRequest(session_id="p", optimizer=wd),
                                          timeout=RPC_TIMEOUT_S)
        assert updated.learning_rate == pytest.approx(reduced)  # UpdateSession keeps it
        assert fork.learning_rate == pytest.approx(reduced), fork.learning_rate
    finally:
        optd.stop()


# ---------------------------------------------------------------------------------------------------
# The folder lock.

def test_a_removed_lock_file_does_not_let_a_second_optd_share_the_folder(ckdir):
    # Found in review (fixed): the lock is a POSIX record lock on the FILE DIR/.optd.lock, opened by path. Once that
    # file is unlinked (a cleanup script, an operator), a second optd creates a new .optd.lock,
    # locks it and starts on the same folder: two processes restore, step, prune and delete the
    # same sessions. README: "a second optd on the same folder exits 1". Expected: refused (e.g.
    # lock the folder itself, or re-check that the locked inode is still DIR/.optd.lock).
    first = start(ckdir)
    second = None
    try:
        create(first, "a")
        os.remove(Path(ckdir) / ".optd.lock")
        try:
            second = start(ckdir)
        except OptdSetupError:
            second = None  # refused: right
        assert second is None, "a second optd started on a folder another optd is using"
    finally:
        if second is not None:
            second.stop()
        first.stop()


def test_stale_and_read_only_lock_files_do_not_block_a_restart(ckdir):
    optd = start(ckdir)
    create(optd, "a")
    kill(optd)  # the lock file stays behind
    lock = Path(ckdir) / ".optd.lock"
    assert lock.exists()
    lock.chmod(0o444)
    optd = start(ckdir)
    try:
        assert get(optd, "a").version == 0
        with pytest.raises(OptdSetupError):  # while it runs, a second one is still refused
            start(ckdir).stop()
    finally:
        optd.stop()


# ---------------------------------------------------------------------------------------------------
# Checked and found right.

def test_a_failed_idle_unload_checkpoint_keeps_the_session_serving_and_loses_nothing(ckdir):
    optd = start(ckdir, "--session_idle_timeout=1s")
    try:
        create(optd, "a")
        step(optd, "a")
        folder = Path(ckdir) / "session-a"
        shutil.rmtree(folder)
        folder.write_text("a regular file where the session's folder was")
        time.sleep(2.5)  # at least one sweep: its checkpoint fails, it is thawed
        assert "a" in listed_ids(optd)
        assert step(optd, "a").version == 2
        assert get(optd, "a").version == 2
        folder.unlink()
        wait_unloaded(optd, "a")
        assert files_of(ckdir, "a") == ["00000000000000000002.ckpt"]
        assert get(optd, "a").version == 2  # reloaded
        assert "idle) failed" in optd.stderr_text()
    finally:
        optd.stop()


def test_forks_and_generated_ids_survive_an_immediate_sigkill(ckdir):
    optd = start(ckdir)
    try:
        pb2 = optd.pb2
        create(optd, "a")
        step(optd, "a")
        assert checkpoint(optd, "a").version == 1
        fork = optd.stub.CreateSession(pb2.CreateSessionRequest(
            session_id="f", from_session_checkpoint="a",
            config=pb2.SessionConfig(optimizer=pb2.OptimizerConfig(adam=pb2.Adam(lr=0.5)))),
            timeout=RPC_TIMEOUT_S)
        assert fork.durable_version == 1
        generated = create(optd, "").session_id
        assert generated.startswith("s-") and len(generated) == 18
        kill(optd)
        optd = start(ckdir)
        f = get(optd, "f")
        assert f.version == 1 and f.durable_version == 1
        assert f.config.optimizer.adam.lr == pytest.approx(0.5)
        assert get(optd, generated).version == 0
        # Create of an id that has checkpoints is refused, of a generated one too.
        assert code_of(lambda: create(optd, generated))[0] == grpc.StatusCode.ALREADY_EXISTS
    finally:
        optd.stop()


def test_a_session_whose_only_checkpoint_is_damaged_exists_until_deleted(ckdir):
    optd = start(ckdir)
    try:
        create(optd, "d")
    finally:
        optd.stop()
    damage(Path(ckdir) / "session-d" / "00000000000000000000.ckpt")
    optd = start(ckdir)
    try:
        assert "no checkpoint of session d could be restored" in optd.stderr_text()
        assert code_of(lambda: get(optd, "d"))[0] == grpc.StatusCode.DATA_LOSS
        code, details = code_of(lambda: create(optd, "d"))
        assert code == grpc.StatusCode.ALREADY_EXISTS and "Delete it first" in details
        assert code_of(lambda: delete(optd, "d"))[0] == grpc.StatusCode.OK
        assert not (Path(ckdir) / "session-d").exists()
        assert code_of(lambda: delete(optd, "d"))[0] == grpc.StatusCode.NOT_FOUND
        assert create(optd, "d").version == 0
    finally:
        optd.stop()


def test_every_unary_error_carries_the_server_incarnation(ckdir):
    optd = start(ckdir, "--max_memory_bytes=10000000")
    try:
        incarnation = create(optd, "a").server_incarnation
        raw = lambda m: optd.channel.unary_unary(  # noqa: E731
            f"/optd.v1.Optimizer/{m}", request_serializer=lambda x: x,
            response_deserializer=lambda x: x)
        methods = ["CreateSession", "GetSession", "ListSessions", "UpdateSession", "DeleteSession",
                   "Pull", "Step", "JoinSession", "Checkpoint"]
        for m in methods:
            with pytest.raises(grpc.RpcError) as e:
                raw(m)(b"\xff\xff\xff", timeout=RPC_TIMEOUT_S)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, m
            assert f"not a valid optd.v1.{m}Request message" in e.value.details(), m
            assert dict(e.value.trailing_metadata())["optd-server-incarnation"] == incarnation, m
        pb2 = optd.pb2
        refusals = [
            lambda: get(optd, "nope"),
            lambda: delete(optd, "nope"),
            lambda: checkpoint(optd, "nope"),
            lambda: create(optd, "a"),
            lambda: optd.stub.UpdateSession(pb2.UpdateSessionRequest(
                session_id="a", optimizer=pb2.OptimizerConfig(sgd=pb2.Sgd(lr=1))),
                timeout=RPC_TIMEOUT_S),
            lambda: create(optd, "huge", n=2_000_000),  # over the budget
        ]
        for call in refusals:
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert dict(e.value.trailing_metadata())["optd-server-incarnation"] == incarnation
        assert "--max_memory_bytes" in e.value.details()
    finally:
        optd.stop()


def test_update_of_a_deleted_session_is_not_found_and_stays_deleted(ckdir):
    optd = start(ckdir, "--session_idle_timeout=1s")
    try:
        pb2 = optd.pb2
        create(optd, "u")
        wait_unloaded(optd, "u")
        delete(optd, "u")
        code, _ = code_of(lambda: optd.stub.UpdateSession(pb2.UpdateSessionRequest(
            session_id="u", optimizer=pb2.OptimizerConfig(adam=pb2.Adam(lr=0.5))),
            timeout=RPC_TIMEOUT_S))
        assert code == grpc.StatusCode.NOT_FOUND
        assert not (Path(ckdir) / "session-u").exists()
    finally:
        optd.stop()
