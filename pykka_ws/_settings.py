"""`WebSocketActor.start()`'s arguments, checked once, in the caller's thread.

Every check raises `TypeError` or `ValueError` with the argument's name, so a
bad value fails in the code that passed it, before any thread is started.
"""

from __future__ import annotations

import logging
import re
import ssl as ssl_module
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import pykka
from websockets.datastructures import Headers
from websockets.exceptions import InvalidURI
from websockets.uri import WebSocketURI, parse_uri

from pykka_ws._connection import RedactingLogger
from pykka_ws._endpoint import WsEndpoint
from pykka_ws._messages import WsBackoff, WsHeartbeat, check_timeout

__all__ = ["Settings", "check_settings"]


@dataclass(frozen=True, slots=True)
class Settings:
    """The checked settings of one `WebSocketActor` (see its docstring)."""

    urls: list[tuple[str, WebSocketURI]]
    """Every URL, in failover order, with its parsed form."""
    endpoint: WsEndpoint
    inbound: list[pykka.ActorRef[Any]]
    max_pending: int
    default_timeout: float
    capacity: int
    max_batch: int
    backoff: WsBackoff
    open_timeout: float
    write_timeout: float | None
    max_queue: int
    subscriber_queue: int
    subscriber_overflow: str
    recent_ids: int
    recent_ids_age: float
    connect_kwargs: dict[str, Any]
    """What websockets' ``connect()`` is given, besides the socket (and TLS)."""
    tls_kwargs: dict[str, Any]
    """What it is given besides for a ``wss://`` URL."""
    heartbeat: WsHeartbeat | None
    stale_after: float | None
    pings: tuple[float | None, float | None] = (None, None)
    """Keepalive ``(ping_interval, ping_timeout)``: the owner's pings (see `_health`)."""

    @property
    def ping_interval(self) -> float | None:
        """Seconds between keepalive pings; None: none."""
        return self.pings[0]

    @property
    def ping_timeout(self) -> float | None:
        """Seconds to wait for a keepalive pong before failing the connection; None: forever."""
        return self.pings[1]

    @property
    def url(self) -> str:
        """The first URL."""
        return self.urls[0][0]

    @property
    def close_timeout(self) -> float:
        """Seconds to wait for a closing handshake (and for a connector at stop)."""
        value: float = self.connect_kwargs["close_timeout"]
        return value


def check_settings(
    url: object,
    *,
    endpoint: object,
    inbound: object,
    max_pending_requests: object,
    default_timeout: object,
    outbound_capacity: object,
    max_batch: object,
    backoff: object,
    open_timeout: object,
    write_timeout: object,
    close_timeout: object,
    ping_interval: object,
    ping_timeout: object,
    max_size: object,
    max_queue: object,
    subscriber_queue: object,
    subscriber_overflow: object,
    ssl: object,
    server_hostname: object,
    additional_headers: object,
    user_agent_header: str | None,
    compression: object,
    subprotocols: Iterable[str] | None,
    recent_ids: object,
    recent_ids_age: object,
    heartbeat: object,
    stale_after: object,
) -> Settings:
    """Check every argument of `WebSocketActor.start()`; return them as `Settings`."""
    urls = check_urls(url)
    checked_heartbeat = (
        None if heartbeat is None else _check_type(heartbeat, WsHeartbeat, "heartbeat")
    )
    endpoint = WsEndpoint() if endpoint is None else _check_type(endpoint, WsEndpoint, "endpoint")
    backoff = WsBackoff() if backoff is None else _check_type(backoff, WsBackoff, "backoff")
    checked_write_timeout = check_optional_wait(write_timeout, "write_timeout")
    checked_close_timeout = check_wait(close_timeout, "close_timeout")
    if checked_write_timeout is not None:
        # send() on a closing connection waits up to close_timeout.
        checked_close_timeout = min(checked_close_timeout, checked_write_timeout)
    if subscriber_overflow not in {"block", "drop"}:
        msg = f'subscriber_overflow must be "block" or "drop", not {subscriber_overflow!r}'
        raise ValueError(msg)
    connect_kwargs, tls_kwargs, pings = _connect_kwargs(
        any(uri.secure for _, uri in urls),
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        close_timeout=checked_close_timeout,
        max_size=max_size,
        compression=compression,
        additional_headers=additional_headers,
        user_agent_header=user_agent_header,
        subprotocols=subprotocols,
        ssl=ssl,
        server_hostname=server_hostname,
    )
    return Settings(
        urls=urls,
        endpoint=endpoint,
        inbound=check_inbound(inbound),
        max_pending=check_count(max_pending_requests, "max_pending_requests"),
        default_timeout=check_timeout(default_timeout, "default_timeout"),
        capacity=check_count(outbound_capacity, "outbound_capacity"),
        max_batch=check_count(max_batch, "max_batch"),
        backoff=backoff,
        open_timeout=check_wait(open_timeout, "open_timeout"),
        write_timeout=checked_write_timeout,
        max_queue=check_count(max_queue, "max_queue"),
        subscriber_queue=check_count(subscriber_queue, "subscriber_queue"),
        subscriber_overflow=subscriber_overflow,
        recent_ids=check_count(recent_ids, "recent_ids"),
        recent_ids_age=check_timeout(recent_ids_age, "recent_ids_age"),
        connect_kwargs=connect_kwargs,
        tls_kwargs=tls_kwargs,
        heartbeat=checked_heartbeat,
        stale_after=check_optional_wait(stale_after, "stale_after"),
        pings=pings,
    )


def _connect_kwargs(
    secure: bool,
    *,
    ping_interval: object,
    ping_timeout: object,
    close_timeout: float,
    max_size: object,
    compression: object,
    additional_headers: object,
    user_agent_header: str | None,
    subprotocols: Iterable[str] | None,
    ssl: object,
    server_hostname: object,
) -> tuple[dict[str, Any], dict[str, Any], tuple[float | None, float | None]]:
    """Check websockets' own settings; return what ``connect()`` is given (and for TLS).

    The keepalive settings are returned apart: pings are the owner's, on the
    process-wide scheduler (`_health`), so websockets is given none and
    starts no keepalive thread per connection.
    """
    if ssl is not None and not isinstance(ssl, ssl_module.SSLContext):
        msg = f"ssl must be an ssl.SSLContext, not {type(ssl).__name__}"
        raise TypeError(msg)
    if ssl is not None and not secure:
        msg = "ssl is only valid with a wss:// URL"
        raise ValueError(msg)
    if compression not in {None, "deflate"}:
        msg = f'compression must be "deflate" or None, not {compression!r}'
        raise ValueError(msg)
    headers = _check_headers(additional_headers)
    if user_agent_header is not None:
        _check_header_value(user_agent_header, "user_agent_header")
    connect_kwargs: dict[str, Any] = {
        "ping_interval": check_optional_wait(ping_interval, "ping_interval"),
        "ping_timeout": check_optional_wait(ping_timeout, "ping_timeout"),
        "close_timeout": close_timeout,
        "max_size": None if max_size is None else check_count(max_size, "max_size"),
        "compression": compression,
        "additional_headers": headers or None,
        "user_agent_header": user_agent_header,
        "subprotocols": _check_subprotocols(subprotocols),
        "proxy": None,
        "logger": RedactingLogger(
            logging.getLogger("websockets.client"), [name for name, _ in headers]
        ),
    }
    pings = connect_kwargs["ping_interval"], connect_kwargs["ping_timeout"]
    connect_kwargs["ping_interval"] = connect_kwargs["ping_timeout"] = None
    tls_kwargs: dict[str, Any] = {"ssl": ssl}
    if server_hostname is not None:
        tls_kwargs["server_hostname"] = server_hostname
    return connect_kwargs, tls_kwargs, pings


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""An HTTP token (RFC 9110): a header name, a subprotocol."""

_HEADER_VALUE = re.compile(r"[\x09\x20-\x7e\x80-\xff]*")
"""What websockets accepts in a header value: no CR, LF or other control character."""


def _check_headers(headers: object) -> list[tuple[str, str]]:
    """``additional_headers`` as (name, value) pairs, each name a token, each value clean.

    A mapping, a `websockets.datastructures.Headers` or an iterable of pairs,
    as websockets takes them; a name given twice (two ``Cookie`` pairs) is
    kept twice. The message of a bad value never includes it: header values
    are secrets.
    """
    if headers is None:
        return []
    if isinstance(headers, Headers):
        items: list[object] = list(headers.raw_items())
    elif isinstance(headers, Mapping):
        items = list(headers.items())
    elif isinstance(headers, Iterable) and not isinstance(headers, str | bytes):
        items = list(headers)
    else:
        msg = f"additional_headers must be a mapping of str to str, not {type(headers).__name__}"
        raise TypeError(msg)
    pairs = []
    for item in items:
        if not isinstance(item, tuple | list) or len(item) != 2:  # noqa: PLR2004 - a pair
            msg = "additional_headers must be a mapping of str to str, or (name, value) pairs"
            raise TypeError(msg)
        name, value = item
        _check_token(name, "additional_headers names", "a valid HTTP header name")
        _check_header_value(value, f"additional_headers[{name!r}]")
        pairs.append((name, value))
    return pairs


def _check_header_value(value: object, name: str) -> None:
    if not isinstance(value, str):
        msg = f"{name} must be a str, not {type(value).__name__}"
        raise TypeError(msg)
    if not _HEADER_VALUE.fullmatch(value):
        msg = (
            f"{name} holds a character not allowed in a header value "
            "(CR, LF or another control character; a token read from a file "
            "with its newline?); the value is not shown"
        )
        raise ValueError(msg)


def _check_subprotocols(subprotocols: object) -> list[str] | None:
    """``subprotocols`` as a list of tokens (a lone str is refused, not split)."""
    if subprotocols is None:
        return None
    if isinstance(subprotocols, str | bytes) or not isinstance(subprotocols, Iterable):
        msg = f"subprotocols must be a sequence of str, not {type(subprotocols).__name__}"
        raise TypeError(msg)
    checked = list(subprotocols)
    for protocol in checked:
        _check_token(protocol, "subprotocols", "a valid token (RFC 6455)")
    return checked


def _check_token(value: object, what: str, valid: str) -> None:
    """A str that is an HTTP token, else `TypeError` or `ValueError` naming ``what``."""
    if not isinstance(value, str):
        msg = f"{what} must be str, not {type(value).__name__}"
        raise TypeError(msg)
    if not _TOKEN.fullmatch(value):
        msg = f"{what}: {value!r} is not {valid}"
        raise ValueError(msg)


def check_urls(url: object) -> list[tuple[str, WebSocketURI]]:
    """One ``ws://``/``wss://`` URL, or a non-empty sequence of them (failover order)."""
    urls: list[object] = [url] if isinstance(url, str) else _as_list(url)
    if not urls:
        msg = "url must not be an empty sequence"
        raise ValueError(msg)
    checked = []
    for one in urls:
        if not isinstance(one, str):
            msg = f"url must be a str or a sequence of str, not {type(one).__name__}"
            raise TypeError(msg)
        try:
            checked.append((one, parse_uri(one)))
        except InvalidURI as exc:
            msg = f"url is not a valid ws:// or wss:// URL: {one!r}"
            raise ValueError(msg) from exc
    return checked


def _as_list(value: object) -> list[object]:
    if isinstance(value, bytes | bytearray | memoryview | Mapping) or not isinstance(
        value, Iterable
    ):
        msg = f"url must be a str or a sequence of str, not {type(value).__name__}"
        raise TypeError(msg)
    return list(value)


_T = TypeVar("_T")


def _check_type(value: object, cls: type[_T], name: str) -> _T:
    if not isinstance(value, cls):
        msg = f"{name} must be a {cls.__name__}, not {type(value).__name__}"
        raise TypeError(msg)
    return value


def check_count(value: object, name: str) -> int:
    """Return ``value`` if it is an int >= 1, else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{name} must be an int, not {type(value).__name__}"
        raise TypeError(msg)
    if value < 1:
        msg = f"{name} must be >= 1, not {value}"
        raise ValueError(msg)
    return value


def check_wait(value: object, name: str) -> float:
    """A number of seconds that sockets and locks will wait on: <= TIMEOUT_MAX."""
    seconds = check_timeout(value, name)
    if seconds > threading.TIMEOUT_MAX:
        msg = f"{name} must be <= {threading.TIMEOUT_MAX:.0f} s (threading.TIMEOUT_MAX)"
        raise ValueError(msg)
    return seconds


def check_optional_wait(value: object, name: str) -> float | None:
    """`check_wait`, or None for None."""
    return None if value is None else check_wait(value, name)


def check_inbound(inbound: object) -> list[pykka.ActorRef[Any]]:
    """Return the subscribers as a list of `ActorRef`, else raise."""
    if inbound is None:
        return []
    if isinstance(inbound, pykka.ActorRef):
        return [inbound]
    try:
        refs: list[object] = list(inbound)  # type: ignore[call-overload]
    except TypeError:
        refs = [inbound]
    for ref in refs:
        if not isinstance(ref, pykka.ActorRef):
            msg = f"inbound must be an ActorRef or an iterable of them, not {type(ref).__name__}"
            raise TypeError(msg)
    return cast("list[pykka.ActorRef[Any]]", refs)
