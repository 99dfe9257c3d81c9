"""The learning-rate-free and recent optimizers over gRPC against the golden vectors.

Every case of tests/golden/lr_free.json (reference/optimizers-lr-free.md: vectors computed by
running the upstream reference code on torch 1.13) is replayed through the real optd binary: a
session with the case's tensors and hyperparameters (mapped from the case's
resolved_hyperparameters, so a case added to the file runs too), 60 Steps with the file's
gradients, and at each checkpoint

* the parameters of the Step reply,
* the evaluation point (Schedule-Free's x, DoG's iterate average) from Pull(point=EVALUATION),
* the optimizer's scalars from Pull(include_optimizer_state) (model-wide: Prodigy's d, ...;
  per tensor: L-DoG's eta, Adafactor's step),

are compared with the file at its own tolerances (per tensor max|mine - golden| <= rel *
max|golden|; scalars |mine - golden| <= rel * |golden|). GetSession and the Step reply carry the
estimates (d, eta). Muon_bf16 is not run: the server's Newton-Schulz is float32 (Muon_fp32).

Run: /usr/bin/python3 -m pytest -q tests/lr_free_golden_test.py   (OPTD_BUILD_DIR picks the build)
"""

import json
import math
from pathlib import Path

import grpc
import numpy as np
import pytest

from optd_testing import from_tensor, to_tensor

GOLDEN = Path(__file__).resolve().parent / "golden" / "lr_free.json"
RPC_TIMEOUT_S = 30.0
# The file's optimizer key -> the OptimizerConfig field.
KINDS = {"Prodigy": "prodigy", "DAdaptAdam": "dadapt_adam", "DAdaptSGD": "dadapt_sgd",
         "DoG": "dog", "LDoG": "ldog", "AdamWScheduleFree": "schedulefree_adamw",
         "SGDScheduleFree": "schedulefree_sgd", "Adafactor": "adafactor", "Muon_fp32": "muon"}


def _load():
    with open(GOLDEN) as f:
        return json.load(f)


DATA = _load()
CASES = [(opt, name) for opt in KINDS for name in DATA.get(opt, {})]


def _number(v):
    if isinstance(v, str):
        return float(v)  # "inf"
    return v


def hyperparameters(optimizer, case):
    """The optimizer message's fields for the case's resolved_hyperparameters."""
    h = dict(case["resolved_hyperparameters"])
    out = {}
    if "betas" in h:
        out["beta1"], out["beta2"] = h.pop("betas")
    if optimizer == "Adafactor":
        eps1, eps2 = h.pop("eps")
        if eps1 is not None:
            out["eps1"] = eps1
        out["eps2"] = eps2
    if optimizer in ("DoG", "LDoG"):
        out["averaging"] = True
    dropped = {"fsdp_in_use", "foreach", "log_every", "eps1_effective", "nesterov_quirk"}
    for key, value in h.items():
        if key in dropped or value is None:
            continue
        out[key] = _number(value)
    if optimizer == "Muon_fp32":
        out["nesterov"] = bool(out["nesterov"])
    return out


def make_config(pb2, optimizer, case):
    kind = KINDS[optimizer]
    field = pb2.OptimizerConfig.DESCRIPTOR.fields_by_name[kind]
    message = getattr(pb2, field.message_type.name)()
    for key, value in hyperparameters(optimizer, case).items():
        if key in ("k",):
            continue
        fd = message.DESCRIPTOR.fields_by_name.get(key)
        if fd is None:
            if key in ("fsdp_in_use",):
                continue
            raise AssertionError(f"{optimizer}: no field {key} in {message.DESCRIPTOR.name}")
        if fd.type == fd.TYPE_BOOL:
            setattr(message, key, bool(value))
        elif fd.type == fd.TYPE_INT64:
            setattr(message, key, int(value))
        else:
            setattr(message, key, float(value))
    return pb2.SessionConfig(optimizer=pb2.OptimizerConfig(**{kind: message}))


def expect_close(mine, want, rel, what):
    want = np.asarray(want, dtype=np.float32).reshape(mine.shape)
    diff = float(np.max(np.abs(mine.astype(np.float64) - want.astype(np.float64))))
    ref = float(np.max(np.abs(want.astype(np.float64))))
    assert diff <= rel * ref, f"{what}: max|diff| {diff:.3g} > {rel} * {ref:.3g}"


@pytest.mark.parametrize("optimizer,name", CASES, ids=[f"{o}/{n}" for o, n in CASES])
def test_golden_over_grpc(optd_server, optimizer, name):
    pb2, stub = optd_server.pb2, optd_server.stub
    case = DATA[optimizer][name]
    tensors = case["tensors"]
    shapes = {t: tuple(case["shapes"][t]) for t in tensors}
    gradients = DATA["_inputs"]["gradients"]
    tolerance = case["tolerance"]
    params_rel = tolerance["params_rel_inf"]
    scalars_rel = tolerance["scalars_rel"]
    session_id = f"lr-free.{optimizer}.{name}".replace("/", "_")[:128]
    stub.CreateSession(pb2.CreateSessionRequest(
        session_id=session_id, config=make_config(pb2, optimizer, case),
        tensors=[to_tensor(t, np.asarray(case["init"][t], np.float32).reshape(shapes[t]))
                 for t in tensors]), timeout=RPC_TIMEOUT_S)
    try:
        checkpoints = sorted(int(k) for k in case["checkpoints"])
        has_eval = "eval_params" in case["checkpoints"][str(checkpoints[0])] or \
            "averaged_params" in case["checkpoints"][str(checkpoints[0])]
        step = 0
        for until in checkpoints:
            while step < until:
                step += 1
                reply = stub.Step(pb2.StepRequest(
                    session_id=session_id,
                    gradients=[to_tensor(t, np.asarray(gradients[t][step - 1], np.float32)
                                         .reshape(shapes[t])) for t in tensors]),
                    timeout=RPC_TIMEOUT_S)
                assert reply.version == step
                assert reply.point == pb2.PARAMETER_POINT_TRAINING
            at = f"{optimizer}/{name} after step {step}"
            want = case["checkpoints"][str(until)]
            got = {t.name: from_tensor(t) for t in reply.parameters}
            for t in tensors:
                expect_close(got[t], want["params"][t], params_rel, f"{at}: params of {t}")
            if has_eval:
                pulled = stub.Pull(pb2.PullRequest(session_id=session_id,
                                                   point=pb2.PARAMETER_POINT_EVALUATION),
                                   timeout=RPC_TIMEOUT_S)
                assert pulled.point == pb2.PARAMETER_POINT_EVALUATION
                view = "eval_params" if "eval_params" in want else "averaged_params"
                evaluated = {t.name: from_tensor(t) for t in pulled.tensors}
                for t in tensors:
                    expect_close(evaluated[t], want[view][t], params_rel, f"{at}: {view} of {t}")
            state = stub.Pull(pb2.PullRequest(session_id=session_id,
                                              include_optimizer_state=True),
                              timeout=RPC_TIMEOUT_S).optimizer_state
            for scalar, value in want["scalars"].items():
                rel = scalars_rel.get(scalar, 0.0)
                if isinstance(value, list):
                    for i, t in enumerate(tensors):
                        ts = state.tensors[i]
                        mine = ts.step if scalar == "step" else ts.scalars[scalar]
                        assert abs(mine - value[i]) <= rel * abs(value[i]), \
                            f"{at}: {scalar}[{t}] = {mine}, golden {value[i]}"
                else:
                    mine = state.scalars[scalar]
                    assert abs(mine - value) <= rel * abs(value), \
                        f"{at}: {scalar} = {mine}, golden {value}"
        # The estimates: in the last Step reply and in GetSession, the same values.
        session = stub.GetSession(pb2.GetSessionRequest(session_id=session_id),
                                  timeout=RPC_TIMEOUT_S)
        assert dict(session.optimizer_estimates) == dict(reply.optimizer_estimates)
        if optimizer in ("Prodigy", "DAdaptAdam", "DAdaptSGD"):
            assert session.optimizer_estimates["d"] == state.scalars["d"]
            assert session.optimizer_estimates["d"] > 0
        if optimizer == "DoG":
            assert session.optimizer_estimates["eta"] == state.scalars["eta"]
        if not has_eval:
            with pytest.raises(grpc.RpcError) as error:
                stub.Pull(pb2.PullRequest(session_id=session_id,
                                          point=pb2.PARAMETER_POINT_EVALUATION),
                          timeout=RPC_TIMEOUT_S)
            assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "keeps no evaluation point" in error.value.details()
    finally:
        stub.DeleteSession(pb2.DeleteSessionRequest(session_id=session_id),
                           timeout=RPC_TIMEOUT_S)


def test_step_can_return_the_evaluation_point(optd_server):
    """Schedule-Free: the Step reply carries y by default and x on request; a row-sparse step of
    an optimizer that reduces over every element is refused with the reason."""
    pb2, stub = optd_server.pb2, optd_server.stub
    config = pb2.SessionConfig(optimizer=pb2.OptimizerConfig(
        schedulefree_sgd=pb2.ScheduleFreeSgd(lr=0.1)))
    stub.CreateSession(pb2.CreateSessionRequest(
        session_id="lr-free.points", config=config,
        tensors=[to_tensor("w", np.array([1.0, -1.0], np.float32))]), timeout=RPC_TIMEOUT_S)
    grad = [to_tensor("w", np.array([1.0, 2.0], np.float32))]
    y = stub.Step(pb2.StepRequest(session_id="lr-free.points", gradients=grad),
                  timeout=RPC_TIMEOUT_S)
    x = stub.Step(pb2.StepRequest(session_id="lr-free.points", gradients=grad,
                                  return_point=pb2.PARAMETER_POINT_EVALUATION),
                  timeout=RPC_TIMEOUT_S)
    assert y.point == pb2.PARAMETER_POINT_TRAINING
    assert x.point == pb2.PARAMETER_POINT_EVALUATION
    y_now = from_tensor(stub.Pull(pb2.PullRequest(session_id="lr-free.points"),
                                  timeout=RPC_TIMEOUT_S).tensors[0])
    x_now = from_tensor(x.parameters[0])
    assert not np.array_equal(x_now, y_now)
    state = stub.Pull(pb2.PullRequest(session_id="lr-free.points", include_optimizer_state=True),
                      timeout=RPC_TIMEOUT_S).optimizer_state
    z = np.frombuffer(state.tensors[0].arrays[0].data, "<f4")
    np.testing.assert_allclose(x_now, (y_now - 0.1 * z) / 0.9, rtol=1e-5, atol=1e-7)
    with pytest.raises(grpc.RpcError) as error:
        stub.Step(pb2.StepRequest(session_id="lr-free.points", gradients=grad,
                                  return_point=pb2.PARAMETER_POINT_EVALUATION,
                                  return_parameters=pb2.RETURN_PARAMETERS_TOUCHED),
                  timeout=RPC_TIMEOUT_S)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stub.DeleteSession(pb2.DeleteSessionRequest(session_id="lr-free.points"),
                       timeout=RPC_TIMEOUT_S)

    stub.CreateSession(pb2.CreateSessionRequest(
        session_id="lr-free.sparse",
        config=pb2.SessionConfig(optimizer=pb2.OptimizerConfig(prodigy=pb2.Prodigy())),
        tensors=[to_tensor("e", np.ones((4, 2), np.float32))]), timeout=RPC_TIMEOUT_S)
    sparse = to_tensor("e", np.ones((1, 2), np.float32))
    sparse.shape[:] = [4, 2]
    sparse.rows.indices.append(1)
    with pytest.raises(grpc.RpcError) as error:
        stub.Step(pb2.StepRequest(session_id="lr-free.sparse", gradients=[sparse]),
                  timeout=RPC_TIMEOUT_S)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prodigy refuses row-sparse gradients" in error.value.details()
    stub.DeleteSession(pb2.DeleteSessionRequest(session_id="lr-free.sparse"),
                       timeout=RPC_TIMEOUT_S)
    assert math.isfinite(x.learning_rate)
