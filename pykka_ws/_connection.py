"""The websockets connection subclass and the events it tells the owner actor.

Nothing here decides anything; it only moves events to the owner:

- `Connection` is websockets' own `ClientConnection` (installed through
  ``connect(create_connection=...)`` by `_connector`). Its receiving thread,
  renamed ``pykka-ws-recv-N``, hands each complete inbound message straight
  to the owner as `Inbound`, a keepalive `Pong`, and `Closed` when the
  connection ends. There is no reader thread of our own. Writes are in
  `_wire`; the websockets internals used are listed in `_ws_compat`.
- `Sink` is where a connection's events go, in order, with the inbound flow
  control. They are batched: the receiving thread appends each event to the
  sink's queue and tells the owner one `InboundReady` only when none is on
  its way; the owner takes up to a slice of events per `InboundReady`. So a
  burst of frames costs one pykka message, not one per frame.

Every event carries the connection's generation so the owner can ignore
events from a connection it has already given up on.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from pykka import ActorDeadError
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode, Opcode
from websockets.protocol import State
from websockets.sync.client import ClientConnection

from pykka_ws._ws_compat import close_socket, protocol_mutex, transport_error

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pykka import ActorRef
    from websockets.client import ClientProtocol
    from websockets.protocol import Event, Protocol

__all__ = [
    "Closed",
    "Connection",
    "Inbound",
    "InboundReady",
    "OpenFailed",
    "Opened",
    "Pong",
    "RedactingLogger",
    "Sink",
    "discard_data_after_close",
]

logger = logging.getLogger("pykka_ws")


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


class InboundReady:
    """Events wait in ``sink`` (told by the receiving thread; see `Sink.push`)."""

    __slots__ = ("sink",)

    def __init__(self, sink: Sink) -> None:
        self.sink = sink


class Closed:
    """The connection of ``generation`` ended (told by the receiving thread)."""

    __slots__ = ("cause", "generation")

    def __init__(self, generation: int, cause: BaseException | None) -> None:
        self.generation = generation
        self.cause = cause


class Pong:
    """A keepalive ping of ``generation`` was answered after ``latency`` seconds."""

    __slots__ = ("generation", "latency")

    def __init__(self, generation: int, latency: float) -> None:
        self.generation = generation
        self.latency = latency


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

    Batching: events go to ``events`` in order (`push`, receiving thread);
    ``scheduled`` says an `InboundReady` is on its way to the owner or being
    handled, so no other is told. The owner `take`s a slice, handles it, and
    `finish` says whether more came meanwhile (then it tells itself the
    `InboundReady` again, behind whatever else waits in its inbox). Both
    sides take ``lock`` for a few instructions only.
    """

    __slots__ = (
        "announced",
        "done",
        "dropped",
        "events",
        "generation",
        "lock",
        "max_queue",
        "owner",
        "ready",
        "scheduled",
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
        self.lock = threading.Lock()
        self.events: deque[object] = deque()
        self.scheduled = False
        self.ready = InboundReady(self)

    def push(self, event: object) -> None:
        """Queue an event for the owner; tell it `InboundReady` if none is on its way."""
        with self.lock:
            self.events.append(event)
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.owner.tell(self.ready)
        except ActorDeadError:
            pass

    def take(self, limit: int) -> list[object]:
        """The next events, at most ``limit`` (owner thread)."""
        with self.lock:
            events = self.events
            if len(events) <= limit:
                taken = list(events)
                events.clear()
                return taken
            return [events.popleft() for _ in range(limit)]

    def finish(self) -> bool:
        """After a `take`: True if events wait (``InboundReady`` is to be told again)."""
        with self.lock:
            if self.events:
                return True
            self.scheduled = False
            return False

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

    def handled(self, count: int = 1) -> None:
        """Count ``count`` inbound messages handled (owner thread)."""
        self.done += count
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
        discard_data_after_close(protocol)  # before the receiving thread starts
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
            solicited = data in self.pending_pings  # read without the lock: a hint
            self.acknowledge_pings(data)
            if solicited:  # a keepalive round trip: a sample
                sink = self._sink
                sink.push(Pong(sink.generation, self.latency))

    def _deliver(self, data: bytes, *, text: bool) -> None:
        frame: str | bytes
        if text:
            try:
                frame = data.decode()
            except UnicodeDecodeError:
                # Same as websockets: invalid UTF-8 in a text frame fails the
                # connection with 1007.
                with protocol_mutex(self):
                    self.protocol.fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text frame")
                    try:
                        self.send_data()
                    except OSError:
                        pass
                return
        else:
            frame = data
        sink = self._sink
        if not sink.announced.is_set():
            sink.announced.wait()
        if sink.take_room():
            sink.push(Inbound(sink, frame, len(data)))

    def recv_events(self) -> None:
        """Run websockets' receive loop; tell the owner when it ends."""
        try:
            super().recv_events()
        finally:
            cause: BaseException | None
            try:
                cause = self.protocol.close_exc
                error = transport_error(self)
                if error is not None and error is not cause:
                    cause.__cause__ = error
            except Exception as exc:  # noqa: BLE001 - the cause is only informative
                cause = exc
            self._sink.push(Closed(self._sink.generation, cause))

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
        close_socket(self)

    def abort_if_open(self) -> None:
        """`abort`, unless websockets has closed the socket already (its own close timeout)."""
        if self.socket.fileno() != -1:
            self.abort()

    def join_threads(self) -> None:
        """Wait for websockets' receiving and keepalive threads to end."""
        for thread in (self.recv_events_thread, self.keepalive_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join()


def discard_data_after_close(protocol: Protocol) -> None:
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


class RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets' logger, with the values of secret headers replaced.

    websockets logs every handshake header at DEBUG level; tokens passed in
    ``additional_headers`` must not end up in logs.
    """

    def __init__(self, logger: logging.Logger, secret_headers: Iterable[str]) -> None:
        super().__init__(logger, {})
        self.secret_headers = frozenset(h.lower() for h in secret_headers) | _ALWAYS_SECRET
        # Payloads of the current on_open frames (auth): never logged. A
        # new set replaces the old one at each connection (owner thread);
        # websockets' threads only read it.
        self.secret_frames: frozenset[bytes] = frozenset()

    def hide(self, frames: Iterable[str | bytes]) -> None:
        """Never log these frames' payloads (the ``on_open`` frames of a connection)."""
        self.secret_frames = frozenset(f.encode() if isinstance(f, str) else f for f in frames)

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
        elif self.secret_frames and args and any(self._secret(arg) for arg in args):
            # websockets logs each frame ("> %s", frame) at DEBUG.
            args = tuple("<an on_open frame, not logged>" if self._secret(a) else a for a in args)
        elif msg == "keepalive ping failed" and isinstance(sys.exc_info()[1], ConnectionClosed):
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)

    def _secret(self, arg: object) -> bool:
        data = getattr(arg, "data", None)
        return isinstance(data, bytes | bytearray) and bytes(data) in self.secret_frames


_ALWAYS_SECRET = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


def connection_factory(sink: Sink) -> Any:
    def create(*args: Any, **kwargs: Any) -> Connection:
        return Connection(*args, sink=sink, **kwargs)

    return create


def tell_owner(owner: ActorRef[Any], message: object) -> None:
    try:
        owner.tell(message)
    except ActorDeadError:
        pass
