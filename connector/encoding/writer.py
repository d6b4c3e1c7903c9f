"""A compiled Avro binary writer: one precompiled writer per schema, no dict per message.

fastavro writes from dicts, so every event would first be copied into a dict (and every
book level into another one): for a 100-level book that copying was most of the cost.
This module compiles a schema once into a tree of small writer functions that read the
event's attributes directly. It covers the Avro subset our schemas use (records, string,
int/long, boolean, double/float, enum, array, map, and unions of null with one type);
``compile_writer`` rejects anything else at start.

Level arrays (records of strings and optional strings, read from tuples) have a fast path:
for ASCII strings shorter than 64 characters, the Avro length prefix (zig-zag varint) is
the single character ``chr(2 * len)``, so a level is one f-string, the array one
``str.join`` and one ``encode``, checked by a single ``isascii()``. Anything else (a longer
string, a non-string, a null where the fast path wants text) takes the generic path.

Correctness is defined by fastavro: the tests assert byte-for-byte equality with
``fastavro.schemaless_writer`` on generated events.
"""

from __future__ import annotations

import keyword
import struct
from collections.abc import Callable, Iterable
from typing import Any

from connector.errors import SchemaError

Writer = Callable[[Any], bytes]


def _varint(n: int) -> bytes:
    """Base-128 varint of a non-negative int, byte by byte (builds the tables below)."""
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Varints 14 bits at a time: the final group's bytes (_LAST), and a middle group's two
# bytes, both with the continuation bit (_MIDDLE). A microsecond timestamp (52 bits once
# zig-zagged) is then 3 lookups and 2 joins instead of 8 rounds of a Python loop, three
# or four times per record; the two tables hold 2 x 16 384 small byte strings.
_LAST = [_varint(c) for c in range(1 << 14)]
_MIDDLE = [bytes(((c & 0x7F) | 0x80, (c >> 7) | 0x80)) for c in range(1 << 14)]


def zigzag(n: int) -> bytes:
    """Avro long/int: zig-zag then base-128 varint. ValueError outside 64 bits."""
    n = (n << 1) ^ (n >> 63)
    if n < 0x4000:
        if n < 0:  # below -2**63
            raise ValueError("an Avro long is 64 bits: value below -2**63")
        return _LAST[n]
    if n < 0x1000_0000:
        return _MIDDLE[n & 0x3FFF] + _LAST[n >> 14]
    if n < 0x400_0000_0000:
        return _MIDDLE[n & 0x3FFF] + _MIDDLE[(n >> 14) & 0x3FFF] + _LAST[n >> 28]
    if n >> 64:
        raise ValueError("an Avro long is 64 bits: value of 2**63 or more")
    parts = [_MIDDLE[n & 0x3FFF], _MIDDLE[(n >> 14) & 0x3FFF], _MIDDLE[(n >> 28) & 0x3FFF]]
    n >>= 42
    while n >= 0x4000:
        parts.append(_MIDDLE[n & 0x3FFF])
        n >>= 14
    parts.append(_LAST[n])
    return b"".join(parts)


_SMALL = [zigzag(i) for i in range(4096)]
_NULL = b"\x00"
_SECOND = b"\x02"  # union branch index 1
_double = struct.Struct("<d").pack
_float = struct.Struct("<f").pack


def _bad_long(value: Any) -> bytes:
    raise TypeError(f"expected int, got {type(value).__name__}")


def _bad_boolean(value: Any) -> bytes:
    raise TypeError(f"expected bool, got {type(value).__name__}")


def _long(value: int) -> bytes:
    return zigzag(value) if type(value) is int else _bad_long(value)


def _string(value: str) -> bytes:
    data = value.encode()
    n = len(data)
    return (_SMALL[n] if n < 4096 else zigzag(n)) + data


def _boolean(value: bool) -> bytes:
    if type(value) is not bool:
        return _bad_boolean(value)
    return b"\x01" if value else b"\x00"


def _count(n: int) -> bytes:
    return _SMALL[n] if n < 4096 else zigzag(n)


def _primitive(name: str) -> Writer:
    table: dict[str, Writer] = {
        "string": _string,
        "long": _long,
        "int": _long,
        "boolean": _boolean,
        "double": lambda v: _double(float(v)),
        "float": lambda v: _float(float(v)),
        "bytes": lambda v: _count(len(v)) + bytes(v),
    }
    try:
        return table[name]
    except KeyError:
        raise SchemaError(f"compiled writer does not support Avro type {name!r}") from None


def _union(branches: list[Any], named: dict[str, Any]) -> Writer:
    if len(branches) != 2 or branches[0] != "null":
        raise SchemaError(f"compiled writer supports only [null, T] unions, not {branches}")
    inner = _compile(branches[1], named)

    def write(value: Any) -> bytes:
        return _NULL if value is None else _SECOND + inner(value)

    return write


def _enum(schema: dict[str, Any]) -> Writer:
    table = {symbol: zigzag(i) for i, symbol in enumerate(schema["symbols"])}

    def write(value: str) -> bytes:
        return table[value]

    return write


def _array(schema: dict[str, Any], named: dict[str, Any]) -> Writer:
    items = schema["items"]
    if isinstance(items, str):
        items = named.get(items, items)
    fast = _levels_fast_path(items)
    item = _compile(items, named)

    def generic(values: Iterable[Any]) -> bytes:
        values = list(values)
        if not values:
            return _NULL
        return b"".join([_count(len(values)), *map(item, values), _NULL])

    if fast is None:
        return generic

    def write(values: tuple[tuple[str, ...], ...]) -> bytes:
        if not values:
            return _NULL
        try:
            text = fast(values)
        except (TypeError, ValueError, IndexError):  # not strings, bad shapes, 64+ characters
            return generic(values)
        if not text.isascii():  # non-ASCII text: its UTF-8 length is not its length
            return generic(values)
        return _count(len(values)) + text.encode() + _NULL

    return write


# Length → Avro length prefix (zig-zag varint), as one character: lengths under 64 only; a
# longer string is an IndexError, and the generic path writes it.
_PREFIX = tuple(chr(2 * n) for n in range(64))


def _levels2(levels: tuple[tuple[str, ...], ...]) -> str:
    """(price, amount) levels, the order id null: the id's union branch is ``"\x00"``."""
    p = _PREFIX
    return "".join([f"{p[len(a)] + a}{p[len(b)] + b}\x00" for a, b in levels])


def _levels3(levels: tuple[tuple[str, ...], ...]) -> str:
    """(price, amount, order id) levels: the id's union branch is string, ``"\x02"``."""
    p = _PREFIX
    return "".join([f"{p[len(a)] + a}{p[len(b)] + b}\x02{p[len(c)] + c}" for a, b, c in levels])


_LEVELS = {2: _levels2, 3: _levels3}


def _levels_fast_path(items: Any) -> Callable[[tuple[tuple[str, ...], ...]], str] | None:
    """For records of exactly (string, string, [null, string]) read from tuples.

    One comprehension of f-strings per level width (the width of the first level). Each
    string is concatenated to its prefix, so anything but a str fails (TypeError), as do a
    level of another width (ValueError: unpacking), a null order id in a three-wide level
    (TypeError) and a string of 64 or more characters (IndexError); the caller's
    ``isascii()`` check rejects non-ASCII text. (An f-string alone would format a bytes
    or a list into text without complaint.)"""
    if not isinstance(items, dict) or items.get("type") != "record":
        return None
    types = [f["type"] for f in items["fields"]]
    if types != ["string", "string", ["null", "string"]]:
        return None

    def fast(levels: tuple[tuple[str, ...], ...]) -> str:
        write = _LEVELS.get(len(levels[0]))
        if write is None:
            raise TypeError("a level of neither 2 nor 3 fields")
        return write(levels)

    return fast


def _map(schema: dict[str, Any], named: dict[str, Any]) -> Writer:
    value_writer = _compile(schema["values"], named)

    def write(mapping: dict[str, Any]) -> bytes:
        if not mapping:
            return _NULL
        parts = [_count(len(mapping))]
        for k, v in mapping.items():
            parts.append(_string(k))
            parts.append(value_writer(v))
        parts.append(_NULL)
        return b"".join(parts)

    return write


def _tuple_record(schema: dict[str, Any], named: dict[str, Any]) -> Writer:
    """Nested records are read from tuples in field order (missing trailing fields: None)."""
    writers = [_compile(f["type"], named) for f in schema["fields"]]
    n = len(writers)

    def write(value: tuple[Any, ...]) -> bytes:
        if len(value) != n:
            if len(value) > n:  # a field the schema has no place for: never drop it silently
                raise ValueError(f"{len(value)} fields for a record of {n}")
            value = (*value, *([None] * (n - len(value))))
        return b"".join([w(v) for w, v in zip(writers, value, strict=True)])

    return write


def _compile(schema: Any, named: dict[str, Any]) -> Writer:
    if isinstance(schema, str):
        if schema in named:
            return _compile(named[schema], named)
        return _primitive(schema)
    if isinstance(schema, list):
        return _union(schema, named)
    kind = schema["type"]
    if kind == "record":
        named[schema["name"]] = schema
        if "namespace" in schema:
            named[f"{schema['namespace']}.{schema['name']}"] = schema
        return _tuple_record(schema, named)
    if kind == "enum":
        named[schema["name"]] = schema
        return _enum(schema)
    if kind == "array":
        return _array(schema, named)
    if kind == "map":
        return _map(schema, named)
    if isinstance(kind, dict | list):
        return _compile(kind, named)
    return _primitive(kind)


def _field_code(kind: Any, attr: str, i: int, env: dict[str, Any], named: dict[str, Any]) -> str:
    """Python expression(s) writing the top-level field ``attr`` of event ``e``, as
    items of the tuple that ``write`` joins. Strings, longs and booleans are written
    inline; anything else calls its compiled writer."""
    if isinstance(kind, dict) and not isinstance(kind.get("type"), str | type(None)):
        kind = kind["type"]  # {"type": {...}} or {"type": [...]}: the type inside
    if isinstance(kind, dict) and kind.get("type") in ("string", "long", "int", "boolean"):
        kind = kind["type"]  # a primitive spelled as a schema object
    v, n = f"_v{i}", f"_n{i}"
    if kind == "string":
        return f"(_SMALL[{n}] if ({n} := len({v} := e.{attr}.encode())) < 4096 else _zz({n})), {v}"
    if kind in ("long", "int"):
        return f"(_zz({v}) if type({v} := e.{attr}) is int else _bad_long({v}))"
    if kind == "boolean":
        return (
            f"(b'\\x01' if ({v} := e.{attr}) is True else b'\\x00' if {v} is False "
            f"else _bad_boolean({v}))"
        )
    writer = _compile(kind, named)
    env[f"_w{i}"] = writer
    return f"_w{i}(e.{attr})"


def compile_writer(schema: dict[str, Any]) -> Callable[[Any], bytes]:
    """Compiles a top-level record schema into ``write(event) -> bytes`` reading the
    event's attributes named like the fields.

    The top level is generated Python (one function per schema, like dataclasses' own
    __init__): a single tuple of the fields' bytes, joined once, with no call per string,
    long or boolean field. Nested types use the writers above."""
    if schema.get("type") != "record":
        raise SchemaError("a top-level schema must be a record")
    named: dict[str, Any] = {}
    env: dict[str, Any] = {
        "_SMALL": _SMALL,
        "_zz": zigzag,
        "_bad_long": _bad_long,
        "_bad_boolean": _bad_boolean,
    }
    items = []
    for i, f in enumerate(schema["fields"]):
        name = f["name"]
        if not name.isidentifier() or keyword.iskeyword(name):
            raise SchemaError(f"field name {name!r} is not an attribute name")
        items.append(_field_code(f["type"], name, i, env, named))
    source = (
        "def write(e):\n    return b''.join((\n"
        + "".join(f"        {item},\n" for item in items)
        + "    ))\n"
    )
    exec(compile(source, f"<avro writer {schema.get('name', '?')}>", "exec"), env)
    write: Callable[[Any], bytes] = env["write"]
    return write
