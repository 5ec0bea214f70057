"""The connector thread: TCP connect, TLS and WebSocket handshakes, cancellable.

The owner starts one thread (``pykka-ws-connect-N``) per connection attempt;
it opens the socket, runs the handshakes, and tells the owner `Opened` or
`OpenFailed`. `ConnectorSlot` hands the attempt over to ``stop()``: a stop
aborts the connect or handshake under way at once, and a connection that
finishes opening while the owner stops is closed, never leaked.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from websockets.sync.client import connect

from pykka_ws._connection import Opened, OpenFailed, Sink, connection_factory, tell_owner

if TYPE_CHECKING:
    from pykka import ActorRef
    from websockets.uri import WebSocketURI

    from pykka_ws._connection import Connection

__all__ = ["ConnectorSlot", "open_socket", "run_connector", "set_write_timeout"]


def set_write_timeout(sock: socket.socket, seconds: float) -> None:
    """Bound how long a send may make no progress, without touching reads.

    ``SO_SNDTIMEO`` fails a blocking send that moved no byte for ``seconds``
    (a peer that stopped reading), while a slow but moving transfer goes on.
    ``settimeout()`` would bound reads too (websockets before 17 blocks in
    ``recv()`` on an idle connection) and cut a large frame on a slow link.
    """
    if sys.platform == "win32":  # a DWORD of milliseconds
        value = struct.pack("I", max(1, int(seconds * 1000)))
    else:  # a struct timeval
        whole = int(seconds)
        value = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


class ConnectorSlot:
    """Hands a connection attempt over to ``stop()``, and lets it abort the attempt.

    The owner cancels the slot when it stops; the connector checks it under
    the lock before publishing a connection, so a connection that finishes
    opening while the owner stops is closed, never leaked.

    `cancel` also ends the attempt at once, in whichever step it is: the TCP
    connect (the connector waits on the connecting socket together with the
    slot's wakeup, which `cancel` triggers), and the TLS and WebSocket
    handshakes (`cancel` shuts the socket down, which fails the read they
    wait on). The one step it cannot end is the DNS lookup: ``getaddrinfo()``
    cannot be interrupted. The connector thread (a daemon) then lives on until
    the lookup returns, sees the slot cancelled, and exits without connecting.
    """

    __slots__ = ("_wake_r", "_wake_w", "cancelled", "connection", "lock", "resolving", "sock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cancelled = False
        # True while the connector is in the DNS lookup, which nothing can
        # interrupt: stop() does not wait for the connector then.
        self.resolving = False
        # The socket of the attempt (a duplicate of its descriptor, so that
        # it still refers to the connection once TLS has taken the original).
        self.sock: socket.socket | None = None
        self.connection: Connection | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    def cancel(self) -> Connection | None:
        """Abort an attempt under way; return the connection if one was made.

        A connection returned here is the owner's to close: it may or may
        not have been adopted already. Never blocks.
        """
        with self.lock:
            self.cancelled = True
            connection = self.connection
            if self._wake_w is not None:
                try:
                    self._wake_w.send(b"\0")
                except OSError:  # full (already woken) or closed
                    pass
            if connection is None and self.sock is not None:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        return connection

    def check(self) -> None:
        """Raise `ConnectionAbortedError` if the owner has stopped (connector)."""
        if self.cancelled:
            raise ConnectionAbortedError(_ABORTED)

    def resolve(self, host: str, port: int) -> list[tuple[Any, Any, int, str, Any]]:
        """``socket.getaddrinfo()``, the one step `cancel` cannot end (connector).

        ``resolving`` is set under the lock, after checking that the slot is
        not cancelled: an owner that reads it after `cancel` knows whether
        the connector may be stuck in a lookup.
        """
        with self.lock:
            self.check()
            self.resolving = True
        try:
            return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        finally:
            self.resolving = False

    def register(self, sock: socket.socket) -> None:
        """Make ``sock`` the one `cancel` shuts down (connector).

        Raises `ConnectionAbortedError` (and registers nothing) if the slot
        was cancelled already.
        """
        duplicate = sock.dup()
        with self.lock:
            previous, self.sock = self.sock, duplicate
            cancelled = self.cancelled
            if cancelled:
                self.sock = None
        if previous is not None:
            previous.close()
        if cancelled:
            duplicate.close()
            raise ConnectionAbortedError(_ABORTED)

    def unregister(self) -> None:
        """Forget the registered socket (connector)."""
        with self.lock:
            previous, self.sock = self.sock, None
        if previous is not None:
            previous.close()

    def wakeup(self) -> socket.socket:
        """The socket that turns readable when the slot is cancelled (connector)."""
        with self.lock:
            if self._wake_r is None:
                self._wake_r, self._wake_w = socket.socketpair()
                self._wake_w.settimeout(0.0)
                if self.cancelled:
                    self._wake_w.send(b"\0")
            return self._wake_r

    def release(self) -> None:
        """Close the slot's own sockets; the attempt is over (connector)."""
        with self.lock:
            owned = (self.sock, self._wake_r, self._wake_w)
            self.sock = self._wake_r = self._wake_w = None
        for sock in owned:
            if sock is not None:
                sock.close()


_ABORTED = "the actor stopped while connecting"
# connect_ex() codes of a connect under way (Windows: WSAEWOULDBLOCK).
_CONNECTING = frozenset(
    {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY, errno.EINTR}
    | {getattr(errno, "WSAEWOULDBLOCK", errno.EWOULDBLOCK)}
)


class _Deadline:
    """The one bound of a whole connection attempt (open_timeout)."""

    __slots__ = ("_end",)

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left; raise `TimeoutError` once there are none."""
        left = self._end - time.monotonic()
        if left <= 0:
            msg = "timed out while opening the connection"
            raise TimeoutError(msg)
        return left


def open_socket(host: str, port: int, slot: ConnectorSlot, deadline: _Deadline) -> socket.socket:
    """Connect a TCP socket as `socket.create_connection` does, abortably.

    Every address the lookup returns is tried in turn (IPv6 and IPv4, in the
    resolver's order); if none connects, the last error is raised, as
    `socket.create_connection` does. Unlike it, all of them share the one
    ``deadline`` of the attempt, and `ConnectorSlot.cancel` ends a connect
    at once: the connect is non-blocking and the connector waits on the
    socket together with the slot's wakeup.

    The DNS lookup is the exception: ``getaddrinfo()`` cannot be interrupted
    nor bounded, so a stop during a lookup that never answers leaves this
    (daemon) thread in it; it raises `ConnectionAbortedError` as soon as the
    lookup returns, having connected nothing. A deadline that passed during
    the lookup raises `TimeoutError` likewise.

    Returns a connected socket in blocking mode, registered in ``slot``.
    """
    infos = slot.resolve(host, port)
    slot.check()
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        deadline.remaining()
        sock = socket.socket(family, kind, proto)
        try:
            slot.register(sock)
            _connect(sock, address, slot, deadline)
        except OSError as exc:
            sock.close()
            slot.unregister()
            slot.check()  # stopped: do not try the next address
            error = exc  # the next address, if any, once the deadline is checked
            continue
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)  # blocking again
        return sock
    if error is not None:
        raise error
    msg = "getaddrinfo returned an empty list"
    raise OSError(msg)


def _connect(sock: socket.socket, address: Any, slot: ConnectorSlot, deadline: _Deadline) -> None:
    """Connect ``sock`` without blocking on it: the slot's wakeup ends the wait."""
    sock.settimeout(0.0)  # non-blocking
    code = sock.connect_ex(address)
    if code in _CONNECTING:
        with selectors.DefaultSelector() as selector:
            # A failed connect is writable too (on Windows, the selector
            # watches the exception set as well for EVENT_WRITE).
            selector.register(sock, selectors.EVENT_WRITE)
            selector.register(slot.wakeup(), selectors.EVENT_READ)
            while True:
                ready = selector.select(deadline.remaining())
                slot.check()
                if ready:
                    break
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code != 0:
        raise OSError(code, os.strerror(code))


def run_connector(
    owner: ActorRef[Any],
    generation: int,
    url: str,
    uri: WebSocketURI,
    slot: ConnectorSlot,
    *,
    open_timeout: float,
    write_timeout: float | None,
    max_queue: int,
    connect_kwargs: dict[str, Any],
) -> None:
    """Open a connection and tell the owner how it went (connector thread).

    ``open_timeout`` bounds the whole attempt: TCP connect, TLS and WebSocket
    handshakes. The owner's `ConnectorSlot.cancel` ends it at once, except
    during the DNS lookup (see `open_socket`): the thread then exits by
    itself when the lookup returns.
    """
    sink = Sink(owner, generation, max_queue)
    try:
        try:
            deadline = _Deadline(open_timeout)
            sock = open_socket(uri.host, uri.port, slot, deadline)
            try:
                # websockets bounds the TLS and WebSocket handshakes itself
                # (with what is left of the deadline), and sends are bounded
                # by SO_SNDTIMEO below. A cancel from now on shuts the socket
                # down, which fails the handshake under way.
                connection = connect(
                    url,
                    sock=sock,
                    open_timeout=deadline.remaining(),
                    create_connection=connection_factory(sink),
                    **connect_kwargs,
                )
            except BaseException:
                sock.close()  # idempotent; websockets closes it on most errors
                raise
            try:
                if write_timeout is not None:
                    set_write_timeout(connection.socket, write_timeout)
            except Exception:
                # Never leak an opened connection (its socket and threads).
                sink.announced.set()
                connection.abort()
                connection.join_threads()
                raise
            with slot.lock:
                cancelled = slot.cancelled
                if not cancelled:
                    slot.connection = connection
            if cancelled:
                sink.announced.set()
                connection.abort()
                connection.join_threads()
                raise ConnectionAbortedError(_ABORTED)  # noqa: TRY301
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the owner
            tell_owner(owner, OpenFailed(generation, exc))
        else:
            tell_owner(owner, Opened(generation, connection))
    finally:
        slot.release()
        sink.announced.set()
