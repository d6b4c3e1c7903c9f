"""Bybit v5 public WebSocket: the protocol, pure (no I/O).

Facts (Bybit v5 docs, "WebSocket Connect", "Orderbook", "Trade"):
- endpoints ``wss://stream.bybit.com/v5/public/spot`` (also ``/linear``, ``/inverse``;
  testnet ``stream-testnet.bybit.com``);
- ``{"req_id": id, "op": "subscribe"|"unsubscribe", "args": [topics]}``; spot takes at
  most 10 args per request; the answer is ``{"success": bool, "ret_msg": ..., "op": ...,
  "req_id": id, "conn_id": ...}``;
- ``{"req_id": id, "op": "ping"}`` every 20 s keeps the connection; spot answers
  ``{"op": "ping", "ret_msg": "pong", ...}``, derivatives ``{"op": "pong", ...}``;
- ``publicTrade.<symbol>``: ``data`` is a list of trades (``i`` id, ``T`` ms, ``S``
  taker side, ``p``, ``v``);
- ``orderbook.<depth>.<symbol>``: a ``snapshot`` then ``delta`` messages, ``data``
  ``{s, b, a, u, seq}``; size "0" deletes a level; ``u`` is consecutive per topic; a new
  snapshot (``u`` = 1 after a service restart) replaces the book.
"""

from __future__ import annotations

EXCHANGE = "bybit"
CHANNELS: tuple[str, ...] = ("publicTrade", "orderbook")
CHANNEL_SCHEMAS: dict[str, str] = {
    "publicTrade": "connector.Trade",
    "orderbook": "connector.BookDelta",
}
ORDERBOOK_DEPTHS: tuple[int, ...] = (1, 50, 200, 500, 1000)
ARGS_PER_REQUEST = 10
# Bybit documents no per-connection topic limit for public streams; this keeps one
# connection's recovery (every book resent on reconnect) bounded.
TOPICS_PER_CONNECTION = 200


def topic_name(channel: str, market: str, depth: int = 50) -> str:
    if channel == "orderbook":
        return f"orderbook.{depth}.{market}"
    return f"{channel}.{market}"


def split_topic(name: str) -> tuple[str, str] | None:
    """``"orderbook.50.BTCUSDT"`` → ``("orderbook", "BTCUSDT")``; None if not ours."""
    parts = name.split(".")
    if parts[0] == "orderbook" and len(parts) == 3 and parts[1].isdigit():
        return "orderbook", parts[2]
    if parts[0] == "publicTrade" and len(parts) == 2 and parts[1]:
        return "publicTrade", parts[1]
    return None
