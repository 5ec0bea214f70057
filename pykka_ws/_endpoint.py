"""What a `WebSocketActor` needs to know about the remote API it talks to."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable, Sequence

    from pykka_ws._messages import Frame, RequestId, WsDelegatedRequest, WsRequestMatch

__all__ = ["WsEndpoint"]


class WsEndpoint:
    """The hooks a `WebSocketActor` calls; subclass it for your API.

    Every hook has a harmless default. Hooks run on the actor's thread, so
    they must be quick and must not block. A hook that raises (or returns the
    wrong type) is logged with its traceback and counted in
    `WsStats.hook_errors`; the actor keeps running and treats the hook as if
    it had returned its default.
    """

    def on_open(self) -> Iterable[Frame | WsDelegatedRequest]:
        """Return what to send first on every (re)connection.

        Authentication, then subscriptions: this is how state is recovered
        after a reconnect. They are sent before any queued traffic, in
        order. A plain frame is just sent. A `WsDelegatedRequest` *gates*
        the connection: queued traffic is released only once each such
        request has ended confirmed; one that is rejected or unconfirmed
        closes the connection (`WsOpenFailed`; a rejection stops
        reconnecting by default, see `on_disconnect`). Frames of this hook
        never appear in any log record, at any level.
        """
        return ()

    def match_response(
        self,
        frame: Frame,  # noqa: ARG002
    ) -> WsRequestMatch | Sequence[WsRequestMatch] | None:
        """Pair an inbound frame with the request it answers.

        Return a `WsRequestMatch` naming the request id and whether the
        endpoint accepted it, or None if the frame answers no request (it is
        then passed to `parse` and on to the inbound subscribers). A batch
        reply may return a sequence of matches: each completes its request,
        and if one answers no request the frame is passed on too.
        """
        return None

    def parse(self, frame: Frame) -> Any:
        """Return what inbound subscribers get in `WsInbound.message`.

        Return None to drop the frame. The default passes the frame as is.
        """
        return frame

    def route(self, message: Any) -> Hashable | None:  # noqa: ARG002
        """Return the routing key of a parsed inbound message (a channel, a symbol).

        A message whose key has routes (`WsRoute`, `WsSubscribe(route=...)`)
        goes to those actors only; None (the default), or a key without
        routes, sends it to every ``inbound`` subscriber.
        """
        return None

    def answer(self, message: Any) -> Iterable[Frame]:  # noqa: ARG002
        """Return frames to send in answer to a parsed inbound message (default: none).

        For servers that send their own heartbeat (``test_request``,
        ``{"op": "ping"}``) and expect a reply; the frames are sent like a
        `WsSend`, in order with other traffic.
        """
        return ()

    def sequence(self, message: Any) -> tuple[Hashable, int] | None:  # noqa: ARG002
        """Return ``(stream key, number)`` for a parsed message of a sequenced stream.

        With it, a gap in a stream's numbers re-sends that stream's
        subscription (the `WsSubscribe` with that key) without dropping the
        connection, and tells `WsGap`; a number at or below the last seen is
        a duplicate, dropped and counted. Numbers must keep increasing
        across resubscriptions (a venue's update id does); a new connection
        starts every stream afresh (its first number is the baseline).
        None (default): not sequenced.
        """
        return None

    def probe(self, request_id: RequestId, frame: Frame) -> WsDelegatedRequest | None:  # noqa: ARG002
        """Return a request that asks whether an `Unconfirmed` request took effect.

        E.g. "order status by client order id". Sent once a connection is
        open and ``probe_delay`` seconds after the request ended
        ``Unconfirmed(written=True)`` (data buffered before a break can
        still be executed: probe too early and the venue does not have it
        *yet*). None (default): no probe.
        """
        return None

    def probe_result(self, response: Frame) -> bool | None:  # noqa: ARG002
        """Read a probe's reply: True (it took effect), False (not there), None (unknown)."""
        return None

    def on_disconnect(self, cause: BaseException | None) -> bool:
        """Decide whether to reconnect after a connection is lost or refused.

        Args:
            cause: The exception that ended the connection, or None.

        Returns:
            True to reconnect (after the backoff delay), False to stay
            disconnected; requests then end by their deadlines. The default
            stops on refusals that retrying will not fix (HTTP 401 and 403,
            an invalid URI, a certificate failure, an ``on_open`` request
            the endpoint rejected: `WsOpenFailed`) and reconnects otherwise.
        """
        return not is_permanent_failure(cause)


def is_permanent_failure(cause: BaseException | None) -> bool:
    """Return True for a connection failure that retrying will not fix."""
    import ssl  # noqa: PLC0415 - only needed on this cold path

    from websockets.exceptions import InvalidStatus, InvalidURI  # noqa: PLC0415

    from pykka_ws._errors import WsOpenFailed  # noqa: PLC0415

    seen: set[int] = set()
    exc = cause
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, InvalidStatus) and exc.response.status_code in {401, 403}:
            return True
        if isinstance(exc, InvalidURI | ssl.SSLCertVerificationError):
            return True
        if isinstance(exc, WsOpenFailed) and exc.rejected:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
