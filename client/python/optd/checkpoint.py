"""Reading optd checkpoint files without a server: numpy and the standard library.

    import optd.checkpoint

    path = optd.checkpoint.newest("/var/lib/optd", "mlp")         # the session's newest file
    manifest, parameters, state = optd.checkpoint.read(path)
    manifest["version"], parameters["w"], state.tensors["w"].arrays["exp_avg"]

A checkpoint (written by ``optd --checkpoint_dir=DIR``, on the Checkpoint RPC, every
``--checkpoint_interval`` and at shutdown) is one file per session version,
``DIR/session-<id>/<version, 20 digits>.ckpt``, of this layout (server/persist/checkpoint_file.h):

    offset 0   "OPTDCKPT"                       magic, 8 bytes
           8   uint32 LE format version          1
          12   uint32 LE manifest length M
          16   uint32 LE CRC-32 of the manifest  (zlib.crc32)
          20   uint32 LE 0                       reserved
          24   manifest: M bytes of UTF-8 JSON
               zero padding to a multiple of 64
               arrays: little-endian float32, each at the offset the manifest gives (a multiple of
               64), with its element count and CRC-32 in the manifest's "arrays" list

``read`` checks all of it (the magic, the format version, the reserved word, the lengths, every
CRC-32, and that the padding no checksum covers is zero) and raises ``optd.CheckpointError`` for a
truncated or damaged file: it never returns wrong numbers.
"""

import json
import os
import struct
import zlib
from typing import Any, Dict, Optional, Tuple

import numpy as np

from optd.errors import CheckpointError
from optd.state import OptimizerState, TensorState

__all__ = ["read", "read_manifest", "newest", "list_files", "FORMAT_VERSION", "MAGIC"]

MAGIC = b"OPTDCKPT"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIIII")  # magic, format version, manifest length, manifest CRC, 0
_ALIGN = 64
_SUFFIX = ".ckpt"


def _number(value: Any) -> float:
    """A manifest double: a JSON number, or "inf" / "-inf" / "nan"."""
    if isinstance(value, str):
        return {"inf": float("inf"), "-inf": float("-inf")}.get(value, float("nan"))
    return float(value)


def _manifest(data: bytes, path: str) -> Dict[str, Any]:
    if len(data) < _HEADER.size:
        raise CheckpointError(f"checkpoint {path} is corrupt: no header ({len(data)} bytes; "
                              f"truncated)", path)
    magic, version, length, crc, reserved = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CheckpointError(f"checkpoint {path} is corrupt: it does not start with OPTDCKPT",
                              path)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}; this reader reads "
                              f"version {FORMAT_VERSION}", path)
    if reserved != 0:
        raise CheckpointError(f"checkpoint {path} is corrupt: its reserved header word is "
                              f"{reserved:#x}, not 0", path)
    if _HEADER.size + length > len(data):
        raise CheckpointError(f"checkpoint {path} is corrupt: its manifest length {length} exceeds "
                              f"the file ({len(data)} bytes; truncated)", path)
    raw = data[_HEADER.size:_HEADER.size + length]
    if zlib.crc32(raw) != crc:
        raise CheckpointError(f"checkpoint {path} is corrupt: the manifest's checksum does not "
                              f"match", path)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt: its manifest: {e}", path) from None
    if not isinstance(manifest, dict) or manifest.get("format") != "optd-checkpoint":
        raise CheckpointError(f"checkpoint {path}: its manifest is not an optd checkpoint's", path)
    return manifest


def _check_padding(data: bytes, manifest_end: int, arrays: list, path: str) -> None:
    """Every byte outside the header, the manifest and the arrays is padding and must be zero
    (no checksum covers it: a flipped padding byte is damage all the same)."""
    spans = sorted((int(a["offset"]), int(a["offset"]) + 4 * int(a["count"])) for a in arrays)
    at = manifest_end
    for start, end in spans + [(len(data), len(data))]:
        if start < at:
            raise CheckpointError(f"checkpoint {path} is corrupt: arrays overlap the manifest or "
                                  f"each other at byte {start}", path)
        gap = data[at:start]
        if gap.count(0) != len(gap):
            raise CheckpointError(f"checkpoint {path} is corrupt: a padding byte in [{at}, "
                                  f"{start}) is not zero", path)
        at = end


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_manifest(path: str) -> Dict[str, Any]:
    """The checked manifest (JSON) of the checkpoint at ``path``, without reading its arrays."""
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
        if len(head) == _HEADER.size:
            length = _HEADER.unpack_from(head)[2]
            head += f.read(min(length, 1 << 30))
    return _manifest(head, path)


def read(path: str) -> Tuple[Dict[str, Any], Dict[str, np.ndarray], OptimizerState]:
    """Reads and verifies the checkpoint at ``path``.

    Returns ``(manifest, parameters, optimizer_state)``: the manifest (a dict: session_id,
    version, config as proto3 JSON, tensors, schedule, optimizer step counters, exactly-once
    table, arrays, ...), the parameters by tensor name (float32, shaped, in the session's order)
    and the optimizer state (optd.OptimizerState: arrays named as torch.optim names them, empty
    before a tensor's first step, step counters and scalars), the same as
    ``Pull(optimizer_state=True)`` at that version returns. Raises CheckpointError for a truncated
    or damaged file (every CRC-32 is checked), OSError when it cannot be read.
    """
    data = _read_bytes(path)
    manifest = _manifest(data, path)
    try:
        tensors = [(t["name"], tuple(int(d) for d in t["shape"])) for t in manifest["tensors"]]
        optimizer = manifest["optimizer"]
        entries = list(optimizer["tensors"])
        listed = list(manifest["arrays"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt: its manifest lacks {e}", path) \
            from None
    parameters: Dict[str, Optional[np.ndarray]] = {name: None for name, _ in tensors}
    state = OptimizerState()
    for i, (name, _) in enumerate(tensors):
        entry = entries[i] if i < len(entries) else {"step": 0, "arrays": [], "scalars": {}}
        state.tensors[name] = TensorState(
            step=int(entry.get("step", 0)),
            arrays={a: np.zeros((0,), np.float32) for a in entry.get("arrays", [])},
            scalars={k: _number(v) for k, v in sorted(entry.get("scalars", {}).items())})
    for k, v in sorted(optimizer.get("scalars", {}).items()):
        state.scalars[k] = _number(v)
    for a in listed:
        try:
            name, kind, tensor = str(a["name"]), str(a["kind"]), int(a["tensor"])
            offset, count, crc = int(a["offset"]), int(a["count"]), int(a["crc32"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path} is corrupt: an array lacks {e}", path) \
                from None
        if not 0 <= tensor < len(tensors):
            raise CheckpointError(f"checkpoint {path} is corrupt: array {name} names tensor "
                                  f"{tensor} of {len(tensors)}", path)
        tensor_name, shape = tensors[tensor]
        elements = int(np.prod(shape, dtype=np.int64))
        # Optimizer arrays may be shorter than their tensor (Prodigy's slices, Adafactor's
        # factored moments): those are vectors.
        short = kind == "optimizer" and 0 <= count < elements
        if short:
            shape = (count,)
        if (count != elements and not short) or offset < 0 or offset % _ALIGN:
            raise CheckpointError(f"checkpoint {path} is corrupt: array {name} of tensor "
                                  f"{tensor_name} has {count} values at offset {offset} (the "
                                  f"tensor has {elements}; offsets are multiples of {_ALIGN})",
                                  path)
        end = offset + 4 * count
        if end > len(data):
            raise CheckpointError(f"checkpoint {path} is corrupt: array {name} of tensor "
                                  f"{tensor_name} ends at byte {end}, past the end of the file "
                                  f"({len(data)} bytes; truncated)", path)
        raw = data[offset:end]
        if zlib.crc32(raw) != crc:
            raise CheckpointError(f"checkpoint {path} is corrupt: the checksum of array {name} of "
                                  f"tensor {tensor_name} does not match", path)
        values = np.frombuffer(raw, dtype="<f4").reshape(shape).copy()
        if kind == "parameters":
            parameters[tensor_name] = values
        elif kind == "optimizer" and name in state.tensors[tensor_name].arrays:
            state.tensors[tensor_name].arrays[name] = values
        else:
            raise CheckpointError(f"checkpoint {path} is corrupt: array {name} ({kind}) of tensor "
                                  f"{tensor_name} has no place", path)
    _check_padding(data, _HEADER.size + _HEADER.unpack_from(data)[2], listed, path)
    missing = [n for n, v in parameters.items() if v is None]
    if missing:
        raise CheckpointError(f"checkpoint {path} is corrupt: no parameters for {missing}", path)
    return manifest, parameters, state  # type: ignore[return-value]


def list_files(directory: str, session_id: str) -> Dict[int, str]:
    """The checkpoints of ``session_id`` under the server's ``--checkpoint_dir`` ``directory``:
    {version: path}, newest first ({} when there are none)."""
    folder = os.path.join(directory, f"session-{session_id}")
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return {}
    files = {}
    for name in names:
        stem = name[:-len(_SUFFIX)] if name.endswith(_SUFFIX) else None
        if stem and stem.isdigit():  # skips the ".tmp-<pid>" files of writes in progress
            files[int(stem)] = os.path.join(folder, name)
    return dict(sorted(files.items(), reverse=True))


def newest(directory: str, session_id: str) -> str:
    """The path of the newest checkpoint of ``session_id`` under ``directory`` (the server's
    ``--checkpoint_dir``: ``session-<id>/<version:020>.ckpt``). FileNotFoundError if none."""
    files = list_files(directory, session_id)
    if not files:
        raise FileNotFoundError(f"session {session_id} has no checkpoint in {directory}")
    return next(iter(files.values()))
