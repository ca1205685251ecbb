"""The package's import layers: no import cycle between its modules, a lower layer never imports a
higher one, and only the command line and the package's ``__init__`` import ``grpo_lightning.module``.

Every import counts: at module level, inside functions, under ``TYPE_CHECKING``, and in a package's
``__init__`` a string that names one of the package's modules exactly (``lazy_exports`` loads modules
by name). The reward registry's names of the built-in reward modules do not count: they are loaded
when a reward is looked up, and register themselves in it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import grpo_lightning

PACKAGE = "grpo_lightning"
ROOT = Path(grpo_lightning.__file__).parent

#: The layers, lowest first: a module may import its own layer and those below it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_checks", "_lazy", "_quiet", "lightning_compat", "batch", "isolation"),
    ("hf",),
    ("logprobs", "algorithm", "rewards"),
    ("data",),
    ("rollout",),
    ("run",),
    ("training", "evaluation"),
    ("module",),
    ("cli", "recipes", "__main__", "__init__"),
)
#: Who may import ``grpo_lightning.module`` (the LightningModule that wires everything).
MODULE_IMPORTERS = ("cli", "__init__")

#: Known violations, (importer, imported): each says why it is still there. Any other fails the test,
#: and so does an entry here that no longer happens (remove it with the import).
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    """Every module of the package by its name relative to the package (``hf.models``, ``__init__``
    for the package's own, ``data`` for ``data/__init__.py``)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(dotted: str) -> str | None:
    """The package module ``dotted`` (absolute) is or lies in: ``grpo_lightning.hf.models.load_policy``
    is ``hf.models``; None outside the package."""
    if dotted == PACKAGE:
        return "__init__"
    if not dotted.startswith(PACKAGE + "."):
        return None
    parts = dotted[len(PACKAGE) + 1 :].split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def _imports(name: str, path: Path) -> Iterator[str]:
    """The package modules that module ``name`` imports, anywhere in its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if name == "__init__":
        package = ""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up level - 1
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([PACKAGE, *base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            # each name is a submodule or an attribute of `origin`: _resolve tells which
            targets = [f"{origin}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and path.name == "__init__.py":
            exact = node.value.removeprefix(PACKAGE + ".")
            targets = [node.value] if node.value != exact and exact in MODULES else []
        for target in targets:
            module = _resolve(target)
            if module is not None and module != name:
                yield module


def _graph() -> dict[str, set[str]]:
    return {name: set(_imports(name, path)) for name, path in MODULES.items()}


GRAPH = _graph()


def _layer(name: str) -> int:
    top = name.split(".")[0]
    for rank, members in enumerate(LAYERS):
        if top in members:
            return rank
    raise AssertionError(f"{name} is in no layer: add its sub-package to LAYERS in {__file__}")


def _violations() -> dict[tuple[str, str], str]:
    found = {}
    for importer, imported in sorted((a, b) for a, targets in GRAPH.items() for b in targets):
        if _layer(imported) > _layer(importer):
            found[(importer, imported)] = f"layer {_layer(importer)} imports layer {_layer(imported)}"
        elif imported == "module" and importer.split(".")[0] not in MODULE_IMPORTERS:
            found[(importer, imported)] = "only cli/ and the package __init__ import grpo_lightning.module"
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module of ``graph`` (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_import_graph_is_read():
    # What the checks below rely on: imports at module level, inside functions, relative, and lazy names.
    assert "hf.builtin" in GRAPH["hf.models"]  # module level
    assert "cli.app" in GRAPH["__main__"]  # inside main()
    assert "module" in GRAPH["__init__"]  # lazy_exports, by name
    assert "rewards.format" in GRAPH["rewards"]  # lazy_exports, through a dict
    assert all(_resolve(f"{PACKAGE}.{name}") == name for name in MODULES if name != "__init__")


def test_no_import_cycle_but_through_a_known_exception():
    # A known exception imports upwards, so it can close a cycle (run.exporting -> module -> ... ->
    # run.exporting): the cycles are looked for without those imports.
    without = {a: {b for b in targets if (a, b) not in KNOWN_EXCEPTIONS} for a, targets in GRAPH.items()}
    assert _cycles(without) == []


def test_a_cycle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_is_in_a_layer(module):
    _layer(module)


def test_no_module_imports_a_higher_layer_nor_the_module_but_known_exceptions():
    found = _violations()
    new = {pair: why for pair, why in found.items() if pair not in KNOWN_EXCEPTIONS}
    gone = sorted(set(KNOWN_EXCEPTIONS) - set(found))
    assert new == {}, f"imports against the layers of {__file__}: {new}"
    assert gone == [], f"known exceptions that no longer happen, remove them from KNOWN_EXCEPTIONS: {gone}"
