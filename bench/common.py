"""Helpers shared by the benchmark scripts: child processes, statistics, tables, machine info.

Importing this module puts the repository root on ``sys.path``, so the scripts
run from a clone without installing pykka-ws. It imports nothing of pykka-ws.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import selectors
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from collections.abc import Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent

if str(REPO_DIR) not in sys.path:  # run from a clone, without installing
    sys.path.insert(0, str(REPO_DIR))

LOOPBACK = "127.0.0.1"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- statistics -------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Return the nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    """Return the median, or NaN for no values."""
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Return ``numerator / denominator``, or None when either is missing or zero."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    if math.isnan(numerator) or math.isnan(denominator):
        return None
    return numerator / denominator


# -- results ----------------------------------------------------------------


@dataclass
class Row:
    """One line of a result table.

    ``a`` and ``b`` are the two compared columns (usually pykka-ws and raw
    websockets); ``met`` is None when the row has no target.
    """

    metric: str
    a: float | None
    b: float | None = None
    unit: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Section:
    """A result table: a title, its two column labels, rows and notes."""

    key: str
    title: str
    a_label: str = "pykka-ws"
    b_label: str = "raw websockets"
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rounds: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the section as plain JSON data."""
        return {
            "title": self.title,
            "a_label": self.a_label,
            "b_label": self.b_label,
            "skipped": self.skipped,
            "rows": [asdict(row) for row in self.rows],
            "notes": self.notes,
            "rounds": self.rounds,
        }


def check(value: float | None, op: str, limit: float) -> bool | None:
    """Return whether ``value op limit`` holds (op is "<=", "<" or ">="), None if no value."""
    if value is None or math.isnan(value):
        return None
    if op == "<=":
        return value <= limit
    if op == "<":
        return value < limit
    if op == ">=":
        return value >= limit
    raise ValueError(op)


def format_value(value: float | None, unit: str) -> str:
    """Format a measured value with its unit."""
    if value is None or math.isnan(value):
        return "-"
    if unit == "us":
        return f"{value:,.0f} us" if value >= 100 else f"{value:.1f} us"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "B":
        return f"{value:,.0f} B"
    if unit == "KiB":
        return f"{value:,.1f} KiB"
    if unit == "x":
        return f"{value:.2f}"
    if unit == "n":
        return f"{value:,.0f}"
    return f"{value:.3g} {unit}".strip()


def render(section: Section) -> str:
    """Return the section as a plain text table."""
    lines = [f"== {section.title} =="]
    if section.skipped is not None:
        lines.append(f"   {section.skipped}")
        return "\n".join(lines)
    header = ["metric", section.a_label, section.b_label, "ratio", "target", "met?"]
    table = [header]
    for row in section.rows:
        met = "-" if row.met is None else ("yes" if row.met else "NO")
        table.append(
            [
                row.metric,
                format_value(row.a, row.unit),
                format_value(row.b, row.unit) if row.b is not None else "",
                f"{row.ratio:.3f}" if row.ratio is not None else "",
                row.target,
                met if row.target else "",
            ]
        )
    if not section.b_label:  # one measured column: no baseline, no ratio
        table = [[cells[0], cells[1], cells[4], cells[5]] for cells in table]
    widths = [max(len(cells[i]) for cells in table) for i in range(len(table[0]))]
    for index, cells in enumerate(table):
        parts = [cells[0].ljust(widths[0])]
        parts += [cells[i].rjust(widths[i]) for i in range(1, len(cells))]
        lines.append(" | ".join(parts).rstrip())
        if index == 0:
            lines.append("-+-".join("-" * w for w in widths))
    lines.extend(f"   note: {note}" for note in section.notes)
    lines.extend(f"   {row.metric}: {row.note}" for row in section.rows if row.note)
    return "\n".join(lines)


# -- machine ----------------------------------------------------------------


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git(*args: str) -> subprocess.CompletedProcess[str] | None:
    """Run a read-only git command in the repository (no optional locks taken)."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
    try:
        return subprocess.run(
            ["git", "-C", str(REPO_DIR), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _git_commit() -> str:
    """The commit under test, with ``+dirty`` if pykka_ws/ differs from it.

    ``PYKKA_WS_BENCH_COMMIT`` names it instead, for a tree exported without
    git (``git archive``).
    """
    named = os.environ.get("PYKKA_WS_BENCH_COMMIT")
    if named:
        return named
    done = _git("rev-parse", "--short", "HEAD")
    if done is None or done.returncode != 0:
        return "unknown"
    commit = done.stdout.strip()
    diff = _git("diff", "--quiet", "HEAD", "--", "pykka_ws")
    if diff is not None and diff.returncode == 1:
        commit += "+dirty"
    return commit


def machine_info(pykka_ws_version: str) -> dict[str, Any]:
    """Describe the machine and the software under test."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 0
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "websockets": _version("websockets"),
        "pykka": _version("pykka"),
        "pykka_ws": pykka_ws_version,
        "python_socketio": _version("python-socketio"),
        "commit": _git_commit(),
        "switch_interval_ms": sys.getswitchinterval() * 1000,
    }


def render_machine(info: dict[str, Any]) -> str:
    """Return the header lines for the machine."""
    return "\n".join(
        [
            "pykka-ws benchmarks",
            (
                f"  machine : {info['cpu']}, {info['cores']} cores "
                f"({info['usable_cores']} usable), {info['os']}"
            ),
            f"  python  : {info['python']} (GIL switch interval {info['switch_interval_ms']:g} ms)",
            (
                f"  versions: pykka-ws {info['pykka_ws']} (commit {info['commit']}), "
                f"pykka {info['pykka']}, websockets {info['websockets']}, "
                f"python-socketio {info['python_socketio']}"
            ),
        ]
    )


# -- process measurements ---------------------------------------------------


class GcWatch:
    """Measures the cyclic garbage collector's pauses while it is registered.

    Use as a context manager; ``pauses`` holds (generation, seconds) per collection.
    """

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started))

    def __enter__(self) -> Self:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self._callback)

    @property
    def total(self) -> float:
        """Seconds spent in collections."""
        return sum(seconds for _gen, seconds in self.pauses)

    @property
    def longest(self) -> float:
        """The longest single pause in seconds (0 if none)."""
        return max((seconds for _gen, seconds in self.pauses), default=0.0)

    def count(self, generation: int) -> int:
        """Collections of ``generation``."""
        return sum(1 for gen, _seconds in self.pauses if gen == generation)


def cpu_times() -> list[int]:
    """Return the machine's aggregate CPU times from /proc/stat (user, nice, system, ...)."""
    try:
        first = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0]
    except OSError:
        return []
    return [int(v) for v in first.split()[1:]]


def busy_and_steal(before: list[int], after: list[int]) -> tuple[float, float]:
    """Return the fractions of machine CPU time that were busy and stolen between two samples."""
    if len(before) < 8 or len(after) < 8:
        return math.nan, math.nan
    delta = [b - a for a, b in zip(before, after, strict=False)]
    total = sum(delta[:8])
    if total <= 0:
        return math.nan, math.nan
    idle = delta[3] + delta[4]
    return (total - idle) / total, delta[7] / total


def rss_bytes() -> int:
    """Return this process's resident set size (VmRSS) in bytes."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def raise_fd_limit(need: int = 0) -> tuple[bool, str]:
    """Raise this process's soft open-file limit to its hard limit; say whether ``need`` fits.

    Returns ``(enough, message)``: ``enough`` is False when even the hard
    limit is below ``need`` file descriptors, and ``message`` then says how
    to raise it.
    """
    try:
        import resource  # noqa: PLC0415 - Unix only
    except ImportError:  # pragma: no cover - not Unix
        return True, "open-file limit unknown (no resource module)"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, need, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < need:
        return False, (
            f"needs about {need} open files, the limit is {soft} (hard limit {hard}); "
            f"raise it (ulimit -n {need}, or the hard limit in /etc/security/limits.conf)"
        )
    return True, f"open-file limit {soft}"


def fd_limit() -> int:
    """Return this process's soft open-file limit (a large number if unlimited)."""
    try:
        import resource  # noqa: PLC0415 - Unix only
    except ImportError:  # pragma: no cover - not Unix
        return 1 << 20
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def open_fds() -> int:
    """Return how many file descriptors this process has open (-1 if unknown)."""
    try:
        return sum(1 for _ in Path("/proc/self/fd").iterdir())
    except OSError:
        return -1


def process_cpu_seconds(pid: int) -> float:
    """Return the user+system CPU seconds used so far by process ``pid`` (all threads)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return math.nan
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


# -- child processes --------------------------------------------------------


class ChildError(RuntimeError):
    """A child process did not answer as expected."""


class Child:
    """A Python script run in its own process, spoken to in lines over stdin/stdout.

    The child must exit when its stdin closes. Every read has a deadline.
    """

    def __init__(self, script: str, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_DIR), env.get("PYTHONPATH", "")) if p
        )
        self.process = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        self._stdout: IO[str] = self.process.stdout  # type: ignore[assignment]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._stdout, selectors.EVENT_READ)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    def cpu_seconds(self) -> float:
        """CPU seconds the child has used so far."""
        return process_cpu_seconds(self.process.pid)

    def send(self, line: str) -> None:
        """Write one command line to the child."""
        stdin = self.process.stdin
        if stdin is None:
            raise ChildError("stdin is closed")
        stdin.write(line + "\n")
        stdin.flush()

    def read_line(self, timeout: float) -> str:
        """Return the child's next stdout line, or raise `ChildError` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildError(f"no answer from {self.process.args!r} in {timeout} s")
            if self._selector.select(remaining):
                line = self._stdout.readline()
                if not line:
                    raise ChildError(f"{self.process.args!r} exited ({self.process.poll()})")
                return line.rstrip("\n")

    def read_json(self, timeout: float) -> dict[str, Any]:
        """Return the child's next stdout line parsed as a JSON object."""
        line = self.read_line(timeout)
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise ChildError(f"unexpected output: {line!r}") from exc
        if not isinstance(value, dict):
            raise ChildError(f"unexpected output: {line!r}")
        if "error" in value:
            raise ChildError(str(value["error"]))
        return value

    def close(self, timeout: float = 15.0) -> None:
        """Close stdin, wait for the child to exit, kill it if it will not."""
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._selector.close()
        self._stdout.close()


def start_port_child(script: str, *args: str, timeout: float = 20.0) -> tuple[Child, int]:
    """Start a server script that prints ``PORT <n>``; return it and the port."""
    child = Child(script, *args)
    try:
        line = child.read_line(timeout)
    except BaseException:
        child.close()
        raise
    if not line.startswith("PORT "):
        child.close()
        raise ChildError(f"{script}: expected 'PORT <n>', got {line!r}")
    return child, int(line.split()[1])
