"""A small client for the Confluent Schema Registry REST API (also Karapace, Redpanda).

Only what the connector needs: register a schema under a subject (idempotent: the
registry returns the existing id for an identical schema) and fetch a schema by id.
Transient failures (connection errors, 5xx, 429) are retried with backoff for a bounded
time; anything else is a ``SchemaError`` that says what the registry answered.
"""

from __future__ import annotations

from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from connector.errors import SchemaError

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class _Transient(Exception):
    pass


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, _Transient | httpx.TransportError)


class SchemaRegistryClient:
    def __init__(self, url: str, *, timeout_s: float = 10.0, retry_for_s: float = 30.0) -> None:
        self._url = url.rstrip("/")
        self._retry_for_s = retry_for_s
        self._client = httpx.AsyncClient(
            timeout=timeout_s, headers={"Accept": CONTENT_TYPE, "Content-Type": CONTENT_TYPE}
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_is_transient),
            stop=stop_after_delay(self._retry_for_s),
            wait=wait_random_exponential(multiplier=0.2, max=5),
            reraise=True,
        ):
            with attempt:
                try:
                    resp = await self._client.request(method, self._url + path, json=body)
                except httpx.TransportError as exc:
                    raise _Transient(f"schema registry {self._url} unreachable: {exc}") from exc
                if resp.status_code >= 500 or resp.status_code == 429:
                    raise _Transient(
                        f"schema registry answered {resp.status_code}: {resp.text:.200}"
                    )
                if resp.status_code >= 400:
                    raise SchemaError(
                        f"schema registry {method} {path} answered {resp.status_code}: "
                        f"{resp.text:.300}"
                    )
                try:
                    return resp.json()
                except ValueError as exc:
                    raise SchemaError(
                        f"schema registry sent invalid JSON: {resp.text:.200}"
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def register(self, subject: str, schema_text: str) -> int:
        try:
            answer = await self._request(
                "POST", f"/subjects/{subject}/versions", {"schema": schema_text}
            )
        except _Transient as exc:
            raise SchemaError(str(exc)) from exc
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), int):
            raise SchemaError(f"schema registry registration answer has no id: {answer!r:.200}")
        return int(answer["id"])

    async def schema_by_id(self, schema_id: int) -> str:
        try:
            answer = await self._request("GET", f"/schemas/ids/{schema_id}")
        except _Transient as exc:
            raise SchemaError(str(exc)) from exc
        if not isinstance(answer, dict) or not isinstance(answer.get("schema"), str):
            raise SchemaError(f"schema registry has no schema for id {schema_id}: {answer!r:.200}")
        return str(answer["schema"])
