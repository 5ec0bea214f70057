"""Order entry behind a rate limiter, settled by each request's outcome.

Run it from a clone:

    python3 examples/order_entry.py        # starts a local exchange
    python3 examples/order_entry.py URL    # or talks to one at URL

(URL should be an ``examples/exchange_server.py``: each order tells it what
to do with the order, through a "behaviour" field.)

pykka-ws knows nothing about rate limits. Here an `OrderDesk` actor stands in
front of the `WebSocketActor`: for each order it takes a permit from a token
bucket, tells the request to the WebSocket actor with ``reply_to`` set to
itself, and settles the permit when the `WsOutcome` comes back:

    Denied            the limiter said no: nothing is sent
    Confirmed / sent  commit the permit
    EndpointRejected  commit (the exchange saw it and counts it); show the reason
    Unconfirmed       commit (it may have reached the exchange); the
                      WebSocket actor probes the exchange and tells the desk
                      a `WsResolved`: did the order go through or not
    NotDelivered      refund the permit: it never left this process, so it is
                      safe to retry with the same id

The script places orders that end in each of these, withdraws one that is
still queued (`WsCancel`), and retries an undelivered one with the same id.
The unconfirmed ones are resolved by the actor's probes: `Exchange`, the
endpoint, names the exchange's status call for an order
(`JsonRpcEndpoint.probe_call`) and reads its answer (``probe_reply``); the
actor sends it ``probe_delay`` seconds after the ambiguous outcome, once a
connection is open, and tells the order's ``reply_to`` what it learned.

The limiter is a small token bucket written here rather than a library:
pyrate-limiter (4.5) and limits (5.8) have no way to give a permit back.
pyrate-limiter refuses negative weights, and limits' counters can only be
decremented through its fixed-window storage, where a denied hit also counts,
so a refund after a denial does not free a permit.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone

import pykka
from exchange_server import ExchangeServer, threads_left
from jsonrpc_subscribe import say

from pykka_ws import (
    EndpointRejected,
    NotDelivered,
    PayloadMismatch,
    RequestId,
    TooManyPending,
    Unconfirmed,
    WebSocketActor,
    WsBackoff,
    WsCancel,
    WsConfirmMode,
    WsConnected,
    WsDelegatedError,
    WsDelegatedOk,
    WsDelegatedRequest,
    WsDisconnected,
    WsGetStats,
    WsLateResponse,
    WsOutcome,
    WsResolved,
    WsStats,
    jsonrpc,
)

WAIT = 15.0  # seconds any step of the example may take before it gives up


# -- the endpoint ---------------------------------------------------------------


class Exchange(jsonrpc.JsonRpcEndpoint):
    """The example exchange's JSON-RPC API, with its status call for probes."""

    def probe_call(
        self,
        request_id: RequestId,  # noqa: ARG002 - the label says which order
        call: dict[str, Any],
    ) -> tuple[str, jsonrpc.Params | None] | None:
        """Ask for the orders held under a buy's label (a probe of an ambiguous buy)."""
        if call["method"] != "private/buy":
            return None
        return "private/get_order_state_by_label", {"label": call["params"]["label"]}

    def probe_reply(self, reply: dict[str, Any]) -> bool | None:
        """The orders held under the label: some (it went through), none (it did not)."""
        result = reply.get("result")
        return None if result is None else bool(result)


# -- the limiter ----------------------------------------------------------------


class TokenBucket:
    """``capacity`` permits, refilled continuously at ``per_second``.

    Not thread-safe, on purpose: only the OrderDesk actor touches it, and
    pykka runs one of its handlers at a time.
    """

    def __init__(self, capacity: int, per_second: float) -> None:
        self.capacity = capacity
        self.per_second = per_second
        self._tokens = float(capacity)
        self._updated = time.monotonic()

    @property
    def available(self) -> int:
        self._refill()
        return int(self._tokens)

    def try_acquire(self) -> Permit | None:
        """Take a permit, or return None if there is none."""
        self._refill()
        if self._tokens < 1:
            return None
        self._tokens -= 1
        return Permit(self)

    def put_back(self) -> None:
        self._refill()
        self._tokens = min(float(self.capacity), self._tokens + 1)

    def _refill(self) -> None:
        now = time.monotonic()
        elapsed, self._updated = now - self._updated, now
        self._tokens = min(float(self.capacity), self._tokens + elapsed * self.per_second)


class Permit:
    """One token taken from a `TokenBucket`: committed or refunded, exactly once."""

    def __init__(self, bucket: TokenBucket) -> None:
        self._bucket = bucket
        self.state = "taken"

    def commit(self) -> None:
        self._settle("committed")

    def refund(self) -> None:
        self._settle("refunded")
        self._bucket.put_back()

    def _settle(self, state: str) -> None:
        if self.state != "taken":
            msg = f"a permit already {self.state} cannot be {state}"
            raise RuntimeError(msg)
        self.state = state


# -- the desk -------------------------------------------------------------------


@dataclass(frozen=True)
class Order:
    """A buy order; ``behaviour`` tells the example exchange what to do with it."""

    order_id: int
    amount: int = 10
    behaviour: str = "confirm"  # confirm | reject | silent | drop
    down_for: float | None = None  # with "drop": refuse connections this long
    confirm_mode: WsConfirmMode = WsConfirmMode.CONFIRMED
    timeout: float = 2.0

    @property
    def label(self) -> str:
        return f"order-{self.order_id}"

    def request(self, reply_to: pykka.ActorRef[Any], context: Ticket) -> WsDelegatedRequest:
        params: dict[str, Any] = {
            "instrument_name": "BTC-PERPETUAL",
            "amount": self.amount,
            "type": "market",
            "label": self.label,
            "behaviour": self.behaviour,
        }
        if self.down_for is not None:
            params["down_for"] = self.down_for
        # The order id is the JSON-RPC id, so a retry is the same request.
        return jsonrpc.request(
            self.order_id,
            "private/buy",
            params,
            timeout=self.timeout,
            confirm_mode=self.confirm_mode,
            reply_to=reply_to,
            context=context,
        )


@dataclass(frozen=True)
class Withdraw:
    """Ask the desk to withdraw an order whose frame has not started writing (`WsCancel`).

    ``desk.ask(Withdraw(n))`` returns a future of the WebSocket actor's answer:
    True if the order was withdrawn (it then settles as `NotDelivered`).
    """

    order_id: int


@dataclass(frozen=True)
class Denied:
    """The limiter's own outcome: no permit, nothing sent."""

    permits: int
    capacity: int


Outcome = WsDelegatedOk | WsDelegatedError | Denied


@dataclass(frozen=True)
class Settled:
    """What became of an order and of its permit."""

    order: Order
    outcome: Outcome
    permit: str  # "committed", "refunded" or "none"
    # For an Unconfirmed order: what the WebSocket actor's probe learned.
    resolution: pykka.Future[WsResolved] | None = field(default=None, compare=False)


@dataclass(eq=False)
class Ticket:
    """An order in flight: the request's ``context``, handed back in its `WsOutcome`.

    It carries all the desk needs to settle the order when the outcome comes:
    the order, its permit, and the receipt to resolve; and, for an
    unconfirmed order, the future of its `WsResolved`.
    """

    order: Order
    permit: Permit
    receipt: pykka.ThreadingFuture[Settled] = field(repr=False)
    resolution: pykka.ThreadingFuture[WsResolved] = field(
        repr=False, default_factory=pykka.ThreadingFuture
    )


class OrderDesk(pykka.ThreadingActor):
    """Takes permits, hands orders to the WebSocket actor, settles permits.

    ``desk.ask(order)`` returns at once with a receipt (a pykka future) that
    resolves to a `Settled` once the order's outcome is known.

    The desk never waits for the WebSocket actor: it *tells* each request with
    ``reply_to=self.actor_ref`` and the order's `Ticket` as ``context``, and
    the WebSocket actor tells it a `WsOutcome` when the request ends (every
    request gets exactly one, by its deadline). So a silent order does not
    hold up the next ones, and the desk needs no thread besides its own: the
    permits are taken and settled on it, one message at a time.
    """

    def __init__(self, ws: pykka.ActorRef[Any], bucket: TokenBucket) -> None:
        super().__init__()
        self.ws = ws
        self.bucket = bucket
        self.refunds = 0
        self.in_flight: set[Ticket] = set()
        self.unresolved: set[Ticket] = set()

    def permits(self) -> tuple[int, int, int]:
        """Permits available, capacity, refunds so far (call through a proxy)."""
        return self.bucket.available, self.bucket.capacity, self.refunds

    def on_receive(self, message: Any) -> Any:
        match message:
            case Order():
                return self.place(message)
            case WsOutcome(context=Ticket() as ticket):
                try:
                    outcome: Outcome = message.result()
                except WsDelegatedError as error:
                    outcome = error
                self.settle(ticket, outcome)
            case WsResolved(context=Ticket() as ticket):
                # The probe's answer for an unconfirmed order (or its late reply).
                self.unresolved.discard(ticket)
                ticket.resolution.set(message)
            case Withdraw(order_id=order_id):
                # Answered by the WebSocket actor: True if the frame had not
                # started writing. The order's outcome (NotDelivered) comes
                # back as a WsOutcome like any other.
                return self.ws.ask(WsCancel(order_id), block=False)
        return None

    def on_stop(self) -> None:
        # Outcomes told to a stopped desk are dropped: say so to whoever waits.
        for ticket in self.in_flight:
            stopped = RuntimeError(f"the desk stopped before order {ticket.order.order_id} settled")
            ticket.receipt.set_exception((RuntimeError, stopped, None))
        for ticket in self.unresolved:
            unresolved = f"the desk stopped before order {ticket.order.order_id} resolved"
            stopped = RuntimeError(unresolved)
            ticket.resolution.set_exception((RuntimeError, stopped, None))

    def place(self, order: Order) -> pykka.ThreadingFuture[Settled]:
        receipt: pykka.ThreadingFuture[Settled] = pykka.ThreadingFuture()
        permit = self.bucket.try_acquire()
        if permit is None:
            denied = Denied(self.bucket.available, self.bucket.capacity)
            say(line(order, denied, "nothing sent: no permit"))
            receipt.set(Settled(order, denied, "none"))
            return receipt
        ticket = Ticket(order, permit, receipt)
        try:
            self.ws.tell(order.request(reply_to=self.actor_ref, context=ticket))
        except pykka.ActorDeadError as error:  # the WebSocket actor never saw it
            self.settle(ticket, NotDelivered(str(error), request_id=order.order_id))
        else:
            self.in_flight.add(ticket)
        return receipt

    def settle(self, ticket: Ticket, outcome: Outcome) -> None:
        self.in_flight.discard(ticket)
        order, permit = ticket.order, ticket.permit
        match outcome:
            case NotDelivered() | PayloadMismatch() | TooManyPending():
                # None of these left the process: the permit was not spent.
                permit.refund()
                self.refunds += 1
                note = f"refunded permit for order {order.order_id}"
            case _:
                permit.commit()
                note = "permit committed"
        resolution = None
        if isinstance(outcome, Unconfirmed) and outcome.written:
            self.unresolved.add(ticket)  # the WebSocket actor probes it
            resolution = ticket.resolution
        say(line(order, outcome, note))
        ticket.receipt.set(Settled(order, outcome, permit.state, resolution))


def line(order: Order, outcome: Outcome, permit: str) -> str:
    """The line the desk prints for a settled order."""
    match outcome:
        case Denied(permits=permits, capacity=capacity):
            name, note = "Denied", f" ({permits} of {capacity} left)"
        case WsDelegatedOk(confirmed=True, response=response):
            result = (jsonrpc.find_reply(response or "", order.order_id) or {}).get("result") or {}
            exchange_id = result.get("order", {}).get("order_id")
            name, note = "Confirmed", f"; exchange order {exchange_id}"
        case WsDelegatedOk():
            name, note = "sent", "; written (sent mode waits for no reply)"
        case EndpointRejected(message=reason):
            name, note = "EndpointRejected", f"; the exchange said: {reason}"
        case Unconfirmed(written=True):
            name, note = "Unconfirmed", "; it may have reached the exchange: probing it"
        case Unconfirmed():
            name, note = "Unconfirmed", "; its write never finished"
        case NotDelivered():
            name, note = (
                "NotDelivered",
                ": it never reached the exchange; safe to retry with the same id",
            )
        case _:
            name, note = type(outcome).__name__, f": {outcome}"
    return f"order {order.order_id}  {name:<16}  {permit}{note}"


# -- the connection monitor -----------------------------------------------------


class Monitor(pykka.ThreadingActor):
    """Told the connection events; shows the transitions, sets two events."""

    def __init__(self, up: threading.Event, down: threading.Event) -> None:
        super().__init__()
        self.up, self.down = up, down
        self.refused = 0

    def on_receive(self, message: Any) -> None:
        match message:
            case WsConnected(generation=generation):
                after = f" after {self.refused} refused attempts" if self.refused else ""
                say(f"[monitor] connected (connection {generation}){after}")
                self.refused = 0
                self.down.clear()
                self.up.set()
            case WsDisconnected(cause=cause, generation=generation) if self.up.is_set():
                say(f"[monitor] connection {generation} lost ({type(cause).__name__}); retrying")
                self.up.clear()
                self.down.set()
            case WsDisconnected():
                self.refused += 1  # a reconnect attempt refused while the exchange is down
            case WsLateResponse(request_id=request_id):
                say(f"[monitor] the exchange's reply to sent-mode request {request_id} came too")


# -- the story ------------------------------------------------------------------


def give(desk: pykka.ActorRef[OrderDesk], order: Order) -> pykka.Future[Settled]:
    """Give the desk an order; return its receipt at once."""
    return cast("pykka.Future[Settled]", desk.ask(order))  # pykka's ask is typed Any


def place(desk: pykka.ActorRef[OrderDesk], *orders: Order) -> list[Settled]:
    """Give the desk every order at once, then wait for all of them to settle."""
    receipts = [give(desk, order) for order in orders]
    return [receipt.get(timeout=WAIT) for receipt in receipts]


def resolved(settled: Settled) -> None:
    """Wait for the probe's answer for an unconfirmed order, and show it."""
    if settled.resolution is None:
        msg = f"order {settled.order.order_id} has nothing to resolve"
        raise ValueError(msg)
    answer = settled.resolution.get(timeout=WAIT)
    order_id = settled.order.order_id
    if answer.executed:
        held = (jsonrpc.find_reply(answer.response or "", f"probe:{order_id}") or {}).get("result")
        states = ", ".join(f"{o['order_id']} {o['order_state']}" for o in held or [])
        say(f"order {order_id}: resolved: the exchange holds it ({states}): it went through")
    elif answer.executed is False:
        say(f"order {order_id}: resolved: the exchange never got it: safe to place again")
    else:
        say(f"order {order_id}: unresolved: the probe got no answer; ask a human")


def main(argv: list[str]) -> int:
    exchange = ExchangeServer().start() if len(argv) < 2 else None
    url = exchange.url if exchange is not None else argv[1]
    say(f"exchange: {url}" + (" (local, started by this example)" if exchange else ""))

    up, down = threading.Event(), threading.Event()
    monitor = Monitor.start(up, down)
    ws = WebSocketActor.start(
        url,
        endpoint=Exchange(),
        inbound=monitor,
        backoff=WsBackoff(initial=0.2, cap=0.5),  # quick reconnects for the demo
        probe_delay=0.5,  # how long before a probe's "not there" can be trusted
    )
    # 6 permits, then one every 20 s: the script takes a few seconds, so the
    # last order finds none.
    bucket = TokenBucket(capacity=6, per_second=1 / 20)
    say(f"limiter: {bucket.capacity} permits, one more every {1 / bucket.per_second:.0f} s")
    desk = OrderDesk.start(ws, bucket)  # from here on only the desk touches the bucket
    try:
        if not up.wait(WAIT):
            say("could not connect")
            return 1

        say("-- orders 1-4 at once: the desk does not wait for one outcome to take the next")
        settled = place(
            desk,
            Order(1),
            Order(2, confirm_mode=WsConfirmMode.SENT),
            Order(3, behaviour="reject"),
            Order(4, behaviour="silent", timeout=0.5),
        )
        say("-- order 4 is unconfirmed: the WebSocket actor probes the exchange")
        resolved(settled[3])

        say("-- order 5: the exchange takes it, then drops the connection and is down for 3 s")
        settled += place(desk, Order(5, behaviour="drop", down_for=3.0))
        if not down.wait(WAIT):
            say("the exchange did not drop the connection")
            return 1

        say("-- order 6 while the exchange is down: queued until its deadline")
        settled += place(desk, Order(6, timeout=0.5))

        say("-- order 7 while the exchange is down, then withdrawn before it can be sent")
        receipt = give(desk, Order(7, timeout=10.0))
        answer = cast("pykka.Future[bool]", desk.ask(Withdraw(7)))
        withdrawn = answer.get(timeout=WAIT)
        settled.append(receipt.get(timeout=WAIT))
        say(f"   WsCancel(7) answered {withdrawn}: its frame will never be sent")

        say("-- order 6 again, same id, with time to wait for the exchange to come back")
        settled += place(desk, Order(6, timeout=10.0))

        say("-- order 8: no permit left")
        settled += place(desk, Order(8))

        say("-- order 5 was unconfirmed too: probed once the exchange was back")
        resolved(settled[4])

        stats = cast("WsStats", ws.ask(WsGetStats()))  # pykka's ask is typed Any
        say("ws outcomes: " + ", ".join(f"{k}={v}" for k, v in stats.outcomes.items() if v))
        available, capacity, refunds = desk.proxy().permits().get()
        say(f"permits left: {available} of {capacity}; refunded: {refunds}")
    finally:
        desk.stop()
        ws.stop()
        monitor.stop()
        if exchange is not None:
            exchange.stop()
    left = threads_left()
    say(f"threads left: {', '.join(left) or 'none'}")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
