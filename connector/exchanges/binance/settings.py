"""Binance's settings fields (``BINANCE_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from connector import fields
from connector.exchanges.binance.protocol import CHANNELS


class _Own(BaseModel):
    binance_depth_interval_ms: Literal[100, 1000] = Field(
        default=100, description="Binance depth diff interval: 100 (depth@100ms) or 1000 ms."
    )


BinanceSettings = fields.exchange_settings(
    "binance",
    ws_url="wss://stream.binance.com:9443/stream",
    ws_doc="Binance combined-stream endpoint (…/stream; Binance US: "
    "wss://stream.binance.us:9443/stream, testnet: wss://stream.testnet.binance.vision/stream).",
    rest_url="https://api.binance.com",
    rest_doc="Binance REST base URL (Binance US: https://api.binance.us).",
    markets=["btcusdt", "ethusdt"],
    markets_doc="Binance symbols (comma list; case-insensitive, topics use lowercase).",
    check_markets=lambda value: fields.symbols(
        value, r"^[a-z0-9]+$", "a Binance symbol (e.g. btcusdt)", str.lower
    ),
    channels=CHANNELS,
    channels_doc="Binance streams (comma list of trade, aggTrade, depth, bookTicker).",
    base=_Own,
)
