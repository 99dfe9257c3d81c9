"""Session configuration from plain Python values.

    optd.optimizer_config("adam", lr=1e-3, betas=(0.9, 0.999))       # -> optd_pb2.OptimizerConfig
    optd.schedule("cosine_annealing", t_max=1000, eta_min=1e-5)        # -> optd_pb2.LrSchedule
    optd.clipping(max_norm=1.0)                                        # -> optd_pb2.Clipping
    optd.consistency("sync", workers=4, barrier_timeout_seconds=10)    # -> optd_pb2.Consistency

Field names are the .proto's; torch's ``betas=(b1, b2)`` is accepted for ``beta1``/``beta2``.
Enum fields take their value name, with or without its prefix and in any case
(``norm="per_tensor"``, ``mode="SYNC"``), or the number. Every function also accepts an already
built message (returned unchanged) and a ``dict``. An unknown name raises InvalidArgumentError
before any RPC; values are range-checked by the server.
"""

from typing import Any, Dict, Mapping, Optional, Sequence, Union

from optd import _pb
from optd.errors import InvalidArgumentError

__all__ = ["OPTIMIZERS", "optimizer_config", "optimizer_kind", "optimizer_hyperparameters",
           "schedule", "clipping", "consistency", "session_config"]

#: The optimizer kinds (the OptimizerConfig oneof), as accepted by optimizer_config.
OPTIMIZERS = ("sgd", "adam", "adamw", "adagrad", "normalized_gd", "adadelta", "rmsprop", "nadam",
              "radam", "lion", "lamb", "lars", "prodigy", "dadapt_adam", "dadapt_sgd", "dog",
              "ldog", "schedulefree_adamw", "schedulefree_sgd", "adafactor", "muon")
_ALIASES = {"ngd": "normalized_gd", "normalizedgd": "normalized_gd", "normgd": "normalized_gd",
            "dadaptadam": "dadapt_adam", "dadaptsgd": "dadapt_sgd", "l_dog": "ldog",
            "adamwschedulefree": "schedulefree_adamw", "adamw_schedulefree": "schedulefree_adamw",
            "sgdschedulefree": "schedulefree_sgd", "sgd_schedulefree": "schedulefree_sgd"}


def _canonical_kind(kind: str) -> str:
    k = kind.strip().lower().replace("-", "_")
    k = _ALIASES.get(k, k)
    if k not in OPTIMIZERS:
        raise InvalidArgumentError(f"optimizer {kind!r} is not known; must be one of "
                                   f"{', '.join(OPTIMIZERS)}")
    return k


def _enum_value(field, value, path: str) -> int:
    enum = field.enum_type
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{path} = {value!r} is not a {enum.name} value")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        wanted = value.strip().lower()
        matches = [v for v in enum.values
                   if v.name.lower() == wanted or v.name.lower().endswith("_" + wanted)]
        if len(matches) == 1:
            return matches[0].number
    raise InvalidArgumentError(f"{path} = {value!r} is not a {enum.name} value; must be one of "
                               f"{', '.join(v.name for v in enum.values)}")


def _fill(message, fields: Mapping[str, Any], path: str):
    """Sets ``fields`` (proto names; nested messages as dicts) on ``message``; returns it."""
    descriptor = message.DESCRIPTOR
    for name, value in fields.items():
        if value is None:
            continue
        if name == "betas" and "beta1" in descriptor.fields_by_name:
            try:
                beta1, beta2 = value
            except (TypeError, ValueError):
                raise InvalidArgumentError(f"{path}.betas = {value!r} must be a pair "
                                           f"(beta1, beta2)") from None
            _fill(message, {"beta1": beta1, "beta2": beta2}, path)
            continue
        field = descriptor.fields_by_name.get(name)
        if field is None:
            raise InvalidArgumentError(
                f"{path}.{name} is not a field of {descriptor.full_name}; the fields are "
                f"{', '.join(descriptor.fields_by_name) or '(none)'}")
        here = f"{path}.{name}"
        try:
            if field.label == field.LABEL_REPEATED:
                if field.message_type is not None:
                    raise InvalidArgumentError(f"{here}: repeated messages are not supported here")
                getattr(message, name)[:] = list(value)
            elif field.message_type is not None:
                if isinstance(value, Mapping):
                    _fill(getattr(message, name), value, here)
                else:
                    getattr(message, name).CopyFrom(value)
            elif field.enum_type is not None:
                setattr(message, name, _enum_value(field, value, here))
            elif field.type == field.TYPE_BOOL:
                setattr(message, name, bool(value))
            elif field.type == field.TYPE_DOUBLE or field.type == field.TYPE_FLOAT:
                setattr(message, name, float(value))
            else:
                setattr(message, name, int(value))
        except InvalidArgumentError:
            raise
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(f"{here} = {value!r}: {e}") from None
    return message


def optimizer_config(kind: Union[str, Any], **hyperparameters: Any):
    """An OptimizerConfig for ``kind`` ("adam", "sgd", "normalized_gd", ...) with the fields given.

    Unset fields take torch 1.13's defaults on the server. ``kind`` may also be an
    OptimizerConfig (returned as is; then no keyword arguments) or a dict {"adam": {"lr": ...}}.
    """
    pb2 = _pb.pb2()
    if isinstance(kind, pb2.OptimizerConfig):
        if hyperparameters:
            raise InvalidArgumentError("optimizer_config: pass hyperparameters as keywords with a "
                                       "kind name, not with a built OptimizerConfig")
        return kind
    if isinstance(kind, Mapping):
        if len(kind) != 1 or hyperparameters:
            raise InvalidArgumentError(f"optimizer {dict(kind)!r} must be a dict with exactly one "
                                       f"optimizer kind, e.g. {{'adam': {{'lr': 0.01}}}}")
        ((name, fields),) = kind.items()
        return optimizer_config(name, **dict(fields or {}))
    if not isinstance(kind, str):
        raise InvalidArgumentError(f"optimizer {kind!r} must be a kind name or an OptimizerConfig")
    k = _canonical_kind(kind)
    config = pb2.OptimizerConfig()
    getattr(config, k).SetInParent()
    _fill(getattr(config, k), hyperparameters, f"optimizer.{k}")
    return config


def optimizer_kind(config) -> str:
    """The kind of an OptimizerConfig ("adam", ...), or "" if unset."""
    return config.WhichOneof("kind") or ""


def optimizer_hyperparameters(config) -> Dict[str, Any]:
    """The fields set in an OptimizerConfig's optimizer message (enums by number)."""
    kind = optimizer_kind(config)
    if not kind:
        return {}
    return {f.name: v for f, v in getattr(config, kind).ListFields()}


def schedule(kind: Union[str, Any, None], **fields: Any):
    """An LrSchedule: ``kind`` is a LrSchedule oneof name ("step", "multi_step", "exponential",
    "cosine_annealing", "linear_warmup", "warmup_cosine", "inverse_sqrt", "one_cycle",
    "reduce_on_plateau", "constant"), a built LrSchedule, a dict {kind: {fields}} or None."""
    pb2 = _pb.pb2()
    if kind is None or isinstance(kind, pb2.LrSchedule):
        return kind
    if isinstance(kind, Mapping):
        if len(kind) != 1 or fields:
            raise InvalidArgumentError(f"schedule {dict(kind)!r} must have exactly one kind")
        ((name, sub),) = kind.items()
        return schedule(name, **dict(sub or {}))
    k = str(kind).strip().lower().replace("-", "_")
    out = pb2.LrSchedule()
    kinds = [f.name for f in out.DESCRIPTOR.oneofs_by_name["kind"].fields]
    if k not in kinds:
        raise InvalidArgumentError(f"schedule {kind!r} is not known; must be one of "
                                   f"{', '.join(kinds)}")
    getattr(out, k).SetInParent()
    _fill(getattr(out, k), fields, f"schedule.{k}")
    return out


def clipping(max_norm: float = 0.0, clip_value: float = 0.0):
    """A Clipping: by global norm (torch clip_grad_norm_), then by value; 0 turns either off."""
    return _pb.pb2().Clipping(max_norm=float(max_norm), clip_value=float(clip_value))


def consistency(mode: Union[str, int, Any] = "async", **fields: Any):
    """A Consistency: ``mode`` "async", "sync" (``workers``, ``worker_ids``, ``reduce``,
    ``barrier_timeout_seconds``, ``quorum``) or "bounded" (``max_staleness``)."""
    pb2 = _pb.pb2()
    if isinstance(mode, pb2.Consistency):
        return mode
    if isinstance(mode, Mapping):
        return _fill(pb2.Consistency(), mode, "consistency")
    return _fill(pb2.Consistency(), dict(mode=mode, **fields), "consistency")


def _as(builder, value):
    """``value`` as the message ``builder`` makes (a built message, a dict, a kind name or, for
    clipping, a max_norm number)."""
    pb2 = _pb.pb2()
    if isinstance(value, (pb2.Clipping, pb2.Consistency, pb2.LrSchedule)):
        return value
    if builder is clipping:
        if isinstance(value, (int, float)):
            return clipping(max_norm=value)
        if isinstance(value, Mapping):
            return clipping(**value)
    return builder(value)


_schedule, _clipping, _consistency = schedule, clipping, consistency


def param_group(kind: str, group: Mapping[str, Any]):
    """A ParamGroup of an optimizer of ``kind``: ``group`` = {"tensors": [names], hyperparameter:
    value, ...} (proto names; ``betas=`` accepted), each overriding the session's."""
    pb2 = _pb.pb2()
    fields = dict(group)
    tensors = fields.pop("tensors", None)
    if not tensors or isinstance(tensors, str):
        raise InvalidArgumentError(f"param group {dict(group)!r} needs 'tensors': a list of the "
                                   f"session's tensor names")
    return pb2.ParamGroup(tensors=list(tensors), optimizer=optimizer_config(kind, **fields))


def session_config(optimizer: Union[str, Any], *, schedule: Optional[Any] = None,
                   clipping: Optional[Any] = None, consistency: Optional[Any] = None,
                   param_groups: Optional[Sequence[Mapping[str, Any]]] = None,
                   **hyperparameters: Any):
    """A SessionConfig: the optimizer (a kind and its hyperparameters, or an OptimizerConfig) and
    optionally a schedule, clipping and consistency (messages, dicts or names, as above), and
    parameter groups (dicts for param_group, or ParamGroup messages)."""
    pb2 = _pb.pb2()
    config = pb2.SessionConfig(optimizer=optimizer_config(optimizer, **hyperparameters))
    kind = optimizer_kind(config.optimizer)
    for group in param_groups or ():
        config.param_groups.append(group if isinstance(group, pb2.ParamGroup)
                                   else param_group(kind, group))
    if schedule is not None:
        config.schedule.CopyFrom(_as(_schedule, schedule))
    if clipping is not None:
        config.clipping.CopyFrom(_as(_clipping, clipping))
    if consistency is not None:
        config.consistency.CopyFrom(_as(_consistency, consistency))
    return config
