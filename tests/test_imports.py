"""The package's import arrows form no cycle.

Every ``import`` in ``oada_jobs/`` is counted, wherever it stands: at the
top, under ``if TYPE_CHECKING:``, or inside a function. A cycle held apart
only by where an import is placed is still a cycle: the modules cannot be
read (or split, or tested) one without the other.
"""

from __future__ import annotations

import ast
import graphlib
import itertools
from pathlib import Path

import pytest

# Found, not imported: a cycle that breaks importing must still be reported.
PACKAGE = Path(__file__).resolve().parents[1] / "oada_jobs"


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, whether it is a package ``__init__``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = (path, is_package)
    return modules


def _imported(node: ast.Import | ast.ImportFrom, package: str, known: set[str]) -> set[str]:
    """The package modules one import statement imports."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names} & known
    if node.level:
        base_parts = package.split(".")
        base_parts = base_parts[: len(base_parts) - node.level + 1]
        base = ".".join([*base_parts, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    # `from x import y` imports the module x.y when there is one, else the name y of x.
    names = {f"{base}.{alias.name}" for alias in node.names}
    found = names & known
    if len(found) < len(names):
        found.add(base)
    return found & known


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports, all imports included."""
    modules = _modules(root)
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                targets |= _imported(node, package, known)
        targets.discard(name)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of *graph* (first node repeated at the end), or ``None``."""
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        # graphlib lists the cycle against the arrows: b, a, b for a -> b -> a.
        return list(reversed(error.args[1]))
    return None


def test_the_package_imports_in_one_direction() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_kind_of_import_counts(tmp_path: Path) -> None:
    # The walk finds cycles hidden under TYPE_CHECKING, in functions, and
    # through `from . import module`; it is not fooled by a package import.
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from . import a\n",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
        "b.py": "def f():\n    from .sub import c\n",
        "sub/__init__.py": "",
        "sub/c.py": "from .. import a\n",
        "d.py": "import pkg.a\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    graph = import_graph(root)
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a"}
    assert graph["pkg.d"] == {"pkg.a"}
    cycle = find_cycle(graph)
    assert cycle is not None
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"pkg.a", "pkg.b", "pkg.sub.c"}
    # Each step of the reported cycle is an arrow of the graph.
    for source, target in itertools.pairwise(cycle):
        assert target in graph[source]


@pytest.mark.parametrize(
    "text",
    [
        "from .b import B\n",
        "def f():\n    from . import b\n",
        "import typing\nif typing.TYPE_CHECKING:\n    import pkg.b\n",
    ],
)
def test_a_two_module_cycle_is_found(tmp_path: Path, text: str) -> None:
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text(text)
    (root / "b.py").write_text("from .a import A\n")
    cycle = find_cycle(import_graph(root))
    assert cycle is not None
    assert set(cycle) == {"pkg.a", "pkg.b"}


#: What the client and the server may import from the rest of the package:
#: they know nothing of the framework (nor of each other).
_BOTTOM = {"oada_jobs._ksuid", "oada_jobs._pointer", "oada_jobs._retry", "oada_jobs._version"}
_MAY_IMPORT = {
    "oada_jobs.client": _BOTTOM | {"oada_jobs.exceptions"},
    "oada_jobs.server": _BOTTOM | {"oada_jobs.exceptions"},
}


@pytest.mark.parametrize("layer", sorted(_MAY_IMPORT))
def test_the_client_and_server_know_nothing_of_the_framework(layer: str) -> None:
    graph = import_graph()
    allowed = _MAY_IMPORT[layer]
    strays = {
        (module, target)
        for module, targets in graph.items()
        if module == layer or module.startswith(layer + ".")
        for target in targets
        if not (target == layer or target.startswith(layer + ".")) and target not in allowed
    }
    assert not strays, f"{layer} imports above its layer: {sorted(strays)}"


def test_the_bottom_modules_import_nothing_from_the_package() -> None:
    graph = import_graph()
    for module in sorted(_BOTTOM | {"oada_jobs.exceptions", "oada_jobs.types"}):
        assert graph[module] == set(), f"{module} imports {sorted(graph[module])}"
