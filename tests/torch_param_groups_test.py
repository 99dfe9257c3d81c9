"""Parameter groups with their own hyperparameters (issue #14, item 3), against torch 1.13 as the
oracle: optd.torch.RemoteOptimizer with param groups of different lr / weight_decay / betas /
momentum follows torch.optim step by step (Adam, AdamW, SGD with momentum); torch schedulers act
on each group (StepLR; LambdaLR with a lambda per group); groups built from submodules'
named_parameters() (repeated short names); the groups survive a checkpoint and a server restart
and GetSession shows them; add_param_group on a live session is refused with a message saying
what to do; malformed groups are refused naming the field. Runs on the path the environment
picks (native by default).
"""

import socket
import sys
import time

import numpy as np
import pytest
import torch

from optd_testing import REPO_ROOT, OptdProcess, load_stubs

sys.path.insert(0, str(REPO_ROOT / "client" / "python"))
if "optd" in sys.modules and getattr(sys.modules["optd"], "__file__", None) is None:
    del sys.modules["optd"]
load_stubs()
import optd  # noqa: E402  pylint: disable=wrong-import-position
import optd.torch  # noqa: E402  pylint: disable=wrong-import-position

torch.set_num_threads(1)
RTOL, ATOL = 1e-4, 1e-5


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
        yield torch.randn(32, 12, generator=g), torch.randint(0, 4, (32,), generator=g)


def train_step(model, opt, x, y):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def assert_same(remote, local, step):
    for (name, p), q in zip(remote.named_parameters(), local.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=RTOL, atol=ATOL,
                                   err_msg=f"{name} after step {step}")


def two_groups(model, named, first, second):
    """Group 0: the first Linear (+ the last bias); group 1: the rest, with their own options."""
    params = list(model.named_parameters() if named else model.parameters())
    return [dict(params=params[:2] + params[5:], **first), dict(params=params[2:5], **second)]


GROUP_CASES = [
    ("adam", torch.optim.Adam, dict(lr=1e-2), dict(lr=3e-3, weight_decay=0.01, betas=(0.8, 0.95))),
    ("adamw", torch.optim.AdamW, dict(lr=5e-3, weight_decay=0.05),
     dict(lr=2e-2, weight_decay=0.5, eps=1e-6)),
    ("sgd", torch.optim.SGD, dict(lr=0.05, momentum=0.9),
     dict(lr=0.01, momentum=0.5, weight_decay=1e-3, nesterov=True)),
]


@pytest.mark.parametrize("kind,cls,first,second", GROUP_CASES, ids=[c[0] for c in GROUP_CASES])
def test_two_groups_with_their_own_hyperparameters_match_torch(client, kind, cls, first, second):
    remote, local = make_mlp(1), make_mlp(1)
    opt = optd.torch.RemoteOptimizer(two_groups(remote, True, first, second), client=client,
                                     optimizer=kind, **({"lr": 0.05} if kind == "sgd" else {}))
    ref = cls(two_groups(local, False, first, second), **({"lr": 0.05} if kind == "sgd" else {}))
    info = opt.session.info()
    assert len(info.config.param_groups) == 2
    assert list(info.config.param_groups[1].tensors) == ["2.weight", "2.bias", "4.weight"]
    group1 = getattr(info.config.param_groups[1].optimizer, kind)
    assert group1.lr == pytest.approx(second["lr"])
    for i, (x, y) in enumerate(batches(8)):
        train_step(remote, opt, x, y)
        train_step(local, ref, x, y)
        assert_same(remote, local, i)
    sd = opt.state_dict()
    assert [g["lr"] for g in sd["param_groups"]] == [first["lr"], second["lr"]]
    opt.session.delete()


@pytest.mark.parametrize("make_scheduler", [
    lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    lambda o: torch.optim.lr_scheduler.LambdaLR(o, [lambda e: 0.9 ** e, lambda e: 1.0 / (1 + e)]),
], ids=["StepLR", "LambdaLR per group"])
def test_torch_schedulers_act_on_each_group(client, make_scheduler):
    remote, local = make_mlp(2), make_mlp(2)
    first, second = dict(lr=1e-2), dict(lr=4e-2, weight_decay=0.01)
    opt = optd.torch.RemoteOptimizer(two_groups(remote, True, first, second), client=client,
                                     optimizer="adam")
    ref = torch.optim.Adam(two_groups(local, False, first, second))
    schedulers = [make_scheduler(opt), make_scheduler(ref)]
    for i, (x, y) in enumerate(batches(7, seed=4)):
        train_step(remote, opt, x, y)
        train_step(local, ref, x, y)
        for s in schedulers:
            s.step()
        assert_same(remote, local, i)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["lr"] for g in ref.param_groups])
    opt.session.delete()


def test_groups_from_submodules_with_their_own_learning_rates(client):
    remote, local = make_mlp(3), make_mlp(3)
    groups = [{"params": remote[0].named_parameters(), "lr": 1e-2},
              {"params": remote[2].named_parameters(), "lr": 3e-2},
              {"params": remote[4].named_parameters(), "lr": 1e-3, "weight_decay": 0.1}]
    opt = optd.torch.RemoteOptimizer(groups, client=client, optimizer="adamw")
    ref = torch.optim.AdamW([{"params": local[0].parameters(), "lr": 1e-2},
                             {"params": local[2].parameters(), "lr": 3e-2},
                             {"params": local[4].parameters(), "lr": 1e-3, "weight_decay": 0.1}])
    assert [list(g.tensors) for g in opt.session.info().config.param_groups] == [
        ["0.weight", "0.bias"], ["1.weight", "1.bias"], ["2.weight", "2.bias"]]
    for i, (x, y) in enumerate(batches(5, seed=5)):
        train_step(remote, opt, x, y)
        train_step(local, ref, x, y)
        assert_same(remote, local, i)
    opt.session.delete()


def test_add_param_group_on_a_live_session_says_what_to_do(client):
    model = make_mlp(4)
    opt = optd.torch.RemoteOptimizer(list(model[0].named_parameters()), client=client,
                                     optimizer="adam")
    train_step(model, opt, *next(iter(batches(1))))
    with pytest.raises(NotImplementedError, match="give every param group to the constructor"):
        opt.add_param_group({"params": list(model[2].parameters()), "lr": 0.1})
    assert len(opt.param_groups) == 1
    opt.session.delete()


def test_every_rank_attaches_to_the_same_groups_or_is_told_the_difference(client):
    model = make_mlp(5)
    groups = lambda second_lr: [  # noqa: E731
        {"params": list(model[0].named_parameters())},
        {"params": list(model[2].named_parameters()), "lr": second_lr}]
    first = optd.torch.RemoteOptimizer(groups(0.1), client=client, optimizer="adam",
                                       session_id="groups-goc")
    second = optd.torch.RemoteOptimizer(groups(0.1), client=client, optimizer="adam",
                                        session_id="groups-goc")
    assert first.created and not second.created
    assert second.param_groups[1]["lr"] == pytest.approx(0.1)
    with pytest.raises(optd.AlreadyExistsError, match=r"param_groups\[1\]\.optimizer\.adam\.lr"):
        optd.torch.RemoteOptimizer(groups(0.2), client=client, optimizer="adam",
                                   session_id="groups-goc")
    first.session.delete()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_groups_survive_a_checkpoint_and_a_restart(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    args = [f"--listen={address}", f"--checkpoint_dir={tmp_path}"]
    process = OptdProcess(extra_args=args).start()
    try:
        remote, local = make_mlp(6), make_mlp(6)
        first, second = dict(lr=1e-2), dict(lr=3e-2, betas=(0.7, 0.9))
        with optd.Client(address, timeout=30.0) as c:
            opt = optd.torch.RemoteOptimizer(two_groups(remote, True, first, second), client=c,
                                             optimizer="adam", session_id="groups-durable")
            ref = torch.optim.Adam(two_groups(local, False, first, second))
            data = list(batches(6, seed=6))
            for i, (x, y) in enumerate(data[:3]):
                train_step(remote, opt, x, y)
                train_step(local, ref, x, y)
            opt.session.checkpoint()
        process.proc.kill()
        process.proc.wait(10)
        process.stop()
        for attempt in range(50):  # the port may be busy for a moment
            try:
                process = OptdProcess(extra_args=args).start()
                break
            except Exception:  # pylint: disable=broad-except
                if attempt == 49:
                    raise
                time.sleep(0.1)
        with optd.Client(address, timeout=30.0) as c:
            info = c.get_session("groups-durable")
            assert len(info.config.param_groups) == 2
            assert info.config.param_groups[1].optimizer.adam.beta1 == pytest.approx(0.7)
            attached = optd.torch.RemoteOptimizer(two_groups(remote, True, {}, {}), client=c,
                                                  session="groups-durable")
            assert [g["lr"] for g in attached.param_groups] == pytest.approx([1e-2, 3e-2])
            for i, (x, y) in enumerate(data[3:], start=3):
                train_step(remote, attached, x, y)
                train_step(local, ref, x, y)
                assert_same(remote, local, i)
            # A fork of the checkpoint keeps them too.
            fork = c.create_session_from_checkpoint("groups-fork", from_session="groups-durable")
            assert len(fork.info().config.param_groups) == 2
    finally:
        process.stop()


BAD_GROUPS = [
    ([{"tensors": ["nope"], "lr": 0.1}], "config.param_groups[0].tensors[0] \"nope\" is not one of"),
    ([{"tensors": ["w"], "lr": 0.1}, {"tensors": ["w"]}],
     "config.param_groups[1].tensors[0] \"w\" is already in config.param_groups[0]"),
    ([{"tensors": ["w"], "lr": -1.0}], "config.param_groups[0].optimizer.adam.lr = -1"),
    ([{"tensors": ["w"], "betas": (0.9, 1.5)}], "config.param_groups[0].optimizer.adam.beta2"),
]


@pytest.mark.parametrize("groups,phrase", BAD_GROUPS, ids=[p for _, p in BAD_GROUPS])
def test_malformed_groups_are_refused_naming_the_field(client, groups, phrase):
    tensors = {"w": np.zeros(3, np.float32), "b": np.zeros(2, np.float32)}
    with pytest.raises(optd.InvalidArgumentError) as e:
        client.create_session(tensors, "adam", param_groups=groups)
    assert phrase in str(e.value), str(e.value)


def test_other_refusals(client):
    tensors = {"w": np.zeros(3, np.float32), "b": np.zeros(2, np.float32)}
    pb2 = client.pb2
    config = optd.config.session_config("adam", param_groups=[{"tensors": ["w"]}])
    config.param_groups[0].optimizer.Clear()
    config.param_groups[0].optimizer.sgd.lr = 0.1
    with pytest.raises(optd.InvalidArgumentError,
                       match=r"param_groups\[0\]\.optimizer is sgd but config.optimizer is adam"):
        client.create_session(tensors, config)
    config = optd.config.session_config("adam")
    config.param_groups.append(pb2.ParamGroup())
    with pytest.raises(optd.InvalidArgumentError, match=r"param_groups\[0\]\.tensors is empty"):
        client.create_session(tensors, config)
    with pytest.raises(optd.InvalidArgumentError, match="prodigy keeps model-wide state"):
        client.create_session(tensors, "prodigy", param_groups=[{"tensors": ["w"]}])
    session = client.create_session(tensors, "adam", lr=0.1,
                                    param_groups=[{"tensors": ["w"], "lr": 0.01}])
    with pytest.raises(optd.InvalidArgumentError, match="index = 1 is out of range"):
        client.update_session(session.session_id, "adam", param_groups={1: {"lr": 0.5}})
    with pytest.raises(optd.InvalidArgumentError, match=r"param_groups\[0\]\.optimizer\.adam\.lr"):
        client.update_session(session.session_id, "adam", param_groups={0: {"lr": -0.5}})
    with pytest.raises(optd.InvalidArgumentError, match="amsgrad"):
        client.update_session(session.session_id, "adam", param_groups={0: {"amsgrad": True}})
    info = client.update_session(session.session_id, "adam", param_groups={0: {"lr": 0.5}})
    assert info.config.param_groups[0].optimizer.adam.lr == 0.5
    assert info.config.optimizer.adam.lr == pytest.approx(0.1)
    session.delete()


def test_keys_the_optimizer_does_not_have_stay_local(client):
    # A group carried over from another optimizer (a scheduler's initial_lr, torch-only options)
    # is accepted as torch accepts it: those keys stay in the local group, not in the session.
    model = make_mlp(7)
    opt = optd.torch.RemoteOptimizer(
        [{"params": model[0].named_parameters(), "lr": 0.01, "initial_lr": 0.01,
          "foreach": None},
         {"params": model[2].named_parameters(), "lr": 0.02}], client=client, optimizer="adam")
    assert opt.param_groups[0]["initial_lr"] == 0.01
    assert [g.optimizer.adam.lr for g in opt.session.info().config.param_groups] == \
        pytest.approx([0.01, 0.02])
    train_step(model, opt, *next(iter(batches(1))))
    opt.session.delete()
