"""optd.torch.RemoteOptimizer's checkpoints: ``state_dict`` in torch 1.13's layout from the
server's optimizer state, and ``load_state_dict`` of a torch optimizer's state dict (sent to the
session) or of RemoteOptimizer's own (restores the worker). A mixin of RemoteOptimizer (it uses
its session, client, kind, names, parameters and param_groups); not used on its own."""

from typing import Any, Dict, List

import numpy as np
import torch

from optd import config as _config
from optd.errors import InvalidArgumentError
from optd.state import OptimizerState, TensorState
from optd.torch_config import _proto_fields, _same

_TORCH_ONLY = ("foreach", "capturable", "differentiable", "fused")

#: The torch.optim class of each optimizer kind torch has (the others keep optd's own layout).
_TORCH_CLASSES = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "adagrad": "Adagrad",
                  "rmsprop": "RMSprop", "adadelta": "Adadelta", "nadam": "NAdam",
                  "radam": "RAdam"}
#: How torch 1.13 stores ``state["step"]``: a float32 0-d tensor, an int, or not at all.
_STEP_TENSOR = {"adam", "adamw", "adagrad", "nadam", "radam", "adamax"}
_STEP_INT = {"rmsprop", "adadelta", "lamb"}
_NO_STEP = {"sgd", "lion", "lars", "normalized_gd"}


class _TorchStateDict:
    """state_dict and load_state_dict of RemoteOptimizer (see optd.torch)."""

    # -- checkpoints -------------------------------------------------------------------------------

    def _torch_class(self):
        name = _TORCH_CLASSES.get(self.kind)
        return getattr(torch.optim, name) if name else None

    def _reference_group(self) -> Dict[str, Any]:
        """A param group as a real torch optimizer of the session's kind makes it (with torch's
        own keys, e.g. foreach / capturable), holding the session's hyperparameters."""
        hp = self._group_hyperparameters()
        cls = self._torch_class()
        if cls is None:
            return dict(hp)
        dummy = torch.nn.Parameter(torch.zeros(1))
        ref = cls([dummy], **{k: (tuple(v) if isinstance(v, list) else v) for k, v in hp.items()})
        group = {k: v for k, v in ref.param_groups[0].items() if k != "params"}
        group.update(hp)
        return group

    def _state_layout(self) -> List[str]:
        """The optimizer state array names of the session's optimizer, in the server's order."""
        info = self.session.cached_info or self.session.info(timeout=self._timeout)
        config = getattr(info.config.optimizer, self.kind)
        names = {"adam": ["exp_avg", "exp_avg_sq"], "adamw": ["exp_avg", "exp_avg_sq"],
                 "nadam": ["exp_avg", "exp_avg_sq"], "radam": ["exp_avg", "exp_avg_sq"],
                 "lamb": ["exp_avg", "exp_avg_sq"], "sgd": ["momentum_buffer"],
                 "lars": ["momentum_buffer"], "lion": ["exp_avg"], "adagrad": ["sum"],
                 "adadelta": ["square_avg", "acc_delta"], "rmsprop": ["square_avg"],
                 "normalized_gd": []}[self.kind]
        if self.kind in ("adam", "adamw") and config.amsgrad:
            names.append("max_exp_avg_sq")
        if self.kind == "rmsprop":
            if config.momentum != 0:
                names.append("momentum_buffer")
            if config.centered:
                names.append("grad_avg")
        return names

    def _torch_step(self, step: int) -> Any:
        if self.kind in _STEP_TENSOR:
            return torch.tensor(float(step), dtype=torch.float32)
        return int(step)

    def state_dict(self) -> Dict[str, Any]:
        """torch 1.13's ``state_dict`` layout for the session's optimizer, from the server's
        state (one Pull, consistent with the version): ``state`` keyed by parameter index with
        torch's names and dtypes (float32 tensors shaped like the parameter; ``step`` a float32
        0-d tensor for Adam/AdamW/Adagrad/NAdam/RAdam, an int for RMSprop/Adadelta, absent for
        SGD; NAdam's ``mu_product`` a float32 0-d tensor; SGD without momentum
        ``momentum_buffer: None``), and ``param_groups`` as a torch optimizer of that kind makes
        them, with the session's hyperparameters. A parameter that has not stepped has no entry
        (Adagrad: step 0 and its initial ``sum``, as torch). ``torch.optim.<Kind>(params)
        .load_state_dict(sd)`` continues from it exactly (drop nothing: torch ignores ``optd``).

        ``optd`` adds what the client knows: address, session id, worker id, incarnation and last
        sequence (for information), version, optimizer kind and tensor names."""
        pulled = self.session.pull(optimizer_state=True, timeout=self._timeout)
        state = pulled.optimizer_state or OptimizerState()
        info = self.session.cached_info or self.session.info(timeout=self._timeout)
        config = getattr(info.config.optimizer, self.kind)
        torch_state: Dict[int, Dict[str, Any]] = {}
        for index, (name, p) in enumerate(self.named_parameters()):
            t = state.tensors.get(name, TensorState())
            stepped = t.step > 0 or any(a.size for a in t.arrays.values()) or \
                (self.kind in _NO_STEP and pulled.version > 0)
            entry: Dict[str, Any] = {}
            if not stepped:
                if self.kind == "adagrad":  # torch makes Adagrad's state at construction
                    entry["step"] = self._torch_step(0)
                    entry["sum"] = torch.full(tuple(p.shape), float(
                        config.initial_accumulator_value), dtype=torch.float32)
                    torch_state[index] = entry
                continue
            if self.kind not in _NO_STEP:
                entry["step"] = self._torch_step(t.step)
            for key, value in t.scalars.items():  # NAdam's mu_product, before the arrays
                entry[key] = torch.tensor(value, dtype=torch.float32)
            for key, values in t.arrays.items():
                entry[key] = (torch.from_numpy(np.array(values, dtype=np.float32))
                              .reshape(tuple(p.shape)) if values.size else None)
            torch_state[index] = entry
        groups, index = [], 0
        reference = self._reference_group()
        for group in self.param_groups:
            packed = dict(reference)
            packed.update({k: v for k, v in group.items() if k != "params" and k in reference})
            packed["params"] = list(range(index, index + len(group["params"])))
            index += len(group["params"])
            groups.append(packed)
        return {
            "state": torch_state,
            "param_groups": groups,
            "optd": {
                "address": self.client.address,
                "session_id": self.session.session_id,
                "worker_id": self.session.worker_id,
                "worker_incarnation": self.session.incarnation,
                "sequence": self.session.sequence,
                "version": pulled.version,
                "optimizer": self.kind,
                "names": list(self._names),
            },
        }

    def _optimizer_state_from_torch(self, torch_state: Dict[Any, Dict[str, Any]]) -> OptimizerState:
        """The OptimizerState of a torch state dict's ``state``, checked against the session's
        optimizer (InvalidArgumentError, before any RPC, if it does not fit)."""
        layout = self._state_layout()
        params = self._params()
        out = OptimizerState()
        extra = [k for k in torch_state if not (isinstance(k, int) and 0 <= k < len(params))]
        if extra:
            raise InvalidArgumentError(f"state_dict['state'] has keys {extra[:5]}; this optimizer "
                                       f"has parameters 0..{len(params) - 1}")
        for index, (name, p) in enumerate(self.named_parameters()):
            entry = dict(torch_state.get(index, {}))
            step_value = entry.pop("step", None)
            step = int(step_value.item() if isinstance(step_value, torch.Tensor)
                       else (step_value or 0))
            scalars = {}
            if self.kind == "nadam" and "mu_product" in entry:
                mu = entry.pop("mu_product")
                scalars["mu_product"] = float(mu.item() if isinstance(mu, torch.Tensor) else mu)
            unknown = sorted(set(entry) - set(layout))
            missing = sorted(set(layout) - set(entry))
            if unknown or (missing and entry):
                raise InvalidArgumentError(
                    f"state_dict['state'][{index}] has {sorted(entry)}; a {self.kind} session "
                    f"keeps {layout}: a state dict of another optimizer (or other options) does "
                    f"not fit; nothing was changed")
            if step_value is not None and self.kind in _NO_STEP:
                raise InvalidArgumentError(f"state_dict['state'][{index}] has a step; {self.kind} "
                                           f"counts none: a state dict of another optimizer does "
                                           f"not fit; nothing was changed")
            counts = self.kind not in _NO_STEP
            arrays = {}
            for key in layout:
                value = entry.get(key)
                if value is None or (counts and step == 0):
                    arrays[key] = np.zeros((0,), np.float32)
                    continue
                arr = (value.detach().to(torch.float32).cpu().numpy()
                       if isinstance(value, torch.Tensor) else np.asarray(value, np.float32))
                if tuple(arr.shape) != tuple(p.shape):
                    raise InvalidArgumentError(f"state_dict['state'][{index}][{key!r}] has shape "
                                               f"{list(arr.shape)}; parameter {name} has "
                                               f"{list(p.shape)}; nothing was changed")
                arrays[key] = arr
            if self.kind == "nadam" and not scalars:
                scalars["mu_product"] = 1.0
            out.tensors[name] = TensorState(step=step if counts else 0, arrays=arrays,
                                            scalars=scalars)
        return out

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Loads a state dict.

        A torch optimizer's state dict (``torch.optim.Adam(...).state_dict()``, or this class's
        without ``optd``): its optimizer state and its param_groups' hyperparameters are sent to
        the session in one UpdateSession, so the session continues exactly as the torch optimizer
        would. It must be of the session's optimizer kind with the same state options (Adam and
        AdamW share a layout): a state dict of another optimizer is refused
        (InvalidArgumentError) with nothing changed, locally or on the server. The parameters are
        the session's: create the RemoteOptimizer from the model after loading its weights.

        A state dict of this class (with ``optd``) restores the worker instead: the param_groups
        hyperparameters (sent at the next step if they differ from the server's) and, from
        ``optd``, the session id, worker id and version; the optimizer state stays the server's
        (it is newer). A different session or worker id than this optimizer's makes a new worker
        handle, which joins the session at its next step as a new incarnation (the saved
        incarnation and sequence belong to the process that saved them and are not reused: its
        late steps are refused, never mistaken for the restored worker's)."""
        sd = dict(state_dict)
        meta = sd.pop("optd", None)
        if meta is None:
            self._import_torch_state_dict(sd)
            return
        super().load_state_dict({"state": {}, "param_groups": sd["param_groups"]})
        if list(meta.get("names", self._names)) != self._names:
            raise InvalidArgumentError(f"state_dict is for tensors {meta.get('names')}, this "
                                       f"optimizer has {self._names}")
        if meta["session_id"] != self.session.session_id or \
                meta["worker_id"] != self.session.worker_id:
            self.session = self.client.session(meta["session_id"], worker_id=meta["worker_id"])
        self.session.version = meta.get("version")
        info = self.session.info(timeout=self._timeout)
        self.kind = _config.optimizer_kind(info.config.optimizer)
        self._take_server_groups(info, set_groups=False)

    def _import_torch_state_dict(self, sd: Dict[str, Any]) -> None:
        groups = sd.get("param_groups")
        if not isinstance(groups, list) or len(groups) != len(self.param_groups) or \
                [len(g.get("params", ())) for g in groups] != \
                [len(g["params"]) for g in self.param_groups]:
            raise InvalidArgumentError("state_dict['param_groups'] does not match this "
                                       "optimizer's parameter groups; nothing was changed")
        expected = set(self._sent[0])
        for i, group in enumerate(groups):
            keys = {k for k in group if k != "params" and k not in _TORCH_ONLY}
            if keys != expected:
                raise InvalidArgumentError(
                    f"state_dict['param_groups'][{i}] has hyperparameters {sorted(keys)}; a "
                    f"{self.kind} session has {sorted(expected)}: a state dict of another "
                    f"optimizer does not fit; nothing was changed")
        hps = [{k: (tuple(g[k]) if isinstance(g[k], list) else g[k]) for k in expected}
               for g in groups]
        if not self._server_groups:
            for i, hp in enumerate(hps[1:], start=1):
                for k, v in hps[0].items():
                    if not _same(hp[k], v):
                        raise InvalidArgumentError(
                            f"state_dict['param_groups'][{i}][{k!r}] differs from group 0; a "
                            f"{self.kind} session has one set of hyperparameters; nothing was "
                            f"changed")
        state = self._optimizer_state_from_torch(sd.get("state", {}))
        if self._server_groups:
            self.session.client.update_session(
                self.session.session_id, self.kind, optimizer_state=state,
                timeout=self._timeout,
                param_groups={i: _proto_fields(hp) for i, hp in enumerate(hps)})
        else:
            self.session.client.update_session(
                self.session.session_id, self.kind, optimizer_state=state,
                timeout=self._timeout, **_proto_fields(hps[0]))
            hps = [hps[0]] * len(hps)
        for group, hp in zip(self.param_groups, hps):
            group.update(hp)
        self._sent = [dict(hp) for hp in hps]
        self.session.info(timeout=self._timeout)
