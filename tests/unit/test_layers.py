"""The house's layering, as a contract the suite keeps true (docs/architecture.md draws it).

Every import of a driftwatch module counts, at module level or inside a function: a lazy import is still a
dependency. Rooms may import the rooms listed for them and nothing else; no two modules import each other, however
indirectly; kafka-python is imported by the Kafka edge alone, protobuf and opentelemetry-proto by the OTLP decoder
alone (ingest/otel.py, loaded only when an OTLP source is configured).
"""

from __future__ import annotations

import ast
from pathlib import Path

import driftwatch

ROOT = Path(driftwatch.__file__).parent

BOTTOM = {"__init__", "config", "errors", "events", "metrics", "log", "procs", "http"}

# room -> the rooms it may import (its own room always)
ALLOWED = {
    "bottom": set(),
    "state": {"bottom"},
    "ingest": {"bottom"},
    "monitor": {"bottom"},
    "client": {"bottom", "ingest"},
    "serving": {"bottom", "state", "ingest"},
    "evaluate": {"bottom", "monitor", "serving"},
    "retrain": {"bottom", "state", "monitor", "evaluate"},
    "control": {"bottom", "state", "monitor", "retrain", "evaluate", "serving"},
    "app": {"bottom", "state", "ingest", "monitor", "retrain", "evaluate", "serving", "control", "client"},
    "dev": {"bottom", "state", "ingest", "monitor", "retrain", "evaluate", "serving", "control", "client", "app"},
    "cli": {"bottom", "state", "ingest", "monitor", "retrain", "evaluate", "serving", "control", "client", "app", "dev"},
}
# within the bottom, an order: each may import only those before it
BOTTOM_ORDER = ["errors", "log", "procs", "events", "config", "metrics", "http", "__init__"]
KAFKA_EDGE = "driftwatch.ingest.kafka"
OTEL_EDGE = "driftwatch.ingest.otel"
# third-party packages whose importers the contract names: (top-level name as imported) -> its node in the graph
EDGES = {"kafka": "kafka", "google.protobuf": "protobuf", "opentelemetry": "opentelemetry"}
EXTERNAL = set(EDGES.values())


def _external(name: str) -> str | None:
    return next((node for prefix, node in EDGES.items() if name == prefix or name.startswith(prefix + ".")), None)


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(("driftwatch", *parts))
        out[name.removesuffix(".__init__") if parts[-1] == "__init__" and len(parts) > 1 else name] = path
    return out


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 2 and not (ROOT / parts[1]).is_dir():
        name = parts[1]
        if name in BOTTOM:
            return "bottom"
        return {"__main__": "cli", "cli": "cli", "app": "app", "client": "client"}[name]
    return parts[1]


def imports(path: Path, known: set[str]) -> set[str]:
    """The driftwatch modules (and the EDGES packages: kafka, protobuf, opentelemetry) a file imports, anywhere in it."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("driftwatch"):
                    out.add(alias.name if alias.name in known else alias.name.split(".")[0])
                elif (edge := _external(alias.name)) is not None:
                    out.add(edge)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if (edge := _external(node.module)) is not None or (
                    node.module == "google" and any(a.name == "protobuf" for a in node.names)):
                out.add(edge or "protobuf")
            elif node.module.startswith("driftwatch"):
                subs = {f"{node.module}.{a.name}" for a in node.names} & known
                out |= subs or {node.module}
    return {m for m in out if m in known or m in EXTERNAL}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports(p, known) - {m} for m, p in mods.items()}


def test_every_room_imports_only_the_rooms_below_it():
    bad = []
    for module, deps in graph().items():
        mine = room(module)
        for dep in deps - EXTERNAL:
            theirs = room(dep)
            if theirs == mine == "bottom":
                a, b = (BOTTOM_ORDER.index(m.split(".")[-1].replace("driftwatch", "__init__")) for m in (module, dep))
                if b >= a:
                    bad.append(f"{module} -> {dep} (bottom order: {' < '.join(BOTTOM_ORDER)})")
            elif theirs != mine and theirs not in ALLOWED[mine]:
                bad.append(f"{module} ({mine}) -> {dep} ({theirs})")
    assert not bad, "imports that break the layering:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    g = graph()
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_kafka_python_is_imported_by_the_kafka_edge_alone():
    users = sorted(m for m, deps in graph().items() if "kafka" in deps)
    assert users == [KAFKA_EDGE]


def test_protobuf_and_opentelemetry_are_imported_by_the_otlp_decoder_alone():
    g = graph()
    assert sorted(m for m, deps in g.items() if deps & {"protobuf", "opentelemetry"}) == [OTEL_EDGE]


def test_the_production_path_never_imports_dev():
    g = graph()
    seen, todo = set(), ["driftwatch.app"]
    while todo:
        m = todo.pop()
        if m in seen or m in EXTERNAL:
            continue
        seen.add(m)
        todo.extend(g[m])
    assert not [m for m in seen if room(m) == "dev"]
