"""No class, function or module in ``oada_jobs/`` grows past what one reader holds.

The limits (every line counted, from ``def``/``class`` to the end, docstrings
included): a class 300 lines, a function or method 60, a module 600. Past a
limit a module must say why in its opening docstring, in a paragraph that
starts with ``Length:`` and names the item as ``Name`` in double backquotes
(or says "this module" for the module itself). docs/architecture.md states
the rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "oada_jobs"
CLASS_LINES = 300
FUNCTION_LINES = 60
MODULE_LINES = 600


def _reasons(tree: ast.Module) -> str:
    """The module docstring's ``Length:`` paragraphs, joined."""
    doc = ast.get_docstring(tree) or ""
    return " ".join(p for p in doc.split("\n\n") if p.lstrip().startswith("Length:"))


def over_the_limits(path: Path) -> list[str]:
    """What in *path* is over a limit without a stated reason."""
    source = path.read_text()
    tree = ast.parse(source)
    why = _reasons(tree)
    found = []
    lines = len(source.splitlines())
    if lines > MODULE_LINES and "this module" not in why:
        found.append(f"{path.name}: module of {lines} lines")
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            limit, kind = CLASS_LINES, "class"
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            limit, kind = FUNCTION_LINES, "function"
        else:
            continue
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        if length > limit and f"``{node.name}``" not in why:
            found.append(f"{path.name}:{node.lineno}: {kind} {node.name} of {length} lines")
    return found


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_each_module_keeps_to_the_size_limits(path: Path) -> None:
    assert over_the_limits(path) == []


def test_the_check_sees_an_oversized_function_and_its_stated_reason(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(FUNCTION_LINES))
    module = tmp_path / "m.py"
    module.write_text(f'"""A module."""\n\n\ndef long():\n{body}\n')
    assert over_the_limits(module) == [f"m.py:4: function long of {FUNCTION_LINES + 1} lines"]
    module.write_text(
        f'"""A module.\n\nLength: ``long`` is a table.\n"""\n\n\ndef long():\n{body}\n'
    )
    assert over_the_limits(module) == []
