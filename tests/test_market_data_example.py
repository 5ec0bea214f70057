"""examples/market_data.py end to end: run as a reader would run it, its summary checked."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 30.0  # it takes about 2 s; anything near this is a hang

pytestmark = pytest.mark.timeout(60)


def run_market_data(*args: str) -> str:
    """Run the example from the repo root; return its stdout if it exits 0, quickly."""
    started = time.monotonic()
    proc = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "examples/market_data.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    took = time.monotonic() - started
    report = f"exit code {proc.returncode}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, report
    assert "Traceback" not in proc.stderr, report
    assert took < 20.0, f"took {took:.1f} s\n{report}"
    return proc.stdout


def line_index(output: str, pattern: str) -> int:
    for index, line in enumerate(output.splitlines()):
        if re.search(pattern, line):
            return index
    pytest.fail(f"no line matches {pattern!r} in:\n{output}")


def check_summary(output: str) -> None:
    # 50 subscriptions confirmed; a 51st refused by the server's limit.
    line_index(output, r"^   50 confirmed$")
    line_index(output, r"^   a 51st is refused \(at most 50 subscriptions\): not replayed$")
    # Each consumer got only its kind (routed by channel), from every one of its channels.
    for kind, channels in (("trades", 17), ("book", 17), ("ticker", 16)):
        index = line_index(output, rf"^consumer {kind}: \d+ updates on {channels} {kind} channels")
        counted = re.fullmatch(
            rf"consumer {kind}: (\d+) updates on {channels} {kind} channels, other messages: 0",
            output.splitlines()[index],
        )
        assert counted is not None, output
        assert int(counted.group(1)) >= 2 * channels, output  # both connections' updates
    assert "not mine" not in output, output
    line_index(output, r"^unexpected messages: 0$")
    # The drop, the reconnect, the replay, in that order, and the streams resumed.
    opened = line_index(output, r"\[monitor\] connection 1 open")
    lost = line_index(output, r"\[monitor\] connection 1 lost \(\w+\); reconnecting")
    reopened = line_index(output, r"\[monitor\] connection 2 open")
    resumed = line_index(output, r"^   every stream resumed$")
    assert opened < lost < reopened < resumed, output
    line_index(output, r"^reconnects: 1$")  # the drop only: no heartbeat went unanswered
    line_index(output, r"^subscriptions replayed: 50 of 50$")
    # Every server heartbeat the client was told of was answered.
    index = line_index(output, r"^heartbeats answered: ")
    answered = re.fullmatch(r"heartbeats answered: (\d+) of (\d+)", output.splitlines()[index])
    assert answered is not None, output
    assert answered.group(1) == answered.group(2), output
    assert int(answered.group(1)) >= 1, output
    # The lost update: only its stream subscribed again, without a reconnect.
    gap = line_index(output, r"gap on book\.ETH: expected 5, received 6; resubscribed$")
    assert gap < lost, output
    line_index(output, r"^gaps: [1-9]\d*, duplicates dropped: \d+$")
    line_index(output, r"^threads left: none$")


def load_market_data(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "examples"))  # it imports its siblings by name
    spec = importlib.util.spec_from_file_location(
        "example_market_data", ROOT / "examples" / "market_data.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_market_data_routes_answers_recovers_and_replays() -> None:
    output = run_market_data()
    line_index(output, r"^market data: ws://127\.0\.0\.1:\d+ \(local, started by this example\)$")
    check_summary(output)
    # The server's side: it got the answers, and dropped no connection for a missing one.
    line_index(output, r"^server: [1-9]\d* heartbeats answered, 0 connections dropped for an unan")


def test_market_data_against_a_given_url(monkeypatch: pytest.MonkeyPatch) -> None:
    server = load_market_data(monkeypatch).MarketDataServer().start()
    url = server.url
    try:
        output = run_market_data(url)
        # The server's side: it got the answers, and dropped no connection for a missing one.
        assert server.heartbeats_answered >= 1
        assert server.dropped_unanswered == 0
    finally:
        server.stop()
    line_index(output, rf"^market data: {re.escape(url)}$")
    check_summary(output)
