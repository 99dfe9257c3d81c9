"""Schedule parity: the learning-rate schedules of the real optd binary against torch 1.13's
lr_scheduler (and numpy references of the spec's formulas for the schedules torch lacks).

Every case creates an SGD session (lr = the base lr; some with momentum, which torch keeps outside
the buffer, so the whole lr history shows in the parameters) with a schedule, and streams 1000 steps
of seeded random gradients (StreamSteps, return_parameters NONE except every CHECK_EVERY-th step),
reporting a loss with each step for ReduceOnPlateau. torch does the same: SGD (foreach=False) with
the matching scheduler, `optimizer.step(); scheduler.step()` (reference/optimizers.md section 3: the
k-th applied step, k = 0 first, uses lr(k)). Checked:

* StepResponse.learning_rate of step k against the lr torch's k-th optimizer.step() used (doubles:
  rtol 1e-9; torch's recursive forms differ from closed forms by ~1e-13);
* the parameters every CHECK_EVERY steps and at the end (Pull) against torch (rtol 1e-4,
  atol 1e-5);
* Session.learning_rate (the lr the next step will use) before the first and after the last step,
  and GetSession's schedule with every default filled in.

Schedules torch has: constant, StepLR, MultiStepLR (unsorted, repeated and 0 milestones),
ExponentialLR, CosineAnnealingLR (beyond T_max, where torch's cosine rises again), LinearLR,
OneCycleLR (cos, linear, three_phase; run a few steps past total_steps, where the server documents
that the lr stays at its final value and torch refuses to step), ReduceLROnPlateau (min/max,
rel/abs, cooldown, min_lr, eps, steps without a loss). Schedules torch lacks (warmup_cosine:
optax's warmup_cosine_decay_schedule; inverse_sqrt: Hugging Face's get_inverse_sqrt_schedule;
linear_warmup from 0, which torch 1.13 cannot step): numpy references, with torch SGD stepping at
the reference lrs.

Run: /usr/bin/python3 -m pytest -q tests/schedule_parity_test.py   (OPTD_BUILD_DIR picks the build)
"""

import dataclasses
import math
import zlib
from typing import Callable, Optional

import grpc
import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler

from optd_testing import from_tensor, to_tensor

torch.set_num_threads(1)

STEPS = 1000
CHECK_EVERY = 100
ONE_CYCLE_EXTRA_STEPS = 25  # steps past total_steps: the lr must stay at lr(total_steps - 1)
RTOL = 1e-4
ATOL = 1e-5
LR_RTOL = 1e-9
RPC_TIMEOUT_S = 60.0

TENSORS = [("w", (3,)), ("layer/b", (2, 2))]


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    kind: str                 # the LrSchedule oneof field
    fields: dict              # its fields (enums by their proto name)
    base_lr: float            # the SGD lr (OneCycle ignores it)
    torch_sched: Optional[Callable] = None  # optimizer -> torch scheduler
    ref: Optional[Callable] = None          # k -> lr, a numpy reference (schedules torch lacks)
    momentum: float = 0.0
    steps: int = STEPS
    losses: Optional[str] = None  # "min" / "max" / "max-gaps": the loss sequence (plateau)
    hold_after: Optional[int] = None  # OneCycle: from this step on torch cannot step; lr is held


# ---------------------------------------------------------------------------------------------------
# numpy references of reference/optimizers.md section 3.2's formulas (and LinearLR's closed form).

def warmup_cosine_ref(base, init_factor=0.0, warmup_steps=0, decay_steps=None, end_factor=0.0,
                      exponent=1.0):
    """optax warmup_cosine_decay_schedule with peak = base, init = init_factor * base,
    end = end_factor * base; decay_steps includes the warmup."""
    init, peak, end = init_factor * base, base, end_factor * base
    w, d = warmup_steps, decay_steps

    def lr(k):
        if k < w:
            return init + (peak - init) * k / w
        c, t = min(k - w, d - w), d - w
        cosd = 0.5 * (1 + math.cos(math.pi * c / t))
        alpha = end / peak if peak != 0 else 0.0
        return peak * ((1 - alpha) * cosd ** exponent + alpha)
    return lr


def inverse_sqrt_ref(base, warmup_steps=0, timescale=0):
    """Hugging Face get_inverse_sqrt_schedule: the timescale defaults to warmup_steps, or 10000."""
    w = warmup_steps
    t = timescale or w or 10000

    def lr(k):
        if k < w:
            return base * (k / max(1, w))
        return base * (1 / math.sqrt((k + t - w) / t))
    return lr


def linear_ref(base, start_factor, end_factor, total_iters):
    """torch LinearLR's closed form (section 3.1)."""
    def lr(k):
        factor = start_factor + (end_factor - start_factor) * min(total_iters, k) / total_iters
        return base * factor
    return lr


def test_reference_formulas_match_spec_examples():
    # reference/optimizers.md section 3.2 [computed]: init 0, peak 1, W 4, D 10, end 0.1.
    want = [0, .25, .5, .75, 1, .9397, .775, .55, .325, .1603, .1, .1, .1]
    ref = warmup_cosine_ref(1.0, 0.0, 4, 10, 0.1)
    np.testing.assert_allclose([ref(k) for k in range(len(want))], want, atol=5e-5)
    # Hugging Face: lambda = s / W during warmup, 1 / sqrt((s + T - W) / T) after; lr(W) = base.
    ref = inverse_sqrt_ref(2.0, 4)
    np.testing.assert_allclose([ref(k) for k in (0, 2, 4, 12)], [0, 1, 2, 2 / math.sqrt(3)])
    assert inverse_sqrt_ref(1.0)(30000) == pytest.approx(0.5)  # timescale 10000


# ---------------------------------------------------------------------------------------------------
# The cases: every schedule with at least two parameter sets.

def _one_cycle(**kw):
    return lambda opt: lr_scheduler.OneCycleLR(opt, cycle_momentum=False, **kw)


def _plateau(**kw):
    return lambda opt: lr_scheduler.ReduceLROnPlateau(opt, **kw)


CASES = [
    Case("constant", "constant", {}, 0.05, torch_sched=None),
    Case("constant-momentum", "constant", {}, 0.02, momentum=0.9),
    # StepLR
    Case("step-size100-default-gamma", "step", dict(step_size=100), 0.1,
         lambda o: lr_scheduler.StepLR(o, step_size=100)),
    Case("step-size7-gamma0.97-momentum", "step", dict(step_size=7, gamma=0.97), 0.05,
         lambda o: lr_scheduler.StepLR(o, step_size=7, gamma=0.97), momentum=0.5),
    # MultiStepLR: repeated milestones count twice; 0 applies at once; beyond the run never.
    Case("multi-step-repeated", "multi_step", dict(milestones=[100, 300, 300, 650]), 0.1,
         lambda o: lr_scheduler.MultiStepLR(o, milestones=[100, 300, 300, 650])),
    Case("multi-step-unsorted-zero-gamma0.8-momentum", "multi_step",
         dict(milestones=[999, 5, 0, 5, 2000], gamma=0.8), 0.05,
         lambda o: lr_scheduler.MultiStepLR(o, milestones=[999, 5, 0, 5, 2000], gamma=0.8),
         momentum=0.5),
    # ExponentialLR
    Case("exponential-0.995", "exponential", dict(gamma=0.995), 0.1,
         lambda o: lr_scheduler.ExponentialLR(o, gamma=0.995)),
    Case("exponential-0.9-momentum", "exponential", dict(gamma=0.9), 0.05,
         lambda o: lr_scheduler.ExponentialLR(o, gamma=0.9), momentum=0.5),
    # CosineAnnealingLR: 1000 steps run through several periods of 2 * T_max.
    Case("cosine-tmax300", "cosine_annealing", dict(t_max=300), 0.1,
         lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=300)),
    Case("cosine-tmax250-eta-min-momentum", "cosine_annealing", dict(t_max=250, eta_min=0.002),
         0.02, lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=250, eta_min=0.002), momentum=0.5),
    Case("cosine-tmax400-eta-min-above-base", "cosine_annealing", dict(t_max=400, eta_min=0.05),
         0.01, lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=400, eta_min=0.05)),
    # LinearLR (linear_warmup)
    Case("linear-defaults", "linear_warmup", {}, 0.1, lambda o: lr_scheduler.LinearLR(o)),
    Case("linear-warmup-momentum", "linear_warmup",
         dict(start_factor=0.1, end_factor=0.6, total_iters=300), 0.05,
         lambda o: lr_scheduler.LinearLR(o, start_factor=0.1, end_factor=0.6, total_iters=300),
         momentum=0.5),
    Case("linear-decay", "linear_warmup", dict(start_factor=1.0, end_factor=0.05, total_iters=700),
         0.05, lambda o: lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=0.05,
                                               total_iters=700)),
    # Warmup from 0: torch 1.13 divides by zero at its second step; the closed form instead.
    Case("linear-from-zero", "linear_warmup", dict(start_factor=0.0, total_iters=50), 0.05,
         ref=linear_ref(0.05, 0.0, 1.0, 50)),
    # OneCycleLR (the SGD lr is ignored: 0.5 here).
    Case("one-cycle-cos-defaults", "one_cycle", dict(max_lr=0.1, total_steps=1000), 0.5,
         _one_cycle(max_lr=0.1, total_steps=1000), steps=1000 + ONE_CYCLE_EXTRA_STEPS,
         hold_after=1000),
    Case("one-cycle-cos-options-momentum", "one_cycle",
         dict(max_lr=0.2, total_steps=357, pct_start=0.25, div_factor=10.0,
              final_div_factor=100.0), 0.5,
         _one_cycle(max_lr=0.2, total_steps=357, pct_start=0.25, div_factor=10.0,
                    final_div_factor=100.0),
         momentum=0.5, steps=357 + ONE_CYCLE_EXTRA_STEPS, hold_after=357),
    Case("one-cycle-linear", "one_cycle",
         dict(max_lr=0.1, total_steps=1000, anneal_strategy="ANNEAL_LINEAR"), 0.5,
         _one_cycle(max_lr=0.1, total_steps=1000, anneal_strategy="linear"),
         steps=1000 + ONE_CYCLE_EXTRA_STEPS, hold_after=1000),
    Case("one-cycle-linear-options", "one_cycle",
         dict(max_lr=0.05, total_steps=500, pct_start=0.4, anneal_strategy="ANNEAL_LINEAR",
              div_factor=5.0, final_div_factor=1000.0), 0.5,
         _one_cycle(max_lr=0.05, total_steps=500, pct_start=0.4, anneal_strategy="linear",
                    div_factor=5.0, final_div_factor=1000.0),
         steps=500 + ONE_CYCLE_EXTRA_STEPS, hold_after=500),
    Case("one-cycle-three-phase-cos", "one_cycle",
         dict(max_lr=0.1, total_steps=1000, three_phase=True), 0.5,
         _one_cycle(max_lr=0.1, total_steps=1000, three_phase=True),
         steps=1000 + ONE_CYCLE_EXTRA_STEPS, hold_after=1000),
    Case("one-cycle-three-phase-linear-momentum", "one_cycle",
         dict(max_lr=0.08, total_steps=600, pct_start=0.2, anneal_strategy="ANNEAL_LINEAR",
              div_factor=20.0, final_div_factor=50.0, three_phase=True), 0.5,
         _one_cycle(max_lr=0.08, total_steps=600, pct_start=0.2, anneal_strategy="linear",
                    div_factor=20.0, final_div_factor=50.0, three_phase=True),
         momentum=0.5, steps=600 + ONE_CYCLE_EXTRA_STEPS, hold_after=600),
    # ReduceLROnPlateau, driven by the reported losses.
    Case("plateau-defaults", "reduce_on_plateau", {}, 0.1, _plateau(), losses="min"),
    Case("plateau-min-rel-cooldown-min-lr", "reduce_on_plateau",
         dict(factor=0.5, patience=5, threshold=1e-3, cooldown=3, min_lr=5e-5), 0.05,
         _plateau(factor=0.5, patience=5, threshold=1e-3, cooldown=3, min_lr=5e-5), losses="min"),
    Case("plateau-max-abs-eps-gaps-momentum", "reduce_on_plateau",
         dict(mode="MODE_MAX", factor=0.3, patience=8, threshold=0.05,
              threshold_mode="THRESHOLD_ABS", eps=1e-4), 0.02,
         _plateau(mode="max", factor=0.3, patience=8, threshold=0.05, threshold_mode="abs",
                  eps=1e-4), momentum=0.5, losses="max-gaps"),
    Case("plateau-max-rel-cooldown", "reduce_on_plateau",
         dict(mode="MODE_MAX", factor=0.7, patience=3, threshold=2e-3, cooldown=2), 0.05,
         _plateau(mode="max", factor=0.7, patience=3, threshold=2e-3, cooldown=2), losses="max"),
    Case("plateau-min-abs-patience0", "reduce_on_plateau",
         dict(factor=0.9, patience=0, threshold=0.01, threshold_mode="THRESHOLD_ABS", cooldown=1,
              min_lr=1e-3, eps=0.0), 0.05,
         _plateau(factor=0.9, patience=0, threshold=0.01, threshold_mode="abs", cooldown=1,
                  min_lr=1e-3, eps=0.0), losses="min-gaps"),
    # warmup_cosine (optax), numpy reference.
    Case("warmup-cosine-warmup-end", "warmup_cosine",
         dict(warmup_steps=100, decay_steps=800, end_factor=0.1), 0.1,
         ref=warmup_cosine_ref(0.1, 0.0, 100, 800, 0.1)),
    Case("warmup-cosine-init-exponent-momentum", "warmup_cosine",
         dict(init_factor=0.2, warmup_steps=40, decay_steps=1000, exponent=2.0), 0.05,
         ref=warmup_cosine_ref(0.05, 0.2, 40, 1000, 0.0, 2.0), momentum=0.5),
    Case("warmup-cosine-no-warmup", "warmup_cosine", dict(decay_steps=600), 0.05,
         ref=warmup_cosine_ref(0.05, decay_steps=600)),
    # inverse_sqrt (Hugging Face), numpy reference.
    Case("inverse-sqrt-warmup", "inverse_sqrt", dict(warmup_steps=100), 0.1,
         ref=inverse_sqrt_ref(0.1, 100)),
    Case("inverse-sqrt-defaults", "inverse_sqrt", {}, 0.05, ref=inverse_sqrt_ref(0.05)),
    Case("inverse-sqrt-timescale-momentum", "inverse_sqrt", dict(warmup_steps=50, timescale=300),
         0.05, ref=inverse_sqrt_ref(0.05, 50, 300), momentum=0.5),
]

# Every optional field with its default (optd.proto, torch 1.13), for the filled-in config check.
SCHEDULE_DEFAULTS = {
    "constant": {},
    "step": dict(gamma=0.1),
    "multi_step": dict(gamma=0.1),
    "exponential": {},
    "cosine_annealing": dict(eta_min=0.0),
    "linear_warmup": dict(start_factor=1 / 3, end_factor=1.0, total_iters=5),
    "warmup_cosine": dict(init_factor=0.0, warmup_steps=0, end_factor=0.0, exponent=1.0),
    "inverse_sqrt": dict(warmup_steps=0, timescale=0),
    "one_cycle": dict(pct_start=0.3, anneal_strategy="ANNEAL_COS", div_factor=25.0,
                      final_div_factor=1e4, three_phase=False),
    "reduce_on_plateau": dict(mode="MODE_MIN", factor=0.1, patience=10, threshold=1e-4,
                              threshold_mode="THRESHOLD_REL", cooldown=0, min_lr=0.0, eps=1e-8),
}


# ---------------------------------------------------------------------------------------------------
# Inputs.

def case_rng(case):
    return np.random.default_rng(zlib.crc32(case.id.encode()))


def make_losses(kind, steps, rng):
    """A loss per step (None: the step reports none) with improvements, exact plateaus,
    improvements below the thresholds, worsening noise and single jumps, in blocks of random
    length. "max": an increasing score instead; "-gaps": every 5th step without a loss."""
    if kind is None:
        return [None] * steps
    losses = []
    level = 10.0
    while len(losses) < steps:
        block = rng.choice(["improve", "flat", "tiny", "noisy", "jump"])
        for _ in range(int(rng.integers(4, 40))):
            if block == "improve":
                level *= 0.97
                value = level
            elif block == "flat":
                value = level
            elif block == "tiny":  # below every threshold used (rel 1e-4 .. 2e-3, abs 0.01 .. 0.05)
                level *= 1 - 1e-5
                value = level
            elif block == "noisy":
                value = level * (1 + rng.uniform(0.0, 0.05))
            else:
                level *= 0.8
                value = level
                block = "flat"
            losses.append(float(value))
    losses = losses[:steps]
    if kind.startswith("max"):
        losses = [100.0 / v for v in losses]
    if kind.endswith("-gaps"):
        losses = [None if k % 5 == 4 else v for k, v in enumerate(losses)]
    return losses


# ---------------------------------------------------------------------------------------------------
# torch.

def run_torch(case, initial, grads, losses):
    """Returns (lrs: the lr of each optimizer step, next_lr, {step: params after it})."""
    params = [torch.tensor(a.copy(), dtype=torch.float32, requires_grad=True) for a in initial]
    opt = torch.optim.SGD(params, lr=case.base_lr, momentum=case.momentum, foreach=False)
    sched = case.torch_sched(opt) if case.torch_sched is not None else None
    plateau = isinstance(sched, lr_scheduler.ReduceLROnPlateau)
    lrs, checkpoints = [], {}
    for k in range(case.steps):
        if case.ref is not None:
            opt.param_groups[0]["lr"] = case.ref(k)
        elif case.hold_after is not None and k >= case.hold_after:
            opt.param_groups[0]["lr"] = lrs[case.hold_after - 1]
        lrs.append(opt.param_groups[0]["lr"])
        for p, g in zip(params, grads[k]):
            p.grad = torch.from_numpy(g.copy())
        opt.step()
        if plateau:
            if losses[k] is not None:
                sched.step(losses[k])
        elif sched is not None and (case.hold_after is None or k + 1 < case.hold_after):
            sched.step()
        if is_checkpoint(case, k):
            checkpoints[k + 1] = [p.detach().numpy().copy() for p in params]
    if case.ref is not None:
        next_lr = case.ref(case.steps)
    elif case.hold_after is not None:
        next_lr = lrs[case.hold_after - 1]
    else:
        next_lr = opt.param_groups[0]["lr"]
    return lrs, next_lr, checkpoints


def is_checkpoint(case, k):
    return (k + 1) % CHECK_EVERY == 0 or k + 1 == case.steps


# ---------------------------------------------------------------------------------------------------
# Checks.

def assert_lrs_match(case, got, want, what="StepResponse.learning_rate"):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    atol = 1e-12 * float(np.max(np.abs(want)))
    bad = np.flatnonzero(~(np.abs(got - want) <= atol + LR_RTOL * np.abs(want)))
    if bad.size:
        k = int(bad[0])
        lo, hi = max(0, k - 2), min(len(want), k + 3)
        raise AssertionError(
            f"{case.id}: {what} differs at {bad.size} steps; first at step k={k}: server "
            f"{got[k]!r}, expected {want[k]!r}\n  k={lo}..{hi - 1}: server {got[lo:hi].tolist()}\n"
            f"  expected {want[lo:hi].tolist()}")


def check_schedule_config(pb2, case, session):
    sched = session.config.schedule
    assert sched.WhichOneof("kind") == case.kind, f"{case.id}: {sched}"
    msg = getattr(sched, case.kind)
    expected = {**SCHEDULE_DEFAULTS[case.kind], **case.fields}
    for field in msg.DESCRIPTOR.fields:
        name = field.name
        if field.has_presence:
            assert msg.HasField(name), (
                f"{case.id}: GetSession leaves schedule.{case.kind}.{name} unset; every default "
                f"must be filled in\n{session.config}")
        if name not in expected:
            continue
        want, got = expected[name], getattr(msg, name)
        if field.enum_type is not None:
            got = field.enum_type.values_by_number[got].name
        elif field.label == field.LABEL_REPEATED:
            got, want = list(got), list(want)
        assert got == want, f"{case.id}: schedule.{case.kind}.{name} = {got!r}, expected {want!r}"


def make_schedule(pb2, case):
    fields = dict(case.fields)
    msg_cls = getattr(pb2.LrSchedule, pb2.LrSchedule.DESCRIPTOR.fields_by_name[case.kind]
                      .message_type.name)
    for field in msg_cls.DESCRIPTOR.fields:
        if field.enum_type is not None and field.name in fields:
            fields[field.name] = field.enum_type.values_by_name[fields[field.name]].number
    msg = msg_cls(**fields)
    for key in fields:  # explicit zeros/false must be sent as present
        field = msg.DESCRIPTOR.fields_by_name[key]
        assert not field.has_presence or msg.HasField(key), key
    return pb2.LrSchedule(**{case.kind: msg})


# ---------------------------------------------------------------------------------------------------
# The test.

@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_schedule_parity(optd_server, case):
    pb2, stub = optd_server.pb2, optd_server.stub
    rng = case_rng(case)
    names = [n for n, _ in TENSORS]
    initial = [rng.standard_normal(shape).astype(np.float32) for _, shape in TENSORS]
    grads = [[rng.standard_normal(shape).astype(np.float32) for _, shape in TENSORS]
             for _ in range(case.steps)]
    losses = make_losses(case.losses, case.steps, rng)

    want_lrs, want_next_lr, checkpoints = run_torch(case, initial, grads, losses)

    session_id = f"schedule-parity.{case.id}"
    config = pb2.SessionConfig(
        optimizer=pb2.OptimizerConfig(sgd=pb2.Sgd(lr=case.base_lr, momentum=case.momentum)),
        schedule=make_schedule(pb2, case))
    created = stub.CreateSession(pb2.CreateSessionRequest(
        session_id=session_id, config=config,
        tensors=[to_tensor(n, a) for n, a in zip(names, initial)]), timeout=RPC_TIMEOUT_S)
    try:
        assert created.version == 0
        check_schedule_config(pb2, case, created)
        session = stub.GetSession(pb2.GetSessionRequest(session_id=session_id),
                                  timeout=RPC_TIMEOUT_S)
        check_schedule_config(pb2, case, session)
        assert_lrs_match(case, [session.learning_rate], [want_lrs[0]],
                         "Session.learning_rate before the first step")

        requests = []
        for k in range(case.steps):
            req = pb2.StepRequest(
                session_id=session_id, worker_id="schedule",
                gradients=[to_tensor(n, g) for n, g in zip(names, grads[k])],
                return_parameters=(pb2.RETURN_PARAMETERS_ALL if is_checkpoint(case, k)
                                   else pb2.RETURN_PARAMETERS_NONE))
            if losses[k] is not None:
                req.loss = losses[k]
            requests.append(req)
        responses = list(stub.StreamSteps(iter(requests), timeout=RPC_TIMEOUT_S))
        assert len(responses) == case.steps

        got_lrs = []
        for k, response in enumerate(responses):
            assert response.WhichOneof("result") == "reply", (
                f"{case.id}: step k={k} refused: {response.error}")
            reply = response.reply
            assert reply.version == k + 1, f"{case.id}: step k={k}: version {reply.version}"
            got_lrs.append(reply.learning_rate)
            if is_checkpoint(case, k):
                assert [t.name for t in reply.parameters] == names
                for t, w in zip(reply.parameters, checkpoints[k + 1]):
                    np.testing.assert_allclose(
                        from_tensor(t), w, rtol=RTOL, atol=ATOL,
                        err_msg=f"{case.id}: parameters {t.name} after step k={k} (vs torch SGD "
                                f"with the scheduler)")
            else:
                assert not reply.parameters, f"{case.id}: RETURN_PARAMETERS_NONE returned some"
        assert_lrs_match(case, got_lrs, want_lrs)

        session = stub.GetSession(pb2.GetSessionRequest(session_id=session_id),
                                  timeout=RPC_TIMEOUT_S)
        assert session.version == case.steps
        assert_lrs_match(case, [session.learning_rate], [want_next_lr],
                         "Session.learning_rate after the last step")
        check_schedule_config(pb2, case, session)
        pulled = stub.Pull(pb2.PullRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
        for t, w in zip(pulled.tensors, checkpoints[case.steps]):
            np.testing.assert_allclose(from_tensor(t), w, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{case.id}: final Pull of {t.name}")
    finally:
        try:
            stub.DeleteSession(pb2.DeleteSessionRequest(session_id=session_id),
                               timeout=RPC_TIMEOUT_S)
        except grpc.RpcError:
            pass


def test_cases_cover_every_schedule(optd_server):
    kinds = {f.name for f in optd_server.pb2.LrSchedule.DESCRIPTOR.oneofs_by_name["kind"].fields}
    counts = {k: sum(c.kind == k for c in CASES) for k in kinds}
    assert all(n >= 2 for n in counts.values()), counts
