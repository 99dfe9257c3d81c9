"""torch.optim names and optd configurations, for optd.torch.RemoteOptimizer: a torch.optim class
as the optimizer kind, torch-style hyperparameters (``betas``) to and from the proto's fields, and
the comparison of a wanted configuration with the one a session holds (get-or-create)."""

from typing import Any, Dict, List

import torch

from optd import config as _config
from optd.errors import InvalidArgumentError


def _kind(optimizer: Any) -> Any:
    """``optimizer`` with a torch.optim class (``torch.optim.Adam``) replaced by its optd kind."""
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        kind = optimizer.__name__.lower()
        if kind not in _config.OPTIMIZERS:
            raise InvalidArgumentError(f"optimizer={optimizer.__module__}.{optimizer.__name__} "
                                       f"has no optd counterpart; optd has "
                                       f"{', '.join(_config.OPTIMIZERS)}")
        return kind
    return optimizer


def _mismatches(wanted, held, path: str) -> List[str]:
    """The fields set in message ``wanted`` whose values differ in ``held`` ("path = held, not
    wanted"), recursively; fields ``wanted`` leaves unset are the server's defaults, not checked."""
    out = []
    for field, value in wanted.ListFields():
        other = getattr(held, field.name)
        where = f"{path}.{field.name}"
        if field.message_type is not None and field.label == field.LABEL_REPEATED:
            if len(value) != len(other):
                out.append(f"{where} has {len(other)} entries on the server, {len(value)} here")
            else:
                for i, (w, h) in enumerate(zip(value, other)):
                    out += _mismatches(w, h, f"{where}[{i}]")
        elif field.message_type is not None:
            if held.HasField(field.name):
                out += _mismatches(value, other, where)
            else:
                out.append(f"{where} is not set on the server (asked: {value})".replace("\n", " "))
        elif list(value) != list(other) if field.label == field.LABEL_REPEATED else value != other:
            out.append(f"{where} = {other!r} on the server, {value!r} here")
    return out


def _torch_hyperparameters(optimizer_config) -> Dict[str, Any]:
    """torch-style group hyperparameters from a (filled-in) OptimizerConfig."""
    hp = dict(_config.optimizer_hyperparameters(optimizer_config))
    if "beta1" in hp or "beta2" in hp:
        kind = _config.optimizer_kind(optimizer_config)
        message = getattr(optimizer_config, kind)
        hp["betas"] = (float(message.beta1), float(message.beta2))
        hp.pop("beta1", None)
        hp.pop("beta2", None)
    return hp


def _proto_fields(torch_hp: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for key, value in torch_hp.items():
        if key == "betas":
            out["beta1"], out["beta2"] = float(value[0]), float(value[1])
        else:
            out[key] = value
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b
