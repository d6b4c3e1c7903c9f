"""Bitstamp's field values, read exactly: decimals from the ``*_str`` twins (or number
text), ids, the 0/1 side, timestamps, book levels, and what a record keeps in ``extra``.

A decimal that arrived as a JSON float raises ``NeedsExactNumbers``: the decoder parses
the frame again keeping every number's text, so nothing is ever rounded.
"""

from __future__ import annotations

from typing import Any

from connector.events import Level, Side
from connector.exchanges.wire import invalid, json_text, missing, string_levels
from connector.timeutil import parse_epoch_us

SIDES = {
    0: Side.BUY,
    1: Side.SELL,
    "0": Side.BUY,
    "1": Side.SELL,
    "buy": Side.BUY,
    "sell": Side.SELL,
}


class NeedsExactNumbers(Exception):
    """A decimal arrived as a JSON float; parse the frame again keeping number text."""


def decimal(data: dict[str, Any], str_key: str, num_key: str | None = None) -> str:
    """Exact decimal text of a required field, preferring Bitstamp's ``*_str`` twin."""
    value = data.get(str_key)
    if value is None and num_key is not None:
        value = data.get(num_key)
    if value is None:
        raise missing(str_key)
    return decimal_value(str_key, value)


def opt_decimal(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else decimal_value(key, value)


def decimal_value(key: str, value: Any) -> str:
    if isinstance(value, str):
        if not value:
            raise invalid(key, value)
        return value
    if isinstance(value, bool):
        raise invalid(key, value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        raise NeedsExactNumbers
    raise invalid(key, value)


def ident(data: dict[str, Any], str_key: str, num_key: str) -> str:
    value = data.get(str_key)
    if value is None:
        value = data.get(num_key)
    if value is None:
        raise missing(num_key)
    return opt_ident(num_key, value)  # type: ignore[return-value]


def opt_ident(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise invalid(key, value)


def side_of(key: str, value: Any) -> Side:
    """Bitstamp's 0/1 (also "0"/"1", "buy"/"sell"); any other scalar is UNKNOWN, while a
    list or an object is an invalid field (it cannot even be looked up)."""
    if isinstance(value, list | dict):
        raise invalid(key, value)
    return SIDES.get(value, Side.UNKNOWN)


def timestamp(data: dict[str, Any], *keys: str) -> tuple[int, str]:
    """The first present timestamp among ``keys`` as (µs, original text)."""
    for key in keys:
        raw = data.get(key)
        if raw is None or raw == "":
            continue
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise invalid(key, raw)
        try:
            return parse_epoch_us(raw), raw if isinstance(raw, str) else str(raw)
        except (ValueError, TypeError):
            raise invalid(key, raw) from None
    raise missing(keys[0])


def extra(data: dict[str, Any], known: frozenset[str]) -> dict[str, str]:
    if data.keys() <= known:
        return {}
    return {k: v if isinstance(v, str) else json_text(v) for k, v in data.items() if k not in known}


def levels(data: dict[str, Any], key: str) -> tuple[Level, ...]:
    raw = data.get(key)
    if raw is None:
        raise missing(key)
    if type(raw) is not list:
        raise invalid(key, raw)
    fast = string_levels(raw, WIDTHS)
    if fast is not None:
        return fast
    out: list[Level] = []
    for entry in raw:
        if not isinstance(entry, list) or not 2 <= len(entry) <= 3:
            raise invalid(key, entry)
        price = decimal_value(key, entry[0])
        amount = decimal_value(key, entry[1])
        if len(entry) == 3:
            order_id = opt_ident(key, entry[2])
            out.append((price, amount) if order_id is None else (price, amount, order_id))
        else:
            out.append((price, amount))
    return tuple(out)


WIDTHS = frozenset({2, 3})
