"""The peer the benchmark measures beside the connector: cryptofeed with its Kafka backend,
on the same simulated Bitstamp (over TLS: cryptofeed speaks only wss://) and broker.

Run by bench/run.py with the peer's own virtualenv (``.venv-peer``, from
bench/peer-requirements.txt), never imported by the connector:

    .venv-peer/bin/python bench/peer.py WSS_URL HTTPS_URL BOOTSTRAP MARKET[,MARKET...]

It subscribes live_trades and diff_order_book (cryptofeed's TRADES and L2_BOOK) for each
market and publishes every trade and book update to Kafka (topics ``trades-BITSTAMP-<sym>``
and ``book-BITSTAMP-<sym>``, JSON), acks=all like the connector, until SIGTERM. The CA of
the simulator's certificate comes in SSL_CERT_FILE / REQUESTS_CA_BUNDLE.
"""

from __future__ import annotations

import logging
import sys

from cryptofeed import FeedHandler
from cryptofeed.backends.kafka import BookKafka, TradeKafka
from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
from cryptofeed.defines import L2_BOOK, TRADES
from cryptofeed.exchanges import Bitstamp


def main() -> None:
    ws_url, rest_url, bootstrap, markets = sys.argv[1:5]

    class LocalBitstamp(Bitstamp):  # the same feed, pointed at the simulator
        websocket_endpoints = [WebsocketEndpoint(ws_url + "/", options={"compression": None})]  # noqa: RUF012
        rest_endpoints = [  # noqa: RUF012
            RestEndpoint(
                rest_url,
                routes=Routes("/api/v2/trading-pairs-info/", l2book="/api/v2/order_book/{}"),
            )
        ]

    mapping = LocalBitstamp.symbol_mapping()  # normalized → exchange symbol
    wanted = set(markets.split(","))
    symbols = sorted(std for std, exchange in mapping.items() if exchange in wanted)
    kafka = {"bootstrap_servers": bootstrap, "acks": "all", "client_id": "cryptofeed-bench"}
    handler = FeedHandler(config={"log": {"disabled": True}})
    handler.add_feed(
        LocalBitstamp(
            symbols=symbols,
            channels=[TRADES, L2_BOOK],
            callbacks={TRADES: TradeKafka(**kafka), L2_BOOK: BookKafka(**kafka)},
        )
    )
    logging.getLogger("feedhandler").setLevel(logging.WARNING)
    handler.run()


if __name__ == "__main__":
    main()
