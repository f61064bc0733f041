"""The import contracts of the package, enforced (what import-linter would check, read from the source's AST).

Every ``import`` in ``src/probelens`` counts, at module level or inside a function (an import hidden in a function is
still a dependency), except those under ``if TYPE_CHECKING:`` (annotations only). The contracts:

- no cycle between probelens modules;
- layers point one way: ``methods``, ``metrics``, ``render``, ``logformat``, ``data`` and ``probe`` import none of
  ``core``, ``callbacks``, ``pl``, ``lightning``, ``dashboard``, ``export``, ``logs``, and no Lightning;
- only the adapters (``callbacks``, ``pl``, ``lightning``) import Lightning;
- ``core`` uses only the public modules of ``methods`` (none whose name starts with ``_``);
- the log readers (``logformat``, ``logs``, ``dashboard``, ``export``) reach neither torch nor the render code, not
  even through another probelens module (numpy and Pillow are allowed: export composes animations).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
PACKAGE = SRC / "probelens"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, list[str]]]:
    """``(source, names)`` of every import in ``module``: ``import a.b`` is ``("a.b", [])``, ``from a import b, c``
    is ``("a", ["a.b", "a.c"])``, relative imports made absolute."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                yield from _imports(ast.Module([child], []), module, is_package)
            continue
        if isinstance(node, ast.Import):
            yield from ((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            yield source, [f"{source}.{alias.name}" for alias in node.names]
        else:
            yield from _imports(node, module, is_package)


def _graph() -> dict[str, set[str]]:
    """module -> what it depends on: a submodule imported by name (``from pkg import mod``) counts as ``pkg.mod``,
    not as the package ``pkg`` whose ``__init__`` Python runs first anyway (as for any submodule import)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for source, names in _imports(ast.parse(path.read_text()), name, path.name == "__init__.py"):
            submodules = [n for n in names if n in modules]
            deps.update(submodules or [source])
            deps.update(n for n in names if not n.startswith("probelens"))  # "from torch import nn" reaches torch.nn
        graph[name] = deps
    return graph


GRAPH = _graph()
OURS = {m for m in GRAPH if m.startswith("probelens")}


def _deps(module: str) -> set[str]:
    return {d for d in GRAPH[module] if d in OURS and d != module}


def _under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_graph_is_read():
    assert "probelens.core.base" in GRAPH and "torch" in GRAPH["probelens.core.base"]
    assert "probelens.methods.engine" in _deps("probelens.core.session")


def test_no_import_cycle():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(_deps(v)):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(OURS):
        if module not in index:
            visit(module)
    # a package's __init__ re-exporting its modules, imported by them for nothing but a name, is a cycle too
    assert not cycles, f"import cycles: {cycles}"


LOWER = ("probelens.methods", "probelens.metrics", "probelens.render", "probelens.logformat", "probelens.data")
UPPER = (
    "probelens.core",
    "probelens.callbacks",
    "probelens.pl",
    "probelens.lightning",
    "probelens.dashboard",
    "probelens.export",
    "probelens.logs",
)
LIGHTNING = ("pytorch_lightning", "lightning", "lightning_fabric")


@pytest.mark.parametrize("module", sorted(m for m in OURS if _under(m, *LOWER, "probelens.probe")))
def test_lower_layers_import_no_upper_layer_and_no_lightning(module):
    bad = sorted(d for d in GRAPH[module] if _under(d, *UPPER) or _under(d, *LIGHTNING))
    assert not bad, f"{module} imports {bad}"


def test_only_the_adapters_import_lightning():
    adapters = ("probelens.callbacks", "probelens.pl", "probelens.lightning")
    bad = {m: sorted(d for d in GRAPH[m] if _under(d, *LIGHTNING)) for m in OURS if not _under(m, *adapters)}
    assert not {m: d for m, d in bad.items() if d}


def test_core_uses_only_public_methods_modules():
    bad = {
        m: sorted(
            d for d in _deps(m) if _under(d, "probelens.methods") and d.count(".") >= 2 and d.split(".")[2][0] == "_"
        )
        for m in OURS
        if _under(m, "probelens.core")
    }
    assert not {m: d for m, d in bad.items() if d}, bad


@pytest.mark.parametrize("reader", ["probelens.logformat", "probelens.logs", "probelens.dashboard", "probelens.export"])
def test_the_log_readers_reach_neither_torch_nor_render(reader):
    seen: set[str] = set()
    todo = [m for m in OURS if _under(m, reader)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(_deps(module))
    offenders = sorted((m, d) for m in seen for d in GRAPH[m] if _under(d, "torch") or _under(d, "probelens.render"))
    assert not offenders, f"{reader} reaches {offenders}"
