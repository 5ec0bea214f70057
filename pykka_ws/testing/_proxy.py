"""Socket-level fault injection: :class:`FaultProxy`, a TCP proxy for tests.

This module owns the proxy (one background thread, non-blocking sockets, a
selector) and ``_Pipe``, the state of one proxied TCP connection.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Self

from pykka_ws.testing._common import _LOGGER_NAME, _THREAD_PREFIX, _format_url, _Listening

logger = logging.getLogger(_LOGGER_NAME)

# Per-direction buffer of FaultProxy: it stops reading from one side when this
# many bytes are waiting to be written to the other side.
_PROXY_BUFFER = 256 * 1024
_PROXY_RECV_SIZE = 64 * 1024


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
