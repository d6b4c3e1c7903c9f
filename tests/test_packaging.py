"""The wheel (and so the container image) carries every subpackage of ``connector``.

A static package list once left out the Binance, Bybit and Bitfinex packages: an
editable install worked, a ``pip install .`` could not run those exchanges."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatchcase
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _packages_on_disk() -> set[str]:
    return {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "connector").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


def _declared(name: str, config: dict[str, object]) -> bool:
    packages = config.get("packages")
    if isinstance(packages, list):
        return name in packages
    assert isinstance(packages, dict) and "find" in packages, "no package configuration"
    find = packages["find"]
    assert isinstance(find, dict)
    include = find.get("include", ["*"])
    exclude = find.get("exclude", [])
    return any(fnmatchcase(name, p) for p in include) and not any(
        fnmatchcase(name, p) for p in exclude
    )


def test_every_subpackage_goes_into_the_wheel() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = _packages_on_disk()
    assert {"connector", "connector.exchanges.bitstamp", "connector.exchanges.binance"} <= on_disk
    missing = sorted(name for name in on_disk if not _declared(name, config))
    assert missing == []
