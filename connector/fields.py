"""Building blocks of the settings: field spellings and checks shared by every part that
owns settings fields (the exchanges' ``settings`` modules, ``connector.kafka.settings``
and ``connector.settings``, which joins them into one ``Settings``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, BaseModel, Field, create_model, field_validator
from pydantic_settings import NoDecode

ENV_PREFIX = "CONNECTOR_"

# A comma list in the environment (``a,b``), a list in YAML.
CommaList = Annotated[list[str], NoDecode]


def alias(env: str, name: str) -> Any:
    """A field read from ``env`` (an interface name kept stable) or its own name."""
    return AliasChoices(name, env)


def split(value: Any) -> Any:
    """``"a, b"`` → ``["a", "b"]`` (a ``mode="before"`` validator of comma lists)."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def symbols(
    value: list[str], pattern: str, what: str, normalize: Callable[[str], str] | None = None
) -> list[str]:
    if not value:
        raise ValueError("at least one market is required")
    if normalize is not None:
        value = [normalize(v) for v in value]
    for m in value:
        if not re.match(pattern, m):
            raise ValueError(f"market {m!r} is not {what}")
    if len(set(value)) != len(value):
        raise ValueError(f"duplicate markets in {value}")
    return value


def channel_list(value: list[str], known: tuple[str, ...], exchange: str) -> list[str]:
    if not value:
        raise ValueError("at least one channel is required")
    bad = [c for c in value if c not in known]
    if bad:
        raise ValueError(f"unknown channel(s) {bad}; {exchange} channels are {', '.join(known)}")
    if len(set(value)) != len(value):
        raise ValueError(f"duplicate channels in {value}")
    return value


def ws_url_check(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"{value!r} is not a ws:// or wss:// URL")
    return value


def http_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{redact_url(value)!r} is not an http:// or https:// URL")
    return value.rstrip("/")


def one_of(value: int, allowed: tuple[int, ...]) -> int:
    if value not in allowed:
        raise ValueError(f"{value} is not one of {allowed}")
    return value


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***:***@{host}", parts.path, parts.query, ""))


def upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def exchange_settings(
    name: str,
    *,
    ws_url: str,
    ws_doc: str,
    rest_url: str,
    rest_doc: str,
    markets: list[str],
    markets_doc: str,
    check_markets: Callable[[list[str]], list[str]],
    channels: tuple[str, ...],
    channels_doc: str,
    check_channels: Callable[[list[str]], list[str]] | None = None,
    markets_field: str = "",
    channels_field: str = "",
    base: type[BaseModel] = BaseModel,
) -> type[BaseModel]:
    """The fields every exchange has, spelled the interface's way: ``<name>_ws_url``
    (``<NAME>_WS_URL``), ``<name>_rest_url``, ``<name>_markets``, ``<name>_channels``,
    checked; ``base`` holds the exchange's own (e.g. a book depth). Bitstamp, the first,
    keeps the connector's names for its markets and channels (``markets_field``,
    ``channels_field``: ``CONNECTOR_MARKETS``, ``CONNECTOR_CHANNELS``)."""
    prefix = name.upper()
    title = name.capitalize()
    mfield = markets_field or f"{name}_markets"
    cfield = channels_field or f"{name}_channels"
    menv = f"CONNECTOR_{mfield.upper()}" if markets_field else f"{prefix}_MARKETS"
    cenv = f"CONNECTOR_{cfield.upper()}" if channels_field else f"{prefix}_CHANNELS"

    def known_channels(value: list[str]) -> list[str]:
        return channel_list(value, channels, title)

    checks: dict[str, Any] = {
        f"_{name}_split": field_validator(mfield, cfield, mode="before")(split),
        f"_{name}_ws_url": field_validator(f"{name}_ws_url")(ws_url_check),
        f"_{name}_rest_url": field_validator(f"{name}_rest_url")(http_url),
        f"_{name}_markets": field_validator(mfield)(check_markets),
        f"_{name}_channels": field_validator(cfield)(check_channels or known_channels),
    }
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        f"{title}Settings",
        __base__=base,
        __validators__=checks,
        **{
            f"{name}_ws_url": (
                str,
                Field(
                    ws_url,
                    validation_alias=alias(f"{prefix}_WS_URL", f"{name}_ws_url"),
                    description=ws_doc,
                ),
            ),
            f"{name}_rest_url": (
                str,
                Field(
                    rest_url,
                    validation_alias=alias(f"{prefix}_REST_URL", f"{name}_rest_url"),
                    description=rest_doc,
                ),
            ),
            mfield: (
                CommaList,
                Field(markets, validation_alias=alias(menv, mfield), description=markets_doc),
            ),
            cfield: (
                CommaList,
                Field(
                    list(channels), validation_alias=alias(cenv, cfield), description=channels_doc
                ),
            ),
        },
    )
    return model
