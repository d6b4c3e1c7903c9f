"""Timestamp normalisation shared by every exchange decoder (pure)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

# Magnitude thresholds for "now-ish" epoch values: seconds ~1.7e9, ms ~1.7e12,
# µs ~1.7e15, ns ~1.7e18.
_MS_MIN = 10**11
_US_MIN = 10**14
_NS_MIN = 10**17


def to_epoch_us(value: int) -> int:
    """Normalise an integer epoch time in s, ms, µs or ns to µs, judged by magnitude."""
    if value >= _NS_MIN:
        return value // 1000
    if value >= _US_MIN:
        return value
    if value >= _MS_MIN:
        return value * 1000
    return value * 1_000_000


def parse_epoch_us(raw: str | int | float) -> int:
    """Parse an exchange timestamp (text or number, possibly fractional) into µs.

    Raises ValueError for text that is not a number.
    """
    if isinstance(raw, bool):
        raise TypeError(f"not a timestamp: {raw!r}")
    if isinstance(raw, int):
        return to_epoch_us(raw)
    text = raw if isinstance(raw, str) else repr(raw)
    if text.isdigit():
        return to_epoch_us(int(text))
    try:
        dec = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a timestamp: {text!r}") from None
    if not dec.is_finite() or dec < 0:
        raise ValueError(f"not a timestamp: {text!r}")
    whole = int(dec)
    # A fractional value keeps its fraction in the unit the magnitude implies.
    if whole >= _NS_MIN:
        return int(dec / 1000)
    if whole >= _US_MIN:
        return whole
    if whole >= _MS_MIN:
        return int(dec * 1000)
    return int(dec * 1_000_000)
