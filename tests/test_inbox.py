"""The owner's and the writer's inboxes: C FIFOs that keep order, closed once their actor stops.

pykka's ``tell`` and ``ask`` check that the actor is alive, then put: a
message put after pykka's last look at a stopped actor's inbox was never
answered (a ``reply_to`` never told, an ``ask`` waiting for ever). The late
put is what these tests do by hand: exactly pykka's put, after its check.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Any

import pykka
import pytest
from pykka._envelope import Envelope
from pykka.messages import _ActorStop

from pykka_ws import NotDelivered, WebSocketActor, WsDelegatedRequest, WsGetStats, WsOutcome, WsSend
from pykka_ws._claims import ClaimLock
from pykka_ws._futures import CallbackFuture
from pykka_ws._inbox import Inbox, refuse_all
from pykka_ws._wire import Ping
from pykka_ws._writer import WsWriter
from pykka_ws.testing import WsTestServer
from tests.support import inspectable, next_of, req_frame, start, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable

FRAMES = 500


def test_owner_and_writer_inboxes_are_simple_queues_and_keep_order(server: WsTestServer) -> None:
    actor_class, instances = inspectable()
    ref = start(server.url, actor=actor_class)
    owner = instances[0]
    assert isinstance(owner.actor_inbox, queue.SimpleQueue)
    assert owner._writer is not None
    assert isinstance(owner._writer.actor_inbox, queue.SimpleQueue)
    for i in range(FRAMES):
        ref.tell(WsSend(f"frame-{i}"))
    assert ref.ask(WsDelegatedRequest("last", req_frame("last")), timeout=10).confirmed
    received = [f for f in server.wait_for_received(FRAMES + 1) if str(f).startswith("frame-")]
    assert received == [f"frame-{i}" for i in range(FRAMES)]


def stopped_inbox(server: WsTestServer) -> Inbox:
    """The inbox of an actor started and stopped: what a late sender puts in."""
    ref = WebSocketActor.start(server.url)
    inbox = ref.actor_inbox
    ref.stop()
    assert isinstance(inbox, Inbox)
    assert inbox.closed
    return inbox


def test_a_request_put_after_the_stop_has_its_reply_to_told(
    server: WsTestServer, sink: queue.Queue[Any], collector: pykka.ActorRef[Any]
) -> None:
    inbox = stopped_inbox(server)
    inbox.put(Envelope(WsDelegatedRequest(7, req_frame(7), reply_to=collector)))
    outcome = next_of(sink, WsOutcome)
    assert outcome.request_id == 7
    assert isinstance(outcome.error, NotDelivered)
    assert "stopped before handling it" in str(outcome.error)
    assert inbox.qsize() == 0


def test_an_ask_put_after_the_stop_is_answered(server: WsTestServer) -> None:
    inbox = stopped_inbox(server)
    asked: pykka.Future[Any] = CallbackFuture()
    inbox.put(Envelope(WsGetStats(), reply_to=asked))
    with pytest.raises(pykka.ActorDeadError):
        asked.get(timeout=5)
    # A racing second stop is answered as pykka answers it: stopped.
    stopping: pykka.Future[Any] = CallbackFuture()
    inbox.put(Envelope(_ActorStop(), reply_to=stopping))
    assert stopping.get(timeout=5) is None
    # A foreign ask (a pykka proxy's call, say) gets ActorDeadError too.
    foreign: pykka.Future[Any] = CallbackFuture()
    inbox.put(Envelope("not ours", reply_to=foreign))
    with pytest.raises(pykka.ActorDeadError):
        foreign.get(timeout=5)


def test_the_writer_answers_what_is_put_after_its_stop(server: WsTestServer) -> None:
    actor_class, instances = inspectable()
    ref = start(server.url, actor=actor_class)
    writer = instances[0]._writer
    assert writer is not None
    inbox = writer.actor_inbox
    ref.stop()
    assert_answers_a_late_ask(inbox)


def test_a_writer_that_failed_answers_what_is_put_after(caplog: pytest.LogCaptureFixture) -> None:
    writer = WsWriter.start(ClaimLock())
    inbox = writer.actor_inbox
    writer.tell(Ping(None))  # type: ignore[arg-type]  # a bug: pykka stops it via on_failure
    wait_until(lambda: not writer.is_alive(), 5, "the writer stopped")
    assert "Unhandled exception" in caplog.text
    assert_answers_a_late_ask(inbox)


def assert_answers_a_late_ask(inbox: object) -> None:
    """``inbox`` is a closed `Inbox` whose late ask is answered `pykka.ActorDeadError`."""
    assert isinstance(inbox, Inbox)
    assert inbox.closed
    asked: pykka.Future[Any] = CallbackFuture()
    inbox.put(Envelope("a batch", reply_to=asked))
    with pytest.raises(pykka.ActorDeadError):
        asked.get(timeout=5)


def test_a_failed_start_still_answers_what_is_told(mocker: Any, server: WsTestServer) -> None:
    failed = threading.Event()

    def boom(*_args: Any, **_kwargs: Any) -> Any:
        failed.set()
        raise RuntimeError("can't start new thread")

    mocker.patch("pykka_ws._actor.WsWriter.start", side_effect=boom)
    ref = WebSocketActor.start(server.url)
    inbox = ref.actor_inbox
    assert failed.wait(5)
    assert isinstance(inbox, Inbox)
    ref.actor_stopped.wait(5)
    asked: pykka.Future[Any] = CallbackFuture()
    inbox.put(Envelope(WsGetStats(), reply_to=asked))
    with pytest.raises(pykka.ActorDeadError):
        asked.get(timeout=5)


# -- the inbox alone, no actor ----------------------------------------------------


def recorder(answered: list[Any]) -> Callable[[Inbox], None]:
    """A refuse callback that empties the inbox into ``answered`` (from any thread)."""
    lock = threading.Lock()

    def refuse(box: Inbox) -> None:
        while True:
            try:
                item = box.get_nowait()
            except queue.Empty:
                return
            with lock:
                answered.append(item)

    return refuse


def test_a_closed_inbox_has_its_sender_answer_each_message_once() -> None:
    answered: list[Any] = []
    refuse = recorder(answered)
    inbox = Inbox()
    inbox.put("before")
    assert answered == []
    inbox.close(refuse)
    assert answered == ["before"]
    inbox.put("after")
    inbox.put_nowait("after, nowait")
    assert answered == ["before", "after", "after, nowait"]
    assert inbox.qsize() == 0


def test_racing_senders_and_a_closer_lose_no_message() -> None:
    for _ in range(20):
        answered: list[Any] = []
        refuse = recorder(answered)
        inbox = Inbox()
        go = threading.Barrier(5)

        def send(n: int, inbox: Inbox = inbox, go: threading.Barrier = go) -> None:
            go.wait(5)
            for i in range(500):
                inbox.put((n, i))

        senders = [threading.Thread(target=send, args=(n,)) for n in range(4)]
        for t in senders:
            t.start()
        go.wait(5)
        inbox.close(refuse)
        for t in senders:
            t.join(10)
        # Every message was taken once, by the closer or by its sender.
        assert sorted(answered) == sorted((n, i) for n in range(4) for i in range(500))


def test_refuse_all_answers_as_pykka_teardown_does() -> None:
    inbox = Inbox()
    stop: pykka.Future[Any] = CallbackFuture()
    ask: pykka.Future[Any] = CallbackFuture()
    inbox.put(Envelope(_ActorStop(), reply_to=stop))
    inbox.put(Envelope("tell"))
    inbox.put(Envelope("ask", reply_to=ask))
    inbox.close(refuse_all)
    assert stop.get(timeout=1) is None
    with pytest.raises(pykka.ActorDeadError):
        ask.get(timeout=1)
    assert inbox.qsize() == 0


def test_pykka_teardown_takes_nothing_from_a_closed_inbox() -> None:
    # pykka drains an inbox after on_stop with ``while not empty(): get()``:
    # from a closed inbox it could take a late tell and drop it, or block in
    # get() for a message its sender answered meanwhile. It sees nothing.
    inbox = Inbox()
    inbox.close(refuse_all)
    late: pykka.Future[Any] = CallbackFuture()
    # A sender between its put and its look at the closed flag:
    queue.SimpleQueue.put(inbox, Envelope("late", reply_to=late))
    taken = []
    while not inbox.empty():  # pykka's _actor_loop_teardown
        taken.append(inbox.get())
    assert taken == []
    assert inbox.qsize() == 1
    refuse_all(inbox)  # the sender's look at the flag
    with pytest.raises(pykka.ActorDeadError):
        late.get(timeout=1)


class BrokenDesk:
    """A reply_to whose tell raises (a user's object with a ``tell``)."""

    def tell(self, _message: Any) -> None:
        raise RuntimeError("broken desk")


def test_a_failing_answer_never_reaches_an_unrelated_sender(
    server: WsTestServer,
    sink: queue.Queue[Any],
    collector: pykka.ActorRef[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    inbox = stopped_inbox(server)
    asked: pykka.Future[Any] = CallbackFuture()
    broken = WsDelegatedRequest(1, req_frame(1), reply_to=BrokenDesk())  # type: ignore[arg-type]
    # Put without looking at the flag, so that the next sender answers both.
    queue.SimpleQueue.put(inbox, Envelope(broken, reply_to=asked))
    inbox.put(Envelope(WsDelegatedRequest(2, req_frame(2), reply_to=collector)))  # no raise
    assert next_of(sink, WsOutcome).request_id == 2
    with pytest.raises(pykka.ActorDeadError):
        asked.get(timeout=5)  # answered although its reply_to's tell raised
    assert "answering" in caplog.text
    assert "broken desk" in caplog.text
