"""A lighter, closable inbox for the library's own actors: the owner and the writer.

pykka's `ThreadingActor` makes each actor's inbox a `queue.Queue`, whose every
``put`` and ``get`` goes through a Python-level `threading.Condition`: about
8 us of CPU per message measured on a 2-core AMD EPYC VM (CPython 3.11), more
than the rest of a small message's handling. `queue.SimpleQueue` is CPython's
C implementation of the same unbounded FIFO with the calls pykka and this
library make of an inbox (``put``, ``get``, ``get_nowait``, ``empty``,
``qsize``): about 2 us per message. pykka never bounds an inbox nor uses
``task_done``/``join`` on it, so nothing else changes: order, blocking
``get`` and what is left at stop (pykka drains it with ``empty``/``get``).

pykka builds an actor's inbox with its class's ``_create_actor_inbox()``,
the hook pykka documents for implementors of actor types, as it does
``_create_future()`` (see `_futures`): the two hooks of pykka relied on.
Subscriber actors are the user's: their inboxes are left as they are,
unless they subclass `SubscriberActor`, whose inbox is a plain
`queue.SimpleQueue` (not closed at stop: a pykka actor like any other).

**Closing.** pykka's ``tell`` and ``ask`` check that the actor is alive,
then put the message in its inbox: two steps, with no lock between them. A
message whose sender passed the check just before the actor stopped can be
put after pykka's last look at the inbox; pykka then never answers it: an
``ask`` without a timeout waits for ever, and a request's ``reply_to`` is
never told. An `Inbox` is closed once its actor has stopped handling
messages: from then on, whoever puts a message answers it, right after the
put (the put, then a look at the closed flag: either the closer's drain
finds the message or its sender sees the flag; no lock is needed, and each
message is taken once, by whichever of them gets it first). pykka's own
teardown, which drains the inbox after ``on_stop``, sees a closed inbox as
empty: it would be a third reader outside that protocol. An answer that
fails (a ``reply_to`` whose ``tell`` raises) is logged and the others go on:
it never comes out of an unrelated sender's ``tell``.
"""

from __future__ import annotations

import logging
import queue
from typing import TYPE_CHECKING, Any

import pykka
from pykka.messages import _ActorStop  # answered as pykka's teardown answers it

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Inbox", "SubscriberActor", "answer_stopped", "light_inbox", "refuse_all"]

logger = logging.getLogger("pykka_ws")


class Inbox(queue.SimpleQueue[Any]):
    """A `queue.SimpleQueue` that, once closed, has its senders answer what they put."""

    __slots__ = ("_refuse",)

    def __init__(self) -> None:
        self._refuse: Callable[[Inbox], None] | None = None

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put ``item``; if the inbox is closed, answer everything in it."""
        super().put(item, block, timeout)
        refuse = self._refuse
        if refuse is not None:
            refuse(self)

    def put_nowait(self, item: Any) -> None:
        """As `put` (the C ``put_nowait`` would not call it)."""
        self.put(item, block=False)

    def empty(self) -> bool:
        """Whether the inbox is empty; always True once closed.

        pykka's teardown drains an inbox with ``while not empty(): get()``: a
        third reader outside the closing protocol, which could take a late
        request and drop it (a tell), or wait for ever in ``get()`` for a
        message a sender answered meanwhile. A closed inbox is emptied by its
        closer and its senders only; pykka sees nothing left.
        """
        return self._refuse is not None or super().empty()

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._refuse is not None

    def close(self, refuse: Callable[[Inbox], None]) -> None:
        """Answer what is in the inbox now, and what is put from now on, with ``refuse``.

        ``refuse`` takes the inbox and must empty it (``get_nowait`` until
        `queue.Empty`) without putting anything back; it may run on any
        thread that puts a message, and on several at once.
        """
        self._refuse = refuse
        refuse(self)


def light_inbox() -> Inbox:
    """A new inbox: a C FIFO without a Python-level condition per message."""
    return Inbox()


def answer_stopped(envelope: Any) -> None:
    """Answer a pykka envelope as pykka's teardown does.

    A stop request is answered as done, any other ask with
    `pykka.ActorDeadError`; a tell has no one to answer. Relies on pykka 4's
    envelopes having ``message`` and ``reply_to``.
    """
    reply_to = envelope.reply_to
    if reply_to is None:
        return
    if isinstance(envelope.message, _ActorStop):
        reply_to.set(None)
    else:
        error = pykka.ActorDeadError("the actor stopped before handling the message")
        reply_to.set_exception((pykka.ActorDeadError, error, None))


def refuse_all(inbox: Inbox) -> None:
    """Empty ``inbox``, answering each message with `answer_stopped`."""
    while True:
        try:
            envelope = inbox.get_nowait()
        except queue.Empty:
            return
        try:
            answer_stopped(envelope)
        except Exception:  # it runs in some sender's tell
            logger.exception("pykka-ws: answering %r after the stop failed", envelope)


def _simple_inbox() -> queue.SimpleQueue[Any]:
    return queue.SimpleQueue()


class SubscriberActor(pykka.ThreadingActor):
    """A `pykka.ThreadingActor` with a lighter inbox, for actors told many small messages.

    Subclass it instead of `pykka.ThreadingActor` for an inbound subscriber
    (or any actor told outcomes or frames by the thousand): everything else
    is pykka's, only the inbox differs. pykka makes a `ThreadingActor`'s
    inbox a `queue.Queue`, whose every ``put`` and ``get`` goes through a
    Python-level `threading.Condition`; this one is a `queue.SimpleQueue`,
    CPython's C implementation of the same unbounded FIFO. Messages keep
    their order; flow control (``subscriber_queue``) reads its size as
    before. On a 2-core VM, the frames per second a subscriber actor gets
    went from 0.50-0.67x of raw websockets' ``recv()`` loop to 0.72-0.99x
    over five runs (``python bench/run.py --sections inbound``).

    It uses pykka's ``_create_actor_inbox`` hook, which pykka documents for
    implementors of actor types; nothing else of pykka's is changed.
    """

    _create_actor_inbox = staticmethod(_simple_inbox)
