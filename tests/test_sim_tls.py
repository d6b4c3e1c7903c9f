"""The simulated exchanges serve TLS too (clients that speak only wss://, such as the peer
the benchmark measures), with Bitstamp's own market names on its REST route."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import orjson
import trustme
import websockets

from connector.exchanges.registry import EXCHANGES


async def test_a_simulator_serves_wss_and_https(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile, cafile = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    server = EXCHANGES["bitstamp"].new_simulator(
        host="127.0.0.1", port=0, rate=50, seed=1, events=0, markets=("btcusd", "btcusd-perp")
    )
    server.use_tls(str(certfile), str(keyfile))
    await server.start()
    try:
        assert server.ws_url.startswith("wss://") and server.rest_url.startswith("https://")
        client = ssl.create_default_context(cafile=str(cafile))
        async with websockets.connect(server.ws_url, ssl=client) as ws:
            await ws.send('{"event":"bts:subscribe","data":{"channel":"live_trades_btcusd"}}')
            first = orjson.loads(await ws.recv())
            assert first["event"] == "bts:subscription_succeeded"
        async with httpx.AsyncClient(verify=client) as http:
            pairs = (await http.get(server.rest_url + "/api/v2/trading-pairs-info/")).json()
        assert {p["name"]: p["url_symbol"] for p in pairs} == {
            "BTC/USD": "btcusd",
            "BTC/USD-PERP": "btcusd-perp",
        }
        # a client that does not trust the throwaway CA is refused
        untrusted = ssl.create_default_context()
        try:
            async with websockets.connect(server.ws_url, ssl=untrusted, open_timeout=5):
                raise AssertionError("an untrusted certificate was accepted")
        except ssl.SSLCertVerificationError:
            pass
    finally:
        await server.stop()
