"""Bybit: its protocol facts, decoder, adapter, recovery, REST client, settings fields
and simulator; ``SPEC`` is what the registry (``connector.exchanges.registry``) lists."""

from connector.exchanges.bybit.protocol import CHANNELS
from connector.exchanges.bybit.settings import BybitSettings
from connector.exchanges.spec import ExchangeSpec

SPEC = ExchangeSpec.of(__name__, BybitSettings, CHANNELS)
