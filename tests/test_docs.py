"""The documentation in docs/: its code runs and type-checks, its reference is complete.

Every ``.. code-block:: python`` block of a page runs, in order, in one
namespace per page (each page is self-contained), and the blocks of every page
pass ``mypy --strict``, as the README's do (tests/test_readme.py). A block
marked ``:class: illustrative`` is a sketch that is not run (it needs a real
venue, say); there are only a few.

The API reference (docs/api.rst) documents every name of ``__all__`` of
``pykka_ws`` and of its public modules; the built reference is checked too
when Sphinx is at hand (or ``DOCS_HTML`` names a built copy, as in .ci/run).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pykka
import pytest

import pykka_ws
from pykka_ws.testing import WsTestServer

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.rst"))
PUBLIC_MODULES = ("pykka_ws", "pykka_ws.jsonrpc", "pykka_ws.testing", "pykka_ws.prometheus")

# A python code block: the directive, its options, a blank line, the indented body.
BLOCK = re.compile(
    r"^\.\. code-block:: python\n((?:[ \t]+:[\w-]+:.*\n)*)\n((?:[ \t]+.*\n|[ \t]*\n)+)",
    re.MULTILINE,
)
ILLUSTRATIVE = ":class: illustrative"
MOST_ILLUSTRATIVE = 6

pytestmark = pytest.mark.timeout(120)


def blocks(text: str) -> list[tuple[int, str, bool]]:
    """Return ``(first line index, dedented code, runs)`` for each python block."""
    found = []
    for match in BLOCK.finditer(text):
        first = text.count("\n", 0, match.start(2))
        found.append((first, textwrap.dedent(match.group(2)), ILLUSTRATIVE not in match.group(1)))
    return found


def page_source(text: str) -> str:
    """A page's running blocks as one module, each line on its page line number."""
    lines = [""] * (text.count("\n") + 1)
    for first, code, runs in blocks(text):
        if runs:
            for offset, line in enumerate(code.splitlines()):
                lines[first + offset] = line
    return "\n".join(lines) + "\n"


def test_the_docs_have_pages_with_code() -> None:
    names = {page.stem for page in PAGES}
    assert {"index", "outcomes", "composing", "exchanges", "testing", "limits"} <= names
    assert {"benchmarks", "api", "changelog"} <= names
    assert sum(1 for page in PAGES for _, _, runs in blocks(page.read_text()) if runs) >= 15


def test_few_blocks_are_illustrative() -> None:
    sketches = [page.name for page in PAGES for *_, runs in blocks(page.read_text()) if not runs]
    assert len(sketches) <= MOST_ILLUSTRATIVE, sketches


def test_no_python_block_is_missed() -> None:
    # A python block written another way (``::``, ``.. code::``) would not be run.
    for page in PAGES:
        text = page.read_text()
        assert text.count(".. code-block:: python\n") == len(blocks(text)), page.name
        assert ".. code:: python" not in text, page.name
        assert ".. sourcecode::" not in text, page.name


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p.read_text())], ids=lambda p: p.stem)
def test_page_python_blocks_run(page: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    try:
        for number, (first, code, runs) in enumerate(blocks(page.read_text()), 1):
            if runs:
                # Padded so a traceback's line is the page's line.
                source = "\n" * first + code
                exec(compile(source, f"docs/{page.name} block {number}", "exec"), namespace)  # noqa: S102 - our docs
    finally:
        pykka.ActorRegistry.stop_all()
        # A block that failed half-way must not leave its servers running
        # (the next tests check that no test server thread is left).
        for value in namespace.values():
            if isinstance(value, WsTestServer):
                value.stop()


def test_page_source_keeps_the_page_line_numbers() -> None:
    for page in PAGES:
        text = page.read_text()
        source = page_source(text).splitlines()
        for first, code, runs in blocks(text):
            if runs:
                assert source[first] == code.splitlines()[0]
                assert text.splitlines()[first].strip() == code.splitlines()[0].strip()


@pytest.mark.timeout(240)
def test_page_python_blocks_pass_mypy_strict(tmp_path: Path) -> None:
    files = []
    for page in PAGES:
        text = page.read_text()
        if any(runs for *_, runs in blocks(text)):
            module = tmp_path / f"docs_{page.stem}_rst.py"
            module.write_text(page_source(text))
            files.append(str(module))
    proc = subprocess.run(  # noqa: S603 - our own interpreter, mypy
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", *files],
        cwd=ROOT,  # the project's [tool.mypy] settings and cache
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    report = re.sub(r"\S*docs_(\w+)_rst\.py", r"docs/\1.rst", proc.stdout + proc.stderr)
    assert proc.returncode == 0, report


def documented_names(text: str) -> dict[str, set[str]]:
    """Names each module's objects are documented under in an .rst source.

    ``automodule`` with ``:members:`` documents its module's ``__all__``. An
    entry with ``:no-index:`` counts too (it is there, only not a link target).
    """
    names: dict[str, set[str]] = {}
    module = ""
    directive = re.compile(
        r"^\.\. (?:py:)?(\w+):: ([\w.]+)(?:\(.*\))?\n((?:[ \t]+:[\w-]+:.*\n)*)", re.MULTILINE
    )
    for match in directive.finditer(text):
        kind, target, options = match.groups()
        if kind == "currentmodule":
            module = target
        elif kind == "automodule":
            module = target
            if ":members:" in options:
                names.setdefault(target, set()).update(importlib.import_module(target).__all__)
        elif kind.startswith("auto") or kind in {"data", "class", "function"}:
            owner, _, name = (target if "." in target else f"{module}.{target}").rpartition(".")
            names.setdefault(owner, set()).add(name)
    return names


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_reference_documents_every_public_name(module: str) -> None:
    public = set(importlib.import_module(module).__all__)
    documented = documented_names((DOCS / "api.rst").read_text()).get(module, set())
    assert public - documented == set(), f"not in docs/api.rst: {sorted(public - documented)}"
    assert documented - public == set(), f"not public: {sorted(documented - public)}"


def built_inventory(tmp_path: Path) -> Path:
    """objects.inv of the built docs: ``$DOCS_HTML``'s, or a build of our own."""
    if os.environ.get("DOCS_HTML"):
        return Path(os.environ["DOCS_HTML"]) / "objects.inv"
    pytest.importorskip("sphinx", reason="the docs extra is not installed")
    pytest.importorskip("furo", reason="the docs extra is not installed")
    out = tmp_path / "html"
    subprocess.run(  # noqa: S603 - our own interpreter, Sphinx
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(DOCS), str(out)],
        check=True,
        timeout=170,
    )
    return out / "objects.inv"


def python_objects(inventory: Path) -> set[str]:
    """The Python objects a Sphinx inventory (version 2) lists."""
    data = inventory.read_bytes()
    header, _, body = data.partition(b"zlib.\n")
    assert header.startswith(b"# Sphinx inventory version 2"), header[:40]
    names = set()
    for line in zlib.decompress(body).decode().splitlines():
        name, domain_role, *_ = line.split(" ")
        if domain_role.startswith("py:"):
            names.add(name)
    return names


def is_core_alias(module: object, name: str, names: set[str]) -> bool:
    """Whether ``module.name`` is ``pykka_ws.name`` again (documented there, once)."""
    return getattr(module, name) == getattr(pykka_ws, name, None) and f"pykka_ws.{name}" in names


@pytest.mark.timeout(180)
def test_built_reference_has_every_public_name(tmp_path: Path) -> None:
    names = python_objects(built_inventory(tmp_path))
    for module in PUBLIC_MODULES:
        assert module in names or module == "pykka_ws"
        public = importlib.import_module(module)
        missing = {
            n
            for n in public.__all__
            if f"{module}.{n}" not in names and not is_core_alias(public, n, names)
        }
        assert missing == set(), f"{module}: {sorted(missing)} missing from the built reference"


def test_version_is_the_package_metadata() -> None:
    assert pykka_ws.__version__ == importlib.metadata.version("pykka-ws")
