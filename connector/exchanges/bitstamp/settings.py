"""Bitstamp's settings fields (``BITSTAMP_*``; its markets and channels keep the
connector's first names, ``CONNECTOR_MARKETS`` and ``CONNECTOR_CHANNELS``), and its
private channels' credentials."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from connector import fields
from connector.exchanges.bitstamp.protocol import CHANNELS, PRIVATE_CHANNELS

_MARKET_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def _markets(value: list[str]) -> list[str]:
    return fields.symbols(
        value,
        _MARKET_RE.pattern,
        "a Bitstamp market symbol (lowercase letters and digits, e.g. btcusd or btcusd-perp)",
    )


def _channels(value: list[str]) -> list[str]:
    return fields.channel_list(value, CHANNELS, "Bitstamp public")


class _Own(BaseModel):
    private_channels: fields.CommaList = Field(
        default=[],
        description="Bitstamp private channels (comma list of my_orders, my_trades, "
        "live_trades, my_settlements, my_liquidations); need bitstamp_api_key, "
        "bitstamp_api_secret and bitstamp_user_id.",
    )
    bitstamp_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=fields.alias("BITSTAMP_API_KEY", "bitstamp_api_key"),
        description="Bitstamp API key for private channels (secret; or BITSTAMP_API_KEY_FILE).",
    )
    bitstamp_api_secret: SecretStr | None = Field(
        default=None,
        validation_alias=fields.alias("BITSTAMP_API_SECRET", "bitstamp_api_secret"),
        description="Bitstamp API secret (secret; or BITSTAMP_API_SECRET_FILE).",
    )
    bitstamp_user_id: int | None = Field(
        default=None,
        ge=1,
        validation_alias=fields.alias("BITSTAMP_USER_ID", "bitstamp_user_id"),
        description="Bitstamp customer id: private channel names end with it (checked "
        "against the id the token endpoint returns).",
    )

    _bitstamp_private_split = field_validator("private_channels", mode="before")(fields.split)

    @field_validator("private_channels")
    @classmethod
    def _bitstamp_check_private(cls, value: list[str]) -> list[str]:
        bad = [c for c in value if c not in PRIVATE_CHANNELS]
        if bad:
            raise ValueError(
                f"unknown private channel(s) {bad}; Bitstamp's are {', '.join(PRIVATE_CHANNELS)}"
            )
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate private channels in {value}")
        return value

    @model_validator(mode="after")
    def _bitstamp_check_private_credentials(self) -> Any:
        if self.private_channels and not (
            self.bitstamp_api_key and self.bitstamp_api_secret and self.bitstamp_user_id
        ):
            raise ValueError(
                "private_channels (CONNECTOR_PRIVATE_CHANNELS) need BITSTAMP_API_KEY, "
                "BITSTAMP_API_SECRET and BITSTAMP_USER_ID"
            )
        return self


BitstampSettings = fields.exchange_settings(
    "bitstamp",
    ws_url="wss://ws.bitstamp.net",
    ws_doc="Bitstamp WebSocket API v2 endpoint.",
    rest_url="https://www.bitstamp.net",
    rest_doc="Bitstamp REST API base URL.",
    markets=["btcusd", "ethusd"],
    markets_doc="Bitstamp markets, as Bitstamp spells them (comma list).",
    check_markets=_markets,
    channels=CHANNELS,
    channels_doc="Bitstamp public channels (comma list).",
    check_channels=_channels,
    markets_field="markets",
    channels_field="channels",
    base=_Own,
)
