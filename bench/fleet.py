"""Many connections in one process: a child of ``bench/run.py`` (section ``conns``).

Usage: ``python bench/fleet.py --kind lib|raw --url URL --count N [--ping S|none]``

It opens N connections (pykka-ws actors or raw websockets clients), does one
confirmed request on each, and prints one JSON line: the thread count and
RSS before and after. Then it obeys stdin, one command a line:

- ``run SECONDS``: every connection does confirmed requests, one outstanding
  each, for SECONDS; prints ``{"requests", "elapsed", "cpu"}``.
- ``quit`` (or end of input): closes every connection, prints
  ``{"stop_s"}`` and exits.

A watchdog ends the process after ``--max-seconds`` whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import common
from rpc import JsonRpcEndpoint, raw_connect, reply_id, request_frame, wait_open

from pykka_ws import WebSocketActor, WsDelegatedError, WsDelegatedRequest, WsGetStats

if TYPE_CHECKING:
    from collections.abc import Callable

    import pykka
    from websockets.sync.client import ClientConnection

_MAX_COMMANDS = 1000
_MAX_CYCLES = 10_000_000
_REQUEST_TIMEOUT = 30.0
_PAUSE = threading.Event()  # never set: waiting on it is a plain pause


def _emit(value: dict[str, Any]) -> None:
    print(json.dumps(value), flush=True)


def _library_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("pykka-ws-connect"))


def _shared_threads() -> int:
    """Threads one per process, not per connection (pykka-ws' timer scheduler)."""
    return sum(1 for t in threading.enumerate() if t.name == "pykka-ws-scheduler")


class Fleet:
    """N connections of one kind, and the code that drives them."""

    def __init__(self, kind: str, url: str, count: int, ping: float | None, drivers: int) -> None:
        self.kind = kind
        self.url = url
        self.count = count
        self.ping = ping
        self.drivers = max(1, min(drivers, count))
        self.refs: list[pykka.ActorRef[WebSocketActor]] = []
        self.conns: list[ClientConnection] = []
        # Next request id per driver; the last slot serves the setup round.
        self.seqs = [0] * (self.drivers + 1)

    def open(self) -> dict[str, Any]:
        """Open every connection; return the setup measurements."""
        threads_before = threading.active_count() - _shared_threads()
        fds_before = common.open_fds()
        rss_before = common.rss_bytes()
        start = time.perf_counter()
        if self.kind == "lib":
            for _ in range(self.count):
                self.refs.append(
                    WebSocketActor.start(
                        self.url,
                        endpoint=JsonRpcEndpoint(),
                        compression=None,
                        ping_interval=self.ping,
                    )
                )
            for ref in self.refs:
                wait_open(ref, timeout=60.0)
        else:
            self.conns.extend(
                raw_connect(self.url, ping_interval=self.ping) for _ in range(self.count)
            )
        setup_s = time.perf_counter() - start
        # One request on each, then let the short-lived connector threads end.
        self.cycle(self.drivers, list(range(self.count)))
        deadline = time.monotonic() + 10.0
        while _library_threads() and time.monotonic() < deadline:
            _PAUSE.wait(0.01)
        return {
            "kind": self.kind,
            "connections": self.count,
            "ping_interval": self.ping,
            "setup_s": setup_s,
            "threads_before": threads_before,
            "threads_after": threading.active_count() - _shared_threads(),
            "shared_threads": _shared_threads(),
            "rss_before": rss_before,
            "rss_after": common.rss_bytes(),
            "fds_before": fds_before,
            "fds_after": common.open_fds(),
        }

    def cycle(self, driver: int, indexes: list[int]) -> int:
        """One confirmed request on each of ``indexes``, all outstanding at once.

        Return how many pykka-ws requests ended otherwise (an overloaded
        process can miss deadlines: counted, not fatal).
        """
        seq = self.seqs[driver]
        self.seqs[driver] = seq + len(indexes)
        if self.kind == "lib":
            futures = []
            for index in indexes:
                request_id = driver * 1_000_000_000 + seq
                seq += 1
                request = WsDelegatedRequest(
                    request_id, request_frame(request_id), timeout=_REQUEST_TIMEOUT
                )
                futures.append(self.refs[index].ask(request, block=False))
            failed = 0
            for future in futures:
                try:
                    if not future.get(timeout=2 * _REQUEST_TIMEOUT).confirmed:
                        failed += 1
                except WsDelegatedError:
                    failed += 1
            return failed
        sent = []
        for index in indexes:
            request_id = driver * 1_000_000_000 + seq
            seq += 1
            self.conns[index].send(request_frame(request_id))
            sent.append(request_id)
        for index, request_id in zip(indexes, sent, strict=True):
            if reply_id(self.conns[index].recv(timeout=_REQUEST_TIMEOUT)) != request_id:
                raise RuntimeError("a reply did not match its request")
        return 0

    def run(self, seconds: float) -> dict[str, Any]:
        """Drive every connection for ``seconds``; return the request count and costs."""
        groups = [list(range(j, self.count, self.drivers)) for j in range(self.drivers)]
        counts = [0] * self.drivers
        failures = [0] * self.drivers
        errors: list[BaseException] = []
        start = time.perf_counter()
        stop_at = time.monotonic() + seconds
        cpu_before = time.process_time()
        sys_before = os.times().system

        def drive(j: int) -> None:
            try:
                for _ in range(_MAX_CYCLES):
                    if time.monotonic() >= stop_at:
                        return
                    failed = self.cycle(j, groups[j])
                    counts[j] += len(groups[j]) - failed
                    failures[j] += failed
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=drive, args=(j,), name=f"driver-{j}")
            for j in range(self.drivers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(seconds + 2 * _REQUEST_TIMEOUT)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_before
        cpu_sys = os.times().system - sys_before
        if errors:
            raise errors[0]
        reconnects = sum(ref.ask(WsGetStats(), timeout=30).reconnects for ref in self.refs)
        return {
            "requests": sum(counts),
            "failed": sum(failures),
            "reconnects": reconnects,
            "elapsed": elapsed,
            "cpu": cpu,
            "cpu_sys": cpu_sys,
        }

    def close(self) -> dict[str, Any]:
        """Close every connection; return how long it took."""
        start = time.perf_counter()
        for ref in self.refs:
            ref.stop(timeout=30)
        for conn in self.conns:
            conn.close()
        return {"stop_s": time.perf_counter() - start}


def _watchdog(seconds: float) -> Callable[[], None]:
    def expire() -> None:
        print(json.dumps({"error": f"fleet watchdog: {seconds} s passed"}), flush=True)
        os._exit(3)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer.cancel


def main() -> None:
    """Open the fleet, obey commands, close it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=("lib", "raw"), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--ping", default="20")
    parser.add_argument("--drivers", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()
    cancel = _watchdog(args.max_seconds)
    enough, message = common.raise_fd_limit(args.count * 4 + 64)
    if not enough:
        _emit({"error": f"fleet of {args.count}: {message}"})
        cancel()
        return
    ping = None if args.ping == "none" else float(args.ping)
    fleet = Fleet(args.kind, args.url, args.count, ping, args.drivers)
    try:
        _emit(fleet.open())
        for _ in range(_MAX_COMMANDS):
            line = sys.stdin.readline()
            command = line.split()
            if not command or command[0] == "quit":
                break
            if command[0] == "run":
                _emit(fleet.run(float(command[1])))
            else:
                _emit({"error": f"unknown command {line!r}"})
    except Exception as exc:
        _emit({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        _emit(fleet.close())
        cancel()


if __name__ == "__main__":
    main()
