"""Order entry behind a rate limiter, settled by each request's outcome.

Run it from a clone:

    python3 examples/order_entry.py        # starts a local exchange
    python3 examples/order_entry.py URL    # or talks to one at URL

(URL should be an ``examples/exchange_server.py``: each order tells it what
to do with the order, through a "behaviour" field.)

pykka-ws knows nothing about rate limits. Here an `OrderDesk` actor stands in
front of the `WebSocketActor`: for each order it takes a permit from a token
bucket, asks the WebSocket actor, and settles the permit by the outcome:

    Denied            the limiter said no: nothing is sent
    Confirmed / sent  commit the permit
    EndpointRejected  commit (the exchange saw it and counts it); show the reason
    Unconfirmed       commit (it may have reached the exchange); reconcile later
    NotDelivered      refund the permit: it never left this process, so it is
                      safe to retry with the same id

The script places orders that end in each of these, retries the undelivered
one with the same id, and reconciles the unconfirmed ones by asking the
exchange what it holds.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone

import pykka
from exchange_server import ExchangeServer, threads_left
from jsonrpc_subscribe import JsonRpcEndpoint, decode, rpc_request, say

from pykka_ws import (
    EndpointRejected,
    NotDelivered,
    PayloadMismatch,
    TooManyPending,
    Unconfirmed,
    WebSocketActor,
    WsBackoff,
    WsConfirmMode,
    WsConnected,
    WsDelegatedError,
    WsDelegatedOk,
    WsDelegatedRequest,
    WsDisconnected,
    WsGetStats,
    WsLateResponse,
)

WAIT = 15.0  # seconds any step of the example may take before it gives up


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

    def try_acquire(self) -> bool:
        self._refill()
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def refund(self) -> None:
        self._refill()
        self._tokens = min(float(self.capacity), self._tokens + 1)

    def _refill(self) -> None:
        now = time.monotonic()
        elapsed, self._updated = now - self._updated, now
        self._tokens = min(float(self.capacity), self._tokens + elapsed * self.per_second)


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

    def request(self) -> WsDelegatedRequest:
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
        return rpc_request(
            self.order_id,
            "private/buy",
            params,
            timeout=self.timeout,
            confirm_mode=self.confirm_mode,
        )


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


@dataclass(frozen=True)
class _Outcome:
    """Told to the desk by a waiter thread when the WebSocket actor answered."""

    order: Order
    outcome: Outcome
    receipt: pykka.ThreadingFuture[Settled] = field(compare=False)


class OrderDesk(pykka.ThreadingActor):
    """Takes permits, hands orders to the WebSocket actor, settles permits.

    ``desk.ask(order)`` returns at once with a receipt (a pykka future) that
    resolves to a `Settled` once the order's outcome is known.

    Why not simply ``ws.ask(request)`` in the handler? pykka runs one message
    at a time per actor, so a desk that blocks on the WebSocket actor
    serializes the orders: a silent order would hold every later order for its
    whole timeout. pykka futures have no completion callback, so the desk
    asks with ``block=False`` and a few waiter threads wait for the outcomes
    (each one ends by its request's deadline) and tell them back to the desk.
    The permits are taken and settled only on the desk's own thread.
    """

    def __init__(self, ws: pykka.ActorRef[Any], bucket: TokenBucket, waiters: int = 4) -> None:
        super().__init__()
        self.ws = ws
        self.bucket = bucket
        self.refunds = 0
        self.waiters = ThreadPoolExecutor(waiters, thread_name_prefix="order-desk-waiter")

    def on_stop(self) -> None:
        self.waiters.shutdown(wait=True)

    def permits(self) -> tuple[int, int, int]:
        """Permits available, capacity, refunds so far (call through a proxy)."""
        return self.bucket.available, self.bucket.capacity, self.refunds

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Order):
            return self.place(message)
        if isinstance(message, _Outcome):
            return self.settle(message)
        return None

    def place(self, order: Order) -> pykka.ThreadingFuture[Settled]:
        receipt: pykka.ThreadingFuture[Settled] = pykka.ThreadingFuture()
        if not self.bucket.try_acquire():
            denied = Denied(self.bucket.available, self.bucket.capacity)
            self.settle(_Outcome(order, denied, receipt))
            return receipt
        future = self.ws.ask(order.request(), block=False)
        self.waiters.submit(self._wait, order, future, receipt)
        return receipt

    def _wait(
        self,
        order: Order,
        future: pykka.Future[Any],
        receipt: pykka.ThreadingFuture[Settled],
    ) -> None:
        """On a waiter thread: wait for the outcome, tell it to the desk."""
        outcome: Outcome
        try:
            outcome = future.get()  # pykka-ws gives every request an outcome by its deadline
        except WsDelegatedError as error:
            outcome = error
        except pykka.ActorDeadError as error:  # the WebSocket actor never saw it
            outcome = NotDelivered(str(error), request_id=order.order_id)
        try:
            self.actor_ref.tell(_Outcome(order, outcome, receipt))
        except pykka.ActorDeadError:  # the desk stopped: nobody will settle it
            stopped = RuntimeError(f"the desk stopped before order {order.order_id} settled")
            receipt.set_exception((RuntimeError, stopped, None))

    def settle(self, message: _Outcome) -> None:
        order, outcome = message.order, message.outcome
        permit = "committed"
        match outcome:
            case Denied(permits=permits, capacity=capacity):
                permit = "none"
                name, note = "Denied", f"nothing sent: no permit ({permits} of {capacity} left)"
            case WsDelegatedOk(confirmed=True, response=response):
                result = (decode(response or "") or {}).get("result") or {}
                exchange_id = result.get("order", {}).get("order_id")
                name, note = "Confirmed", f"permit committed; exchange order {exchange_id}"
            case WsDelegatedOk():
                name, note = "sent", "permit committed; written (sent mode waits for no reply)"
            case EndpointRejected(message=reason):
                name, note = "EndpointRejected", f"permit committed; the exchange said: {reason}"
            case Unconfirmed(written=written):
                name = "Unconfirmed"
                note = f"permit committed; reconcile: it may have reached the exchange ({written=})"
            case NotDelivered() | PayloadMismatch() | TooManyPending():
                # None of these left the process: the permit was not spent.
                self.bucket.refund()
                self.refunds += 1
                permit, name = "refunded", type(outcome).__name__
                note = f"refunded permit for order {order.order_id}"
                if isinstance(outcome, NotDelivered):
                    note += ": it never reached the exchange; safe to retry with the same id"
            case _:
                name, note = type(outcome).__name__, f"permit committed: {outcome}"
        say(f"order {order.order_id}  {name:<16}  {note}")
        message.receipt.set(Settled(order, outcome, permit))


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


def place(desk: pykka.ActorRef[Any], *orders: Order) -> list[Settled]:
    """Give the desk every order at once, then wait for all of them to settle."""
    receipts = [desk.ask(order) for order in orders]
    return [receipt.get(timeout=WAIT) for receipt in receipts]


def reconcile(ws: pykka.ActorRef[Any], order: Order) -> None:
    """Ask the exchange whether it holds an order whose outcome was ambiguous."""
    params = {"label": order.label}
    reply = ws.ask(
        rpc_request(f"reconcile-{order.order_id}", "private/get_order_state_by_label", params)
    )
    held = (decode(reply.response or "") or {}).get("result") or []
    if held:
        states = ", ".join(f"{o['order_id']} {o['order_state']}" for o in held)
        say(f"order {order.order_id}: the exchange holds it ({states}): it went through")
    else:
        say(f"order {order.order_id}: the exchange never got it: safe to place again")


def main(argv: list[str]) -> int:
    exchange = ExchangeServer().start() if len(argv) < 2 else None
    url = exchange.url if exchange is not None else argv[1]
    say(f"exchange: {url}" + (" (local, started by this example)" if exchange else ""))

    up, down = threading.Event(), threading.Event()
    monitor = Monitor.start(up, down)
    ws = WebSocketActor.start(
        url,
        endpoint=JsonRpcEndpoint(),
        inbound=monitor,
        backoff=WsBackoff(initial=0.2, cap=0.5),  # quick reconnects for the demo
    )
    # 6 permits, then one every 20 s: the script takes a few seconds, so the
    # 7th order finds none.
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

        say("-- order 5: the exchange takes it, then drops the connection and is down for 2 s")
        settled += place(desk, Order(5, behaviour="drop", down_for=2.0))
        if not down.wait(WAIT):
            say("the exchange did not drop the connection")
            return 1

        say("-- order 6 while the exchange is down: queued until its deadline")
        settled += place(desk, Order(6, timeout=0.5))

        say("-- order 6 again, same id, with time to wait for the exchange to come back")
        settled += place(desk, Order(6, timeout=10.0))

        say("-- order 7: no permit left")
        settled += place(desk, Order(7))

        say("-- reconcile the unconfirmed orders")
        for item in settled:
            if isinstance(item.outcome, Unconfirmed):
                reconcile(ws, item.order)

        stats = ws.ask(WsGetStats())
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
