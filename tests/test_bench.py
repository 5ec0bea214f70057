"""The benchmarks still run: ``bench/run.py --quick`` on the sections most likely to break.

A smoke test, not a measurement: it checks that every row is printed and no
section fails, never the figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def _run(*args: str, timeout: float = 50.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, str(BENCH), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.timeout(60)
def test_quick_inbound_and_1k_connections(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = _run("--sections", "inbound,conns1k", "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAILED" not in done.stdout
    sections = json.loads(out.read_text(encoding="utf-8"))["sections"]
    inbound = [row["metric"].strip() for row in sections["inbound"]["rows"]]
    assert inbound[0] == "inbound frames to a subscriber"
    assert "with a JSON matcher on every frame" in inbound
    fleet = sections["conns1k"]["rows"]
    metrics = [row["metric"].strip() for row in fleet]
    assert "total confirmed requests" in metrics
    assert "threads per connection (ping 20 s)" in metrics
    assert any(m.startswith("time to open") for m in metrics)
    assert any(m.startswith("time to close") for m in metrics)
    for row in sections["inbound"]["rows"] + fleet:
        assert row["a"] is not None, row
        if not row["metric"].startswith("pykka-ws"):  # its own counts have no baseline
            assert row["b"] is not None, row


@pytest.mark.timeout(60)
def test_quick_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    picture = tmp_path / "cdf.png"
    done = _run("--plot", str(picture))
    assert done.returncode == 0, done.stdout + done.stderr
    data = picture.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) < 150 * 1024
    assert "pykka-ws" in done.stdout
    assert "raw websockets" in done.stdout
