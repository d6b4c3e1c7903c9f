"""The simulated exchanges' shared parts: the server base and the venue of Binance, Bybit
and Bitfinex (each exchange's simulator is in its own folder)."""
