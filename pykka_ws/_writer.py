"""The writer actor: the only code that calls ``send()`` on a connection.

The owner hands it one `WriteBatch` at a time with ``ask(block=False)``; the
reply (a `CallbackFuture`) comes back to the owner as a message. Each frame
carries a `Claim`, the token that decides, between the writer and the owner,
whether a write happened:

    PENDING -> STARTED   the writer, just before send()
    PENDING -> CANCELLED the owner, at a deadline, disconnect or stop
    STARTED -> DONE      the writer, when send() returned

Exactly one of start and cancel wins, under a lock the two share. A claim
left STARTED after the batch returned is the write that raised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pykka

from pykka_ws._futures import CallbackFuture

if TYPE_CHECKING:
    import threading

    from pykka_ws._connection import Connection

__all__ = [
    "CANCELLED",
    "DONE",
    "PENDING",
    "STARTED",
    "Claim",
    "WriteBatch",
    "WriteResult",
    "WsWriter",
]

PENDING = 0
STARTED = 1
CANCELLED = 2
DONE = 3


class Claim:
    """One write attempt of one frame."""

    # One per frame written: slots make it cheaper to create.
    __slots__ = ("frame", "state")

    def __init__(self, frame: str | bytes) -> None:
        self.frame = frame
        self.state = PENDING


class WriteBatch:
    """Frames to write, in order, on one connection.

    ``held`` is set when the owner wrote part of the batch without blocking
    and hands the rest over: the encoded bytes still to send, the claims
    they finish, and websockets' protocol lock, which the owner left held
    so nothing can be written between; the writer releases it.
    """

    __slots__ = ("claims", "connection", "generation", "held")

    def __init__(self, connection: Connection, generation: int, claims: list[Claim]) -> None:
        self.connection = connection
        self.generation = generation
        self.claims = claims
        self.held: Held | None = None


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
    """What the writer did with a batch: bytes written and the error, if any."""

    __slots__ = ("bytes_out", "error", "frames_out")

    def __init__(self, frames_out: int, bytes_out: int, error: BaseException | None) -> None:
        self.frames_out = frames_out
        self.bytes_out = bytes_out
        self.error = error


class WsWriter(pykka.ThreadingActor):
    """Writes batches of frames; never decides an outcome.

    Args:
        claim_lock: The lock shared with the owner for claim transitions.
    """

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return CallbackFuture()

    def __init__(self, claim_lock: threading.Lock) -> None:
        super().__init__()
        self._claim_lock = claim_lock

    def on_receive(self, message: Any) -> Any:
        """Write a `WriteBatch`; return a `WriteResult`."""
        if isinstance(message, WriteBatch):
            return self._write(message)
        return super().on_receive(message)

    def _write(self, batch: WriteBatch) -> WriteResult:
        return batch.connection.write_claims(batch, self._claim_lock)
