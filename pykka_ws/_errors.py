"""The outcomes of a delegated request that are raised, not returned."""

from __future__ import annotations

from typing import Any

__all__ = [
    "EndpointRejected",
    "NotDelivered",
    "PayloadMismatch",
    "TooManyPending",
    "Unconfirmed",
    "WsDelegatedError",
    "WsOpenFailed",
    "WsSendRefused",
]

RequestId = int | str


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class WsDelegatedError(Exception):
    """Base class of every failed outcome of a `WsDelegatedRequest`.

    Attributes:
        request_id: The request's id, or None where no request is meant
            (`TooManyPending`).
    """

    def __init__(self, message: str, *, request_id: RequestId | None) -> None:
        super().__init__(message)
        self.request_id = request_id

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions with keyword-only attributes cannot be rebuilt from
        # ``args`` alone; this keeps them copyable and picklable.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class NotDelivered(WsDelegatedError):
    """The frame provably never reached the socket: safe to retry or refund.

    The cause (a write error, a closed connection) is chained as
    ``__cause__`` where there is one.
    """


class Unconfirmed(WsDelegatedError):
    """The frame may have been sent and no reply came by the deadline.

    This outcome is ambiguous on purpose: the endpoint may or may not have
    acted on the request.

    Attributes:
        written: True if ``send()`` returned for the frame (the bytes reached
            the kernel), False if the write had started but not finished.
    """

    def __init__(self, message: str, *, request_id: RequestId, written: bool) -> None:
        super().__init__(message, request_id=request_id)
        self.written = written


class PayloadMismatch(WsDelegatedError):
    """A request with this id and another fingerprint or mode is in flight.

    The request in flight is not affected.
    """


class TooManyPending(WsDelegatedError):
    """``max_pending_requests`` distinct ids are already in flight.

    Attributes:
        limit: The configured ``max_pending_requests``.
    """

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message, request_id=None)
        self.limit = limit


class EndpointRejected(WsDelegatedError):
    """The endpoint replied to the request with a refusal.

    Attributes:
        response: The inbound frame that the endpoint's matcher paired with
            the request.
        message: The matcher's message (`WsRequestMatch.message`).
        rate_limit_feedback: The matcher's
            `WsRequestMatch.rate_limit_feedback`, or None.
    """

    def __init__(
        self,
        message: str,
        *,
        request_id: RequestId,
        response: str | bytes,
        reason: str,
        rate_limit_feedback: Any = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.response = response
        self.message = reason
        self.rate_limit_feedback = rate_limit_feedback


class WsSendRefused(Exception):
    """A `WsSend` was refused: the outbound queue is full, or the actor will not reconnect.

    Attributes:
        capacity: The configured ``outbound_capacity``.
    """

    def __init__(self, message: str, *, capacity: int) -> None:
        super().__init__(message)
        self.capacity = capacity

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class WsOpenFailed(ConnectionError):
    """A request of `WsEndpoint.on_open` (auth, a subscription) did not end confirmed.

    It is the cause of the `WsDisconnected` that follows: the connection is
    closed. By default a rejection stops reconnecting (a refused login will
    not get better by retrying; `WsStats.last_error` names the request and
    the endpoint's reason) and anything else reconnects with backoff;
    `WsEndpoint.on_disconnect` decides, as always.

    Attributes:
        request_id: The on_open request's id.
        outcome: Its outcome (`EndpointRejected`, `Unconfirmed`, ...).
        rejected: True if the endpoint refused it.
    """

    def __init__(self, request_id: RequestId, outcome: BaseException) -> None:
        self.request_id = request_id
        self.outcome = outcome
        self.rejected = isinstance(outcome, EndpointRejected)
        what = "rejected" if self.rejected else "not confirmed"
        super().__init__(f"on_open request {request_id!r} {what}: {outcome}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))
