"""The README is an entry point and every link in the documentation leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens."""
    out, fence = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        if not fence and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_the_readme_is_an_entry_point() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme) <= 15_000, f"README.md is {len(readme)} characters"
    assert "make run" in readme and "make test" in readme  # the two commands
    assert "make demo" in readme
    for doc in ("architecture", "exchanges", "consumers", "operations", "settings"):
        assert f"docs/{doc}.md" in readme
    assert "bench/README.md" in readme


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(doc: Path) -> None:
    broken = []
    for target in LINK.findall(doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists() or (
            anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text())
        ):
            broken.append(target)
    assert not broken, f"{doc.name}: {broken}"


def test_the_link_check_can_fail(tmp_path: Path) -> None:
    assert "local-stack-docker-compose" in _anchors("## Local stack (docker compose)\n")
    assert "nowhere" not in _anchors("# Somewhere\n")
