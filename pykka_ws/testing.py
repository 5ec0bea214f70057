"""Loopback WebSocket servers and TCP fault injection for tests.

This module is public: pykka-ws uses it for its own test suite and you can use
it in yours. It provides three helpers that run real sockets on the loopback
interface, in background threads, with no mocking involved:

* :class:`WsTestServer` is a real :mod:`websockets` server (the threading
  implementation, ``websockets.sync.server``) listening on an ephemeral port.
  A *reply function* decides what to send back for every received frame, every
  received frame is recorded, and a set of switches injects misbehaviour:
  silence, stalled reads (backpressure), unsolicited pushes, polite or abrupt
  (TCP RST) disconnections, connections closed right after the handshake and
  refused handshakes (HTTP 401, 403, ...).
* :class:`ChaosServer` is a :class:`WsTestServer` whose behaviour for every
  received frame is drawn from a seeded random mix (a :class:`FaultPlan`):
  confirm, reject, reply late, stay silent, stop reading for a while, send
  garbage (invalid UTF-8, junk, oversized frames, a lying frame header), close
  or reset the connection. It records the server's view (every frame received
  complete, per connection: :class:`ConnectionLog`) so that tests can check
  delivery invariants against it.
* :class:`FaultProxy` is a TCP proxy placed between a client and a server. It
  injects faults that need the socket level: a *blackhole* (the peer silently
  died: no FIN, no RST, nothing forwarded) and connection resets.

Every wait has a timeout (the one exception is sending to a client that does
not read, see :meth:`WsTestServer.send_to_all`), and :meth:`WsTestServer.stop`
/ :meth:`FaultProxy.stop` join every thread that the helper started, including
the per-connection threads of :mod:`websockets`. Every such thread is named
``pykka-ws-testing-...``. The helpers support websockets 15 to 17.

Example::

    from websockets.sync.client import connect

    from pykka_ws.testing import FaultProxy, WsTestServer

    with WsTestServer(reply=lambda frame: frame) as server:  # an echo server
        with connect(server.url, proxy=None) as websocket:
            websocket.send("hello")
            assert websocket.recv(timeout=5) == "hello"
        assert server.wait_for_received(1) == ["hello"]

With a proxy in the middle::

    with WsTestServer(reply=lambda frame: frame) as server:
        with FaultProxy(server.host, server.port) as proxy:
            with connect(proxy.url, proxy=None) as websocket:
                proxy.blackhole()
                websocket.send("held")  # the proxy forwards nothing...
                server.wait_for_received(1, timeout=0.5)  # ...so: TimeoutError

A seeded chaos run::

    plan = FaultPlan(weights={Fault.CONFIRM: 8, Fault.SILENT: 1, Fault.RESET: 1})
    with ChaosServer(plan, confirm=lambda frame: "ok " + frame, seed=42) as server:
        ...  # drive a client at server.url, then check its outcomes against
        logs = server.connection_logs()  # what the server received complete

Diagnostics are logged to the ``pykka_ws.testing`` logger; :mod:`websockets`
keeps logging to its own loggers (``websockets.server``).
"""

from __future__ import annotations

import bisect
import contextlib
import enum
import errno
import functools
import heapq
import http
import itertools
import logging
import math
import os
import random
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeAlias

from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode
from websockets.sync.server import Server, ServerConnection, serve

if TYPE_CHECKING:
    from ssl import SSLContext
    from types import TracebackType

    from websockets.http11 import Request, Response

__all__ = [
    "DEFAULT_FAULT_WEIGHTS",
    "ChaosServer",
    "ConnectionLog",
    "Fault",
    "FaultPlan",
    "FaultProxy",
    "Frame",
    "ReplyFn",
    "WsTestServer",
]

logger = logging.getLogger("pykka_ws.testing")

Frame: TypeAlias = str | bytes
"""A WebSocket message: :class:`str` for a text frame, :class:`bytes` for binary."""

ReplyFn: TypeAlias = Callable[[Frame], Frame | Iterable[Frame] | None]
"""Decides what a :class:`WsTestServer` sends back for one received frame.

It returns a single frame, an iterable of frames (sent in order), or
:obj:`None` to send nothing.
"""

_THREAD_PREFIX = "pykka-ws-testing-"

# Bounds the closing handshake of server connections, so that a polite close
# towards a peer that never answers cannot hold a thread for long.
_CLOSE_TIMEOUT = 2.0

# How long stop() lets polite closes run before it closes sockets abruptly.
_STOP_GRACE = 1.0

# How long an abrupt close waits for a connection's protocol lock before it
# assumes that a writer is blocked on a full socket and wakes it up forcibly.
_MUTEX_TIMEOUT = 1.0

# Per-direction buffer of FaultProxy: it stops reading from one side when this
# many bytes are waiting to be written to the other side.
_PROXY_BUFFER = 256 * 1024
_PROXY_RECV_SIZE = 64 * 1024

_PREVIEW_FRAMES = 5
_PREVIEW_CHARS = 60


def _format_url(scheme: str, host: str, port: int) -> str:
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _preview(frames: list[Frame]) -> str:
    shown = [repr(frame)[:_PREVIEW_CHARS] for frame in frames[-_PREVIEW_FRAMES:]]
    if len(frames) > _PREVIEW_FRAMES:
        shown.insert(0, "...")
    return "[" + ", ".join(shown) + "]"


def _as_frames(result: object) -> list[Frame]:
    """Normalise what a reply function returned to a list of frames."""
    if result is None:
        return []
    if isinstance(result, str | bytes):
        return [result]
    if isinstance(result, Iterable):
        frames: list[Frame] = []
        for item in result:
            if not isinstance(item, str | bytes):
                msg = f"reply function yielded {type(item).__name__}, not str or bytes"
                raise TypeError(msg)
            frames.append(item)
        return frames
    msg = (
        f"reply function returned {type(result).__name__}; expected str, bytes, "
        "an iterable of them, or None"
    )
    raise TypeError(msg)


def _check_frame(frame: object) -> None:
    if not isinstance(frame, str | bytes):
        msg = f"frame must be str or bytes, not {type(frame).__name__}"
        raise TypeError(msg)


def _reset_socket(sock: socket.socket, *, wake_writers: bool = False) -> None:
    """Close ``sock`` with a TCP RST instead of a FIN.

    ``SO_LINGER`` with a zero timeout makes ``close()`` discard unsent data and
    send a RST. ``shutdown(SHUT_RD)`` first wakes a thread blocked in
    ``recv()`` on this socket (websockets < 17 reads that way) without sending
    anything to the peer; otherwise the blocked call would keep the socket
    alive past ``close()``. ``wake_writers`` uses ``SHUT_RDWR`` instead, which
    also wakes a thread blocked in ``send()`` but sends a FIN before the RST.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR if wake_writers else socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


def _abort_connection(connection: ServerConnection) -> None:
    """Reset a websockets connection: RST on the wire, no close frame."""
    # Holding the protocol lock keeps websockets' reader thread from writing
    # (e.g. a TCP FIN) between the shutdown and the close.
    acquired = connection.protocol_mutex.acquire(timeout=_MUTEX_TIMEOUT)
    try:
        _reset_socket(connection.socket, wake_writers=not acquired)
    finally:
        if acquired:
            connection.protocol_mutex.release()
    # Let websockets notice: this terminates its reader thread and makes
    # pending and future recv() calls raise ConnectionClosed.
    connection.close_socket()


def _join_all(threads: Iterable[threading.Thread], deadline: float) -> None:
    current = threading.current_thread()
    for thread in threads:
        if thread is not current:
            thread.join(max(0.0, deadline - time.monotonic()))


@dataclass(eq=False)
class _ConnState:
    """What a WsTestServer knows about one websockets connection."""

    index: int = 0
    handshake_done: bool = False
    open: bool = False
    transport_closed: bool = False


@dataclass(eq=False)
class _Run:
    """Resources of one start()/stop() cycle of a WsTestServer."""

    server: Server
    wake_r: socket.socket
    wake_w: socket.socket
    accept_thread: threading.Thread | None = None
    closing: bool = False  # no new connections; handshakes get HTTP 503
    stopping: bool = False  # connection handlers must return
    # Connection handler threads not finished yet: their accepted socket and
    # the index shared by the names of all threads serving that connection.
    handler_threads: dict[threading.Thread, tuple[socket.socket, int]] = field(default_factory=dict)
    connections: list[_TrackedConnection] = field(default_factory=list)
    helper_threads: set[threading.Thread] = field(default_factory=set)


@dataclass(frozen=True)
class _ConnectionHooks:
    """Callbacks from websockets' connection threads to a WsTestServer."""

    created: Callable[[_TrackedConnection], None]
    transport_closed: Callable[[_TrackedConnection], None]


class _TrackedConnection(ServerConnection):
    """A ServerConnection that reports its life cycle to its WsTestServer.

    websockets starts the connection's reader thread inside ``__init__`` and
    ends it when the TCP connection is gone; both moments are reported so that
    the server can name, count, close and join everything.
    """

    hooks: ClassVar[_ConnectionHooks]  # set on a per-run subclass

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before super().__init__(), which starts the reader thread.
        self.ws_test_state = _ConnState()
        super().__init__(*args, **kwargs)
        self.hooks.created(self)

    def recv_events(self) -> None:
        try:
            super().recv_events()
        finally:
            self.hooks.transport_closed(self)


class _Listening:
    """What `WsTestServer` and `FaultProxy` share: a context manager on a port."""

    _host: str
    _bound_port: int | None

    def start(self) -> Self:  # pragma: no cover - overridden
        """Start listening."""
        raise NotImplementedError

    def stop(self, timeout: float = 5.0) -> None:  # pragma: no cover - overridden
        """Stop listening."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        """Start."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop."""
        self.stop()

    @property
    def host(self) -> str:
        """The address it listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port.

        Raises:
            RuntimeError: If it was never started.
        """
        if self._bound_port is None:
            msg = f"{type(self).__name__} was not started; call start() first"
            raise RuntimeError(msg)
        return self._bound_port


class WsTestServer(_Listening):
    """A real WebSocket server on the loopback interface, for tests.

    It runs :func:`websockets.sync.server.serve` on ``host`` and an ephemeral
    port, in background threads. For every received frame, the server records
    it (see :attr:`received`) then calls the reply function on the
    connection's thread, and sends back what it returns: a single frame, an
    iterable of frames, or nothing for :obj:`None`. If the reply function
    raises, the error is logged and the server keeps serving.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    :meth:`start` may be called again after :meth:`stop`: the server listens
    again on the same port, which is handy to test reconnections. Records and
    counters survive a restart.

    Args:
        reply: The reply function; :obj:`None` never replies.
        host: Address to listen on. Keep it on the loopback interface.
        port: Port to listen on; 0 picks a free ephemeral port.
        ssl: TLS configuration; the URL scheme becomes ``wss``. The URL keeps
            ``host``, so clients must pass ``server_hostname`` themselves when
            the certificate is for another name.
        max_size: Maximum size of incoming messages in bytes; :obj:`None`
            disables the limit.
        ping_interval: Interval between the server's keepalive pings in
            seconds; :obj:`None` (the default) disables them.

    Thread safety: every method may be called from any thread, including from
    inside the reply function (except :meth:`stop`, which cannot join the
    thread it runs on).
    """

    def __init__(
        self,
        reply: ReplyFn | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl: SSLContext | None = None,
        max_size: int | None = 2**20,
        ping_interval: float | None = None,
    ) -> None:
        """Configure the server; nothing listens until :meth:`start`."""
        self._host = host
        self._requested_port = port
        self._bound_port: int | None = None
        self._ssl = ssl
        self._max_size = max_size
        self._ping_interval = ping_interval

        self._lifecycle_lock = threading.Lock()
        self._cond = threading.Condition()
        # Everything below is guarded by self._cond.
        self._run: _Run | None = None
        self._reply = reply
        self._received: list[Frame] = []
        self._connections_accepted = 0
        self._open_connections = 0
        self._rejected_handshakes = 0
        self._silent = False
        self._stalled = False
        self._accept_and_close = False
        self._reject_status: int | None = None
        self._thread_ids = itertools.count(1)

    # Life cycle

    def start(self) -> Self:
        """Bind the listening socket and start serving in background threads.

        The socket is bound before this method returns, so :attr:`port` and
        :attr:`url` are valid. Calling it while the server runs does nothing.

        Returns:
            The server itself.

        Raises:
            TimeoutError: If a concurrent :meth:`stop` does not finish in time.
        """
        if not self._lifecycle_lock.acquire(timeout=30.0):
            msg = "timed out waiting for a concurrent start() or stop()"
            raise TimeoutError(msg)
        try:
            with self._cond:
                if self._run is not None:
                    return self
            port = self._bound_port or self._requested_port
            connection_class = self._connection_class()
            server = serve(
                self._handle_connection,
                self._host,
                port,
                ssl=self._ssl,
                process_request=self._process_request,
                max_size=self._max_size,
                ping_interval=self._ping_interval,
                close_timeout=_CLOSE_TIMEOUT,
                create_connection=connection_class,
            )
            # serve() returns a bound, listening socket. We run our own accept
            # loop instead of server.serve_forever() so that every thread is
            # named and tracked, with every supported websockets version.
            server.socket.settimeout(0.0)
            self._bound_port = int(server.socket.getsockname()[1])
            wake_r, wake_w = socket.socketpair()
            run = _Run(server=server, wake_r=wake_r, wake_w=wake_w)
            # No connection exists before the accept loop starts below.
            connection_class.hooks = _ConnectionHooks(
                created=functools.partial(self._register_connection, run),
                transport_closed=self._transport_closed,
            )
            run.accept_thread = threading.Thread(
                target=self._accept_loop,
                args=(run,),
                name=f"{_THREAD_PREFIX}accept-{self._bound_port}",
                daemon=True,
            )
            with self._cond:
                self._run = run
            run.accept_thread.start()
            logger.debug("WsTestServer listening on %s", self.url)
            return self
        finally:
            self._lifecycle_lock.release()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server and join every thread it started.

        It closes the listening socket, then every connection: open ones get a
        polite close (code 1001) and, after a short grace period, whatever is
        still alive (stalled connections, handshakes in progress, unresponsive
        peers) is closed abruptly. It then joins the accept thread, every
        connection thread, and the reader and keepalive threads that
        websockets started for each connection. Calling it again, or before
        :meth:`start`, does nothing.

        Args:
            timeout: Upper bound in seconds for the whole shutdown.

        Raises:
            TimeoutError: If some thread is still alive after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        if not self._lifecycle_lock.acquire(timeout=timeout):
            msg = f"timed out after {timeout}s waiting for a concurrent start()/stop()"
            raise TimeoutError(msg)
        try:
            with self._cond:
                run = self._run
                if run is None:
                    return
                run.closing = True
                self._cond.notify_all()
            self._stop_run(run, deadline)
        finally:
            self._lifecycle_lock.release()

    def _stop_run(self, run: _Run, deadline: float) -> None:
        # 1. Stop accepting: the accept loop closes the listening socket.
        with contextlib.suppress(OSError):
            run.wake_w.send(b"x")
        if run.accept_thread is not None:
            _join_all([run.accept_thread], deadline)

        # 2. Close open connections politely, for a short while.
        grace = min(_STOP_GRACE, max(0.0, deadline - time.monotonic()) / 2)
        self._close_politely(run, self._open_targets(run), 1001, "server stopping", grace)

        # 3. Wake stalled handlers and close whatever is left, abruptly.
        with self._cond:
            run.stopping = True
            self._cond.notify_all()
            connections = list(run.connections)
            raw_sockets = [sock for sock, _ in run.handler_threads.values()]
        for connection in connections:
            if not connection.ws_test_state.transport_closed:
                connection.close_socket()
        for sock in raw_sockets:
            # Wakes up handshakes still in progress, including TLS ones, which
            # have no websockets connection yet.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        # 4. Join everything.
        with self._cond:
            handler_threads = list(run.handler_threads)
            helper_threads = list(run.helper_threads)
        _join_all(handler_threads, deadline)
        _join_all(helper_threads, deadline)
        with self._cond:
            connections = list(run.connections)
        ws_threads = [
            thread
            for connection in connections
            for thread in (connection.recv_events_thread, connection.keepalive_thread)
            if thread is not None
        ]
        _join_all(ws_threads, deadline)

        for sock in (run.wake_r, run.wake_w):
            sock.close()
        self._release_server_resources(run.server)
        with self._cond:
            self._run = None
            self._cond.notify_all()

        alive = [
            thread.name
            for thread in [*handler_threads, *helper_threads, *ws_threads]
            if thread.is_alive() and thread is not threading.current_thread()
        ]
        if run.accept_thread is not None and run.accept_thread.is_alive():
            alive.append(run.accept_thread.name)
        if alive:
            msg = f"WsTestServer.stop() timed out; threads still alive: {alive}"
            raise TimeoutError(msg)
        logger.debug("WsTestServer on port %s stopped", self._bound_port)

    @staticmethod
    def _release_server_resources(server: Server) -> None:
        """Close what websockets' Server allocated for serve_forever().

        We never call serve_forever() nor Server.shutdown() (which blocks on
        websockets >= 17), so release its wake-up channel, a socket pair or a
        pipe depending on the version, ourselves.
        """
        with contextlib.suppress(OSError):
            server.socket.close()
        for name in ("shutdown_watcher", "shutdown_notifier"):
            resource = getattr(server, name, None)
            if isinstance(resource, socket.socket):
                resource.close()
            elif isinstance(resource, int):
                with contextlib.suppress(OSError):
                    os.close(resource)

    # Addresses: host and port come from _Listening.

    @property
    def url(self) -> str:
        """``ws://HOST:PORT``, or ``wss://HOST:PORT`` with TLS."""
        return _format_url("wss" if self._ssl is not None else "ws", self.host, self.port)

    # Behaviour switches

    def set_reply(self, reply: ReplyFn | None) -> None:
        """Replace the reply function; :obj:`None` stops replying.

        Args:
            reply: The new reply function.
        """
        with self._cond:
            self._reply = reply

    def set_silent(self, silent: bool) -> None:
        """Keep reading and recording frames, but do not reply while silent.

        Args:
            silent: Whether the server is silent.
        """
        with self._cond:
            self._silent = silent

    def stall(self) -> None:
        """Stop reading from every connection until :meth:`resume`.

        Connection handlers stop calling ``recv()``. websockets keeps reading
        the socket until its receive queue is full (16 messages); then it stops
        reading, TCP backpressure reaches the client, and the client's pings
        go unanswered. Once this method returns, no new frame is recorded and
        the reply function is not called until :meth:`resume`. Frames are not
        lost: they are read, recorded and replied to after :meth:`resume`.
        Sending (:meth:`send_to_all`) and closing still work while stalled.
        """
        with self._cond:
            self._stalled = True

    def resume(self) -> None:
        """Read again after :meth:`stall`."""
        with self._cond:
            self._stalled = False
            self._cond.notify_all()

    def set_accept_and_close(self, enabled: bool) -> None:
        """Close each new connection politely (code 1001) after its handshake.

        Args:
            enabled: Whether new connections are closed right away.
        """
        with self._cond:
            self._accept_and_close = enabled

    def set_reject_handshake(self, status: int | None) -> None:
        """Refuse subsequent opening handshakes with an HTTP error status.

        Args:
            status: The HTTP status to answer with, e.g. 401 or 403; :obj:`None`
                accepts handshakes again.

        Raises:
            ValueError: If ``status`` is not a known HTTP status or is 101.
        """
        if status is not None:
            if int(status) == http.HTTPStatus.SWITCHING_PROTOCOLS:
                msg = "status 101 would accept the handshake, not reject it"
                raise ValueError(msg)
            http.HTTPStatus(status)  # raises ValueError for unknown statuses
        with self._cond:
            self._reject_status = status

    # Records and counters

    @property
    def received(self) -> list[Frame]:
        """A copy of every frame received, from all connections, in order."""
        with self._cond:
            return list(self._received)

    def wait_for_received(self, count: int, timeout: float = 5.0) -> list[Frame]:
        """Wait until at least ``count`` frames were received.

        Args:
            count: How many frames to wait for, in total since the last
                :meth:`clear_received`.
            timeout: How long to wait, in seconds.

        Returns:
            A copy of every frame received so far (possibly more than
            ``count``).

        Raises:
            TimeoutError: If fewer frames were received when the timeout
                elapsed.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._received) >= count, timeout):
                msg = (
                    f"expected at least {count} frame(s) within {timeout}s, "
                    f"received {len(self._received)}: {_preview(self._received)}"
                    + (" (the server is stalled)" if self._stalled else "")
                )
                raise TimeoutError(msg)
            return list(self._received)

    def clear_received(self) -> None:
        """Forget the frames received so far."""
        with self._cond:
            self._received.clear()

    @property
    def connections_accepted(self) -> int:
        """How many opening handshakes completed successfully so far."""
        with self._cond:
            return self._connections_accepted

    @property
    def open_connections(self) -> int:
        """How many connections completed their handshake and are still open."""
        with self._cond:
            return self._open_connections

    @property
    def rejected_handshakes(self) -> int:
        """How many handshakes were refused by :meth:`set_reject_handshake`."""
        with self._cond:
            return self._rejected_handshakes

    def wait_for_connections(self, count: int, timeout: float = 5.0) -> None:
        """Wait until :attr:`connections_accepted` is at least ``count``.

        Args:
            count: The number of completed handshakes to wait for.
            timeout: How long to wait, in seconds.

        Raises:
            TimeoutError: If fewer handshakes completed in time.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._connections_accepted >= count, timeout):
                msg = (
                    f"expected at least {count} accepted connection(s) within "
                    f"{timeout}s, got {self._connections_accepted}"
                )
                raise TimeoutError(msg)

    def wait_for_open_connections(self, count: int, timeout: float = 5.0) -> None:
        """Wait until :attr:`open_connections` equals ``count``.

        Args:
            count: The exact number of open connections to wait for.
            timeout: How long to wait, in seconds.

        Raises:
            TimeoutError: If the count differs when the timeout elapses.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._open_connections == count, timeout):
                msg = (
                    f"expected {count} open connection(s) within {timeout}s, "
                    f"got {self._open_connections}"
                )
                raise TimeoutError(msg)

    # Actions on connections

    def send_to_all(self, frame: Frame) -> int:
        """Push an unsolicited frame to every open connection.

        Sending blocks while a client does not read and its TCP buffers are
        full; :meth:`stop` unblocks it.

        Args:
            frame: The frame to send: text for :class:`str`, binary for
                :class:`bytes`.

        Returns:
            How many connections the frame was written to.

        Raises:
            TypeError: If ``frame`` is neither :class:`str` nor :class:`bytes`.
        """
        _check_frame(frame)
        return self._send_to_all(frame, text=None)

    def send_raw_text_to_all(self, payload: bytes) -> int:
        """Push a text frame carrying ``payload`` as is to every open connection.

        The payload is not validated as UTF-8, which lets tests send text frames
        with invalid UTF-8 to check how clients handle them.

        Args:
            payload: The raw payload of the text frame.

        Returns:
            How many connections the frame was written to.

        Raises:
            TypeError: If ``payload`` is not :class:`bytes`.
        """
        if not isinstance(payload, bytes):
            msg = f"payload must be bytes, not {type(payload).__name__}"
            raise TypeError(msg)
        return self._send_to_all(payload, text=True)

    def _send_to_all(self, frame: Frame, *, text: bool | None) -> int:
        with self._cond:
            run = self._run
            if run is None or run.closing:
                return 0
        sent = 0
        for connection in self._open_targets(run):
            try:
                connection.send(frame, text=text)
            except ConnectionClosed:
                continue
            sent += 1
        return sent

    def close_connections(
        self, *, code: int = 1000, reason: str = "", abrupt: bool = False
    ) -> None:
        """Close every open connection.

        A polite close performs the WebSocket closing handshake with ``code``
        and ``reason``; it returns once the handshake is over, or after a
        couple of seconds with a peer that does not answer. An abrupt close
        resets the TCP connection (``SO_LINGER`` 0, then close: a RST and no
        close frame), as if the server process crashed; it returns once the
        server has noticed.

        Args:
            code: WebSocket close code, for a polite close.
            reason: WebSocket close reason, for a polite close.
            abrupt: Reset the TCP connections instead.
        """
        with self._cond:
            run = self._run
            if run is None:
                return
        targets = self._open_targets(run)
        if not abrupt:
            self._close_politely(run, targets, code, reason, _CLOSE_TIMEOUT + 1.0)
            return
        for connection in targets:
            _abort_connection(connection)
        deadline = time.monotonic() + _CLOSE_TIMEOUT
        _join_all((c.recv_events_thread for c in targets), deadline)

    # Internal helpers for connections.

    def _connection_class(self) -> type[_TrackedConnection]:
        class _Connection(_TrackedConnection):
            pass

        return _Connection

    def _open_targets(self, run: _Run) -> list[_TrackedConnection]:
        with self._cond:
            return [c for c in run.connections if c.ws_test_state.open]

    def _close_politely(
        self,
        run: _Run,
        connections: list[_TrackedConnection],
        code: int,
        reason: str,
        timeout: float,
    ) -> None:
        def close(connection: _TrackedConnection) -> None:
            try:
                connection.close(code, reason)
            except Exception:
                logger.exception("closing connection %s failed", connection.id)

        threads = []
        for connection in connections:
            thread = threading.Thread(
                target=close,
                args=(connection,),
                name=f"{_THREAD_PREFIX}closer-{connection.ws_test_state.index}",
                daemon=True,
            )
            with self._cond:
                run.helper_threads.add(thread)
            thread.start()
            threads.append(thread)
        _join_all(threads, time.monotonic() + timeout)
        with self._cond:
            run.helper_threads.difference_update(t for t in threads if not t.is_alive())

    def _register_connection(self, run: _Run, connection: _TrackedConnection) -> None:
        """Track a connection that websockets just created (before handshake)."""
        state = connection.ws_test_state
        with self._cond:
            handler = run.handler_threads.get(threading.current_thread())
            state.index = handler[1] if handler else next(self._thread_ids)
            # Forget connections whose threads are all over.
            run.connections = [
                c
                for c in run.connections
                if c.recv_events_thread.is_alive()
                or (c.keepalive_thread is not None and c.keepalive_thread.is_alive())
            ]
            run.connections.append(connection)
            closing = run.closing
        connection.recv_events_thread.name = f"{_THREAD_PREFIX}recv-{state.index}"
        if closing:
            connection.close_socket()

    def _transport_closed(self, connection: _TrackedConnection) -> None:
        """Record that websockets' reader thread for ``connection`` ended."""
        state = connection.ws_test_state
        with self._cond:
            state.transport_closed = True
            if state.open:
                state.open = False
                self._open_connections -= 1
            self._cond.notify_all()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        del request
        with self._cond:
            closing = self._run is None or self._run.closing
            status = self._reject_status
            if status is not None and not closing:
                self._rejected_handshakes += 1
        if closing:
            return connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE, "WsTestServer is stopping.\n"
            )
        if status is None:
            return None
        return connection.respond(status, f"Handshake rejected by WsTestServer (HTTP {status}).\n")

    def _handle_connection(self, connection: ServerConnection) -> None:
        """Serve one connection whose opening handshake succeeded."""
        if not isinstance(connection, _TrackedConnection):  # pragma: no cover
            msg = f"unexpected connection type {type(connection).__name__}"
            raise TypeError(msg)
        state = connection.ws_test_state
        if connection.keepalive_thread is not None:
            connection.keepalive_thread.name = f"{_THREAD_PREFIX}keepalive-{state.index}"
        with self._cond:
            run = self._run
            self._connections_accepted += 1
            state.handshake_done = True
            if not state.transport_closed:
                state.open = True
                self._open_connections += 1
            accept_and_close = self._accept_and_close
            self._cond.notify_all()
        if run is None:  # pragma: no cover - stop() joins us before clearing it
            return
        if accept_and_close:
            connection.close(1001, "WsTestServer closes every new connection")
            return
        self._receive_loop(run, connection)

    def _wait_while_stalled(self, run: _Run) -> bool:
        """Block while stalled; return False when the handler must return.

        Requires holding self._cond.
        """
        self._cond.wait_for(lambda: not self._stalled or run.stopping)
        return not run.stopping

    def _receive_loop(self, run: _Run, connection: _TrackedConnection) -> None:
        while True:
            with self._cond:
                if not self._wait_while_stalled(run):
                    return
            try:
                frame = connection.recv()
            except ConnectionClosed:
                return
            with self._cond:
                # stall() may have been called while recv() was waiting: hold
                # the frame until resume() so that nothing is recorded while
                # stalled.
                if not self._wait_while_stalled(run):
                    return
                self._received.append(frame)
                self._cond.notify_all()
                reply = None if self._silent else self._reply
            if reply is None:
                continue
            try:
                frames = _as_frames(reply(frame))
            except Exception:
                logger.exception(
                    "WsTestServer reply function failed for %s; still serving",
                    _preview([frame]),
                )
                continue
            for out in frames:
                try:
                    connection.send(out)
                except ConnectionClosed:
                    return

    # Internal helpers for accepting.

    def _accept_loop(self, run: _Run) -> None:
        listener = run.server.socket
        with selectors.DefaultSelector() as selector:
            try:
                selector.register(listener, selectors.EVENT_READ)
                selector.register(run.wake_r, selectors.EVENT_READ)
                while True:
                    events = selector.select()
                    if any(key.fileobj is run.wake_r for key, _ in events):
                        return
                    try:
                        sock, address = listener.accept()
                    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                        continue
                    sock.settimeout(None)
                    self._start_handler(run, sock, address)
            except Exception:
                logger.exception("WsTestServer accept loop failed")
            finally:
                with contextlib.suppress(OSError):
                    listener.close()

    def _start_handler(self, run: _Run, sock: socket.socket, address: Any) -> None:
        with self._cond:
            if run.closing:
                sock.close()
                return
            index = next(self._thread_ids)
            thread = threading.Thread(
                target=self._run_handler,
                args=(run, sock, address),
                name=f"{_THREAD_PREFIX}handler-{index}",
                daemon=True,
            )
            # Registered before it starts, so that stop() always joins it.
            run.handler_threads[thread] = (sock, index)
        thread.start()

    def _run_handler(self, run: _Run, sock: socket.socket, address: Any) -> None:
        try:
            # websockets' per-connection handler: TLS and opening handshakes,
            # then self._handle_connection(), then the closing handshake. It
            # closes the socket before returning.
            run.server.handler(sock, address)
        except Exception:  # pragma: no cover - websockets logs its own errors
            logger.exception("WsTestServer connection handler failed")
        finally:
            with self._cond:
                run.handler_threads.pop(threading.current_thread(), None)


class Fault(enum.Enum):
    """What a :class:`ChaosServer` does with one received frame."""

    CONFIRM = "confirm"
    """Send the confirm function's reply at once."""

    REJECT = "reject"
    """Send the reject function's reply at once."""

    DELAY = "delay"
    """Send the confirm function's reply after :attr:`FaultPlan.delay` seconds."""

    SILENT = "silent"
    """Send nothing."""

    CLOSE = "close"
    """Close the connection politely (code 1011), with a closing handshake."""

    STALL = "stall"
    """Stop reading from the connection for :attr:`FaultPlan.stall` seconds.

    The frame itself gets no answer. websockets keeps reading ahead until its
    queue is full (16 messages), then TCP backpressure reaches the client.
    """

    INVALID_UTF8 = "invalid_utf8"
    """Send a text frame whose payload is not UTF-8: a client fails with 1007."""

    JUNK = "junk"
    """Send a well-formed frame of junk, drawn from :attr:`FaultPlan.junk`."""

    OVERSIZE = "oversize"
    """Send a frame of :attr:`FaultPlan.oversize` bytes (over the client's ``max_size``)."""

    HUGE_HEADER = "huge_header"
    """Send a frame header announcing 2**62 bytes, and no payload.

    A client that checks ``max_size`` fails the connection (1009) on the
    header alone; one without a limit waits for bytes that never come.
    """

    RESET = "reset"
    """Reset the TCP connection (RST, no close frame), as if the server crashed."""


_REPLY_FAULTS = frozenset({Fault.CONFIRM, Fault.REJECT, Fault.DELAY, Fault.SILENT})

DEFAULT_FAULT_WEIGHTS: Mapping[Fault, float] = MappingProxyType(
    {
        Fault.CONFIRM: 50.0,
        Fault.REJECT: 10.0,
        Fault.DELAY: 6.0,
        Fault.SILENT: 8.0,
        Fault.CLOSE: 1.0,
        Fault.STALL: 1.0,
        Fault.INVALID_UTF8: 0.5,
        Fault.JUNK: 3.0,
        Fault.OVERSIZE: 0.5,
        Fault.HUGE_HEADER: 0.5,
        Fault.RESET: 1.0,
    }
)
"""The mix of :class:`FaultPlan` by default: mostly answers, a few faults."""

_DEFAULT_JUNK: tuple[Frame, ...] = (
    "\x00 this is not JSON {",
    b"\xff\x00 binary junk",
    "",
    "null",
    '{"id": null}',
    "[1, 2, 3]",
)

# A frame header (FIN, binary, unmasked, 64-bit length) announcing 2**62
# bytes: far over any sane max_size, and no payload follows.
_HUGE_HEADER = struct.pack("!BBQ", 0x82, 127, 2**62)


def _check_seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{name} must be a number of seconds, not {type(value).__name__}"
        raise TypeError(msg)
    if not math.isfinite(value) or value < 0:
        msg = f"{name} must be finite and >= 0, not {value!r}"
        raise ValueError(msg)
    return float(value)


@dataclass(frozen=True)
class FaultPlan:
    """The random mix of behaviours of a :class:`ChaosServer`.

    For every frame it receives, the server draws one :class:`Fault` with
    probabilities proportional to ``weights``.

    Args:
        weights: Relative weight of each fault; a fault that is missing (or
            weighs 0) never happens. Default: :data:`DEFAULT_FAULT_WEIGHTS`.
        delay: Seconds before a :attr:`Fault.DELAY` reply is sent; make it
            longer than the client's deadline to produce late replies.
        stall: Seconds a :attr:`Fault.STALL` stops reading.
        oversize: Size in bytes of a :attr:`Fault.OVERSIZE` frame; make it
            larger than the client's ``max_size``.
        junk: The frames :attr:`Fault.JUNK` draws from.

    Raises:
        TypeError: If a value has the wrong type.
        ValueError: If a value is out of range, or every weight is 0.
    """

    weights: Mapping[Fault, float] = field(default_factory=lambda: DEFAULT_FAULT_WEIGHTS)
    delay: float = 1.0
    stall: float = 0.5
    oversize: int = 2**20 + 1
    junk: tuple[Frame, ...] = _DEFAULT_JUNK
    _faults: tuple[Fault, ...] = field(init=False, repr=False, compare=False)
    _cumulative: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.weights, Mapping):
            msg = f"weights must be a mapping of Fault to weight, not {type(self.weights).__name__}"
            raise TypeError(msg)
        faults: list[Fault] = []
        cumulative: list[float] = []
        total = 0.0
        for fault, weight in self.weights.items():
            if not isinstance(fault, Fault):
                msg = f"weights keys must be Fault members, not {fault!r}"
                raise TypeError(msg)
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                msg = f"the weight of {fault} must be a number, not {type(weight).__name__}"
                raise TypeError(msg)
            if not math.isfinite(weight) or weight < 0:
                msg = f"the weight of {fault} must be finite and >= 0, not {weight!r}"
                raise ValueError(msg)
            if weight > 0:
                total += weight
                faults.append(fault)
                cumulative.append(total)
        if not faults:
            msg = "at least one fault must have a weight > 0"
            raise ValueError(msg)
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        object.__setattr__(self, "delay", _check_seconds(self.delay, "delay"))
        object.__setattr__(self, "stall", _check_seconds(self.stall, "stall"))
        if isinstance(self.oversize, bool) or not isinstance(self.oversize, int):
            msg = f"oversize must be an int, not {type(self.oversize).__name__}"
            raise TypeError(msg)
        if self.oversize < 1:
            msg = f"oversize must be >= 1, not {self.oversize}"
            raise ValueError(msg)
        junk = tuple(self.junk)
        if not junk:
            msg = "junk must hold at least one frame"
            raise ValueError(msg)
        for frame in junk:
            _check_frame(frame)
        object.__setattr__(self, "junk", junk)
        object.__setattr__(self, "_faults", tuple(faults))
        object.__setattr__(self, "_cumulative", tuple(cumulative))

    @classmethod
    def only(cls, fault: Fault, **kwargs: Any) -> FaultPlan:
        """Return a plan that always does ``fault`` (other settings as given)."""
        return cls(weights={fault: 1.0}, **kwargs)

    def draw(self, rng: random.Random) -> Fault:
        """Draw one fault with ``rng``."""
        point = rng.random() * self._cumulative[-1]
        index = bisect.bisect_right(self._cumulative, point)
        return self._faults[min(index, len(self._faults) - 1)]


@dataclass(frozen=True)
class ConnectionLog:
    """What a :class:`ChaosServer` saw and did on one connection (a snapshot).

    Attributes:
        index: 1 for the first connection whose handshake succeeded, 2 for the
            next, and so on.
        frames: Every message received *complete* on the connection, in
            order. A message counts as soon as websockets has parsed its last
            byte, even if the server never got to handle it (it was stalled,
            or the connection died first): this is what the peer can know was
            delivered.
        received_at: The :func:`time.monotonic` time each of ``frames``
            arrived, in the same order.
        faults: ``(fault, frame)`` for every frame the server handled, in
            order; frames that arrived while the connection was stalled or
            dying may have no entry.
        closed: Whether the connection's transport is closed.
    """

    index: int
    frames: tuple[Frame, ...]
    received_at: tuple[float, ...]
    faults: tuple[tuple[Fault, Frame], ...]
    closed: bool


@dataclass(eq=False)
class _ChaosState:
    """Mutable per-connection state of a ChaosServer, guarded by its _cond."""

    index: int = 0
    frames: list[Frame] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)
    faults: list[tuple[Fault, Frame]] = field(default_factory=list)
    fragments: list[bytes] = field(default_factory=list)
    fragments_text: bool = False
    stall_until: float = 0.0

    def snapshot(self, *, closed: bool) -> ConnectionLog:
        return ConnectionLog(
            index=self.index,
            frames=tuple(self.frames),
            received_at=tuple(self.received_at),
            faults=tuple(self.faults),
            closed=closed,
        )


@dataclass(frozen=True)
class _ChaosHooks:
    """Callbacks from a ChaosServer's connections to the server."""

    # (connection, payload, is_text), for every complete inbound message.
    record: Callable[[_ChaosConnection, bytes, bool], None]


class _ChaosConnection(_TrackedConnection):
    """A tracked connection that records every complete inbound message."""

    chaos_hooks: ClassVar[_ChaosHooks]  # set on a per-run subclass

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before super().__init__(), which starts the reader thread.
        self.chaos_state = _ChaosState()
        super().__init__(*args, **kwargs)

    def process_event(self, event: Any) -> None:
        if self.request is not None:  # not the handshake request
            opcode = getattr(event, "opcode", None)
            if opcode in {Opcode.TEXT, Opcode.BINARY, Opcode.CONT}:
                self._record_fragment(opcode, bytes(event.data), fin=bool(event.fin))
        super().process_event(event)

    def _record_fragment(self, opcode: Opcode, data: bytes, *, fin: bool) -> None:
        state = self.chaos_state
        if opcode is not Opcode.CONT:
            state.fragments = []
            state.fragments_text = opcode is Opcode.TEXT
        state.fragments.append(data)
        if fin:
            payload = b"".join(state.fragments)
            state.fragments = []
            self.chaos_hooks.record(self, payload, state.fragments_text)


class ChaosServer(WsTestServer):
    """A :class:`WsTestServer` that misbehaves at random, reproducibly.

    For every frame it receives, it draws a :class:`Fault` from ``plan`` with
    a random generator seeded from ``seed`` and the connection's number, and
    acts on it: answer (confirm or reject, at once or late), stay silent,
    stop reading for a while, send garbage (invalid UTF-8, junk, an oversized
    frame, a lying frame header), close the connection or reset it. The same
    seed replays the same sequence of faults on each connection, given the
    same frames in the same order (what the client sends, and when, still
    depends on thread scheduling).

    It records the server's view for invariant checks: every message received
    complete, per connection and in order, with what it did with each (see
    :meth:`connection_logs`; kept for the life of the server object).
    :attr:`received` and :meth:`wait_for_received` work as for
    :class:`WsTestServer` (frames the handler got to), and so do its
    switches (:meth:`stall` stalls every connection on top of the faults).
    The ``reply`` function of :class:`WsTestServer` is not used:
    ``confirm`` and ``reject`` replace it.

    Delayed replies are sent by the connection's own thread: one due while
    the connection is stalled goes out when the stall ends, and one due after
    the connection closed is dropped.

    Args:
        plan: The mix of faults; default: :class:`FaultPlan` ``()``.
        confirm: The reply to a frame for :attr:`Fault.CONFIRM` and
            :attr:`Fault.DELAY` (a frame, frames, or :obj:`None` for nothing:
            e.g. for a frame that is not a request).
        reject: The reply for :attr:`Fault.REJECT`; :obj:`None` sends
            nothing.
        seed: Seed of the random draws; :obj:`None` picks one at random. Read
            it back from :attr:`seed` to replay a run.
        host: As for :class:`WsTestServer`.
        port: As for :class:`WsTestServer`.
        ssl: As for :class:`WsTestServer`.
        max_size: As for :class:`WsTestServer`.
        ping_interval: As for :class:`WsTestServer`.

    Raises:
        TypeError: If ``plan`` is not a :class:`FaultPlan` or ``seed`` not an
            :class:`int`.

    Example::

        def confirm(frame):
            return json.dumps({"id": json.loads(frame)["id"], "result": "ok"})

        plan = FaultPlan(weights={Fault.CONFIRM: 9, Fault.RESET: 1})
        with ChaosServer(plan, confirm=confirm, seed=1234) as server:
            ...  # drive a client at server.url
            for log in server.connection_logs():
                print(log.index, len(log.frames), log.faults[-1][0])
    """

    def __init__(
        self,
        plan: FaultPlan | None = None,
        *,
        confirm: ReplyFn | None = None,
        reject: ReplyFn | None = None,
        seed: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl: SSLContext | None = None,
        max_size: int | None = 2**20,
        ping_interval: float | None = None,
    ) -> None:
        """Configure the server; nothing listens until :meth:`start`."""
        if plan is None:
            plan = FaultPlan()
        elif not isinstance(plan, FaultPlan):
            msg = f"plan must be a FaultPlan, not {type(plan).__name__}"
            raise TypeError(msg)
        if seed is None:
            seed = random.SystemRandom().randrange(2**32)
        elif isinstance(seed, bool) or not isinstance(seed, int):
            msg = f"seed must be an int, not {type(seed).__name__}"
            raise TypeError(msg)
        super().__init__(
            None, host=host, port=port, ssl=ssl, max_size=max_size, ping_interval=ping_interval
        )
        self._plan = plan
        self._seed = seed
        self._confirm = confirm
        self._reject = reject
        # Guarded by self._cond, like the rest of WsTestServer's state.
        self._chaos_states: list[tuple[_ChaosState, _ChaosConnection]] = []
        self._fault_counts: dict[Fault, int] = dict.fromkeys(Fault, 0)
        self._inject_rng = random.Random(f"{seed}/inject")  # noqa: S311 - not cryptography

    @property
    def seed(self) -> int:
        """The seed of the random draws (give it back to replay a run)."""
        return self._seed

    @property
    def plan(self) -> FaultPlan:
        """The mix of faults in use."""
        with self._cond:
            return self._plan

    def set_plan(self, plan: FaultPlan) -> None:
        """Use another mix of faults from the next frame on (e.g. calm down).

        Args:
            plan: The new mix.

        Raises:
            TypeError: If ``plan`` is not a :class:`FaultPlan`.
        """
        if not isinstance(plan, FaultPlan):
            msg = f"plan must be a FaultPlan, not {type(plan).__name__}"
            raise TypeError(msg)
        with self._cond:
            self._plan = plan

    def connection_logs(self) -> list[ConnectionLog]:
        """Return a snapshot of what each connection received and got, in order."""
        with self._cond:
            return [
                state.snapshot(closed=connection.ws_test_state.transport_closed)
                for state, connection in self._chaos_states
            ]

    def fault_counts(self) -> dict[Fault, int]:
        """Return how many times each fault was acted on so far."""
        with self._cond:
            return dict(self._fault_counts)

    def inject(self, fault: Fault) -> int:
        """Do ``fault`` to every open connection now, from the calling thread.

        Only faults that need no received frame can be injected: every one
        but :attr:`Fault.CONFIRM`, :attr:`Fault.REJECT`, :attr:`Fault.DELAY`
        and :attr:`Fault.SILENT`. :attr:`Fault.STALL` stalls each connection
        for :attr:`FaultPlan.stall` seconds from now.

        Args:
            fault: What to do.

        Returns:
            How many connections it was done to.

        Raises:
            ValueError: If ``fault`` needs a received frame.
        """
        if fault in _REPLY_FAULTS:
            msg = f"{fault} answers a received frame and cannot be injected"
            raise ValueError(msg)
        with self._cond:
            run = self._run
        if run is None:
            return 0
        done = 0
        for connection in self._open_targets(run):
            if not isinstance(connection, _ChaosConnection):  # pragma: no cover
                continue
            self._count(fault, connection, None)
            try:
                self._do_connection_fault(connection, fault, self._inject_rng)
            except ConnectionClosed:
                continue
            done += 1
        return done

    # Internal helpers.

    def _connection_class(self) -> type[_TrackedConnection]:
        class _Connection(_ChaosConnection):
            pass

        _Connection.chaos_hooks = _ChaosHooks(record=self._record)
        return _Connection

    def _record(self, connection: _ChaosConnection, payload: bytes, text: bool) -> None:
        """Record a message received complete (websockets' reader thread)."""
        frame: Frame
        if text:
            try:
                frame = payload.decode()
            except UnicodeDecodeError:
                return  # websockets fails the connection: not a message
        else:
            frame = payload
        now = time.monotonic()
        with self._cond:
            state = connection.chaos_state
            state.frames.append(frame)
            state.received_at.append(now)

    def _handle_connection(self, connection: ServerConnection) -> None:
        if isinstance(connection, _ChaosConnection):
            with self._cond:
                self._chaos_states.append((connection.chaos_state, connection))
                connection.chaos_state.index = len(self._chaos_states)
        super()._handle_connection(connection)

    def _count(self, fault: Fault, connection: _ChaosConnection, frame: Frame | None) -> None:
        with self._cond:
            self._fault_counts[fault] += 1
            if frame is not None:
                connection.chaos_state.faults.append((fault, frame))

    def _answer(self, function: ReplyFn | None, frame: Frame) -> list[Frame]:
        if function is None:
            return []
        try:
            return _as_frames(function(frame))
        except Exception:
            logger.exception("ChaosServer reply function failed for %s", _preview([frame]))
            return []

    def _wait_for_stall(self, run: _Run, state: _ChaosState) -> bool:
        """Wait out a STALL of this connection; False when the handler must return.

        Requires holding self._cond.
        """
        while not run.stopping:
            remaining = state.stall_until - time.monotonic()
            if remaining <= 0:
                return True
            self._cond.wait(remaining)
        return False

    def _receive_loop(self, run: _Run, connection: _TrackedConnection) -> None:
        if not isinstance(connection, _ChaosConnection):  # pragma: no cover
            super()._receive_loop(run, connection)
            return
        state = connection.chaos_state
        rng = random.Random(f"{self._seed}/{state.index}")  # noqa: S311 - not cryptography
        delayed: list[tuple[float, int, Frame]] = []  # (due, seq, frame)
        sequence = itertools.count()
        while True:
            with self._cond:
                if not self._wait_while_stalled(run) or not self._wait_for_stall(run, state):
                    return
            timeout = None
            if delayed:
                now = time.monotonic()
                while delayed and delayed[0][0] <= now:
                    out = heapq.heappop(delayed)[2]
                    try:
                        connection.send(out)
                    except ConnectionClosed:
                        return
                if delayed:
                    timeout = delayed[0][0] - now
            try:
                frame = connection.recv(timeout=timeout)
            except TimeoutError:
                continue  # a delayed reply is due
            except ConnectionClosed:
                return
            with self._cond:
                # stall() or inject(STALL) may have happened while recv() was
                # waiting: hold the frame until the stall is over.
                if not self._wait_while_stalled(run) or not self._wait_for_stall(run, state):
                    return
                self._received.append(frame)
                self._cond.notify_all()
            with self._cond:
                plan = self._plan
            fault = plan.draw(rng)
            self._count(fault, connection, frame)
            try:
                if fault is Fault.DELAY:
                    due = time.monotonic() + plan.delay
                    for out in self._answer(self._confirm, frame):
                        heapq.heappush(delayed, (due, next(sequence), out))
                elif fault in _REPLY_FAULTS:
                    function = {Fault.CONFIRM: self._confirm, Fault.REJECT: self._reject}.get(fault)
                    for out in self._answer(function, frame):
                        connection.send(out)
                else:
                    self._do_connection_fault(connection, fault, rng)
            except ConnectionClosed:
                return

    def _do_connection_fault(
        self, connection: _ChaosConnection, fault: Fault, rng: random.Random
    ) -> None:
        """Act on a fault that needs no reply; raise ConnectionClosed if gone."""
        with self._cond:
            plan = self._plan
        if fault is Fault.CLOSE:
            connection.close(1011, "ChaosServer closes the connection")
        elif fault is Fault.RESET:
            _abort_connection(connection)
        elif fault is Fault.STALL:
            with self._cond:
                state = connection.chaos_state
                state.stall_until = max(state.stall_until, time.monotonic() + plan.stall)
                self._cond.notify_all()
        elif fault is Fault.INVALID_UTF8:
            connection.send(b"\xff\xfe invalid UTF-8 \xc3\x28", text=True)
        elif fault is Fault.JUNK:
            with self._cond:  # inject() may share the generator across threads
                junk = rng.choice(plan.junk)
            connection.send(junk)
        elif fault is Fault.OVERSIZE:
            connection.send(b"\x00" * plan.oversize)
        elif fault is Fault.HUGE_HEADER:
            with connection.protocol_mutex:
                try:
                    connection.socket.sendall(_HUGE_HEADER)
                except OSError:
                    return


@dataclass(eq=False)
class _Pipe:
    """One proxied TCP connection."""

    index: int
    client: socket.socket
    upstream: socket.socket | None = None
    connected: bool = False
    to_upstream: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    client_eof: bool = False
    upstream_eof: bool = False
    upstream_shut: bool = False
    client_shut: bool = False


class FaultProxy(_Listening):
    """A TCP proxy that injects socket-level faults, for tests.

    It forwards bytes between clients connecting to ``host``:``port`` and
    ``target_host``:``target_port``, typically a :class:`WsTestServer`. It is
    transparent to TLS and WebSocket. A single background thread does all the
    work with non-blocking sockets.

    Args:
        target_host: Address of the server to forward to.
        target_port: Port of the server to forward to.
        host: Address to listen on. Keep it on the loopback interface.
        port: Port to listen on; 0 picks a free ephemeral port.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """Configure the proxy; nothing listens until :meth:`start`."""
        self._target = (target_host, target_port)
        self._host = host
        self._requested_port = port
        self._bound_port: int | None = None
        self._cond = threading.Condition()
        # Everything below is guarded by self._cond, and only the proxy thread
        # touches sockets once started.
        self._state = "new"
        self._blackholed = False
        self._connections_accepted = 0
        self._resets_requested = 0
        self._resets_done = 0
        self._pipes: list[_Pipe] = []
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._masks: dict[socket.socket, int] = {}
        self._target_addr: tuple[int, Any] | None = None

    # Life cycle

    def start(self) -> Self:
        """Bind the listening socket and start forwarding in a background thread.

        The socket is bound before this method returns, so :attr:`port` and
        :attr:`url` are valid. Calling it while the proxy runs does nothing.

        Returns:
            The proxy itself.

        Raises:
            RuntimeError: If the proxy was stopped; create a new one instead.
            OSError: If the target address cannot be resolved.
        """
        with self._cond:
            if self._state == "running":
                return self
            if self._state != "new":
                msg = "a stopped FaultProxy cannot be restarted; create a new one"
                raise RuntimeError(msg)
            family, _, _, _, address = socket.getaddrinfo(*self._target, type=socket.SOCK_STREAM)[0]
            self._target_addr = (family, address)
            listener = socket.create_server((self._host, self._requested_port))
            listener.settimeout(0.0)
            self._listener = listener
            self._bound_port = int(listener.getsockname()[1])
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.settimeout(0.0)
            self._selector = selectors.DefaultSelector()
            self._thread = threading.Thread(
                target=self._loop,
                name=f"{_THREAD_PREFIX}proxy-{self._bound_port}",
                daemon=True,
            )
            self._state = "running"
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection and the listening socket; join the thread.

        Calling it again, or before :meth:`start`, does nothing.

        Args:
            timeout: How long to wait for the proxy thread, in seconds.

        Raises:
            TimeoutError: If the proxy thread is still alive after ``timeout``.
        """
        with self._cond:
            if self._state == "new":
                return
            if self._state == "running":
                self._state = "stopping"
            thread = self._thread
        self._wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                msg = f"FaultProxy.stop() timed out; {thread.name} is still alive"
                raise TimeoutError(msg)
        with self._cond:
            self._state = "stopped"
            for sock in (self._wake_r, self._wake_w):
                if sock is not None:
                    sock.close()  # idempotent

    # Addresses: host and port come from _Listening.

    @property
    def url(self) -> str:
        """``ws://HOST:PORT``; build a ``wss://`` URL yourself for TLS."""
        return _format_url("ws", self.host, self.port)

    @property
    def connections_accepted(self) -> int:
        """How many client connections the proxy accepted so far."""
        with self._cond:
            return self._connections_accepted

    # Faults

    def blackhole(self) -> None:
        """Stop forwarding bytes in both directions, keeping sockets open.

        This emulates a peer that silently died: no FIN, no RST, nothing
        forwarded. The proxy stops reading, so TCP backpressure eventually
        reaches the senders. New connections are accepted at the TCP level,
        but not forwarded (not even connected to the target). Once this method
        returns, no byte is forwarded until :meth:`restore`; bytes already
        read by the proxy are kept and forwarded after :meth:`restore`.
        """
        with self._cond:
            self._blackholed = True
        self._wake()

    def restore(self) -> None:
        """Forward again after :meth:`blackhole`, for old and new connections."""
        with self._cond:
            self._blackholed = False
        self._wake()

    def reset_all(self) -> None:
        """Reset every current connection, on both sides (TCP RST).

        Returns once the sockets are reset. Does nothing if the proxy is not
        running.

        Raises:
            TimeoutError: If the proxy thread does not do it within 5 seconds.
        """
        with self._cond:
            if self._state != "running":
                return
            self._resets_requested += 1
            wanted = self._resets_requested
        self._wake()
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._resets_done >= wanted or self._state != "running",
                timeout=5.0,
            ):
                msg = "FaultProxy.reset_all() timed out"
                raise TimeoutError(msg)

    # Internal helpers.

    def _wake(self) -> None:
        with self._cond:
            wake_w = self._wake_w
        if wake_w is not None:
            with contextlib.suppress(OSError):
                wake_w.send(b"x")

    def _loop(self) -> None:
        selector = self._selector
        listener = self._listener
        wake_r = self._wake_r
        if selector is None or listener is None or wake_r is None:  # pragma: no cover
            return
        try:
            selector.register(listener, selectors.EVENT_READ, "listen")
            selector.register(wake_r, selectors.EVENT_READ, "wake")
            while True:
                events = selector.select()
                with self._cond:
                    if self._state != "running":
                        return
                    for key, mask in events:
                        if key.data == "wake":
                            with contextlib.suppress(OSError):
                                wake_r.recv(4096)
                        elif key.data == "listen":
                            self._accept(listener)
                        elif not self._blackholed:
                            pipe, side = key.data
                            self._service(pipe, side, mask)
                    if self._resets_done < self._resets_requested:
                        for pipe in list(self._pipes):
                            self._close_pipe(pipe, reset=True)
                        self._resets_done = self._resets_requested
                        self._cond.notify_all()
                    for pipe in list(self._pipes):
                        self._update(pipe)
        except Exception:
            logger.exception("FaultProxy thread failed")
        finally:
            with self._cond:
                for pipe in list(self._pipes):
                    self._close_pipe(pipe, reset=False)
                self._state = "stopped"
                self._cond.notify_all()
            selector.close()
            listener.close()

    def _accept(self, listener: socket.socket) -> None:
        try:
            client, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        client.settimeout(0.0)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connections_accepted += 1
        self._pipes.append(_Pipe(index=self._connections_accepted, client=client))

    def _connect_upstream(self, pipe: _Pipe) -> None:
        if self._target_addr is None:  # pragma: no cover
            return
        family, address = self._target_addr
        upstream = socket.socket(family, socket.SOCK_STREAM)
        upstream.settimeout(0.0)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe.upstream = upstream
        err = upstream.connect_ex(address)
        if err not in {0, errno.EINPROGRESS, errno.EWOULDBLOCK}:
            logger.warning("FaultProxy cannot connect to %s: errno %d", address, err)
            self._close_pipe(pipe, reset=True)

    def _service(self, pipe: _Pipe, side: str, mask: int) -> None:
        if pipe not in self._pipes:
            return  # closed earlier in this iteration
        try:
            if side == "client":
                self._service_client(pipe, mask)
            else:
                self._service_upstream(pipe, mask)
        except OSError as exc:
            logger.debug("FaultProxy connection %d failed: %s", pipe.index, exc)
            self._close_pipe(pipe, reset=True)
            return
        self._propagate_eof(pipe)

    def _service_client(self, pipe: _Pipe, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            data = self._recv(pipe.client)
            if data == b"":
                pipe.client_eof = True
            elif data:
                pipe.to_upstream += data
        if mask & selectors.EVENT_WRITE and pipe.to_client:
            del pipe.to_client[: self._send(pipe.client, pipe.to_client)]

    def _service_upstream(self, pipe: _Pipe, mask: int) -> None:
        upstream = pipe.upstream
        if upstream is None:  # pragma: no cover
            return
        if not pipe.connected:
            if mask & selectors.EVENT_WRITE:
                err = upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, f"connecting to the target: errno {err}")
                pipe.connected = True
            return
        if mask & selectors.EVENT_READ:
            data = self._recv(upstream)
            if data == b"":
                pipe.upstream_eof = True
            elif data:
                pipe.to_client += data
        if mask & selectors.EVENT_WRITE and pipe.to_upstream:
            del pipe.to_upstream[: self._send(upstream, pipe.to_upstream)]

    @staticmethod
    def _recv(sock: socket.socket) -> bytes | None:
        try:
            return sock.recv(_PROXY_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return None

    @staticmethod
    def _send(sock: socket.socket, data: bytearray) -> int:
        try:
            return sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0

    def _propagate_eof(self, pipe: _Pipe) -> None:
        """Forward half-closes, and close the pipe once both sides are done."""
        if pipe not in self._pipes:
            return
        if (
            pipe.client_eof
            and not pipe.to_upstream
            and pipe.connected
            and not pipe.upstream_shut
            and pipe.upstream is not None
        ):
            with contextlib.suppress(OSError):
                pipe.upstream.shutdown(socket.SHUT_WR)
            pipe.upstream_shut = True
        if pipe.upstream_eof and not pipe.to_client and not pipe.client_shut:
            with contextlib.suppress(OSError):
                pipe.client.shutdown(socket.SHUT_WR)
            pipe.client_shut = True
        if pipe.upstream_shut and pipe.client_shut:
            self._close_pipe(pipe, reset=False)

    def _update(self, pipe: _Pipe) -> None:
        """Register the sockets of ``pipe`` for the events it can handle now."""
        if self._blackholed:
            self._set_mask(pipe.client, 0, None)
            if pipe.upstream is not None:
                self._set_mask(pipe.upstream, 0, None)
            return
        if pipe.upstream is None:
            self._connect_upstream(pipe)
            if pipe not in self._pipes:
                return
        client_mask = 0
        if not pipe.client_eof and len(pipe.to_upstream) < _PROXY_BUFFER:
            client_mask |= selectors.EVENT_READ
        if pipe.to_client:
            client_mask |= selectors.EVENT_WRITE
        self._set_mask(pipe.client, client_mask, (pipe, "client"))
        upstream_mask = 0
        if not pipe.connected:
            upstream_mask = selectors.EVENT_WRITE
        else:
            if not pipe.upstream_eof and len(pipe.to_client) < _PROXY_BUFFER:
                upstream_mask |= selectors.EVENT_READ
            if pipe.to_upstream:
                upstream_mask |= selectors.EVENT_WRITE
        if pipe.upstream is not None:
            self._set_mask(pipe.upstream, upstream_mask, (pipe, "upstream"))

    def _set_mask(self, sock: socket.socket, mask: int, data: object) -> None:
        selector = self._selector
        if selector is None:  # pragma: no cover
            return
        current = self._masks.get(sock, 0)
        if mask == current:
            return
        if mask == 0:
            selector.unregister(sock)
            del self._masks[sock]
        elif current == 0:
            selector.register(sock, mask, data)
            self._masks[sock] = mask
        else:
            selector.modify(sock, mask, data)
            self._masks[sock] = mask

    def _close_pipe(self, pipe: _Pipe, *, reset: bool) -> None:
        if pipe in self._pipes:
            self._pipes.remove(pipe)
        for sock in (pipe.client, pipe.upstream):
            if sock is None:
                continue
            self._set_mask(sock, 0, None)
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
