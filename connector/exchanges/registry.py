"""The one list of exchanges the connector speaks.

Adding an exchange: a folder ``connector/exchanges/<name>/`` with the same files as the
others (``protocol``, ``decoder``, ``adapter``, ``recovery``, ``rest``, ``settings``,
``simulator``, and the ``SPEC`` in its ``__init__``), and its name below. Its settings
fields, its ``CONNECTOR_EXCHANGES`` and ``connector simulate --exchange`` choice, and its
adapter all come from there.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from connector.exchanges.spec import ExchangeSpec

if TYPE_CHECKING:
    from connector.exchanges.base import Adapter
    from connector.settings import Settings

NAMES = ("bitstamp", "binance", "bybit", "bitfinex")

EXCHANGES: dict[str, ExchangeSpec] = {
    name: import_module(f"connector.exchanges.{name}").SPEC for name in NAMES
}


def adapter_for(exchange: str, settings: Settings) -> Adapter:
    """The adapter of a supported exchange (``CONNECTOR_EXCHANGES``)."""
    spec = EXCHANGES.get(exchange)
    if spec is None:
        raise ValueError(f"unsupported exchange {exchange!r}")
    return spec.new_adapter(settings)
