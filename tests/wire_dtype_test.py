"""Wire encodings BF16 and F16 (optd.v1.DType) against the real optd binary.

The expected encodings are computed here with numpy: F16 with numpy's float32 -> float16 cast (IEEE
binary16, round to nearest, ties to even, subnormals), BF16 with round-to-nearest-even on the uint32
bits (both cross-checked against torch's conversions). The server must:

* decode BF16 / F16 exactly: initial values (CreateSession, then Pull as F32: no arithmetic at all)
  and gradients (SGD lr = 1 from zero parameters: the new parameters are -g, exactly), including
  signed zeros, F16 subnormals from 2^-24, BF16's smallest normals and subnormals, and the largest
  finite values; mixed dtypes within one request; row-sparse gradients in F16 with duplicates;
* encode replies (Pull, Step with return_dtype, row-sparse Pull and RETURN_PARAMETERS_TOUCHED) bit
  for bit as numpy rounds the float32 parameters: ties to even, values rounding to subnormals or to
  zero, overflow to Inf, and thousands of random float32 values;
* refuse gradients holding NaN or Inf with INVALID_ARGUMENT whatever the dtype (quiet and signalling
  NaN, +-Inf; dense and row-sparse), applying nothing; refuse a data length that does not match the
  dtype and an unknown dtype.

Run: /usr/bin/python3 -m pytest -q tests/wire_dtype_test.py   (OPTD_BUILD_DIR picks the build)
"""

import grpc
import numpy as np
import pytest
import torch

from optd_testing import from_tensor, to_tensor

RPC_TIMEOUT_S = 30.0


# ---------------------------------------------------------------------------------------------------
# Reference encoders (numpy).

def f32_bits(x):
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def bits_f32(b):
    return np.ascontiguousarray(b, dtype=np.uint32).view(np.float32)


def bf16_rne(x):
    """float32 -> bfloat16 bits, round to nearest, ties to even; NaN -> quiet NaN."""
    b = f32_bits(x).astype(np.uint64)
    rounded = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    quiet_nan = ((b >> 16) | 0x0040).astype(np.uint16)
    return np.where(np.isnan(np.asarray(x, np.float32)), quiet_nan, rounded)


def bf16_decode(bits):
    return bits_f32(np.asarray(bits, np.uint16).astype(np.uint32) << 16)


def f16_rne(x):
    with np.errstate(over="ignore"):  # overflow to Inf is what we want
        return np.asarray(x, np.float32).astype(np.float16).view(np.uint16)


def f16_decode(bits):
    return np.asarray(bits, np.uint16).view(np.float16).astype(np.float32)


DECODE = {"BF16": bf16_decode, "F16": f16_decode}
ENCODE = {"BF16": bf16_rne, "F16": f16_rne}


def wire_tensor(pb2, name, dtype, bits, shape=None):
    bits = np.asarray(bits, np.uint16)
    return pb2.Tensor(name=name, shape=shape if shape is not None else bits.shape,
                      dtype=pb2.DType.Value("DTYPE_" + dtype), data=bits.astype("<u2").tobytes())


def wire_bits(pb2, tensor, dtype):
    """The uint16 elements of a BF16/F16 reply tensor (checking its dtype and length)."""
    assert tensor.dtype == pb2.DType.Value("DTYPE_" + dtype), (
        f"{tensor.name}: dtype {tensor.dtype}, asked for {dtype}")
    n = int(np.prod(tensor.shape[1:] if tensor.HasField("rows") else tensor.shape, dtype=np.int64))
    if tensor.HasField("rows"):
        n *= len(tensor.rows.indices)
    assert len(tensor.data) == 2 * n, f"{tensor.name}: {len(tensor.data)} bytes for {n} elements"
    return np.frombuffer(tensor.data, dtype="<u2")


def assert_bits_equal(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, (
        f"{what}: {bad.size} of {got.size} elements differ; first: "
        + ", ".join(f"[{i}] got 0x{int(got[i]):x} want 0x{int(want[i]):x}" for i in bad[:8]))


# ---------------------------------------------------------------------------------------------------
# Value sets.

F16_SPECIAL = np.array([
    0x0000, 0x8000,                  # +-0
    0x0001, 0x0002, 0x0003, 0x0155,  # subnormals from 2^-24
    0x03FF, 0x83FF, 0x8001,          # largest subnormal, negative subnormals
    0x0400, 0x8400,                  # smallest normal 2^-14
    0x3C00, 0x3C01, 0xBC00, 0x3555,  # 1, 1 + 2^-10, -1, ~1/3
    0x7BFF, 0xFBFF,                  # +-65504
], np.uint16)

BF16_NORMAL = np.array([
    0x0000, 0x8000,                  # +-0
    0x0080, 0x8080, 0x0081,          # smallest normals (2^-126)
    0x3F80, 0x3F81, 0xBF80, 0x3EAB,  # 1, 1 + 2^-7, -1, ~1/3
    0x7F7F, 0xFF7F,                  # largest finite
    0x4049, 0xC2F7,
], np.uint16)

BF16_SUBNORMAL = np.array([0x0001, 0x0002, 0x007F, 0x8001, 0x8040, 0x0055], np.uint16)  # float32 subnormals


def random_finite_bits(rng, n, dtype):
    """Random finite BF16/F16 bit patterns (every exponent)."""
    exp_mask = 0x7F80 if dtype == "BF16" else 0x7C00
    b = rng.integers(0, 1 << 16, size=4 * n, dtype=np.uint32).astype(np.uint16)
    return b[(b & exp_mask) != exp_mask][:n]


def encode_values(rng):
    """float32 values that exercise rounding: ties both ways, subnormal results, overflow."""
    f = np.float32
    bf16_ties = bits_f32(np.array([
        0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0xBF808000, 0xBF818000,
        0x7F7F8000, 0x7F7F7FFF, 0xFF7F8000,              # tie at the top rounds to Inf (odd below)
        0x00008000, 0x00018000, 0x00007FFF, 0x80008000,  # float32 subnormals
        0x007FFFFF, 0x00800000, 0x40490FDB,
    ], np.uint32))
    f16_cases = np.array([
        1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 1 + 2.0 ** -11 + 2.0 ** -23, -(1 + 3 * 2.0 ** -11),
        2.0 ** -25, 3 * 2.0 ** -25, 5 * 2.0 ** -25, 2.0 ** -25 * (1 + 2.0 ** -20), -(3 * 2.0 ** -25),
        2.0 ** -14, 2.0 ** -14 - 2.0 ** -25, 1023.5 * 2.0 ** -24, 1e-8, 2.0 ** -24,
        65504, 65519.99, 65520, -65520, 65536, 1e5, 3.0e38, 1e-40, 0.1, -0.0, 0.0,
    ], np.float64).astype(f)
    random_bits = rng.integers(0, 1 << 32, size=6000, dtype=np.uint64).astype(np.uint32)
    random_vals = bits_f32(random_bits)
    random_vals = random_vals[np.isfinite(random_vals)][:2000]
    # Values in F16's range with random low bits: exercises F16 rounding at every exponent.
    near = (rng.standard_normal(1000) * np.exp2(rng.integers(-26, 16, size=1000))).astype(f)
    return np.concatenate([bf16_ties, f16_cases, random_vals, near]).astype(f)


# ---------------------------------------------------------------------------------------------------
# Session helpers.

def sgd(pb2, lr=1.0):
    return pb2.SessionConfig(optimizer=pb2.OptimizerConfig(sgd=pb2.Sgd(lr=lr)))


def create(stub, pb2, session_id, tensors, lr=1.0):
    stub.CreateSession(pb2.CreateSessionRequest(session_id=session_id, config=sgd(pb2, lr),
                                                tensors=tensors), timeout=RPC_TIMEOUT_S)


def delete(stub, pb2, session_id):
    try:
        stub.DeleteSession(pb2.DeleteSessionRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
    except grpc.RpcError:
        pass


def pull_f32(stub, pb2, session_id):
    reply = stub.Pull(pb2.PullRequest(session_id=session_id), timeout=RPC_TIMEOUT_S)
    return reply.version, {t.name: from_tensor(t).copy() for t in reply.tensors}


# ---------------------------------------------------------------------------------------------------
# The reference encoders themselves (so a failure below is the server's).

def test_reference_encoders_agree_with_torch():
    rng = np.random.default_rng(1)
    x = encode_values(rng)
    t = torch.from_numpy(x.copy())
    assert_bits_equal(bf16_rne(x), t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16),
                      "numpy BF16 RNE vs torch")
    assert_bits_equal(f16_rne(x), t.to(torch.float16).view(torch.int16).numpy().view(np.uint16),
                      "numpy F16 vs torch")
    for dtype in ("BF16", "F16"):
        b = random_finite_bits(rng, 5000, dtype)
        assert_bits_equal(ENCODE[dtype](DECODE[dtype](b)), b, f"{dtype} decode/encode round trip")
    assert bf16_rne(np.float32(1 + 2.0 ** -8)) == 0x3F80      # tie to even (down)
    assert bf16_rne(np.float32(1 + 3 * 2.0 ** -8)) == 0x3F82  # tie to even (up)
    assert f16_rne(np.float32(2.0 ** -25)) == 0x0000
    assert f16_rne(np.float32(3 * 2.0 ** -25)) == 0x0002
    assert f16_rne(np.float32(65520)) == 0x7C00


# ---------------------------------------------------------------------------------------------------
# Decoding.

def decode_sets(rng):
    return {
        "F16": np.concatenate([F16_SPECIAL, random_finite_bits(rng, 3000, "F16")]),
        "BF16": np.concatenate([BF16_NORMAL, random_finite_bits(rng, 3000, "BF16")]),
        "BF16-subnormal": BF16_SUBNORMAL,
    }


@pytest.mark.parametrize("which", ["F16", "BF16", "BF16-subnormal"])
def test_initial_values_decode_exactly(optd_server, which):
    pb2, stub = optd_server.pb2, optd_server.stub
    dtype = which.split("-")[0]
    bits = decode_sets(np.random.default_rng(2))[which]
    session_id = f"wire.init-{which}"
    create(stub, pb2, session_id, [wire_tensor(pb2, "x", dtype, bits),
                                   wire_tensor(pb2, "m", dtype, bits[:6].reshape(2, 3))])
    try:
        _, values = pull_f32(stub, pb2, session_id)
        assert_bits_equal(f32_bits(values["x"]), f32_bits(DECODE[dtype](bits)),
                          f"{which} initial values decoded")
        assert values["m"].shape == (2, 3)
        assert_bits_equal(f32_bits(values["m"]).ravel(), f32_bits(DECODE[dtype](bits[:6])),
                          f"{which} initial matrix decoded")
        # And back: Pull in the same dtype returns the very same bits.
        reply = stub.Pull(pb2.PullRequest(session_id=session_id, names=["x"],
                                          dtype=pb2.DType.Value("DTYPE_" + dtype)),
                          timeout=RPC_TIMEOUT_S)
        assert_bits_equal(wire_bits(pb2, reply.tensors[0], dtype), bits, f"{which} round trip")
    finally:
        delete(stub, pb2, session_id)


@pytest.mark.parametrize("which", ["F16", "BF16", "BF16-subnormal"])
def test_gradients_decode_exactly(optd_server, which):
    """SGD lr = 1 from zero parameters: after one step the parameters are exactly -g."""
    pb2, stub = optd_server.pb2, optd_server.stub
    dtype = which.split("-")[0]
    bits = decode_sets(np.random.default_rng(3))[which]
    session_id = f"wire.grad-{which}"
    create(stub, pb2, session_id, [to_tensor("x", np.zeros(bits.shape, np.float32))])
    try:
        reply = stub.Step(pb2.StepRequest(session_id=session_id,
                                          gradients=[wire_tensor(pb2, "x", dtype, bits)]),
                          timeout=RPC_TIMEOUT_S)
        want = np.float32(0) - DECODE[dtype](bits)  # -g; +0 for a zero gradient of either sign
        assert_bits_equal(f32_bits(from_tensor(reply.parameters[0])), f32_bits(want),
                          f"{which} gradient decoded (SGD lr=1 from 0: p = -g)")
        # Pull in the gradient's dtype: -g is representable, so it comes back exactly.
        reply = stub.Pull(pb2.PullRequest(session_id=session_id,
                                          dtype=pb2.DType.Value("DTYPE_" + dtype)),
                          timeout=RPC_TIMEOUT_S)
        assert_bits_equal(wire_bits(pb2, reply.tensors[0], dtype), ENCODE[dtype](want),
                          f"{which}: -g pulled as {dtype}")
    finally:
        delete(stub, pb2, session_id)


def test_mixed_dtypes_and_sparse_f16_gradients(optd_server):
    pb2, stub = optd_server.pb2, optd_server.stub
    rng = np.random.default_rng(4)
    session_id = "wire.mixed"
    create(stub, pb2, session_id, [to_tensor("a", np.zeros(16, np.float32)),
                                   to_tensor("b", np.zeros(16, np.float32)),
                                   to_tensor("c", np.zeros(16, np.float32)),
                                   to_tensor("emb", np.zeros((10, 4), np.float32))])
    try:
        ga = random_finite_bits(rng, 16, "BF16")
        gb = random_finite_bits(rng, 16, "F16")
        gc = rng.standard_normal(16).astype(np.float32)
        # Row-sparse F16 with a duplicate: small integers and halves, so the sum is exact.
        idx = [7, 2, 7, 0]
        rows = (rng.integers(-64, 65, size=(4, 4)) / 2).astype(np.float32)
        emb = wire_tensor(pb2, "emb", "F16", f16_rne(rows).ravel(), shape=(10, 4))
        emb.rows.indices.extend(idx)
        reply = stub.Step(pb2.StepRequest(
            session_id=session_id, return_parameters=pb2.RETURN_PARAMETERS_TOUCHED,
            return_dtype=pb2.DTYPE_F16,
            gradients=[emb, to_tensor("c", gc), wire_tensor(pb2, "b", "F16", gb),
                       wire_tensor(pb2, "a", "BF16", ga)]), timeout=RPC_TIMEOUT_S)
        _, values = pull_f32(stub, pb2, session_id)
        assert_bits_equal(f32_bits(values["a"]), f32_bits(np.float32(0) - bf16_decode(ga)), "a")
        assert_bits_equal(f32_bits(values["b"]), f32_bits(np.float32(0) - f16_decode(gb)), "b")
        assert_bits_equal(f32_bits(values["c"]), f32_bits(np.float32(0) - gc), "c")
        dense_emb = np.zeros((10, 4), np.float32)
        np.add.at(dense_emb, idx, rows)
        np.testing.assert_array_equal(values["emb"], -dense_emb)

        # The reply, in F16: a, b, c whole; emb only rows 0, 2, 7.
        assert [t.name for t in reply.parameters] == ["a", "b", "c", "emb"]
        for t in reply.parameters[:3]:
            assert not t.HasField("rows")
            assert_bits_equal(wire_bits(pb2, t, "F16"), f16_rne(values[t.name]), f"reply {t.name}")
        t = reply.parameters[3]
        assert list(t.rows.indices) == [0, 2, 7]
        assert_bits_equal(wire_bits(pb2, t, "F16"), f16_rne(values["emb"][[0, 2, 7]]).ravel(),
                          "reply emb rows")
    finally:
        delete(stub, pb2, session_id)


# ---------------------------------------------------------------------------------------------------
# Encoding.

@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_replies_round_like_numpy(optd_server, dtype):
    pb2, stub = optd_server.pb2, optd_server.stub
    rng = np.random.default_rng(5)
    x = encode_values(rng)
    want = ENCODE[dtype](x)
    code = pb2.DType.Value("DTYPE_" + dtype)
    session_id = f"wire.encode-{dtype}"
    create(stub, pb2, session_id, [to_tensor("x", x), to_tensor("m", x[:60].reshape(15, 4))])
    try:
        reply = stub.Pull(pb2.PullRequest(session_id=session_id, dtype=code), timeout=RPC_TIMEOUT_S)
        assert [t.name for t in reply.tensors] == ["x", "m"]
        assert list(reply.tensors[0].shape) == [len(x)]
        assert_bits_equal(wire_bits(pb2, reply.tensors[0], dtype), want, f"Pull as {dtype}")
        assert_bits_equal(wire_bits(pb2, reply.tensors[1], dtype), want[:60], f"Pull m as {dtype}")

        # Row-sparse Pull in the dtype.
        chosen = [14, 0, 3]
        reply = stub.Pull(pb2.PullRequest(session_id=session_id, dtype=code, names=["m"],
                                          rows=[pb2.TensorRows(name="m", indices=chosen)]),
                          timeout=RPC_TIMEOUT_S)
        assert list(reply.tensors[0].rows.indices) == chosen
        assert_bits_equal(wire_bits(pb2, reply.tensors[0], dtype),
                          want[:60].reshape(15, 4)[chosen].ravel(), f"Pull rows as {dtype}")

        # A Step reply in the dtype (zero gradient: the parameters do not move).
        reply = stub.Step(pb2.StepRequest(
            session_id=session_id, return_dtype=code,
            gradients=[to_tensor("x", np.zeros_like(x)), to_tensor("m", np.zeros((15, 4)))]),
            timeout=RPC_TIMEOUT_S)
        assert reply.version == 1
        assert_bits_equal(wire_bits(pb2, reply.parameters[0], dtype), want,
                          f"Step reply as {dtype}")
        _, values = pull_f32(stub, pb2, session_id)
        assert_bits_equal(f32_bits(values["x"]), f32_bits(x), "a zero SGD step moved parameters")
    finally:
        delete(stub, pb2, session_id)


# ---------------------------------------------------------------------------------------------------
# Refusals.

NON_FINITE = [
    ("F32", np.array([np.nan], np.float32)),
    ("F32", np.array([np.inf], np.float32)),
    ("F32", np.array([-np.inf], np.float32)),
    ("BF16", np.array([0x7FC0], np.uint16)),  # quiet NaN
    ("BF16", np.array([0x7F81], np.uint16)),  # signalling NaN
    ("BF16", np.array([0xFFC1], np.uint16)),  # negative NaN with payload
    ("BF16", np.array([0x7F80], np.uint16)),  # +Inf
    ("BF16", np.array([0xFF80], np.uint16)),  # -Inf
    ("F16", np.array([0x7E00], np.uint16)),   # quiet NaN
    ("F16", np.array([0x7C01], np.uint16)),   # signalling NaN
    ("F16", np.array([0x7C00], np.uint16)),   # +Inf
    ("F16", np.array([0xFC00], np.uint16)),   # -Inf
]


def _grad(pb2, name, dtype, bad, n, where, sparse):
    """A gradient of n elements (or, sparse, of rows of 4 over an [n // 4, 4] tensor) holding the
    non-finite value `bad` at element `where`."""
    if dtype == "F32":
        vals = np.ones(n, np.float32)
        vals[where] = bad[0]
        t = to_tensor(name, vals)
    else:
        vals = np.full(n, 0x3F80 if dtype == "BF16" else 0x3C00, np.uint16)
        vals[where] = bad[0]
        t = wire_tensor(pb2, name, dtype, vals)
    if sparse:
        del t.shape[:]
        t.shape.extend([n // 4 + 3, 4])
        t.rows.indices.extend(range(n // 4))
    return t


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "row-sparse"])
def test_non_finite_gradients_are_refused_whatever_the_dtype(optd_server, sparse):
    pb2, stub = optd_server.pb2, optd_server.stub
    session_id = f"wire.nonfinite-{'sparse' if sparse else 'dense'}"
    x0 = np.arange(1, 13, dtype=np.float32) / 4
    shape = (6, 4) if sparse else (12,)
    emb0 = np.ones(shape, np.float32)
    create(stub, pb2, session_id, [to_tensor("x", x0), to_tensor("emb", emb0)])
    try:
        for dtype, bad in NON_FINITE:
            g = _grad(pb2, "emb", dtype, bad, 12, 5, sparse)
            with pytest.raises(grpc.RpcError) as err:
                stub.Step(pb2.StepRequest(session_id=session_id, gradients=[
                    to_tensor("x", np.ones(12, np.float32)), g]), timeout=RPC_TIMEOUT_S)
            what = f"{dtype} 0x{int(bad.view(np.uint16 if dtype != 'F32' else np.uint32)[0]):x}"
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {err.value}"
            assert "emb" in err.value.details() and "5" in err.value.details(), (
                f"{what}: the message must name the tensor and the element: "
                f"{err.value.details()!r}")
        version, values = pull_f32(stub, pb2, session_id)
        assert version == 0, "a refused step changed the version"
        np.testing.assert_array_equal(values["x"], x0)
        np.testing.assert_array_equal(values["emb"], emb0)
    finally:
        delete(stub, pb2, session_id)


def test_non_finite_initial_values_and_bad_encodings_are_refused(optd_server):
    pb2, stub = optd_server.pb2, optd_server.stub
    for dtype, bad in NON_FINITE:
        if dtype == "F32":
            t = to_tensor("x", np.array([1, bad[0]], np.float32))
        else:
            t = wire_tensor(pb2, "x", dtype, np.array([0, bad[0]], np.uint16))
        with pytest.raises(grpc.RpcError) as err:
            create(stub, pb2, "wire.bad-init", [t])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value

    session_id = "wire.bad-encoding"
    create(stub, pb2, session_id, [to_tensor("x", np.zeros(8, np.float32))])
    try:
        bad_requests = [
            # 4 bytes per element under BF16 / F16: wrong length.
            pb2.StepRequest(session_id=session_id, gradients=[pb2.Tensor(
                name="x", shape=[8], dtype=pb2.DTYPE_BF16, data=np.zeros(8, "<f4").tobytes())]),
            pb2.StepRequest(session_id=session_id, gradients=[pb2.Tensor(
                name="x", shape=[8], dtype=pb2.DTYPE_F16, data=np.zeros(7, "<u2").tobytes())]),
            # 2 bytes per element under F32.
            pb2.StepRequest(session_id=session_id, gradients=[pb2.Tensor(
                name="x", shape=[8], dtype=pb2.DTYPE_F32, data=np.zeros(8, "<u2").tobytes())]),
            # An unknown dtype, for the gradient and for the reply.
            pb2.StepRequest(session_id=session_id, gradients=[pb2.Tensor(
                name="x", shape=[8], dtype=7, data=np.zeros(8, "<u2").tobytes())]),
            pb2.StepRequest(session_id=session_id, return_dtype=7, gradients=[
                to_tensor("x", np.zeros(8, np.float32))]),
        ]
        for req in bad_requests:
            with pytest.raises(grpc.RpcError) as err:
                stub.Step(req, timeout=RPC_TIMEOUT_S)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (req, err.value)
        with pytest.raises(grpc.RpcError) as err:
            stub.Pull(pb2.PullRequest(session_id=session_id, dtype=7), timeout=RPC_TIMEOUT_S)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert "dtype" in err.value.details(), err.value.details()
        assert pull_f32(stub, pb2, session_id)[0] == 0
    finally:
        delete(stub, pb2, session_id)
