"""The Python client's native data path (optd._native, client/python/native; optd/native.py)
against a real optd, compared with the pure-Python path in the same process:

* the same steps through both give the same parameters and results, bit for bit, for every wire
  dtype each way, numpy and torch inputs of any float dtype, scalars, losses and versions;
* the same errors: type, code, message (an unreachable server named with the attempts made);
* gradients are read in place and parameters written in place (``out=``, RemoteOptimizer's own
  parameter storage), F32 replies are read-only views, not copies;
* the GIL is released during a native call (a SYNC barrier that only another Python thread of
  the same process can complete).

Needs the extension (ctest sets OPTD_EXPECT_NATIVE=1; without it every test here fails).
"""

import os
import socket
import sys
import threading

import numpy as np
import pytest
import torch

from optd_testing import REPO_ROOT, load_stubs, stub_dir

sys.path.insert(0, str(REPO_ROOT / "client" / "python"))
if "optd" in sys.modules and getattr(sys.modules["optd"], "__file__", None) is None:
    del sys.modules["optd"]
load_stubs()
import optd  # noqa: E402  pylint: disable=wrong-import-position
import optd.torch  # noqa: E402  pylint: disable=wrong-import-position

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def clients(optd_server):
    assert optd.native.available(), optd.native.reason()
    with optd.Client(optd_server.address, timeout=20.0, native=True) as native, \
            optd.Client(optd_server.address, timeout=20.0, native=False) as pure:
        assert native.native and not pure.native
        yield native, pure


def _bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _same_result(a, b):
    for field in ("version", "parameters_version", "gradient_norm", "learning_rate", "duplicate",
                  "workers", "missing_workers", "staleness", "sequence", "attempts",
                  "worker_incarnation", "durable_version", "point", "estimates"):
        assert getattr(a, field) == getattr(b, field), field
    assert list(a.parameters) == list(b.parameters)
    for name in a.parameters:
        assert a.parameters[name].shape == b.parameters[name].shape, name
        np.testing.assert_array_equal(_bits(a.parameters[name]), _bits(b.parameters[name]))


@pytest.mark.parametrize("gradient_dtype,return_dtype",
                         [("f32", "f32"), ("bf16", "bf16"), ("f16", "f16"), ("bf16", "f32"),
                          ("f32", "f16")])
def test_both_paths_give_the_same_steps_bit_for_bit(clients, gradient_dtype, return_dtype):
    native, pure = clients
    init = {"w": RNG.standard_normal((64, 33)).astype(np.float32),
            "b": RNG.standard_normal(33).astype(np.float32),
            "s": np.float32(0.5)}
    sessions = [c.create_session(init, "adamw", lr=0.01, weight_decay=0.1) for c in clients]
    for step in range(6):
        grads = {"w": RNG.standard_normal((64, 33)) * 3,  # float64: converted to float32 first
                 "b": torch.from_numpy(RNG.standard_normal(33).astype(np.float32)),
                 "s": np.float32(step - 2.5)}
        if step == 3:  # values BF16/F16 round: tiny, near the F16 maximum, subnormal, a tie
            grads["w"][0, :4] = [1e-8, 65519.0, 6.1e-5, -1.00390625]
        results = [s.step(grads, loss=0.5 * step, gradient_dtype=gradient_dtype,
                          return_dtype=return_dtype) for s in sessions]
        _same_result(*results)
    pulls = [s.pull() for s in sessions]
    for name in init:
        np.testing.assert_array_equal(_bits(pulls[0].tensors[name]), _bits(pulls[1].tensors[name]))
    for s in sessions:
        s.delete()


@pytest.mark.parametrize("kind", ["schedulefree_adamw", "prodigy", "dog"])
def test_estimates_and_evaluation_points_are_the_same_on_both_paths(clients, kind):
    # #15's StepResult fields: the optimizer's estimates after the step, and which point the
    # returned parameters are (return_point="evaluation": Schedule-Free's x, DoG's average).
    init = {"w": RNG.standard_normal((8, 5)).astype(np.float32),
            "b": RNG.standard_normal(5).astype(np.float32)}
    hyper = {"dog": {"averaging": True}}.get(kind, {})
    sessions = [c.create_session(init, kind, **hyper) for c in clients]
    for step in range(4):
        grads = {"w": RNG.standard_normal((8, 5)).astype(np.float32),
                 "b": RNG.standard_normal(5).astype(np.float32)}
        point = "evaluation" if step % 2 and kind != "prodigy" else "training"
        results = [s.step(grads, return_point=point) for s in sessions]
        _same_result(*results)
        assert results[0].point == point
        assert results[0].estimates and all(np.isfinite(v) for v in results[0].estimates.values())
    for s in sessions:
        s.delete()


def test_raw_client_steps_and_return_modes_match(clients):
    native, pure = clients
    init = {"w": np.ones((4, 3), np.float32)}
    ids = [c.create_session(init, "sgd", lr=0.5).session_id for c in clients]
    for mode in ("all", "none"):
        results = [c.step(i, {"w": np.full((4, 3), 2.0, np.float32)}, return_parameters=mode)
                   for c, i in zip(clients, ids)]
        _same_result(*results)
    for c, i in zip(clients, ids):
        c.delete_session(i)


def _error(call):
    with pytest.raises(optd.OptdError) as e:
        call()
    return e.value


def test_both_paths_raise_the_same_errors(clients):
    native, pure = clients
    session_ids = [c.create_session({"w": np.zeros(3, np.float32)}, "sgd", lr=0.1).session_id
                   for c in clients]
    cases = [
        lambda c, i: c.step("no-such-session", {"w": np.zeros(3, np.float32)}),
        lambda c, i: c.step(i, {"w": np.zeros(4, np.float32)}),           # wrong shape
        lambda c, i: c.step(i, {"v": np.zeros(3, np.float32)}),           # unknown tensor
        lambda c, i: c.step(i, {"w": np.full(3, np.nan, np.float32)}, worker_id="bad id!",
                            sequence=1),                                   # bad worker id
    ]
    for case in cases:
        errors = [_error(lambda: case(c, i)) for c, i in zip(clients, session_ids)]
        assert type(errors[0]) is type(errors[1])
        messages = [e.message.replace(i, "<id>") for e, i in zip(errors, session_ids)]
        assert errors[0].code == errors[1].code and messages[0] == messages[1]
    for c, i in zip(clients, session_ids):
        c.delete_session(i)


def test_an_unreachable_server_is_named_with_what_was_tried(clients):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    policy = optd.RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    for native in (True, False):
        with optd.Client(address, timeout=2.0, native=native) as c:
            e = _error(lambda: c.step("s", {"w": np.zeros(1, np.float32)}, worker_id="w",
                                      sequence=1, retry=policy))
            assert isinstance(e, optd.UnavailableError) and e.attempts == 3, (native, e)
            assert f"[Step to {address}: 3 attempts in " in e.message, (native, e.message)


def test_parameters_are_written_in_place_and_f32_replies_are_views(clients):
    native, _ = clients
    session = native.create_session({"w": np.zeros((128, 5), np.float32),
                                     "b": np.zeros(5, np.float32)}, "sgd", lr=1.0)
    target = np.zeros((128, 5), np.float32)
    r = session.step({"w": np.ones((128, 5), np.float32), "b": np.ones(5, np.float32)},
                     out={"w": target})
    assert r.parameters["w"] is target and (target == -1).all()
    b = r.parameters["b"]
    assert not b.flags.writeable and not b.flags.owndata and (b == -1).all()
    with pytest.raises(ValueError):
        b[0] = 1.0  # a view of the reply: read-only, as on the pure path
    session.delete()


def test_remote_optimizer_updates_parameter_storage_in_place(clients):
    native, pure = clients
    models = []
    for c in clients:
        torch.manual_seed(3)
        model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 1))
        ptrs = [p.data_ptr() for p in model.parameters()]
        opt = optd.torch.RemoteOptimizer(model.parameters(), client=c, optimizer="adam", lr=0.01)
        x = torch.randn(16, 8, generator=torch.Generator().manual_seed(5))
        for _ in range(3):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        assert [p.data_ptr() for p in model.parameters()] == ptrs
        models.append(model)
        opt.session.delete()
    for a, b in zip(*(m.parameters() for m in models)):
        assert torch.equal(a, b)


def test_the_gil_is_released_during_a_native_step(clients):
    # A SYNC step waits for the other worker: if the first step held the GIL, the second could
    # not be sent from this process and the barrier would expire (FAILED, not hung: 5 s).
    native, _ = clients
    session = native.create_session(
        {"w": np.zeros(2, np.float32)}, "sgd", lr=1.0,
        consistency=optd.consistency("sync", workers=2, barrier_timeout_seconds=5.0))
    a = native.session(session.session_id, worker_id="a", version=0)
    b = native.session(session.session_id, worker_id="b", version=0)
    a.join()
    b.join()
    results = {}
    thread = threading.Thread(target=lambda: results.update(a=a.step({"w": np.ones(2)})))
    thread.start()
    results["b"] = b.step({"w": np.ones(2)})
    thread.join(10)
    assert results["a"].version == results["b"].version == 1
    assert results["a"].workers == 2
    session.delete()


def test_pure_python_is_forced_by_the_environment():
    import subprocess  # pylint: disable=import-outside-toplevel
    code = ("import sys; sys.path[:0] = sys.argv[1:]; import optd; "
            "print(optd.native.available(), optd.native.reason())")
    paths = [str(REPO_ROOT / "client" / "python"), str(stub_dir())]
    env = dict(os.environ, OPTD_PURE_PYTHON="1")
    out = subprocess.run([sys.executable, "-c", code] + paths, env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.startswith("False OPTD_PURE_PYTHON=1 forces"), out
