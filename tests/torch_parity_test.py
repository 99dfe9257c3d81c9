"""Torch parity: the real optd binary against torch 1.13, and numpy oracles for the optimizers torch
lacks (NormalizedGd, Lion, LAMB, LARS).

For every one of the 12 optimizers the server offers, several hyperparameter sets (together touching
every option) run 300 steps of seeded random float32 gradients on a session of four tensors of
different shapes. The same gradients go to torch.optim (single-tensor path, float32) or to a numpy
re-implementation of reference/optimizers.md section 1 (float32 element math, norms in float64, as
the server documents), and every parameter is compared after every step with rtol=1e-4, atol=1e-5
(section 5.2). The gradients never depend on the parameters, so sign- and threshold-based rules
(Lion's sign, RAdam's rho_t > 5) see the same inputs on both sides. Some cases clip the gradients
(Clipping.max_norm, then clip_value: torch clip_grad_norm_ then clip_grad_value_), and every step
checks StepResponse.gradient_norm against the norm of the gradient as sent (before clipping). The
session bookkeeping is checked too: reply.version, the filled-in defaults GetSession reports,
state bytes, Pull, and DeleteSession.

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
    kind: str  # the OptimizerConfig oneof field: sgd, adam, ..., lion, lamb, lars
    hp: dict   # proto field name -> value (NormalizedGd enums by their proto name)
    clip: dict = None  # Clipping fields (max_norm, clip_value); None: no clipping


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
    # Adadelta: rho, eps, weight_decay, maximize; rho = 0 is the lower boundary.
    Case("adadelta-defaults", "adadelta", dict()),
    Case("adadelta-rho-eps-wd", "adadelta", dict(lr=0.5, rho=0.95, eps=1e-4, weight_decay=0.01)),
    Case("adadelta-maximize-rho0-eps", "adadelta", dict(lr=2.0, rho=0.0, eps=1e-3, maximize=True)),
    # RMSprop: alpha, eps (0 included), weight_decay, momentum (lr outside the buffer), centered,
    # maximize.
    Case("rmsprop-defaults", "rmsprop", dict()),
    Case("rmsprop-centered-momentum-wd-maximize", "rmsprop",
         dict(lr=1e-3, alpha=0.9, centered=True, momentum=0.9, weight_decay=0.01, maximize=True)),
    Case("rmsprop-alpha-eps-momentum", "rmsprop", dict(lr=5e-3, alpha=0.5, eps=1e-3, momentum=0.5)),
    Case("rmsprop-centered-eps0-wd", "rmsprop",
         dict(lr=2e-3, alpha=0.95, eps=0.0, centered=True, weight_decay=0.05)),
    # NAdam: betas, eps, weight_decay, momentum_decay (0: a constant mu = beta1 / 2).
    Case("nadam-defaults", "nadam", dict()),
    Case("nadam-betas-eps-wd-momentum-decay", "nadam",
         dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-3, weight_decay=0.01, momentum_decay=0.01)),
    Case("nadam-momentum-decay0", "nadam", dict(lr=1e-3, beta1=0.95, beta2=0.9, momentum_decay=0.0)),
    # RAdam: betas, eps, weight_decay. With beta2 <= 2/3 rho_inf <= 5: never rectified.
    Case("radam-defaults", "radam", dict()),
    Case("radam-betas-eps-wd", "radam",
         dict(lr=0.01, beta1=0.85, beta2=0.99, eps=1e-3, weight_decay=0.01)),
    Case("radam-never-rectified-eps0", "radam", dict(lr=5e-3, beta1=0.9, beta2=0.6, eps=0.0)),
    # Lion (numpy oracle): betas, weight_decay. beta1 = 0 is sign descent, and the all-zero first
    # tensor of step ZERO_FIRST_STEP then gives sign(0) = 0; beta1 = 1 steps by the previous
    # gradients only (the first step moves nothing but the decay).
    Case("lion-defaults", "lion", dict()),
    Case("lion-betas-wd", "lion", dict(lr=3e-3, beta1=0.95, beta2=0.98, weight_decay=0.1)),
    Case("lion-beta1-0-wd0", "lion", dict(lr=1e-2, beta1=0.0, beta2=0.5, weight_decay=0.0)),
    Case("lion-beta1-1-beta2-0", "lion", dict(lr=2e-3, beta1=1.0, beta2=0.0, weight_decay=0.5)),
    # LAMB (numpy oracle): betas, eps (0.5 is large next to sqrt(v_hat)), weight_decay.
    Case("lamb-defaults", "lamb", dict()),
    Case("lamb-betas-eps-wd", "lamb",
         dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-3, weight_decay=0.1)),
    Case("lamb-beta1-0-large-eps", "lamb",
         dict(lr=0.02, beta1=0.0, beta2=0.9, eps=0.5, weight_decay=0.01)),
    # LARS (numpy oracle): momentum (lr inside the buffer), nesterov, weight_decay,
    # trust_coefficient, eps. With weight_decay = 0 the all-zero step has ||u|| = 0: trust 1.
    Case("lars-defaults", "lars", dict()),
    Case("lars-nesterov-wd-tc-eps", "lars",
         dict(lr=0.5, momentum=0.8, weight_decay=0.01, trust_coefficient=0.02, eps=1e-3,
              nesterov=True)),
    Case("lars-no-momentum-large-eps", "lars",
         dict(lr=2.0, momentum=0.0, weight_decay=0.1, trust_coefficient=5e-3, eps=0.5)),
    Case("lars-momentum-tc-wd0", "lars", dict(lr=1.0, momentum=0.95, trust_coefficient=0.01)),
    # Clipping (torch clip_grad_norm_, then clip_grad_value_). Gradient norms are ~1-10 and
    # elements ~0.2-2, so both bounds bite on most steps and the order (norm first) matters.
    Case("sgd-momentum-clip-norm", "sgd", dict(lr=0.05, momentum=0.9), clip=dict(max_norm=1.5)),
    Case("sgd-clip-norm-then-value", "sgd", dict(lr=0.1),
         clip=dict(max_norm=1.0, clip_value=0.2)),
    Case("adam-clip-value", "adam", dict(lr=0.01), clip=dict(clip_value=0.25)),
    Case("adam-clip-norm-then-value", "adam", dict(lr=0.01, weight_decay=0.01),
         clip=dict(max_norm=2.0, clip_value=0.3)),
]

# ---------------------------------------------------------------------------------------------------
# torch oracle.

TORCH_OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
    "rmsprop": torch.optim.RMSprop,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
}

# The optimizers torch lacks: their defaults are the contract's (optd.proto; reference sections
# 1.9-1.12).
NGD_DEFAULTS = dict(lr=1e-2, eps=1e-6, norm="NORM_GLOBAL", guard="GUARD_ADD_EPS")
LION_DEFAULTS = dict(lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=1e-3)
LAMB_DEFAULTS = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0)
LARS_DEFAULTS = dict(lr=1.0, momentum=0.9, weight_decay=0.0, trust_coefficient=1e-3, eps=0.0,
                     nesterov=False)
NUMPY_DEFAULTS = {"normalized_gd": NGD_DEFAULTS, "lion": LION_DEFAULTS, "lamb": LAMB_DEFAULTS,
                  "lars": LARS_DEFAULTS}


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
    """torch.optim, with optional clipping: clip_grad_norm_ (max_norm > 0), then clip_grad_value_
    (clip_value > 0), the order the server documents (optd.proto Clipping)."""

    def __init__(self, kind, hp, initial, clip=None):
        self.params = [torch.tensor(a.copy(), dtype=torch.float32, requires_grad=True)
                       for a in initial]
        self.opt = TORCH_OPTIMIZERS[kind](self.params, **torch_kwargs(kind, hp))
        clip = clip or {}
        self.max_norm = float(clip.get("max_norm", 0.0))
        self.clip_value = float(clip.get("clip_value", 0.0))

    def step(self, grads):
        for p, g in zip(self.params, grads):
            p.grad = torch.from_numpy(g.copy())
        if self.max_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        if self.clip_value > 0:
            torch.nn.utils.clip_grad_value_(self.params, self.clip_value)
        self.opt.step()
        return [p.detach().numpy().copy() for p in self.params]


def _norm64(a):
    """The L2 norm of a float32 array, accumulated in float64."""
    return float(np.sqrt(np.sum(np.square(a.astype(np.float64)))))


class LionOracle:
    """Lion (reference section 1.9), float32 element math with coefficients rounded once from double:
    c = beta1 m + (1 - beta1) g;  p = p (1 - lr wd) - lr sign(c);  m = beta2 m + (1 - beta2) g."""

    def __init__(self, hp, initial):
        cfg = {**LION_DEFAULTS, **hp}
        lr, b1, b2, wd = (float(cfg[k]) for k in ("lr", "beta1", "beta2", "weight_decay"))
        self.wd = wd
        self.decay = np.float32(1.0 - lr * wd)
        self.b1, self.omb1 = np.float32(b1), np.float32(1.0 - b1)
        self.b2, self.omb2 = np.float32(b2), np.float32(1.0 - b2)
        self.neg_lr = np.float32(-lr)
        self.params = [a.copy() for a in initial]
        self.m = [np.zeros_like(a) for a in initial]

    def step(self, grads):
        for i, g in enumerate(grads):
            p, m = self.params[i], self.m[i]
            if self.wd != 0:
                p = p * self.decay
            c = self.b1 * m + self.omb1 * g
            p = p + self.neg_lr * np.sign(c).astype(np.float32)
            self.m[i] = self.b2 * m + self.omb2 * g
            assert p.dtype == np.float32 and self.m[i].dtype == np.float32
            self.params[i] = p
        return [p.copy() for p in self.params]


class LambOracle:
    """LAMB (reference section 1.10), per tensor, t counted per tensor from 1:
    m, v as Adam; u = m_hat / (sqrt(v_hat) + eps) + wd p; trust = ||p|| / ||u|| (1 if either is 0,
    norms in float64, ||p|| before the update); p -= float32(lr trust) u."""

    def __init__(self, hp, initial):
        cfg = {**LAMB_DEFAULTS, **hp}
        self.lr, self.beta1, self.beta2 = float(cfg["lr"]), float(cfg["beta1"]), float(cfg["beta2"])
        self.eps, self.wd = np.float32(cfg["eps"]), float(cfg["weight_decay"])
        self.params = [a.copy() for a in initial]
        self.m = [np.zeros_like(a) for a in initial]
        self.v = [np.zeros_like(a) for a in initial]
        self.t = 0

    def step(self, grads):
        self.t += 1
        b1, omb1 = np.float32(self.beta1), np.float32(1.0 - self.beta1)
        b2, omb2 = np.float32(self.beta2), np.float32(1.0 - self.beta2)
        inv_bc1 = np.float32(1.0 / (1.0 - self.beta1 ** self.t))
        inv_bc2 = np.float32(1.0 / (1.0 - self.beta2 ** self.t))
        for i, g in enumerate(grads):
            p = self.params[i]
            m = b1 * self.m[i] + omb1 * g
            v = b2 * self.v[i] + (omb2 * g) * g
            self.m[i], self.v[i] = m, v
            u = (m * inv_bc1) / (np.sqrt(v * inv_bc2) + self.eps)
            if self.wd != 0:
                u = u + np.float32(self.wd) * p
            p_norm, u_norm = _norm64(p), _norm64(u)
            trust = p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0
            self.params[i] = p + np.float32(-self.lr * trust) * u
            assert self.params[i].dtype == np.float32
        return [p.copy() for p in self.params]


class LarsOracle:
    """LARS (reference section 1.11, optax's lars), per tensor: u = g + wd p;
    trust = tc ||p|| / (||u|| + eps) (1 if ||p|| or ||u|| is 0; norms in float64);
    s = float32(lr trust) u;
    buf = momentum buf + s (zeros at first); p -= nesterov ? s + momentum buf : buf (p -= s if
    momentum is 0)."""

    def __init__(self, hp, initial):
        cfg = {**LARS_DEFAULTS, **hp}
        self.lr, self.momentum = float(cfg["lr"]), float(cfg["momentum"])
        self.wd, self.tc, self.eps = (float(cfg[k]) for k in ("weight_decay", "trust_coefficient",
                                                               "eps"))
        self.nesterov = bool(cfg["nesterov"])
        self.params = [a.copy() for a in initial]
        self.buf = [np.zeros_like(a) for a in initial]

    def step(self, grads):
        mom = np.float32(self.momentum)
        for i, g in enumerate(grads):
            p = self.params[i]
            u = g + np.float32(self.wd) * p if self.wd != 0 else g
            p_norm, u_norm = _norm64(p), _norm64(u)
            trust = self.tc * p_norm / (u_norm + self.eps) if p_norm > 0 and u_norm > 0 else 1.0
            s = np.float32(self.lr * trust) * u
            if self.momentum != 0:
                b = mom * self.buf[i] + s
                self.buf[i] = b
                p = p - (s + mom * b) if self.nesterov else p - b
            else:
                p = p - s
            assert p.dtype == np.float32
            self.params[i] = p
        return [p.copy() for p in self.params]


NUMPY_ORACLES = {"lion": LionOracle, "lamb": LambOracle, "lars": LarsOracle}


def make_oracle(case, initial):
    if case.kind in TORCH_OPTIMIZERS:
        return TorchOracle(case.kind, case.hp, initial, case.clip)
    assert case.clip is None, "clipping cases use torch oracles"
    if case.kind == "normalized_gd":
        return NgdOracle(case.hp, initial)
    return NUMPY_ORACLES[case.kind](case.hp, initial)


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
    # The OptimizerConfig field's message type, by the oneof field name.
    msg_cls = getattr(pb2, pb2.OptimizerConfig.DESCRIPTOR.fields_by_name[case.kind]
                      .message_type.name)
    msg = msg_cls(**fields)
    for key in fields:  # explicit zeros/false must be sent as present
        field = msg.DESCRIPTOR.fields_by_name[key]
        assert not field.has_presence or msg.HasField(key), key
    config = pb2.SessionConfig(optimizer=pb2.OptimizerConfig(**{case.kind: msg}))
    if case.clip:
        config.clipping.CopyFrom(pb2.Clipping(**case.clip))
    return config


def expected_filled_config(case):
    if case.kind in NUMPY_DEFAULTS:
        return {**NUMPY_DEFAULTS[case.kind], **case.hp}
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
    clip = case.clip or {}
    for name in ("max_norm", "clip_value"):
        assert getattr(session.config.clipping, name) == float(clip.get(name, 0.0)), (
            f"{case.id}: config.clipping.{name} = {getattr(session.config.clipping, name)!r}")


def expected_state_bytes_per_parameter(case):
    cfg = expected_filled_config(case)
    if case.kind == "sgd":
        return 4 if cfg["momentum"] != 0 else 0
    if case.kind in ("adam", "adamw"):
        return 12 if cfg["amsgrad"] else 8
    if case.kind == "adagrad":
        return 4
    if case.kind in ("adadelta", "nadam", "radam", "lamb"):
        return 8
    if case.kind == "rmsprop":
        return 4 * (1 + (cfg["momentum"] != 0) + bool(cfg["centered"]))
    if case.kind == "lion":
        return 4
    if case.kind == "lars":
        return 4 if cfg["momentum"] != 0 else 0
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
    oracle = make_oracle(case, initial)

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
        assert session.learning_rate == expected_filled_config(case)["lr"], session.learning_rate
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
                            f"{'torch' if case.kind in TORCH_OPTIMIZERS else 'numpy'} oracle)")
            # The norm of the gradient as sent, before any clipping.
            grad_norm = np.sqrt(sum(float(np.sum(np.square(g.astype(np.float64)))) for g in grads))
            np.testing.assert_allclose(reply.gradient_norm, grad_norm, rtol=1e-6, atol=1e-12,
                                       err_msg=f"{case.id}: step {step}, gradient_norm (pre-clip)")
            np.testing.assert_allclose(reply.learning_rate, expected_filled_config(case)["lr"],
                                       rtol=1e-15, err_msg=f"{case.id}: step {step}, learning_rate")

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
