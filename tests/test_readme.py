"""Every Python code block in README.rst runs, in order, in one namespace."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.rst"

pytestmark = pytest.mark.timeout(60)


def python_blocks(text: str) -> list[str]:
    pattern = r"^\.\. code-block:: python\n\n((?:    .*\n|\n)+)"
    return [textwrap.dedent(m.group(1)) for m in re.finditer(pattern, text, re.MULTILINE)]


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
    for number, block in enumerate(blocks, 1):
        code = compile(block, f"README.rst block {number}", "exec")
        exec(code, namespace)  # noqa: S102 - the README is ours
