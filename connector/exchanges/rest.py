"""A small REST client for recovery calls (I/O shell; parsing lives with each exchange).

Retries (tenacity): network errors, 5xx, 429 and 418 (honouring ``Retry-After``), capped
jittered backoff, bounded in time. Errors are ``RestError`` naming the route and answer.
A limiter spaces requests (``max_per_second``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_random_exponential

from connector.errors import RestError


def _retriable(exc: BaseException) -> bool:
    return isinstance(exc, RestError) and exc.retriable


class RestClient:
    """GET/POST with bounded retries and a request-rate limiter; JSON answers."""

    @staticmethod
    def parse(content: bytes) -> Any:
        """The answer's JSON (a client whose numbers must stay exact overrides this)."""
        return orjson.loads(content)

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        retry_for_s: float = 30.0,
        max_per_second: float = 20.0,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._retry_for_s = retry_for_s
        self._interval = 1.0 / max_per_second
        self._next_slot = 0.0
        self._lock = asyncio.Lock()
        self._client = httpx.AsyncClient(timeout=timeout_s, headers={"Accept": "application/json"})
        self.requests = 0

    async def close(self) -> None:
        await self._client.aclose()

    async def _slot(self) -> None:
        async with self._lock:
            now = time.monotonic()
            wait = self._next_slot - now
            self._next_slot = max(now, self._next_slot) + self._interval
        if wait > 0:
            await asyncio.sleep(wait)

    async def _get_once(
        self, path: str, params: dict[str, str], method: str = "GET", headers: Any = None
    ) -> Any:
        await self._slot()
        self.requests += 1
        try:
            resp = await self._client.request(
                method, self._base + path, params=params, headers=headers
            )
        except httpx.TransportError as exc:
            raise RestError(f"{method} {path} failed: {exc!r}", retriable=True) from exc
        if resp.status_code in (418, 429) or resp.status_code >= 500:
            after = resp.headers.get("Retry-After", "")
            raise RestError(
                f"{method} {path} answered {resp.status_code}: {resp.text:.200}",
                retriable=True,
                retry_after_s=float(after) if after.replace(".", "", 1).isdigit() else 0.0,
            )
        try:
            body = self.parse(resp.content)
        except ValueError as exc:  # orjson.JSONDecodeError is one
            raise RestError(
                f"{method} {path} sent invalid JSON: {resp.text:.200}", retriable=False
            ) from exc
        if resp.status_code >= 400 or (isinstance(body, dict) and body.get("status") == "error"):
            reason = body.get("reason") if isinstance(body, dict) else body
            raise RestError(
                f"{method} {path} answered {resp.status_code}: {reason!r:.200}", retriable=False
            )
        return body

    async def _get(
        self,
        path: str,
        params: dict[str, str],
        method: str = "GET",
        headers: Callable[[], dict[str, str]] | None = None,
    ) -> Any:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_retriable),
            stop=stop_after_delay(self._retry_for_s),
            wait=wait_random_exponential(multiplier=0.25, max=5),
            reraise=True,
        ):
            with attempt:
                try:
                    # Signed requests get fresh headers (nonce, time) on every attempt.
                    return await self._get_once(
                        path, params, method, headers() if headers else None
                    )
                except RestError as exc:
                    if exc.retry_after_s:
                        await asyncio.sleep(min(exc.retry_after_s, 30.0))
                    raise
        raise AssertionError("unreachable")  # pragma: no cover
