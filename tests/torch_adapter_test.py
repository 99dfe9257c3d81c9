"""optd.torch.RemoteOptimizer against torch.optim 1.13 on a real optd server.

The same small MLP (same initial weights, same batches) is trained twice: locally with torch.optim
(single-tensor path) and through RemoteOptimizer. After every step every parameter must agree to
rtol 1e-4 / atol 1e-5, for Adam, AdamW, SGD with (Nesterov) momentum, Adagrad and RMSprop, with
learning-rate changes made through param_groups and through torch lr_scheduler objects. Also:
attaching to an existing session, state_dict round trips (a restored worker joins as a new
incarnation and its steps are applied), closures, param-group rules, None and sparse gradients.

Run: /usr/bin/python3 -m pytest -q tests/torch_adapter_test.py   (OPTD_BUILD_DIR picks the build)
"""

import os
import sys

import numpy as np
import pytest
import torch

from optd_testing import REPO_ROOT, load_stubs

sys.path.insert(0, str(REPO_ROOT / "client" / "python"))
if "optd" in sys.modules and getattr(sys.modules["optd"], "__file__", None) is None:
    del sys.modules["optd"]
load_stubs()
import optd  # noqa: E402  pylint: disable=wrong-import-position
import optd.torch  # noqa: E402  pylint: disable=wrong-import-position

torch.set_num_threads(1)

RTOL, ATOL = 1e-4, 1e-5
STEPS = 60


@pytest.fixture(scope="module")
def client(optd_server):
    with optd.Client(optd_server.address, timeout=30.0) as c:
        yield c


def make_mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.Tanh(),
                               torch.nn.Linear(32, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 4))


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(32, 12, generator=g)
        y = torch.randint(0, 4, (32,), generator=g)
        yield x, y


def train_step(model, opt, x, y):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def assert_same(remote_model, local_model, step):
    for (name, p), q in zip(remote_model.named_parameters(), local_model.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=RTOL, atol=ATOL,
                                   err_msg=f"{name} after step {step}")


CASES = [
    ("adam", torch.optim.Adam, dict(lr=1e-2, betas=(0.85, 0.99), eps=1e-7)),
    ("adam", torch.optim.Adam, dict(lr=3e-3, amsgrad=True, weight_decay=1e-3)),
    ("adamw", torch.optim.AdamW, dict(lr=5e-3, weight_decay=0.05)),
    ("sgd", torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    ("sgd", torch.optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3)),
    ("adagrad", torch.optim.Adagrad, dict(lr=0.05, lr_decay=1e-3)),
    ("rmsprop", torch.optim.RMSprop, dict(lr=3e-3, alpha=0.95)),
    ("rmsprop", torch.optim.RMSprop, dict(lr=1e-3, momentum=0.5, centered=True)),
]


@pytest.mark.parametrize("kind,torch_cls,hp", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_matches_torch_optim_step_by_step(client, kind, torch_cls, hp):
    remote_model, local_model = make_mlp(), make_mlp()
    remote = optd.torch.RemoteOptimizer(remote_model.named_parameters(), client=client,
                                        optimizer=kind, **hp)
    local = torch_cls(local_model.parameters(), foreach=False, **hp)
    assert isinstance(remote, torch.optim.Optimizer)
    assert remote.param_groups[0]["lr"] == hp["lr"]
    for step, (x, y) in enumerate(batches(STEPS), start=1):
        if step == 25:  # an lr change through param_groups reaches the server at the next step
            for opt in (remote, local):
                opt.param_groups[0]["lr"] *= 0.3
        loss_remote = train_step(remote_model, remote, x, y)
        loss_local = train_step(local_model, local, x, y)
        assert loss_remote == pytest.approx(loss_local, rel=1e-4, abs=1e-5)
        assert_same(remote_model, local_model, step)
        assert remote.last_result.learning_rate == pytest.approx(local.param_groups[0]["lr"])
    assert remote.session.info().version == STEPS
    assert remote.session.info().learning_rate == pytest.approx(local.param_groups[0]["lr"])
    remote.session.delete()


@pytest.mark.parametrize("make_scheduler", [
    lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5),
    lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.97),
    lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS, eta_min=1e-4),
    lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.02, total_steps=STEPS),
], ids=["StepLR", "ExponentialLR", "CosineAnnealingLR", "OneCycleLR"])
def test_torch_lr_schedulers_drive_the_server(client, make_scheduler):
    remote_model, local_model = make_mlp(3), make_mlp(3)
    remote = optd.torch.RemoteOptimizer(remote_model.named_parameters(), client=client,
                                        optimizer="adam", lr=1e-2)
    local = torch.optim.Adam(local_model.parameters(), lr=1e-2, foreach=False)
    schedulers = [make_scheduler(remote), make_scheduler(local)]
    lrs = []
    for step, (x, y) in enumerate(batches(STEPS, seed=5), start=1):
        used = local.param_groups[0]["lr"]
        train_step(remote_model, remote, x, y)
        train_step(local_model, local, x, y)
        for s in schedulers:
            s.step()
        lrs.append(remote.last_result.learning_rate)
        assert lrs[-1] == pytest.approx(used, rel=1e-12)
        assert_same(remote_model, local_model, step)
    assert len(set(np.round(lrs, 12))) > 3  # the schedule really changed the lr
    remote.session.delete()


def test_closure_loss_is_returned_and_reported(client):
    model = make_mlp()
    opt = optd.torch.RemoteOptimizer(model.parameters(), client=client, optimizer="sgd", lr=0.1)
    assert [n for n, _ in opt.named_parameters()] == [f"param.{i}" for i in range(6)]
    x, y = next(batches(1))

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and opt.last_result.version == 1
    opt.session.delete()


def test_attach_to_an_existing_session_and_state_dict(client):
    creator_model = make_mlp(7)
    creator = optd.torch.RemoteOptimizer(creator_model.named_parameters(), client=client,
                                         optimizer="adam", lr=5e-3, session_id="torch-attach",
                                         worker_id="creator")
    for x, y in batches(3):
        train_step(creator_model, creator, x, y)

    # Another worker (its own channel) attaches: the server's parameters overwrite its own.
    with optd.Client(client.address) as other_client:
        worker_model = make_mlp(99)
        worker = optd.torch.RemoteOptimizer(worker_model.named_parameters(),
                                            session=other_client.session("torch-attach",
                                                                         worker_id="w1"))
        assert worker.kind == "adam" and worker.param_groups[0]["lr"] == pytest.approx(5e-3)
        assert worker.param_groups[0]["betas"] == pytest.approx((0.9, 0.999))
        assert_same(worker_model, creator_model, 0)
        assert worker.session.version == 3
        x, y = next(batches(1, seed=9))
        train_step(worker_model, worker, x, y)
        assert worker.last_result.version == 4

        state = worker.state_dict()
        assert state["optd"]["session_id"] == "torch-attach"
        assert state["optd"]["worker_id"] == "w1" and state["optd"]["sequence"] == 1
        assert state["optd"]["worker_incarnation"] == worker.session.incarnation > 0
        assert state["optd"]["version"] == 4
        # torch's layout: the server's Adam state by parameter index, step a float32 0-d tensor.
        assert sorted(state["state"]) == list(range(6))
        assert list(state["state"][0]) == ["step", "exp_avg", "exp_avg_sq"]
        assert state["state"][0]["step"].dtype == torch.float32 and \
            state["state"][0]["step"].item() == 4.0
        assert state["state"][0]["exp_avg"].shape == worker_model[0].weight.shape
        state["param_groups"][0]["lr"] = 1e-3

        # A fresh optimizer (a restarted process) restores the worker and sends the restored lr
        # with its next step. It joins as a new incarnation of "w1": its first step is applied (a
        # restarted worker's steps were once answered as duplicates of the old process's).
        restored_model = make_mlp(99)
        restored = optd.torch.RemoteOptimizer(restored_model.named_parameters(),
                                              session=other_client.session("torch-attach"))
        restored.load_state_dict(state)
        assert restored.session.worker_id == "w1" and restored.session.incarnation is None
        assert restored.param_groups[0]["lr"] == 1e-3
        train_step(restored_model, restored, x, y)
        assert restored.last_result.sequence == 1 and not restored.last_result.duplicate
        assert restored.last_result.version == 5 and restored.last_result.rejoins == 0
        assert restored.session.incarnation > state["optd"]["worker_incarnation"]
        assert restored.last_result.learning_rate == pytest.approx(1e-3)
        assert restored.session.info().config.optimizer.adam.lr == pytest.approx(1e-3)

        # Attaching with different tensors, or with optimizer configuration, is refused.
        with pytest.raises(optd.InvalidArgumentError, match="tensors"):
            optd.torch.RemoteOptimizer(torch.nn.Linear(2, 2).named_parameters(),
                                       session=other_client.session("torch-attach"))
        with pytest.raises(optd.InvalidArgumentError, match="attaching"):
            optd.torch.RemoteOptimizer(worker_model.named_parameters(),
                                       session=other_client.session("torch-attach"), lr=0.1)
    creator.session.delete()


def test_param_group_rules(client):
    # Several torch groups are the session's parameter groups: a group's own lr reaches the
    # server's group (tests/torch_param_groups_test.py checks the numbers against torch).
    model = make_mlp()
    params = list(model.named_parameters())
    opt = optd.torch.RemoteOptimizer([{"params": params[:2]}, {"params": params[2:]}],
                                     client=client, optimizer="sgd", lr=0.1)
    assert len(opt.param_groups) == 2
    x, y = next(batches(1))
    train_step(model, opt, x, y)
    opt.param_groups[1]["lr"] = 0.5
    train_step(model, opt, x, y)
    held = opt.session.info().config.param_groups
    assert [g.optimizer.sgd.lr for g in held] == pytest.approx([0.1, 0.5])
    with pytest.raises(NotImplementedError, match="give every param group to the constructor"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})
    opt.session.delete()
    # An optimizer with model-wide state runs one set of hyperparameters for all groups.
    params = list(model.named_parameters())
    opt = optd.torch.RemoteOptimizer([{"params": params[:2]}, {"params": params[2:]}],
                                     client=client, optimizer="dadapt_sgd")
    assert len(opt.session.info().config.param_groups) == 0
    train_step(model, opt, x, y)  # equal hyperparameters: fine
    opt.param_groups[1]["lr"] = 0.5
    with pytest.raises(optd.InvalidArgumentError, match=r"param_groups\[1\]\['lr'\].*model-wide"):
        train_step(model, opt, x, y)
    opt.session.delete()


def test_none_and_sparse_gradients(client):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 4, sparse=True)
    unused = torch.nn.Parameter(torch.ones(3))
    before = emb.weight.detach().clone()
    opt = optd.torch.RemoteOptimizer([("emb", emb.weight), ("unused", unused)], client=client,
                                     optimizer="sgd", lr=1.0)
    opt.zero_grad()
    emb(torch.tensor([1, 3, 1])).sum().backward()
    assert emb.weight.grad.is_sparse and unused.grad is None
    opt.step()
    expected = before.clone()
    expected[1] -= 2.0
    expected[3] -= 1.0
    torch.testing.assert_close(emb.weight.detach(), expected)
    torch.testing.assert_close(unused.detach(), torch.ones(3))  # a zero gradient, SGD: unchanged
    opt.session.delete()


# -- state_dict in torch 1.13's layout, both ways ------------------------------------------------

STATE_CASES = [
    ("adam", torch.optim.Adam, dict(lr=1e-2, betas=(0.85, 0.99), eps=1e-7)),
    ("adam", torch.optim.Adam, dict(lr=3e-3, amsgrad=True)),
    ("adamw", torch.optim.AdamW, dict(lr=5e-3, weight_decay=0.05)),
    ("sgd", torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("adagrad", torch.optim.Adagrad, dict(lr=0.05, lr_decay=1e-3, initial_accumulator_value=0.1)),
    ("rmsprop", torch.optim.RMSprop, dict(lr=3e-3, alpha=0.95)),
    ("rmsprop", torch.optim.RMSprop, dict(lr=1e-3, momentum=0.5, centered=True)),
    ("nadam", torch.optim.NAdam, dict(lr=2e-3)),
    ("radam", torch.optim.RAdam, dict(lr=1e-3)),
    ("adadelta", torch.optim.Adadelta, dict(lr=0.5, rho=0.8)),
]
STATE_IDS = [f"{c[0]}-{i}" for i, c in enumerate(STATE_CASES)]
K_STEPS, MORE_STEPS = 7, 15


def assert_same_layout(ours, theirs):
    """Keys, order of state keys, `step` type and dtype, array dtypes and shapes, param_groups."""
    assert sorted(ours["state"]) == sorted(theirs["state"])
    for i, entry in theirs["state"].items():
        mine = ours["state"][i]
        assert list(mine) == list(entry), f"state[{i}] keys"
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                assert isinstance(mine[key], torch.Tensor), f"state[{i}][{key}]"
                assert mine[key].dtype == value.dtype and mine[key].shape == value.shape, key
            else:
                assert type(mine[key]) is type(value), f"state[{i}][{key}]: {mine[key]!r}"
    assert len(ours["param_groups"]) == len(theirs["param_groups"])
    for mine, group in zip(ours["param_groups"], theirs["param_groups"]):
        assert sorted(mine) == sorted(group)
        assert mine["params"] == group["params"]


def assert_same_values(ours, theirs):
    for i, entry in theirs["state"].items():
        for key, value in entry.items():
            mine = ours["state"][i][key]
            if isinstance(value, torch.Tensor):
                np.testing.assert_allclose(mine.numpy(), value.numpy(), rtol=RTOL, atol=ATOL,
                                           err_msg=f"state[{i}][{key}]")
            else:
                assert mine == value
    for mine, group in zip(ours["param_groups"], theirs["param_groups"]):
        for key, value in group.items():
            if key in ("params", "foreach", "capturable", "differentiable", "fused"):
                continue
            assert _close(mine[key], value), f"param_groups {key}: {mine[key]} vs {value}"


def _close(a, b):
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    return a == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize("kind,torch_cls,hp", STATE_CASES, ids=STATE_IDS)
def test_torch_state_dict_loads_into_optd_and_continues_identically(client, kind, torch_cls, hp):
    local_model = make_mlp(11)
    local = torch_cls(local_model.parameters(), foreach=False, **hp)
    data = list(batches(K_STEPS + MORE_STEPS, seed=4))
    for x, y in data[:K_STEPS]:
        train_step(local_model, local, x, y)
    saved = local.state_dict()
    remote_model = make_mlp(0)
    remote_model.load_state_dict(local_model.state_dict())
    # Another lr at creation: load_state_dict sends the saved hyperparameters too.
    start_hp = dict(hp, lr=hp["lr"] * 3)
    remote = optd.torch.RemoteOptimizer(remote_model.named_parameters(), client=client,
                                        optimizer=kind, **start_hp)
    remote.load_state_dict(saved)
    assert remote.param_groups[0]["lr"] == pytest.approx(hp["lr"])
    assert remote.session.info().version == 0  # the session's own count; the state is torch's
    assert_same_values(remote.state_dict(), local.state_dict())
    for step, (x, y) in enumerate(data[K_STEPS:], start=K_STEPS + 1):
        train_step(remote_model, remote, x, y)
        train_step(local_model, local, x, y)
        assert_same(remote_model, local_model, step)
    remote.session.delete()


@pytest.mark.parametrize("kind,torch_cls,hp", STATE_CASES, ids=STATE_IDS)
def test_optd_state_dict_loads_into_torch_and_continues_identically(client, kind, torch_cls, hp):
    remote_model, local_model = make_mlp(12), make_mlp(12)
    remote = optd.torch.RemoteOptimizer(remote_model.named_parameters(), client=client,
                                        optimizer=kind, **hp)
    reference = torch_cls(local_model.parameters(), foreach=False, **hp)
    data = list(batches(K_STEPS + MORE_STEPS, seed=6))
    for x, y in data[:K_STEPS]:
        train_step(remote_model, remote, x, y)
        train_step(local_model, reference, x, y)
    ours = remote.state_dict()
    assert_same_layout(ours, reference.state_dict())
    assert_same_values(ours, reference.state_dict())
    # A fresh torch optimizer (another lr, changed by the load) continues from optd's state.
    model = make_mlp(0)
    model.load_state_dict(remote_model.state_dict())
    local = torch_cls(model.parameters(), foreach=False, **dict(hp, lr=hp["lr"] * 5))
    local.load_state_dict(ours)
    assert local.param_groups[0]["lr"] == pytest.approx(hp["lr"])
    for step, (x, y) in enumerate(data[K_STEPS:], start=K_STEPS + 1):
        train_step(remote_model, remote, x, y)
        train_step(model, local, x, y)
        assert_same(remote_model, model, step)
    remote.session.delete()


def test_state_dict_before_any_step_matches_torch(client):
    for kind, torch_cls, hp in (STATE_CASES[0], STATE_CASES[3], STATE_CASES[4]):
        model = make_mlp(2)
        remote = optd.torch.RemoteOptimizer(model.named_parameters(), client=client,
                                            optimizer=kind, **hp)
        local = torch_cls(make_mlp(2).parameters(), **hp)
        assert_same_layout(remote.state_dict(), local.state_dict())
        remote.session.delete()


def test_sgd_without_momentum_state_dict(client):
    model, local_model = make_mlp(3), make_mlp(3)
    remote = optd.torch.RemoteOptimizer(model.named_parameters(), client=client, optimizer="sgd",
                                        lr=0.1)
    local = torch.optim.SGD(local_model.parameters(), lr=0.1)
    x, y = next(batches(1))
    train_step(model, remote, x, y)
    train_step(local_model, local, x, y)
    ours = remote.state_dict()
    assert ours["state"][0] == {"momentum_buffer": None}
    assert_same_layout(ours, local.state_dict())
    remote.load_state_dict(local.state_dict())  # loads back: nothing to carry but lr
    remote.session.delete()


def test_a_state_dict_of_another_optimizer_is_refused_with_nothing_changed(client):
    model = make_mlp(5)
    remote = optd.torch.RemoteOptimizer(model.named_parameters(), client=client, optimizer="adam",
                                        lr=1e-2)
    for x, y in batches(2):
        train_step(model, remote, x, y)
    before = remote.session.pull(optimizer_state=True)
    groups_before = [dict(g, params=None) for g in remote.param_groups]
    other_model = make_mlp(5)
    for cls, hp in ((torch.optim.SGD, dict(lr=0.3, momentum=0.9)),
                    (torch.optim.Adagrad, dict(lr=0.3)),
                    (torch.optim.RMSprop, dict(lr=0.3))):
        other = cls(other_model.parameters(), **hp)
        for x, y in batches(2):
            train_step(other_model, other, x, y)
        with pytest.raises(optd.InvalidArgumentError, match="another optimizer"):
            remote.load_state_dict(other.state_dict())
    # Adam's own layout with a state of the wrong kind inside is refused too.
    adam_model = make_mlp(5)
    adam = torch.optim.Adam(adam_model.parameters(), lr=0.3)
    train_step(adam_model, adam, *next(batches(1)))
    forged = adam.state_dict()
    forged["state"][0]["momentum_buffer"] = forged["state"][0].pop("exp_avg")
    with pytest.raises(optd.InvalidArgumentError, match="another optimizer"):
        remote.load_state_dict(forged)
    after = remote.session.pull(optimizer_state=True)
    assert after.version == before.version and after.optimizer_state == before.optimizer_state
    assert [dict(g, params=None) for g in remote.param_groups] == groups_before
    assert remote.session.info().config.optimizer.adam.lr == pytest.approx(1e-2)
    remote.session.delete()


def test_the_path_under_test_is_the_one_asked_for():
    # ctest runs this file twice: torch_adapter_test (OPTD_EXPECT_NATIVE=1: RemoteOptimizer steps
    # through the extension) and torch_adapter_pure_test (OPTD_PURE_PYTHON=1).
    if os.environ.get("OPTD_EXPECT_NATIVE") == "1":
        assert optd.native.available(), optd.native.reason()
    if os.environ.get("OPTD_PURE_PYTHON") == "1":
        assert not optd.native.available()


# ---------------------------------------------------------------------------------------------------
# torch fidelity (issue #14): the class as optimizer=, get-or-create, groups with repeated names.

def test_a_torch_optim_class_is_accepted_as_the_optimizer(client):
    remote, local = make_mlp(4), make_mlp(4)
    opt = optd.torch.RemoteOptimizer(remote.named_parameters(), client=client,
                                     optimizer=torch.optim.AdamW, lr=5e-3, weight_decay=0.05)
    ref = torch.optim.AdamW(local.parameters(), lr=5e-3, weight_decay=0.05)
    assert opt.kind == "adamw" and opt.created
    for i, (x, y) in enumerate(batches(5)):
        train_step(remote, opt, x, y)
        train_step(local, ref, x, y)
        assert_same(remote, local, i)
    opt.session.delete()
    with pytest.raises(optd.InvalidArgumentError, match="no optd counterpart"):
        optd.torch.RemoteOptimizer(remote.parameters(), client=client,
                                   optimizer=torch.optim.LBFGS)


def _get_or_create(address, session_id, rank, lr, paths, queue):
    sys.path[:0] = paths
    import optd.torch as ot  # pylint: disable=import-outside-toplevel,redefined-outer-name
    model = make_mlp(seed=100 + rank)  # every rank starts from other values
    try:
        opt = ot.RemoteOptimizer(model.named_parameters(), address=address,
                                 session_id=session_id, optimizer=torch.optim.Adam, lr=lr)
        queue.put((rank, opt.created, [p.detach().numpy().copy() for p in model.parameters()]))
    except Exception as e:  # pylint: disable=broad-except
        queue.put((rank, type(e).__name__, str(e)))


def test_every_rank_runs_the_same_script_one_creates_the_others_attach(client, optd_server):
    import multiprocessing  # pylint: disable=import-outside-toplevel
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    sid = f"get-or-create-{os.getpid()}"
    paths = [p for p in sys.path if p]
    procs = [ctx.Process(target=_get_or_create,
                         args=(optd_server.address, sid, r, 1e-3, paths, queue))
             for r in range(4)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    assert all(isinstance(r[1], bool) for r in results), results
    assert sum(r[1] for r in results) == 1, "exactly one rank creates the session"
    creator = next(r for r in results if r[1])
    for _, _, params in results:  # the others pulled the creator's parameters
        for a, b in zip(params, creator[2]):
            np.testing.assert_array_equal(a, b)
    # Another configuration under the same id: a clear error naming the difference.
    with pytest.raises(optd.AlreadyExistsError, match=r"optimizer\.adam\.lr = 0\.001 on the "
                                                      r"server, 0\.01 here"):
        optd.torch.RemoteOptimizer(make_mlp().named_parameters(), client=client, session_id=sid,
                                   optimizer="adam", lr=1e-2)
    with pytest.raises(optd.AlreadyExistsError, match="optimizer"):
        optd.torch.RemoteOptimizer(make_mlp().named_parameters(), client=client, session_id=sid,
                                   optimizer=torch.optim.SGD, lr=1e-3)
    client.delete_session(sid)


def test_groups_from_submodules_with_repeated_short_names(client):
    remote, local = make_mlp(6), make_mlp(6)
    groups = [{"params": remote[0].named_parameters()}, {"params": remote[2].named_parameters()},
              {"params": remote[4].named_parameters()}]
    opt = optd.torch.RemoteOptimizer(groups, client=client, optimizer="adam", lr=1e-2)
    assert [n for n, _ in opt.named_parameters()][:3] == ["0.weight", "0.bias", "1.weight"]
    ref = torch.optim.Adam([{"params": local[i].parameters()} for i in (0, 2, 4)], lr=1e-2)
    for i, (x, y) in enumerate(batches(5)):
        train_step(remote, opt, x, y)
        train_step(local, ref, x, y)
        assert_same(remote, local, i)
    opt.session.delete()


NONE_GRAD_CASES = [
    (torch.optim.Adam, dict(lr=1e-2)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    (torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    (torch.optim.RMSprop, dict(lr=3e-3, momentum=0.5, weight_decay=0.01)),
    (torch.optim.Adagrad, dict(lr=0.05, weight_decay=0.01)),
]


@pytest.mark.parametrize("cls,hp", NONE_GRAD_CASES, ids=[c.__name__ for c, _ in NONE_GRAD_CASES])
def test_parameters_whose_grad_is_none_are_skipped_as_torch_skips_them(client, cls, hp):
    # A frozen first layer (its .grad stays None) and a last layer whose .grad becomes None after
    # two steps: both must stay exactly where torch leaves them (no weight decay, no momentum),
    # and the rest must follow torch.optim step by step.
    remote, local = make_mlp(8), make_mlp(8)
    for m in (remote, local):
        m[0].weight.requires_grad_(False)
    frozen = remote[0].weight.detach().clone()
    opt = optd.torch.RemoteOptimizer(remote.named_parameters(), client=client, optimizer=cls, **hp)
    ref = cls(local.parameters(), **hp)
    for i, (x, y) in enumerate(batches(6, seed=3)):
        for model, o in ((remote, opt), (local, ref)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            if i >= 2:
                model[4].weight.grad = None
            o.step()
        assert remote[0].weight.grad is None
        assert torch.equal(remote[0].weight, frozen), f"the frozen layer moved at step {i}"
        if i >= 2:
            assert torch.equal(remote[4].weight, last_weight), f"a None .grad moved at step {i}"
        last_weight = remote[4].weight.detach().clone()
        assert_same(remote, local, i)
    opt.session.delete()


def test_a_step_where_every_grad_is_none_changes_nothing(client):
    model = make_mlp(9)
    opt = optd.torch.RemoteOptimizer(model.named_parameters(), client=client, optimizer="adam")
    opt.zero_grad(set_to_none=True)
    opt.step()
    assert opt.session.info().version == 0
    opt.session.delete()


@pytest.mark.parametrize("kind", ["prodigy", "dadapt_adam", "dadapt_sgd", "dog", "ldog"])
def test_optimizers_that_refuse_partial_steps_raise_before_sending(client, kind):
    # Their estimate sums over every tensor's state each step: a skipped parameter cannot be
    # emulated, so step() names the parameters whose .grad is None and sends nothing; the server
    # refuses such a step the same way when another client sends it.
    model = make_mlp(10)
    opt = optd.torch.RemoteOptimizer(model.named_parameters(), client=client, optimizer=kind)
    x, y = next(iter(batches(1)))
    train_step(model, opt, x, y)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    model[4].weight.grad = None
    with pytest.raises(optd.InvalidArgumentError, match=f"{kind} refuses a partial step.*4.weight"):
        opt.step()
    assert opt.session.info().version == 1
    with pytest.raises(optd.InvalidArgumentError, match=f"{kind} refuses a partial step"):
        opt.session.step({"0.weight": np.zeros((32, 12), np.float32)})
    assert opt.session.info().version == 1
    opt.session.delete()
