"""Sphinx configuration of the pykka-ws documentation.

Build it with ``sphinx-build -W -b html docs OUT`` (``pip install -e '.[docs]'``
first). Warnings are errors in CI. No intersphinx: the build must not depend on
fetching other projects' inventories, so ``pykka.*``, ``websockets.*`` and the
standard library are plain text, not links.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pykka_ws  # noqa: E402 - after the path is set

project = "pykka-ws"
author = "pykka-ws developers"
copyright = "pykka-ws developers"  # noqa: A001 - Sphinx's name
release = pykka_ws.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# The docstrings' single backticks (`WsStats`) are cross-references.
default_role = "py:obj"

# Google-style docstrings. Attributes as fields of their class, so a dataclass's
# fields are not described twice (once by napoleon, once by autodoc).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = False
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True}

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

html_theme = "furo"
html_title = f"pykka-ws {release}"
html_static_path = ["_static"]


def _resolve_in_package(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve a Python reference that failed where it was written against `pykka_ws`.

    The docstrings of `pykka_ws.jsonrpc` and `pykka_ws.testing` name the core
    API as it is imported (`WsDelegatedRequest`), and the core's docstrings
    name one another's attributes (`WsStats.last_error`) from inside another
    class. Both are documented under ``pykka_ws``: look there too.
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    if target.startswith("pykka_ws"):
        return None
    retry = node.deepcopy()
    retry["py:module"] = "pykka_ws"
    retry["py:class"] = None
    domain = env.get_domain("py")
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], target, retry, contnode
    )


_ATTRIBUTE_DOCSTRINGS: dict[str, list[str]] = {}


def _keep_attribute_docstring(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Remember an attribute's docstring before napoleon reads it (see below)."""
    if what in {"attribute", "data"}:
        _ATTRIBUTE_DOCSTRINGS[name] = list(lines)


def _restore_attribute_docstring(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Undo napoleon's reading of an attribute docstring's first words as its type.

    Napoleon takes ``The params of a call: by name ...`` for ``type: description``;
    these docstrings never write a type there (the annotation has it), so the
    docstring is kept as written.
    """
    original = _ATTRIBUTE_DOCSTRINGS.pop(name, None)
    if original is not None and any(line.startswith(":type:") for line in lines):
        lines[:] = original


def _skip_namedtuple_fields(
    app: Any, what: str, name: str, obj: Any, skip: bool, options: Any
) -> bool | None:
    """Skip a NamedTuple's field accessors: its docstring's Attributes describe them."""
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


def setup(app: Any) -> None:
    """Connect the handlers above."""
    app.connect("missing-reference", _resolve_in_package)
    # Napoleon rewrites docstrings at priority 500: one before, one after.
    app.connect("autodoc-process-docstring", _keep_attribute_docstring, priority=100)
    app.connect("autodoc-process-docstring", _restore_attribute_docstring, priority=900)
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
