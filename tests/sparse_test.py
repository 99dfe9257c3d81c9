"""Row-sparse gradients against the real optd binary (reference/optimizers.md section 2).

A session holds an embedding table "emb" [50, 8] and a dense tensor "dense" [6]. 200 steps send the
embedding a row-sparse gradient WITH DUPLICATE indices (summed, as torch's coalesce) and the dense
tensor a dense gradient:

* Adam sessions match torch.optim.SparseAdam on the embedding (lazy: only touched rows and their
  moments change; eps-hat placement; tensor-level step count) and torch.optim.Adam on the dense
  tensor; Adagrad sessions match torch.optim.Adagrad with torch.sparse_coo_tensor gradients. Every
  step, rtol 1e-4 / atol 1e-5. The reply (RETURN_PARAMETERS_TOUCHED) carries exactly the touched
  rows (sorted, unique) of the embedding and the whole dense tensor.
* Rows never touched stay bit-identical to their initial values, and every touched row stays
  bit-identical to its value after its last touch (checked with full Pulls along the way).
* Section 7's SparseAdam golden vectors.
* Pull with rows returns the chosen rows in the order given; an index out of range (gradient or Pull)
  is INVALID_ARGUMENT naming the index, and nothing is applied (the optimizer state neither: parity
  continues afterwards).
* SGD without momentum: sparse == the dense-equivalent gradient, bit for bit (and SGD with momentum,
  which the contract densifies). Options torch forbids with sparse gradients are refused.

NOTE: if the Adam cases fail with every row's moments decaying, the server applies Adam densely
instead of torch SparseAdam's lazy rule: that is a server bug, not a test to loosen.

Run: /usr/bin/python3 -m pytest -q tests/sparse_test.py   (OPTD_BUILD_DIR picks the build)
"""

import dataclasses
import zlib

import grpc
import numpy as np
import pytest
import torch

from optd_testing import from_sparse_tensor, from_tensor, to_sparse_tensor, to_tensor

torch.set_num_threads(1)

RTOL = 1e-4
ATOL = 1e-5
STEPS = 200
ROWS, DIM = 50, 8
EMB_SHAPE = (ROWS, DIM)
DENSE_SHAPE = (6,)
NEVER_TOUCHED = 5  # rows ROWS-5 .. ROWS-1 never get a gradient
CHECKPOINTS = (50, 100, 150, STEPS)  # full Pulls
INVALID_AT = 120  # steps after which out-of-range requests are sent (refused, nothing applied)
RPC_TIMEOUT_S = 30.0


# ---------------------------------------------------------------------------------------------------
# Helpers.

def create(stub, pb2, session_id, optimizer, tensors):
    stub.CreateSession(pb2.CreateSessionRequest(
        session_id=session_id, config=pb2.SessionConfig(optimizer=optimizer),
        tensors=[to_tensor(n, a) for n, a in tensors]), timeout=RPC_TIMEOUT_S)


def delete(stub, pb2, session_id):
    try:
        stub.DeleteSession(pb2.DeleteSessionRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
    except grpc.RpcError:
        pass


def pull_all(stub, pb2, session_id):
    reply = stub.Pull(pb2.PullRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
    return reply.version, {t.name: from_tensor(t).copy() for t in reply.tensors}


def draw_sparse(rng, row_limit=ROWS - NEVER_TOUCHED):
    """Indices with at least one duplicate, in random order, and their rows."""
    k = int(rng.integers(1, 12))
    idx = rng.integers(0, row_limit, size=k)
    dups = rng.choice(idx, size=int(rng.integers(1, 3)))
    idx = rng.permutation(np.concatenate([idx, dups]))
    vals = (rng.standard_normal((len(idx), DIM)) * rng.uniform(0.2, 2.0)).astype(np.float32)
    return idx.astype(np.int64), vals


def torch_sparse(idx, vals, shape=EMB_SHAPE):
    return torch.sparse_coo_tensor(torch.from_numpy(idx).reshape(1, -1),
                                   torch.from_numpy(vals.copy()), shape)


def check_touched_reply(where, reply, idx, dense_name="dense"):
    """The reply carries the touched rows of emb (sorted, unique) and the whole dense tensor."""
    assert [t.name for t in reply.parameters] == ["emb", dense_name], f"{where}\n{reply}"
    emb, dense = reply.parameters
    assert tuple(emb.shape) == EMB_SHAPE, f"{where}: emb shape {emb.shape}"
    rows, values = from_sparse_tensor(emb)
    np.testing.assert_array_equal(rows, np.unique(idx), err_msg=(
        f"{where}: RETURN_PARAMETERS_TOUCHED must return exactly the touched rows, sorted unique"))
    assert not dense.HasField("rows"), f"{where}: a dense gradient's tensor must come back whole"
    return rows, values, from_tensor(dense)


# ---------------------------------------------------------------------------------------------------
# Parity with torch SparseAdam / sparse Adagrad.

@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    kind: str  # adam or adagrad
    hp: dict


CASES = [
    Case("adam-lr", "adam", dict(lr=0.01)),
    # eps = 0.05 is large next to sqrt(v): eps-hat placement (SparseAdam) != torch Adam's.
    Case("adam-betas-eps", "adam", dict(lr=0.005, beta1=0.8, beta2=0.95, eps=0.05)),
    Case("adam-maximize", "adam", dict(lr=0.01, beta1=0.85, maximize=True)),
    Case("adagrad-defaults", "adagrad", dict()),
    Case("adagrad-lrdecay-initacc", "adagrad",
         dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1, eps=1e-6)),
    Case("adagrad-maximize", "adagrad", dict(lr=0.05, maximize=True)),
]


class TorchOracle:
    def __init__(self, case, emb, dense):
        self.emb = torch.tensor(emb.copy(), requires_grad=True)
        self.dense = torch.tensor(dense.copy(), requires_grad=True)
        hp = dict(case.hp)
        if case.kind == "adam":
            kw = dict(lr=hp.get("lr", 1e-3), betas=(hp.get("beta1", 0.9), hp.get("beta2", 0.999)),
                      eps=hp.get("eps", 1e-8), maximize=hp.get("maximize", False))
            self.opts = [torch.optim.SparseAdam([self.emb], **kw),
                         torch.optim.Adam([self.dense], foreach=False, **kw)]
        else:
            self.opts = [torch.optim.Adagrad([self.emb, self.dense], foreach=False, **hp)]

    def step(self, idx, vals, dense_grad):
        self.emb.grad = torch_sparse(idx, vals)
        self.dense.grad = torch.from_numpy(dense_grad.copy())
        for o in self.opts:
            o.step()
        return self.emb.detach().numpy().copy(), self.dense.detach().numpy().copy()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_sparse_parity_with_torch(optd_server, case):
    pb2, stub = optd_server.pb2, optd_server.stub
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    emb0 = rng.standard_normal(EMB_SHAPE).astype(np.float32)
    dense0 = rng.standard_normal(DENSE_SHAPE).astype(np.float32)
    oracle = TorchOracle(case, emb0, dense0)
    msg = {"adam": pb2.Adam, "adagrad": pb2.Adagrad}[case.kind](**case.hp)
    session_id = f"sparse.{case.id}"
    create(stub, pb2, session_id, pb2.OptimizerConfig(**{case.kind: msg}),
           [("emb", emb0), ("dense", dense0)])
    try:
        last = emb0.copy()  # the server's rows as last returned (initial for never-touched rows)
        touched_ever = np.zeros(ROWS, bool)
        for step in range(1, STEPS + 1):
            idx, vals = draw_sparse(rng)
            dense_grad = rng.standard_normal(DENSE_SHAPE).astype(np.float32)
            grads = [to_sparse_tensor("emb", EMB_SHAPE, idx, vals), to_tensor("dense", dense_grad)]
            if step % 2:
                grads.reverse()  # any order
            reply = stub.Step(pb2.StepRequest(
                session_id=session_id, gradients=grads,
                return_parameters=pb2.RETURN_PARAMETERS_TOUCHED), timeout=RPC_TIMEOUT_S)
            where = f"{case.id}: step {step}"
            assert reply.version == step, where
            want_emb, want_dense = oracle.step(idx, vals, dense_grad)
            rows, values, dense = check_touched_reply(where, reply, idx)
            np.testing.assert_allclose(values, want_emb[rows], rtol=RTOL, atol=ATOL, err_msg=(
                f"{where}: touched rows {rows.tolist()} vs torch "
                f"{'SparseAdam' if case.kind == 'adam' else 'Adagrad (sparse grad)'}"))
            np.testing.assert_allclose(dense, want_dense, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{where}: dense tensor vs torch")
            last[rows] = values
            touched_ever[rows] = True
            # The sparse gradient's norm: duplicates summed first.
            coalesced = np.zeros(EMB_SHAPE, np.float64)
            np.add.at(coalesced, idx, vals.astype(np.float64))
            norm = np.sqrt(np.sum(coalesced ** 2) + np.sum(dense_grad.astype(np.float64) ** 2))
            np.testing.assert_allclose(reply.gradient_norm, norm, rtol=1e-5, err_msg=where)

            if step == INVALID_AT:
                check_out_of_range_refused(stub, pb2, session_id, step, rng)
            if step in CHECKPOINTS:
                version, full = pull_all(stub, pb2, session_id)
                assert version == step
                np.testing.assert_array_equal(full["emb"], last, err_msg=(
                    f"{where}: a row changed after its last touch (or before its first): the "
                    f"lazy rule changes only the rows in the gradient"))
                np.testing.assert_allclose(full["emb"], want_emb, rtol=RTOL, atol=ATOL,
                                           err_msg=f"{where}: whole emb vs torch")
                np.testing.assert_array_equal(full["dense"], dense, err_msg=where)
        assert not touched_ever[ROWS - NEVER_TOUCHED:].any()
        _, full = pull_all(stub, pb2, session_id)
        np.testing.assert_array_equal(full["emb"][ROWS - NEVER_TOUCHED:], emb0[ROWS - NEVER_TOUCHED:],
                                      err_msg="rows never touched must stay bit-identical")
    finally:
        delete(stub, pb2, session_id)


def check_out_of_range_refused(stub, pb2, session_id, version, rng):
    """Out-of-range indices: INVALID_ARGUMENT naming the index; nothing applied."""
    _, before = pull_all(stub, pb2, session_id)
    for bad in ([3, ROWS], [-1, 2], [0, 1, 2, 10 ** 6]):
        idx = np.asarray(bad, np.int64)
        vals = rng.standard_normal((len(idx), DIM)).astype(np.float32)
        with pytest.raises(grpc.RpcError) as err:
            stub.Step(pb2.StepRequest(
                session_id=session_id,
                gradients=[to_sparse_tensor("emb", EMB_SHAPE, idx, vals),
                           to_tensor("dense", np.ones(DENSE_SHAPE, np.float32))]),
                timeout=RPC_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        bad_index = [i for i in bad if not 0 <= i < ROWS][0]
        assert str(bad_index) in err.value.details() and "indices" in err.value.details(), (
            f"the message must name the index {bad_index}: {err.value.details()!r}")
    # Wrong data length for the rows given.
    t = to_sparse_tensor("emb", EMB_SHAPE, [1, 2], np.ones((2, DIM), np.float32))
    t.data = t.data[:-4]
    with pytest.raises(grpc.RpcError) as err:
        stub.Step(pb2.StepRequest(session_id=session_id, gradients=[
            t, to_tensor("dense", np.ones(DENSE_SHAPE, np.float32))]), timeout=RPC_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    after_version, after = pull_all(stub, pb2, session_id)
    assert after_version == version, "a refused step changed the version"
    for name in before:
        np.testing.assert_array_equal(after[name], before[name],
                                      err_msg=f"a refused step changed {name}")


# ---------------------------------------------------------------------------------------------------
# Golden vectors (reference section 7).

GOLDEN_TABLE = [[1, -1], [0.5, 0.5], [0, 2], [-1, 0]]
GOLDEN_STEPS = [
    ([0, 2], [[.1, .2], [.3, -.4]],
     [[0.9900000316226766, -1.0099999841886367], [0.5, 0.5],
      [-0.009999989459085576, 2.009999992094312], [-1.0, 0.0]]),
    ([0, 0, 3], [[.1, .1], [.2, .2], [-.5, .5]],
     [[0.9808222296111345, -1.019908048142719], [0.5, 0.5],
      [-0.009999989459085576, 2.009999992094312], [-0.9925586364706617, -0.00744136352933829]]),
    ([2], [[1, 1]],
     [[0.9808222296111345, -1.019908048142719], [0.5, 0.5],
      [-0.017771088139215373, 2.006203740753547], [-0.9925586364706617, -0.00744136352933829]]),
]


def test_sparse_adam_golden_vectors(optd_server):
    pb2, stub = optd_server.pb2, optd_server.stub
    session_id = "sparse.golden"
    table = np.asarray(GOLDEN_TABLE, np.float32)
    create(stub, pb2, session_id, pb2.OptimizerConfig(adam=pb2.Adam(lr=0.01)), [("table", table)])
    try:
        previous = table.copy()
        for k, (idx, vals, want) in enumerate(GOLDEN_STEPS, start=1):
            reply = stub.Step(pb2.StepRequest(
                session_id=session_id,
                gradients=[to_sparse_tensor("table", table.shape, idx, vals)],
                return_parameters=pb2.RETURN_PARAMETERS_TOUCHED), timeout=RPC_TIMEOUT_S)
            rows, values = from_sparse_tensor(reply.parameters[0])
            np.testing.assert_array_equal(rows, sorted(set(idx)))
            _, full = pull_all(stub, pb2, session_id)
            got = full["table"]
            np.testing.assert_array_equal(values, got[rows])
            np.testing.assert_allclose(got, np.asarray(want), rtol=1e-6, atol=1e-7,
                                       err_msg=f"SparseAdam golden vector, step {k}")
            untouched = [r for r in range(4) if r not in idx]
            np.testing.assert_array_equal(got[untouched], previous[untouched],
                                          err_msg=f"step {k}: untouched rows changed")
            previous = got.copy()
    finally:
        delete(stub, pb2, session_id)


# ---------------------------------------------------------------------------------------------------
# Pull with rows.

def test_pull_rows(optd_server):
    pb2, stub = optd_server.pb2, optd_server.stub
    rng = np.random.default_rng(21)
    emb0 = rng.standard_normal(EMB_SHAPE).astype(np.float32)
    dense0 = rng.standard_normal(DENSE_SHAPE).astype(np.float32)
    session_id = "sparse.pull-rows"
    create(stub, pb2, session_id, pb2.OptimizerConfig(adam=pb2.Adam(lr=0.01)),
           [("emb", emb0), ("dense", dense0)])
    try:
        for _ in range(3):
            idx, vals = draw_sparse(rng)
            stub.Step(pb2.StepRequest(session_id=session_id, gradients=[
                to_sparse_tensor("emb", EMB_SHAPE, idx, vals),
                to_tensor("dense", np.ones(DENSE_SHAPE, np.float32))]), timeout=RPC_TIMEOUT_S)
        _, full = pull_all(stub, pb2, session_id)

        chosen = [7, 3, 7, 0, ROWS - 1]
        reply = stub.Pull(pb2.PullRequest(session_id=session_id, rows=[
            pb2.TensorRows(name="emb", indices=chosen)]), timeout=RPC_TIMEOUT_S)
        assert reply.version == 3
        assert [t.name for t in reply.tensors] == ["emb", "dense"]
        rows, values = from_sparse_tensor(reply.tensors[0])
        assert tuple(reply.tensors[0].shape) == EMB_SHAPE
        assert rows.tolist() == chosen, "rows come back in the order given"
        np.testing.assert_array_equal(values, full["emb"][chosen])
        assert not reply.tensors[1].HasField("rows")
        np.testing.assert_array_equal(from_tensor(reply.tensors[1]), full["dense"])

        reply = stub.Pull(pb2.PullRequest(session_id=session_id, names=["emb"], rows=[
            pb2.TensorRows(name="emb", indices=[49, 1])]), timeout=RPC_TIMEOUT_S)
        assert [t.name for t in reply.tensors] == ["emb"]
        rows, values = from_sparse_tensor(reply.tensors[0])
        assert rows.tolist() == [49, 1]
        np.testing.assert_array_equal(values, full["emb"][[49, 1]])

        bad = [
            (pb2.PullRequest(session_id=session_id, rows=[
                pb2.TensorRows(name="emb", indices=[0, ROWS])]), str(ROWS)),
            (pb2.PullRequest(session_id=session_id, rows=[
                pb2.TensorRows(name="emb", indices=[-3])]), "-3"),
            (pb2.PullRequest(session_id=session_id, names=["dense"], rows=[
                pb2.TensorRows(name="emb", indices=[0])]), "emb"),
            (pb2.PullRequest(session_id=session_id, rows=[
                pb2.TensorRows(name="nope", indices=[0])]), "nope"),
        ]
        for req, needle in bad:
            with pytest.raises(grpc.RpcError) as err:
                stub.Pull(req, timeout=RPC_TIMEOUT_S)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (req, err.value)
            assert needle in err.value.details(), err.value.details()
    finally:
        delete(stub, pb2, session_id)


# ---------------------------------------------------------------------------------------------------
# SGD: sparse == dense-equivalent.

@pytest.mark.parametrize("hp", [dict(lr=0.1), dict(lr=0.05, momentum=0.9, weight_decay=0.01)],
                         ids=["sgd", "sgd-momentum-wd"])
def test_sgd_sparse_equals_dense_equivalent(optd_server, hp):
    pb2, stub = optd_server.pb2, optd_server.stub
    rng = np.random.default_rng(31 + len(hp))
    emb0 = rng.standard_normal(EMB_SHAPE).astype(np.float32)
    dense0 = rng.standard_normal(DENSE_SHAPE).astype(np.float32)
    tag = "momentum" if "momentum" in hp else "plain"
    sparse_id, dense_id = f"sparse.sgd-{tag}.sparse", f"sparse.sgd-{tag}.dense"
    for sid in (sparse_id, dense_id):
        create(stub, pb2, sid, pb2.OptimizerConfig(sgd=pb2.Sgd(**hp)),
               [("emb", emb0), ("dense", dense0)])
    try:
        for step in range(1, 101):
            idx, vals = draw_sparse(rng)
            dense_grad = rng.standard_normal(DENSE_SHAPE).astype(np.float32)
            densified = np.zeros(EMB_SHAPE, np.float32)
            np.add.at(densified, idx, vals)
            if step == 40:  # an empty row-sparse gradient: no row is touched
                idx, vals = idx[:0], vals[:0]
                densified[:] = 0
            rs = stub.Step(pb2.StepRequest(session_id=sparse_id, gradients=[
                to_sparse_tensor("emb", EMB_SHAPE, idx, vals), to_tensor("dense", dense_grad)],
                return_parameters=pb2.RETURN_PARAMETERS_TOUCHED), timeout=RPC_TIMEOUT_S)
            rd = stub.Step(pb2.StepRequest(session_id=dense_id, gradients=[
                to_tensor("emb", densified), to_tensor("dense", dense_grad)],
                return_parameters=pb2.RETURN_PARAMETERS_TOUCHED), timeout=RPC_TIMEOUT_S)
            where = f"{hp}: step {step}"
            assert rs.version == rd.version == step
            rows, values, dense = check_touched_reply(where, rs, idx)
            # A dense gradient: the whole tensor comes back.
            assert not rd.parameters[0].HasField("rows"), where
            full_dense = from_tensor(rd.parameters[0])
            np.testing.assert_array_equal(values, full_dense[rows], err_msg=(
                f"{where}: sparse gradient != its dense equivalent"))
            np.testing.assert_array_equal(dense, from_tensor(rd.parameters[1]), err_msg=where)
            np.testing.assert_allclose(rs.gradient_norm, rd.gradient_norm, rtol=1e-6, err_msg=where)
        _, a = pull_all(stub, pb2, sparse_id)
        _, b = pull_all(stub, pb2, dense_id)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=(
                f"{hp}: {name}: sparse session != dense-equivalent session"))
        if "momentum" not in hp:
            np.testing.assert_array_equal(a["emb"][ROWS - NEVER_TOUCHED:],
                                          emb0[ROWS - NEVER_TOUCHED:])
    finally:
        delete(stub, pb2, sparse_id)
        delete(stub, pb2, dense_id)


# ---------------------------------------------------------------------------------------------------
# Options torch forbids with sparse gradients.

@pytest.mark.parametrize("kind,hp,needle", [
    ("adam", dict(weight_decay=0.01), "weight_decay"),
    ("adam", dict(amsgrad=True), "amsgrad"),
    ("adamw", dict(), "weight_decay"),  # AdamW's default weight decay is 1e-2
    ("adagrad", dict(weight_decay=0.1), "weight_decay"),
], ids=["adam-wd", "adam-amsgrad", "adamw-default-wd", "adagrad-wd"])
def test_sparse_refused_where_torch_refuses(optd_server, kind, hp, needle):
    pb2, stub = optd_server.pb2, optd_server.stub
    rng = np.random.default_rng(41)
    emb0 = rng.standard_normal(EMB_SHAPE).astype(np.float32)
    dense0 = rng.standard_normal(DENSE_SHAPE).astype(np.float32)
    session_id = f"sparse.refused-{kind}-{needle}"
    msg = {"adam": pb2.Adam, "adamw": pb2.AdamW, "adagrad": pb2.Adagrad}[kind](**hp)
    create(stub, pb2, session_id, pb2.OptimizerConfig(**{kind: msg}),
           [("emb", emb0), ("dense", dense0)])
    try:
        idx, vals = draw_sparse(rng)
        with pytest.raises(grpc.RpcError) as err:
            stub.Step(pb2.StepRequest(session_id=session_id, gradients=[
                to_sparse_tensor("emb", EMB_SHAPE, idx, vals),
                to_tensor("dense", np.ones(DENSE_SHAPE, np.float32))]), timeout=RPC_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert needle in err.value.details(), err.value.details()
        version, full = pull_all(stub, pb2, session_id)
        assert version == 0
        np.testing.assert_array_equal(full["emb"], emb0)
        np.testing.assert_array_equal(full["dense"], dense0)
        # Dense gradients still work on the same session.
        r = stub.Step(pb2.StepRequest(session_id=session_id, gradients=[
            to_tensor("emb", np.ones(EMB_SHAPE, np.float32)),
            to_tensor("dense", np.ones(DENSE_SHAPE, np.float32))]), timeout=RPC_TIMEOUT_S)
        assert r.version == 1
    finally:
        delete(stub, pb2, session_id)
