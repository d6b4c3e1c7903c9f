"""The package's layout holds: layers import downwards only, no cycles, small modules,
and an exchange is whatever the registry lists (its folder holds all of it).

Layers, lowest first (``docs/architecture.md`` draws them):

    vocabulary  errors, events, settings and each part's settings fields, metrics, logs
    encoding    Avro writer and encoder, schema registry client
    kafka       publisher, router, sink, producers, spool, topics, checkpoints, tail
    stream      connection (reader, control, liveness, subscriptions, handover), gaps,
                supervisor
    sim         the simulated exchanges' server base
    exchanges   the adapter interface, wire helpers, one folder per exchange
    group       scale-out: membership, sticky assignment, workers
    face        app, cli, http

A module may import its own layer and the ones below at run time; an import of a higher
layer is allowed only for typing (under ``TYPE_CHECKING``).
"""

from __future__ import annotations

import ast
import re
from fnmatch import fnmatch
from pathlib import Path

import pytest

from connector.exchanges.registry import EXCHANGES, NAMES
from connector.settings import Settings

PACKAGE = Path(__file__).resolve().parent.parent / "connector"
MAX_LINES = 610  # "no module over ~600 lines"

# (layer, patterns); the first pattern that matches a module decides its layer.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "vocabulary",
        (
            "connector",
            "connector.errors",
            "connector.events",
            "connector.timeutil",
            "connector.logs",
            "connector.fields",
            "connector.metrics",
            "connector.consumer",
            "connector.settings",
            "connector.kafka.settings",
            "connector.exchanges",
            "connector.exchanges.spec",
            "connector.exchanges.registry",
            "connector.exchanges.*.protocol",
            "connector.exchanges.*.settings",
            *(f"connector.exchanges.{name}" for name in NAMES),  # each one's SPEC
        ),
    ),
    ("encoding", ("connector.encoding", "connector.encoding.*")),
    ("kafka", ("connector.kafka", "connector.kafka.*")),
    ("stream", ("connector.stream", "connector.stream.*")),
    ("sim", ("connector.sim", "connector.sim.*")),
    ("exchanges", ("connector.exchanges.*",)),
    ("group", ("connector.group", "connector.group.*")),
    ("face", ("connector.app", "connector.cli", "connector.http", "connector.__main__")),
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def layer_of(module: str) -> str:
    for name, patterns in LAYERS:
        if any(fnmatch(module, p) for p in patterns):
            return name
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The connector modules ``module`` imports when it runs (at import time or in a
    function), not those imported for typing only."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1])
                    base = f"{base}.{child.module}" if child.module else base
                found.add(base)
                found.update(f"{base}.{a.name}" for a in child.names)  # a submodule
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in known and m != module}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {m: runtime_imports(m, p, known) for m, p in modules.items()}


def test_every_module_has_a_layer() -> None:
    for module in _modules():
        layer_of(module)


def test_no_module_imports_a_higher_layer_at_run_time() -> None:
    upward = [
        f"{m} ({layer_of(m)}) imports {dep} ({layer_of(dep)})"
        for m, deps in _graph().items()
        for dep in sorted(deps)
        if RANK[layer_of(dep)] > RANK[layer_of(m)]
    ]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state:
                cycle = walk(dep)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = walk(module)
            assert cycle is None, " -> ".join(cycle)


def test_the_checker_sees_an_upward_import() -> None:
    """The rule above can fail: a stream module importing an adapter at run time is
    reported, the same import for typing only is not."""
    known = {"connector.stream.x", "connector.exchanges.bitstamp.adapter"}
    source = "from connector.exchanges.bitstamp.adapter import BitstampAdapter\n"
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    " + source
    tmp = PACKAGE.parent / "tests" / "data"
    for text, expected in ((source, True), (typed, False)):
        probe = tmp / "layout_probe.py"
        probe.write_text(text)
        try:
            deps = runtime_imports("connector.stream.x", probe, known)
        finally:
            probe.unlink()
        assert ("connector.exchanges.bitstamp.adapter" in deps) is expected
    assert RANK[layer_of("connector.exchanges.bitstamp.adapter")] > RANK["stream"]


def test_no_module_is_over_about_600_lines() -> None:
    long = {
        m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


# --- the exchange registry ----------------------------------------------------------
EXCHANGE_FILES = {
    "__init__.py",
    "protocol.py",
    "decoder.py",
    "adapter.py",
    "recovery.py",
    "rest.py",
    "settings.py",
    "simulator.py",
}


@pytest.mark.parametrize("name", NAMES)
def test_each_exchange_folder_has_the_same_parts(name: str) -> None:
    files = {p.name for p in (PACKAGE / "exchanges" / name).glob("*.py")}
    assert files >= EXCHANGE_FILES, EXCHANGE_FILES - files


def test_the_registry_is_the_one_list_of_exchanges() -> None:
    """Settings fields, the CONNECTOR_EXCHANGES and ``simulate --exchange`` choices and
    the adapters all come from the registry: nothing else in the package names an
    exchange's folder."""
    assert list(EXCHANGES) == list(NAMES)
    for name, spec in EXCHANGES.items():
        assert spec.name == name
        # its settings fields are Settings' (BINANCE_WS_URL ... come from its folder)
        assert set(spec.settings.model_fields) <= set(Settings.model_fields)
        assert spec.adapter.startswith(f"connector.exchanges.{name}.")
        assert spec.simulator.startswith(f"connector.exchanges.{name}.")
    from connector.cli import build_parser

    simulate = build_parser()._subparsers._group_actions[0].choices["simulate"]  # type: ignore[union-attr]
    choices = next(a.choices for a in simulate._actions if a.dest == "exchange")
    assert list(choices) == list(NAMES)
    # Outside connector/exchanges/, no module imports an exchange's folder by name.
    pattern = re.compile(r"connector\.exchanges\.(" + "|".join(NAMES) + r")\b")
    outside = [
        str(path.relative_to(PACKAGE.parent))
        for module, path in _modules().items()
        if not module.startswith("connector.exchanges") and pattern.search(path.read_text())
    ]
    assert outside == [], outside


def test_an_exchange_is_built_from_its_spec() -> None:
    settings = Settings()
    for name, spec in EXCHANGES.items():
        adapter = spec.new_adapter(settings)
        assert adapter.name == name
        assert set(adapter.channel_schemas) >= set(spec.channels)


def test_an_adapter_does_not_pull_in_the_kafka_side() -> None:
    """Recovery needs the publisher only for its type: importing every exchange's adapter
    imports nothing of the delivery side, nor aiokafka."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        + "".join(f"import connector.exchanges.{name}.adapter\n" for name in NAMES)
        + "print(sorted(m for m in sys.modules if m == 'aiokafka' or m.startswith("
        "('connector.kafka.', 'connector.encoding.', 'connector.group.'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", out
