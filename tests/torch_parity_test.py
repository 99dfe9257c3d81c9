"""Torch parity: the real optd binary against torch 1.13 (and a numpy oracle for NormalizedGd).

For every optimizer the server offers, several hyperparameter sets (together touching every option)
run 300 steps of seeded random float32 gradients on a session of four tensors of different shapes.
The same gradients go to torch.optim (single-tensor path, float32) and every parameter is compared
after every step with rtol=1e-4, atol=1e-5 (reference/optimizers.md section 5.2). The session
bookkeeping is checked too: reply.version, the filled-in defaults GetSession reports, Pull, and
DeleteSession.

Run: /usr/bin/python3 -m pytest -q tests/torch_parity_test.py   (OPTD_BUILD_DIR picks the build)
"""

import dataclasses
import inspect
import zlib

import grpc
import numpy as np
import pytest
import torch

from optd_testing import from_tensor, to_tensor

torch.set_num_threads(1)

STEPS = 300
RTOL = 1e-4
ATOL = 1e-5
RPC_TIMEOUT_S = 30.0
# Steps with special gradients (1-based): every gradient zero, then only the first tensor's zero.
# torch does not skip zero gradients (moments decay, counters advance); NormalizedGd must make a
# zero update, also with eps = 0.
ZERO_ALL_STEP = 100
ZERO_FIRST_STEP = 200

# name, shape: creation order. Different ranks and sizes; 26 elements in total.
TENSORS = [
    ("dense/kernel", (3, 4)),
    ("dense/bias", (5,)),
    ("conv.block:0", (2, 2, 2)),
    ("scale", (1,)),
]


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    kind: str  # the OptimizerConfig oneof field: sgd, adam, adamw, adagrad, normalized_gd
    hp: dict   # proto field name -> value (NormalizedGd enums by their proto name)


CASES = [
    # SGD: lr is required (no default).
    Case("sgd-defaults", "sgd", dict(lr=0.01)),
    Case("sgd-momentum-dampening-wd", "sgd",
         dict(lr=0.03, momentum=0.9, dampening=0.25, weight_decay=0.01)),
    Case("sgd-nesterov-wd", "sgd",
         dict(lr=0.02, momentum=0.8, dampening=0.0, nesterov=True, weight_decay=1e-3)),
    Case("sgd-maximize-momentum", "sgd", dict(lr=0.01, momentum=0.5, maximize=True)),
    # Adam. eps = 0.05 is large next to sqrt(v_hat), so its placement matters.
    Case("adam-defaults", "adam", dict()),
    Case("adam-amsgrad-wd", "adam", dict(lr=0.01, amsgrad=True, weight_decay=0.05)),
    Case("adam-maximize-betas-eps", "adam",
         dict(lr=0.005, beta1=0.8, beta2=0.99, eps=0.05, maximize=True)),
    # AdamW. An explicit weight_decay = 0 must not be replaced by the 1e-2 default.
    Case("adamw-defaults", "adamw", dict()),
    Case("adamw-wd-betas", "adamw", dict(lr=0.01, weight_decay=0.1, beta1=0.85, beta2=0.95)),
    Case("adamw-amsgrad-maximize-eps-wd0", "adamw",
         dict(lr=0.003, amsgrad=True, maximize=True, eps=1e-3, weight_decay=0.0)),
    # Adagrad. eps = 0.1 makes inside/outside-the-sqrt placement visible.
    Case("adagrad-defaults", "adagrad", dict()),
    Case("adagrad-lrdecay-initacc-wd-eps", "adagrad",
         dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.5, weight_decay=0.02, eps=0.1)),
    Case("adagrad-maximize-eps0", "adagrad",
         dict(lr=0.05, maximize=True, eps=0.0, initial_accumulator_value=0.1)),
    # NormalizedGd. Gradient norms are ~1-10 (global) and ~0.2-7 (per tensor), so the max guards
    # below switch between ||g|| and eps during the run.
    Case("ngd-defaults", "normalized_gd", dict()),
    Case("ngd-per-tensor", "normalized_gd", dict(lr=0.05, eps=1e-3, norm="NORM_PER_TENSOR")),
    Case("ngd-global-max-guard", "normalized_gd", dict(lr=0.03, eps=5.0, guard="GUARD_MAX_EPS")),
    Case("ngd-per-tensor-max-guard", "normalized_gd",
         dict(lr=0.02, eps=2.0, norm="NORM_PER_TENSOR", guard="GUARD_MAX_EPS")),
    Case("ngd-global-eps0", "normalized_gd", dict(lr=0.02, eps=0.0)),
    Case("ngd-per-tensor-max-guard-eps0", "normalized_gd",
         dict(lr=0.02, eps=0.0, norm="NORM_PER_TENSOR", guard="GUARD_MAX_EPS")),
]

# ---------------------------------------------------------------------------------------------------
# torch oracle.

TORCH_OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
}

# NormalizedGd is not in torch; its defaults are the contract's (optd.proto, reference section 1.12).
NGD_DEFAULTS = dict(lr=1e-2, eps=1e-6, norm="NORM_GLOBAL", guard="GUARD_ADD_EPS")


def torch_defaults(kind):
    """torch 1.13's own defaults for the optimizer, by proto field name (SGD's lr has none)."""
    params = inspect.signature(TORCH_OPTIMIZERS[kind]).parameters
    out = {}
    for name, p in params.items():
        if p.default is inspect.Parameter.empty or name in ("params", "foreach", "capturable",
                                                            "differentiable", "fused"):
            continue
        if name == "betas":
            out["beta1"], out["beta2"] = p.default
        elif isinstance(p.default, (bool, int, float)):
            out[name] = p.default
    return out


def torch_kwargs(kind, hp):
    kw = dict(hp)
    if "beta1" in kw or "beta2" in kw:
        defaults = torch_defaults(kind)
        kw["betas"] = (kw.pop("beta1", defaults["beta1"]), kw.pop("beta2", defaults["beta2"]))
    kw["foreach"] = False  # the single-tensor path, the reference's oracle
    return kw


class TorchOracle:
    def __init__(self, kind, hp, initial):
        self.params = [torch.tensor(a.copy(), dtype=torch.float32, requires_grad=True)
                       for a in initial]
        self.opt = TORCH_OPTIMIZERS[kind](self.params, **torch_kwargs(kind, hp))

    def step(self, grads):
        for p, g in zip(self.params, grads):
            p.grad = torch.from_numpy(g.copy())
        self.opt.step()
        return [p.detach().numpy().copy() for p in self.params]


class NgdOracle:
    """p -= float32(lr / denom) * g, the norm accumulated in float64; denom = ||g|| + eps (add guard)
    or max(||g||, eps) (max guard); a zero denominator (zero gradient, eps = 0) means no update."""

    def __init__(self, hp, initial):
        cfg = {**NGD_DEFAULTS, **hp}
        self.lr, self.eps = float(cfg["lr"]), float(cfg["eps"])
        self.per_tensor = cfg["norm"] == "NORM_PER_TENSOR"
        self.max_guard = cfg["guard"] == "GUARD_MAX_EPS"
        self.params = [a.copy() for a in initial]

    def _coef(self, norm):
        denom = max(norm, self.eps) if self.max_guard else norm + self.eps
        return np.float32(0.0) if denom == 0.0 else np.float32(self.lr / denom)

    def step(self, grads):
        sq = [float(np.sum(np.square(g.astype(np.float64)))) for g in grads]
        if self.per_tensor:
            coefs = [self._coef(np.sqrt(s)) for s in sq]
        else:
            coefs = [self._coef(np.sqrt(sum(sq)))] * len(grads)
        for i, (c, g) in enumerate(zip(coefs, grads)):
            if c != 0:
                self.params[i] = self.params[i] - c * g  # float32 arithmetic
            assert self.params[i].dtype == np.float32
        return [p.copy() for p in self.params]


# ---------------------------------------------------------------------------------------------------
# Helpers.

def make_config(pb2, case):
    fields = dict(case.hp)
    if case.kind == "normalized_gd":
        for key, enum in (("norm", pb2.NormalizedGd.Norm), ("guard", pb2.NormalizedGd.Guard)):
            if key in fields:
                fields[key] = enum.Value(fields[key])
    msg_cls = {"sgd": pb2.Sgd, "adam": pb2.Adam, "adamw": pb2.AdamW, "adagrad": pb2.Adagrad,
               "normalized_gd": pb2.NormalizedGd}[case.kind]
    msg = msg_cls(**fields)
    for key in fields:  # explicit zeros/false must be sent as present
        field = msg.DESCRIPTOR.fields_by_name[key]
        assert not field.has_presence or msg.HasField(key), key
    return pb2.SessionConfig(optimizer=pb2.OptimizerConfig(**{case.kind: msg}))


def expected_filled_config(case):
    if case.kind == "normalized_gd":
        return {**NGD_DEFAULTS, **case.hp}
    return {**torch_defaults(case.kind), **case.hp}


def check_session_config(pb2, case, session):
    """GetSession must report every hyperparameter, defaults filled in with torch's own values."""
    assert session.config.optimizer.WhichOneof("kind") == case.kind, session.config
    msg = getattr(session.config.optimizer, case.kind)
    expected = expected_filled_config(case)
    for field in msg.DESCRIPTOR.fields:
        name = field.name
        if field.has_presence:
            assert msg.HasField(name), (
                f"{case.id}: GetSession config leaves {case.kind}.{name} unset; every default must "
                f"be filled in\n{session.config}")
        if name not in expected:
            continue
        want = expected[name]
        if field.enum_type is not None:
            got = field.enum_type.values_by_number[getattr(msg, name)].name
            assert got == want, f"{case.id}: {case.kind}.{name} = {got}, expected {want}"
        elif field.type == field.TYPE_BOOL:
            assert getattr(msg, name) is bool(want), (
                f"{case.id}: {case.kind}.{name} = {getattr(msg, name)}, expected {bool(want)}")
        else:
            assert getattr(msg, name) == float(want), (
                f"{case.id}: {case.kind}.{name} = {getattr(msg, name)!r}, expected {float(want)!r}")
    missing = set(expected) - {f.name for f in msg.DESCRIPTOR.fields}
    assert not missing, f"test knows fields the proto lacks: {missing}"


def expected_state_bytes_per_parameter(case):
    cfg = expected_filled_config(case)
    if case.kind == "sgd":
        return 4 if cfg["momentum"] != 0 else 0
    if case.kind in ("adam", "adamw"):
        return 12 if cfg["amsgrad"] else 8
    if case.kind == "adagrad":
        return 4
    return 0


def case_rng(case):
    return np.random.default_rng(zlib.crc32(case.id.encode()))


def draw_gradients(rng, step):
    # A per-step scale in [0.2, 2] lets second moments fall (AMSGrad's max matters) and moves the
    # NormalizedGd norms across eps.
    scale = rng.uniform(0.2, 2.0)
    grads = [(rng.standard_normal(shape) * scale).astype(np.float32) for _, shape in TENSORS]
    if step == ZERO_ALL_STEP:
        grads = [np.zeros_like(g) for g in grads]
    elif step == ZERO_FIRST_STEP:
        grads[0] = np.zeros_like(grads[0])
    return grads


# ---------------------------------------------------------------------------------------------------
# The test.

@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_torch_parity(optd_server, case):
    pb2 = optd_server.pb2
    stub = optd_server.stub
    rng = case_rng(case)
    names = [name for name, _ in TENSORS]
    shapes = [shape for _, shape in TENSORS]
    num_parameters = sum(int(np.prod(s)) for s in shapes)
    initial = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    oracle = (NgdOracle(case.hp, initial) if case.kind == "normalized_gd"
              else TorchOracle(case.kind, case.hp, initial))

    session_id = f"torch-parity.{case.id}"
    created = stub.CreateSession(pb2.CreateSessionRequest(
        session_id=session_id, config=make_config(pb2, case),
        tensors=[to_tensor(n, a) for n, a in zip(names, initial)]), timeout=RPC_TIMEOUT_S)
    deleted = False
    try:
        assert created.session_id == session_id
        assert created.version == 0

        session = stub.GetSession(pb2.GetSessionRequest(session_id=session_id),
                                  timeout=RPC_TIMEOUT_S)
        assert session.version == 0
        check_session_config(pb2, case, session)
        assert [t.name for t in session.tensors] == names
        assert [tuple(t.shape) for t in session.tensors] == shapes
        assert [t.num_elements for t in session.tensors] == [int(np.prod(s)) for s in shapes]
        assert session.num_parameters == num_parameters
        assert session.parameter_bytes == 4 * num_parameters
        assert session.state_bytes_per_parameter == expected_state_bytes_per_parameter(case)

        pulled = stub.Pull(pb2.PullRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
        assert pulled.version == 0
        assert [t.name for t in pulled.tensors] == names
        for t, a in zip(pulled.tensors, initial):
            np.testing.assert_array_equal(from_tensor(t), a, err_msg=f"initial {t.name}")

        got = None
        for step in range(1, STEPS + 1):
            grads = draw_gradients(rng, step)
            order = rng.permutation(len(TENSORS))  # the contract allows gradients in any order
            reply = stub.Step(pb2.StepRequest(
                session_id=session_id, worker_id="parity",
                gradients=[to_tensor(names[i], grads[i]) for i in order]), timeout=RPC_TIMEOUT_S)
            want = oracle.step(grads)

            assert reply.version == step, f"{case.id}: step {step} replied version {reply.version}"
            assert [t.name for t in reply.parameters] == names, f"{case.id}: step {step}"
            got = [from_tensor(t) for t in reply.parameters]
            for name, shape, g_arr, w_arr in zip(names, shapes, got, want):
                assert g_arr.shape == shape, f"{case.id}: step {step}, {name}: shape {g_arr.shape}"
                np.testing.assert_allclose(
                    g_arr, w_arr, rtol=RTOL, atol=ATOL,
                    err_msg=f"{case.id}: step {step}, tensor {name} (server vs "
                            f"{'numpy' if case.kind == 'normalized_gd' else 'torch'} oracle)")
            grad_norm = np.sqrt(sum(float(np.sum(np.square(g.astype(np.float64)))) for g in grads))
            np.testing.assert_allclose(reply.gradient_norm, grad_norm, rtol=1e-6, atol=1e-12,
                                       err_msg=f"{case.id}: step {step}, gradient_norm")

        pulled = stub.Pull(pb2.PullRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
        assert pulled.version == STEPS
        for t, a in zip(pulled.tensors, got):
            np.testing.assert_array_equal(from_tensor(t), a, err_msg=f"final Pull of {t.name}")

        session = stub.GetSession(pb2.GetSessionRequest(session_id=session_id),
                                  timeout=RPC_TIMEOUT_S)
        assert session.version == STEPS
        check_session_config(pb2, case, session)
        assert session.optimizer_state_bytes == (
            expected_state_bytes_per_parameter(case) * num_parameters)

        stub.DeleteSession(pb2.DeleteSessionRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
        deleted = True
        with pytest.raises(grpc.RpcError) as err:
            stub.GetSession(pb2.GetSessionRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        if not deleted:  # leave the shared server clean for the next case
            try:
                stub.DeleteSession(pb2.DeleteSessionRequest(session_id=session_id),
                                   timeout=RPC_TIMEOUT_S)
            except grpc.RpcError:
                pass
