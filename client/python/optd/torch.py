"""optd.torch.RemoteOptimizer: a torch.optim.Optimizer whose step runs on an optd server.

    import optd, optd.torch

    client = optd.Client("127.0.0.1:50051")
    opt = optd.torch.RemoteOptimizer(model.named_parameters(), client=client,
                                     optimizer="adam", lr=1e-3, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)   # works as usual
    for x, y in batches:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step(loss=loss.item())   # sends every .grad, writes the new parameters in place
        sched.step()

Creating: from parameters and a torch-style optimizer spec (a kind name such as "adam", or the
torch.optim class, ``optimizer=torch.optim.Adam``; a new session holding the current parameter
values), or attached to an existing session (``session=`` a Session or a session id;
the local parameters are then overwritten with the server's unless ``pull=False``). Several
processes attached to one SYNC session train data-parallel: each sends its shard's gradient and
all receive the same new parameters.

One script for every worker: with a ``session_id``, the first RemoteOptimizer to reach the server
creates the session and the others attach to it (CreateSession is atomic; ALREADY_EXISTS means
attach) after checking that its configuration is the one they asked for (AlreadyExistsError
naming each difference otherwise) and its tensors match; they then pull its parameters.
``created`` tells which one created it.

Hyperparameters live in ``param_groups`` under torch's names (``lr``, ``betas``, ``eps``,
``weight_decay``, ``momentum``, ...). Changing one (by hand or through a torch lr_scheduler) is
noticed at the next ``step()`` and sent with UpdateSession before stepping, so it applies to that
step as it would in torch. Several param groups become the session's parameter groups
(SessionConfig.param_groups: torch group i is the server's group i), each with its own
hyperparameters, changed per group (UpdateSession.param_groups), so torch schedulers act on each
group. With the optimizers that keep model-wide state (Prodigy, D-Adaptation, DoG, L-DoG,
Schedule-Free) all groups share the session's hyperparameters (different values are refused at
step()). ``add_param_group`` after construction raises NotImplementedError: a session's tensors
are fixed at creation.

Server restarts: if the server restarts and restores the session from a checkpoint older than
the local parameters, ``step()`` pulls the restored parameters into the model and returns without
applying that step (its gradient was computed at a lost version); ``skipped_steps`` counts these.
Training simply goes on from the restored point.

``state_dict()`` is torch 1.13's layout for the session's optimizer (the server's optimizer state,
keyed by parameter index, ``step`` as torch stores it), so ``torch.optim.Adam(...).load_state_dict``
continues from it; ``load_state_dict`` of a torch optimizer's state dict sends its state and
hyperparameters to the session.

Parameters whose ``.grad`` is None (frozen layers, parameters a loss did not reach) are skipped as
torch skips them: the step carries the other gradients only, and the server leaves those tensors,
their state and their step counters exactly as they were (a partial step). In a SYNC session,
which combines every worker's gradient of every tensor, they are sent as zeros. Prodigy,
D-Adaptation, DoG and L-DoG refuse partial steps (their estimate sums over every tensor's state):
with them step() raises InvalidArgumentError naming the parameters whose ``.grad`` is None.

Differences from a local torch optimizer: the server's state is float32 (parameters of other dtypes
are sent and written back through float32); sparse ``.grad``
(nn.Embedding(sparse=True)) is sent row-sparse. Torch-only options (foreach, capturable,
differentiable, fused) are accepted and ignored.
"""

import warnings
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch

from optd import config as _config
from optd.client import DEFAULT, Client, Session, StepResult
from optd.torch_config import (_kind, _mismatches, _proto_fields, _same,
                               _torch_hyperparameters)
from optd.torch_state import _TORCH_ONLY, _TorchStateDict
from optd.errors import AbortedError, AlreadyExistsError, InvalidArgumentError
from optd.tensors import RowSparse

__all__ = ["RemoteOptimizer"]

#: Optimizers whose server refuses a partial step (README "Partial steps").
_NO_PARTIAL_STEPS = {"prodigy", "dadapt_adam", "dadapt_sgd", "dog", "ldog"}
#: Optimizers with model-wide state: their sessions take no parameter groups.
_MODEL_WIDE = _NO_PARTIAL_STEPS | {"schedulefree_adamw", "schedulefree_sgd"}


class RemoteOptimizer(_TorchStateDict, torch.optim.Optimizer):
    """A torch.optim.Optimizer backed by an optd session.

    Args:
        params: ``model.parameters()``, ``model.named_parameters()`` (the names become the
            session's tensor names; recommended) or param-group dicts of either. Unnamed
            parameters are called ``param.0``, ``param.1``, ... in order.
        session: attach to this session (a Session, or a session id with ``client``/``address``)
            instead of creating one.
        client / address: the server (a Client, or an address to make one).
        tls, tls_ca, tls_cert, tls_key, token: with ``address``, the Client's TLS and token
            arguments (see optd.Client; token None reads ``OPTD_TOKEN``).
        optimizer: when creating, the kind ("adam", "sgd", "adagrad", "rmsprop",
            "normalized_gd", ...) or an OptimizerConfig; torch-style hyperparameters as keywords
            (``lr``, ``betas``, ``momentum``, ...).
        session_id, schedule, clipping, consistency: when creating (see Client.create_session).
        worker_id: this worker's id (default: generated; give stable ids for SYNC worker_ids).
            The worker joins the session at its first step; a restarted process may reuse the
            id (its join starts a new incarnation, see optd.Session).
        pull: when attaching, overwrite the local parameters with the server's (default True).
        return_dtype, gradient_dtype: wire dtypes ("f32" default; "bf16"/"f16" halve the bytes
            and round).
        timeout: deadline of each call in seconds (default: the client's).
    """

    def __init__(self, params: Iterable[Any], *, session: Union[Session, str, None] = None,
                 client: Optional[Client] = None, address: Optional[str] = None,
                 optimizer: Any = "adam", session_id: str = "", schedule: Any = None,
                 clipping: Any = None, consistency: Any = None,
                 worker_id: Optional[str] = None, pull: bool = True,
                 return_dtype: str = "f32", gradient_dtype: str = "f32",
                 timeout: Any = DEFAULT, tls: bool = False, tls_ca: Any = None,
                 tls_cert: Any = None, tls_key: Any = None, token: Optional[str] = None,
                 **hyperparameters: Any) -> None:
        for key in _TORCH_ONLY:
            hyperparameters.pop(key, None)
        groups, names = self._split_names(params)
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"parameter names must be unique: {names} (names repeated "
                                       f"in one param group)")
        self._names: List[str] = names
        self._return_dtype = return_dtype
        self._gradient_dtype = gradient_dtype
        self._timeout = timeout
        #: The StepResult of the last step (None before the first).
        self.last_result: Optional[StepResult] = None
        #: Steps not applied because the server had restarted from an older checkpoint (the
        #: restored parameters were pulled instead).
        self.skipped_steps: int = 0

        security_given = tls or any(v is not None for v in (tls_ca, tls_cert, tls_key, token))
        if security_given and (isinstance(session, Session) or client is not None):
            raise InvalidArgumentError("RemoteOptimizer: tls/tls_ca/tls_cert/tls_key/token go "
                                       "with address=; a given Client or Session has its own")
        if isinstance(session, Session):
            self.client = session.client
        elif client is not None:
            self.client = client
        elif address is not None:
            self.client = Client(address, tls=tls, tls_ca=tls_ca, tls_cert=tls_cert,
                                 tls_key=tls_key, token=token)
        else:
            raise InvalidArgumentError("RemoteOptimizer needs session=Session, or client= / "
                                       "address= to create or attach a session")
        flat = [p for g in groups for p in g["params"]]
        optimizer = _kind(optimizer)
        # Several param groups become the session's parameter groups (each torch group i is the
        # server's param_groups[i], with its own hyperparameters over the constructor's), unless
        # the optimizer keeps model-wide state (then all groups share one set).
        server_groups = None
        if len(groups) > 1 and session is None and _config.optimizer_kind(
                _config.optimizer_config(optimizer)) not in _MODEL_WIDE:
            server_groups = self._server_groups_of(groups, names, optimizer)
        #: True if this RemoteOptimizer created its session, False if it attached to one.
        self.created = session is None
        if session is None:
            values = {n: p.detach().to(torch.float32).cpu().numpy() for n, p in zip(names, flat)}
            try:
                self.session = self.client.create_session(
                    values, optimizer, session_id=session_id, schedule=schedule,
                    clipping=clipping, consistency=consistency, worker_id=worker_id,
                    timeout=timeout, param_groups=server_groups, **hyperparameters)
                info = self.session.cached_info
            except AlreadyExistsError:
                if not session_id:
                    raise
                # Get-or-create: every worker runs the same script; CreateSession is atomic on
                # the server, so exactly one creates and the others attach here, after checking
                # that the session is the one they would have created.
                self.created = False
                self.session = self.client.session(session_id, worker_id=worker_id)
                info = self.session.info(timeout=timeout)
                wanted = _config.session_config(optimizer, schedule=schedule, clipping=clipping,
                                                consistency=consistency,
                                                param_groups=server_groups, **hyperparameters)
                differences = _mismatches(wanted, info.config, "config")
                if differences:
                    raise AlreadyExistsError(
                        f"session {session_id!r} exists with another configuration: "
                        f"{'; '.join(differences)} (delete it, or use another session_id)")
                self._check_tensors(info, dict(zip(names, flat)))
                if pull:
                    session = self.session  # pulled below, once param_groups exist
        else:
            if hyperparameters or schedule is not None or clipping is not None or \
                    consistency is not None or session_id:
                raise InvalidArgumentError("RemoteOptimizer: when attaching to a session, give no "
                                           "optimizer configuration (use param_groups or "
                                           "session.update to change it)")
            self.session = session if isinstance(session, Session) else \
                self.client.session(session, worker_id=worker_id)
            info = self.session.info(timeout=timeout)
            self._check_tensors(info, dict(zip(names, flat)))
        self.kind: str = _config.optimizer_kind(info.config.optimizer)
        self._sync = info.config.consistency.mode == 1  # MODE_SYNC
        defaults = _torch_hyperparameters(info.config.optimizer)
        self._adding_allowed = True
        super().__init__(groups, defaults)
        self._adding_allowed = False
        self._take_server_groups(info)
        if session is not None and pull:
            self.pull()

    # -- construction helpers ----------------------------------------------------------------------

    @staticmethod
    def _split_names(params: Iterable[Any]) -> Tuple[List[Dict[str, Any]], List[str]]:
        """param groups with plain tensors, and the parameter names in order."""
        items = list(params)
        if not items:
            raise InvalidArgumentError("RemoteOptimizer got an empty parameter list")
        raw_groups = items if isinstance(items[0], dict) else [{"params": items}]
        groups, names, counter = [], [], 0
        group_names: List[List[str]] = []
        for raw in raw_groups:
            group = dict(raw)
            ps = raw["params"]
            ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
            tensors = []
            for p in ps:
                if isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str):
                    names.append(p[0])
                    tensors.append(p[1])
                else:
                    names.append(f"param.{counter}")
                    tensors.append(p)
                counter += 1
            group["params"] = tensors
            groups.append(group)
            group_names.append(names[len(names) - len(tensors):])
        if len(raw_groups) > 1 and len(set(names)) != len(names):
            # Groups from submodules' named_parameters() repeat short names ("weight", "bias"):
            # the session's names are then qualified by the group's index ("0.weight").
            names = [f"{i}.{n}" for i, group_names_i in enumerate(group_names)
                     for n in group_names_i]
        return groups, names

    def _check_tensors(self, info, local: Dict[str, torch.Tensor]) -> None:
        remote = {t.name: tuple(t.shape) for t in info.tensors}
        if set(remote) != set(local):
            raise InvalidArgumentError(
                f"session {info.session_id} has tensors {sorted(remote)} but the parameters are "
                f"{sorted(local)}")
        for name, p in local.items():
            if tuple(p.shape) != remote[name]:
                raise InvalidArgumentError(f"parameter {name!r} has shape {list(p.shape)}; session "
                                           f"{info.session_id} has {list(remote[name])}")

    @staticmethod
    def _server_groups_of(groups: List[Dict[str, Any]], names: List[str],
                          optimizer: Any) -> List[Dict[str, Any]]:
        """The session's param_groups for torch groups: each group's tensor names and its own
        hyperparameters (proto names), over the constructor's. Keys the optimizer does not have
        (a scheduler's ``initial_lr``, torch-only options) stay local, as torch keeps them."""
        config = _config.optimizer_config(optimizer)
        fields = getattr(config, _config.optimizer_kind(config)).DESCRIPTOR.fields_by_name
        out, start = [], 0
        for group in groups:
            n = len(group["params"])
            own = {k: (tuple(v) if isinstance(v, list) else v) for k, v in group.items()
                   if k in fields or (k == "betas" and "beta1" in fields)}
            out.append(dict(_proto_fields(own), tensors=names[start:start + n]))
            start += n
        return out

    def _take_server_groups(self, info, set_groups: bool = True) -> None:
        """Sets every param group's hyperparameters to the server's (unless not ``set_groups``),
        and what was sent (_sent: per group, torch names) to them. With the session's parameter
        groups (_server_groups), torch group i is the server's param_groups[i]; else every group
        has the session's."""
        remote = list(info.config.param_groups)
        self._server_groups = bool(remote)
        if remote:
            start, sizes = 0, [len(g["params"]) for g in self.param_groups]
            held = [list(g.tensors) for g in remote]
            mine = []
            for n in sizes:
                mine.append(self._names[start:start + n])
                start += n
            if held != mine:
                raise InvalidArgumentError(
                    f"session {info.session_id} has parameter groups {held}; these param_groups "
                    f"are {mine}: give the same groups in the same order")
            hps = [_torch_hyperparameters(g.optimizer) for g in remote]
        else:
            hps = [_torch_hyperparameters(info.config.optimizer)] * len(self.param_groups)
        for group, hp in zip(self.param_groups, hps):
            if set_groups:
                group.update(hp)
        # What the server holds, in torch names: a param_groups change is a difference from this.
        self._sent: List[Dict[str, Any]] = [dict(hp) for hp in hps]

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        if not getattr(self, "_adding_allowed", False):
            raise NotImplementedError(
                "RemoteOptimizer: a session's tensors are fixed at creation, so add_param_group "
                "cannot add parameters to a live session; give every param group to the "
                "constructor (each may have its own hyperparameters), or make a new "
                "RemoteOptimizer (a new session) with all of them")
        super().add_param_group(param_group)

    # -- parameters --------------------------------------------------------------------------------

    def _params(self) -> List[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def named_parameters(self) -> List[Tuple[str, torch.Tensor]]:
        """(session tensor name, parameter) pairs, in order."""
        return list(zip(self._names, self._params()))

    @torch.no_grad()
    def _write(self, values: Dict[str, Any]) -> None:
        for name, p in zip(self._names, self._params()):
            value = values.get(name)
            if value is None:
                continue
            if isinstance(value, RowSparse):
                src = torch.from_numpy(np.array(value.values, copy=True)).to(p.device, p.dtype)
                p.index_copy_(0, torch.from_numpy(value.indices).to(p.device), src)
                continue
            with warnings.catch_warnings():  # a read-only view of the reply, only read from here
                warnings.simplefilter("ignore", UserWarning)
                src = torch.from_numpy(value)
            p.copy_(src.view(p.shape))

    def pull(self) -> int:
        """Overwrites the local parameters with the server's; returns the version."""
        result = self.session.pull(timeout=self._timeout)
        self._write(result.tensors)
        return result.version

    # -- hyperparameters ---------------------------------------------------------------------------

    def _group_hyperparameters(self) -> Dict[str, Any]:
        """Group 0's hyperparameters; without the session's parameter groups every group must
        have the same."""
        first = {k: self.param_groups[0].get(k) for k in self._sent[0]}
        if self._server_groups:
            return first
        for i, group in enumerate(self.param_groups[1:], start=1):
            for k, v in first.items():
                if not _same(group.get(k), v):
                    raise InvalidArgumentError(
                        f"param_groups[{i}][{k!r}] = {group.get(k)!r} differs from "
                        f"param_groups[0][{k!r}] = {v!r}; {self.kind} keeps model-wide state, "
                        f"so its session has one set of hyperparameters")
        return first

    def sync_hyperparameters(self) -> bool:
        """Sends param_groups hyperparameters that differ from the server's (UpdateSession: the
        session's own, or each parameter group's). Called by step(); returns True if an update
        was sent."""
        if not self._server_groups:
            current = self._group_hyperparameters()
            changed = {k: v for k, v in current.items() if not _same(v, self._sent[0][k])}
            if not changed:
                return False
            self.session.update(self.kind, timeout=self._timeout, **_proto_fields(changed))
            self._sent[0].update(changed)
            return True
        updates = {}
        for i, (group, sent) in enumerate(zip(self.param_groups, self._sent)):
            changed = {k: group.get(k) for k in sent if not _same(group.get(k), sent[k])}
            if changed:
                updates[i] = changed
        if not updates:
            return False
        self.client.update_session(
            self.session.session_id, self.kind, timeout=self._timeout,
            param_groups={i: _proto_fields(c) for i, c in updates.items()})
        for i, changed in updates.items():
            self._sent[i].update(changed)
        return True

    # -- stepping ----------------------------------------------------------------------------------

    def _gradients(self) -> List[Tuple[str, Any]]:
        grads = []
        for name, p in zip(self._names, self._params()):
            g = p.grad
            if g is None:
                if self._sync:  # a SYNC step needs every tensor: a zero gradient stands in
                    grads.append((name, np.zeros(tuple(p.shape), dtype=np.float32)))
                    continue
                if self.kind in _NO_PARTIAL_STEPS:
                    missing = [n for n, q in zip(self._names, self._params()) if q.grad is None]
                    raise InvalidArgumentError(
                        f"RemoteOptimizer: {self.kind} refuses a partial step (its estimate sums "
                        f"over every parameter's state each step); .grad is None for "
                        f"{', '.join(missing)}: give every parameter a gradient")
                continue  # skipped as torch skips it: the server leaves it and its state alone
            elif g.is_sparse:
                g = g.coalesce()
                grads.append((name, RowSparse(g.indices()[0].cpu().numpy(),
                                              g.values().detach().to(torch.float32).cpu().numpy(),
                                              tuple(p.shape))))
            else:
                grads.append((name, g.detach().to(torch.float32).cpu().numpy()))
        return grads

    def _storage(self) -> Dict[str, np.ndarray]:
        """numpy views of the parameters' own storage (float32, contiguous, CPU ones): the step's
        reply is decoded straight into them (natively, without the GIL, on the native path)."""
        out = {}
        for name, p in zip(self._names, self._params()):
            if p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous():
                out[name] = p.detach().numpy()
        return out

    def step(self, closure=None, *, loss: Optional[float] = None):  # pylint: disable=arguments-differ
        """Sends every parameter's .grad (float32) and writes the returned parameters in place.

        ``closure`` (optional) re-evaluates the model and returns the loss, as in torch; the loss
        (or ``loss=``) is reported to the server with the step. Returns the closure's loss.
        """
        result_loss = None
        if closure is not None:
            with torch.enable_grad():
                result_loss = closure()
        if loss is None and result_loss is not None:
            loss = float(result_loss)
        self.sync_hyperparameters()
        grads = self._gradients()
        if not grads:  # every .grad is None: torch's step changes nothing either
            return result_loss
        out = self._storage()
        try:
            result = self.session.step(grads, loss=loss,
                                       return_dtype=self._return_dtype,
                                       gradient_dtype=self._gradient_dtype,
                                       timeout=self._timeout, out=out)
        except AbortedError as e:
            if not e.server_restarted:
                raise
            # The server restarted from a checkpoint older than this gradient's version: take
            # the restored parameters and go on from there (this step is not applied).
            self.pull()
            self.skipped_steps += 1
            return result_loss
        self._write({name: value for name, value in result.parameters.items()
                     if out.get(name) is not value})  # the rest was written in place
        self.last_result = result
        return result_loss
