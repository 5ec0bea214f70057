"""`WsStats`: a snapshot of a `WebSocketActor`'s counters, taken on its thread.

A part of the owner actor kept apart for size: it reads the counters its
halves keep (hence the private names).
"""

# ruff: noqa: SLF001

from __future__ import annotations

from typing import Any

from pykka_ws._messages import WsStats

__all__ = ["stats_of"]


def stats_of(actor: Any) -> WsStats:
    """A `WsStats` snapshot of a `WebSocketActor` (its own thread only)."""
    core = actor._core
    rtt_p50, rtt_p99 = actor._rtt_percentiles()
    return WsStats(
        state=actor._state,
        connected_since=actor._connected_since,
        reconnects=actor._reconnects,
        pending=len(core.table),
        queued=core.queued,
        frames_in=actor._frames_in,
        frames_out=core.frames_out,
        bytes_in=actor._bytes_in,
        bytes_out=core.bytes_out,
        outcomes=dict(core.outcomes),
        sends_refused=core.sends_refused,
        stray_replies=core.stray_replies,
        resends=core.resends,
        gaps=actor._gaps,
        duplicates=actor._duplicates,
        probes=actor._probes,
        inbound_dropped=actor._subscribers.dropped,
        reply_to_dropped=actor._drops.reply_to_dropped,
        subscriptions=len(actor._subscriptions),
        rtt_p50=rtt_p50,
        rtt_p99=rtt_p99,
        url=actor._url,
        hook_errors=actor._hook_errors + actor._subscribers.dead,
        last_error=actor._last_error,
        attempts=actor._generation,
        internal_errors=actor._internal_errors,
    )
