"""The layering rules of docs/architecture.md: one-way imports between units, no source file over 600 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 600


def _imports(path: Path) -> set[str]:
    """Every module a file imports (module level and inside functions), as dotted names."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _unit(module: str) -> str | None:
    """The unit of a dotted module name: `brainmm.<subpackage or module>`, or `alignment` / `encoders`."""
    parts = module.split(".")
    if parts[0] in ("alignment", "encoders"):
        return parts[0]
    if parts[0] == "brainmm" and len(parts) > 1:
        return f"brainmm.{parts[1]}"
    return None


def _exists(unit: str) -> bool:
    """Whether a unit is a package or module of this repository (not a name such as `brainmm.__version__`)."""
    path = REPO / Path(*unit.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def unit_graph() -> dict[str, set[str]]:
    """Which unit imports which (edges between different units only)."""
    graph: dict[str, set[str]] = {}
    for root in ("brainmm", "alignment", "encoders"):
        for path in (REPO / root).rglob("*.py"):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            src = _unit(module.removesuffix(".__init__"))
            for target in _imports(path):
                dst = _unit(target)
                if src and dst and dst != src and _exists(dst):
                    graph.setdefault(src, set()).add(dst)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle between units (as the path of units), found by depth-first search."""
    found: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": {"c"}}) == []


def test_no_two_units_import_each_other() -> None:
    graph = unit_graph()
    assert "brainmm.train" in graph and "brainmm.embed" in graph  # the graph covers the application units
    assert cycles(graph) == []


def test_libraries_never_import_the_application() -> None:
    graph = unit_graph()
    assert "brainmm" not in {u.split(".")[0] for u in graph.get("alignment", set()) | graph.get("encoders", set())}
    assert "encoders" not in graph.get("alignment", set())


def test_no_source_file_over_600_lines() -> None:
    roots = ("brainmm", "alignment", "encoders", "benchmarks")
    long = {str(p.relative_to(REPO)): n for r in roots for p in (REPO / r).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_evaluation_and_pipeline_use_only_the_align_public_api() -> None:
    private = {str(p.relative_to(REPO)): sorted(m for m in _imports(p) if m.startswith("brainmm.align."))
               for d in ("evaluate", "pipeline", "commands") for p in (REPO / "brainmm" / d).rglob("*.py")}
    public = set(__import__("brainmm.align", fromlist=["__all__"]).__all__)
    # `from brainmm.align import X` records "brainmm.align.X": allowed only for names of brainmm/align/__init__.py
    bad = {f: [m for m in mods if m.split(".")[2] not in public] for f, mods in private.items()}
    assert {f: m for f, m in bad.items() if m} == {}


def documented_layers() -> list[set[str]]:
    """The brainmm layers, bottom to top, as drawn in docs/architecture.md ("`a, b` -> `c` -> ...")."""
    text = (REPO / "docs" / "architecture.md").read_text()
    match = re.search(r"Within brainmm the\s+layers are, bottom to top[^:]*:\s*(.*?)\.\s+Shared", text, re.S)
    assert match, "docs/architecture.md: the layer sentence is missing"
    return [{"brainmm." + u.strip(" `\n") for u in part.split(",")} for part in match.group(1).split("->")]


def layer_violations(graph: dict[str, set[str]], layers: list[set[str]]) -> list[str]:
    """Every brainmm unit missing from the layers, and every import that does not point to a lower layer."""
    rank = {u: i for i, layer in enumerate(layers) for u in layer}
    units = {u for u, targets in graph.items() for u in (u, *targets) if u.startswith("brainmm.")}
    bad = [f"{u}: not in the documented layers" for u in sorted(units - set(rank))]
    return bad + [f"{src} -> {dst}" for src, targets in sorted(graph.items()) for dst in sorted(targets)
                  if src in rank and dst in rank and rank[dst] >= rank[src]]


def test_layer_checker_finds_sideways_and_upward_imports() -> None:
    layers = [{"brainmm.a"}, {"brainmm.b", "brainmm.c"}]
    assert layer_violations({"brainmm.b": {"brainmm.a"}}, layers) == []
    assert layer_violations({"brainmm.b": {"brainmm.c"}, "brainmm.a": {"brainmm.b", "brainmm.x"}}, layers) == [
        "brainmm.x: not in the documented layers", "brainmm.a -> brainmm.b", "brainmm.b -> brainmm.c"]


def test_imports_follow_the_documented_layer_order() -> None:
    assert layer_violations(unit_graph(), documented_layers()) == []
