"""Bitstamp WebSocket API v2 adapter: protocol constants and the pure decoder."""
