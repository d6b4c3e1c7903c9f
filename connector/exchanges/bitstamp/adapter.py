"""Bitstamp WebSocket API v2 behind the adapter interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector.errors import RestError
from connector.exchanges.base import Adapter, WireProtocol
from connector.exchanges.bitstamp.decoder import BitstampDecoder
from connector.exchanges.bitstamp.protocol import (
    CHANNEL_SCHEMAS,
    EXCHANGE,
    MAX_CHANNELS_PER_CONNECTION,
    channel_name,
    is_private,
    plan_subscriptions,
    subscribe_frame,
)
from connector.exchanges.bitstamp.recovery import BitstampGaps
from connector.exchanges.bitstamp.rest import BitstampRest

if TYPE_CHECKING:
    from connector.kafka.publisher import Publisher
    from connector.metrics import Metrics
    from connector.settings import Settings
    from connector.stream.gaps import Gaps, ResyncWanted, SubState
    from connector.stream.recent import RecentTrades


class BitstampAdapter(Adapter):
    name = EXCHANGE
    channel_schemas = CHANNEL_SCHEMAS
    max_subs_per_connection = MAX_CHANNELS_PER_CONNECTION

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.bitstamp_ws_url, settings.bitstamp_rest_url)
        self.rest = BitstampRest(settings.bitstamp_rest_url)

    def plan(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
        s = self.settings
        subs, skipped = plan_subscriptions(s.markets, s.channels, s.private_channels)
        return subs, skipped, "Bitstamp sends funding_rate for perpetual markets only"

    def sub_name(self, channel: str, market: str) -> str:
        return channel_name(channel, market, self.settings.bitstamp_user_id)

    def new_protocol(self, connection_id: str) -> WireProtocol:
        return BitstampDecoder(connection_id)

    def new_gaps(
        self,
        publisher: Publisher,
        recent: RecentTrades,
        metrics: Metrics,
        resync: ResyncWanted,
    ) -> Gaps:
        return BitstampGaps(publisher, self.rest, recent, metrics, resync)

    def is_private(self, name: str) -> bool:
        return is_private(name)

    def silence_hint(self, sub: SubState) -> str:
        return (
            f"is {sub.market!r} a listed Bitstamp market? (unknown markets are "
            "acknowledged, then silent)"
        )

    async def subscribe_frames(
        self, proto: WireProtocol, subs: list[SubState]
    ) -> tuple[list[str], list[SubState], str]:
        """Private channels get a fresh token (one per call, fetched only if needed)."""
        frames: list[str] = []
        failed: list[SubState] = []
        token: str | None = None
        error = ""
        for sub in subs:
            if not is_private(sub.name):
                frames.append(subscribe_frame(sub.name))
                continue
            if token is None and not error:
                try:
                    token = await self._private_token()
                except RestError as exc:
                    error = str(exc)
            if token is None:
                failed.append(sub)
            else:
                frames.append(subscribe_frame(sub.name, token))
        return frames, failed, error

    async def _private_token(self) -> str:
        s = self.settings
        if s.bitstamp_api_key is None or s.bitstamp_api_secret is None:
            raise RestError("BITSTAMP_API_KEY and BITSTAMP_API_SECRET are not set", retriable=False)
        body = await self.rest.websockets_token(
            s.bitstamp_api_key.get_secret_value(), s.bitstamp_api_secret.get_secret_value()
        )
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise RestError(f"the token endpoint sent no token: {body!r:.200}", retriable=False)
        if str(body.get("user_id")) != str(s.bitstamp_user_id):
            raise RestError(
                f"the API key belongs to user {body.get('user_id')}, not BITSTAMP_USER_ID "
                f"{s.bitstamp_user_id}: the private channel names would not match",
                retriable=False,
            )
        return token

    async def aclose(self) -> None:
        await self.rest.close()
