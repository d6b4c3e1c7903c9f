"""Schemas and encoders: round trips in both wire formats, fingerprints, schema rules."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import fastavro
import pytest

from connector.encoding.avro import (
    AvroDecoder,
    confluent_encoder,
    default_schema_dir,
    load_schemas,
    single_object_encoder,
)
from connector.errors import SchemaError
from connector.events import EVENT_TYPES, MarketEvent
from connector.exchanges.bitstamp.decoder import BitstampDecoder
from tests import frames as F

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


def crc64_avro(data: bytes) -> bytes:
    """CRC-64-AVRO exactly as the Avro specification writes it (independent of fastavro)."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return struct.pack("<Q", fp)  # single-object encoding: little-endian


def decoded_events() -> list[MarketEvent]:
    dec = BitstampDecoder("conn-x")
    out = []
    for frame in F.ALL_MARKET_FRAMES:
        (ev,) = dec.feed(F.raw(frame), 1_700_000_001_000_000)
        assert isinstance(ev, MarketEvent)
        out.append(ev)
    return out


def test_schema_files_are_found_next_to_the_package() -> None:
    assert default_schema_dir() == SCHEMA_DIR
    names = set(load_schemas())
    assert {t.SCHEMA for t in EVENT_TYPES} <= names


def test_fingerprints_match_the_schema_files() -> None:
    for schema in load_schemas().values():
        # The canonical form from the file, fingerprinted by the spec's algorithm.
        # fastavro's loader resolves a referenced type from its file next to it.
        canonical = fastavro.schema.to_parsing_canonical_form(
            fastavro.schema.load_schema(SCHEMA_DIR / f"{schema.name}.avsc")
        )
        assert schema.canonical == canonical
        assert schema.fingerprint == crc64_avro(canonical.encode())


def _walk_fields(schema: object, path: str = ""):  # type: ignore[no-untyped-def]
    if isinstance(schema, dict):
        if schema.get("type") == "record":
            for f in schema["fields"]:
                yield f"{path}{schema['name']}.{f['name']}", f
                yield from _walk_fields(f["type"], f"{path}{schema['name']}.")
        elif schema.get("type") in ("array", "map"):
            yield from _walk_fields(schema.get("items") or schema.get("values"), path)
    elif isinstance(schema, list):
        for s in schema:
            yield from _walk_fields(s, path)


def test_every_field_has_a_doc_and_no_price_is_a_bare_double() -> None:
    for path in sorted(SCHEMA_DIR.glob("*.avsc")):
        source = json.loads(path.read_text())
        assert source.get("doc"), path.name
        for name, f in _walk_fields(source):
            assert f.get("doc"), f"{path.name}: {name} has no doc"
            assert f["type"] not in ("double", "float", ["null", "double"]), name


def test_every_event_type_round_trips_single_object() -> None:
    schemas = load_schemas()
    decoder = AvroDecoder(schemas.values())
    for event in decoded_events():
        schema = schemas[event.SCHEMA]
        value = single_object_encoder(schema).encode(event)
        assert value[:2] == b"\xc3\x01"
        assert value[2:10] == crc64_avro(schema.canonical.encode())
        name, record = decoder.decode(value)
        assert name == event.SCHEMA
        assert record == event.to_record()


def test_every_event_type_round_trips_confluent() -> None:
    schemas = load_schemas()
    decoder = AvroDecoder([])
    for i, event in enumerate(decoded_events(), start=7):
        schema = schemas[event.SCHEMA]
        value = confluent_encoder(schema, i).encode(event)
        assert value[0] == 0
        assert struct.unpack(">I", value[1:5])[0] == i
        decoder.add_schema_id(i, schema.text)
        assert decoder.decode(value) == (event.SCHEMA, event.to_record())


def test_a_consumer_needs_only_the_schema_files() -> None:
    """What docs/consumers.md promises: fastavro + schemas/ decode any single-object value."""
    schemas = load_schemas()
    event = decoded_events()[1]  # the perp trade
    value = single_object_encoder(schemas[event.SCHEMA]).encode(event)
    by_fp = {}
    for path in SCHEMA_DIR.glob("*.avsc"):
        parsed = fastavro.schema.load_schema(path)
        canonical = fastavro.schema.to_parsing_canonical_form(parsed)
        by_fp[crc64_avro(canonical.encode())] = parsed
    record = fastavro.schemaless_reader(io.BytesIO(value[10:]), by_fp[value[2:10]], None)
    assert record["trade_id"] == "9007199254740993"
    assert record["side"] == "BUY"


def test_decoder_rejects_unknown_framing() -> None:
    decoder = AvroDecoder(load_schemas().values())
    with pytest.raises(SchemaError, match="fingerprint"):
        decoder.decode(b"\xc3\x01" + b"\x00" * 8 + b"x")
    with pytest.raises(SchemaError, match="neither"):
        decoder.decode(b"plain text")
    with pytest.raises(SchemaError, match="id 5"):
        decoder.decode(b"\x00\x00\x00\x00\x05body")


def test_broken_schema_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.avsc").write_text('{"type": "record", "name": "X", "fields": [{"name": 1}]}')
    with pytest.raises(SchemaError, match=r"bad\.avsc"):
        load_schemas(tmp_path)
    with pytest.raises(SchemaError, match="no Avro schemas"):
        load_schemas(tmp_path / "empty")


def test_readme_consumer_example_decodes_our_values(monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (SCHEMA_DIR.parent / "docs" / "consumers.md").read_text()
    code = readme.split("## Reading it in Python", 1)[1].split("```python\n", 1)[1]
    code = code.split("```", 1)[0]
    monkeypatch.chdir(SCHEMA_DIR.parent)
    namespace: dict[str, object] = {}
    exec(compile(code, "docs/consumers.md", "exec"), namespace)
    schemas = namespace["schemas"]
    assert isinstance(schemas, dict)
    event = decoded_events()[0]
    value = single_object_encoder(load_schemas()[event.SCHEMA]).encode(event)
    record = fastavro.schemaless_reader(io.BytesIO(value[10:]), schemas[value[2:10]], None)
    assert record == event.to_record()
