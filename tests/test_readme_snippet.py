"""docs/consumers.md's "Reading it in Python" program, run exactly as written against a real
broker holding the connector's records, with nothing importable but the standard library
and the packages its install line names (and what they depend on)."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

from connector.exchanges.bitstamp.simulator import Simulator
from tests.conftest import Broker
from tests.harness import connector_process
from tests.test_resilience import env_for, wait_metric

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent

# Runs the snippet with an import hook: a top-level module outside the allowed set fails
# to import, as it would in a virtualenv holding only the install line's packages.
GUARD = """
import importlib.abc, runpy, sys
allowed = set(sys.argv[1].split(","))
class Only(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or top in allowed or top.startswith("_"):
            return None
        raise ModuleNotFoundError(f"No module named {name!r} (not installed by the install line)")
sys.meta_path.insert(0, Only())
sys.argv = [sys.argv[2], *sys.argv[3:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def snippet() -> tuple[str, list[str]]:
    """The fenced program under "Reading it in Python" and its install line's packages."""
    readme = (ROOT / "docs" / "consumers.md").read_text()
    section = readme.split("## Reading it in Python", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    install = re.search(r"`pip install ([^`]+)`", section)
    assert install, "the section names no install line"
    return code, install.group(1).split()


def importable(distributions: list[str]) -> set[str]:
    """Top-level import names of these distributions and of everything they require."""
    names: set[str] = set()
    todo, seen = list(distributions), set()
    while todo:
        dist = metadata.distribution(todo.pop())
        if dist.metadata["Name"].lower() in seen:
            continue
        seen.add(dist.metadata["Name"].lower())
        top = dist.read_text("top_level.txt")
        files = [str(f) for f in dist.files or []]
        names |= set(top.split()) if top else {f.split("/")[0] for f in files}
        for req in dist.requires or []:
            if "extra ==" not in req:
                todo.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
    return {
        n.removesuffix(".py")
        for n in names
        if not n.endswith((".dist-info", ".libs", ".pth")) and n not in ("..", "__pycache__")
    }


def test_the_snippet_imports_only_what_its_install_line_names() -> None:
    code, packages = snippet()
    assert set(packages) == {"aiokafka", "cramjam", "fastavro"}
    tops = {
        alias.name.partition(".")[0]
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").partition(".")[0]
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.ImportFrom)
    }
    assert tops - set(sys.stdlib_module_names) <= set(packages), tops


async def test_the_readme_snippet_prints_the_connectors_records_and_ends(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    code, packages = snippet()
    program = tmp_path / "read.py"
    program.write_text(code)
    sim = Simulator(markets=("btcusd",), rate=20, events_per_subscription=30, record=True)
    await sim.start()
    env = env_for(broker, sim, topic_prefix, "live_trades")
    try:
        async with connector_process(env, tmp_path) as conn:
            await wait_metric(conn, 'connector_events_published_total{channel="live_trades"', 30)
            assert await conn.stop() == 0
    finally:
        await sim.stop()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        GUARD,
        ",".join(sorted(importable(packages))),
        str(program),
        broker.bootstrap,
        rf"{topic_prefix}\.bitstamp\.live_trades\..*",
        cwd=ROOT,  # it reads schemas/ from the checkout
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)  # it ends by itself
    assert proc.returncode == 0, err.decode()[-3000:]
    printed = [line.split(" ", 2) for line in out.decode().splitlines()]
    records = [json.loads(r) for _, _, r in printed]
    sent = sim.frames[("live_trades", "btcusd")]
    assert [(r["trade_id"], r["price"], r["amount"]) for r in records] == [
        (f["data"]["id_str"], f["data"]["price_str"], f["data"]["amount_str"]) for f in sent
    ]
    print(f"consumers.md program: {len(records)} records printed, then it ended on its own")
