"""The latency picture of ``bench/run.py --plot FILE``: a CDF of sequential round trips.

matplotlib is imported only here, and only when a picture is drawn.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from common import percentile

if TYPE_CHECKING:
    from pathlib import Path

MATPLOTLIB_REQUIREMENT = "pip install 'matplotlib>=3.8'"
_POINTS = 600  # points drawn per curve: enough for a smooth line, a small file
_STYLES = {
    "pykka-ws": {"color": "#1f77b4", "linestyle": "-"},
    "raw websockets": {"color": "#2ca02c", "linestyle": "--"},
    "python-socketio": {"color": "#d62728", "linestyle": "-."},
}


def matplotlib_missing() -> str | None:
    """Return a message saying how to install matplotlib, or None if it is there."""
    if importlib.util.find_spec("matplotlib") is None:
        return f"--plot needs matplotlib, which is not installed: {MATPLOTLIB_REQUIREMENT}"
    return None


def _cdf(latencies_us: list[float]) -> tuple[list[float], list[float]]:
    """The empirical CDF of ``latencies_us``, thinned to about `_POINTS` points."""
    ordered = sorted(latencies_us)
    n = len(ordered)
    step = max(1, n // _POINTS)
    indexes = list(range(0, n, step))
    if indexes[-1] != n - 1:
        indexes.append(n - 1)
    return [ordered[i] for i in indexes], [(i + 1) / n for i in indexes]


def _minor_label(x: float, _pos: int) -> str:
    """Label the minor ticks at 2 and 5 times a power of ten (200, 500, 2,000 ...)."""
    leading = f"{x:.0e}"[0]
    return f"{x:,.0f}" if leading in "25" else ""


def draw(path: Path, series: dict[str, list[float]], info: dict[str, Any], note: str) -> None:
    """Draw the CDF of each series (round trips in microseconds) to ``path`` (PNG)."""
    import matplotlib as mpl  # noqa: PLC0415 - optional dependency

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7.2, 4.4), dpi=100)
    for name, latencies in series.items():
        if not latencies:
            continue
        xs, ys = _cdf(latencies)
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        label = f"{name}: p50 {p50:,.0f} µs, p99 {p99:,.0f} µs"
        ax.plot(xs, ys, label=label, linewidth=1.8, **_STYLES.get(name, {}))
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:,.0f}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(_minor_label))
    ax.tick_params(axis="x", which="minor", labelsize=8)
    ax.set_xlabel("round trip (µs, log scale)")
    ax.set_ylabel("fraction of round trips ≤ x")
    ax.set_ylim(0, 1.005)
    ax.grid(visible=True, which="major", alpha=0.35)
    ax.grid(visible=True, which="minor", alpha=0.12)
    ax.legend(loc="lower right", fontsize=9, framealpha=0.9)
    ax.set_title(
        "Sequential confirmed round trips, 127.0.0.1\n"
        f"{info['cpu']}, {info['cores']} cores; {info['python']}; "
        f"websockets {info['websockets']}; python-socketio {info['python_socketio']}",
        fontsize=10,
    )
    fig.text(0.01, 0.01, note, fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
