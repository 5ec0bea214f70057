"""Chaos: thousands of requests through a server that misbehaves at random.

Several caller threads pipeline requests (mixed confirm modes, joined groups,
mismatching ids, fire-and-forget sends) at a `ChaosServer` that confirms,
rejects, answers late, stays silent, stalls, sends garbage, closes and resets
connections at random. The run records every caller's outcome and the
server's view (every frame it received complete, per connection), then
checks the invariants of DESIGN.md section 6 against them:

1. every waiter gets exactly one outcome, by its deadline plus a slack;
2. a request that failed before reaching the socket (`NotDelivered`,
   `PayloadMismatch`, `TooManyPending`) was never received by the server;
3. a joined group is one frame on the wire (and no request is ever written
   twice, across reconnections included), unless it is ``idempotent``;
4. after the last deadline the pending table and the queues are empty;
5. no library thread is alive after stop;
6. the actor stays alive and answering throughout;
7. outcome-driven retry (``retry=True``, some ``idempotent=True``): no
   non-idempotent request is ever on the wire twice, no attempt is written
   after its request ended, and every extra copy on the wire is counted in
   ``WsStats.resends``;
8. probes (the endpoint probes every ``Unconfirmed(written=True)`` request;
   the server answers them truthfully, when its faults let it answer at all):
   `WsResolved` only for a request that ended so, at most once per entry,
   ``executed=True`` only for a request the server received, and
   ``executed=False`` only for one it had not received when it answered the
   probe (or refused).

Sequence gaps get a chaos run of their own below (a seeded server that skips
numbers, repeats them and drops the connection at random).

The seed is printed and included in every failure message; set
``PYKKA_WS_CHAOS_SEED`` to replay one (the server's faults and the callers'
choices replay; thread timing does not). ``PYKKA_WS_SOAK=1`` runs a longer
soak (``PYKKA_WS_SOAK_SECONDS``, default 60).

The second half of the file is hostile servers one at a time: untrusted
certificates (verification cannot be turned off by accident), proxy
variables, redirects, and a peer that stops reading while writes are stuck.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import random
import socket
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pykka
import pytest
import trustme

from pykka_ws import (
    EndpointRejected,
    NotDelivered,
    PayloadMismatch,
    TooManyPending,
    Unconfirmed,
    WebSocketActor,
    WsConfirmMode,
    WsConnected,
    WsDelegatedOk,
    WsDelegatedRequest,
    WsGap,
    WsGetStats,
    WsInbound,
    WsSend,
    WsStats,
    WsSubscribe,
)
from pykka_ws.testing import (
    ChaosServer,
    ConnectionLog,
    Fault,
    FaultPlan,
    FaultProxy,
    Frame,
    WsTestServer,
)

from .support import (
    DEADLINE_SLACK,
    FAST_BACKOFF,
    Collector,
    JsonEndpoint,
    Tally,
    json_reply,
    json_with_id,
    pause,
    req_frame,
    stats,
    wait_no_library_threads,
    wait_state,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

CLIENT_MAX_SIZE = 32 * 1024
MIN_TIMEOUT = 0.2
MAX_TIMEOUT = 1.0
PROBE_DELAY = 0.2
PROBE_TIMEOUT = 0.5

CHAOS_WEIGHTS = {
    Fault.CONFIRM: 50.0,
    Fault.REJECT: 10.0,
    Fault.DELAY: 6.0,
    Fault.SILENT: 8.0,
    Fault.CLOSE: 2.0,
    Fault.STALL: 0.3,
    Fault.INVALID_UTF8: 1.0,
    Fault.JUNK: 3.0,
    Fault.OVERSIZE: 1.0,
    Fault.HUGE_HEADER: 1.0,
    Fault.RESET: 2.0,
}
CHAOS_PLAN = FaultPlan(
    weights=CHAOS_WEIGHTS,
    delay=MAX_TIMEOUT + 0.2,  # always past the deadline: a late reply
    stall=0.6,  # longer than write_timeout: big writes into a stall time out
    oversize=CLIENT_MAX_SIZE + 1,
)
CALM_PLAN = FaultPlan.only(Fault.CONFIRM)

_NO_OUTCOME = object()  # no outcome by deadline + slack
_FAILED_BEFORE_SENDING = (NotDelivered, PayloadMismatch, TooManyPending)
_OUTCOME_TYPES = (
    WsDelegatedOk,
    EndpointRejected,
    NotDelivered,
    Unconfirmed,
    *_FAILED_BEFORE_SENDING,
)


def chaos_seed() -> int:
    forced = os.environ.get("PYKKA_WS_CHAOS_SEED")
    return int(forced) if forced else random.SystemRandom().randrange(2**32)


def confirm(frame: Frame) -> Frame | None:
    request_id = _request_id(frame)
    return None if request_id is None else json.dumps({"id": request_id, "result": "ok"})


class TruthfulConfirm:
    """The server's confirm function: a probe is answered by what the server received.

    The ids received are read from the server's connection logs, each frame
    parsed once (a probe must not make the server slow: its replies would
    miss their deadlines).
    """

    def __init__(self) -> None:
        self.server: ChaosServer | None = None
        self._lock = threading.Lock()
        self._ids: set[object] = set()
        self._parsed: dict[int, int] = {}  # connection index -> frames parsed

    def __call__(self, frame: Frame) -> Frame | None:
        data = json_with_id(frame)
        if data is None or "status_of" not in data or self.server is None:
            return confirm(frame)
        logs = self.server.connection_logs()
        with self._lock:
            for log in logs:
                done = self._parsed.get(log.index, 0)
                self._ids.update(_request_id(received) for received in log.frames[done:])
                self._parsed[log.index] = len(log.frames)
            executed = data["status_of"] in self._ids
        return json.dumps({"id": data["id"], "result": {"executed": executed}})


class ProbingEndpoint(JsonEndpoint):
    """Probes every Unconfirmed request: ``{"id": "probe-<id>", "status_of": <id>}``."""

    def probe(self, request_id: Any, frame: Frame) -> WsDelegatedRequest | None:
        probe_id = f"probe-{request_id}"
        status = json.dumps({"id": probe_id, "status_of": request_id})
        return WsDelegatedRequest(probe_id, status, timeout=PROBE_TIMEOUT)

    def probe_result(self, response: Frame) -> bool | None:
        result = (json_with_id(response) or {}).get("result")
        return result.get("executed") if isinstance(result, dict) else None


def reject(frame: Frame) -> Frame | None:
    request_id = _request_id(frame)
    return None if request_id is None else json.dumps({"id": request_id, "error": "refused"})


def _request_id(frame: Frame) -> int | str | None:
    data = json_with_id(frame)
    request_id = None if data is None else data["id"]
    return request_id if isinstance(request_id, int | str) else None


# -- the run -------------------------------------------------------------------


@dataclass(eq=False)
class Waiter:
    request: WsDelegatedRequest
    future: pykka.Future[Any] | None
    outcome: object = _NO_OUTCOME
    submit_error: BaseException | None = None
    resolved_at: float = 0.0
    ended_at: float = float("inf")  # when the actor settled its future

    @property
    def deadline(self) -> float:
        assert self.request.timeout is not None
        return self.request.created_at + self.request.timeout


@dataclass(eq=False)
class Op:
    """One logical operation: a single request, a joined group or a mismatch pair."""

    kind: str
    request_id: int | str
    mode: WsConfirmMode
    waiters: list[Waiter] = field(default_factory=list)
    first_submitted: float = 0.0
    last_submitted: float = 0.0


@dataclass
class RunConfig:
    seed: int
    threads: int
    ops_per_thread: int | None  # None: run for `duration`
    duration: float
    window: int = 8


@dataclass
class RunResult:
    ops: list[Op]
    resolved: dict[object, list[bool | None]]
    sends: int
    logs: list[ConnectionLog]
    final: WsStats
    fault_counts: dict[Fault, int]
    server_connections: int
    inbound_counts: dict[str, int]
    late_responses: dict[object, int]
    problems: list[str]
    duration: float
    max_pending: int
    max_queued: int
    worst_lateness: float


def caller(
    ref: pykka.ActorRef[Any],
    config: RunConfig,
    index: int,
    ops: list[Op],
    sends: list[int],
    stop_at: float,
) -> None:
    rng = random.Random(f"{config.seed}/caller/{index}")
    window: deque[Waiter] = deque()
    count = 0
    while True:
        if config.ops_per_thread is not None:
            if count >= config.ops_per_thread:
                break
        elif time.monotonic() >= stop_at:
            break
        count += 1
        roll = rng.random()
        if roll < 0.03:
            ref.tell(WsSend(json.dumps({"send": f"{index}-{count}"})))
            sends[index] += 1
            continue
        # Unique ids for every logical operation; alternate int and str ids.
        request_id: int | str = index * 10_000_000 + count if count % 2 else f"c{index}-{count}"
        mode = WsConfirmMode.SENT if rng.random() < 0.3 else WsConfirmMode.CONFIRMED
        pad = "x" * (64 * 1024) if rng.random() < 0.02 else ""
        frame = json.dumps({"id": request_id, "pad": pad})
        options: dict[str, bool] = {}
        if roll < 0.09:
            kind = "join"
            frames = [frame] * rng.randint(2, 4)
        elif roll < 0.12:
            kind = "mismatch"
            frames = [frame, json.dumps({"id": request_id, "pad": pad, "v": 2})]
        elif roll < 0.20:
            kind = "retry"  # re-sent only if it provably never left
            frames, options = [frame], {"retry": True}
        elif roll < 0.28:
            kind = "idempotent"  # re-sent after a lost connection too
            frames, options = [frame], {"retry": True, "idempotent": True}
        else:
            kind = "single"
            frames = [frame]
        op = Op(kind, request_id, mode)
        ops.append(op)
        op.first_submitted = time.monotonic()
        for member in frames:
            timeout = rng.uniform(MIN_TIMEOUT, MAX_TIMEOUT)
            request = WsDelegatedRequest(
                request_id, member, confirm_mode=mode, timeout=timeout, **options
            )
            try:
                future = ref.ask(request, block=False)
            except Exception as exc:
                waiter = Waiter(request, None, outcome=exc, submit_error=exc)
            else:
                waiter = Waiter(request, future)
                future.add_done_callback(partial(_ended, waiter))
                window.append(waiter)
            op.waiters.append(waiter)
        op.last_submitted = time.monotonic()
        while len(window) > config.window:
            resolve(window.popleft())
    while window:
        resolve(window.popleft())


def _ended(waiter: Waiter, _value: object, _error: BaseException | None) -> None:
    waiter.ended_at = time.monotonic()  # on the actor's thread, as it settles the future


def _ambiguous(op: Op) -> int:
    """How many of an operation's waiters ended Unconfirmed(written=True)."""
    return sum(isinstance(w.outcome, Unconfirmed) and w.outcome.written for w in op.waiters)


def resolve(waiter: Waiter) -> None:
    assert waiter.future is not None
    remaining = waiter.deadline + DEADLINE_SLACK - time.monotonic()
    try:
        waiter.outcome = waiter.future.get(timeout=max(0.0, remaining))
    except pykka.Timeout:
        waiter.outcome = _NO_OUTCOME
    except Exception as exc:
        waiter.outcome = exc
    waiter.resolved_at = time.monotonic()


def monitor(
    ref: pykka.ActorRef[Any], done: threading.Event, problems: list[str], peaks: list[int]
) -> None:
    """Invariant 6: the actor stays alive and keeps answering while the run goes on."""
    while not done.wait(0.05):
        if not ref.is_alive():
            problems.append("the actor died during the run")
            return
        try:
            stats = ref.ask(WsGetStats(), timeout=10)
        except pykka.Timeout:
            problems.append("the actor did not answer WsGetStats within 10 s")
            continue
        except pykka.ActorDeadError:
            problems.append("the actor died during the run")
            return
        peaks[0] = max(peaks[0], stats.pending)
        peaks[1] = max(peaks[1], stats.queued)


def run_chaos(config: RunConfig, caplog: pytest.LogCaptureFixture) -> RunResult:
    caplog.set_level(logging.WARNING)
    problems: list[str] = []
    started = time.monotonic()
    truthful = TruthfulConfirm()
    server = ChaosServer(CHAOS_PLAN, confirm=truthful, reject=reject, seed=config.seed).start()
    truthful.server = server
    # Half the seeds run with tight limits, so that TooManyPending and a full
    # outbound queue happen too (the defaults are never reached here).
    tight = random.Random(f"{config.seed}/limits").random() < 0.5
    limits = {"max_pending_requests": 28, "outbound_capacity": 26} if tight else {}
    print(f"limits: {limits or 'defaults'}")  # noqa: T201
    try:
        counting = Tally.start()
        ref = WebSocketActor.start(
            server.url,
            endpoint=ProbingEndpoint(on_open=['{"op": "auth"}']),
            inbound=counting,
            backoff=FAST_BACKOFF,
            open_timeout=2.0,
            write_timeout=0.5,
            close_timeout=0.2,
            ping_interval=0.5,
            ping_timeout=1.0,
            max_size=CLIENT_MAX_SIZE,
            default_timeout=MAX_TIMEOUT,
            probe_delay=PROBE_DELAY,
            **limits,
        )
        per_thread: list[list[Op]] = [[] for _ in range(config.threads)]
        sends = [0] * config.threads
        done = threading.Event()
        peaks = [0, 0]
        watcher = threading.Thread(target=monitor, args=(ref, done, problems, peaks))
        watcher.start()
        stop_at = time.monotonic() + config.duration
        callers = [
            threading.Thread(target=caller, args=(ref, config, i, per_thread[i], sends, stop_at))
            for i in range(config.threads)
        ]
        for thread in callers:
            thread.start()
        join_budget = time.monotonic() + config.duration + 90.0
        for thread in callers:
            thread.join(max(0.0, join_budget - time.monotonic()))
            if thread.is_alive():
                problems.append(f"caller {thread.name} did not finish")
        done.set()
        watcher.join(30)
        ops = [op for ops in per_thread for op in ops]

        # Invariant 4: once the last deadline has passed, nothing is pending
        # and the queues drain (calm the server so that queued sends can go).
        last_deadline = max((w.deadline for op in ops for w in op.waiters), default=0.0)
        server.set_plan(CALM_PLAN)

        def drained() -> WsStats | None:
            stats = ref.ask(WsGetStats(), timeout=10)
            assert isinstance(stats, WsStats)
            return stats if stats.pending == 0 and stats.queued == 0 else None

        wait_until(lambda: time.monotonic() > last_deadline, MAX_TIMEOUT + 60, "the last deadline")
        try:
            wait_until(drained, 10.0 + DEADLINE_SLACK, "pending == 0 and queued == 0")
        except pytest.fail.Exception:
            stats = ref.ask(WsGetStats(), timeout=10)
            problems.append(f"not drained after the last deadline: {stats}")
        # Invariant 6: still alive and useful.
        if not ref.is_alive():
            problems.append("the actor is dead after the run")
        else:
            final_request = WsDelegatedRequest("final", '{"id": "final"}', timeout=10.0)
            try:
                ok = ref.ask(final_request, timeout=10 + DEADLINE_SLACK)
                if not (isinstance(ok, WsDelegatedOk) and ok.confirmed):
                    problems.append(f"a request after the run got {ok!r}")
            except Exception as exc:
                last = ref.ask(WsGetStats(), timeout=10).last_error
                problems.append(
                    f"a request after the run raised {exc!r} (cause {exc.__cause__!r}; "
                    f"last error {last!r}; faults of the last connection "
                    f"{[f.value for f, _ in server.connection_logs()[-1].faults[-5:]]})"
                )
        # Invariant 8: every ambiguous request (not of a join group, which may
        # have been several entries) is resolved, by a probe or a late reply.
        ambiguous = {op.request_id for op in ops if op.kind != "join" and _ambiguous(op)}

        def all_resolved() -> dict[object, list[bool | None]] | None:
            told = counting.ask("resolved", timeout=10)
            return told if ambiguous <= told.keys() else None

        try:
            wait_until(all_resolved, 30.0, "every ambiguous request resolved")
        except pytest.fail.Exception:
            missing = ambiguous - counting.ask("resolved", timeout=10).keys()
            problems.append(f"{len(missing)} ambiguous requests never resolved: {missing}")
        final = ref.ask(WsGetStats(), timeout=10)
        inbound_counts, late_responses = counting.ask("counts", timeout=10)
        resolved = counting.ask("resolved", timeout=10)
        ref.stop(timeout=30)
        counting.stop(timeout=10)
        # Invariant 5: no library thread after stop.
        try:
            wait_no_library_threads(10.0)
        except pytest.fail.Exception:
            problems.append("library threads alive after stop")
    finally:
        pykka.ActorRegistry.stop_all()
        server.stop(timeout=15)
    logs = server.connection_logs()
    problems.extend(
        f"ERROR logged by {record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.levelno >= logging.ERROR
        and record.name.startswith("pykka_ws")
        and not record.name.startswith("pykka_ws.testing")
    )
    return RunResult(
        ops=ops,
        resolved=resolved,
        sends=sum(sends),
        logs=logs,
        final=final,
        fault_counts=server.fault_counts(),
        server_connections=server.connections_accepted,
        inbound_counts=inbound_counts,
        late_responses=late_responses,
        problems=problems,
        duration=time.monotonic() - started,
        max_pending=peaks[0],
        max_queued=peaks[1],
        worst_lateness=max(
            (w.resolved_at - w.deadline for op in ops for w in op.waiters if w.future is not None),
            default=0.0,
        ),
    )


# -- the checks ------------------------------------------------------------------


def check_invariants(result: RunResult) -> tuple[list[str], int]:
    """Return the problems found, and how many join groups were checked as one frame."""
    problems = list(result.problems)
    groups_at_once = 0
    extra_copies = 0  # copies of retried requests on the wire beyond the first
    seen_frames: Counter[Frame] = Counter()
    seen_ids: Counter[object] = Counter()
    first_seen: dict[object, float] = {}
    accepted_at: dict[object, list[float]] = {}  # request id -> its connections' accept times
    rejected_ids: set[object] = set()
    for log in result.logs:
        for frame, at in zip(log.frames, log.received_at, strict=True):
            seen_frames[frame] += 1
            request_id = _request_id(frame)
            if request_id is not None:
                seen_ids[request_id] += 1
                first_seen[request_id] = min(first_seen.get(request_id, at), at)
                accepted_at.setdefault(request_id, []).append(log.accepted_at)
        rejected_ids.update(_request_id(f) for fault, f in log.faults if fault is Fault.REJECT)

    for op in result.ops:
        label = f"{op.kind} {op.request_id!r} ({op.mode.name})"
        outcomes = [w.outcome for w in op.waiters]
        # 1. exactly one outcome of the contract's, by the deadline + slack.
        for waiter in op.waiters:
            outcome = waiter.outcome
            if outcome is _NO_OUTCOME:
                problems.append(f"{label}: no outcome by its deadline + {DEADLINE_SLACK} s")
            elif not isinstance(outcome, _OUTCOME_TYPES):
                problems.append(f"{label}: outcome outside the contract: {outcome!r}")
            elif isinstance(outcome, WsDelegatedOk):
                if outcome.request_id != op.request_id:
                    problems.append(f"{label}: ok for another id: {outcome!r}")
                if outcome.confirmed != (op.mode is WsConfirmMode.CONFIRMED):
                    problems.append(f"{label}: {outcome!r} does not fit the mode")
                if outcome.confirmed and _request_id(outcome.response or "") != op.request_id:
                    problems.append(f"{label}: confirmed with a reply to another id")
            elif isinstance(outcome, Unconfirmed):
                if op.mode is WsConfirmMode.SENT and outcome.written:
                    problems.append(f"{label}: SENT and written, yet {outcome!r}")
            elif isinstance(outcome, EndpointRejected) and (
                op.mode is WsConfirmMode.SENT or _request_id(outcome.response) != op.request_id
            ):
                problems.append(f"{label}: rejected wrongly: {outcome!r}")
        # Answers prove the server saw the request.
        if (
            any(
                isinstance(o, EndpointRejected) or (isinstance(o, WsDelegatedOk) and o.confirmed)
                for o in outcomes
            )
            and not seen_ids[op.request_id]
        ):
            problems.append(f"{label}: answered, yet the server never received it")

        frames = {w.request.frame for w in op.waiters}
        if op.kind in {"retry", "idempotent"}:
            # 7. no attempt after the request ended: none of its frames is on a
            # connection the server accepted after its outcome was settled.
            (waiter,) = op.waiters
            late = [at for at in accepted_at.get(op.request_id, []) if at > waiter.ended_at]
            if late:
                problems.append(
                    f"{label}: written on a connection accepted {late[0] - waiter.ended_at:.3f} s"
                    f" after it ended ({waiter.outcome!r})"
                )
            extra_copies += max(0, seen_frames[waiter.request.frame] - 1)
        if op.kind in {"single", "mismatch", "retry", "idempotent"}:
            for waiter in op.waiters:
                seen = seen_frames[waiter.request.frame]
                # 2. failed before sending: never received by the server.
                if isinstance(waiter.outcome, _FAILED_BEFORE_SENDING) and seen:
                    problems.append(
                        f"{label}: {type(waiter.outcome).__name__}, yet the server "
                        f"received its frame {seen} time(s)"
                    )
                # 3, 7. one request, at most one frame, whatever reconnections
                # happen, unless it is idempotent.
                if seen > 1 and op.kind != "idempotent":
                    problems.append(f"{label}: one request, {seen} frames on the wire")
            if op.kind == "mismatch" and isinstance(op.waiters[0].outcome, PayloadMismatch):
                problems.append(f"{label}: the first of a mismatch pair got PayloadMismatch")
        else:  # join
            (frame,) = frames
            seen = seen_frames[frame]
            if all(isinstance(o, NotDelivered) for o in outcomes) and seen:
                problems.append(f"{label}: every joiner NotDelivered, yet {seen} frame(s) seen")
            if any(isinstance(o, PayloadMismatch) for o in outcomes):
                problems.append(f"{label}: a joiner with the same payload got PayloadMismatch")
            if seen > len(op.waiters):
                problems.append(f"{label}: {len(op.waiters)} joiners, {seen} frames")
            # All joiners were asked back to back, before the server saw the
            # frame: they were in flight at once and must share one frame. (A
            # group whose asks were spread out, e.g. a preempted caller, may
            # legitimately have become two entries one after the other.)
            if (
                op.last_submitted - op.first_submitted < 0.002
                and op.last_submitted < first_seen.get(op.request_id, float("inf"))
            ):
                groups_at_once += 1
                if seen > 1:
                    problems.append(f"{label}: joined at once, yet {seen} frames on the wire")
    # 7. every re-send counted (a cut write is one the server never got whole).
    if extra_copies > result.final.resends:
        problems.append(f"{extra_copies} extra copies on the wire, {result.final.resends} resends")
    # Late responses: for requests that ended without their reply, never twice.
    known = {op.request_id: op for op in result.ops}
    probed = {f"probe-{op.request_id}" for op in result.ops}
    for request_id, count in result.late_responses.items():
        late_op = known.get(request_id)  # type: ignore[call-overload]
        if late_op is None:
            if request_id != "final" and request_id not in probed:
                problems.append(f"a WsLateResponse for an id never asked: {request_id!r}")
            continue
        if count > seen_ids[request_id]:
            problems.append(f"{request_id!r}: {count} late responses for fewer frames sent")
        if late_op.kind == "single" and any(
            isinstance(w.outcome, EndpointRejected)
            or (isinstance(w.outcome, WsDelegatedOk) and w.outcome.confirmed)
            for w in late_op.waiters
        ):
            problems.append(f"{request_id!r}: answered, and its reply told again as late")
    problems.extend(check_resolutions(result, seen_ids, first_seen, rejected_ids))
    # The actor's own count agrees with what the callers saw (- 1: the final
    # request; the probes' outcomes are counted too).
    waiters = sum(len(op.waiters) for op in result.ops)
    counted = sum(result.final.outcomes.values()) - 1
    if not len(result.ops) <= counted <= waiters + result.final.probes:
        problems.append(
            f"{counted} outcomes counted for {len(result.ops)} ops, {waiters} waiters"
            f" and {result.final.probes} probes"
        )
    return problems, groups_at_once


def check_resolutions(
    result: RunResult,
    seen_ids: Counter[object],
    first_seen: dict[object, float],
    rejected_ids: set[object],
) -> list[str]:
    """Invariant 8: what `WsResolved` says agrees with what the server saw."""
    problems: list[str] = []
    known = {op.request_id: op for op in result.ops}
    probe_seen: dict[object, float] = {}  # request id -> when the server got its first probe
    for log in result.logs:
        for frame, at in zip(log.frames, log.received_at, strict=True):
            data = json_with_id(frame)
            if data is not None and "status_of" in data:
                asked = data["status_of"]
                probe_seen[asked] = min(probe_seen.get(asked, at), at)
    for request_id, answers in result.resolved.items():
        op = known.get(request_id)  # type: ignore[call-overload]
        ambiguous = 0 if op is None else _ambiguous(op)
        if op is not None and op.kind != "join" and len(answers) != 1:
            problems.append(f"{request_id!r}: {len(answers)} WsResolved for one entry")
        if len(answers) > ambiguous:
            problems.append(
                f"{request_id!r}: {len(answers)} WsResolved for {ambiguous}"
                " Unconfirmed(written=True) outcome(s)"
            )
        for executed in answers:
            if executed is True and not seen_ids[request_id]:
                problems.append(f"{request_id!r}: resolved executed, never received")
            received_before_probe = first_seen.get(request_id, float("inf")) < probe_seen.get(
                request_id, float("inf")
            )
            if executed is False and received_before_probe and request_id not in rejected_ids:
                problems.append(f"{request_id!r}: resolved not executed, yet received and probed")
    return problems


def report(config: RunConfig, result: RunResult) -> str:
    outcomes: Counter[str] = Counter()
    for op in result.ops:
        for waiter in op.waiters:
            outcome = waiter.outcome
            if isinstance(outcome, WsDelegatedOk):
                outcomes["confirmed" if outcome.confirmed else "sent"] += 1
            elif outcome is _NO_OUTCOME:
                outcomes["NONE"] += 1
            else:
                outcomes[type(outcome).__name__] += 1
    waiters = sum(len(op.waiters) for op in result.ops)
    kinds = Counter(op.kind for op in result.ops)
    faults = {f.value: n for f, n in result.fault_counts.items() if n}
    return (
        f"chaos seed={config.seed} (replay: PYKKA_WS_CHAOS_SEED={config.seed}): "
        f"{waiters} requests ({dict(kinds)} ops, {result.sends} sends) by {config.threads} "
        f"threads in {result.duration:.1f} s; connection failures: "
        f"reconnects={result.final.reconnects}, server connections={result.server_connections}, "
        f"frames received by the server={sum(len(log.frames) for log in result.logs)}; "
        f"outcomes={dict(outcomes)}; resends={result.final.resends}, "
        f"probes={result.final.probes}, resolved={len(result.resolved)}; "
        f"faults={faults}; inbound={result.inbound_counts}; "
        f"peak pending={result.max_pending}, peak queued={result.max_queued}; "
        f"latest outcome collected {result.worst_lateness:+.2f} s from its deadline"
    )


def run_and_check(config: RunConfig, caplog: pytest.LogCaptureFixture) -> RunResult:
    print(f"\nchaos seed={config.seed}")  # noqa: T201 - printed first, in case the run hangs
    result = run_chaos(config, caplog)
    summary = report(config, result)
    print(summary)  # noqa: T201 - the run's figures belong in the test output
    problems, groups_at_once = check_invariants(result)
    joins = sum(op.kind == "join" for op in result.ops)
    print(f"join groups checked as in flight at once: {groups_at_once}/{joins}")  # noqa: T201
    shown = "\n  ".join(problems[:25])
    more = f"\n  ... and {len(problems) - 25} more" if len(problems) > 25 else ""
    assert not problems, (
        f"seed={config.seed}: {len(problems)} problem(s):\n  {shown}{more}\n{summary}"
    )
    return result


def test_thousands_of_requests_through_a_chaotic_server_keep_every_invariant(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = RunConfig(seed=chaos_seed(), threads=4, ops_per_thread=650, duration=45.0)
    result = run_and_check(config, caplog)
    # The run must really have been chaotic, or it proves little.
    assert result.final.reconnects >= 10, f"seed={config.seed}: too few connection failures"
    assert sum(len(op.waiters) for op in result.ops) >= 2000
    # ... and have taken the recovery paths it checks.
    assert result.final.resends >= 1, f"seed={config.seed}: nothing was re-sent"
    assert result.final.probes >= 1, f"seed={config.seed}: nothing was probed"
    assert result.resolved, f"seed={config.seed}: nothing was resolved"


SOAK_SECONDS = float(os.environ.get("PYKKA_WS_SOAK_SECONDS", "60"))


@pytest.mark.skipif(os.environ.get("PYKKA_WS_SOAK") != "1", reason="soak: set PYKKA_WS_SOAK=1")
@pytest.mark.timeout(SOAK_SECONDS + 300)
def test_soak_under_chaos_keeps_every_invariant(caplog: pytest.LogCaptureFixture) -> None:
    duration = SOAK_SECONDS
    config = RunConfig(seed=chaos_seed(), threads=6, ops_per_thread=None, duration=duration)
    run_and_check(config, caplog)


# -- chaos for sequenced streams: gaps, duplicates, drops ---------------------------------


STREAMS = ("trades", "book", "ticker")


class Sequenced(JsonEndpoint):
    """Streams numbered by ``seq`` in their ``channel``."""

    def parse(self, frame: Frame) -> Any:
        return json.loads(frame)

    def sequence(self, message: Any) -> tuple[Any, int] | None:
        if isinstance(message, dict) and "seq" in message:
            return message["channel"], message["seq"]
        return None


def subscribed(frame: Frame) -> Frame | None:
    data = json_with_id(frame)
    return None if data is None else json.dumps({"id": data["id"], "result": "subscribed"})


def push_chaos(
    srv: WsTestServer, rng: random.Random, steps: int
) -> tuple[Counter[str], dict[str, int], int]:
    """Push numbered frames with skips, repeats and dropped connections.

    Returns the frames written per stream (a frame written to two
    connections during a reconnect counts twice), the last number per
    stream, and how many times the connections were dropped.
    """
    written: Counter[str] = Counter()
    last = dict.fromkeys(STREAMS, 0)
    drops = 0
    for _ in range(steps):
        key = rng.choice(STREAMS)
        roll = rng.random()
        if roll < 0.004:
            drops += 1
            accepted = srv.connections_accepted
            srv.close_connections(abrupt=rng.random() < 0.5)
            srv.wait_for_connections(accepted + 1, timeout=10)  # numbers sent meanwhile: lost
            continue
        if roll < 0.05:
            number = last[key] + rng.randint(2, 4)  # a skip: a gap
        elif roll < 0.10 and last[key] > 1:
            number = rng.randint(max(1, last[key] - 3), last[key])  # a repeat: a duplicate
        else:
            number = last[key] + 1
        last[key] = max(last[key], number)
        written[key] += srv.send_to_all(json.dumps({"channel": key, "seq": number}))
    return written, last, drops


def test_sequenced_streams_through_gaps_duplicates_and_drops_keep_every_invariant() -> None:
    """Per stream and connection: order kept, no number twice, each jump one WsGap."""
    seed = chaos_seed()
    print(f"\ngap chaos seed={seed}")  # noqa: T201 - to replay a failure
    rng = random.Random(f"{seed}/gaps")
    with WsTestServer(subscribed) as srv:
        sink: queue.Queue[Any] = queue.Queue()
        ref = WebSocketActor.start(
            srv.url, endpoint=Sequenced(), inbound=Collector.start(sink), backoff=FAST_BACKOFF
        )
        for number, key in enumerate(STREAMS, 1):
            subscribe = json.dumps({"id": number, "subscribe": key})
            ref.ask(WsSubscribe(key, subscribe, request_id=number), timeout=10)
        written, last, drops = push_chaos(srv, rng, 3000)
        srv.wait_for_open_connections(1)
        for key in STREAMS:  # a fence per stream: the last number, once everything is read
            written[key] += srv.send_to_all(json.dumps({"channel": key, "seq": last[key] + 1}))
        events: list[Any] = []
        fenced: set[str] = set()
        deadline = time.monotonic() + 30
        while fenced != set(STREAMS):
            event = sink.get(timeout=max(0.0, deadline - time.monotonic()))
            events.append(event)
            if (
                isinstance(event, WsInbound)
                and event.message["seq"] == last[event.message["channel"]] + 1
            ):
                fenced.add(event.message["channel"])
        final = stats(ref)
        subscriptions = Counter(
            data["subscribe"]
            for frame in srv.received
            if (data := json_with_id(frame)) is not None and "subscribe" in data
        )
        connections = srv.connections_accepted
        ref.stop()
    problems: list[str] = []
    gaps_told = 0
    for key in STREAMS:
        # A new connection numbers each stream afresh (its replayed
        # subscription's snapshot is the new baseline): check per connection.
        mine = [
            e
            for e in events
            if (isinstance(e, WsInbound) and e.message["channel"] == key)
            or (isinstance(e, WsGap) and e.key == key)
            or isinstance(e, WsConnected)
        ]
        numbers = [e.message["seq"] for e in mine if isinstance(e, WsInbound)]
        previous: Any = None
        gap_before: WsGap | None = None
        for event in mine:
            if isinstance(event, WsConnected):
                previous = gap_before = None
                continue
            if isinstance(event, WsGap):
                gaps_told += 1
                if gap_before is not None or not event.resubscribed:
                    problems.append(f"{key}: {event!r} after {gap_before!r}")
                gap_before = event
                continue
            number = event.message["seq"]
            if previous is not None and number <= previous:
                problems.append(f"{key}: {number} delivered after {previous}")
            expected = None if previous is None or number == previous + 1 else previous + 1
            told = None if gap_before is None else (gap_before.expected, gap_before.received)
            if told != (None if expected is None else (expected, number)):
                problems.append(f"{key}: {previous} then {number}, told {gap_before!r}")
            previous, gap_before = number, None
        delivered = len(numbers)
        if delivered > written[key]:
            problems.append(f"{key}: {delivered} delivered of {written[key]} written")
        gaps_of_key = sum(isinstance(e, WsGap) for e in mine)
        # Resubscribed on each new connection, and once per gap: never more.
        if subscriptions[key] > connections + gaps_of_key:
            problems.append(
                f"{key}: {subscriptions[key]} subscriptions for {connections} connections"
                f" and {gaps_of_key} gaps"
            )
    inbound = sum(isinstance(e, WsInbound) for e in events)
    if inbound + final.duplicates > sum(written.values()):
        problems.append(f"{inbound} delivered + {final.duplicates} duplicates > written")
    if final.gaps != gaps_told:
        problems.append(f"stats say {final.gaps} gaps, {gaps_told} told")
    if final.reconnects > drops:
        problems.append(f"{final.reconnects} reconnects for {drops} drops: a gap reconnected")
    summary = (
        f"seed={seed}: {inbound} delivered, {final.gaps} gaps, {final.duplicates} duplicates, "
        f"{drops} drops, {connections} connections, subscriptions {dict(subscriptions)}"
    )
    print(summary)  # noqa: T201
    assert not problems, f"{summary}\n  " + "\n  ".join(problems[:25])
    # The run took every path it checks.
    assert final.gaps >= 10, summary
    assert final.duplicates >= 10, summary
    assert drops >= 2, summary
    # (That a gap's resubscription reaches the wire is shown exactly in
    # test_recovery.py; here it may rightly join a replay still in flight.)


# -- hostile servers: TLS, proxies, redirects -------------------------------------------
#
# Verification cannot be turned off by accident: with no ``ssl=``, a wss://
# URL verifies the certificate and the host name against the system's CAs,
# whatever the process did to Python's HTTPS defaults; only a context passed
# on purpose with verification off connects to an untrusted server. (Tests of a
# bad certificate *with* a verifying ``ssl=`` context, and of the wrong host
# name, are in test_connection.py.)


@pytest.fixture(params=["untrusted-ca", "self-signed"])
def untrusted_server(
    request: pytest.FixtureRequest, ca: trustme.CA, tmp_path: Path
) -> Iterator[WsTestServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if request.param == "untrusted-ca":
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    else:  # the CA's own certificate: self-signed
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        ca.cert_pem.write_to_path(str(cert))
        ca.private_key_pem.write_to_path(str(key))
        context.load_cert_chain(cert, key)
    with WsTestServer(json_reply, ssl=context) as server:
        yield server


def wss_url(server: WsTestServer) -> str:
    return f"wss://127.0.0.1:{server.port}"


def test_wss_without_an_ssl_argument_refuses_an_untrusted_certificate(
    untrusted_server: WsTestServer,
) -> None:
    ref = WebSocketActor.start(
        wss_url(untrusted_server), endpoint=JsonEndpoint(), backoff=FAST_BACKOFF
    )
    wait_state(ref, "closed", 10)  # the refusal
    stats = ref.ask(WsGetStats(), timeout=10)
    assert "certificate" in (stats.last_error or "").lower(), stats.last_error
    with pytest.raises(NotDelivered):
        ref.ask(WsDelegatedRequest(1, req_frame(1), timeout=1.0), timeout=10)
    assert untrusted_server.connections_accepted == 0
    assert untrusted_server.received == []


def test_a_process_wide_https_verification_hack_does_not_turn_verification_off(
    untrusted_server: WsTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What some code does to make urllib skip verification, process-wide.
    monkeypatch.setattr(ssl, "_create_default_https_context", ssl._create_unverified_context)
    monkeypatch.setenv("PYTHONHTTPSVERIFY", "0")
    ref = WebSocketActor.start(
        wss_url(untrusted_server), endpoint=JsonEndpoint(), backoff=FAST_BACKOFF
    )
    wait_state(ref, "closed", 10)  # the refusal
    assert "certificate" in (ref.ask(WsGetStats(), timeout=10).last_error or "").lower()
    assert untrusted_server.connections_accepted == 0


def test_only_a_context_with_verification_explicitly_off_connects_to_an_untrusted_server(
    untrusted_server: WsTestServer,
) -> None:
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    ref = WebSocketActor.start(
        wss_url(untrusted_server), endpoint=JsonEndpoint(), backoff=FAST_BACKOFF, ssl=unverified
    )
    ok = ref.ask(WsDelegatedRequest(1, req_frame(1), timeout=10.0), timeout=15)
    assert ok.confirmed
    assert untrusted_server.connections_accepted == 1


NOT_A_CONTEXT = [False, True, 0, "CERT_NONE", {"verify": False}, ssl.CERT_NONE]


@pytest.mark.parametrize("value", NOT_A_CONTEXT, ids=repr)
def test_an_ssl_argument_that_is_not_a_context_is_refused_at_start(value: Any) -> None:
    # ssl=False must not be read as "no verification" (nor crash every
    # connection attempt later): it is refused in the calling thread.
    with pytest.raises(TypeError, match="ssl"):
        WebSocketActor.start("wss://127.0.0.1:9", ssl=value).stop()
    with pytest.raises(TypeError, match="ssl"):
        WebSocketActor.start("ws://127.0.0.1:9", ssl=value).stop()


PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


def test_proxy_environment_variables_do_not_divert_the_connection(
    server: WsTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, "http://127.0.0.1:9")
        monkeypatch.setenv(name.lower(), "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    ref = WebSocketActor.start(server.url, endpoint=JsonEndpoint(), backoff=FAST_BACKOFF)
    assert ref.ask(WsDelegatedRequest(1, req_frame(1), timeout=10.0), timeout=15).confirmed
    assert server.connections_accepted == 1


@contextlib.contextmanager
def redirecting_server(location: str) -> Iterator[str]:
    """A raw HTTP server answering every handshake with a 302 to ``location``."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                request = b""
                try:
                    while b"\r\n\r\n" not in request and len(request) < 65536:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        request += chunk
                    conn.sendall(
                        b"HTTP/1.1 302 Found\r\nLocation: " + location.encode() + b"\r\n"
                        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                except OSError:
                    continue

    thread = threading.Thread(target=serve, name="test-redirecting-server")
    thread.start()
    try:
        yield f"ws://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(10)
        listener.close()


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_a_redirect_is_never_followed_to_another_server(server: WsTestServer, scheme: str) -> None:
    # A hostile (or hijacked) endpoint redirecting the handshake elsewhere,
    # here to a server that would happily serve anyone.
    with redirecting_server(f"{scheme}://127.0.0.1:{server.port}/") as url:
        ref = WebSocketActor.start(url, endpoint=JsonEndpoint(), backoff=FAST_BACKOFF)
        wait_until(
            lambda: "302" in (ref.ask(WsGetStats(), timeout=10).last_error or ""),
            10,
            "the redirect to be refused",
        )
        with pytest.raises(NotDelivered):
            ref.ask(WsDelegatedRequest(1, req_frame(1), timeout=0.5), timeout=10)
        ref.stop(timeout=10)
    assert server.connections_accepted == 0


@pytest.mark.parametrize("write_timeout", [None, 30.0])
def test_stop_with_writes_stuck_on_a_peer_that_stopped_reading_is_prompt_and_honest(
    write_timeout: float | None,
) -> None:
    # The peer stops reading (a blackholed proxy) while 1 MiB frames are being
    # written, and no write deadline will save the writer. stop() must shut
    # the socket down, return, end every request, and call NotDelivered only
    # what the server can never receive complete.
    with (
        WsTestServer(None) as server,
        FaultProxy("127.0.0.1", server.port) as proxy,
    ):
        ref = WebSocketActor.start(
            proxy.url,
            endpoint=JsonEndpoint(),
            write_timeout=write_timeout,
            compression=None,
            ping_interval=None,
        )
        wait_state(ref, "open", 10)
        proxy.blackhole()
        pad = "x" * 2**20
        requests = [WsDelegatedRequest(i, req_frame(i, pad=pad), timeout=60.0) for i in range(24)]
        futures = [ref.ask(request, block=False) for request in requests]
        # Wait until frames were handed over for writing, then give the writer
        # a moment to fill the socket's buffers and block (24 MiB cannot fit).
        # The assertions hold whenever stop() comes; this only makes it likely
        # to come while a write is stuck.
        wait_until(
            lambda: ref.ask(WsGetStats(), timeout=10).queued < len(requests),
            10,
            "frames handed over for writing",
        )
        pause(0.5)
        started = time.monotonic()
        ref.stop(timeout=20)
        assert time.monotonic() - started < 5.0
        wait_no_library_threads(10)
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.get(timeout=5))
            except (NotDelivered, Unconfirmed) as error:
                outcomes.append(error)
        proxy.restore()  # whatever the proxy holds may now reach the server
        server.wait_for_open_connections(0, timeout=10)
        received = set(server.received)
    kinds = Counter(
        f"{type(o).__name__}(written={o.written})"
        if isinstance(o, Unconfirmed)
        else type(o).__name__
        for o in outcomes
    )
    print(f"\nstop with writes stuck: {dict(kinds)}")  # noqa: T201
    assert any(isinstance(o, NotDelivered) for o in outcomes)
    for request, outcome in zip(requests, outcomes, strict=True):
        assert isinstance(outcome, NotDelivered | Unconfirmed), outcome
        if isinstance(outcome, NotDelivered):
            assert request.frame not in received, f"request {request.request_id}"
