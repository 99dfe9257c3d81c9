"""optd.Session: one worker's handle on one session (see optd.client for the whole client's
contract: thread safety, joins, deadlines, errors, retries, server restarts).

Created by ``Client.create_session``, ``Client.session`` and the fork and .npz constructors; the
class is re-exported as ``optd.Session`` and ``optd.client.Session``.
"""

import json
import sys
import threading
import time
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
from google.protobuf import json_format

from optd import config as _config
from optd.client import (DEFAULT, NPZ_FORMAT, CheckpointResult, Client, Gradients, PullResult,
                         RetryPolicy, StepResult, default_worker_id)
from optd.errors import (AbortedError, FailedPreconditionError, InvalidArgumentError, OptdError,
                         StepOutcomeUnknownError)
from optd.security import retriable
from optd.state import OptimizerState
from optd.stream import StepStream, _Slot
from optd.tensors import DTypeLike


#: How many times one step is resent after its worker joined again (each resend is a first attempt
#: under the new incarnation; a server that keeps refusing it is not waited on forever).
MAX_REJOINS_PER_STEP = 3


class Session:
    """One worker's handle on one session: its id, worker id, incarnation, last sequence number
    and the version its parameters are at.

    Created by Client.create_session or Client.session. ``step`` joins the session before the
    worker's first step (JoinSession: a new incarnation of the worker id, sequences from 1), sends
    the next sequence number with the incarnation and (unless told otherwise) the known version,
    and updates the version from the reply, so a loop of ``step`` calls works in ASYNC, SYNC and
    BOUNDED sessions alike. A worker id may be reused by a later process (a restart): its join
    starts a new incarnation, and the old process's steps are refused from then on.

    When the server can no longer place the worker (it forgot it: a session remembers at most 1024
    workers; or another process joined with its id), ``step`` joins again and resends the step if
    the refused call was its first attempt (nothing was applied); if it was a retry after a lost
    reply, it raises StepOutcomeUnknownError (applied once or not at all; the worker has joined
    again and the next step works).

    Unjoined mode: ``Session(client, id, worker_id=..., sequence=N)`` with N > 0 does not join;
    its steps carry no incarnation and number on from N + 1 (the rules before joins existed: a
    restarted process must then number above its previous run). If the server asks it to join,
    it does, and continues as a joined worker.
    """

    def __init__(self, client: Client, session_id: str, *, worker_id: Optional[str] = None,
                 version: Optional[int] = None, sequence: int = 0, info: Any = None) -> None:
        if not session_id:
            raise InvalidArgumentError("session_id is empty")
        self.client = client
        self.session_id = session_id
        self.worker_id: str = worker_id or default_worker_id()
        #: The last sequence number used in the current incarnation (the next step sends
        #: sequence + 1).
        self.sequence: int = int(sequence)
        #: The worker's incarnation from its last join; None: not joined yet (it joins before its
        #: next step); 0: unjoined mode (see the class comment).
        self.incarnation: Optional[int] = 0 if self.sequence > 0 else None
        #: The version this worker's parameters are at (from create, pull or the last step).
        self.version: Optional[int] = version
        #: The server process of the session's last reply (None before any), the newest
        #: checkpointed version it reported (-1: none), and how many times replies showed the
        #: server had restarted since this Session first heard from it.
        self.server_incarnation: Optional[str] = None
        self.durable_version: int = -1
        self.server_restarts: int = 0
        #: Set by a ShardedSession (optd.sharded): the fingerprint of the placement its steps name
        #: (0: the session is not sharded).
        self.placement_fingerprint: int = 0
        self._info = info
        self._lock = threading.Lock()
        if info is not None:
            self._observe_server(info.server_incarnation, info.durable_version)

    @property
    def id(self) -> str:
        return self.session_id

    def __repr__(self) -> str:
        return (f"optd.Session({self.session_id!r}, worker_id={self.worker_id!r}, "
                f"incarnation={self.incarnation}, version={self.version}, "
                f"sequence={self.sequence})")

    def join(self, *, timeout: Any = DEFAULT) -> int:
        """JoinSession: starts a new incarnation of this worker (the previous one's steps are
        refused from now on) and returns it; the next step sends sequence 1. ``step`` joins by
        itself when needed; call this to join early (to fail fast) or to start afresh."""
        reply = self.client.join_session(self.session_id, self.worker_id, timeout=timeout)
        self._observe_server(reply.server_incarnation, None)
        with self._lock:
            self.incarnation = int(reply.worker_incarnation)
            self.sequence = int(reply.next_sequence) - 1
        return self.incarnation

    def _ensure_joined(self, timeout: Any = DEFAULT) -> None:
        if self.incarnation is None:
            self.join(timeout=timeout)

    def _rejoin(self, refused_incarnation: int, timeout: Any) -> int:
        """Joins again after a step of ``refused_incarnation`` was refused with rejoin, unless the
        worker already has (an earlier refusal of the same incarnation). Returns the incarnation
        to resend with. On failure the worker is left unjoined (its next step joins)."""
        with self._lock:
            if self.incarnation is not None and self.incarnation != refused_incarnation:
                return self.incarnation
            self.incarnation = None
        return self.join(timeout=timeout)

    def _resend_or_raise(self, request, error: FailedPreconditionError, resends: int,
                         timeout: Any, server_before: Optional[str] = None):
        """After ``request`` (built by this worker) was refused with rejoin: joins again and
        returns the request to resend (the refused call was a first attempt, so nothing was
        applied), or raises StepOutcomeUnknownError (it was a retry of an attempt whose reply was
        lost), or ``error`` itself when the step was already resent MAX_REJOINS_PER_STEP times.

        A retry refused by another server process than ``server_before`` (the one the step was
        first sent to) is treated as a first attempt: the server restarted and restored the
        session from a checkpoint that does not know this incarnation, so the checkpoint cannot
        hold the step either, and the session the server now has never applied it."""
        first_attempt = getattr(error, "attempts", 1) == 1 or \
            self._restarted_since(server_before, error.server_incarnation)
        if first_attempt and resends >= MAX_REJOINS_PER_STEP:
            raise error
        if first_attempt:
            incarnation = self._rejoin(request.worker_incarnation, timeout)
            resend = type(request)()
            resend.CopyFrom(request)
            resend.worker_incarnation = incarnation
            resend.sequence = self.next_sequence()
            return resend
        new_incarnation: Optional[int] = None
        join_note = "it has joined the session again as incarnation {}; its next step works"
        try:
            new_incarnation = self._rejoin(request.worker_incarnation, timeout)
            join_note = join_note.format(new_incarnation)
        except OptdError as join_error:
            join_note = (f"joining again failed ({join_error}); its next step joins again")
        unknown = StepOutcomeUnknownError(
            f"the outcome of step sequence {request.sequence} of worker {self.worker_id} "
            f"(incarnation {request.worker_incarnation}) on session {self.session_id} is unknown: "
            f"the reply of an earlier attempt was lost, and the retry was refused because the "
            f"server can no longer place the worker ({error.message}); the step may have been "
            f"applied once or not at all; {join_note}",
            worker_id=self.worker_id, worker_incarnation=request.worker_incarnation,
            sequence=request.sequence, new_incarnation=new_incarnation, cause=error)
        unknown.attempts = getattr(error, "attempts", 1)
        raise unknown from error

    def _owns(self, request) -> bool:
        return request.session_id == self.session_id and request.worker_id == self.worker_id \
            and request.sequence > 0

    def next_sequence(self) -> int:
        """Reserves and returns the next sequence number (of the current incarnation)."""
        with self._lock:
            self.sequence += 1
            return self.sequence

    @staticmethod
    def _restarted_since(before: Optional[str], now: str) -> bool:
        return bool(before) and bool(now) and before != now

    def _observe_server(self, incarnation: str, durable_version: Optional[int]) -> bool:
        """Records the server process (and durable version) of a reply about this session;
        returns True if it differs from the previous reply's (the server restarted)."""
        if not incarnation:
            return False
        with self._lock:
            restarted = self.server_incarnation is not None and \
                incarnation != self.server_incarnation
            if restarted:
                self.server_restarts += 1
            self.server_incarnation = incarnation
            if durable_version is not None:
                self.durable_version = int(durable_version)
            return restarted

    def _observe(self, result: StepResult, server_before: Optional[str] = DEFAULT) -> None:
        """Updates the version, the server incarnation and the durable version from a step's
        reply; ``server_before`` is the incarnation known when the step was sent (default: now).
        After a restart the version follows the restored server even when it is lower."""
        if server_before is DEFAULT:
            server_before = self.server_incarnation
        self._observe_server(result.server_incarnation, result.durable_version)
        result.server_restarted = self._restarted_since(server_before, result.server_incarnation)
        new = result.parameters_version if result.parameters else result.version
        with self._lock:
            if self.version is None or new > self.version or result.server_restarted:
                self.version = new

    def _observe_error(self, error: OptdError, server_before: Optional[str]) -> None:
        """Records what a refused step says about the server: its incarnation, and for an
        AbortedError the session's current version (and ``server_restarted``)."""
        self._observe_server(error.server_incarnation, None)
        if isinstance(error, AbortedError):
            error.server_restarted = self._restarted_since(server_before,
                                                           error.server_incarnation)
        if getattr(error, "current_version", None) is not None:
            with self._lock:
                self.version = error.current_version

    def info(self, *, timeout: Any = DEFAULT):
        """GetSession: the optd_pb2.Session (config with defaults, tensors, version, ...)."""
        self._info = self.client.get_session(self.session_id, timeout=timeout)
        self._observe_server(self._info.server_incarnation, self._info.durable_version)
        return self._info

    @property
    def cached_info(self):
        """The optd_pb2.Session last fetched (by create_session or info()), or None."""
        return self._info

    def pull(self, names: Optional[Sequence[str]] = None, *, dtype: DTypeLike = "f32",
             rows: Optional[Mapping[str, Sequence[int]]] = None, optimizer_state: bool = False,
             point: Union[str, int] = "training", timeout: Any = DEFAULT) -> PullResult:
        """Client.pull on this session; the worker's version becomes the pulled one."""
        result = self.client.pull(self.session_id, names, dtype=dtype, rows=rows,
                                  optimizer_state=optimizer_state, point=point, timeout=timeout)
        self._observe_server(result.server_incarnation, result.durable_version)
        with self._lock:
            self.version = result.version
        return result

    def checkpoint(self, *, timeout: Any = DEFAULT) -> CheckpointResult:
        """Client.checkpoint on this session: a checkpoint now; ``durable_version`` follows."""
        result = self.client.checkpoint(self.session_id, timeout=timeout)
        with self._lock:
            self.durable_version = max(self.durable_version, result.version)
        return result

    def import_optimizer_state(self, state: OptimizerState, *, timeout: Any = DEFAULT):
        """UpdateSession with ``state`` (see Client.update_session); returns the optd_pb2.Session.
        Refused whole (InvalidArgumentError, nothing changed) if it does not fit."""
        self._info = self.client.update_session(self.session_id, optimizer_state=state,
                                                timeout=timeout)
        return self._info

    def to_npz(self, path: str, *, timeout: Any = DEFAULT) -> PullResult:
        """Saves the session to a numpy ``.npz`` file: ``parameters/<tensor>`` float32 arrays,
        the optimizer state (``optimizer/<tensor>/step``, ``optimizer/<tensor>/array/<name>``,
        ``optimizer/<tensor>/scalar/<name>``), all from one Pull (one version), and
        ``config.json`` (uint8 bytes of JSON: format, session id, version, tensor names, array
        names per tensor, and the SessionConfig as proto3 JSON). Client.create_session_from_npz
        reads it back, bit for bit. Returns the Pull it saved."""
        pulled = self.pull(optimizer_state=True, timeout=timeout)
        info = self.info(timeout=timeout)
        state = pulled.optimizer_state or OptimizerState()
        meta = {
            "format": NPZ_FORMAT,
            "session_id": self.session_id,
            "version": pulled.version,
            "tensors": list(pulled.tensors),
            "optimizer_arrays": {name: list(t.arrays) for name, t in state.tensors.items()},
            "config": json.loads(json_format.MessageToJson(info.config)),
        }
        arrays: Dict[str, np.ndarray] = {
            "config.json": np.frombuffer(json.dumps(meta, indent=1).encode("utf-8"), np.uint8)}
        for name, values in pulled.tensors.items():
            arrays["parameters/" + name] = np.asarray(values, dtype=np.float32)
        arrays.update(state.to_flat())
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        return pulled

    def request(self, gradients: Gradients, *, loss: Optional[float] = None,
                version: Any = DEFAULT, return_parameters: Union[str, bool] = "all",
                return_dtype: DTypeLike = "f32", gradient_dtype: DTypeLike = "f32",
                return_point: Union[str, int] = "training"):
        """The next StepRequest of this worker (joins first if it has not; reserves a sequence
        number)."""
        return self._next_request(self.client.step_request, gradients, loss=loss,
                                  version=version, return_parameters=return_parameters,
                                  return_dtype=return_dtype, gradient_dtype=gradient_dtype,
                                  return_point=return_point)

    def _next_request(self, build, gradients: Gradients, *, version: Any, **fields: Any):
        """The next request of this worker, made by ``build`` (Client.step_request, or
        Client._new_step for the native path)."""
        self._ensure_joined()
        if version is DEFAULT:
            version = self.version
        if self.placement_fingerprint:
            # A shard of a sharded session (optd.sharded): the grpcio request, which carries the
            # placement's fingerprint (the native path does not yet).
            build = self.client.step_request
        request = build(self.session_id, gradients, worker_id=self.worker_id,
                        sequence=self.next_sequence(), version=version,
                        worker_incarnation=self.incarnation or 0, **fields)
        if self.placement_fingerprint:
            request.placement_fingerprint = self.placement_fingerprint
        return request

    def step(self, gradients: Gradients, *, loss: Optional[float] = None,
             version: Any = DEFAULT, return_parameters: Union[str, bool] = "all",
             return_dtype: DTypeLike = "f32", gradient_dtype: DTypeLike = "f32",
             timeout: Any = DEFAULT, retry: Optional[RetryPolicy] = None,
             out: Optional[Mapping[str, np.ndarray]] = None,
             return_point: Union[str, int] = "training") -> StepResult:
        """One step with this worker's incarnation and next sequence number (retried safely, see
        Client.step; the worker joins first if it has not).

        ``version`` defaults to the worker's known version (None: send none). On an AbortedError
        the worker's version is set to ``current_version`` when the server sent one, so after
        re-pulling (or simply stepping again in SYNC) the next gradient carries it.

        After a server restart: the step is retried until the restarted server answers (within
        the retry budget). If the restored session is behind the version the gradient was
        computed at, the step is refused with AbortedError (``server_restarted = True``): pull
        the restored parameters and go on. Otherwise it is applied and
        ``StepResult.server_restarted`` is True.

        Refused with rejoin (the server forgot the worker, or its id joined again elsewhere): the
        worker joins again and the step is resent under the new incarnation when the refused
        call was its first attempt (``StepResult.rejoins`` counts this); after a retry it raises
        StepOutcomeUnknownError (see there).

        ``out`` {name: writable float32 array}: returned parameters written in place (see
        Client.step).
        """
        self._ensure_joined(timeout)
        request = self._next_request(self.client._new_step, gradients, loss=loss,  # pylint: disable=protected-access
                                     version=version, return_parameters=return_parameters,
                                     return_dtype=return_dtype, gradient_dtype=gradient_dtype,
                                     return_point=return_point)
        server_before = self.server_incarnation
        resends = 0
        while True:
            try:
                result = self.client.send_step(request, timeout=timeout, retry=retry, out=out)
                break
            except FailedPreconditionError as e:
                if not e.rejoin:
                    self._observe_error(e, server_before)
                    raise
                request = self._resend_or_raise(request, e, resends, timeout, server_before)
                resends += 1
            except OptdError as e:
                self._observe_error(e, server_before)
                raise
        result.rejoins = resends
        self._observe(result, server_before)
        return result

    def update(self, optimizer: Any = None, *, schedule: Any = None, clipping: Any = None,
               timeout: Any = DEFAULT, **hyperparameters: Any):
        """UpdateSession: ``session.update(lr=0.01)``, ``update(schedule=optd.schedule(...))``,
        ``update(clipping=1.0)``. Returns the updated optd_pb2.Session."""
        if optimizer is None and hyperparameters and self._info is not None:
            optimizer = _config.optimizer_kind(self._info.config.optimizer)
        self._info = self.client.update_session(self.session_id, optimizer, schedule=schedule,
                                                clipping=clipping, timeout=timeout,
                                                **hyperparameters)
        return self._info

    def restore(self, version: int, *, timeout: Any = DEFAULT):
        """Restores the session to its checkpoint at ``version`` (Client.restore_session); this
        worker's version becomes it. Returns the restored optd_pb2.Session."""
        self._info = self.client.restore_session(self.session_id, version, timeout=timeout)
        with self._lock:
            self.version = self._info.version
        return self._info

    def delete(self, *, timeout: Any = DEFAULT) -> None:
        """DeleteSession."""
        self.client.delete_session(self.session_id, timeout=timeout)

    def stream(self, *, timeout: Any = None) -> "StepStream":
        """Opens a StreamSteps stream for this worker (a context manager). ``timeout``: deadline
        of each step's reply in seconds (default None: no deadline)."""
        return StepStream(self.client, self, step_timeout=self.client._deadline(timeout))

    def stream_steps(self, gradients: Iterable[Gradients], *, errors: str = "raise",
                     timeout: Any = None, retry: Optional[RetryPolicy] = None,
                     **step_options: Any) -> Iterator[Any]:
        """A worker loop over one stream: sends each item of ``gradients`` (pulled lazily, one
        at a time, so it may depend on the previous result) and yields its StepResult, in order.

        ``errors="raise"``: a refused step raises its OptdError (and ends the loop);
        ``errors="yield"``: the OptdError is yielded in its place and the loop goes on.
        ``step_options`` are those of Session.step (loss, return_parameters, ...). A step refused
        with rejoin is resent after joining again, as Session.step does.

        When the stream itself fails with a retriable code (the server went away, e.g. it
        restarted), a new stream is opened and the unanswered step resent with the same sequence
        number and incarnation, per ``retry`` (default: the client's policy): applied once, or
        answered as a duplicate. A resend the server cannot place (rejoin) raises
        StepOutcomeUnknownError, unless another server process answered it (a restart: then the
        worker joins again and the step is resent as new). After a restart to an older
        checkpoint, a step computed at a lost version is an AbortedError with
        ``server_restarted`` (raised, or yielded with ``errors="yield"``; the next step carries
        the restored version).
        """
        if errors not in ("raise", "yield"):
            raise InvalidArgumentError(f"errors = {errors!r}; must be 'raise' or 'yield'")
        policy = retry or self.client.retry
        step_timeout = self.client._deadline(timeout)
        stream: Optional[StepStream] = None
        try:
            for item in gradients:
                request = self.request(item, **step_options)
                slot = _Slot(request, True, server_before=self.server_incarnation)
                attempt = 0
                while True:
                    attempt += 1
                    try:
                        if stream is None:
                            stream = StepStream(self.client, self, step_timeout=step_timeout)
                        stream._submit(slot)
                        outcome: Any = stream.result()
                        break
                    except OptdError as e:
                        if stream is not None and stream.closed:
                            stream.cancel()
                            stream = None
                            if retriable(e, policy.retry_codes) and \
                                    attempt < policy.max_attempts:
                                time.sleep(policy.backoff(attempt))
                                # A resend is a retry only if the failed stream sent it.
                                slot = _Slot(slot.request, True,
                                             attempts=slot.attempts + (1 if slot.sent else 0),
                                             server_before=slot.server_before)
                                continue
                            e.attempts = attempt
                            raise
                        if errors == "raise":
                            raise
                        outcome = e
                        break
                yield outcome
        finally:
            if stream is not None:
                if sys.exc_info()[0] is None:
                    stream.close()
                else:
                    stream.cancel()
