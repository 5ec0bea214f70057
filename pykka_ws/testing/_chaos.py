"""Seeded random misbehaviour: :class:`ChaosServer` and what describes it.

This module owns :class:`Fault` (what the server does with one frame),
:class:`FaultPlan` (the weighted mix of faults) and
:data:`DEFAULT_FAULT_WEIGHTS`, :class:`ConnectionLog` (the server's view of
one connection), the connection subclass that records every message received
complete, and :class:`ChaosServer` itself.
"""

from __future__ import annotations

import bisect
import enum
import heapq
import itertools
import logging
import math
import random
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode

from pykka_ws.testing._common import (
    _LOGGER_NAME,
    Frame,
    ReplyFn,
    _abort_connection,
    _as_frames,
    _check_frame,
    _preview,
)
from pykka_ws.testing._plumbing import _TrackedConnection
from pykka_ws.testing._server import WsTestServer

if TYPE_CHECKING:
    from ssl import SSLContext

    from websockets.sync.server import ServerConnection

    from pykka_ws.testing._plumbing import _Run

logger = logging.getLogger(_LOGGER_NAME)


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
        accepted_at: The :func:`time.monotonic` time the server accepted the
            TCP connection, before the opening handshake: the client cannot
            have written anything on it before then.
    """

    index: int
    frames: tuple[Frame, ...]
    received_at: tuple[float, ...]
    faults: tuple[tuple[Fault, Frame], ...]
    closed: bool
    accepted_at: float = 0.0


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
    accepted_at: float = field(default_factory=time.monotonic)

    def snapshot(self, *, closed: bool) -> ConnectionLog:
        return ConnectionLog(
            index=self.index,
            frames=tuple(self.frames),
            received_at=tuple(self.received_at),
            faults=tuple(self.faults),
            closed=closed,
            accepted_at=self.accepted_at,
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
        # Set before super().__init__(), which starts the reader thread; the
        # connection is made on accept, before the handshake (accepted_at).
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
        with self._cond:  # the time read under the lock: logs in time order
            state = connection.chaos_state
            state.frames.append(frame)
            state.received_at.append(time.monotonic())

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
