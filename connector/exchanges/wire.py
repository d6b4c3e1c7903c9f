"""Field readers shared by the exchange decoders (pure). Each raises ``ProtocolError``
naming the field, so a bad frame is dead-lettered with a reason, never half-decoded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from typing import Any

import orjson

from connector.errors import ProtocolError
from connector.events import Level


@contextmanager
def about(frame: bytes | str) -> Iterator[None]:
    """A ProtocolError raised inside keeps the whole frame (for the dead letter)."""
    try:
        yield
    except ProtocolError as exc:
        exc.frame = frame
        raise


def loads(frame: bytes | str) -> Any:
    try:
        return orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("invalid_json", str(exc), frame) from None


def load_object(frame: bytes | str) -> dict[str, Any]:
    """A frame that must be a JSON object."""
    msg = loads(frame)
    if not isinstance(msg, dict):
        raise ProtocolError("not_an_object", f"frame is a JSON {type(msg).__name__}", frame)
    return msg


def missing(field: str) -> ProtocolError:
    return ProtocolError("missing_field", f"required field {field!r} is missing")


def invalid(field: str, value: Any) -> ProtocolError:
    return ProtocolError("invalid_field", f"field {field!r} has an invalid value {value!r:.80}")


def json_text(value: Any) -> str:
    """A JSON value as compact text (``extra`` keeps what a record has no field for)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an int beyond 64 bits: the exact-numbers parse keeps it whole
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def batches(names: list[str], size: int) -> list[list[str]]:
    """Names in requests of at most ``size`` (an exchange's per-request limit)."""
    return [names[i : i + size] for i in range(0, len(names), size)]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def loads_exact(frame: bytes | str) -> Any:
    """JSON whose numbers are decimals: every non-integer number keeps its original text
    (``"0.1"``, never the float 0.1000000000000000055…); integers stay ``int``."""
    try:
        return json.loads(frame, parse_float=str, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("invalid_json", str(exc), frame) from None


def text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if isinstance(value, str) and value:
        return value
    if value is None:
        raise ProtocolError("missing_field", f"no {key!r}")
    raise ProtocolError("invalid_field", f"{key!r} is {value!r:.60}, not text")


def integer(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if value is None:
        raise ProtocolError("missing_field", f"no {key!r}")
    raise ProtocolError("invalid_field", f"{key!r} is {value!r:.60}, not an integer")


def decimal_text(value: Any, what: str) -> str:
    """A decimal given as text (or as an integer, or exact text from ``loads_exact``)."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ProtocolError("invalid_field", f"{what} is {value!r:.60}, not a decimal")


_LIST = {list}
PAIRS = frozenset({2})


def string_levels(raw: list[Any], widths: frozenset[int]) -> tuple[Level, ...] | None:
    """The fast path for book levels (hundreds per frame), in C-level passes only: the
    levels if every entry is a list of ``widths`` non-empty strings, else None (the caller
    then reads entry by entry, to accept numbers or name the bad one). str.join is the
    quickest check that all are strings."""
    if set(map(type, raw)) <= _LIST and set(map(len, raw)) <= widths:
        flat = list(chain.from_iterable(raw))
        try:
            "".join(flat)  # raises TypeError unless every value is a string
        except TypeError:
            return None
        if all(flat):  # and none is empty
            return tuple(map(tuple, raw))
    return None


def pairs(raw: Any, what: str) -> tuple[Level, ...]:
    """``[["price", "amount"], ...]`` → levels."""
    if not isinstance(raw, list):
        raise ProtocolError("invalid_field", f"{what} is not a list")
    fast = string_levels(raw, PAIRS)
    if fast is not None:
        return fast
    out: list[Level] = []
    for lv in raw:
        if not (isinstance(lv, list) and len(lv) >= 2):
            raise ProtocolError("invalid_field", f"{what} level {lv!r:.60}")
        out.append((decimal_text(lv[0], f"{what} price"), decimal_text(lv[1], f"{what} amount")))
    return tuple(out)
