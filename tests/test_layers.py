"""The package's layers: imports point down a floor, never up, and form no cycle.

Floors, bottom to top (README "Layout"): what a floor may import is itself and what lies below.
A function-local import of a geopd module is allowed only to keep a heavy optional dependency
(torch, vLLM, transformers, matplotlib, pandas) out of a light command, and says so with a
`# heavy:` comment on its line.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

FLOORS = {
    0: ("geopd.errors", "geopd.io", "geopd.paths"),
    1: ("geopd.config", "geopd.spec", "geopd.mirror", "geopd.sandbox"),
    2: ("geopd.grid", "geopd.grading", "geopd.world.tasks", "geopd.world.tokenizer", "geopd.world.models",
        "geopd.world",  # the package itself (empty)
        "geopd.data"),
    3: ("geopd.engines",),
    4: ("geopd.train", "geopd.evaluate", "geopd.diagnostics", "geopd.report", "geopd.fixture",
        "geopd.world.build", "geopd.costmodel"),
    5: ("geopd.plan", "geopd.workflow", "geopd.launch", "geopd.status"),
    6: ("geopd.cli",),
}
MAX_LOCAL = 25


def floor_of(module: str) -> int | None:
    best = None
    for floor, prefixes in FLOORS.items():
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (floor, len(p))
    return None if best is None else best[0]


def modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "geopd").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports() -> tuple[dict[str, set[str]], list[tuple[str, int, str, str]]]:
    """Edges module -> geopd module, and the function-local imports (module, line, target, text)."""
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    local = []
    for mod, path in mods.items():
        text = path.read_text()
        tree = ast.parse(text)
        top = {id(n) for n in tree.body}
        lines = text.splitlines()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("geopd"):
                targets = [resolve(f"{node.module}.{a.name}") for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names if a.name.startswith("geopd")]
            else:
                continue
            targets = [t for t in targets if t and t != mod and t != "geopd"]
            edges[mod].update(targets)
            if targets and id(node) not in top:
                local += [(mod, node.lineno, t, lines[node.lineno - 1]) for t in targets]
    return edges, local


def test_every_module_has_a_floor():
    assert [m for m in modules() if m != "geopd" and floor_of(m) is None] == []


def test_no_import_points_up_a_floor():
    edges, _ = imports()
    up = [f"{m} ({floor_of(m)}) -> {t} ({floor_of(t)})" for m, ts in edges.items() for t in ts
          if floor_of(m) is not None and floor_of(t) is not None and floor_of(t) > floor_of(m)]
    assert up == []


def test_no_import_cycles():
    edges, _ = imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_function_local_imports_are_few_and_only_for_heavy_modules():
    _, local = imports()
    assert len(local) <= MAX_LOCAL, local
    unmarked = [f"{m}:{line}: {text.strip()}" for m, line, _, text in local if "# heavy:" not in text]
    assert unmarked == []


def test_the_checker_sees_an_upward_import():
    # The floors above must classify a known downward and a known upward pair as such.
    assert floor_of("geopd.engines.rollout") == 3 and floor_of("geopd.train.loop") == 4
    assert floor_of("geopd.world.build") == 4 and floor_of("geopd.world.tasks") == 2
    edges, _ = imports()
    assert "geopd.engines.rollout" in edges["geopd.train.loop"] or any(
        t.startswith("geopd.engines") for t in edges["geopd.train.loop"])
