"""Bitfinex's settings fields (``BITFINEX_*``)."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from connector import fields
from connector.exchanges.bitfinex.protocol import BOOK_LENGTHS, CHANNELS


class _Own(BaseModel):
    bitfinex_book_length: int = Field(
        default=25,
        description=f"Bitfinex book length, one of {', '.join(map(str, BOOK_LENGTHS))} "
        "(checksums cover the top 25).",
    )

    @field_validator("bitfinex_book_length")
    @classmethod
    def _bitfinex_check_length(cls, value: int) -> int:
        return fields.one_of(value, BOOK_LENGTHS)


BitfinexSettings = fields.exchange_settings(
    "bitfinex",
    ws_url="wss://api-pub.bitfinex.com/ws/2",
    ws_doc="Bitfinex public WebSocket v2 endpoint.",
    rest_url="https://api-pub.bitfinex.com",
    rest_doc="Bitfinex public REST base URL (trade backfill).",
    markets=["tBTCUSD", "tETHUSD"],
    markets_doc="Bitfinex trading pairs (comma list, e.g. tBTCUSD).",
    check_markets=lambda value: fields.symbols(
        value, r"^t[A-Z0-9:]+$", "a Bitfinex trading pair (t + uppercase, e.g. tBTCUSD)"
    ),
    channels=CHANNELS,
    channels_doc="Bitfinex channels (comma list of trades, book).",
    base=_Own,
)
