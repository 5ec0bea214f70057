"""Prometheus metrics of `WebSocketActor` connections: a custom collector.

`StatsCollector` is a `prometheus_client` custom collector: at each scrape it
asks every actor it watches for a `WsStats` snapshot (all of them at once, with
one bounded wait) and turns the snapshots into metric families. It needs the
``prometheus`` extra::

    pip install 'pykka-ws[prometheus]'

Example::

    from prometheus_client import REGISTRY, start_http_server
    from pykka_ws.prometheus import StatsCollector

    REGISTRY.register(StatsCollector({"deribit": deribit_ref, "kraken": kraken_ref}))
    start_http_server(9100)

Connections and their ``connection`` label:

- one `pykka.ActorRef`: no ``connection`` label;
- a mapping ``{name: ref}``: ``connection="<name>"``;
- a sequence of refs: ``connection="0"``, ``"1"``... (their position).

The families, with the default prefix ``pykka_ws`` (the ``connection`` label
left out):

- ``pykka_ws_up``: 1 if the actor answered this scrape, 0 if it is dead
  (stopped) or did not answer within ``timeout``. Such a connection has no
  other sample in that scrape.
- ``pykka_ws_state{state=...}``: 1 for the connection's state, 0 for each
  other one (``connecting``, ``open``, ``backoff``, ``closed``, ``stopped``).
- ``pykka_ws_outcomes_total{outcome=...}``: requests ended, by outcome
  (every outcome always present, 0 until one ends so).
- ``pykka_ws_pending``, ``pykka_ws_queued``, ``pykka_ws_subscriptions``:
  request ids in flight, frames waiting for the writer, runtime subscriptions.
- ``pykka_ws_connection_start_time_seconds``: when the current connection
  opened (Unix time); absent while not connected.
- ``pykka_ws_round_trip_seconds{quantile="0.5"|"0.99"}``: heartbeat and
  keepalive round trips (`WsStats.rtt_p50`, ``rtt_p99``); absent before the
  first sample.
- Counters (``<prefix>_<name>_total``), one per `WsStats` field:
  ``connection_attempts`` (``attempts``), ``reconnects``,
  ``received_frames`` / ``sent_frames`` (``frames_in`` / ``frames_out``),
  ``received_bytes`` / ``sent_bytes`` (``bytes_in`` / ``bytes_out``),
  ``sends_refused``, ``stray_replies``, ``inbound_dropped``,
  ``reply_to_dropped``, ``resends``, ``gaps``, ``duplicates``, ``probes``,
  ``hook_errors`` and ``internal_errors`` (see `COUNTERS` and `GAUGES`).

`WsStats.url` and ``last_error`` are not exported: a URL may carry a token in
its query string, and an error's text is unbounded label cardinality.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ImportError as exc:
    msg = (
        "pykka_ws.prometheus needs prometheus_client: "
        "install it with pip install 'pykka-ws[prometheus]'"
    )
    raise ModuleNotFoundError(msg, name=exc.name) from exc

import pykka

from pykka_ws._actor import WebSocketActor
from pykka_ws._lifecycle import BACKOFF, CLOSED, CONNECTING, OPEN, STOPPED
from pykka_ws._messages import WsGetStats, WsStats
from pykka_ws._outcomes import OUTCOMES

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

__all__ = ["COUNTERS", "GAUGES", "QUANTILES", "STATES", "StatsCollector"]

logger = logging.getLogger("pykka_ws")

STATES = (CONNECTING, OPEN, BACKOFF, CLOSED, STOPPED)
"""The values of the ``state`` label of ``<prefix>_state`` (`WsStats.state`)."""

COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("connection_attempts", "attempts", "Connection attempts made, successful or not."),
    ("reconnects", "reconnects", "Connections opened after the first one."),
    ("received_frames", "frames_in", "Frames received."),
    ("sent_frames", "frames_out", "Frames written to the socket."),
    ("received_bytes", "bytes_in", "Payload bytes received (text counted as UTF-8)."),
    ("sent_bytes", "bytes_out", "Bytes written to the socket, WebSocket framing included."),
    ("sends_refused", "sends_refused", "WsSend frames refused because the queue was full."),
    (
        "stray_replies",
        "stray_replies",
        "Replies matching a request whose frame had not started writing (confirmed nothing).",
    ),
    (
        "inbound_dropped",
        "inbound_dropped",
        "Inbound messages not told to a full subscriber (subscriber_overflow='drop').",
    ),
    (
        "reply_to_dropped",
        "reply_to_dropped",
        "WsOutcome messages not told because the request's reply_to actor was dead.",
    ),
    ("resends", "resends", "Frames written again by outcome-driven retry."),
    ("gaps", "gaps", "Sequence gaps seen (WsGap)."),
    ("duplicates", "duplicates", "Sequenced messages dropped as duplicates."),
    ("probes", "probes", "Probes sent to resolve Unconfirmed requests."),
    (
        "hook_errors",
        "hook_errors",
        "Exceptions raised by (or garbage returned from) endpoint hooks, and subscriber failures.",
    ),
    (
        "internal_errors",
        "internal_errors",
        "Bugs of pykka-ws caught while handling a message (should be 0: please report).",
    ),
)
"""Counters: (name without prefix or ``_total``, `WsStats` field, help text)."""

GAUGES: tuple[tuple[str, str, str], ...] = (
    ("pending", "pending", "Distinct request ids in flight."),
    ("queued", "queued", "Frames waiting to be handed to the writer."),
    ("subscriptions", "subscriptions", "Runtime subscriptions, replayed on every reconnect."),
)
"""Integer gauges: (name without prefix, `WsStats` field, help text)."""

QUANTILES: tuple[tuple[str, str], ...] = (("0.5", "rtt_p50"), ("0.99", "rtt_p99"))
"""Round-trip quantiles: (``quantile`` label value, `WsStats` field)."""

_Family: TypeAlias = GaugeMetricFamily | CounterMetricFamily

_PREFIX = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_LABEL = "connection"


class StatsCollector:
    """A `prometheus_client` collector of `WebSocketActor` stats (`WsStats`).

    Register it once (``registry.register(collector)``); each scrape then
    asks every actor for its `WsStats` and yields the families listed in the
    module's docstring. An actor that is dead, or does not answer within
    ``timeout`` seconds (its thread stuck in a hook, say), is reported with
    ``<prefix>_up 0`` and skipped: a scrape never raises for an actor and
    never waits longer than ``timeout`` in all (a late answer is dropped
    when it comes: each scrape asks afresh). The collector keeps no state
    between scrapes and may be collected from several threads at once.

    Args:
        ref_or_refs: The actor to watch (no ``connection`` label), a mapping
            of names to actors (``connection="<name>"``), or a sequence of
            actors (``connection="<index>"``). Each must be the `ActorRef` of
            a `WebSocketActor`, at most once.
        prefix: The metric names' prefix (``[a-zA-Z_][a-zA-Z0-9_]*``).
        timeout: Seconds a scrape waits for all the actors' answers (finite,
            > 0).

    Raises:
        TypeError: If ``ref_or_refs`` is not a ref, a mapping or a sequence
            of refs of `WebSocketActor` (or a name is not a `str`), or
            ``prefix`` is not a `str`, or ``timeout`` not a number.
        ValueError: If there is no ref, the same actor is given twice, a name
            is empty, ``prefix`` is not a valid metric name, or ``timeout``
            is not finite and positive.
    """

    def __init__(
        self,
        ref_or_refs: pykka.ActorRef[Any]
        | Mapping[str, pykka.ActorRef[Any]]
        | Sequence[pykka.ActorRef[Any]],
        *,
        prefix: str = "pykka_ws",
        timeout: float = 2.0,
    ) -> None:
        self._named, self._refs = _check_refs(ref_or_refs)
        self._prefix = _check_prefix(prefix)
        self._timeout = _check_scrape_timeout(timeout)

    @property
    def prefix(self) -> str:
        """The prefix of every metric name."""
        return self._prefix

    @property
    def timeout(self) -> float:
        """Seconds a scrape waits for the actors' answers."""
        return self._timeout

    @property
    def connections(self) -> dict[str, pykka.ActorRef[Any]]:
        """The actors watched, by ``connection`` label (``""`` for a single, unlabelled one)."""
        return dict(self._refs)

    def describe(self) -> Iterator[Metric]:
        """Yield the families without samples (for the registry's name checks).

        `prometheus_client.CollectorRegistry.register` calls this, so
        registering does not ask the actors, and two collectors with the same
        prefix in one registry raise its ``Duplicated timeseries`` error.
        """
        yield from self._families().values()

    def collect(self) -> Iterator[Metric]:
        """Ask every actor for its stats and yield the metric families.

        Families without a sample in this scrape are left out.
        """
        families = self._families()
        for name, stats in self._scrape():
            base = [name] if self._named else []
            families["up"].add_metric(base, 0 if stats is None else 1)
            if stats is not None:
                self._add(families, base, stats)
        for family in families.values():
            if family.samples:
                yield family

    # -- scraping -------------------------------------------------------------

    def _scrape(self) -> list[tuple[str, WsStats | None]]:
        """Ask every actor at once, then wait for their answers until one deadline."""
        deadline = time.monotonic() + self._timeout
        asked: list[tuple[str, pykka.ActorRef[Any], pykka.Future[Any] | None]] = []
        for name, ref in self._refs:
            try:
                future: pykka.Future[Any] | None = ref.ask(WsGetStats(), block=False)
            except Exception:  # a scrape reports, it does not raise
                logger.debug("pykka-ws: could not ask %s for stats", ref, exc_info=True)
                future = None
            asked.append((name, ref, future))
        results: list[tuple[str, WsStats | None]] = []
        for name, ref, future in asked:
            stats = None
            if future is not None:
                try:
                    answer = future.get(timeout=max(0.0, deadline - time.monotonic()))
                except Exception:  # dead (ActorDeadError), or late (Timeout)
                    logger.debug("pykka-ws: no stats from %s", ref, exc_info=True)
                else:
                    if isinstance(answer, WsStats):
                        stats = answer
                    else:
                        logger.warning("pykka-ws: %s answered WsGetStats with %r", ref, answer)
            results.append((name, stats))
        return results

    def _add(self, families: dict[str, _Family], base: list[str], stats: WsStats) -> None:
        """Add one connection's samples (``base``: its label values) to ``families``."""
        states = STATES if stats.state in STATES else (*STATES, stats.state)
        for state in states:
            families["state"].add_metric([*base, state], 1 if state == stats.state else 0)
        outcomes = dict.fromkeys(OUTCOMES, 0)
        outcomes.update(stats.outcomes)
        for outcome, count in outcomes.items():
            families["outcomes"].add_metric([*base, outcome], count)
        for name, attribute, _ in (*GAUGES, *COUNTERS):
            families[name].add_metric(base, getattr(stats, attribute))
        if stats.connected_since is not None:
            families["connection_start_time"].add_metric(base, stats.connected_since)
        for quantile, attribute in QUANTILES:
            value = getattr(stats, attribute)
            if value is not None:
                families["round_trip"].add_metric([*base, quantile], value)

    def _families(self) -> dict[str, _Family]:
        """Fresh, empty families, by short name, in the order they are exposed."""
        p = self._prefix
        base = [_LABEL] if self._named else []
        families: dict[str, _Family] = {
            "up": GaugeMetricFamily(
                f"{p}_up",
                "1 if the actor answered this scrape's WsGetStats in time, else 0.",
                labels=base,
            ),
            "state": GaugeMetricFamily(
                f"{p}_state",
                "The connection's state: 1 for the current one, 0 for the others.",
                labels=[*base, "state"],
            ),
            "outcomes": CounterMetricFamily(
                f"{p}_outcomes",
                "Requests ended, by outcome.",
                labels=[*base, "outcome"],
            ),
        }
        for name, _, documentation in GAUGES:
            families[name] = GaugeMetricFamily(f"{p}_{name}", documentation, labels=base)
        families["connection_start_time"] = GaugeMetricFamily(
            f"{p}_connection_start_time_seconds",
            "When the current connection opened, in seconds since the Unix epoch.",
            labels=base,
        )
        families["round_trip"] = GaugeMetricFamily(
            f"{p}_round_trip_seconds",
            "Round trips of heartbeats and keepalive pings (the last 1024), by quantile.",
            labels=[*base, "quantile"],
        )
        for name, _, documentation in COUNTERS:
            families[name] = CounterMetricFamily(f"{p}_{name}", documentation, labels=base)
        return families


def _check_refs(
    ref_or_refs: object,
) -> tuple[bool, list[tuple[str, pykka.ActorRef[Any]]]]:
    """Whether the refs are named, and ``(label, ref)`` for each one."""
    if isinstance(ref_or_refs, pykka.ActorRef):
        named, items = False, [("", ref_or_refs)]
    elif isinstance(ref_or_refs, Mapping):
        named, items = True, list(ref_or_refs.items())
        for name, _ in items:
            if not isinstance(name, str):
                raise TypeError(f"connection names must be str, not {name!r}")
            if not name:
                raise ValueError("a connection name must not be empty")
    elif isinstance(ref_or_refs, Sequence) and not isinstance(ref_or_refs, str | bytes):
        named, items = True, [(str(index), ref) for index, ref in enumerate(ref_or_refs)]
    else:
        raise TypeError(
            "ref_or_refs must be a pykka.ActorRef, a mapping of names to refs or a sequence "
            f"of refs, not {type(ref_or_refs).__name__}"
        )
    if not items:
        raise ValueError("StatsCollector needs at least one ActorRef")
    seen: dict[int, str] = {}
    for name, ref in items:
        if not isinstance(ref, pykka.ActorRef):
            raise TypeError(f"expected a pykka.ActorRef, not {ref!r}")
        if not issubclass(ref.actor_class, WebSocketActor):
            raise TypeError(f"{ref} is not the ref of a WebSocketActor")
        key = id(ref.actor_inbox)  # two refs to one actor share its inbox
        if key in seen:
            raise ValueError(f"{ref} is given twice ({seen[key]!r} and {name!r})")
        seen[key] = name
    return named, items


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"prefix must match [a-zA-Z_][a-zA-Z0-9_]*, not {prefix!r}")
    return prefix


def _check_scrape_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number, not {type(timeout).__name__}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be finite and > 0, not {timeout!r}")
    return float(timeout)
