"""UpdateSession: run-time hyperparameters, schedules and clipping against torch 1.13 doing the same.

Each test drives one session of the real optd binary and a torch oracle in lockstep (the same
seeded random gradients; parameters compared after every step with rtol 1e-4 / atol 1e-5, the lr
the step used (StepResponse.learning_rate) and the pre-clip gradient norm checked too), and changes
the configuration mid-run:

* the learning rate (torch: param_groups[0]["lr"] = X), another field only (beta2: the lr stays),
  the optimizer state (Adam moments) carrying on, as in torch, which never resets state;
* the schedule: the new one continues at the session's step count k (optd.proto
  UpdateSessionRequest.schedule; Session::Update), with the base lr in force (torch: a new
  scheduler whose last_epoch is k, initial_lr = the base, group lr = its closed form at k); a base
  lr change under a closed-form schedule keeps the schedule's multiplier at k (torch: base_lrs =
  [X], lr = closed form), and under ReduceLROnPlateau makes X the current lr, keeping best,
  bad epochs and cooldown (torch: group["lr"] = X) (server/optim/schedule.h SetBaseLr);
* the clipping (torch clip_grad_norm_, then clip_grad_value_), replaced as a whole;
* refusals: another optimizer kind, any invalid value (with the field's name in the message), also
  when other parts of the request are valid: INVALID_ARGUMENT and nothing changes (GetSession is
  identical and later steps still match torch with the old settings); an unknown session:
  NOT_FOUND.

Run: /usr/bin/python3 -m pytest -q tests/update_session_test.py   (OPTD_BUILD_DIR picks the build)
"""

import math
import zlib

import grpc
import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler

from optd_testing import from_tensor, to_tensor

torch.set_num_threads(1)

RTOL = 1e-4
ATOL = 1e-5
LR_RTOL = 1e-9
RPC_TIMEOUT_S = 30.0
TENSORS = [("dense/kernel", (3, 4)), ("dense/bias", (5,))]


# ---------------------------------------------------------------------------------------------------
# Lockstep driver.

class Lockstep:
    """One optd session and its torch oracle, stepped together."""

    def __init__(self, server, test_id, config, make_torch_opt):
        self.pb2, self.stub = server.pb2, server.stub
        self.id = test_id
        self.rng = np.random.default_rng(zlib.crc32(test_id.encode()))
        self.names = [n for n, _ in TENSORS]
        initial = [self.rng.standard_normal(s).astype(np.float32) for _, s in TENSORS]
        self.params = [torch.tensor(a.copy(), dtype=torch.float32, requires_grad=True)
                       for a in initial]
        self.opt = make_torch_opt(self.params)
        self.sched = None  # a torch scheduler, if any
        self.max_norm = 0.0
        self.clip_value = 0.0
        self.k = 0  # steps applied
        self.session_id = f"update-session.{test_id}"
        self.session = self.stub.CreateSession(self.pb2.CreateSessionRequest(
            session_id=self.session_id, config=config,
            tensors=[to_tensor(n, a) for n, a in zip(self.names, initial)]),
            timeout=RPC_TIMEOUT_S)

    @property
    def torch_lr(self):
        return self.opt.param_groups[0]["lr"]

    def step(self, n, loss_fn=None):
        """n steps on both sides; loss_fn(k) -> the loss reported with step k (plateau), or None."""
        for _ in range(n):
            k = self.k
            scale = self.rng.uniform(0.2, 2.0)
            grads = [(self.rng.standard_normal(s) * scale).astype(np.float32) for _, s in TENSORS]
            loss = loss_fn(k) if loss_fn is not None else None
            request = self.pb2.StepRequest(
                session_id=self.session_id, worker_id="update",
                gradients=[to_tensor(n_, g) for n_, g in zip(self.names, grads)])
            if loss is not None:
                request.loss = loss
            reply = self.stub.Step(request, timeout=RPC_TIMEOUT_S)

            want_lr = self.torch_lr
            for p, g in zip(self.params, grads):
                p.grad = torch.from_numpy(g.copy())
            if self.max_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
            if self.clip_value > 0:
                torch.nn.utils.clip_grad_value_(self.params, self.clip_value)
            self.opt.step()
            if isinstance(self.sched, lr_scheduler.ReduceLROnPlateau):
                if loss is not None:
                    self.sched.step(loss)
            elif self.sched is not None:
                self.sched.step()
            self.k += 1

            assert reply.version == self.k, f"{self.id}: step k={k}: version {reply.version}"
            assert reply.learning_rate == pytest.approx(want_lr, rel=LR_RTOL, abs=1e-15), (
                f"{self.id}: step k={k}: StepResponse.learning_rate {reply.learning_rate!r}, "
                f"torch used {want_lr!r}")
            grad_norm = math.sqrt(sum(float(np.sum(np.square(g.astype(np.float64))))
                                      for g in grads))
            assert reply.gradient_norm == pytest.approx(grad_norm, rel=1e-6), (
                f"{self.id}: step k={k}: gradient_norm {reply.gradient_norm!r} is not the norm "
                f"before clipping {grad_norm!r}")
            for t, p in zip(reply.parameters, self.params):
                np.testing.assert_allclose(
                    from_tensor(t), p.detach().numpy(), rtol=RTOL, atol=ATOL,
                    err_msg=f"{self.id}: step k={k}, tensor {t.name} (server vs torch)")
        return self

    def update(self, **fields):
        """UpdateSession with the given request fields; returns the Session reply."""
        request = self.pb2.UpdateSessionRequest(session_id=self.session_id, **fields)
        for name in fields:
            assert request.HasField(name), name
        return self.stub.UpdateSession(request, timeout=RPC_TIMEOUT_S)

    def get(self):
        return self.stub.GetSession(self.pb2.GetSessionRequest(session_id=self.session_id),
                                    timeout=RPC_TIMEOUT_S)

    def expect_refused(self, fragments, **fields):
        """UpdateSession must fail with INVALID_ARGUMENT naming `fragments`, changing nothing."""
        before = self.get()
        with pytest.raises(grpc.RpcError) as err:
            self.update(**fields)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (
            f"{self.id}: {fields}: {err.value.code()} {err.value.details()}")
        for fragment in fragments:
            assert fragment in err.value.details(), (
                f"{self.id}: {fields}: message {err.value.details()!r} lacks {fragment!r}")
        after = self.get()
        assert after == before, f"{self.id}: a refused update changed the session:\n{fields}"
        return err.value.details()

    def check_session(self, session, lr=None):
        """Session.learning_rate is the lr torch's next step will use; version is k."""
        assert session.version == self.k
        want = self.torch_lr if lr is None else lr
        assert session.learning_rate == pytest.approx(want, rel=LR_RTOL, abs=1e-15), (
            f"{self.id}: Session.learning_rate {session.learning_rate!r}, expected {want!r}")

    def close(self):
        try:
            self.stub.DeleteSession(self.pb2.DeleteSessionRequest(session_id=self.session_id),
                                    timeout=RPC_TIMEOUT_S)
        except grpc.RpcError:
            pass


@pytest.fixture
def lockstep(optd_server, request):
    runs = []

    def make(config, make_torch_opt):
        run = Lockstep(optd_server, request.node.name, config, make_torch_opt)
        runs.append(run)
        return run
    yield make
    for run in runs:
        run.close()


def torch_scheduler_at(opt, factory, k, base):
    """A torch scheduler that continues at step k with `base` as its base lr: constructed with
    last_epoch = k - 1 (its constructor steps once, to k), and the group lr set to its closed form
    at k (torch's chainable get_lr would start from the previous schedule's lr)."""
    for group in opt.param_groups:
        group["initial_lr"] = base
    sched = factory(opt, last_epoch=k - 1)
    for group, lr in zip(opt.param_groups, sched._get_closed_form_lr()):
        group["lr"] = lr
    sched._last_lr = [group["lr"] for group in opt.param_groups]
    return sched


def adam_config(pb2, **hp):
    return pb2.SessionConfig(optimizer=pb2.OptimizerConfig(adam=pb2.Adam(**hp)))


def adam_factory(lr=1e-3, **kw):
    return lambda params: torch.optim.Adam(params, lr=lr, foreach=False, **kw)


# ---------------------------------------------------------------------------------------------------
# Hyperparameters.

def test_lr_change_keeps_adam_moments(optd_server, lockstep):
    pb2 = optd_server.pb2
    run = lockstep(adam_config(pb2, lr=0.01), adam_factory(lr=0.01))
    run.step(60)

    session = run.update(optimizer=pb2.OptimizerConfig(adam=pb2.Adam(lr=0.003)))
    run.opt.param_groups[0]["lr"] = 0.003
    run.check_session(session)
    adam = session.config.optimizer.adam
    assert (adam.lr, adam.beta1, adam.beta2, adam.eps, adam.weight_decay, adam.amsgrad,
            adam.maximize) == (0.003, 0.9, 0.999, 1e-8, 0.0, False, False), adam
    assert run.get() == session
    assert session.optimizer_state_bytes == 8 * 17  # the moments are still there

    # A fresh Adam (moments and bias corrections reset) would step differently: the comparison
    # below can tell "state kept" from "state reset".
    fresh_params = [p.detach().clone().requires_grad_(True) for p in run.params]
    fresh = torch.optim.Adam(fresh_params, lr=0.003, foreach=False)
    saved_rng = run.rng.bit_generator.state
    run.step(1)
    run.rng.bit_generator.state = saved_rng
    scale = run.rng.uniform(0.2, 2.0)
    grads = [(run.rng.standard_normal(s) * scale).astype(np.float32) for _, s in TENSORS]
    for p, g in zip(fresh_params, grads):
        p.grad = torch.from_numpy(g.copy())
    fresh.step()
    gap = max(float(np.max(np.abs(f.detach().numpy() - p.detach().numpy())))
              for f, p in zip(fresh_params, run.params))
    assert gap > 100 * ATOL, "test cannot tell kept moments from reset ones"
    run.step(59)

    # Another field only: the lr stays 0.003.
    session = run.update(optimizer=pb2.OptimizerConfig(adam=pb2.Adam(beta2=0.99)))
    run.opt.param_groups[0]["betas"] = (0.9, 0.99)
    run.check_session(session, lr=0.003)
    assert session.config.optimizer.adam.lr == 0.003
    assert session.config.optimizer.adam.beta2 == 0.99
    assert session.config.optimizer.adam.beta1 == 0.9
    run.step(60)

    # Several at once, booleans included.
    session = run.update(optimizer=pb2.OptimizerConfig(
        adam=pb2.Adam(beta1=0.8, eps=1e-3, weight_decay=0.01, maximize=True)))
    group = run.opt.param_groups[0]
    group.update(betas=(0.8, 0.99), eps=1e-3, weight_decay=0.01, maximize=True)
    adam = session.config.optimizer.adam
    assert (adam.lr, adam.beta1, adam.beta2, adam.eps, adam.weight_decay, adam.maximize) == (
        0.003, 0.8, 0.99, 1e-3, 0.01, True), adam
    run.check_session(session, lr=0.003)
    run.step(60)
    assert run.get().version == 240


def test_lr_zero_then_back(optd_server, lockstep):
    """lr = 0 (a boundary) freezes the parameters; moments keep moving, as in torch."""
    pb2 = optd_server.pb2
    run = lockstep(pb2.SessionConfig(optimizer=pb2.OptimizerConfig(
        rmsprop=pb2.RMSprop(lr=0.01, momentum=0.9, centered=True))),
        lambda ps: torch.optim.RMSprop(ps, lr=0.01, momentum=0.9, centered=True, foreach=False))
    run.step(20)
    session = run.update(optimizer=pb2.OptimizerConfig(rmsprop=pb2.RMSprop(lr=0.0)))
    run.opt.param_groups[0]["lr"] = 0.0
    run.check_session(session)
    frozen = run.stub.Pull(pb2.PullRequest(session_id=run.session_id), timeout=RPC_TIMEOUT_S)
    run.step(10)
    after = run.stub.Pull(pb2.PullRequest(session_id=run.session_id), timeout=RPC_TIMEOUT_S)
    for t, u in zip(frozen.tensors, after.tensors):
        np.testing.assert_array_equal(from_tensor(u), from_tensor(t), err_msg="lr = 0 moved")
    session = run.update(optimizer=pb2.OptimizerConfig(rmsprop=pb2.RMSprop(lr=0.02)))
    run.opt.param_groups[0]["lr"] = 0.02
    run.check_session(session)
    run.step(30)


# ---------------------------------------------------------------------------------------------------
# Schedules.

def test_schedule_and_base_lr_changes(optd_server, lockstep):
    pb2 = optd_server.pb2
    config = pb2.SessionConfig(
        optimizer=pb2.OptimizerConfig(sgd=pb2.Sgd(lr=0.1, momentum=0.9)),
        schedule=pb2.LrSchedule(step=pb2.LrSchedule.Step(step_size=30, gamma=0.5)))
    run = lockstep(config, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, foreach=False))
    run.sched = lr_scheduler.StepLR(run.opt, step_size=30, gamma=0.5)
    run.check_session(run.session)
    run.step(40)

    # A new base lr under StepLR: the multiplier at k (0.5^1) is kept.
    session = run.update(optimizer=pb2.OptimizerConfig(sgd=pb2.Sgd(lr=0.2)))
    run.sched.base_lrs = [0.2]
    run.opt.param_groups[0]["lr"] = run.sched._get_closed_form_lr()[0]
    assert run.torch_lr == pytest.approx(0.1)
    run.check_session(session)
    assert session.config.optimizer.sgd.lr == 0.2
    assert session.config.schedule.step.step_size == 30
    run.step(35)  # crosses the decay at k = 60

    # A new schedule continues at k = 75 with the base lr in force (0.2).
    cosine = pb2.LrSchedule(cosine_annealing=pb2.LrSchedule.CosineAnnealing(t_max=100,
                                                                            eta_min=0.001))
    session = run.update(schedule=cosine)
    run.sched = torch_scheduler_at(
        run.opt, lambda o, last_epoch: lr_scheduler.CosineAnnealingLR(
            o, T_max=100, eta_min=0.001, last_epoch=last_epoch), run.k, 0.2)
    run.check_session(session)
    assert session.config.schedule.WhichOneof("kind") == "cosine_annealing"
    assert session.config.schedule.cosine_annealing.t_max == 100
    assert session.config.schedule.cosine_annealing.eta_min == 0.001
    assert session.config.optimizer.sgd.lr == 0.2
    assert run.get() == session
    run.step(75)  # k = 150: past t_max, the cosine rises again

    # ReduceLROnPlateau from k = 150: it starts at the base lr, with a fresh best.
    plateau = pb2.LrSchedule(reduce_on_plateau=pb2.LrSchedule.ReduceOnPlateau(
        factor=0.5, patience=2, cooldown=1, threshold=0.01))
    session = run.update(schedule=plateau)
    run.sched = lr_scheduler.ReduceLROnPlateau(run.opt, factor=0.5, patience=2, cooldown=1,
                                               threshold=0.01)
    run.opt.param_groups[0]["lr"] = 0.2
    run.check_session(session)

    def losses(k):  # improving every 10th step, flat otherwise; no loss every 7th
        return None if k % 7 == 0 else 10.0 * 0.9 ** (k // 10)
    run.step(25, losses)
    assert run.torch_lr < 0.2  # the plateau logic did reduce

    # A new base lr under ReduceLROnPlateau becomes the current lr; best, bad epochs and cooldown
    # are kept.
    session = run.update(optimizer=pb2.OptimizerConfig(sgd=pb2.Sgd(lr=0.05)))
    run.opt.param_groups[0]["lr"] = 0.05
    run.check_session(session)
    run.step(25, losses)

    # Both at once: the new schedule starts from the new base lr, at k = 200.
    session = run.update(optimizer=pb2.OptimizerConfig(sgd=pb2.Sgd(lr=0.03)),
                         schedule=pb2.LrSchedule(
                             exponential=pb2.LrSchedule.Exponential(gamma=0.99)))
    run.sched = torch_scheduler_at(
        run.opt, lambda o, last_epoch: lr_scheduler.ExponentialLR(o, gamma=0.99,
                                                                  last_epoch=last_epoch),
        run.k, 0.03)
    assert run.torch_lr == pytest.approx(0.03 * 0.99 ** 200)
    run.check_session(session)
    run.step(30)

    # Back to constant: the base lr itself.
    session = run.update(schedule=pb2.LrSchedule(constant=pb2.LrSchedule.Constant()))
    run.sched = None
    run.opt.param_groups[0]["lr"] = 0.03
    run.check_session(session)
    assert session.config.schedule.WhichOneof("kind") == "constant"
    run.step(20)


def test_schedule_change_to_linear_warmup_mid_run(optd_server, lockstep):
    """A warmup installed at k = 50 with total_iters 80 is still warming up (k < 80)."""
    pb2 = optd_server.pb2
    run = lockstep(adam_config(pb2, lr=0.02), adam_factory(lr=0.02))
    run.step(50)
    session = run.update(schedule=pb2.LrSchedule(linear_warmup=pb2.LrSchedule.LinearWarmup(
        start_factor=0.1, total_iters=80)))
    run.sched = torch_scheduler_at(
        run.opt, lambda o, last_epoch: lr_scheduler.LinearLR(
            o, start_factor=0.1, total_iters=80, last_epoch=last_epoch), run.k, 0.02)
    assert run.torch_lr == pytest.approx(0.02 * (0.1 + 0.9 * 50 / 80))
    run.check_session(session)
    # Filled-in defaults of the new schedule.
    assert session.config.schedule.linear_warmup.end_factor == 1.0
    run.step(60)


# ---------------------------------------------------------------------------------------------------
# Clipping.

def test_clipping_changes(optd_server, lockstep):
    pb2 = optd_server.pb2
    run = lockstep(adam_config(pb2, lr=0.01), adam_factory(lr=0.01))
    run.step(30)
    for max_norm, clip_value in ((1.0, 0.0), (0.0, 0.2), (2.0, 0.3), (0.0, 0.0)):
        session = run.update(clipping=pb2.Clipping(max_norm=max_norm, clip_value=clip_value))
        run.max_norm, run.clip_value = max_norm, clip_value
        assert session.config.clipping.max_norm == max_norm
        assert session.config.clipping.clip_value == clip_value
        assert run.get().config.clipping == session.config.clipping
        run.check_session(session)
        run.step(30)
    # The clipping is replaced as a whole: {clip_value} alone turns max_norm off.
    run.update(clipping=pb2.Clipping(max_norm=1.5))
    session = run.update(clipping=pb2.Clipping(clip_value=0.25))
    assert (session.config.clipping.max_norm, session.config.clipping.clip_value) == (0.0, 0.25)
    run.max_norm, run.clip_value = 0.0, 0.25
    run.step(30)


def test_clipping_and_lr_in_one_update(optd_server, lockstep):
    pb2 = optd_server.pb2
    run = lockstep(pb2.SessionConfig(optimizer=pb2.OptimizerConfig(sgd=pb2.Sgd(lr=0.05)),
                                     clipping=pb2.Clipping(max_norm=1.0)),
                   lambda ps: torch.optim.SGD(ps, lr=0.05, foreach=False))
    run.max_norm = 1.0
    run.step(20)
    session = run.update(optimizer=pb2.OptimizerConfig(sgd=pb2.Sgd(lr=0.1)),
                         clipping=pb2.Clipping(max_norm=0.5, clip_value=0.1))
    run.opt.param_groups[0]["lr"] = 0.1
    run.max_norm, run.clip_value = 0.5, 0.1
    run.check_session(session)
    run.step(20)


# ---------------------------------------------------------------------------------------------------
# Refusals.

def test_optimizer_kind_change_refused(optd_server, lockstep):
    pb2 = optd_server.pb2
    run = lockstep(adam_config(pb2, lr=0.01), adam_factory(lr=0.01))
    run.step(20)
    message = run.expect_refused([], optimizer=pb2.OptimizerConfig(sgd=pb2.Sgd(lr=0.1)))
    assert "adam" in message and "sgd" in message, message
    # Also when the rest of the request is valid.
    run.expect_refused([], optimizer=pb2.OptimizerConfig(adamw=pb2.AdamW(lr=0.1)),
                       schedule=pb2.LrSchedule(exponential=pb2.LrSchedule.Exponential(gamma=0.5)),
                       clipping=pb2.Clipping(max_norm=0.1))
    run.step(20)


def test_invalid_values_refused_and_nothing_changes(optd_server, lockstep):
    pb2 = optd_server.pb2
    config = adam_config(pb2, lr=0.01)
    config.schedule.CopyFrom(pb2.LrSchedule(step=pb2.LrSchedule.Step(step_size=25, gamma=0.5)))
    config.clipping.CopyFrom(pb2.Clipping(max_norm=3.0))
    run = lockstep(config, adam_factory(lr=0.01))
    run.sched = lr_scheduler.StepLR(run.opt, step_size=25, gamma=0.5)
    run.max_norm = 3.0
    run.step(30)

    opt = pb2.OptimizerConfig
    for fragments, fields in [
        (["adam.lr", "-0.1", ">= 0"], dict(optimizer=opt(adam=pb2.Adam(lr=-0.1)))),
        (["adam.lr", "nan"], dict(optimizer=opt(adam=pb2.Adam(lr=math.nan)))),
        (["adam.lr", "inf"], dict(optimizer=opt(adam=pb2.Adam(lr=math.inf)))),
        (["adam.beta1", "1", "[0, 1)"], dict(optimizer=opt(adam=pb2.Adam(beta1=1.0)))),
        (["adam.beta2", "-0.5"], dict(optimizer=opt(adam=pb2.Adam(beta2=-0.5)))),
        (["adam.weight_decay", "-1"], dict(optimizer=opt(adam=pb2.Adam(weight_decay=-1.0)))),
        # A valid lr with an invalid eps: the lr must not change either.
        (["adam.eps", "0", "> 0"], dict(optimizer=opt(adam=pb2.Adam(lr=0.5, eps=0.0)))),
        # A valid lr with an invalid schedule or clipping.
        (["schedule.step.step_size", ">= 1"],
         dict(optimizer=opt(adam=pb2.Adam(lr=0.5)),
              schedule=pb2.LrSchedule(step=pb2.LrSchedule.Step(step_size=0)))),
        (["schedule.exponential.gamma", "1.5"],
         dict(optimizer=opt(adam=pb2.Adam(lr=0.5)),
              schedule=pb2.LrSchedule(exponential=pb2.LrSchedule.Exponential(gamma=1.5)))),
        (["clipping.max_norm", "-1", ">= 0"],
         dict(optimizer=opt(adam=pb2.Adam(lr=0.5)), clipping=pb2.Clipping(max_norm=-1.0))),
        (["clipping.clip_value", "nan"],
         dict(schedule=pb2.LrSchedule(constant=pb2.LrSchedule.Constant()),
              clipping=pb2.Clipping(clip_value=math.nan))),
        (["schedule.one_cycle.max_lr"],
         dict(schedule=pb2.LrSchedule(one_cycle=pb2.LrSchedule.OneCycle(total_steps=100)),
              clipping=pb2.Clipping(max_norm=0.5))),
    ]:
        run.expect_refused(fragments, **fields)
    # The session still runs with lr 0.01 under StepLR and max_norm 3, matching torch.
    run.check_session(run.get())
    run.step(30)


def test_adamw_lr_times_weight_decay_checked_on_update(optd_server, lockstep):
    pb2 = optd_server.pb2
    run = lockstep(pb2.SessionConfig(optimizer=pb2.OptimizerConfig(
        adamw=pb2.AdamW(lr=0.01, weight_decay=0.5))),
        lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.5, foreach=False))
    run.step(10)
    run.expect_refused(["adamw.lr", "adamw.weight_decay"],
                       optimizer=pb2.OptimizerConfig(adamw=pb2.AdamW(lr=3.0)))
    run.expect_refused(["adamw.lr", "adamw.weight_decay"],
                       optimizer=pb2.OptimizerConfig(adamw=pb2.AdamW(weight_decay=101.0)))
    # lr * weight_decay = 1 exactly is the boundary, accepted.
    session = run.update(optimizer=pb2.OptimizerConfig(adamw=pb2.AdamW(lr=0.02,
                                                                       weight_decay=50.0)))
    run.opt.param_groups[0].update(lr=0.02, weight_decay=50.0)
    run.check_session(session)
    run.step(1)
    session = run.update(optimizer=pb2.OptimizerConfig(adamw=pb2.AdamW(weight_decay=0.1)))
    run.opt.param_groups[0]["weight_decay"] = 0.1
    run.step(10)


def test_unknown_session_not_found(optd_server):
    pb2, stub = optd_server.pb2, optd_server.stub
    with pytest.raises(grpc.RpcError) as err:
        stub.UpdateSession(pb2.UpdateSessionRequest(
            session_id="update-session.no-such-session",
            optimizer=pb2.OptimizerConfig(adam=pb2.Adam(lr=0.1))), timeout=RPC_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.UpdateSession(pb2.UpdateSessionRequest(session_id="update-session.no-such-session",
                                                    clipping=pb2.Clipping(max_norm=1.0)),
                           timeout=RPC_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()
