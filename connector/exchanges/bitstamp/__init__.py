"""Bitstamp: its protocol facts, decoder, adapter, recovery, REST client, settings fields
and simulator; ``SPEC`` is what the registry (``connector.exchanges.registry``) lists."""

from connector.exchanges.bitstamp.protocol import CHANNELS
from connector.exchanges.bitstamp.settings import BitstampSettings
from connector.exchanges.spec import ExchangeSpec

SPEC = ExchangeSpec.of(
    __name__, BitstampSettings, CHANNELS, ("bitstamp_api_key", "bitstamp_api_secret")
)
