"""Three languages, one session: a Python, a Go and a C++ worker step the same optd session at once,
first in ASYNC mode, then at a SYNC barrier of three.

One real optd (127.0.0.1:0) per test holds one SGD session (lr = 0.25, a power of two) with one
tensor "w" of 8 elements, created here. Three worker processes then fit w to the same target
t[i] = i - 4 (the quadratic of examples/cpp/quadratic_worker.cc) concurrently.

ASYNC (test_python_go_cpp_workers_share_one_session):

* Python: this file run as a script (``--worker``), with the raw generated stubs from
  <build>/python; worker id "py-worker", sequence numbers 1..N without joining (an unjoined worker:
  no incarnation), every reply version recorded;
* Go: the example worker built by client/go/build.sh (<build>/go/bin/optd-go-worker), stepping over
  one StreamSteps stream (Client.StreamLoop), worker id "go-worker"; it joins the session and
  numbers the steps of its incarnation 1..N;
* C++: <build>/examples/cpp/quadratic_worker (unary Worker::Step, worker id "cpp-worker", joined).

The Python worker starts first and waits, connected, at a gate; the Go and C++ workers are launched
and the gate is opened, so all three step at the same time. Afterwards:

* every worker exits 0 having applied exactly its own number of steps (each a different count), and
  the session version equals their sum: no step lost, none applied twice;
* the Python worker's reply versions show steps of the other workers in between (the workers really
  interleaved), and all versions it saw are distinct;
* the server's exactly-once table confirms the Python and Go workers' last steps: resending their last
  sequence number (with the Go worker's incarnation) is answered duplicate = true with the version
  that worker reported, and changes nothing;
* w has converged to the target (the C++ worker's gradients depend on the parameters it gets back,
  so the exact float values depend on the interleaving; the version count is the exact check).

SYNC (test_python_go_cpp_workers_step_one_sync_session): the session waits for one gradient from
each of the three workers (consistency workers = 3) before each step. Each worker joins the session,
then sends its id, its incarnation, a sequence number (1..N) and the version its gradient was
computed at (required by SYNC):

* Python: this file run as a script (``--sync-worker``) with the optd Python client (Session.step);
* Go: the same example worker (StreamLoop sends the version it pulled or got back);
* C++: quadratic_worker --nocreate --stream (a Worker's WorkerStream).

All three start at a gate as above and apply the same number of steps N. Afterwards every worker
exited 0 with N steps, no duplicate and no stale gradient; the Python worker saw versions exactly
1..N, each step combining 3 gradients; the session's version is N (one per barrier); resending each
worker's last sequence with its incarnation is answered duplicate = true and changes nothing; and w
has converged.

Every process started here is stopped by its PID. Run with Debian's interpreter:
    /usr/bin/python3 -m pytest -q tests/cross_language_test.py   (OPTD_BUILD_DIR picks the build)
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from optd_testing import (REPO_ROOT, build_dir, from_tensor, load_stubs,  # noqa: E402
                          start_optd, to_tensor)

DIM = 8
LR = 0.25
STEPS = {"py-worker": 300, "go-worker": 400, "cpp-worker": 500}
SESSION = "cross-language"
SYNC_SESSION = "cross-language-sync"
SYNC_STEPS = 60
SYNC_WORKERS = ("py-sync", "go-sync", "cpp-sync")
SYNC_BARRIER_TIMEOUT_S = 60  # workers start one after another on a loaded 2-core machine
GO_BUILD_TIMEOUT_S = 600  # a cold Go build of grpc takes ~20 s on 2 cores; allow for a loaded CI
WORKER_TIMEOUT_S = 120
READY_TIMEOUT_S = 30

_SUMMARY = re.compile(r"^worker (?P<id>\S+) steps (?P<steps>\d+) duplicates (?P<dups>\d+) "
                      r"aborted (?P<aborted>\d+) first_sequence (?P<first>\d+) last_sequence "
                      r"(?P<last>\d+) incarnation (?P<incarnation>\d+) version (?P<version>\d+) "
                      r"final loss (?P<loss>\S+)$", re.M)


def target():
    return np.arange(DIM, dtype=np.float32) - DIM / 2


# ---------------------------------------------------------------------------------------------------
# The Python worker (this file run as a script).

def python_worker(address, session, steps, worker_id):
    """Steps `session` `steps` times with sequences 1..steps; prints "ready", waits for a line on
    stdin, steps, then prints one JSON summary line."""
    import grpc  # pylint: disable=import-outside-toplevel
    pb2, pb2_grpc = load_stubs()
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=READY_TIMEOUT_S)
    stub = pb2_grpc.OptimizerStub(channel)
    pulled = stub.Pull(pb2.PullRequest(session_id=session), timeout=30)
    w = from_tensor(pulled.tensors[0]).copy()
    t = target()
    print("ready", flush=True)
    sys.stdin.readline()  # the gate
    versions, loss = [], None
    for i in range(steps):
        g = w - t
        loss = float(0.5 * np.dot(g, g))
        reply = stub.Step(pb2.StepRequest(session_id=session, worker_id=worker_id, sequence=i + 1,
                                          gradients=[to_tensor("w", g)], loss=loss), timeout=30)
        if reply.duplicate:
            raise SystemExit(f"step {i + 1}: unexpected duplicate reply")
        versions.append(reply.version)
        w = from_tensor(reply.parameters[0]).copy()
    channel.close()
    print(json.dumps({"worker": worker_id, "steps": len(versions), "versions": versions,
                      "last_sequence": steps, "final_loss": loss}), flush=True)


def python_sync_worker(address, session, steps, worker_id):
    """Steps `session` `steps` times as an optd.Session (it joins; worker id, incarnation, sequences
    1..steps, the version of its parameters with each step); prints "ready", waits for a line on
    stdin, steps, then prints one JSON summary line."""
    sys.path.insert(0, str(REPO_ROOT / "client" / "python"))
    load_stubs()
    import optd  # pylint: disable=import-outside-toplevel
    with optd.Client(address, timeout=SYNC_BARRIER_TIMEOUT_S + 30) as client:
        worker = client.session(session, worker_id=worker_id)
        worker.join()  # before the gate (step would join by itself)
        w = worker.pull().tensors["w"].copy()  # sets the worker's version
        t = target()
        print("ready", flush=True)
        sys.stdin.readline()  # the gate
        versions, workers, duplicates, loss = [], [], 0, None
        for _ in range(steps):
            g = w - t
            loss = float(0.5 * np.dot(g, g))
            result = worker.step({"w": g}, loss=loss)
            duplicates += int(result.duplicate)
            versions.append(result.version)
            workers.append(result.workers)
            w = np.array(result.parameters["w"], dtype=np.float32)
        print(json.dumps({"worker": worker_id, "steps": len(versions), "versions": versions,
                          "workers": workers, "duplicates": duplicates,
                          "incarnation": worker.incarnation, "last_sequence": worker.sequence,
                          "final_loss": loss}), flush=True)


# ---------------------------------------------------------------------------------------------------
# The tests.

def go_worker_binary():
    """Builds the Go client and its example worker (client/go/build.sh, offline) and returns it."""
    out = build_dir() / "go"
    try:
        proc = subprocess.run(["bash", str(REPO_ROOT / "client" / "go" / "build.sh"), str(out)],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=GO_BUILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"client/go/build.sh took more than {GO_BUILD_TIMEOUT_S} s", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"client/go/build.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
                    pytrace=False)
    return out / "bin" / "optd-go-worker"


def cpp_worker_binary():
    path = build_dir() / "examples" / "cpp" / "quadratic_worker"
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: build the quadratic_worker target "
                    f"(OPTD_BUILD_DIR={build_dir()})", pytrace=False)
    return path


class Workers:
    """The worker processes this test started, stopped by PID whatever happens."""

    def __init__(self):
        self.procs = {}

    def start(self, name, args, stdin=subprocess.DEVNULL):
        self.procs[name] = subprocess.Popen([str(a) for a in args], stdin=stdin,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True)
        return self.procs[name]

    def finish(self, name, timeout):
        """(returncode, stdout, stderr) of a worker, killed if it outlives `timeout`."""
        proc = self.procs[name]
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"{name} (pid {proc.pid}) did not finish within {timeout} s\n{out}\n{err}",
                        pytrace=False)
        return proc.returncode, out, err

    def stop_all(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def start_python_at_gate(workers, name, mode, address, session, steps):
    """Starts this file as a worker (`mode` --worker or --sync-worker) and waits for its "ready"."""
    py = workers.start(name, [sys.executable, __file__, mode, address, session, steps, name],
                       stdin=subprocess.PIPE)
    line = py.stdout.readline()  # bounded: the worker's connect and Pull have timeouts
    if line.strip() != "ready":
        py.kill()
        pytest.fail(f"the Python worker did not get ready: {line!r}\n{py.stderr.read()}",
                    pytrace=False)
    return py


def open_gate(py):
    py.stdin.write("go\n")
    py.stdin.flush()
    py.stdin.close()
    py.stdin = None  # closed here; communicate() must not touch it


def test_python_go_cpp_workers_share_one_session():
    go_worker = go_worker_binary()
    cpp_worker = cpp_worker_binary()
    server = start_optd()
    workers = Workers()
    try:
        pb2 = server.pb2
        stub = server.stub
        config = pb2.SessionConfig(optimizer=pb2.OptimizerConfig(sgd=pb2.Sgd(lr=LR)),
                                   consistency=pb2.Consistency(mode=pb2.Consistency.MODE_ASYNC))
        created = stub.CreateSession(pb2.CreateSessionRequest(
            session_id=SESSION, config=config, tensors=[to_tensor("w", np.zeros(DIM))]), timeout=30)
        assert created.version == 0

        # Python first: it connects and pulls, then waits at the gate while the others launch.
        py = start_python_at_gate(workers, "py-worker", "--worker", server.address, SESSION,
                                  STEPS["py-worker"])
        workers.start("go-worker", [go_worker, "-server", server.address, "-session", SESSION,
                                    "-steps", STEPS["go-worker"], "-worker", "go-worker"])
        workers.start("cpp-worker", [cpp_worker, f"--server={server.address}",
                                     f"--session={SESSION}", f"--steps={STEPS['cpp-worker']}",
                                     "--worker=cpp-worker", f"--dim={DIM}"])
        open_gate(py)

        results = {name: workers.finish(name, WORKER_TIMEOUT_S) for name in STEPS}
        for name, (code, out, err) in results.items():
            assert code == 0, f"{name} exited {code}\nstdout:\n{out}\nstderr:\n{err}"

        # Each worker applied exactly its own number of steps.
        py_summary = json.loads(results["py-worker"][1].strip().splitlines()[-1])
        assert py_summary["steps"] == STEPS["py-worker"]
        go_match = _SUMMARY.search(results["go-worker"][1])
        assert go_match, results["go-worker"][1]
        assert go_match["id"] == "go-worker"
        assert int(go_match["steps"]) == STEPS["go-worker"]
        assert int(go_match["dups"]) == 0 and int(go_match["aborted"]) == 0
        assert (int(go_match["first"]), int(go_match["last"])) == (1, STEPS["go-worker"])
        assert int(go_match["incarnation"]) > 0  # it joined
        cpp_out = results["cpp-worker"][1]
        assert re.search(r"^final loss \d", cpp_out, re.M), cpp_out
        cpp_match = _SUMMARY.search(cpp_out)
        assert cpp_match and int(cpp_match["steps"]) == STEPS["cpp-worker"], cpp_out
        assert int(cpp_match["incarnation"]) > 0 and int(cpp_match["first"]) == 1, cpp_out

        # The session counted every step of every worker, once.
        total = sum(STEPS.values())
        session = stub.GetSession(pb2.GetSessionRequest(session_id=SESSION), timeout=30)
        assert session.version == total, (session.version, STEPS)

        # The Python worker's steps were interleaved with the others'.
        versions = py_summary["versions"]
        assert len(set(versions)) == len(versions) and versions == sorted(versions)
        gaps = sum(1 for a, b in zip(versions, versions[1:]) if b > a + 1)
        others_between = versions[-1] - versions[0] + 1 - len(versions)
        print(f"python worker: versions {versions[0]}..{versions[-1]}, {gaps} gaps, "
              f"{others_between} steps of other workers in between")
        assert gaps > 0, f"no other worker stepped between the Python worker's steps: {versions}"

        # The exactly-once table: a resend of each sequenced worker's last step is a duplicate with
        # the version that worker got, and is not applied again.
        probe = to_tensor("w", np.ones(DIM))
        for worker_id, incarnation, last_seq, last_version in (
                ("py-worker", 0, py_summary["last_sequence"], versions[-1]),
                ("go-worker", int(go_match["incarnation"]), int(go_match["last"]),
                 int(go_match["version"]))):
            reply = stub.Step(pb2.StepRequest(session_id=SESSION, worker_id=worker_id,
                                              worker_incarnation=incarnation, sequence=last_seq,
                                              gradients=[probe]), timeout=30)
            assert reply.duplicate, (worker_id, reply)
            assert reply.version == last_version, (worker_id, reply.version, last_version)
        assert stub.GetSession(pb2.GetSessionRequest(session_id=SESSION),
                               timeout=30).version == total

        # Everyone fitted the same target.
        pulled = stub.Pull(pb2.PullRequest(session_id=SESSION), timeout=30)
        w = from_tensor(pulled.tensors[0])
        assert np.allclose(w, target(), atol=1e-3), w
    finally:
        workers.stop_all()
        returncode, killed = server.stop()
    assert not killed and returncode == 0, f"optd stop: status {returncode}, killed {killed}"


def test_python_go_cpp_workers_step_one_sync_session():
    go_worker = go_worker_binary()
    cpp_worker = cpp_worker_binary()
    server = start_optd()
    workers = Workers()
    py_name, go_name, cpp_name = SYNC_WORKERS
    try:
        pb2 = server.pb2
        stub = server.stub
        config = pb2.SessionConfig(
            optimizer=pb2.OptimizerConfig(sgd=pb2.Sgd(lr=LR)),
            consistency=pb2.Consistency(mode=pb2.Consistency.MODE_SYNC, workers=3,
                                        barrier_timeout_seconds=SYNC_BARRIER_TIMEOUT_S))
        stub.CreateSession(pb2.CreateSessionRequest(
            session_id=SYNC_SESSION, config=config, tensors=[to_tensor("w", np.zeros(DIM))]),
            timeout=30)

        py = start_python_at_gate(workers, py_name, "--sync-worker", server.address,
                                  SYNC_SESSION, SYNC_STEPS)
        workers.start(go_name, [go_worker, "-server", server.address, "-session", SYNC_SESSION,
                                "-steps", SYNC_STEPS, "-worker", go_name])
        workers.start(cpp_name, [cpp_worker, f"--server={server.address}",
                                 f"--session={SYNC_SESSION}", f"--steps={SYNC_STEPS}",
                                 f"--worker={cpp_name}", f"--dim={DIM}", "--nocreate", "--stream"])
        open_gate(py)

        results = {name: workers.finish(name, WORKER_TIMEOUT_S) for name in SYNC_WORKERS}
        for name, (code, out, err) in results.items():
            assert code == 0, f"{name} exited {code}\nstdout:\n{out}\nstderr:\n{err}"

        # Every worker applied N steps, none twice, none stale; each barrier step combined three
        # gradients and gave every worker the same new version.
        py_summary = json.loads(results[py_name][1].strip().splitlines()[-1])
        assert py_summary["steps"] == SYNC_STEPS and py_summary["duplicates"] == 0, py_summary
        assert py_summary["versions"] == list(range(1, SYNC_STEPS + 1)), py_summary["versions"]
        assert set(py_summary["workers"]) == {3}, py_summary["workers"]
        assert py_summary["incarnation"] > 0 and py_summary["last_sequence"] == SYNC_STEPS
        last = {py_name: (py_summary["incarnation"], py_summary["last_sequence"], SYNC_STEPS)}
        for name in (go_name, cpp_name):
            match = _SUMMARY.search(results[name][1])
            assert match, results[name][1]
            assert match["id"] == name
            assert int(match["steps"]) == SYNC_STEPS, match.group(0)
            assert int(match["dups"]) == 0 and int(match["aborted"]) == 0, match.group(0)
            assert (int(match["first"]), int(match["last"])) == (1, SYNC_STEPS), match.group(0)
            assert int(match["version"]) == SYNC_STEPS, match.group(0)
            assert int(match["incarnation"]) > 0, match.group(0)
            last[name] = (int(match["incarnation"]), int(match["last"]), int(match["version"]))
        assert len({incarnation for incarnation, _, _ in last.values()}) == 3

        # One version per barrier step.
        session = stub.GetSession(pb2.GetSessionRequest(session_id=SYNC_SESSION), timeout=30)
        assert session.version == SYNC_STEPS, session.version

        # The exactly-once table: each worker's last step, resent, is a duplicate of the last
        # barrier step and is not applied again (no barrier opens for it).
        probe = to_tensor("w", np.ones(DIM))
        for worker_id, (incarnation, last_seq, last_version) in last.items():
            reply = stub.Step(pb2.StepRequest(session_id=SYNC_SESSION, worker_id=worker_id,
                                              worker_incarnation=incarnation, sequence=last_seq,
                                              version=last_version - 1, gradients=[probe]),
                              timeout=30)
            assert reply.duplicate, (worker_id, reply)
            assert reply.version == last_version, (worker_id, reply.version, last_version)
        assert stub.GetSession(pb2.GetSessionRequest(session_id=SYNC_SESSION),
                               timeout=30).version == SYNC_STEPS

        # The barrier averaged three gradients computed at the same parameters: w converged.
        pulled = stub.Pull(pb2.PullRequest(session_id=SYNC_SESSION), timeout=30)
        w = from_tensor(pulled.tensors[0])
        assert np.allclose(w, target(), atol=1e-3), w
    finally:
        workers.stop_all()
        returncode, killed = server.stop()
    assert not killed and returncode == 0, f"optd stop: status {returncode}, killed {killed}"


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        python_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif len(sys.argv) == 6 and sys.argv[1] == "--sync-worker":
        python_sync_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        sys.exit(f"usage: {sys.argv[0]} --worker|--sync-worker ADDRESS SESSION STEPS WORKER_ID "
                 f"(run the test with /usr/bin/python3 -m pytest)")
