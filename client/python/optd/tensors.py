"""numpy arrays <-> optd.v1.Tensor through the ``bytes`` wire encoding.

No per-element Python work: F32 is ``ndarray.tobytes()`` / ``np.frombuffer``; F16 is numpy's
float16 (round to nearest even); BF16 is the upper half of the float32 bits, rounded to nearest
even with uint32 arithmetic (NaN stays a quiet NaN), the same rule as the server's. Decoding gives
float32 arrays whatever the wire dtype; an F32 decode is a read-only view of the reply's bytes
(``.copy()`` it to write).
"""

from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from optd import _pb
from optd.errors import InvalidArgumentError

__all__ = ["DTypeLike", "RowSparse", "dtype_value", "dtype_name", "encode", "decode",
           "to_tensor", "from_tensor", "float32_to_bf16_bits", "bf16_bits_to_float32"]

#: A wire dtype: "f32" / "bf16" / "f16" (case-insensitive, also "float32", "bfloat16",
#: "float16"), the enum value (optd_pb2.DTYPE_BF16), or np.float32 / np.float16.
DTypeLike = Union[str, int, type, np.dtype]

_NAMES = {
    "f32": 0, "float32": 0, "fp32": 0, "dtype_f32": 0,
    "bf16": 1, "bfloat16": 1, "dtype_bf16": 1,
    "f16": 2, "float16": 2, "fp16": 2, "half": 2, "dtype_f16": 2,
}
_ITEMSIZE = {0: 4, 1: 2, 2: 2}


def dtype_value(dtype: DTypeLike) -> int:
    """The optd.v1.DType enum value for ``dtype``; InvalidArgumentError if it is not one."""
    if isinstance(dtype, str):
        try:
            return _NAMES[dtype.lower()]
        except KeyError:
            raise InvalidArgumentError(f"dtype {dtype!r} is not a wire dtype; must be one of "
                                       f"'f32', 'bf16', 'f16'") from None
    if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
        if int(dtype) in _ITEMSIZE:
            return int(dtype)
        raise InvalidArgumentError(f"dtype {dtype} is not a known DType; must be DTYPE_F32 (0), "
                                   f"DTYPE_BF16 (1) or DTYPE_F16 (2)")
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        raise InvalidArgumentError(f"dtype {dtype!r} is not a wire dtype") from None
    if np_dtype == np.float32:
        return 0
    if np_dtype == np.float16:
        return 2
    raise InvalidArgumentError(f"dtype {np_dtype} is not a wire dtype; must be float32, bfloat16 "
                               f"or float16")


def dtype_name(dtype: DTypeLike) -> str:
    """'f32', 'bf16' or 'f16'."""
    return ("f32", "bf16", "f16")[dtype_value(dtype)]


def float32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns of float32 ``values``, rounded to nearest even."""
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4")
    rounded = ((bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))))
               >> np.uint32(16))  # uint32 arithmetic: overflow carries to Inf
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        rounded = np.where(nan, (bits >> np.uint32(16)) | np.uint32(0x40), rounded)
    return rounded.astype("<u2")


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """float32 values of uint16 bfloat16 bit patterns (exact)."""
    return (np.asarray(bits, dtype="<u2").astype("<u4") << np.uint32(16)).view("<f4")


def encode(values: Any, dtype: DTypeLike = "f32") -> bytes:
    """Little-endian wire bytes of ``values`` (anything numpy accepts) in ``dtype``, row-major."""
    kind = dtype_value(dtype)
    if kind == 0:
        return np.ascontiguousarray(values, dtype="<f4").tobytes()
    if kind == 2:
        return np.ascontiguousarray(values, dtype="<f4").astype("<f2").tobytes()
    return float32_to_bf16_bits(values).tobytes()


def decode(data: bytes, shape, dtype: DTypeLike = "f32") -> np.ndarray:
    """float32 array of ``shape`` from wire bytes (F32: a read-only view of ``data``)."""
    kind = dtype_value(dtype)
    shape = tuple(int(d) for d in shape)
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) != _ITEMSIZE[kind] * count:
        raise InvalidArgumentError(f"{len(data)} data bytes for shape {list(shape)} in "
                                   f"{dtype_name(kind).upper()} (expected {_ITEMSIZE[kind] * count})")
    if kind == 0:
        return np.frombuffer(data, dtype="<f4").reshape(shape)
    if kind == 2:
        return np.frombuffer(data, dtype="<f2").astype(np.float32).reshape(shape)
    return bf16_bits_to_float32(np.frombuffer(data, dtype="<u2")).reshape(shape)


@dataclass
class RowSparse:
    """Some rows of a ``shape`` tensor: ``values[i]`` is row ``indices[i]`` (rank >= 1).

    As a gradient, repeated indices are summed by the server. Returned by ``pull(rows=...)`` and by
    steps with ``return_parameters="touched"`` for tensors whose gradient was row-sparse.
    """
    indices: np.ndarray  # int64, (n,)
    values: np.ndarray   # float32, (n, *shape[1:])
    shape: tuple         # the full tensor's shape

    def __post_init__(self) -> None:
        self.indices = np.asarray(self.indices, dtype=np.int64).reshape(-1)
        self.shape = tuple(int(d) for d in self.shape)
        if not self.shape:
            raise InvalidArgumentError("a row-sparse tensor needs rank >= 1")
        self.values = np.asarray(self.values, dtype=np.float32).reshape(
            (len(self.indices),) + self.shape[1:])

    def to_dense(self) -> np.ndarray:
        """The full tensor: zeros except the given rows (repeated rows summed)."""
        out = np.zeros(self.shape, dtype=np.float32)
        np.add.at(out, self.indices, self.values)
        return out


def to_tensor(name: str, values: Any, dtype: DTypeLike = "f32"):
    """An ``optd_pb2.Tensor`` from a dense array (any float dtype; sent as ``dtype``) or RowSparse."""
    pb2 = _pb.pb2()
    kind = dtype_value(dtype)
    if isinstance(values, RowSparse):
        return pb2.Tensor(name=name, shape=values.shape, dtype=kind,
                          data=encode(values.values, kind),
                          rows=pb2.RowIndices(indices=values.indices.tolist()))
    if hasattr(values, "detach") and hasattr(values, "numpy"):  # a torch tensor
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.dtype != np.float32 and arr.dtype.kind not in "fiub":
        raise InvalidArgumentError(f"tensor {name!r}: dtype {arr.dtype} is not numeric")
    return pb2.Tensor(name=name, shape=arr.shape, dtype=kind, data=encode(arr, kind))


def from_tensor(tensor) -> Union[np.ndarray, RowSparse]:
    """float32 values of an ``optd_pb2.Tensor`` (a RowSparse when it carries ``rows``)."""
    shape = tuple(tensor.shape)
    if tensor.HasField("rows"):
        indices = np.asarray(tensor.rows.indices, dtype=np.int64)
        values = decode(tensor.data, (len(indices),) + shape[1:], tensor.dtype)
        return RowSparse(indices, values, shape)
    try:
        return decode(tensor.data, shape, tensor.dtype)
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"tensor {tensor.name!r}: {e.message}") from None
