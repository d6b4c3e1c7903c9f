"""Bitstamp REST calls used for recovery (I/O shell; parsing lives in ``recovery``).

- ``GET /api/v2/transactions/{market}/?time=minute|hour|day``: recent trades (backfill);
- ``GET /api/v2/order_book/{market}/``: a book snapshot (resync); edge-cached about 1 s,
  so a nonce parameter asks for a fresh one;
- ``POST /api/v2/websockets_token/``: a WebSocket token for private channels, signed
  with the API key and secret (v2 HMAC-SHA256 authentication, ``sign_v2``).

Retries (tenacity): network errors, 5xx and 429 (honouring ``Retry-After``), capped
jittered backoff, bounded in time. Errors are ``RestError`` naming the route and answer
(Bitstamp errors are JSON ``{"status": "error", "reason": ..., "code": ...}``).
A limiter keeps well under Bitstamp's 400 requests/s.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from connector.exchanges.rest import RestClient


class BitstampRest(RestClient):
    async def transactions(self, market: str, span: str) -> Any:
        return await self._get(f"/api/v2/transactions/{market}/", {"time": span})

    async def order_book(self, market: str) -> Any:
        # The route is edge-cached ~1 s: a nonce asks for a fresh snapshot.
        return await self._get(
            f"/api/v2/order_book/{market}/", {"group": "1", "nonce": uuid.uuid4().hex[:12]}
        )

    async def websockets_token(self, api_key: str, api_secret: str) -> Any:
        """``{"token": ..., "user_id": ..., "valid_sec": ...}`` for private channels."""
        path = "/api/v2/websockets_token/"
        host = urlsplit(self._base).netloc

        def headers() -> dict[str, str]:
            nonce = str(uuid.uuid4())
            timestamp = str(int(time.time() * 1000))
            signature = sign_v2(
                api_key, api_secret, "POST", host, path, "", "", nonce, timestamp, ""
            )
            return {
                "X-Auth": "BITSTAMP " + api_key,
                "X-Auth-Signature": signature,
                "X-Auth-Nonce": nonce,
                "X-Auth-Timestamp": timestamp,
                "X-Auth-Version": "v2",
            }

        return await self._get(path, {}, "POST", headers)


def sign_v2(
    api_key: str,
    api_secret: str,
    method: str,
    host: str,
    path: str,
    query: str,
    content_type: str,
    nonce: str,
    timestamp: str,
    body: str,
) -> str:
    """Bitstamp API v2 request signature: HMAC-SHA256 with the API secret over
    ``"BITSTAMP " + key + method + host + path + query + content_type + nonce + timestamp
    + "v2" + body`` (no separators; the content type only when there is a body), hex."""
    message = (
        f"BITSTAMP {api_key}{method}{host}{path}{query}"
        f"{content_type if body else ''}{nonce}{timestamp}v2{body}"
    )
    return hmac.new(api_secret.encode(), message.encode(), hashlib.sha256).hexdigest()
