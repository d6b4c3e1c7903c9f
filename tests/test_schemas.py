"""``schemas/`` as a set: each named type defined once, loadable in one registry by more
than one Avro implementation, and BACKWARD compatible with the previous release's
(``tests/data/schemas-0.1.0``: records written by 0.1.0 read with today's schemas)."""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import avro.errors
import avro.schema
import fastavro
import fastavro.schema
import pytest
from avro.name import Names

from connector.encoding.avro import default_schema_dir, load_schemas

SCHEMA_DIR = default_schema_dir()
PREVIOUS = Path(__file__).parent / "data" / "schemas-0.1.0"
TYPES_FIRST = ["connector.Level.avsc", "connector.Side.avsc"]  # the documented load order


def in_load_order() -> list[Path]:
    rest = sorted(p for p in SCHEMA_DIR.glob("*.avsc") if p.name not in TYPES_FIRST)
    return [SCHEMA_DIR / n for n in TYPES_FIRST] + rest


def definitions(node: Any, ns: str = "") -> list[str]:
    """Full names of the named types a schema defines (not those it references)."""
    out: list[str] = []
    if isinstance(node, list):
        for item in node:
            out += definitions(item, ns)
    elif isinstance(node, dict):
        if node.get("type") in ("record", "enum", "fixed") and "name" in node:
            ns = node.get("namespace", ns)
            out.append(node["name"] if "." in node["name"] else f"{ns}.{node['name']}")
        for key in ("type", "items", "values", "fields"):
            if key in node:
                out += definitions(node[key], ns)
    return out


def test_each_named_type_is_defined_once_in_the_directory() -> None:
    defined = Counter(
        name
        for path in SCHEMA_DIR.glob("*.avsc")
        for name in definitions(json.loads(path.read_text()))
    )
    assert defined and max(defined.values()) == 1, {n: c for n, c in defined.items() if c > 1}
    assert {"connector.Level", "connector.Side"} <= set(defined)


def test_the_directory_loads_as_one_set_in_the_avro_package() -> None:
    names = Names()  # one registry for every file, as avsc's registry or a schema repo
    loaded = [
        avro.schema.make_avsc_object(json.loads(p.read_text()), names) for p in in_load_order()
    ]
    assert {s.fullname for s in loaded} == set(load_schemas()) | {
        "connector.Level",
        "connector.Side",
    }


def test_the_directory_loads_as_one_set_in_fastavro() -> None:
    named: dict[str, Any] = {}
    for path in in_load_order():
        fastavro.parse_schema(json.loads(path.read_text()), named_schemas=named)
    assert set(load_schemas()) <= set(named)


def test_the_previous_release_had_duplicates_the_check_would_catch() -> None:
    names = Names()
    with pytest.raises(avro.errors.SchemaParseException, match="already in use"):
        for path in sorted(PREVIOUS.glob("*.avsc")):
            avro.schema.make_avsc_object(json.loads(path.read_text()), names)


def collect(schema: Any, named: dict[str, Any]) -> None:
    """The named types a parsed schema defines, by the full name its references use."""
    if isinstance(schema, list):
        for s in schema:
            collect(s, named)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed"):
            named[schema["name"]] = schema
        for f in schema.get("fields", []):
            collect(f["type"], named)
        for key in ("items", "values"):
            if key in schema:
                collect(schema[key], named)


def sample(schema: Any, rng: random.Random, named: dict[str, Any]) -> Any:
    """A random value of a parsed (fastavro) schema."""
    if isinstance(schema, str):
        if schema in named:
            return sample(named[schema], rng, named)
        return {
            "string": lambda: rng.choice(["", "0.00000000", "37000.12", "btcusd"]),
            "long": lambda: rng.randint(-(2**63), 2**63 - 1),
            "int": lambda: rng.randint(-(2**31), 2**31 - 1),
            "boolean": lambda: rng.random() < 0.5,
            "null": lambda: None,
            "double": lambda: rng.random(),
            "bytes": lambda: rng.randbytes(3),
        }[schema]()
    if isinstance(schema, list):
        return sample(rng.choice(schema), rng, named)
    kind = schema["type"]
    if kind == "record":
        return {f["name"]: sample(f["type"], rng, named) for f in schema["fields"]}
    if kind == "enum":
        return rng.choice(schema["symbols"])
    if kind == "array":
        return [sample(schema["items"], rng, named) for _ in range(rng.randint(0, 3))]
    if kind == "map":
        return {f"k{i}": sample(schema["values"], rng, named) for i in range(rng.randint(0, 2))}
    return sample(kind, rng, named)


def test_records_of_the_previous_release_read_with_todays_schemas() -> None:
    """BACKWARD compatibility (Confluent's default rule): a consumer on today's schemas
    reads what 0.1.0 wrote. Where the canonical form is unchanged (the fingerprint),
    single-object consumers find the same schema; any change must still resolve."""
    previous = load_schemas(PREVIOUS)
    current = load_schemas()
    assert set(previous) <= set(current), "a record type was removed"
    rng = random.Random(7)
    for name, old in previous.items():
        new = current[name]
        named: dict[str, Any] = {}
        collect(old.parsed, named)
        for _ in range(50):
            record = sample(old.parsed, rng, named)
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, old.parsed, record)
            buf.seek(0)
            read = fastavro.schemaless_reader(buf, old.parsed, new.parsed)
            if old.fingerprint == new.fingerprint:
                assert read == record, name
    # Today no wire schema changed: single-object consumers holding 0.1.0's files still
    # find every record's schema by its fingerprint.
    assert all(current[n].fingerprint == s.fingerprint for n, s in previous.items())
