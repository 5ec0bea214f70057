"""Every path that writes frames to a socket, and the lock contract between them.

Two threads write, never at once:

- the writer actor (`write_batch`, on its own thread, blocking), and
- the owner actor (`try_write_now`, on its thread, never blocking: a small
  batch when the writer is idle, with ``MSG_DONTWAIT``).

Lock contract:

- websockets' ``protocol_mutex`` (see `_ws_compat`) is held for every byte
  written, so frames of two batches never interleave and websockets' own
  writes (pongs, pings, the closing handshake) go between whole frames. The
  owner only *tries* it (``acquire(blocking=False)``). If the kernel takes
  part of the owner's bytes, the owner hands the rest to the writer in
  ``batch.held`` *with the mutex still held*; the writer sends the rest first
  and releases it (a `threading.Lock` may be released by another thread).
  So nothing can be written between the two halves of a frame.
- The `ClaimLock` is held while claims are started (one window at a time), so
  the owner's cancel and the writer's start exclude each other.
- A claim turns DONE once the kernel took its frame's last byte; on an error
  the frame being written and the rest of its window stay STARTED (none of
  them arrived whole) and later ones stay PENDING.

Keepalive pings (the owner's, timed by the process-wide scheduler; see
`_health`) are written by the writer too (`send_ping`, websockets' own
``ping()`` under the protocol mutex), in the writer's FIFO with the batches.
While one is handed to the writer the owner writes nothing itself, so a batch
whose rest the owner hands over with the mutex held (``batch.held``) never
waits behind a ping that waits for that mutex. A pong that does not come is
failed by the owner without blocking (`fail_keepalive`).

``stop()`` is the one other place the socket is touched: it shuts a stuck
socket down (`_connection.Connection.abort`) so a blocked writer returns.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import TYPE_CHECKING, Any, cast

import pykka
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.frames import CloseCode
from websockets.protocol import State

from pykka_ws._ws_compat import close_socket, protocol_mutex, set_transport_error

if TYPE_CHECKING:
    import threading

    from pykka_ws._claims import Claim, ClaimLock
    from pykka_ws._connection import Connection
    from pykka_ws._core import Batch
    from pykka_ws._futures import CallbackFuture

__all__ = [
    "WRITE_WINDOW",
    "Held",
    "Ping",
    "PingSent",
    "WriteDone",
    "WriteResult",
    "fail_keepalive",
    "hand_ping_to_writer",
    "hand_to_writer",
    "send_ping",
    "write_batch",
]

_MSG_DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)
_CAN_TRY_NOW = _MSG_DONTWAIT != 0

WRITE_WINDOW = 64 * 1024
"""Bytes of frames encoded and handed to one ``send()`` call, about."""


class Held:
    """Encoded bytes the owner could not send without blocking."""

    __slots__ = ("bytes_out", "data", "ends", "frames_out", "next_index", "window")

    def __init__(
        self,
        data: bytes,
        window: list[Claim],
        ends: list[int],
        next_index: int,
        frames_out: int,
        bytes_out: int,
    ) -> None:
        self.data = data
        self.window = window
        self.ends = ends
        self.next_index = next_index
        self.frames_out = frames_out
        self.bytes_out = bytes_out


class WriteResult:
    """What a write did with a batch: frames and bytes written, and the error."""

    __slots__ = ("bytes_out", "error", "frames_out")

    def __init__(self, frames_out: int, bytes_out: int, error: BaseException | None) -> None:
        self.frames_out = frames_out
        self.bytes_out = bytes_out
        self.error = error


class WriteDone:
    """The writer finished a batch (told to the owner by the writer's reply future)."""

    __slots__ = ("batch", "result")

    def __init__(self, batch: Batch, result: WriteResult) -> None:
        self.batch = batch
        self.result = result


def hand_to_writer(writer: pykka.ActorRef[Any], batch: Batch, owner: pykka.ActorRef[Any]) -> None:
    """Ask the writer to write ``batch``; its reply comes back as `WriteDone` (owner)."""
    future = cast("CallbackFuture", writer.ask(batch, block=False))

    def done(result: Any, error: BaseException | None) -> None:
        if error is not None:
            result = WriteResult(0, 0, error)
        try:
            owner.tell(WriteDone(batch, result))
        except pykka.ActorDeadError:
            pass

    future.add_done_callback(done)


def write_batch(batch: Batch, claims: ClaimLock) -> WriteResult:
    """Write the frames of a batch in order, many per system call (writer thread).

    Frames are encoded and sent in windows of about `WRITE_WINDOW` bytes. A
    claim turns STARTED when its frame is encoded (from then on it must be
    sent: the compression context has moved on) and DONE once every byte of
    it was accepted by the kernel. A claim the owner cancelled before its
    window is skipped. On an error the connection is failed, as websockets
    does.

    If the owner already wrote part of the batch (``batch.held``), the
    protocol mutex is held on our behalf: the rest is sent first, then the
    mutex is released.
    """
    connection: Connection = batch.connection
    mutex = protocol_mutex(connection)
    held: Held | None = batch.held
    frames_out = 0
    bytes_out = 0
    error: BaseException | None = None
    index = 0
    if held is None:
        mutex.acquire()
    try:
        if held is not None:
            frames_out, bytes_out, index = held.frames_out, held.bytes_out, held.next_index
            done, sent, error = _send_window(connection, held.data, held.window, held.ends)
            frames_out += done
            bytes_out += sent
        elif connection.protocol.state is not State.OPEN:
            error = ConnectionClosedError(None, None)
        claim_list = batch.claims
        while index < len(claim_list) and error is None:
            try:
                index, window, ends, data = _encode_window(connection, claim_list, index, claims)
            except Exception as exc:  # noqa: BLE001 - the stream is unusable now
                set_transport_error(connection, exc)
                error = exc
                break
            if not window:
                break
            done, sent, error = _send_window(connection, data, window, ends)
            frames_out += done
            bytes_out += sent
    finally:
        mutex.release()
    if error is not None and not isinstance(error, ConnectionClosed):
        close_socket(connection)  # as websockets does after a failed write
    return WriteResult(frames_out, bytes_out, error)


def try_write_now(connection: Connection, batch: Batch, claims: ClaimLock) -> WriteResult | None:
    """Write a batch without blocking, from the owner's thread.

    Returns the result if the whole batch was written (or failed), or None
    if the writer must take over: websockets' mutex was busy (the batch is
    untouched), or the kernel took only part of the bytes (the rest is in
    ``batch.held`` and the mutex stays held for the writer). TLS
    connections and platforms without ``MSG_DONTWAIT`` always return None.
    """
    if not _CAN_TRY_NOW or isinstance(connection.socket, ssl.SSLSocket):
        return None
    mutex = protocol_mutex(connection)
    if not mutex.acquire(blocking=False):
        return None
    result: WriteResult | None = None
    handed_over = False
    try:
        if connection.protocol.state is State.OPEN:
            result, handed_over = _write_now(connection, batch, claims)
    finally:
        if not handed_over:
            mutex.release()
    if result is not None and result.error is not None:
        close_socket(connection)  # as websockets does after a failed write
    return result


def _write_now(
    connection: Connection, batch: Batch, claims: ClaimLock
) -> tuple[WriteResult | None, bool]:
    """`try_write_now` under the mutex: (result, whether the mutex is handed over).

    Requires holding websockets' protocol mutex.
    """
    assert protocol_mutex(connection).locked()  # noqa: S101 - as websockets does
    claim_list = batch.claims
    try:
        index, window, ends, data = _encode_window(connection, claim_list, 0, claims)
    except Exception as exc:  # noqa: BLE001 - the stream is unusable now
        set_transport_error(connection, exc)
        return WriteResult(0, 0, exc), False
    try:
        sent = connection.socket.send(data, _MSG_DONTWAIT)
    except BlockingIOError:
        sent = 0
    except Exception as exc:  # noqa: BLE001 - reported, and the connection failed
        set_transport_error(connection, exc)
        return WriteResult(0, 0, exc), False
    done = 0
    while done < len(window) and ends[done] <= sent:
        window[done].finish()
        done += 1
    if sent == len(data) and index == len(claim_list):
        return WriteResult(done, sent, None), False
    # Partly written: the writer sends the rest before anything else can
    # be written, so the mutex stays held until it has.
    rest = [end - sent for end in ends[done:]]
    batch.held = Held(data[sent:], window[done:], rest, index, done, sent)
    return None, True


def _encode_window(
    connection: Connection, claim_list: list[Claim], index: int, claims: ClaimLock
) -> tuple[int, list[Claim], list[int], bytes]:
    """Start and encode claims from ``index`` until the window is full.

    Requires holding websockets' protocol mutex.
    """
    assert protocol_mutex(connection).locked()  # noqa: S101 - as websockets does
    protocol = connection.protocol
    window: list[Claim] = []
    ends: list[int] = []
    chunks: list[bytes] = []
    buffered = 0
    with claims.lock:
        while index < len(claim_list) and buffered < WRITE_WINDOW:
            claim = claim_list[index]
            index += 1
            if not claim.start():
                continue  # cancelled by the owner
            frame = claim.frame
            if isinstance(frame, str):
                protocol.send_text(frame.encode())
            else:
                protocol.send_binary(frame)
            for data in protocol.data_to_send():
                chunks.append(data)
                buffered += len(data)
            window.append(claim)
            ends.append(buffered)
    return index, window, ends, b"".join(chunks)


def _send_window(
    connection: Connection, data: bytes, window: list[Claim], ends: list[int]
) -> tuple[int, int, BaseException | None]:
    """Send ``data``; mark each claim DONE once its last byte is taken.

    Returns the claims done, the bytes sent and the error, if any. Requires
    holding websockets' protocol mutex.
    """
    sock = connection.socket
    view = memoryview(data)
    sent = 0
    done = 0
    try:
        while sent < len(data):
            sent += sock.send(view[sent:])
            while done < len(window) and ends[done] <= sent:
                window[done].finish()
                done += 1
    except (BlockingIOError, ssl.SSLWantWriteError) as exc:
        # SO_SNDTIMEO: no byte moved for write_timeout seconds.
        error: BaseException = TimeoutError("write timed out: the peer stopped reading")
        error.__cause__ = exc
    except Exception as exc:  # noqa: BLE001 - reported, and the connection failed
        error = exc
    else:
        return done, sent, None
    set_transport_error(connection, error)
    return done, sent, error


class Ping:
    """Send a keepalive ping on ``connection`` (asked of the writer)."""

    __slots__ = ("connection",)

    def __init__(self, connection: Connection) -> None:
        self.connection = connection


class PingSent:
    """The writer sent a keepalive ping of ``generation`` (told to the owner).

    ``pong`` is set when the pong comes (or the connection closes); None if
    the connection was no longer open. ``error`` if the write failed.
    """

    __slots__ = ("error", "generation", "pong", "sent_at")

    def __init__(
        self,
        generation: int,
        pong: threading.Event | None,
        sent_at: float,
        error: BaseException | None,
    ) -> None:
        self.generation = generation
        self.pong = pong
        self.sent_at = sent_at
        self.error = error


def hand_ping_to_writer(
    writer: pykka.ActorRef[Any], connection: Connection, generation: int, owner: pykka.ActorRef[Any]
) -> None:
    """Ask the writer to send a keepalive ping; `PingSent` comes back (owner)."""
    future = cast("CallbackFuture", writer.ask(Ping(connection), block=False))

    def done(result: Any, error: BaseException | None) -> None:
        pong, sent_at = result if error is None else (None, time.monotonic())
        try:
            owner.tell(PingSent(generation, pong, sent_at, error))
        except pykka.ActorDeadError:
            pass

    future.add_done_callback(done)


def send_ping(connection: Connection) -> tuple[threading.Event | None, float]:
    """Send a keepalive ping, blocking like any write (writer thread).

    websockets' own ``ping()``: under the protocol mutex; a failed write
    closes the connection (its receiving thread then tells the owner).
    Returns the pong event (None if the connection is not open) and when.
    """
    sent_at = time.monotonic()
    if connection.protocol.state is not State.OPEN:
        return None, sent_at
    try:
        return connection.ping(ack_on_close=True), sent_at
    except ConnectionClosed:
        return None, sent_at


def fail_keepalive(connection: Connection) -> bool:
    """Fail a connection whose keepalive pong did not come (owner, never blocking).

    As websockets' keepalive does: a close frame with code 1011 ("keepalive
    ping timeout"), written if the kernel takes it at once, then the socket
    is shut down; the receiving thread ends and tells the owner `Closed`,
    whose cause says so. Returns False if a write holds websockets' mutex
    (the caller then drops the connection with a cause of its own).
    """
    mutex = protocol_mutex(connection)
    if not mutex.acquire(blocking=False):
        return False
    try:
        protocol = connection.protocol
        if protocol.state is State.OPEN:
            protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            data = b"".join(protocol.data_to_send())
            if _CAN_TRY_NOW and not isinstance(connection.socket, ssl.SSLSocket):
                try:
                    connection.socket.send(data, _MSG_DONTWAIT)
                except OSError:
                    pass  # the connection is being failed anyway
    finally:
        mutex.release()
    connection.abort()
    return True
