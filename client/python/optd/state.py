"""optd.OptimizerState: a session's optimizer state as numpy arrays, out of and into the server.

    state = session.pull(optimizer_state=True).optimizer_state   # or client.pull(..., True)
    state.tensors["w"].step                   # steps the tensor has taken (0: none, or not counted)
    state.tensors["w"].arrays["exp_avg"]      # float32 ndarray shaped like the tensor
    state.tensors["w"].scalars                # e.g. NAdam's {"mu_product": ...}
    other.import_optimizer_state(state)       # UpdateSession(optimizer_state=...)

Arrays are named as torch.optim names them (exp_avg, exp_avg_sq, max_exp_avg_sq, momentum_buffer,
sum, square_avg, acc_delta, grad_avg); an array that does not exist yet (a tensor before its first
step; SGD without momentum) is an empty float32 array. The server imports a state only if it fits
the session's optimizer exactly (every tensor, the same array names, lengths and step counters);
otherwise the whole update is refused (InvalidArgumentError) and nothing changes.
"""

import dataclasses
from typing import Dict, Iterable, Mapping, Optional

import numpy as np

from optd import _pb
from optd.errors import InvalidArgumentError

__all__ = ["OptimizerState", "TensorState"]


@dataclasses.dataclass
class TensorState:
    """The optimizer state of one session tensor."""
    #: Steps this tensor has taken (0 before its first, and for optimizers that count none).
    step: int = 0
    #: float32 arrays by torch.optim's name, in the server's order; empty when not allocated.
    arrays: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    #: Per-tensor scalars (NAdam's "mu_product").
    scalars: Dict[str, float] = dataclasses.field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorState):
            return NotImplemented
        return (self.step == other.step and self.scalars == other.scalars and
                list(self.arrays) == list(other.arrays) and
                all(np.array_equal(a, other.arrays[k]) and a.shape == other.arrays[k].shape
                    for k, a in self.arrays.items()))


@dataclasses.dataclass
class OptimizerState:
    """A session's optimizer state: one TensorState per session tensor (by tensor name, in the
    session's order) and optimizer-wide scalars (none for torch's optimizers)."""
    tensors: Dict[str, TensorState] = dataclasses.field(default_factory=dict)
    scalars: Dict[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_proto(cls, message, tensor_names: Optional[Iterable[str]] = None) -> "OptimizerState":
        """From an optd_pb2.OptimizerState. ``tensor_names`` (the session's tensors, in order) adds
        an empty entry for every tensor the server left out (it omits tensors with no state at
        all, e.g. every tensor of normalized_gd), so the result imports back as it is."""
        tensors: Dict[str, TensorState] = {}
        for t in message.tensors:
            arrays = {}
            for a in t.arrays:
                if a.dtype != 0:
                    raise InvalidArgumentError(f"optimizer state array {t.tensor}/{a.name}: dtype "
                                               f"{a.dtype}; expected DTYPE_F32")
                if a.data:
                    arrays[a.name] = np.frombuffer(a.data, dtype="<f4").reshape(
                        tuple(a.shape)).copy()
                else:
                    arrays[a.name] = np.zeros((0,), np.float32)
            tensors[t.tensor] = TensorState(step=int(t.step), arrays=arrays,
                                            scalars={k: float(v) for k, v in
                                                     sorted(t.scalars.items())})
        if tensor_names is not None:
            names = list(tensor_names)
            ordered = {n: tensors.pop(n, None) or TensorState() for n in names}
            ordered.update(tensors)  # names the caller did not know (should not happen)
            tensors = ordered
        return cls(tensors=tensors, scalars={k: float(v) for k, v in
                                             sorted(message.scalars.items())})

    def to_proto(self):
        """The optd_pb2.OptimizerState to send (arrays as little-endian float32 bytes)."""
        pb2 = _pb.pb2()
        out = pb2.OptimizerState()
        for name, t in self.tensors.items():
            entry = out.tensors.add(tensor=name, step=int(t.step))
            for array_name, values in t.arrays.items():
                arr = np.ascontiguousarray(values, dtype="<f4")
                if arr.size == 0:
                    entry.arrays.add(name=array_name)
                else:
                    entry.arrays.add(name=array_name, shape=arr.shape, data=arr.tobytes())
            for key, value in t.scalars.items():
                entry.scalars[key] = float(value)
        for key, value in self.scalars.items():
            out.scalars[key] = float(value)
        return out

    # -- flat form (npz) ---------------------------------------------------------------------------

    def to_flat(self, prefix: str = "optimizer/") -> Dict[str, np.ndarray]:
        """Arrays keyed ``<prefix><tensor>/<array>`` plus ``<prefix><tensor>/step`` (int64 0-d)
        and ``<prefix><tensor>/scalar/<name>`` (float64 0-d), and ``<prefix>scalar/<name>``."""
        flat: Dict[str, np.ndarray] = {}
        for name, t in self.tensors.items():
            flat[f"{prefix}{name}/step"] = np.asarray(t.step, dtype=np.int64)
            for array_name, values in t.arrays.items():
                flat[f"{prefix}{name}/array/{array_name}"] = np.asarray(values, dtype=np.float32)
            for key, value in t.scalars.items():
                flat[f"{prefix}{name}/scalar/{key}"] = np.asarray(value, dtype=np.float64)
        for key, value in self.scalars.items():
            flat[f"{prefix}scalar/{key}"] = np.asarray(value, dtype=np.float64)
        return flat

    @classmethod
    def from_flat(cls, flat: Mapping[str, np.ndarray], tensor_names: Iterable[str],
                  layout: Mapping[str, Iterable[str]],
                  prefix: str = "optimizer/") -> "OptimizerState":
        """The inverse of to_flat; ``layout`` maps each tensor to its array names in order (numpy's
        npz keeps no order of its own)."""
        state = cls()
        for name in tensor_names:
            t = TensorState(step=int(flat[f"{prefix}{name}/step"]))
            for array_name in layout.get(name, ()):
                t.arrays[array_name] = np.asarray(flat[f"{prefix}{name}/array/{array_name}"],
                                                  dtype=np.float32)
            scalar_prefix = f"{prefix}{name}/scalar/"
            for key in sorted(k for k in flat if k.startswith(scalar_prefix)):
                t.scalars[key[len(scalar_prefix):]] = float(flat[key])
            state.tensors[name] = t
        for key in sorted(k for k in flat if k.startswith(f"{prefix}scalar/")):
            state.scalars[key[len(f"{prefix}scalar/"):]] = float(flat[key])
        return state
