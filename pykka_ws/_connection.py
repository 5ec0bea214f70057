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

import logging
import socket
import threading
from typing import TYPE_CHECKING, Any

from pykka import ActorDeadError
from websockets.frames import CloseCode, Opcode
from websockets.sync.client import ClientConnection, connect

if TYPE_CHECKING:
    from pykka import ActorRef
    from websockets.protocol import Event
    from websockets.uri import WebSocketURI

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


class Inbound:
    """A complete inbound message (told by the receiving thread)."""

    # One per inbound frame: slots make it cheaper to create.
    __slots__ = ("frame", "generation", "size")

    def __init__(self, generation: int, frame: str | bytes, size: int) -> None:
        self.generation = generation
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


class _Sink:
    """Where a connection's events go: the owner, tagged with a generation.

    Inbound messages wait until the connector has told the owner `Opened`,
    so the owner never sees a frame of a connection it does not know yet.
    (They can only arrive after a successful handshake, and the connector
    announces right after it.) `Closed` never waits: websockets joins the
    receiving thread when a handshake fails, so waiting there would
    deadlock; the owner handles a `Closed` that overtakes `Opened`.
    """

    __slots__ = ("announced", "generation", "owner")

    def __init__(self, owner: ActorRef[Any], generation: int) -> None:
        self.owner = owner
        self.generation = generation
        self.announced = threading.Event()

    def tell(self, message: object, *, wait: bool = True) -> None:
        if wait and not self.announced.is_set():
            self.announced.wait()
        try:
            self.owner.tell(message)
        except ActorDeadError:
            pass


class Connection(ClientConnection):
    """websockets' client connection, delivering messages to the owner actor."""

    def __init__(self, *args: Any, sink: _Sink, **kwargs: Any) -> None:
        self._sink = sink
        self._fragments: list[bytes] = []
        self._fragments_text = False
        super().__init__(*args, **kwargs)
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
        self._sink.tell(Inbound(self._sink.generation, frame, len(data)))

    def recv_events(self) -> None:
        """Run websockets' receive loop; tell the owner when it ends."""
        try:
            super().recv_events()
        finally:
            cause: BaseException | None
            try:
                cause = self.close_exc
            except Exception as exc:  # noqa: BLE001 - the cause is only informative
                cause = exc
            self._sink.tell(Closed(self._sink.generation, cause), wait=False)

    def abort(self) -> None:
        """Shut the socket down now, unblocking any thread stuck on it."""
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


class ConnectorSlot:
    """Hands a connection attempt's socket and result over to ``stop()``.

    The owner cancels the slot when it stops; the connector checks it under
    the lock before publishing a connection, so a connection that finishes
    opening while the owner stops is closed, never leaked.
    """

    __slots__ = ("cancelled", "connection", "lock", "sock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cancelled = False
        self.sock: socket.socket | None = None
        self.connection: Connection | None = None

    def cancel(self) -> Connection | None:
        """Abort a handshake under way; return the connection if one was made.

        A connection returned here is the owner's to close: it may or may
        not have been adopted already.
        """
        with self.lock:
            self.cancelled = True
            sock, connection = self.sock, self.connection
        if connection is None and sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return connection


def run_connector(
    owner: ActorRef[Any],
    generation: int,
    url: str,
    uri: WebSocketURI,
    slot: ConnectorSlot,
    *,
    open_timeout: float,
    write_timeout: float | None,
    connect_kwargs: dict[str, Any],
) -> None:
    """Open a connection and tell the owner how it went (connector thread)."""
    sink = _Sink(owner, generation)
    try:
        try:
            sock = socket.create_connection((uri.host, uri.port), timeout=open_timeout)
            with slot.lock:
                slot.sock = sock
                if slot.cancelled:
                    sock.close()
                    msg = "the actor stopped while connecting"
                    raise ConnectionAbortedError(msg)  # noqa: TRY301
            connection = connect(
                url,
                sock=sock,
                open_timeout=open_timeout,
                create_connection=_factory(sink),
                **connect_kwargs,
            )
            # Bound every sendall: a peer that stops reading cannot block
            # the writer for longer than write_timeout. Reads are not
            # affected: websockets only calls recv() when select() says so.
            connection.socket.settimeout(write_timeout)
            with slot.lock:
                cancelled = slot.cancelled
                if not cancelled:
                    slot.connection = connection
            if cancelled:
                sink.announced.set()
                connection.abort()
                connection.join_threads()
                msg = "the actor stopped while connecting"
                raise ConnectionAbortedError(msg)  # noqa: TRY301
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the owner
            _tell(owner, OpenFailed(generation, exc))
        else:
            _tell(owner, Opened(generation, connection))
    finally:
        sink.announced.set()


def _factory(sink: _Sink) -> Any:
    def create(*args: Any, **kwargs: Any) -> Connection:
        return Connection(*args, sink=sink, **kwargs)

    return create


def _tell(owner: ActorRef[Any], message: object) -> None:
    try:
        owner.tell(message)
    except ActorDeadError:
        pass
