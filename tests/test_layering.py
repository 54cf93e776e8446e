"""The layers of DESIGN.md, checked on the source: every import of every ebsparse module (at module
level or inside a function; ``if TYPE_CHECKING:`` blocks excluded) points to its own layer or one
listed before it, and no group of modules imports itself round a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ebsparse"

#: DESIGN.md's layers, bottom first; a module belongs to the first entry that is it or a parent of it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("utilities", ("ebsparse._lazy", "ebsparse._config")),
    ("formats", ("ebsparse.formats",)),
    # Backends before ops (DESIGN.md lists them the other way): backends implement kernels on an op's
    # inputs object and never import the ops; the public ops build that object and call the one
    # dispatch point, as xformers' op front calls its dispatcher.
    ("backends", ("ebsparse.backends", "ebsparse.triton")),
    ("ops", ("ebsparse.ops",)),
    ("nn", ("ebsparse.nn",)),
    ("models, data, diffusion, metrics", ("ebsparse.models", "ebsparse.data", "ebsparse.diffusion", "ebsparse.metrics")),
    ("pruning", ("ebsparse.pruning",)),
    ("algorithms", ("ebsparse.earlybird", "ebsparse.s2s")),
    ("front", ("ebsparse.commands", "ebsparse.drivers", "ebsparse.cli", "ebsparse.__main__", "ebsparse")),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
                                         or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(node: ast.AST):
    for child in ast.iter_child_nodes(node):
        if _is_type_checking(child):
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        yield from _import_nodes(child)


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The ebsparse modules an import statement names (a compiled extension such as ``_C`` is none)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    if node.level:
        base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    out = []
    for alias in node.names:
        full = f"{source}.{alias.name}"
        if full in MODULES:
            out.append(full)  # a submodule
        elif source in MODULES:
            out.append(source)  # a name defined in the module (or package)
    return out


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[module] = {t for node in _import_nodes(tree) for t in _targets(module, path, node)} - {module}
    return graph


def layer_of(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer of DESIGN.md; add it to LAYERS")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


GRAPH = import_graph()


def test_the_walk_sees_function_level_and_relative_imports():
    assert "ebsparse.drivers.eb_distributed" in GRAPH["ebsparse.drivers.eb_pipeline"]  # inside a method
    assert "ebsparse.diffusion.plugins" in GRAPH["ebsparse.s2s.trainer_plugin"]  # from ..diffusion.plugins
    assert "ebsparse.diffusion.trainer" not in GRAPH["ebsparse.diffusion.plugins"]  # TYPE_CHECKING only


@pytest.mark.parametrize("layer", range(len(LAYERS)), ids=[name for name, _ in LAYERS])
def test_each_layer_imports_only_itself_and_the_layers_below(layer):
    upward = sorted(f"{m} -> {t} ({LAYERS[layer_of(t)][0]})"
                    for m, targets in GRAPH.items() if layer_of(m) == layer
                    for t in targets if layer_of(t) > layer)
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_no_import_cycles():
    assert not cycles(GRAPH), cycles(GRAPH)


def test_cycle_finder_finds_a_planted_cycle():
    graph = {k: set(v) for k, v in GRAPH.items()}
    graph["ebsparse.diffusion.losses"].add("ebsparse.diffusion.trainer")
    assert any({"ebsparse.diffusion.losses", "ebsparse.diffusion.trainer"} <= set(c) for c in cycles(graph))


def test_algorithm_cores_do_not_need_the_diffusion_stack():
    """Ticket logic and mask schedules stay usable without the trainer, data or models."""
    cores = ["ebsparse.earlybird.config", "ebsparse.earlybird.tickets", "ebsparse.earlybird.heatmap",
             "ebsparse.earlybird.regions", "ebsparse.earlybird.router", "ebsparse.s2s.sparsifier"]
    seen, todo = set(), list(cores)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(GRAPH[m])
    bad = sorted(m for m in seen if m.startswith(("ebsparse.diffusion", "ebsparse.data", "ebsparse.models")))
    assert not bad, bad
