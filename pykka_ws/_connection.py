"""The socket side: the connector thread and the websockets connection subclass.

Nothing here decides anything; it only moves events to the owner actor:

- The connector thread (``pykka-ws-connect-N``) opens the TCP socket, runs
  the TLS and WebSocket handshakes, and tells the owner `Opened` or
  `OpenFailed`.
- `Connection` is websockets' own `ClientConnection` (installed through
  ``connect(create_connection=...)``). Its receiving thread, renamed
  ``pykka-ws-recv-N``, hands each complete inbound message straight to the
  owner as `Inbound`, and `Closed` when the connection ends. There is no
  reader thread of our own and no second queue.

Every event carries the connection's generation so the owner can ignore
events from a connection it has already given up on.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import ssl
import struct
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from pykka import ActorDeadError
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.frames import CloseCode, Opcode
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect

from pykka_ws._writer import DONE, PENDING, STARTED, Held, WriteResult

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pykka import ActorRef
    from websockets.client import ClientProtocol
    from websockets.protocol import Event
    from websockets.uri import WebSocketURI

    from pykka_ws._writer import Claim, WriteBatch

__all__ = [
    "Closed",
    "Connection",
    "ConnectorSlot",
    "Inbound",
    "OpenFailed",
    "Opened",
    "run_connector",
]

logger = logging.getLogger("pykka_ws")

_MSG_DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)
_CAN_TRY_NOW = _MSG_DONTWAIT != 0

WRITE_WINDOW = 64 * 1024
"""Bytes of frames encoded and handed to one ``send()`` call, about."""


class Inbound:
    """A complete inbound message (told by the receiving thread).

    The owner calls ``sink.handled()`` once it has handled it.
    """

    # One per inbound frame: slots make it cheaper to create.
    __slots__ = ("frame", "generation", "sink", "size")

    def __init__(self, sink: Sink, frame: str | bytes, size: int) -> None:
        self.sink = sink
        self.generation = sink.generation
        self.frame = frame
        self.size = size


class Closed:
    """The connection of ``generation`` ended (told by the receiving thread)."""

    __slots__ = ("cause", "generation")

    def __init__(self, generation: int, cause: BaseException | None) -> None:
        self.generation = generation
        self.cause = cause


class Opened:
    """The handshake of ``generation`` succeeded (told by the connector)."""

    __slots__ = ("connection", "generation")

    def __init__(self, generation: int, connection: Connection) -> None:
        self.generation = generation
        self.connection = connection


class OpenFailed:
    """The connection attempt of ``generation`` failed (told by the connector)."""

    __slots__ = ("error", "generation")

    def __init__(self, generation: int, error: BaseException) -> None:
        self.generation = generation
        self.error = error


class Sink:
    """Where a connection's events go: the owner, tagged with a generation.

    Inbound messages wait until the connector has told the owner `Opened`,
    so the owner never sees a frame of a connection it does not know yet.
    (They can only arrive after a successful handshake, and the connector
    announces right after it.) `Closed` never waits: websockets joins the
    receiving thread when a handshake fails, so waiting there would
    deadlock; the owner handles a `Closed` that overtakes `Opened`.

    Flow control: at most ``max_queue`` inbound messages are told and not
    yet handled; then the receiving thread stops reading (TCP backpressure
    instead of an unbounded inbox). ``told`` is written only by the
    receiving thread and ``done`` only by the owner, so the fast path takes
    no lock.
    """

    __slots__ = (
        "announced",
        "done",
        "dropped",
        "generation",
        "max_queue",
        "owner",
        "told",
        "waiting",
        "wakeup",
    )

    def __init__(self, owner: ActorRef[Any], generation: int, max_queue: int) -> None:
        self.owner = owner
        self.generation = generation
        self.announced = threading.Event()
        self.max_queue = max_queue
        self.told = 0
        self.done = 0
        self.waiting = False
        self.wakeup = threading.Event()
        self.dropped = False

    def tell(self, message: object, *, wait: bool = True) -> None:
        if wait and not self.announced.is_set():
            self.announced.wait()
        try:
            self.owner.tell(message)
        except ActorDeadError:
            pass

    def take_room(self) -> bool:
        """Wait for room in the owner's inbox; False once the owner let go."""
        if self.told - self.done >= self.max_queue:
            wakeup = self.wakeup
            while True:
                self.waiting = True
                wakeup.clear()
                if self.told - self.done < self.max_queue:
                    break
                if self.dropped:
                    self.waiting = False
                    return False
                wakeup.wait(0.05)  # bounded: a missed wakeup costs at most this
            self.waiting = False
        self.told += 1
        return True

    def handled(self) -> None:
        """Count one inbound message handled (owner thread)."""
        self.done += 1
        if self.waiting:
            self.wakeup.set()


class Connection(ClientConnection):
    """websockets' client connection, delivering messages to the owner actor."""

    def __init__(
        self, sock: socket.socket, protocol: ClientProtocol, *, sink: Sink, **kwargs: Any
    ) -> None:
        self._sink = sink
        self._fragments: list[bytes] = []
        self._fragments_text = False
        _discard_data_after_close(protocol)  # before the receiving thread starts
        super().__init__(sock, protocol, **kwargs)
        self.recv_events_thread.name = f"pykka-ws-recv-{sink.generation}"

    def maybe_raise_legacy_warning(self) -> None:
        """Never warn: the connection is not used as a context manager on purpose."""

    def start_keepalive(self) -> None:
        """Start websockets' keepalive thread and give it a name."""
        super().start_keepalive()
        if self.keepalive_thread is not None:
            self.keepalive_thread.name = f"pykka-ws-keepalive-{self._sink.generation}"

    def process_event(self, event: Event) -> None:
        """Hand complete messages to the owner; leave the rest to websockets."""
        if self.response is None:  # the handshake response
            super().process_event(event)
            return
        opcode = event.opcode  # type: ignore[union-attr]
        data = bytes(event.data)  # type: ignore[union-attr]  # no copy for bytes
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not event.fin:  # type: ignore[union-attr]
                self._fragments = [data]
                self._fragments_text = opcode is Opcode.TEXT
                return
            self._deliver(data, text=opcode is Opcode.TEXT)
        elif opcode is Opcode.CONT:
            self._fragments.append(data)
            if event.fin:  # type: ignore[union-attr]
                data = b"".join(self._fragments)
                self._fragments = []
                self._deliver(data, text=self._fragments_text)
        elif opcode is Opcode.PONG:
            self.acknowledge_pings(data)

    def _deliver(self, data: bytes, *, text: bool) -> None:
        frame: str | bytes
        if text:
            try:
                frame = data.decode()
            except UnicodeDecodeError:
                # Same as websockets: invalid UTF-8 in a text frame fails the
                # connection with 1007.
                with self.protocol_mutex:
                    self.protocol.fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text frame")
                    try:
                        self.send_data()
                    except OSError:
                        pass
                return
        else:
            frame = data
        sink = self._sink
        if sink.take_room():
            sink.tell(Inbound(sink, frame, len(data)))

    def recv_events(self) -> None:
        """Run websockets' receive loop; tell the owner when it ends."""
        try:
            super().recv_events()
        finally:
            cause: BaseException | None
            try:
                cause = self.protocol.close_exc
                # websockets >= 17 names the transport error connection_exc,
                # older versions recv_exc.
                transport_error = getattr(self, "connection_exc", None) or getattr(
                    self, "recv_exc", None
                )
                if transport_error is not None and transport_error is not cause:
                    cause.__cause__ = transport_error
            except Exception as exc:  # noqa: BLE001 - the cause is only informative
                cause = exc
            self._sink.tell(Closed(self._sink.generation, cause), wait=False)

    def write_claims(self, batch: WriteBatch, claim_lock: threading.Lock) -> WriteResult:
        """Write the frames of a batch in order, many per system call (writer).

        Frames are encoded and sent in windows of about `WRITE_WINDOW`
        bytes. A claim turns STARTED when its frame is encoded (from then on
        it must be sent: the compression context has moved on) and DONE once
        every byte of it was accepted by the kernel. A claim the owner
        cancelled before its window is skipped. On an error the frame being
        written and the rest of its window stay STARTED (the owner reports
        them NotDelivered: none of them arrived whole) and later ones stay
        PENDING; the connection is failed, as websockets does.

        If the owner already wrote part of the batch (``batch.held``), the
        protocol lock is held on our behalf: the rest is sent first, then
        the lock is released.
        """
        claims = batch.claims
        held = batch.held
        frames_out = 0
        bytes_out = 0
        error: BaseException | None = None
        index = 0
        if held is None:
            self.protocol_mutex.acquire()
        try:
            if held is not None:
                frames_out, bytes_out, index = held.frames_out, held.bytes_out, held.next_index
                done, sent, error = self._send_window(held.data, held.window, held.ends)
                frames_out += done
                bytes_out += sent
            elif self.protocol.state is not State.OPEN:
                error = ConnectionClosedError(None, None)
            while index < len(claims) and error is None:
                try:
                    index, window, ends, data = self._encode_window(claims, index, claim_lock)
                except Exception as exc:  # noqa: BLE001 - the stream is unusable now
                    _set_transport_error(self, exc)
                    error = exc
                    break
                if not window:
                    break
                done, sent, error = self._send_window(data, window, ends)
                frames_out += done
                bytes_out += sent
        finally:
            self.protocol_mutex.release()
        if error is not None and not isinstance(error, ConnectionClosed):
            self.close_socket()  # as websockets does after a failed write
        return WriteResult(frames_out, bytes_out, error)

    def try_write_now(self, batch: WriteBatch, claim_lock: threading.Lock) -> WriteResult | None:
        """Write a batch without blocking, from the owner's thread.

        Returns the result if the whole batch was written (or failed), or
        None if the writer must take over: websockets' lock was busy (the
        batch is untouched), or the kernel took only part of the bytes (the
        rest is in ``batch.held`` and the lock stays held for the writer).
        TLS connections and platforms without ``MSG_DONTWAIT`` always
        return None.
        """
        if not _CAN_TRY_NOW or isinstance(self.socket, ssl.SSLSocket):
            return None
        if not self.protocol_mutex.acquire(blocking=False):
            return None
        result: WriteResult | None = None
        handed_over = False
        try:
            if self.protocol.state is State.OPEN:
                result, handed_over = self._write_now(batch, claim_lock)
        finally:
            if not handed_over:
                self.protocol_mutex.release()
        if result is not None and result.error is not None:
            self.close_socket()  # as websockets does after a failed write
        return result

    def _write_now(
        self, batch: WriteBatch, claim_lock: threading.Lock
    ) -> tuple[WriteResult | None, bool]:
        """`try_write_now` under the lock: (result, whether the lock is handed over)."""
        claims = batch.claims
        try:
            index, window, ends, data = self._encode_window(claims, 0, claim_lock)
        except Exception as exc:  # noqa: BLE001 - the stream is unusable now
            _set_transport_error(self, exc)
            return WriteResult(0, 0, exc), False
        try:
            sent = self.socket.send(data, _MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except Exception as exc:  # noqa: BLE001 - reported, and the connection failed
            _set_transport_error(self, exc)
            return WriteResult(0, 0, exc), False
        done = 0
        while done < len(window) and ends[done] <= sent:
            window[done].state = DONE
            done += 1
        if sent == len(data) and index == len(claims):
            return WriteResult(done, sent, None), False
        # Partly written: the writer sends the rest before anything else can
        # be written, so the lock stays held until it has.
        rest = [end - sent for end in ends[done:]]
        batch.held = Held(data[sent:], window[done:], rest, index, done, sent)
        return None, True

    def _encode_window(
        self, claims: list[Claim], index: int, claim_lock: threading.Lock
    ) -> tuple[int, list[Claim], list[int], bytes]:
        """Start and encode claims from ``index`` until the window is full."""
        protocol = self.protocol
        window: list[Claim] = []
        ends: list[int] = []
        chunks: list[bytes] = []
        buffered = 0
        with claim_lock:
            while index < len(claims) and buffered < WRITE_WINDOW:
                claim = claims[index]
                index += 1
                if claim.state != PENDING:
                    continue  # cancelled by the owner
                claim.state = STARTED
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
        self, data: bytes, window: list[Claim], ends: list[int]
    ) -> tuple[int, int, BaseException | None]:
        """Send ``data``; mark each claim DONE once its last byte is taken.

        Returns the claims done, the bytes sent and the error, if any.
        """
        sock = self.socket
        view = memoryview(data)
        sent = 0
        done = 0
        try:
            while sent < len(data):
                sent += sock.send(view[sent:])
                while done < len(window) and ends[done] <= sent:
                    window[done].state = DONE
                    done += 1
        except (BlockingIOError, ssl.SSLWantWriteError) as exc:
            # SO_SNDTIMEO: no byte moved for write_timeout seconds.
            error: BaseException = TimeoutError("write timed out: the peer stopped reading")
            error.__cause__ = exc
        except Exception as exc:  # noqa: BLE001 - reported, and the connection failed
            error = exc
        else:
            return done, sent, None
        _set_transport_error(self, error)
        return done, sent, error

    def drop(self) -> None:
        """Stop delivering to the owner (it is stopping): never block on it."""
        self._sink.dropped = True

    def abort(self) -> None:
        """Shut the socket down now, unblocking any thread stuck on it."""
        self.drop()
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_socket()

    def join_threads(self) -> None:
        """Wait for websockets' receiving and keepalive threads to end."""
        for thread in (self.recv_events_thread, self.keepalive_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join()


def _discard_data_after_close(protocol: ClientProtocol) -> None:
    """Let ``protocol`` drop data that arrives once its connection is closed.

    websockets' receiving thread reads from the socket, then takes the
    protocol lock to feed what it read. If another thread closes the
    connection in between (``close_socket()``: our `Connection.abort` in
    ``stop()``, websockets' own close timeout, a failed write), the
    protocol's stream has ended and ``receive_data()`` raises `EOFError`,
    which websockets logs as an ERROR "unexpected internal error" with a
    traceback, for a normal stop. The connection is closed by then: the data
    is moot, and dropping it is what websockets does with anything that
    arrives after close. The receiving thread then ends as usual.
    """
    receive_data = protocol.receive_data

    def receive_data_unless_closed(data: bytes | bytearray) -> None:
        try:
            receive_data(data)
        except EOFError:
            if protocol.state is not State.CLOSED:  # pragma: no cover - not this race
                raise

    protocol.receive_data = receive_data_unless_closed  # type: ignore[method-assign]


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
                    create_connection=_factory(sink),
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
            _tell(owner, OpenFailed(generation, exc))
        else:
            _tell(owner, Opened(generation, connection))
    finally:
        slot.release()
        sink.announced.set()


class RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets' logger, with the values of secret headers replaced.

    websockets logs every handshake header at DEBUG level; tokens passed in
    ``additional_headers`` must not end up in logs.
    """

    def __init__(self, logger: logging.Logger, secret_headers: Iterable[str]) -> None:
        super().__init__(logger, {})
        self.secret_headers = frozenset(h.lower() for h in secret_headers) | _ALWAYS_SECRET

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        """Log, redacting ``"> name: value"`` lines of secret headers.

        websockets' keepalive thread logs an ERROR with a traceback when the
        connection closes under it (a dead peer, the very thing keepalive is
        for); the actor reports that disconnect itself, so it is DEBUG here.
        """
        if len(args) == 2 and isinstance(msg, str) and msg.endswith("%s: %s"):  # noqa: PLR2004
            name = str(args[0])
            if name.lower() in self.secret_headers:
                args = (name, "<redacted>")
        elif msg == "keepalive ping failed" and isinstance(sys.exc_info()[1], ConnectionClosed):
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)


_ALWAYS_SECRET = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


def _set_transport_error(connection: ClientConnection, exc: BaseException) -> None:
    # websockets >= 17: set_connection_exc(); 15 and 16: set_recv_exc().
    setter = getattr(connection, "set_connection_exc", None) or getattr(
        connection, "set_recv_exc", None
    )
    if setter is not None:
        setter(exc)


def _factory(sink: Sink) -> Any:
    def create(*args: Any, **kwargs: Any) -> Connection:
        return Connection(*args, sink=sink, **kwargs)

    return create


def _tell(owner: ActorRef[Any], message: object) -> None:
    try:
        owner.tell(message)
    except ActorDeadError:
        pass
