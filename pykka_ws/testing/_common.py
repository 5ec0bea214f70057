"""What the helpers of :mod:`pykka_ws.testing` share.

This module owns the name of the ``pykka_ws.testing`` logger (every module
logs there), the public :data:`Frame` and :data:`ReplyFn` types, the thread
name prefix, and the helpers used by more than one of :class:`WsTestServer`,
:class:`ChaosServer` and :class:`FaultProxy`: URL formatting, frame checks
and previews, TCP resets (of a raw socket or of a websockets connection),
joining threads against a deadline, and ``_Listening``, the context manager
on a port that :class:`WsTestServer` and :class:`FaultProxy` derive from.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Self, TypeAlias

if TYPE_CHECKING:
    from types import TracebackType

    from websockets.sync.server import ServerConnection

# Every module of the package logs to this logger (named after the package).
_LOGGER_NAME = "pykka_ws.testing"

Frame: TypeAlias = str | bytes
"""A WebSocket message: :class:`str` for a text frame, :class:`bytes` for binary."""

ReplyFn: TypeAlias = Callable[[Frame], Frame | Iterable[Frame] | None]
"""Decides what a :class:`WsTestServer` sends back for one received frame.

It returns a single frame, an iterable of frames (sent in order), or
:obj:`None` to send nothing.
"""

_THREAD_PREFIX = "pykka-ws-testing-"

# How long an abrupt close waits for a connection's protocol lock before it
# assumes that a writer is blocked on a full socket and wakes it up forcibly.
_MUTEX_TIMEOUT = 1.0

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
