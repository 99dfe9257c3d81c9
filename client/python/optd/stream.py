"""optd.StepStream: steps over one StreamSteps call, submitted and answered in order (see
optd.client for the client's contract). Made by ``Client.stream`` and ``Session.stream``; used by
``Session.stream_steps``.
"""

import collections
import queue
import threading
import time
from typing import Any, Optional

import grpc

from optd.client import DEFAULT, Client, StepResult
from optd.errors import (DeadlineExceededError, FailedPreconditionError, InternalError,
                         InvalidArgumentError, OptdError, UnavailableError,
                         error_from_status)


# Ends the request iterator of a stream.
_CLOSE = object()


class _Slot:
    """A step submitted on a StepStream: the request last sent for it and, once known, its
    outcome (a StepResult or an OptdError)."""
    __slots__ = ("request", "owned", "outcome", "done", "resends", "attempts", "server_before",
                 "sent")

    def __init__(self, request, owned: bool, attempts: int = 1,
                 server_before: Optional[str] = None) -> None:
        self.request = request
        self.owned = owned  # built by the stream's Session: resent after a rejoin
        self.outcome: Any = None
        self.done = False
        self.resends = 0
        self.attempts = attempts  # > 1: resent on a new stream after the previous one failed
        self.server_before = server_before  # the server incarnation when first sent
        self.sent = False  # put on a stream's wire (a stream that failed before did not send it)


class StepStream:
    """One StreamSteps call: ``step`` sends one request and returns its reply, in order.

        with session.stream() as stream:
            for batch in batches:
                result = stream.step(grad(params, batch), loss=loss)
                params = result.parameters

    A step the server refuses raises its typed OptdError and the stream goes on. A step of the
    stream's Session refused with rejoin (the server forgot the worker) is resent on the stream
    after the worker joins again: each request on a stream is a first attempt, so nothing had
    been applied. A stream-level failure (connection lost, the server ends the call, a reply later
    than ``step_timeout``) raises from that call and every later one, and the stream is closed.
    ``submit``/``result`` pipeline several requests (replies still come back in order). Not
    thread-safe.
    """

    def __init__(self, client: Client, session: Optional["Session"],
                 step_timeout: Optional[float] = None) -> None:
        self.client = client
        self.session = session
        self.step_timeout = step_timeout
        self._requests: "queue.Queue[Any]" = queue.Queue()
        self._replies: "queue.Queue[Any]" = queue.Queue()
        # Steps whose outcome has not been returned, in submission order (result() returns the
        # oldest), and the steps whose request is on the wire, in the order sent (replies come
        # back in this order; a resent step moves to the end).
        self._pending: "collections.deque[_Slot]" = collections.deque()
        self._inflight: "collections.deque[_Slot]" = collections.deque()
        self._final: Optional[OptdError] = None  # the stream-level failure, once there is one
        self._reported = False  # whether _final has been raised to the caller
        self._closed = False
        self._call = client.stub.StreamSteps(iter(self._requests.get, _CLOSE),
                                             metadata=client.metadata or None,
                                             wait_for_ready=client.wait_for_ready)
        self._reader = threading.Thread(target=self._read, name="optd-stream-reader",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for reply in self._call:
                self._replies.put(reply)
            self._replies.put(None)  # clean end
        except grpc.RpcError as e:
            self._replies.put(self.client.rpc_error(e, "StreamSteps"))
        except Exception as e:  # pylint: disable=broad-except
            self._replies.put(InternalError(f"stream reader failed: {e!r}"))

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "StepStream":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.cancel()  # an exception is already on its way; do not wait for the server

    def submit(self, gradients: Any, *, session_id: Optional[str] = None,
               **step_options: Any) -> int:
        """Sends a step without waiting for its reply; returns its sequence number. ``gradients``
        may also be a built StepRequest (sent as it is, never resent). Without a session, give
        ``session_id`` (and, for idempotency, ``worker_id``/``sequence`` and
        ``worker_incarnation`` in step_options)."""
        if self._final is not None:
            self._reported = True
            raise self._final
        if self._closed:
            raise InvalidArgumentError("the stream is closed")
        owned = False
        if isinstance(gradients, self.client.pb2.StepRequest):
            request = gradients
        elif self.session is not None and session_id is None:
            request = self.session.request(gradients, **step_options)
            owned = True
        else:
            if session_id is None:
                raise InvalidArgumentError("submit: session_id is required on a stream opened "
                                           "by Client.stream()")
            request = self.client.step_request(session_id, gradients, **step_options)
        return self._submit(_Slot(request, owned, server_before=(
            self.session.server_incarnation if self.session is not None else None)))

    def _submit(self, slot: _Slot) -> int:
        """Puts ``slot``'s request on the wire."""
        if self._final is not None:
            self._reported = True
            raise self._final
        if self._closed:
            raise InvalidArgumentError("the stream is closed")
        self._pending.append(slot)
        self._inflight.append(slot)
        self._requests.put(slot.request)
        slot.sent = True
        return slot.request.sequence

    def result(self, timeout: Any = DEFAULT) -> StepResult:
        """The outcome of the oldest submitted step (raises its OptdError if it was refused)."""
        if self._final is not None:
            self._reported = True
            raise self._final
        if not self._pending:
            raise InvalidArgumentError("result: no step is waiting for a reply")
        wait = self.step_timeout if timeout is DEFAULT else timeout
        slot = self._pending[0]
        while not slot.done:
            self._settle(self._inflight.popleft(), self._next_reply(wait))
        self._pending.popleft()
        if isinstance(slot.outcome, OptdError):
            raise slot.outcome
        return slot.outcome

    def _next_reply(self, wait: Optional[float]):
        """The next StreamStepsResponse; a stream-level failure is recorded and raised."""
        try:
            item = self._replies.get(timeout=wait)
        except queue.Empty:
            self._fail(DeadlineExceededError(f"no reply on the StreamSteps stream within "
                                             f"{wait} s"))
            self._call.cancel()
            self._reported = True
            raise self._final from None
        if item is None:
            self._fail(UnavailableError("the server ended the StreamSteps stream with "
                                        f"{len(self._inflight)} step(s) unanswered"))
            self._reported = True
            raise self._final
        if isinstance(item, OptdError):
            self._fail(item)
            self._reported = True
            raise self._final
        return item

    def _settle(self, slot: _Slot, item) -> None:
        """Records the reply to ``slot``'s request, or resends it after a rejoin."""
        request = slot.request
        which = item.WhichOneof("result")
        if which == "reply":
            result = StepResult.from_proto(item.reply, sequence=request.sequence,
                                           attempts=slot.attempts,
                                           worker_incarnation=request.worker_incarnation)
            result.rejoins = slot.resends
            if self.session is not None and request.session_id == self.session.session_id:
                self.session._observe(result, slot.server_before)
            slot.outcome, slot.done = result, True
            return
        if which != "error":
            slot.outcome = InternalError("a StreamStepsResponse with neither reply nor error")
            slot.done = True
            return
        e = item.error
        error = self.client.security.explain(
            error_from_status(e.code, e.message,
                              e.current_version if e.current_version >= 0 else None, e.rejoin,
                              e.server_incarnation), "StreamSteps (Step)")
        error.attempts = slot.attempts
        rejoin = isinstance(error, FailedPreconditionError) and error.rejoin
        if self.session is not None and request.session_id == self.session.session_id and \
                not rejoin:
            self.session._observe_error(error, slot.server_before)
        if rejoin and slot.owned and self.session is not None and \
                self._owned_by_session(request):
            try:  # a first attempt on a stream: nothing was applied (a resend: see there)
                resend = self.session._resend_or_raise(request, error, slot.resends,
                                                       self.client.timeout, slot.server_before)
            except OptdError as failure:
                error = failure
            else:
                slot.request = resend
                slot.resends += 1
                slot.attempts = 1
                self._inflight.append(slot)
                self._requests.put(resend)
                return
        slot.outcome, slot.done = error, True

    def _owned_by_session(self, request) -> bool:
        return self.session is not None and self.session._owns(request)

    def step(self, gradients: Any, **step_options: Any) -> StepResult:
        """submit + result: one step, its reply."""
        timeout = step_options.pop("timeout", DEFAULT)
        self.submit(gradients, **step_options)
        return self.result(timeout)

    def _fail(self, error: OptdError) -> None:
        if self._final is None:
            self._final = error
        self._closed = True
        self._requests.put(_CLOSE)

    def close(self) -> None:
        """Half-closes the stream and waits for the server to end it; replies not collected are
        dropped. Raises a stream-level error that no earlier call has raised. Idempotent."""
        if not self._closed:
            self._closed = True
            self._requests.put(_CLOSE)
            deadline = None if self.step_timeout is None else time.monotonic() + \
                self.step_timeout * (1 + len(self._inflight))
            while True:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    item = self._replies.get(timeout=remaining)
                except queue.Empty:
                    self._final = self._final or DeadlineExceededError(
                        "the StreamSteps stream did not end in time after it was closed")
                    self._call.cancel()
                    break
                if item is None:
                    break
                if isinstance(item, OptdError):
                    self._final = self._final or item
                    break
            self._pending.clear()
            self._inflight.clear()
            self._reader.join(5.0)
        if self._final is not None and not self._reported:
            self._reported = True
            raise self._final

    def cancel(self) -> None:
        """Cancels the stream at once."""
        self._closed = True
        self._requests.put(_CLOSE)
        self._call.cancel()
