"""The connection plumbing of :class:`WsTestServer`.

This module owns everything between the listening socket and a served
connection: ``_TrackedConnection`` (a websockets ``ServerConnection`` that
reports its life cycle), the per-connection and per-run state (``_ConnState``,
``_Run``), and ``_ServerPlumbing``, the base class of :class:`WsTestServer`
that runs the accept loop and handler threads, starts and stops the server,
and names, counts, closes and joins every thread and connection.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

from websockets.sync.server import Server, ServerConnection, serve

from pykka_ws._connection import discard_data_after_close
from pykka_ws.testing._common import (
    _LOGGER_NAME,
    _THREAD_PREFIX,
    _format_url,
    _join_all,
    _Listening,
)

if TYPE_CHECKING:
    import itertools
    from collections.abc import Callable
    from ssl import SSLContext

    from websockets.http11 import Request, Response

logger = logging.getLogger(_LOGGER_NAME)

# Bounds the closing handshake of server connections, so that a polite close
# towards a peer that never answers cannot hold a thread for long.
_CLOSE_TIMEOUT = 2.0

# How long stop() lets polite closes run before it closes sockets abruptly.
_STOP_GRACE = 1.0


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
        # A socket closed under the receiving thread (stop(), an abrupt
        # close) must not log websockets' "unexpected internal error".
        protocol = kwargs.get("protocol", args[1] if len(args) > 1 else None)
        if protocol is not None:
            discard_data_after_close(protocol)
        super().__init__(*args, **kwargs)
        self.hooks.created(self)

    def recv_events(self) -> None:
        try:
            super().recv_events()
        finally:
            self.hooks.transport_closed(self)


class _ServerPlumbing(_Listening):
    """The threads and sockets behind a :class:`WsTestServer`.

    It owns the life cycle (:meth:`start`, :meth:`stop`), the accept loop,
    the connection handler threads, and the tracking of every websockets
    connection (naming, counting, closing and joining its threads).
    :class:`WsTestServer` derives from it and decides what to do with each
    connection: it sets every attribute declared below in ``__init__`` and
    implements ``_process_request`` (the handshake gate) and
    ``_receive_loop`` (serving an open connection).
    """

    # Set by WsTestServer.__init__; see there. _host and _bound_port come
    # from _Listening.
    _requested_port: int
    _ssl: SSLContext | None
    _max_size: int | None
    _ping_interval: float | None
    _lifecycle_lock: threading.Lock
    _cond: threading.Condition
    # Guarded by self._cond.
    _run: _Run | None
    _connections_accepted: int
    _open_connections: int
    _accept_and_close: bool
    _thread_ids: itertools.count[int]

    # Implemented by WsTestServer.

    def _process_request(  # pragma: no cover - overridden
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Answer an opening handshake with an HTTP error, or accept it (None)."""
        raise NotImplementedError

    def _receive_loop(  # pragma: no cover - overridden
        self, run: _Run, connection: _TrackedConnection
    ) -> None:
        """Serve an open connection until it closes or the server stops."""
        raise NotImplementedError

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
