"""Bybit's settings fields (``BYBIT_*``)."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from connector import fields
from connector.exchanges.bybit.protocol import CHANNELS, ORDERBOOK_DEPTHS


class _Own(BaseModel):
    bybit_orderbook_depth: int = Field(
        default=50,
        description=f"Bybit orderbook depth, one of {', '.join(map(str, ORDERBOOK_DEPTHS))}.",
    )

    @field_validator("bybit_orderbook_depth")
    @classmethod
    def _bybit_check_depth(cls, value: int) -> int:
        return fields.one_of(value, ORDERBOOK_DEPTHS)


BybitSettings = fields.exchange_settings(
    "bybit",
    ws_url="wss://stream.bybit.com/v5/public/spot",
    ws_doc="Bybit v5 public endpoint (…/spot, …/linear, …/inverse; testnet: "
    "wss://stream-testnet.bybit.com/v5/public/spot).",
    rest_url="https://api.bybit.com",
    rest_doc="Bybit REST base URL (trade backfill).",
    markets=["BTCUSDT", "ETHUSDT"],
    markets_doc="Bybit symbols (comma list, uppercase as Bybit spells them).",
    check_markets=lambda value: fields.symbols(
        value, r"^[A-Z0-9]+$", "a Bybit symbol (uppercase, e.g. BTCUSDT)"
    ),
    channels=CHANNELS,
    channels_doc="Bybit topics (comma list of publicTrade, orderbook).",
    base=_Own,
)
