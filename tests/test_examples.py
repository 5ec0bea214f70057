"""End to end: each example runs as a subprocess, as a reader would run it.

One check runs the order desk in this process, to see which threads it uses.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from pykka_ws import Unconfirmed, WebSocketActor, request

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 60.0


def run_example(name: str, *args: str) -> str:
    """Run ``examples/<name>`` from the repo root; return its stdout if it exits 0."""
    proc = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, f"examples/{name}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    report = f"exit code {proc.returncode}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, report
    assert "Traceback" not in proc.stderr, report
    return proc.stdout


def line_index(output: str, pattern: str) -> int:
    """The number of the first line matching ``pattern``; fail if there is none."""
    for index, line in enumerate(output.splitlines()):
        if re.search(pattern, line):
            return index
    pytest.fail(f"no line matches {pattern!r} in:\n{output}")


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (the examples import each other by plain name)."""
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def load_exchange_module() -> ModuleType:
    return load_example("exchange_server")


@pytest.fixture
def exchange_url() -> Iterator[str]:
    """A local exchange in this process, for the examples' URL argument."""
    exchange = load_exchange_module().ExchangeServer().start()
    try:
        yield exchange.url
    finally:
        exchange.stop()


def check_order_entry(output: str) -> None:
    line_index(output, r"^order 1\s+Confirmed\s+permit committed")
    line_index(output, r"^order 2\s+sent\s+permit committed")
    line_index(output, r"^order 3\s+EndpointRejected\s+permit committed.*not_enough_funds")
    unconfirmed = line_index(output, r"^order 4\s+Unconfirmed\s+permit committed; .*probing it")
    # Resolved by the actor's probe (the exchange holds the silent order)...
    probed = line_index(output, r"^order 4: resolved: the exchange holds it \(EX-\d+ open\)")
    assert unconfirmed < probed, output
    line_index(output, r"^order 5\s+Unconfirmed\s+permit committed; .*probing it")
    # ... and the one taken before the drop, probed once the exchange is back.
    back = line_index(output, r"^\[monitor\] connected \(connection 2\)")
    assert back < line_index(output, r"^order 5: resolved: the exchange holds it"), output
    # The undelivered order gets its permit back, and its retry (same id) goes through.
    refunded = line_index(output, r"^order 6\s+NotDelivered\s+refunded permit for order 6")
    retried = line_index(output, r"^order 6\s+Confirmed\s+permit committed")
    assert refunded < retried, output
    # The order withdrawn while queued (WsCancel) is never sent: its permit comes back too.
    withdrawn = line_index(output, r"^order 7\s+NotDelivered\s+refunded permit for order 7")
    cancelled = line_index(output, r"^\s+WsCancel\(7\) answered True")
    assert withdrawn < cancelled < retried, output
    line_index(output, r"^order 8\s+Denied\s+nothing sent: no permit")
    line_index(output, r"^permits left: 0 of 6; refunded: 2$")
    # Each order settled exactly once (order 6 twice: the attempt and the retry).
    settled = re.findall(r"^order (\d+) ", output, flags=re.MULTILINE)
    assert sorted(settled) == ["1", "2", "3", "4", "5", "6", "6", "7", "8"], output
    line_index(output, r"^threads left: none$")


def check_jsonrpc_subscribe(output: str) -> None:
    ticker, trades = "ticker.BTC-PERPETUAL.100ms", "trades.BTC-PERPETUAL.100ms"
    first_open = line_index(output, rf"connection 1: on_open subscribed \['{ticker}'\]")
    confirmed = line_index(output, rf"subscribe confirmed \(request 1\): \['{trades}'\]")
    line_index(output, rf"connection 1: {ticker} seq \d+")
    line_index(output, rf"connection 1: {trades} seq \d+")
    lost = line_index(output, r"connection 1 lost \(.*\); reconnecting")
    reconnected = line_index(output, r"\[consumer\] connected \(connection 2\)")
    replayed = line_index(output, rf"connection 2: on_open subscribed \['{ticker}', '{trades}'\]")
    resumed_ticker = line_index(output, rf"connection 2: {ticker} seq \d+")
    resumed_trades = line_index(output, rf"connection 2: {trades} seq \d+")
    assert first_open < confirmed < lost < reconnected < replayed, output
    assert replayed < min(resumed_ticker, resumed_trades), output
    line_index(output, r"notifications resumed on both channels")
    line_index(output, r"^stats: state=open reconnects=1 ")
    line_index(output, r"^threads left: none$")


@pytest.mark.timeout(90)
def test_order_entry_settles_every_outcome() -> None:
    check_order_entry(run_example("order_entry.py"))


@pytest.mark.timeout(90)
def test_order_entry_against_a_given_url(exchange_url: str) -> None:
    output = run_example("order_entry.py", exchange_url)
    line_index(output, rf"^exchange: {re.escape(exchange_url)}$")
    check_order_entry(output)


@pytest.mark.timeout(60)
def test_order_desk_waits_for_outcomes_on_no_thread_of_its_own(
    exchange_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    example = load_example("order_entry")
    ws = WebSocketActor.start(exchange_url, endpoint=example.jsonrpc.JsonRpcEndpoint())
    # A first order through the WebSocket actor alone: its connection and
    # timers (its threads) are up before the desk starts.
    warm_up = example.jsonrpc.request(100, "public/test", timeout=10.0)
    assert request(ws, warm_up).confirmed
    before = set(threading.enumerate())
    desk = example.OrderDesk.start(ws, example.TokenBucket(capacity=3, per_second=0.0))
    silent = [example.Order(i, behaviour="silent", timeout=1.0) for i in (1, 2, 3)]
    receipts = [desk.ask(order) for order in silent]
    # Three outcomes outstanding: the desk's actor thread is the only new thread.
    during = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert len(during) == 1, during
    assert during[0].startswith("OrderDesk"), during
    settled = [receipt.get(timeout=10) for receipt in receipts]
    assert [type(s.outcome) for s in settled] == [Unconfirmed] * 3
    assert [s.permit for s in settled] == ["committed"] * 3
    desk.stop()
    ws.stop()


@pytest.mark.timeout(90)
def test_jsonrpc_subscribe_replays_subscriptions_after_a_drop() -> None:
    check_jsonrpc_subscribe(run_example("jsonrpc_subscribe.py"))


@pytest.mark.timeout(90)
def test_jsonrpc_subscribe_against_a_given_url(exchange_url: str) -> None:
    output = run_example("jsonrpc_subscribe.py", exchange_url)
    line_index(output, rf"^exchange: {re.escape(exchange_url)}$")
    check_jsonrpc_subscribe(output)


@pytest.mark.timeout(90)
def test_demo_prints_every_outcome() -> None:
    output = run_example("demo.py")
    expected = {
        "confirmed": r"WsDelegatedOk\(request_id=1, confirmed=True",
        "sent": r"WsDelegatedOk\(request_id=2, confirmed=False",
        "rejected": r"EndpointRejected: .*insufficient funds",
        "unconfirmed": r"Unconfirmed: ",
        "payload mismatch": r"PayloadMismatch: ",
        "too many pending": r"TooManyPending: ",
        "not delivered": r"NotDelivered: ",
    }
    for label, outcome in expected.items():
        line_index(output, rf"^{label}\s+[\d.]+ ms\s+{outcome}")
    line_index(output, r"^stats: ")
