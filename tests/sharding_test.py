"""Sharded sessions (#16, first part): a session spread over three real optd processes on
127.0.0.1, driven by optd.Client([a, b, c]) (optd.ShardedClient), against one optd holding the
same session whole.

Shows: the placement (PlanPlacement: large tensors split into row ranges under element-wise
optimizers, the rest balanced whole; the same plan from every shard), one worker's steps and a
4-worker SYNC session giving the same bits as one server, 4 ASYNC workers applying every step once
on every shard, two C++ workers (examples/cpp/quadratic_worker --addresses: the C++
ShardedWorker) on a session Python created, attaching from another client (addresses in any
order), the placement surviving a restart (from each shard's checkpoint), and every refusal: a
step naming another placement or none, a placement that is not its model's plan, a shard given
other tensors, optimizers and clipping that need the whole model, UpdateSession turning those on.

Run: /usr/bin/python3 -m pytest -q tests/sharding_test.py   (OPTD_BUILD_DIR picks the build)
"""

import sys
import tempfile
import threading

import grpc
import numpy as np
import pytest

from optd_testing import REPO_ROOT, load_stubs, start_optd

sys.path.insert(0, str(REPO_ROOT / "client" / "python"))
if "optd" in sys.modules and getattr(sys.modules["optd"], "__file__", None) is None:
    del sys.modules["optd"]
load_stubs()
import optd  # noqa: E402  pylint: disable=wrong-import-position

SHAPES = {"emb": (1000, 16), "w1": (16, 32), "b1": (32,), "w2": (32, 4), "b2": (4,)}
SPLIT = 4096  # emb (16000 elements) is split into three row ranges; the rest stay whole


def model(seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}


def gradients(step, worker=0):
    rng = np.random.default_rng(1000 * step + worker)
    return {n: (0.1 * rng.standard_normal(s)).astype(np.float32) for n, s in SHAPES.items()}


@pytest.fixture(scope="module")
def servers():
    started = []
    try:
        for _ in range(4):  # three shards and one whole server
            started.append(start_optd())
        yield started
    finally:
        for s in started:
            s.stop()


@pytest.fixture(scope="module")
def shards(servers):
    with optd.Client([s.address for s in servers[:3]]) as client:
        yield client


@pytest.fixture(scope="module")
def whole(servers):
    with optd.Client(servers[3].address) as client:
        yield client


def test_a_list_of_addresses_makes_a_sharded_client(shards):
    assert isinstance(shards, optd.ShardedClient)
    with pytest.raises(optd.InvalidArgumentError, match="at least two"):
        optd.Client(["127.0.0.1:1"])
    with pytest.raises(optd.InvalidArgumentError, match="repeated"):
        optd.Client(["127.0.0.1:1", "127.0.0.1:1"])


def test_the_plan_splits_large_tensors_and_balances_the_rest(shards):
    placement = shards.plan(SHAPES, "adam", lr=1e-3, split_min_elements=SPLIT)
    emb = [s for s in placement.slices if s.tensor == "emb"]
    assert [(s.row_begin, s.row_end, s.shard) for s in emb] == [(0, 333, 0), (333, 666, 1),
                                                                (666, 1000, 2)]
    assert [s.name for s in emb] == ["emb:rows:0:333", "emb:rows:333:666", "emb:rows:666:1000"]
    whole = {s.tensor: s.shard for s in placement.slices if s.tensor != "emb"}
    # Largest first, each on the least-loaded shard (ties: lowest): w1 (512) and w2 (128) on
    # shard 0 (5328 then 5840 elements), b1 on shard 1, b2 on shard 1 (5328 + 32 < 5344 + 0?).
    loads = [0, 0, 0]
    for s in placement.slices:
        rows = s.row_end - s.row_begin
        loads[s.shard] += rows * int(np.prod(s.shape[1:], dtype=np.int64))
    assert sum(loads) == sum(int(np.prod(s)) for s in SHAPES.values())
    assert max(loads) - min(loads) <= 512 + 16
    assert set(whole) == {"w1", "b1", "w2", "b2"}
    # Every shard plans the same map.
    for client in shards.clients:
        again = client._call("PlanPlacement", client.pb2.PlanPlacementRequest(
            tensors=[client.pb2.TensorInfo(name=n, shape=s) for n, s in SHAPES.items()],
            optimizer=optd.optimizer_config("adam", lr=1e-3), shards=3,
            split_min_elements=SPLIT), None)[0]
        assert again.fingerprint == placement.fingerprint
    # A per-tensor optimizer keeps every tensor whole.
    lamb = shards.plan(SHAPES, "lamb", lr=1e-3, split_min_elements=SPLIT)
    assert all(s.row_begin == 0 and s.row_end == SHAPES[s.tensor][0] for s in lamb.slices)


def run_single_worker(client, session_id, steps, **create):
    session = (client.create_session(model(), "adam", session_id=session_id, lr=1e-2,
                                     weight_decay=0.01, **create))
    result = None
    for step in range(steps):
        result = session.step(gradients(step), loss=1.0)
    return session, result


def test_one_worker_gives_the_bits_of_one_server(shards, whole):
    sharded, r_sharded = run_single_worker(shards, "one-worker", 12, split_min_elements=SPLIT)
    single, r_single = run_single_worker(whole, "one-worker", 12)
    assert r_sharded.version == r_single.version == 12
    for name in SHAPES:
        assert r_sharded.parameters[name].shape == SHAPES[name]
        np.testing.assert_array_equal(r_sharded.parameters[name], r_single.parameters[name])
    pulled = sharded.pull()
    for name in SHAPES:
        np.testing.assert_array_equal(pulled.tensors[name], r_single.parameters[name])
    assert [info.version for info in sharded.info()] == [12, 12, 12]
    sharded.delete()
    single.delete()


def test_row_sparse_gradients_are_cut_by_rows(shards, whole):
    sessions = [c.create_session(model(), "sgd", session_id="sparse", lr=0.1, **kw)
                for c, kw in ((shards, {"split_min_elements": SPLIT}), (whole, {}))]
    rows = np.array([5, 400, 401, 999], dtype=np.int64)  # shards 0, 1, 1 and 2
    grads = gradients(0)
    grads["emb"] = optd.RowSparse(rows, np.ones((4, 16), np.float32), SHAPES["emb"])
    results = [s.step(grads) for s in sessions]
    for name in SHAPES:
        np.testing.assert_array_equal(results[0].parameters[name], results[1].parameters[name])
    # Rows on one shard only: the others get an empty row set and apply nothing to emb.
    grads["emb"] = optd.RowSparse(np.array([3]), np.ones((1, 16), np.float32), SHAPES["emb"])
    results = [s.step(grads) for s in sessions]
    np.testing.assert_array_equal(results[0].parameters["emb"], results[1].parameters["emb"])
    for s in sessions:
        s.delete()


def run_sync(client, session_id, workers, steps, **create):
    ids = [f"worker-{i}" for i in range(workers)]
    session = client.create_session(
        model(1), "adam", session_id=session_id, lr=1e-2,
        consistency=optd.consistency("sync", workers=workers, worker_ids=ids), **create)
    handles = [client.session(session_id, worker_id=w) for w in ids]
    for h in handles:
        if isinstance(h, optd.Session):  # one server: the version the workers start at
            h.version = 0
    errors = []

    def work(rank):
        try:
            for step in range(steps):
                handles[rank].step(gradients(step, rank), loss=float(rank))
        except Exception as e:  # pylint: disable=broad-except
            errors.append(e)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return session


def test_a_sync_session_of_four_workers_gives_the_bits_of_one_server(shards, whole):
    sharded = run_sync(shards, "sync4", 4, 8, split_min_elements=SPLIT)
    single = run_sync(whole, "sync4", 4, 8)
    a, b = sharded.pull(), single.pull()
    assert a.version == b.version == 8
    for name in SHAPES:
        np.testing.assert_array_equal(a.tensors[name], b.tensors[name])
    sharded.delete()
    single.delete()


def test_async_workers_step_every_shard_once_per_step(shards):
    session = shards.create_session(model(2), "sgd", session_id="async4", lr=0.01,
                                    split_min_elements=SPLIT)
    errors = []

    def work(rank):
        try:
            worker = shards.session("async4", worker_id=f"w{rank}")
            for step in range(10):
                worker.step(gradients(step, rank))
        except Exception as e:  # pylint: disable=broad-except
            errors.append(e)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert [info.version for info in session.info()] == [40, 40, 40]
    # SGD without momentum: the order of steps does not matter to the sum; every gradient was
    # applied exactly once on every shard.
    expected = model(2)
    for rank in range(4):
        for step in range(10):
            for name, g in gradients(step, rank).items():
                expected[name] = expected[name] - np.float32(0.01) * g
    pulled = session.pull()
    for name in SHAPES:
        np.testing.assert_allclose(pulled.tensors[name], expected[name], rtol=1e-5, atol=1e-6)
    session.delete()


def test_cpp_workers_step_a_session_python_created(servers, shards):
    """Two C++ quadratic_worker processes (ShardedWorker) on a session created from Python, each
    given the shard addresses in another order; every step reaches every shard once."""
    import subprocess  # pylint: disable=import-outside-toplevel

    from optd_testing import build_dir  # pylint: disable=import-outside-toplevel
    binary = build_dir() / "examples" / "cpp" / "quadratic_worker"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: build the quadratic_worker target", pytrace=False)
    shards.create_session({"w": np.zeros(8, np.float32)}, "adam", session_id="cpp-quadratic",
                          lr=0.1, split_min_elements=1)
    addresses = [s.address for s in servers[:3]]
    procs = [subprocess.Popen([str(binary), "--addresses=" + ",".join(order), "--nocreate",
                               "--session=cpp-quadratic", f"--worker=cpp-{i}", "--steps=100",
                               "--max_loss=1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, order in enumerate((addresses, addresses[::-1]))]
    try:
        outcomes = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (out, err) in zip(procs, outcomes):
        assert p.returncode == 0, (out, err)
        assert "steps 100 duplicates 0" in out, out
    session = shards.session("cpp-quadratic")
    assert [info.version for info in session.info()] == [200, 200, 200]
    w = session.pull().tensors["w"]
    np.testing.assert_allclose(w, np.arange(8, dtype=np.float32) - 4, atol=0.1)
    session.delete()


def test_another_client_attaches_with_the_addresses_in_any_order(servers, shards):
    session = shards.create_session(model(), "adam", session_id="attach", lr=1e-3,
                                    split_min_elements=SPLIT)
    session.step(gradients(0))
    addresses = [s.address for s in servers[:3]][::-1]
    with optd.Client(addresses) as other:
        attached = other.session("attach", worker_id="second")
        assert attached.placement.fingerprint == session.placement.fingerprint
        result = attached.step(gradients(1))
        assert result.version == 2
        np.testing.assert_array_equal(result.parameters["emb"], session.pull().tensors["emb"])
    # Two shards only, or an address of a server not holding a shard of it.
    with optd.Client([s.address for s in servers[:2]]) as fewer:
        with pytest.raises(optd.FailedPreconditionError, match="disagree"):
            fewer.session("attach")
    session.delete()


def raw_step(client, session_id, fingerprint, tensors):
    request = client.step_request(session_id, tensors)
    request.placement_fingerprint = fingerprint
    return client.send_step(request)


def test_a_step_naming_another_placement_or_none_is_refused(shards, whole):
    session = shards.create_session(model(), "adam", session_id="refuse", lr=1e-3,
                                    split_min_elements=SPLIT)
    shard0 = shards.clients[0]
    mine = {s.name: np.zeros(tuple([s.row_end - s.row_begin] + list(s.shape[1:])), np.float32)
            for s in session.placement.slices if s.shard == 0}
    with pytest.raises(optd.FailedPreconditionError, match=r"shard 0 of 3 .*names none"):
        raw_step(shard0, "refuse", 0, mine)
    with pytest.raises(optd.FailedPreconditionError, match=r"names fingerprint 12345"):
        raw_step(shard0, "refuse", 12345, mine)
    assert [info.version for info in session.info()] == [0, 0, 0]  # nothing applied
    ok = raw_step(shard0, "refuse", session.placement.fingerprint, mine)
    assert ok.version == 1
    # A session that is not sharded refuses a fingerprint.
    plain = whole.create_session(model(), "adam", session_id="plain", lr=1e-3)
    with pytest.raises(optd.FailedPreconditionError, match="is not sharded"):
        raw_step(whole, "plain", 99, model())
    plain.delete()
    session.delete()


def create_shard(client, session_id, placement, shard, tensors, optimizer="adam", **hp):
    config = optd.session_config(optimizer, **hp)
    config.placement.CopyFrom(placement)
    config.placement.shard = shard
    return client.create_session(tensors, config, session_id=session_id)


def test_a_shard_refuses_a_placement_that_is_not_its_models_plan(shards):
    placement = shards.plan(SHAPES, "adam", lr=1e-3, split_min_elements=SPLIT)
    client = shards.clients[0]
    full = model()
    mine = {s.name: full[s.tensor][s.row_begin:s.row_end] for s in placement.slices
            if s.shard == 0}
    tampered = type(placement)()
    tampered.CopyFrom(placement)
    tampered.slices[0].row_end += 1
    tampered.slices[1].row_begin += 1
    with pytest.raises(optd.InvalidArgumentError, match="not the plan of its own model"):
        create_shard(client, "bad", tampered, 0, mine, lr=1e-3)
    other_fp = type(placement)()
    other_fp.CopyFrom(placement)
    other_fp.fingerprint ^= 1
    with pytest.raises(optd.InvalidArgumentError, match="not the plan"):
        create_shard(client, "bad", other_fp, 0, mine, lr=1e-3)
    with pytest.raises(optd.InvalidArgumentError, match=r"placement.shard = 3 is out of range"):
        create_shard(client, "bad", placement, 3, mine, lr=1e-3)
    # Shard 1's placement with shard 0's tensors.
    with pytest.raises(optd.InvalidArgumentError, match="tensors lacks emb:rows:333:666"):
        create_shard(client, "bad", placement, 1, mine, lr=1e-3)
    # A tensor of another shard too.
    extra = dict(mine, b2=full["b2"])
    if "b2" not in mine:
        with pytest.raises(optd.InvalidArgumentError, match="puts on no slice of shard 0"):
            create_shard(client, "bad", placement, 0, extra, lr=1e-3)
    # The slice's shape, not the tensor's.
    wrong = dict(mine, **{"emb:rows:0:333": full["emb"][:334]})
    with pytest.raises(optd.InvalidArgumentError, match=r"has shape \[334, 16\]"):
        create_shard(client, "bad", placement, 0, wrong, lr=1e-3)
    # The plan was made for Adam: LAMB cannot run split tensors.
    with pytest.raises(optd.FailedPreconditionError, match="lamb updates each tensor as a whole"):
        create_shard(client, "bad", placement, 0, mine, optimizer="lamb", lr=1e-3)
    assert "bad" not in [s.session_id for s in client.list_sessions()]


@pytest.mark.parametrize("optimizer,hp,match", [
    ("normalized_gd", {"lr": 0.1}, "normalized_gd with norm = global needs a sum over the whole"),
    ("prodigy", {}, "prodigy needs a sum over the whole model"),
    ("dadapt_adam", {}, "dadapt_adam needs"),
    ("dog", {}, "dog needs"),
])
def test_optimizers_that_need_the_whole_model_are_refused(shards, optimizer, hp, match):
    with pytest.raises(optd.FailedPreconditionError, match=match):
        shards.plan(SHAPES, optimizer, **hp)


def test_clipping_by_global_norm_is_refused_and_by_value_allowed(shards):
    with pytest.raises(optd.FailedPreconditionError, match="clipping.max_norm"):
        shards.plan(SHAPES, "adam", clipping={"max_norm": 1.0})
    assert shards.plan(SHAPES, "adam", clipping={"clip_value": 1.0}).shards == 3


def test_bad_plan_requests_name_the_field(shards):
    client = shards.clients[0]
    pb2 = client.pb2

    def plan(**fields):
        request = pb2.PlanPlacementRequest(optimizer=optd.optimizer_config("adam"), **fields)
        return client._call("PlanPlacement", request, None)[0]

    tensors = [pb2.TensorInfo(name="w", shape=[4, 4]), pb2.TensorInfo(name="b", shape=[4])]
    with pytest.raises(optd.InvalidArgumentError, match=r"shards = 1 is out of range: must be 2"):
        plan(tensors=tensors, shards=1)
    with pytest.raises(optd.InvalidArgumentError, match=r"shards = 65 is out of range"):
        plan(tensors=tensors, shards=65)
    with pytest.raises(optd.InvalidArgumentError, match=r"split_min_elements = -1"):
        plan(tensors=tensors, shards=2, split_min_elements=-1)
    with pytest.raises(optd.InvalidArgumentError, match=r"tensors has 0 entries"):
        plan(shards=2)
    with pytest.raises(optd.InvalidArgumentError, match=r"tensors\[1\].name \"w\" is repeated"):
        plan(tensors=[tensors[0], tensors[0]], shards=2)
    with pytest.raises(optd.InvalidArgumentError, match=r"tensors\[0\]"):
        plan(tensors=[pb2.TensorInfo(name="w", shape=[0, 4])], shards=2)
    with pytest.raises(optd.InvalidArgumentError, match="leaves shard 2 without a tensor"):
        plan(tensors=tensors, shards=3)
    with pytest.raises(optd.InvalidArgumentError, match="sgd.lr is required"):
        client._call("PlanPlacement", pb2.PlanPlacementRequest(
            tensors=tensors, shards=2, optimizer=pb2.OptimizerConfig(sgd=pb2.Sgd())), None)


def test_update_session_keeps_what_the_placement_allows(shards):
    session = shards.create_session(model(), "adam", session_id="update", lr=1e-3,
                                    split_min_elements=SPLIT)
    shard0 = shards.clients[0]
    with pytest.raises(optd.FailedPreconditionError, match="clipping.max_norm"):
        shard0.update_session("update", clipping={"max_norm": 1.0})
    shard0.update_session("update", "adam", lr=1e-2)
    assert shard0.get_session("update").config.optimizer.adam.lr == pytest.approx(1e-2)
    session.delete()


def test_the_placement_survives_a_restart_from_the_checkpoints():
    folders = [tempfile.mkdtemp(prefix=f"optd-shard{i}-") for i in range(2)]
    servers = [start_optd([f"--checkpoint_dir={f}"]) for f in folders]
    try:
        with optd.Client([s.address for s in servers]) as client:
            session = client.create_session(model(), "adam", session_id="durable", lr=1e-3,
                                            split_min_elements=SPLIT)
            session.step(gradients(0))
            for s in session.sessions:
                s.checkpoint()
            fingerprint = session.placement.fingerprint
        for s in servers:
            s.stop()
        servers = [start_optd([f"--checkpoint_dir={f}"]) for f in folders]
        with optd.Client([s.address for s in servers]) as client:
            again = client.session("durable")
            assert again.placement.fingerprint == fingerprint
            assert again.step(gradients(1)).version == 2
    finally:
        for s in servers:
            s.stop()


def test_the_readme_snippet_runs_as_written():
    import os  # pylint: disable=import-outside-toplevel
    import re  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"<!-- optd-sharding-snippet -->\n```python\n(.*?)\n```", text, re.S)
    assert snippet, "README: the Sharding snippet is missing"
    servers = [start_optd() for _ in range(3)]
    try:
        env = dict(os.environ, OPTD_SHARDS=",".join(s.address for s in servers),
                   PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "client" / "python"),
                                               str(load_stubs()[0].__file__).rsplit("/optd/", 1)[0]]))
        for _ in range(2):  # it leaves nothing behind
            run = subprocess.run(["/usr/bin/python3", "-c", snippet.group(1)], env=env,
                                 capture_output=True, text=True, timeout=300, check=False)
            assert run.returncode == 0, run.stderr
            assert "emb rows [0, 33333) on shard 0" in run.stdout
            assert "version 1 emb (100000, 64)" in run.stdout
    finally:
        for s in servers:
            s.stop()
