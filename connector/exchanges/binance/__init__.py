"""Binance: its protocol facts, decoder, adapter, recovery, REST client, settings fields
and simulator; ``SPEC`` is what the registry (``connector.exchanges.registry``) lists."""

from connector.exchanges.binance.protocol import CHANNELS
from connector.exchanges.binance.settings import BinanceSettings
from connector.exchanges.spec import ExchangeSpec

SPEC = ExchangeSpec.of(__name__, BinanceSettings, CHANNELS)
