"""Every Python code block in README.rst runs, in order, in one namespace, and type-checks."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pykka
import pytest

from pykka_ws.testing import WsTestServer

README = Path(__file__).resolve().parent.parent / "README.rst"
BLOCK = re.compile(r"^\.\. code-block:: python\n\n((?:    .*\n|\n)+)", re.MULTILINE)

pytestmark = pytest.mark.timeout(60)


def python_blocks(text: str) -> list[str]:
    return [textwrap.dedent(m.group(1)) for m in BLOCK.finditer(text)]


def python_source(text: str) -> str:
    """The README's Python blocks as one module, each line on its README line number.

    Every other line is left blank, so a checker's ``file:line`` is the
    README's line.
    """
    lines = [""] * (text.count("\n") + 1)
    for match in BLOCK.finditer(text):
        first = text.count("\n", 0, match.start(1))
        for offset, line in enumerate(textwrap.dedent(match.group(1)).splitlines()):
            lines[first + offset] = line
    return "\n".join(lines) + "\n"


def test_readme_has_the_two_commands_near_the_top() -> None:
    text = README.read_text()
    top = text[: text.index("In ten lines")]
    commands = [line.strip() for line in top.splitlines() if line.startswith("    python3 ")]
    assert len(commands) == 2
    assert commands[0].endswith("examples/demo.py")
    assert commands[1].endswith("-m pytest")
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci


def test_readme_python_blocks_run() -> None:
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 5
    namespace: dict[str, object] = {"__name__": "readme"}
    try:
        for number, block in enumerate(blocks, 1):
            code = compile(block, f"README.rst block {number}", "exec")
            exec(code, namespace)  # noqa: S102 - the README is ours
    finally:
        # A block that failed half-way must not leave its actors and servers
        # running (later tests check that no library thread is left).
        pykka.ActorRegistry.stop_all()
        for value in namespace.values():
            if isinstance(value, WsTestServer):
                value.stop()


def test_python_source_keeps_the_readme_line_numbers() -> None:
    text = README.read_text()
    source = python_source(text).splitlines()
    for match in BLOCK.finditer(text):
        first = text.count("\n", 0, match.start(1))
        assert source[first] == match.group(1).splitlines()[0].strip()


@pytest.mark.timeout(180)
def test_readme_python_blocks_pass_mypy_strict(tmp_path: Path) -> None:
    source = tmp_path / "README_rst.py"
    source.write_text(python_source(README.read_text()))
    proc = subprocess.run(  # noqa: S603 - our own interpreter, mypy
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(source)],
        cwd=README.parent,  # the project's [tool.mypy] settings and cache
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    report = re.sub(r"\S*README_rst\.py", "README.rst", proc.stdout + proc.stderr)
    assert proc.returncode == 0, report
