"""The public loopback WebSocket server for tests, :class:`WsTestServer`.

This module owns what the server does with its connections: the reply
function, the behaviour switches (silence, stalls, refused handshakes, ...),
the records and counters that tests wait on, and the actions on open
connections (pushes, polite and abrupt closes). The threads and sockets
behind it live in ``_plumbing``.
"""

from __future__ import annotations

import http
import itertools
import logging
import threading
import time
from ssl import TLSVersion
from typing import TYPE_CHECKING

from websockets.exceptions import ConnectionClosed

from pykka_ws.testing._common import (
    _LOGGER_NAME,
    Frame,
    ReplyFn,
    _abort_connection,
    _as_frames,
    _check_frame,
    _join_all,
    _preview,
)
from pykka_ws.testing._plumbing import _CLOSE_TIMEOUT, _Run, _ServerPlumbing, _TrackedConnection

if TYPE_CHECKING:
    from ssl import SSLContext

    from websockets.http11 import Request, Response
    from websockets.sync.server import ServerConnection

logger = logging.getLogger(_LOGGER_NAME)


class WsTestServer(_ServerPlumbing):
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
        ssl: TLS configuration; the URL scheme becomes ``wss``. Its
            ``maximum_version`` is capped at TLS 1.2 (see the source: a race
            in websockets' threading server under TLS 1.3). The URL keeps
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
        if ssl is not None and (
            # MAXIMUM_SUPPORTED (the default) is -1: not "greater" than 1.2.
            ssl.maximum_version is TLSVersion.MAXIMUM_SUPPORTED
            or ssl.maximum_version > TLSVersion.TLSv1_2
        ):
            # websockets' threading server waits in select() before reading
            # its TLS socket; under TLS 1.3 the client's first request can
            # come in the same flight as its handshake Finished, be read into
            # OpenSSL's buffer by the handshake, and never wake that select()
            # (seen: a handshake timing out about once in a few thousand).
            # TLS 1.2 ends the handshake on the server's side: no such race.
            ssl.maximum_version = TLSVersion.TLSv1_2
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

    # Life cycle (start, stop) and url come from _ServerPlumbing.

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
