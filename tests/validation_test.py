"""Validation of every hyperparameter at CreateSession, against the real optd binary.

Every optimizer field (the ranges of optd.proto and reference/optimizers.md section 1.13), every
schedule field (section 3) and both clipping fields get values just outside their range, NaN and
infinities: CreateSession must answer INVALID_ARGUMENT with a message holding the full field path
and the value ("config.optimizer.rmsprop.alpha = 1.5") and the valid range ("in [0, 1]"), and
must create nothing (GetSession of the requested id: NOT_FOUND). Required fields left unset (SGD's
lr, the schedules' step_size, gamma, t_max, max_lr, total_steps, decay_steps) and cross-field rules
(SGD nesterov, Adagrad eps with initial_accumulator_value, AdamW lr * weight_decay, warmup_cosine
decay_steps > warmup_steps, OneCycle's derived lrs) are refused too. Boundary values (lr = 0,
beta1 = 0, Lion's beta = 1, ...) are accepted: the session reports the value and one step gives
finite parameters and a finite learning rate. At the end the server still serves and no session is
left (ListSessions).

Run: /usr/bin/python3 -m pytest -q tests/validation_test.py   (OPTD_BUILD_DIR picks the build)
"""

import math

import grpc
import numpy as np
import pytest

from optd_testing import from_tensor, to_tensor

RPC_TIMEOUT_S = 30.0
NAN, INF = math.nan, math.inf

# The double fields of each optimizer and their valid ranges, as optd.proto writes them. Ranges:
# ">= 0", "> 0", "[0, 1)", "[0, 1]".
OPTIMIZER_FIELDS = {
    "sgd": dict(lr=">= 0", momentum="[0, 1)", dampening="[0, 1]", weight_decay=">= 0"),
    "adam": dict(lr=">= 0", beta1="[0, 1)", beta2="[0, 1)", eps="> 0", weight_decay=">= 0"),
    "adamw": dict(lr=">= 0", beta1="[0, 1)", beta2="[0, 1)", eps="> 0", weight_decay=">= 0"),
    "adagrad": dict(lr=">= 0", lr_decay=">= 0", weight_decay=">= 0",
                    initial_accumulator_value=">= 0", eps=">= 0"),
    "normalized_gd": dict(lr=">= 0", eps=">= 0"),
    "adadelta": dict(lr=">= 0", rho="[0, 1)", eps="> 0", weight_decay=">= 0"),
    "rmsprop": dict(lr=">= 0", alpha="[0, 1]", eps=">= 0", weight_decay=">= 0",
                    momentum="[0, 1)"),
    "nadam": dict(lr=">= 0", beta1="[0, 1)", beta2="[0, 1)", eps="> 0", weight_decay=">= 0",
                  momentum_decay=">= 0"),
    "radam": dict(lr=">= 0", beta1="[0, 1)", beta2="[0, 1)", eps=">= 0", weight_decay=">= 0"),
    "lion": dict(lr="> 0", beta1="[0, 1]", beta2="[0, 1]", weight_decay=">= 0"),
    "lamb": dict(lr=">= 0", beta1="[0, 1)", beta2="[0, 1)", eps="> 0", weight_decay=">= 0"),
    "lars": dict(lr=">= 0", momentum="[0, 1)", weight_decay=">= 0", trust_coefficient="> 0",
                 eps=">= 0"),
    "prodigy": dict(lr="> 0", beta1="[0, 1)", beta2="[0, 1)", beta3="[0, 1)", eps="> 0",
                    weight_decay=">= 0", d0="> 0", d_coef="> 0", growth_rate="growth"),
    "dadapt_adam": dict(lr="> 0", beta1="[0, 1)", beta2="[0, 1)", eps="> 0", weight_decay=">= 0",
                        d0="> 0", growth_rate="growth", layer_scale="> 0"),
    "dadapt_sgd": dict(lr="> 0", momentum="[0, 1)", weight_decay=">= 0", d0="> 0",
                       growth_rate="growth"),
    "dog": dict(lr="> 0", reps_rel="> 0", weight_decay=">= 0", eps="> 0", init_eta="> 0",
                averager_gamma=">= 0"),
    "ldog": dict(lr="> 0", reps_rel="> 0", weight_decay=">= 0", eps="> 0", init_eta="> 0",
                 averager_gamma=">= 0"),
    "schedulefree_adamw": dict(lr=">= 0", beta1="(0, 1)", beta2="[0, 1)", eps="> 0",
                               weight_decay=">= 0", r=">= 0", weight_lr_power=">= 0",
                               inner_momentum="[0, 1)"),
    "schedulefree_sgd": dict(lr=">= 0", momentum="(0, 1)", weight_decay=">= 0", r=">= 0",
                             weight_lr_power=">= 0"),
    "adafactor": dict(lr=">= 0", beta2_decay="<= 0", eps1=">= 0", eps2=">= 0", d=">= 1",
                      weight_decay=">= 0"),
    "muon": dict(lr=">= 0", momentum="[0, 1)", weight_decay=">= 0", adam_lr=">= 0",
                 adam_beta1="[0, 1)", adam_beta2="[0, 1)", adam_eps="> 0",
                 adam_weight_decay=">= 0"),
}
# What every optimizer needs besides the field under test (SGD's lr is required).
OPTIMIZER_BASE = {"sgd": dict(lr=0.1)}

# The scalar fields of each schedule: (type, range); int ranges ">= 1", ">= 0".
SCHEDULE_FIELDS = {
    "step": dict(step_size=("int", ">= 1"), gamma=("double", "(0, 1]")),
    "multi_step": dict(gamma=("double", "(0, 1]")),
    "exponential": dict(gamma=("double", "(0, 1]")),
    "cosine_annealing": dict(t_max=("int", ">= 1"), eta_min=("double", ">= 0")),
    "linear_warmup": dict(start_factor=("double", "[0, 1]"), end_factor=("double", "[0, 1]"),
                          total_iters=("int", ">= 1")),
    "warmup_cosine": dict(init_factor=("double", "[0, 1]"), warmup_steps=("int", ">= 0"),
                          decay_steps=("int", ">= 1"), end_factor=("double", "[0, 1]"),
                          exponent=("double", "> 0")),
    "inverse_sqrt": dict(warmup_steps=("int", ">= 0"), timescale=("int", ">= 0")),
    "one_cycle": dict(max_lr=("double", "> 0"), total_steps=("int", ">= 1"),
                      pct_start=("double", "[0, 1]"), div_factor=("double", "> 0"),
                      final_div_factor=("double", "> 0")),
    "reduce_on_plateau": dict(factor=("double", "[0, 1)"), patience=("int", ">= 0"),
                              threshold=("double", ">= 0"), cooldown=("int", ">= 0"),
                              min_lr=("double", ">= 0"), eps=("double", ">= 0")),
}
# The required fields of each schedule, set to valid values when another field is under test.
SCHEDULE_BASE = {
    "step": dict(step_size=10),
    "exponential": dict(gamma=0.9),
    "cosine_annealing": dict(t_max=10),
    "warmup_cosine": dict(decay_steps=100),
    "one_cycle": dict(max_lr=0.1, total_steps=100),
}
CLIPPING_FIELDS = dict(max_norm=">= 0", clip_value=">= 0")

OUTSIDE = {  # values just outside each range
    ">= 0": [-0.1],
    "> 0": [0.0, -1.0],
    "[0, 1)": [-0.1, 1.0],
    "[0, 1]": [-0.1, 1.5],
    "(0, 1]": [0.0, 1.5],
    "(0, 1)": [0.0, 1.0],
    ">= 1": [0.5],
    "<= 0": [0.1],
    "growth": [0.5, -1.0],  # growth_rate: >= 1, or inf (unbounded)
}
# Ranges whose upper end is +inf itself: inf is valid there, only NaN and -inf are not.
INF_VALID = {"growth"}
BOUNDARY = {  # the edges of each range, accepted
    ">= 0": [0.0],
    "> 0": [1e-12],
    "[0, 1)": [0.0, 0.999999],
    "[0, 1]": [0.0, 1.0],
    "(0, 1]": [1e-9, 1.0],
    "(0, 1)": [1e-9, 0.999999],
    ">= 1": [1.0],
    "<= 0": [0.0, -1.5],
    "growth": [1.0, INF],
    ">= 1": [1],
}
RANGE_TEXT = {  # how the message spells the range
    ">= 0": ">= 0", "> 0": "> 0", ">= 1": ">= 1",
    "[0, 1)": "in [0, 1)", "[0, 1]": "in [0, 1]", "(0, 1]": "in (0, 1]",
    "(0, 1)": "in (0, 1)", "<= 0": "<= 0", "growth": ">= 1 (or inf)",
}


def fmt(v):
    """The value as the message shows it (C's %g for these values)."""
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return "%g" % v


def spec(opt=("sgd", dict(lr=0.1)), sched=None, clip=None):
    return dict(opt=opt, sched=sched, clip=clip)


# ---------------------------------------------------------------------------------------------------
# Invalid cases: (id, spec, message fragments).

def _invalid_cases():
    cases = []
    for kind, fields in OPTIMIZER_FIELDS.items():
        for name, rng in fields.items():
            path = f"config.optimizer.{kind}.{name}"
            values = OUTSIDE[rng] + ([NAN, -INF] if rng in INF_VALID else
                                     [NAN, INF] + ([-INF] if name == "lr" else []))
            for v in values:
                finite = math.isfinite(v) or rng in INF_VALID
                cases.append((f"{kind}.{name}={fmt(v)}",
                              spec(opt=(kind, {**OPTIMIZER_BASE.get(kind, {}), name: v})),
                              [f"{path} = {fmt(v)}",
                               ("must be " if finite else "must be finite and ") + RANGE_TEXT[rng]]))
    for kind, fields in SCHEDULE_FIELDS.items():
        for name, (typ, rng) in fields.items():
            path = f"config.schedule.{kind}.{name}"
            if typ == "int":
                values = [0, -3] if rng == ">= 1" else [-1]
            else:
                values = OUTSIDE[rng] + [NAN, INF]
            for v in values:
                finite = not isinstance(v, float) or math.isfinite(v)
                fields_ = {**SCHEDULE_BASE.get(kind, {}), name: v}
                if kind == "warmup_cosine" and name == "warmup_steps":
                    fields_["decay_steps"] = 100
                cases.append((f"schedule.{kind}.{name}={fmt(v)}", spec(sched=(kind, fields_)),
                              [f"{path} = {fmt(v)}",
                               ("must be " if finite else "must be finite and ") + RANGE_TEXT[rng]]))
    for name, rng in CLIPPING_FIELDS.items():
        for v in [-1.0, -INF, NAN, INF]:
            finite = math.isfinite(v)
            cases.append((f"clipping.{name}={fmt(v)}", spec(clip={name: v}),
                          [f"config.clipping.{name} = {fmt(v)}",
                           ("must be " if finite else "must be finite and ") + RANGE_TEXT[rng]]))

    # Required fields left unset, cross-field rules, unknown enum values.
    cases += [
        ("optimizer-unset", spec(opt=None), ["config.optimizer"]),
        ("sgd.lr-unset", spec(opt=("sgd", dict(momentum=0.9))), ["config.optimizer.sgd.lr"]),
        ("sgd.nesterov-without-momentum", spec(opt=("sgd", dict(lr=0.1, nesterov=True))),
         ["config.optimizer.sgd.nesterov", "momentum"]),
        ("sgd.nesterov-with-dampening",
         spec(opt=("sgd", dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True))),
         ["config.optimizer.sgd.nesterov", "dampening"]),
        ("adagrad.eps=0-with-initial-accumulator-0", spec(opt=("adagrad", dict(eps=0.0))),
         ["config.optimizer.adagrad.eps = 0", "initial_accumulator_value"]),
        ("adamw.lr*weight_decay>1", spec(opt=("adamw", dict(lr=0.5, weight_decay=3.0))),
         ["config.optimizer.adamw.lr", "weight_decay", "<= 1"]),
        ("adamw.default-lr*weight_decay>1", spec(opt=("adamw", dict(weight_decay=1001.0))),
         ["config.optimizer.adamw.lr", "weight_decay", "<= 1"]),
        ("normalized_gd.norm=7", spec(opt=("normalized_gd", dict(norm=7))),
         ["config.optimizer.normalized_gd.norm = 7", "NORM_GLOBAL"]),
        ("normalized_gd.guard=9", spec(opt=("normalized_gd", dict(guard=9))),
         ["config.optimizer.normalized_gd.guard = 9", "GUARD_ADD_EPS"]),
        ("schedule.step-unset", spec(sched=("step", {})),
         ["config.schedule.step.step_size = 0", ">= 1"]),
        ("schedule.exponential-unset", spec(sched=("exponential", {})),
         ["config.schedule.exponential.gamma = 0", "(0, 1]"]),
        ("schedule.cosine_annealing-unset", spec(sched=("cosine_annealing", dict(eta_min=0.01))),
         ["config.schedule.cosine_annealing.t_max = 0", ">= 1"]),
        ("schedule.one_cycle-max_lr-unset", spec(sched=("one_cycle", dict(total_steps=100))),
         ["config.schedule.one_cycle.max_lr = 0", "> 0"]),
        ("schedule.one_cycle-total_steps-unset", spec(sched=("one_cycle", dict(max_lr=0.1))),
         ["config.schedule.one_cycle.total_steps = 0", ">= 1"]),
        ("schedule.warmup_cosine-unset", spec(sched=("warmup_cosine", dict(warmup_steps=0))),
         ["config.schedule.warmup_cosine.decay_steps = 0"]),
        ("schedule.warmup_cosine.decay_steps=warmup_steps",
         spec(sched=("warmup_cosine", dict(warmup_steps=10, decay_steps=10))),
         ["config.schedule.warmup_cosine.decay_steps = 10", "warmup_steps"]),
        ("schedule.warmup_cosine.decay_steps<warmup_steps",
         spec(sched=("warmup_cosine", dict(warmup_steps=50, decay_steps=20))),
         ["config.schedule.warmup_cosine.decay_steps = 20", "warmup_steps"]),
        ("schedule.multi_step.milestones[1]=-1",
         spec(sched=("multi_step", dict(milestones=[5, -1]))),
         ["config.schedule.multi_step.milestones[1] = -1", ">= 0"]),
        ("schedule.one_cycle.anneal_strategy=5",
         spec(sched=("one_cycle", dict(max_lr=0.1, total_steps=10, anneal_strategy=5))),
         ["config.schedule.one_cycle.anneal_strategy = 5"]),
        ("schedule.one_cycle.min_lr-underflows",
         spec(sched=("one_cycle", dict(max_lr=1e-300, total_steps=10, div_factor=1e300))),
         ["config.schedule.one_cycle.max_lr", "div_factor"]),
        ("schedule.reduce_on_plateau.mode=3", spec(sched=("reduce_on_plateau", dict(mode=3))),
         ["config.schedule.reduce_on_plateau.mode = 3"]),
        ("schedule.reduce_on_plateau.threshold_mode=4",
         spec(sched=("reduce_on_plateau", dict(threshold_mode=4))),
         ["config.schedule.reduce_on_plateau.threshold_mode = 4"]),
    ]
    return cases


def _boundary_cases():
    cases = []
    for kind, fields in OPTIMIZER_FIELDS.items():
        for name, rng in fields.items():
            for v in BOUNDARY[rng]:
                hp = {**OPTIMIZER_BASE.get(kind, {}), name: v}
                if kind == "adagrad" and name == "eps" and v == 0:
                    hp["initial_accumulator_value"] = 0.1  # eps = 0 needs a positive accumulator
                cases.append((f"{kind}.{name}={fmt(v)}", spec(opt=(kind, hp))))
    for kind, fields in SCHEDULE_FIELDS.items():
        for name, (typ, rng) in fields.items():
            values = BOUNDARY[rng] if typ == "double" or rng == ">= 1" else [0]
            for v in values:
                fields_ = {**SCHEDULE_BASE.get(kind, {}), name: v}
                if kind == "warmup_cosine" and name == "decay_steps":
                    fields_["warmup_steps"] = 0
                cases.append((f"schedule.{kind}.{name}={fmt(v)}", spec(sched=(kind, fields_))))
    cases += [
        ("optimizer-defaults-adam", spec(opt=("adam", {}))),
        ("sgd.lr=0-momentum-dampening=1", spec(opt=("sgd", dict(lr=0.0, momentum=0.5,
                                                               dampening=1.0)))),
        ("sgd.nesterov", spec(opt=("sgd", dict(lr=0.1, momentum=0.9, nesterov=True)))),
        ("adamw.lr*weight_decay=1", spec(opt=("adamw", dict(lr=0.5, weight_decay=2.0)))),
        ("lion.betas=1", spec(opt=("lion", dict(beta1=1.0, beta2=1.0)))),
        ("adam.betas=0", spec(opt=("adam", dict(beta1=0.0, beta2=0.0)))),
        ("schedule.constant", spec(sched=("constant", {}))),
        ("schedule.multi_step-empty", spec(sched=("multi_step", {}))),
        ("schedule.multi_step.milestones=0,0", spec(sched=("multi_step", dict(milestones=[0, 0])))),
        ("schedule.linear_warmup.factors=0", spec(sched=("linear_warmup",
                                                         dict(start_factor=0.0, end_factor=0.0)))),
        ("schedule.warmup_cosine.decay_steps=warmup_steps+1",
         spec(sched=("warmup_cosine", dict(warmup_steps=10, decay_steps=11)))),
        ("schedule.one_cycle.total_steps=1", spec(sched=("one_cycle", dict(max_lr=0.1,
                                                                         total_steps=1)))),
        ("schedule.one_cycle.pct_start=1-three-phase",
         spec(sched=("one_cycle", dict(max_lr=0.1, total_steps=10, pct_start=1.0,
                                       three_phase=True)))),
        ("schedule.one_cycle.pct_start=0.1-total10-linear",  # a zero-length first phase
         spec(sched=("one_cycle", dict(max_lr=0.1, total_steps=10, pct_start=0.1,
                                       anneal_strategy=1)))),
        ("schedule.reduce_on_plateau-max-abs", spec(sched=("reduce_on_plateau",
                                                           dict(mode=1, threshold_mode=1)))),
        ("clipping=0", spec(clip=dict(max_norm=0.0, clip_value=0.0))),
        ("clipping-tiny", spec(clip=dict(max_norm=1e-30, clip_value=1e-30))),
        ("clipping-huge", spec(clip=dict(max_norm=1e300, clip_value=1e300))),
    ]
    return cases


INVALID = _invalid_cases()
BOUNDARY_CASES = _boundary_cases()


def build_config(pb2, s):
    config = pb2.SessionConfig()
    if s["opt"] is not None:
        kind, fields = s["opt"]
        msg = getattr(config.optimizer, kind)
        msg.SetInParent()
        for name, value in fields.items():
            setattr(msg, name, value)
    if s["sched"] is not None:
        kind, fields = s["sched"]
        msg = getattr(config.schedule, kind)
        msg.SetInParent()
        for name, value in fields.items():
            if isinstance(value, list):
                getattr(msg, name).extend(value)
            else:
                setattr(msg, name, value)
    if s["clip"] is not None:
        for name, value in s["clip"].items():
            setattr(config.clipping, name, value)
    return config


def session_id_of(case_id):
    return "validation." + "".join(c if c.isalnum() or c in "._-" else "_" for c in case_id)


TENSOR = ("w", np.array([0.5, -1.0, 2.0], dtype=np.float32))


def create(server, session_id, config):
    pb2 = server.pb2
    return server.stub.CreateSession(pb2.CreateSessionRequest(
        session_id=session_id, config=config, tensors=[to_tensor(*TENSOR)]),
        timeout=RPC_TIMEOUT_S)


# ---------------------------------------------------------------------------------------------------
# Tests.

def test_field_tables_cover_the_proto(optd_server):
    """Every double/int field of every optimizer and schedule message is in the tables above."""
    pb2 = optd_server.pb2
    for oneof_field in pb2.OptimizerConfig.DESCRIPTOR.oneofs_by_name["kind"].fields:
        kind = oneof_field.name
        doubles = {f.name for f in oneof_field.message_type.fields if f.type == f.TYPE_DOUBLE}
        assert doubles == set(OPTIMIZER_FIELDS[kind]), kind
    for oneof_field in pb2.LrSchedule.DESCRIPTOR.oneofs_by_name["kind"].fields:
        kind = oneof_field.name
        scalars = {f.name for f in oneof_field.message_type.fields
                   if f.type in (f.TYPE_DOUBLE, f.TYPE_INT64) and f.label != f.LABEL_REPEATED}
        assert scalars == set(SCHEDULE_FIELDS.get(kind, {})), kind
    assert {f.name for f in pb2.Clipping.DESCRIPTOR.fields} == set(CLIPPING_FIELDS)


@pytest.mark.parametrize("case_id,s,fragments", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_refused(optd_server, case_id, s, fragments):
    pb2, stub = optd_server.pb2, optd_server.stub
    session_id = session_id_of(case_id)
    with pytest.raises(grpc.RpcError) as err:
        create(optd_server, session_id, build_config(pb2, s))
    code, message = err.value.code(), err.value.details()
    assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{case_id}: {code} {message!r}"
    for fragment in fragments:
        assert fragment in message, f"{case_id}: message {message!r} lacks {fragment!r}"
    with pytest.raises(grpc.RpcError) as err:
        stub.GetSession(pb2.GetSessionRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND, f"{case_id}: a session was created"


@pytest.mark.parametrize("case_id,s", BOUNDARY_CASES, ids=[c[0] for c in BOUNDARY_CASES])
def test_boundary_accepted(optd_server, case_id, s):
    pb2, stub = optd_server.pb2, optd_server.stub
    session_id = session_id_of(case_id)
    config = build_config(pb2, s)
    try:
        session = create(optd_server, session_id, config)
    except grpc.RpcError as e:
        pytest.fail(f"{case_id}: refused: {e.code()} {e.details()!r}\n{config}")
    try:
        # The session reports what was asked for.
        for part in ("optimizer", "schedule"):
            sent = getattr(config, part)
            if sent.WhichOneof("kind") is None:
                continue
            kind = sent.WhichOneof("kind")
            got = getattr(getattr(session.config, part), kind)
            assert getattr(session.config, part).WhichOneof("kind") == kind
            for field, value in getattr(sent, kind).ListFields():
                got_value = getattr(got, field.name)
                if field.label == field.LABEL_REPEATED:
                    got_value, value = list(got_value), list(value)
                assert got_value == value, f"{case_id}: {part}.{kind}.{field.name}"
        assert session.config.clipping == config.clipping
        assert math.isfinite(session.learning_rate) and session.learning_rate >= 0
        # One step works and gives finite values.
        reply = stub.Step(pb2.StepRequest(
            session_id=session_id, worker_id="validation", loss=1.0,
            gradients=[to_tensor("w", np.array([0.25, -0.5, 1.0], dtype=np.float32))]),
            timeout=RPC_TIMEOUT_S)
        assert reply.version == 1
        assert math.isfinite(reply.learning_rate) and reply.learning_rate >= 0, reply
        assert np.all(np.isfinite(from_tensor(reply.parameters[0]))), f"{case_id}: {reply}"
    finally:
        stub.DeleteSession(pb2.DeleteSessionRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)


def test_server_still_serves_and_no_session_was_left(optd_server):
    """Runs last (pytest keeps file order): nothing refused above created a session."""
    pb2, stub = optd_server.pb2, optd_server.stub
    listed = stub.ListSessions(pb2.ListSessionsRequest(page_size=1000), timeout=RPC_TIMEOUT_S)
    assert [s.session_id for s in listed.sessions] == []
    assert listed.next_page_token == ""
    session = create(optd_server, "validation.after", build_config(pb2, spec()))
    assert session.version == 0
    reply = stub.Step(pb2.StepRequest(session_id="validation.after", worker_id="validation",
                                      gradients=[to_tensor("w", np.ones(3, dtype=np.float32))]),
                      timeout=RPC_TIMEOUT_S)
    np.testing.assert_allclose(from_tensor(reply.parameters[0]), TENSOR[1] - 0.1, rtol=1e-6)
    stub.DeleteSession(pb2.DeleteSessionRequest(session_id="validation.after"),
                       timeout=RPC_TIMEOUT_S)
    listed = stub.ListSessions(pb2.ListSessionsRequest(), timeout=RPC_TIMEOUT_S)
    assert not listed.sessions
