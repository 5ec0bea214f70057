"""The writer actor: writes batches of frames on its own thread; decides nothing.

The owner hands it one `Batch` at a time with ``ask(block=False)`` (see
`_wire.hand_to_writer`); the reply, a `CallbackFuture`, comes back to the
owner as a `_wire.WriteDone` message, so no thread waits on a write. What it
does with a batch, and the lock contract it keeps with the owner, is
`_wire.write_batch`. It is internal: taken out of pykka's registry so
``stop_all()`` does not stop it before its owner, which stops it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pykka

from pykka_ws._core import Batch
from pykka_ws._futures import CallbackFuture
from pykka_ws._inbox import Inbox, light_inbox, refuse_all
from pykka_ws._wire import Ping, send_ping, write_batch

if TYPE_CHECKING:
    from pykka_ws._claims import ClaimLock

__all__ = ["WsWriter"]


class WsWriter(pykka.ThreadingActor):
    """Writes batches of frames; never decides an outcome.

    Args:
        claims: The claim lock shared with the owner.
    """

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return CallbackFuture()

    _create_actor_inbox = staticmethod(light_inbox)  # see _inbox

    def __init__(self, claims: ClaimLock) -> None:
        super().__init__()
        self._claims = claims

    def on_stop(self) -> None:
        """Have whoever tells it from now on be answered (see `_inbox`)."""
        inbox = self.actor_inbox
        if isinstance(inbox, Inbox):
            inbox.close(refuse_all)

    def on_failure(self, *_exc_info: object) -> None:
        """As `on_stop`: a writer that failed is stopped by pykka without it."""
        self.on_stop()

    def on_receive(self, message: Any) -> Any:
        """Write a `Batch` (return a `_wire.WriteResult`) or send a keepalive `_wire.Ping`."""
        if isinstance(message, Batch):
            return write_batch(message, self._claims)
        if isinstance(message, Ping):
            return send_ping(message.connection)
        return super().on_receive(message)
