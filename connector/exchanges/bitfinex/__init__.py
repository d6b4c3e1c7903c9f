"""Bitfinex: its protocol facts, decoder, adapter, recovery, REST client, settings fields
and simulator; ``SPEC`` is what the registry (``connector.exchanges.registry``) lists."""

from connector.exchanges.bitfinex.protocol import CHANNELS
from connector.exchanges.bitfinex.settings import BitfinexSettings
from connector.exchanges.spec import ExchangeSpec

SPEC = ExchangeSpec.of(__name__, BitfinexSettings, CHANNELS)
