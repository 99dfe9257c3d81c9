"""Sessions sharded over several optd servers (README, Sharding).

A sharded session spans N optd servers ("shards"). Its placement -- which shard holds which whole
tensor, or which row range of a large tensor -- is planned once by the server (PlanPlacement),
given to every shard at creation and stored there; every client reads it back from the shards, and
every step names its fingerprint, so a client holding another map is refused. A worker's step is
cut along the placement and sent to every shard at once (one thread per shard); the replies are
put back together, so the worker sees whole tensors, as from one server.

``optd.Client([a, b, c])`` (a list of addresses) returns a ShardedClient; ``ShardedClient.resolve``
turns one DNS name (e.g. a Kubernetes headless service) into the addresses behind it.

What holds across shards (each shard is a whole optd session over its slices, with its own
version, exactly-once table and SYNC barrier):
- SYNC: every shard's barrier takes the same K workers' gradients for the same version, so every
  shard steps once per barrier and the versions stay equal; the result is bit for bit what one
  server gives (element-wise updates, sums in worker-id order).
- ASYNC: each shard applies each step when it arrives; two workers' steps may reach two shards in
  different orders, so a shard's parameters are those of one server that applied the same steps
  in that shard's order. Versions advance by one per step on every shard.
- Exactly once: each shard keeps the worker's sequence numbers; a step retried after a failure is
  applied at most once on each shard (a shard that had applied it answers ``duplicate``).
- Optimizers and clipping that need the whole model in every step (normalized GD's global norm,
  Prodigy, D-Adaptation, DoG; clipping.max_norm) are refused at planning (FailedPreconditionError).
"""

import concurrent.futures
import socket
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from optd import config as _config
from optd.client import DEFAULT, Client, Gradients, _items
from optd.errors import (AbortedError, FailedPreconditionError, InvalidArgumentError, OptdError,
                         ShardRestartedError)
from optd.results import PullResult, StepResult
from optd.session import Session
from optd.tensors import RowSparse

__all__ = ["ShardedClient", "ShardedSession", "DEFAULT_CHECKPOINT_EVERY"]

#: Placement.checkpoint_every_versions of the sessions ShardedClient creates.
DEFAULT_CHECKPOINT_EVERY = 100
#: How long ShardedSession.pull waits for a SYNC session's shards to agree on a version.
PULL_AGREE_TIMEOUT_S = 10.0


class ShardedClient:
    """Clients of every shard of a sharded deployment.

    Args:
        addresses: "host:port" of every shard (at least two; their order does not matter to
            sessions that exist: each shard says which part it holds).
        **client_options: passed to every optd.Client (timeout, tls_*, token, retry, ...).
    """

    def __init__(self, addresses: Sequence[str], **client_options: Any) -> None:
        addresses = list(addresses)
        if len(addresses) < 2:
            raise InvalidArgumentError(f"addresses = {addresses!r}: a sharded client needs at least "
                                       f"two shard addresses (use optd.Client for one server)")
        if len(set(addresses)) != len(addresses):
            raise InvalidArgumentError(f"addresses = {addresses!r}: an address is repeated")
        self.addresses = addresses
        self.clients = [Client(a, **client_options) for a in addresses]
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(addresses),
                                                           thread_name_prefix="optd-shard")

    @staticmethod
    def resolve(name: str, port: int) -> List[str]:
        """The "ip:port" of every address ``name`` resolves to (a Kubernetes headless service
        resolves to its pods), sorted: ``ShardedClient(ShardedClient.resolve("optd", 50051))``.
        InvalidArgumentError if it does not resolve."""
        try:
            infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise InvalidArgumentError(f"cannot resolve {name!r}: {e}") from None
        hosts = sorted({info[4][0] for info in infos})
        return [f"[{h}]:{port}" if ":" in h else f"{h}:{port}" for h in hosts]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for c in self.clients:
            c.close()

    def __enter__(self) -> "ShardedClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"optd.ShardedClient({self.addresses!r})"

    def map(self, fn, items):
        """fn(item) for every item, at once on the client's shard threads; their results in
        order. The first exception is raised after every call has finished."""
        return _map(self._pool, fn, items)

    # -- sessions ----------------------------------------------------------------------------------

    def plan(self, shapes: Dict[str, Sequence[int]], optimizer: Any = "adam", *,
             clipping: Any = None, split_min_elements: int = 0, timeout: Any = DEFAULT,
             **hyperparameters: Any):
        """The placement (optd_pb2.Placement) of a model of these tensor shapes over the shards
        (PlanPlacement on the first shard: the server plans, so every client plans alike).
        ``optimizer`` as in create_session (a kind with hyperparameters, an OptimizerConfig or a
        SessionConfig)."""
        pb2 = self.clients[0].pb2
        if isinstance(optimizer, pb2.SessionConfig):
            config = optimizer
        else:
            config = _config.session_config(optimizer, clipping=clipping, **hyperparameters)
        return self._plan(config, shapes, split_min_elements, timeout)

    def _plan(self, config, shapes: Dict[str, Sequence[int]], split_min_elements: int,
              timeout: Any):
        client = self.clients[0]
        request = client.pb2.PlanPlacementRequest(
            optimizer=config.optimizer, clipping=config.clipping, shards=len(self.clients),
            split_min_elements=int(split_min_elements))
        for name, shape in shapes.items():
            request.tensors.add(name=name, shape=[int(d) for d in shape])
        return client._call("PlanPlacement", request, timeout, client.retry)[0]

    def create_session(self, tensors: Gradients, optimizer: Any = "adam", *, session_id: str,
                       schedule: Any = None, clipping: Any = None, consistency: Any = None,
                       split_min_elements: int = 0, worker_id: Optional[str] = None,
                       checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
                       recovery: str = "auto", timeout: Any = DEFAULT,
                       **hyperparameters: Any) -> "ShardedSession":
        """Creates the session on every shard (shard i on addresses[i]) and returns it.

        ``session_id`` is required (every shard holds the session under it). The placement is
        planned first; each shard then gets its slices' initial values and the whole map. If a
        shard refuses, the shards that had accepted are deleted again and the error is raised.
        ``split_min_elements``: tensors of at least this many elements (and two rows) are split
        into row ranges (0: the server's default, 4Mi). ``checkpoint_every``: shards started with
        --checkpoint_dir checkpoint the session at every multiple of this version, so that after
        a shard restarts every shard can go back to a common version (0: never; see recover).
        ``recovery``: see ShardedSession.recovery."""
        if not session_id:
            raise InvalidArgumentError("session_id is required for a sharded session (every "
                                       "shard holds it under the same id)")
        values = [(name, np.asarray(v, dtype=np.float32)) for name, v in _items(tensors)]
        config = _config.session_config(optimizer, schedule=schedule, clipping=clipping,
                                        consistency=consistency, **hyperparameters)
        placement = self._plan(config, {n: v.shape for n, v in values}, split_min_elements,
                               timeout)
        by_name = dict(values)

        def create(shard: int):
            client = self.clients[shard]
            shard_config = client.pb2.SessionConfig()
            shard_config.CopyFrom(config)
            shard_config.placement.CopyFrom(placement)
            shard_config.placement.shard = shard
            shard_config.placement.checkpoint_every_versions = int(checkpoint_every)
            mine = {s.name: _rows(by_name[s.tensor], s) for s in placement.slices
                    if s.shard == shard}
            return client.create_session(mine, shard_config, session_id=session_id,
                                         worker_id=worker_id, timeout=timeout)

        outcomes = self.map(_guarded(create), range(len(self.clients)))
        failed = [o for o in outcomes if isinstance(o, Exception)]
        if failed:
            for shard, o in enumerate(outcomes):
                if not isinstance(o, Exception):
                    try:
                        o.delete(timeout=timeout)
                    except OptdError:
                        pass
            raise failed[0]
        return ShardedSession(self, session_id, outcomes, placement, recovery=recovery)

    def session(self, session_id: str, *, worker_id: Optional[str] = None,
                recovery: str = "auto", timeout: Any = DEFAULT) -> "ShardedSession":
        """Attaches to an existing sharded session: reads its placement from every shard
        (FailedPreconditionError if they disagree, or a shard holds no shard of it)."""
        infos = self.map(lambda c: c.get_session(session_id, timeout=timeout), self.clients)
        by_shard: Dict[int, Session] = {}
        placement = None
        for client, info in zip(self.clients, infos):
            p = info.config.placement
            if p.shards == 0:
                raise FailedPreconditionError(f"session {session_id} on {client.address} is not "
                                              f"sharded: use optd.Client({client.address!r})")
            if placement is None:
                placement = p
            if p.fingerprint != placement.fingerprint or p.shards != len(self.clients):
                raise FailedPreconditionError(
                    f"the shards disagree on session {session_id}'s placement: {client.address} "
                    f"holds shard {p.shard} of {p.shards} (fingerprint {p.fingerprint:#x}), "
                    f"another shard of {placement.shards} (fingerprint "
                    f"{placement.fingerprint:#x}); give every shard's address, once")
            if p.shard in by_shard:
                raise FailedPreconditionError(f"two addresses hold shard {p.shard} of session "
                                              f"{session_id}")
            by_shard[p.shard] = Session(client, session_id, worker_id=worker_id,
                                        version=info.version, info=info)
        sessions = [by_shard[i] for i in range(len(self.clients))]
        return ShardedSession(self, session_id, sessions, placement, recovery=recovery)


def _map(pool, fn, items):
    futures = [pool.submit(fn, item) for item in items]
    concurrent.futures.wait(futures)
    return [f.result() for f in futures]


def _guarded(fn):
    def run(item):
        try:
            return fn(item)
        except Exception as e:  # pylint: disable=broad-except
            return e
    return run


def _rows(array: np.ndarray, s) -> np.ndarray:
    """The rows [row_begin, row_end) of `array` (a scalar: itself)."""
    if array.ndim == 0:
        return array
    return array[s.row_begin:s.row_end]


class ShardedSession:
    """A worker on a sharded session: one optd.Session per shard (``sessions[i]`` on shard i),
    all with the same worker id. Steps and pulls take and give whole tensors."""

    def __init__(self, client: ShardedClient, session_id: str, sessions: List[Session],
                 placement, *, recovery: str = "auto") -> None:
        if recovery not in ("auto", "wait"):
            raise InvalidArgumentError(f"recovery = {recovery!r}: must be 'auto' (this worker "
                                       f"restores the shards after one restarted) or 'wait' "
                                       f"(another worker does)")
        #: After a shard restarted: "auto", this worker's step restores every shard to their
        #: newest common checkpoint (recover); "wait", another worker does, and this one's pulls
        #: wait for the shards to agree. In a SYNC job give one worker "auto" and the others
        #: "wait": two workers restoring at once can leave a barrier half-filled on some shards.
        self.recovery = recovery
        self.client = client
        self.session_id = session_id
        self.sessions = sessions
        # Threads of this worker's own: its step on every shard at once. Not the client's (a
        # SYNC step waits at each shard's barrier for the other workers, whose own steps must not
        # queue behind it).
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(sessions),
                                                           thread_name_prefix="optd-worker")
        #: The placement (optd_pb2.Placement, shard 0's copy).
        self.placement = placement
        for s in sessions:
            s.placement_fingerprint = placement.fingerprint
        self._slices = list(placement.slices)
        self._is_sync: Optional[bool] = None
        self._names: List[str] = []
        for s in self._slices:
            if not self._names or self._names[-1] != s.tensor:
                self._names.append(s.tensor)

    @property
    def worker_id(self) -> str:
        return self.sessions[0].worker_id

    @property
    def version(self) -> Optional[int]:
        """The lowest version of the shards' sessions (equal in SYNC)."""
        versions = [s.version for s in self.sessions]
        return None if any(v is None for v in versions) else min(versions)

    def __repr__(self) -> str:
        return (f"optd.ShardedSession({self.session_id!r}, shards={len(self.sessions)}, "
                f"worker_id={self.worker_id!r})")

    def _split(self, gradients: Gradients) -> List[Dict[str, Any]]:
        given = dict(_items(gradients))
        unknown = sorted(set(given) - set(self._names))
        missing = [n for n in self._names if n not in given]
        if unknown or missing:
            raise InvalidArgumentError(
                f"gradients name {unknown or 'no unknown tensor'} and lack "
                f"{missing or 'none'}; session {self.session_id} has tensors {self._names}")
        parts: List[Dict[str, Any]] = [{} for _ in self.sessions]
        for s in self._slices:
            g = given[s.tensor]
            if isinstance(g, RowSparse):  # the rows in the slice, renumbered from its first
                keep = (g.indices >= s.row_begin) & (g.indices < s.row_end)
                parts[s.shard][s.name] = RowSparse(g.indices[keep] - s.row_begin, g.values[keep],
                                                   (s.row_end - s.row_begin, *s.shape[1:]))
            else:
                parts[s.shard][s.name] = _rows(np.asarray(g, dtype=np.float32), s)
        return parts

    def _join(self, per_shard: List[Dict[str, Any]]) -> Dict[str, np.ndarray]:
        """Whole tensors from the shards' slices (in model order)."""
        pieces: Dict[str, List[np.ndarray]] = {n: [] for n in self._names}
        for s in self._slices:
            value = per_shard[s.shard].get(s.name)
            if value is None:
                return {}
            pieces[s.tensor].append(np.asarray(value))
        return {n: (p[0] if len(p) == 1 else np.concatenate(p)) for n, p in pieces.items()}

    def step(self, gradients: Gradients, *, loss: Optional[float] = None,
             timeout: Any = DEFAULT, **options: Any) -> StepResult:
        """One step: the gradients (whole tensors, dense or RowSparse) cut along the placement
        and sent to every shard at once, each through its Session.step (joins, sequence
        numbers, retries). Returns the shards' results put together: whole parameters, the
        lowest version, the norm over the whole gradient. If a shard's step fails, the error is
        raised after every shard has answered; the shards that applied it keep it (each shard's
        exactly-once table makes a resend of that step with the same sequence safe)."""
        parts = self._split(gradients)
        futures = [self._pool.submit(_guarded(
            lambda i: self.sessions[i].step(parts[i], loss=loss, timeout=timeout, **options)), i)
            for i in range(len(self.sessions))]
        restarted: List[int] = []
        version = None
        for done in concurrent.futures.as_completed(futures):
            if not getattr(done.result(), "server_restarted", False):
                continue
            restarted.append(futures.index(done))
            # At once, not after every shard has answered: in SYNC the other shards' parts wait
            # at barriers for workers that wait for this recovery (restoring ends those waits).
            if self.recovery == "auto" and version is None:
                version = self.recover(timeout=timeout)
        results = [f.result() for f in futures]
        if restarted:
            restarted.sort()
            which = (f"shard {', '.join(str(i) for i in restarted)} of session {self.session_id} "
                     f"({', '.join(self.sessions[i].client.address for i in restarted)})")
            if self.recovery == "wait":
                raise ShardRestartedError(
                    f"{which} restarted from a checkpoint; another worker restores every shard "
                    f"to a common version: pull (it waits for them) and step again", None,
                    restarted)
            raise ShardRestartedError(
                f"{which} restarted from a checkpoint; every shard is restored to version "
                f"{version}: pull and step again", version, restarted)
        for r in results:
            if isinstance(r, Exception):
                raise r
        first = results[0]
        return StepResult(
            version=min(r.version for r in results),
            parameters=self._join([r.parameters for r in results]),
            parameters_version=min(r.parameters_version for r in results),
            gradient_norm=float(np.sqrt(sum(r.gradient_norm ** 2 for r in results))),
            learning_rate=first.learning_rate, duplicate=all(r.duplicate for r in results),
            workers=min(r.workers for r in results),
            missing_workers=sorted({w for r in results for w in r.missing_workers}),
            staleness=max(r.staleness for r in results), sequence=first.sequence,
            attempts=max(r.attempts for r in results),
            worker_incarnation=first.worker_incarnation,
            rejoins=max(r.rejoins for r in results), server_incarnation=first.server_incarnation,
            durable_version=min(r.durable_version for r in results),
            server_restarted=any(r.server_restarted for r in results), point=first.point,
            estimates=dict(first.estimates))

    def pull(self, *, timeout: Any = DEFAULT, **options: Any) -> PullResult:
        """Every tensor, whole, from every shard at once (the lowest of their versions).

        SYNC: the shards step together, so their versions differ only after a shard restarted
        behind the others, or while they are being restored. With ``recovery="auto"`` the pull
        restores them (recover) and pulls again; with ``"wait"`` it pulls again until they agree
        (for up to PULL_AGREE_TIMEOUT_S, else AbortedError). So a gradient is never computed on
        slices of two versions. ASYNC: shards may be a step apart (steps in flight); the slices are
        returned as they are."""
        deadline = time.monotonic() + PULL_AGREE_TIMEOUT_S
        while True:
            results = _map(self._pool, lambda s: s.pull(timeout=timeout, **options),
                           self.sessions)
            versions = [r.version for r in results]
            if len(set(versions)) == 1 or not self._sync():
                break
            if self.recovery == "auto":
                # SYNC shards cannot drift apart while this worker pulls (no barrier completes
                # without it): a shard restarted behind the others. Restore them now; a worker
                # that only pulls would otherwise never see the restart in a step.
                self.recover(timeout=timeout)
                continue
            if time.monotonic() > deadline:
                raise AbortedError(
                    f"session {self.session_id}: its shards are at versions {versions}, not one "
                    f"(a shard failed, or a recovery is under way): pull again",
                    current_version=min(versions))
            time.sleep(0.05)
        return PullResult(version=min(r.version for r in results),
                          tensors=self._join([r.tensors for r in results]),
                          server_incarnation=results[0].server_incarnation,
                          durable_version=min(r.durable_version for r in results),
                          point=results[0].point)

    def _sync(self) -> bool:
        """Whether the session is SYNC (read once from shard 0)."""
        if self._is_sync is None:
            info = self.sessions[0]._info or self.sessions[0].info()  # pylint: disable=protected-access
            self._is_sync = (info.config.consistency.mode ==
                             self.client.clients[0].pb2.Consistency.MODE_SYNC)
        return self._is_sync

    def recover(self, *, timeout: Any = DEFAULT) -> int:
        """Brings every shard back to one version after a shard restarted from a checkpoint, and
        returns it. When the shards' versions already agree, nothing changes. Otherwise the
        version is the newest one every shard holds a checkpoint of, at or below every shard's
        current version (Session.checkpoint_versions; the aligned checkpoints of
        ``checkpoint_every`` make sure there is one), and every shard at another version is
        restored to it (Client.restore_session). Steps in flight end with AbortedError.
        FailedPreconditionError if the shards hold no common checkpoint. Called by ``step`` when
        a shard is seen restarted; safe to call from several workers at once in SYNC (they agree
        on the version and nobody steps meanwhile). In ASYNC a worker stepping while another
        recovers may lose that step on some shards: stop stepping until recover returns."""
        infos = [s.info(timeout=timeout) for s in self.sessions]
        versions = [info.version for info in infos]
        if len(set(versions)) == 1:
            target = versions[0]
        else:
            common = set(infos[0].checkpoint_versions).intersection(
                *(info.checkpoint_versions for info in infos[1:]))
            candidates = [v for v in common if v <= min(versions)]
            if not candidates:
                raise FailedPreconditionError(
                    f"session {self.session_id}: the shards are at versions {versions} and hold "
                    f"no checkpoint of a common version at or below {min(versions)} (checkpoints: "
                    f"{[sorted(info.checkpoint_versions) for info in infos]}); start the shards "
                    f"with --checkpoint_dir and create the session with checkpoint_every > 0")
            target = max(candidates)
            behind = [i for i, v in enumerate(versions) if v != target]
            # One after another, on this thread: the worker's own threads may all be waiting at
            # barriers that these restores end.
            for i in behind:
                self.sessions[i].restore(target, timeout=timeout)
        for s in self.sessions:
            with s._lock:  # pylint: disable=protected-access
                s.version = target
        return target

    def info(self, *, timeout: Any = DEFAULT) -> List[Any]:
        """Every shard's optd_pb2.Session, in shard order."""
        return _map(self._pool, lambda s: s.info(timeout=timeout), self.sessions)

    def close(self) -> None:
        """Stops this worker's threads (the shards' sessions stay)."""
        self._pool.shutdown(wait=True)

    def delete(self, *, timeout: Any = DEFAULT) -> None:
        """Deletes the session on every shard (every shard is tried; the first error raised)."""
        outcomes = _map(self._pool, _guarded(lambda s: s.delete(timeout=timeout)), self.sessions)
        for o in outcomes:
            if isinstance(o, Exception):
                raise o

