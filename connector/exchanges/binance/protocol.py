"""Binance spot WebSocket market streams: the protocol, pure (no I/O).

Facts (Binance spot API docs, "WebSocket Streams"):
- endpoint ``wss://stream.binance.com:9443``; on ``/stream`` every payload is wrapped as
  ``{"stream": "<name>", "data": {...}}`` (combined streams), which names the
  subscription of each event; testnet and regional endpoints (Binance US) speak the same;
- ``{"method": "SUBSCRIBE"|"UNSUBSCRIBE", "params": [names], "id": n}`` is answered by
  ``{"result": null, "id": n}``; ``LIST_SUBSCRIPTIONS`` by ``{"result": [names], "id": n}``
  (in order with the stream: our heartbeat and make-before-break barrier); errors are
  ``{"code": c, "msg": "...", "id": n}`` (or nested under ``"error"``);
- at most 1024 streams per connection and 5 incoming messages per second (pings, pongs
  and JSON control frames), connections are closed after 24 hours; the server pings every
  20 s and the client must pong (the WebSocket library does);
- stream names are lowercase: ``<symbol>@trade``, ``<symbol>@aggTrade``,
  ``<symbol>@depth@100ms`` (diffs with first/final update ids ``U``/``u``) and
  ``<symbol>@bookTicker``;
- a local book: buffer the diffs, get ``GET /api/v3/depth`` (``lastUpdateId``), drop
  diffs with ``u`` <= ``lastUpdateId``, the first kept must have ``U`` <= ``lastUpdateId``
  + 1, and each next diff's ``U`` must be the previous ``u`` + 1, else start over.
"""

from __future__ import annotations

EXCHANGE = "binance"
CHANNELS: tuple[str, ...] = ("trade", "aggTrade", "depth", "bookTicker")
CHANNEL_SCHEMAS: dict[str, str] = {
    "trade": "connector.Trade",
    "aggTrade": "connector.Trade",
    "depth": "connector.BookDelta",
    "bookTicker": "connector.BookSnapshot",
}
MAX_STREAMS_PER_CONNECTION = 1024
NAMES_PER_FRAME = 100  # streams per SUBSCRIBE frame
INCOMING_MESSAGES_PER_SECOND = 5
CONNECTION_LIFETIME_S = 24 * 3600.0


def stream_name(channel: str, market: str, depth_ms: int = 100) -> str:
    symbol = market.lower()
    if channel == "depth":
        return f"{symbol}@depth@{depth_ms}ms" if depth_ms == 100 else f"{symbol}@depth"
    return f"{symbol}@{channel}"


def split_stream(name: str) -> tuple[str, str] | None:
    """``"btcusdt@depth@100ms"`` → ``("depth", "btcusdt")``; None if not ours."""
    symbol, _, rest = name.partition("@")
    channel = rest.split("@", 1)[0]
    if not symbol or channel not in CHANNEL_SCHEMAS:
        return None
    return channel, symbol
