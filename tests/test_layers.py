"""Dependencies point one way: envs <- agents <- harness (issue 14, item 6).

Every module under ``agents/`` and ``envs/`` is parsed with :mod:`ast` (no import is run) and
every import statement, at any depth (function-level imports included), is checked: agents
must not import the harness (``rlbench``), and envs must import neither agents nor rlbench.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> top-level packages it must never import
FORBIDDEN = {"agents": {"rlbench"}, "envs": {"rlbench", "agents"}}


def imported_roots(source: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in ``source``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, root in imported_roots(path.read_text()):
            if root in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {root}")
    return bad


def test_import_scanner_sees_every_import_form():
    src = "import rlbench\nimport os, agents.core as c\nfrom rlbench.batch import Batch\nfrom . import x\ndef f():\n    from agents import y\n"
    assert imported_roots(src) == [(1, "rlbench"), (2, "os"), (2, "agents"), (3, "rlbench"), (6, "agents")]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_upper_layers(package):
    assert (ROOT / package / "__init__.py").is_file()
    assert violations(package) == []
