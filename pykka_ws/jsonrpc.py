"""JSON-RPC 2.0 over WebSocket text frames: an endpoint and frame builders.

`JsonRpcEndpoint` pairs replies with requests by their ``"id"``, makes an
``"error"`` reply an `EndpointRejected` whose message names the error's
message and code, completes each id of a batch reply, and passes every other
frame on to the inbound subscribers decoded (each frame is decoded once).
`request` builds the `WsDelegatedRequest` of a call; `request_frame` and
`notification` build bare frames (for `WsEndpoint.on_open`, or `WsSend`).

Example::

    from pykka_ws import WebSocketActor
    from pykka_ws.jsonrpc import JsonRpcEndpoint, request

    ws = WebSocketActor.start(url, endpoint=JsonRpcEndpoint(), inbound=consumer)
    ok = ws.ask(request(1, "public/get_time", timeout=2.0))
    result = json.loads(ok.response)["result"]

    try:
        ws.ask(request(2, "private/buy", {"amount": -1}))
    except EndpointRejected as exc:
        exc.message                           # "Invalid params (code -32602)"
        json.loads(exc.response)["error"]     # the whole error object

The consumer gets every notification as a `WsInbound` whose ``message`` is
the decoded JSON object (a `dict`).

To resolve ``Unconfirmed`` calls (`WsResolved`), give the venue's status call:
override `JsonRpcEndpoint.probe_call` (and `JsonRpcEndpoint.probe_reply`)::

    class Venue(JsonRpcEndpoint):
        def probe_call(self, request_id, call):
            if call["method"] != "private/buy":
                return None
            return "private/get_order_state_by_label", {"label": call["params"]["label"]}

        def probe_reply(self, reply):
            result = reply.get("result")
            return None if result is None else bool(result)  # []: not there
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

from pykka_ws._endpoint import WsEndpoint
from pykka_ws._messages import WsDelegatedRequest, WsRequestMatch, check_request_id

if TYPE_CHECKING:
    from typing import TypeGuard, Unpack

    from pykka import ActorRef

    from pykka_ws._messages import Frame, RequestId, WsConfirmMode

__all__ = [
    "JsonRpcEndpoint",
    "Params",
    "RequestOptions",
    "find_reply",
    "notification",
    "request",
    "request_frame",
]

Params = dict[str, Any] | list[Any] | tuple[Any, ...]
"""The params of a call: by name (a `dict`) or by position (a `list` or `tuple`)."""

_NOT_JSON: Any = object()
"""What `JsonRpcEndpoint._decoded` returns for a frame that is not JSON."""


class RequestOptions(TypedDict, total=False):
    """The options `request` passes on to `WsDelegatedRequest`, as documented there."""

    fingerprint: str | bytes | int | None
    confirm_mode: WsConfirmMode
    timeout: float | None
    reply_to: ActorRef[Any] | None
    context: Any
    retry: bool
    idempotent: bool


class JsonRpcEndpoint(WsEndpoint):
    """The hooks for a JSON-RPC 2.0 API.

    - `match_response`: an object with an ``"id"`` and a ``"result"`` or an
      ``"error"`` is the reply to the request with that id. Request ids are
      JSON integers and non-empty strings: an id of ``true``, ``false``, a
      float or ``null`` (the server's answer to a request it could not
      read) answers no request, and the frame is passed on like any other.
      An ``"error"`` that is not ``null`` makes the outcome `EndpointRejected`
      (``"error": null`` beside a ``"result"``, as JSON-RPC 1.0 servers send
      it, is a success). A batch reply (a JSON array) matches each of its
      replies.
    - `parse`: what subscribers get in `WsInbound.message`: the decoded JSON
      object (a `dict`: a notification, a request from the server, a reply
      that answers no pending request), or the decoded array (a `list`: a
      batch that answers no pending request). A frame that is not JSON, or
      JSON that is neither an object nor an array, is passed on as received
      (the raw `str` or `bytes`): nothing is dropped and nothing raises.

    Each frame is decoded once: `match_response` keeps what it decoded, and
    `parse`, which the actor calls next for the same frame on the same thread,
    takes it from there. Override `decode` to use another JSON decoder.

    - Probes: a subclass that overrides `probe_call` (the venue's status
      call for a call whose outcome was ambiguous) and `probe_reply` (what
      its reply says) resolves ``Unconfirmed(written=True)`` calls: the
      actor sends the status call under the id ``"probe:" + repr(request
      id)`` (``"probe:7"``, ``"probe:'a7'"``: ids of that form are the
      probes'), with the timeout `probe_timeout` and ``retry=True,
      idempotent=True`` (a status call is safe to repeat), and tells
      `WsResolved`. A subclass that
      overrides neither costs nothing per request.

    Subclass it to add ``on_open`` (authentication, subscriptions), ``route``
    or ``on_disconnect``; a subclass needs no ``__init__`` call to this class.
    """

    probe_timeout: ClassVar[float] = 5.0
    """Seconds a probe (the status call of `probe_call`) waits for its reply."""

    _last: tuple[Frame, Any] | None = None
    """The last frame `match_response` saw and what it decoded, until `parse`."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The actor probes only for an endpoint whose class overrides
        # WsEndpoint.probe (it watches each request's outcome then): install
        # the JSON-RPC probe only where a status call is given.
        if cls.probe_call is not JsonRpcEndpoint.probe_call and cls.probe is WsEndpoint.probe:
            cls.probe = JsonRpcEndpoint._probe_by_status_call  # type: ignore[method-assign,assignment]
            if cls.probe_result is WsEndpoint.probe_result:
                cls.probe_result = JsonRpcEndpoint._read_probe_reply  # type: ignore[method-assign,assignment]

    def probe_call(
        self,
        request_id: RequestId,  # noqa: ARG002
        call: dict[str, Any],  # noqa: ARG002
    ) -> tuple[str, Params | None] | None:
        """Return ``(method, params)`` of the status call that tells whether ``call`` took effect.

        Called on the actor's thread for each caller's call that ended
        ``Unconfirmed(written=True)`` (not for heartbeats, subscriptions or
        probes), after ``probe_delay`` and once a connection is open. E.g. for an order
        placed with a label: ``("private/get_order_state_by_label",
        {"label": call["params"]["label"]})``.

        Args:
            request_id: The ambiguous call's id.
            call: The call, decoded (a JSON-RPC request object).

        Returns:
            The method and params of the status call, or None (default): no probe.
        """
        return None

    def probe_reply(self, reply: dict[str, Any]) -> bool | None:  # noqa: ARG002
        """Read the status call's reply object (its ``"result"``, or its ``"error"``).

        Returns:
            True if the ambiguous call took effect, False if the venue does
            not have it (see the README: "not there *yet*"), None if the
            reply does not say (the default).
        """
        return None

    def _probe_by_status_call(
        self, request_id: RequestId, frame: Frame
    ) -> WsDelegatedRequest | None:
        """`WsEndpoint.probe` for a subclass that overrides `probe_call`."""
        call = self._decoded(frame)
        if not isinstance(call, dict) or not isinstance(call.get("method"), str):
            return None  # a batch, or not a call: nothing to ask
        status = self.probe_call(request_id, call)
        if status is None:
            return None
        method, params = status
        # A status call is safe to repeat: re-sent after a break, as any
        # idempotent request. Its id names the call's, JSON type included.
        return request(
            f"probe:{request_id!r}",
            method,
            params,
            timeout=self.probe_timeout,
            retry=True,
            idempotent=True,
        )

    def _read_probe_reply(self, response: Frame) -> bool | None:
        """`WsEndpoint.probe_result` for a subclass that overrides `probe_call`."""
        reply = self._decoded(response)
        return self.probe_reply(reply) if isinstance(reply, dict) else None

    def decode(self, frame: Frame) -> Any:
        """Return the JSON value ``frame`` holds (`json.loads`; bytes may be UTF-8/16/32).

        Override it to use a faster decoder (``orjson.loads``). It may raise
        `ValueError` (or `RecursionError`) for a frame that is not JSON: the
        frame is then not a reply, and is passed on as received.
        """
        return json.loads(frame)

    # The ignore is for WsEndpoint.match_response before it allows several matches.
    def match_response(self, frame: Frame) -> WsRequestMatch | tuple[WsRequestMatch, ...] | None:
        """Pair a reply with its request; see the class docstring.

        Batch replies: a JSON array gives a `tuple` with a `WsRequestMatch`
        for each reply in it, in order (elements that are not replies are
        skipped); None if none is. The actor completes each id.

        Returns:
            A `WsRequestMatch` (``ok`` False and ``message`` such as
            ``"Invalid params (code -32602)"`` for an error), a tuple of them
            for a batch, or None.
        """
        message = self._decoded(frame)
        self._last = (frame, message)
        if isinstance(message, dict):
            return _match(message)
        if isinstance(message, list):
            matches = tuple(
                match
                for item in message
                if isinstance(item, dict) and (match := _match(item)) is not None
            )
            return matches or None
        return None

    def parse(self, frame: Frame) -> dict[str, Any] | list[Any] | Frame:
        """Return the decoded object or array, or the frame as received; see the class docstring."""
        last = self._last
        if last is not None and last[0] is frame:
            self._last = None  # used once: do not keep a large frame alive
            message = last[1]
        else:
            message = self._decoded(frame)
        if isinstance(message, dict | list):
            return message
        return frame

    def _decoded(self, frame: Frame) -> Any:
        """`decode`, or `_NOT_JSON` if the frame is not JSON."""
        try:
            return self.decode(frame)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return _NOT_JSON


def _match(reply: dict[str, Any]) -> WsRequestMatch | None:
    """The match for one decoded reply object, or None if it answers no request."""
    request_id = reply.get("id")
    if not _is_request_id(request_id) or ("result" not in reply and "error" not in reply):
        return None
    error = reply.get("error")
    if error is None:
        return WsRequestMatch(request_id)
    return WsRequestMatch(request_id, ok=False, message=_describe(error))


def _is_request_id(value: object) -> TypeGuard[RequestId]:
    """An int (not a bool) or a non-empty str: what a `WsDelegatedRequest` id can be."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and value != "")


def _describe(error: object) -> str:
    """``"<message> (code <code>)"`` for a JSON-RPC 2.0 error object."""
    if not isinstance(error, dict):  # not JSON-RPC 2.0, but say what it was
        return error if isinstance(error, str) else json.dumps(error)
    text = error.get("message")
    if not isinstance(text, str):
        text = "JSON-RPC error" if text is None else json.dumps(text)
    code = error.get("code")
    if code is None:
        return text
    return f"{text} (code {code if isinstance(code, str) else json.dumps(code)})"


def find_reply(frame: Frame, request_id: RequestId) -> dict[str, Any] | None:
    """Return the reply object for ``request_id`` in a reply frame, or None.

    For a `WsDelegatedOk.response` or `EndpointRejected.response`: a single
    reply, or the element of a batch reply that answers ``request_id`` (the
    response of a request completed by a batch is the whole batch). Ids
    compare by JSON type: ``1`` is not ``"1"``, nor ``true``.
    """
    try:
        message = json.loads(frame)
    except (ValueError, RecursionError):
        return None
    wanted = (type(request_id), request_id)
    for item in message if isinstance(message, list) else [message]:
        if isinstance(item, dict):
            item_id = item.get("id")
            if _is_request_id(item_id) and (type(item_id), item_id) == wanted:
                return item
    return None


def request_frame(request_id: RequestId, method: str, params: Params | None = None) -> str:
    """Return the text frame of a JSON-RPC 2.0 call (compact JSON).

    ``{"jsonrpc":"2.0","id":...,"method":...,"params":...}``; without params
    when ``params`` is None.

    Raises:
        TypeError: If ``request_id`` is not an int or str, ``method`` not a
            str, ``params`` not a dict, list or tuple, or a value in it not
            JSON serializable.
        ValueError: If ``request_id`` is an empty str, or ``params`` holds a
            NaN or an infinity (not JSON).
    """
    call: dict[str, Any] = {"jsonrpc": "2.0", "id": check_request_id(request_id)}
    return _dumps(call, method, params)


def notification(method: str, params: Params | None = None) -> str:
    """Return the text frame of a JSON-RPC 2.0 notification (a call with no id, no reply).

    Raises:
        TypeError: As `request_frame`.
        ValueError: As `request_frame`.
    """
    return _dumps({"jsonrpc": "2.0"}, method, params)


def request(
    request_id: RequestId,
    method: str,
    params: Params | None = None,
    **request_options: Unpack[RequestOptions],
) -> WsDelegatedRequest:
    """Return the `WsDelegatedRequest` of a JSON-RPC 2.0 call.

    Its frame is `request_frame` (so its fingerprint, by default, is that of
    the frame: the same call under the same id joins).

    Args:
        request_id: The call's id, which its reply carries.
        method: The method's name.
        params: The params, or None for none.
        **request_options: ``fingerprint``, ``confirm_mode``, ``timeout``,
            ``reply_to``, ``context``, passed on to `WsDelegatedRequest`.

    Raises:
        TypeError: As `request_frame` and `WsDelegatedRequest`.
        ValueError: As `request_frame` and `WsDelegatedRequest`.
    """
    return WsDelegatedRequest(
        request_id, request_frame(request_id, method, params), **request_options
    )


def _dumps(call: dict[str, Any], method: str, params: Params | None) -> str:
    if not isinstance(method, str):
        msg = f"method must be a str, not {type(method).__name__}"
        raise TypeError(msg)
    call["method"] = method
    if params is not None:
        if not isinstance(params, dict | list | tuple):
            msg = f"params must be a dict, list or tuple, not {type(params).__name__}"
            raise TypeError(msg)
        call["params"] = params
    return json.dumps(call, separators=(",", ":"), allow_nan=False)
