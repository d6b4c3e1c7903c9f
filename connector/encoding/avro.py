"""Avro schemas and encoders: every record is written with a schema parsed once.

Two wire formats:
- single-object encoding (Avro spec): ``C3 01`` + 8-byte little-endian CRC-64-AVRO
  fingerprint of the schema's Parsing Canonical Form + the binary body; used when no
  schema registry is configured, so a consumer holding ``schemas/`` decodes any message;
- Confluent wire format: ``00`` + 4-byte big-endian schema id + body; used with a
  schema registry (subjects ``<topic>-value``).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import fastavro
import fastavro.schema

from connector.encoding.writer import compile_writer
from connector.errors import EncodeError, SchemaError
from connector.events import MarketEvent

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
CONTENT_TYPE_SINGLE_OBJECT = "application/avro; format=single-object"
CONTENT_TYPE_CONFLUENT = "application/vnd.confluent.avro"


def default_schema_dir() -> Path:
    """``schemas/`` next to the package (source checkout, editable install, image)."""
    return Path(__file__).resolve().parents[2] / "schemas"


@dataclass(frozen=True, slots=True)
class Schema:
    name: str
    source: dict[str, Any]
    parsed: Any
    canonical: str
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO

    @property
    def text(self) -> str:
        """The schema as sent to a registry."""
        return json.dumps(self.source, separators=(",", ":"))


def load_schema(path: Path, named: dict[str, dict[str, Any]] | None = None) -> Schema:
    """One schema file; a named type it references by full name (``connector.Level``)
    comes from ``named`` (the other files of its directory) and is written out where
    first used, so the schema stands alone (the connector encodes, fingerprints and
    registers that form: byte for byte what a file defining the type inline gives)."""
    try:
        source = json.loads(path.read_text())
        source = _expand(source, named or {}, set(), source.get("namespace", ""))
        parsed = cast(dict[str, Any], fastavro.parse_schema(source, named_schemas={}))
    except (OSError, ValueError, AttributeError, fastavro.schema.SchemaParseException) as exc:
        raise SchemaError(f"cannot load Avro schema {path}: {exc}") from exc
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    fp = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    return Schema(parsed["name"], source, parsed, canonical, fp)


def _fullname(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _expand(node: Any, named: dict[str, dict[str, Any]], defined: set[str], ns: str) -> Any:
    """``node`` with every reference to a type of ``named`` replaced by its definition
    at the first use (later uses stay references, as Avro requires)."""
    if isinstance(node, str):
        full = _fullname(node, ns)
        if full in named and full not in defined:
            return _expand(named[full], named, defined, ns)
        return node
    if isinstance(node, list):
        return [_expand(item, named, defined, ns) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("type") in ("record", "enum", "fixed", "error") and "name" in node:
        ns = (
            node.get("namespace", ns) if "." not in node["name"] else node["name"].rsplit(".", 1)[0]
        )
        defined.add(_fullname(node["name"], ns))
    out = dict(node)
    for key in ("type", "items", "values"):
        if key in out:
            out[key] = _expand(out[key], named, defined, ns)
    if isinstance(out.get("fields"), list):
        out["fields"] = [_expand(field, named, defined, ns) for field in out["fields"]]
    return out


def load_schemas(directory: Path | None = None) -> dict[str, Schema]:
    """The record schemas of ``directory`` by full name. A file may define a named type
    that others reference (``connector.Level``, ``connector.Side``): each type is defined
    once, so the directory loads as one set in any Avro library (types first); such a
    shared type is written out inside the records that use it, not returned alone."""
    directory = directory or default_schema_dir()
    files = sorted(directory.glob("*.avsc"))
    if not files:
        raise SchemaError(f"no Avro schemas (*.avsc) found in {directory}")
    named: dict[str, dict[str, Any]] = {}
    for path in files:
        try:
            source = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SchemaError(f"cannot load Avro schema {path}: {exc}") from exc
        if isinstance(source, dict) and isinstance(source.get("name"), str):
            named[_fullname(source["name"], source.get("namespace", ""))] = source
    shared = {name for name in named if any(_references(s, name) for s in named.values())}
    schemas = {}
    for path in files:
        schema = load_schema(path, named)
        if schema.name not in shared:  # a type other schemas use, not a record on its own
            schemas[schema.name] = schema
    return schemas


def _references(node: Any, name: str) -> bool:
    """Whether a schema's JSON names ``name`` as a type (a reference, not a definition)."""
    if isinstance(node, str):
        return node == name
    if isinstance(node, list):
        return any(_references(item, name) for item in node)
    if isinstance(node, dict):
        return any(
            _references(node[k], name) for k in ("type", "items", "values") if k in node
        ) or any(_references(f, name) for f in node.get("fields", []) if isinstance(f, dict))
    return False


class RecordEncoder:
    """Writes one schema's records with a fixed prefix (the wire format's header), using
    the schema's compiled writer (``avro_writer``; byte-identical to fastavro)."""

    __slots__ = ("_write", "prefix", "schema")

    def __init__(self, schema: Schema, prefix: bytes) -> None:
        self.schema = schema
        self.prefix = prefix
        self._write = compile_writer(schema.source)

    def encode(self, event: MarketEvent) -> bytes:
        try:
            return self.prefix + self._write(event)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise EncodeError(
                f"{type(event).__name__} does not fit {self.schema.name}: {exc}"
            ) from exc


def single_object_encoder(schema: Schema) -> RecordEncoder:
    return RecordEncoder(schema, SINGLE_OBJECT_MAGIC + schema.fingerprint)


def confluent_encoder(schema: Schema, schema_id: int) -> RecordEncoder:
    return RecordEncoder(schema, CONFLUENT_MAGIC + struct.pack(">I", schema_id))


class AvroDecoder:
    """Decodes values of either wire format (used by ``connector tail`` and tests).

    Single-object values are resolved by fingerprint against the local schemas;
    Confluent values by schema id through ``lookup`` (a registry), cached.
    """

    def __init__(self, schemas: Iterable[Schema]) -> None:
        self._by_fp = {s.fingerprint: s for s in schemas}
        self._by_id: dict[int, Any] = {}

    def add_schema_id(self, schema_id: int, schema_text: str) -> None:
        self._by_id[schema_id] = fastavro.parse_schema(json.loads(schema_text), named_schemas={})

    def known_id(self, schema_id: int) -> bool:
        return schema_id in self._by_id

    @staticmethod
    def schema_id(value: bytes) -> int | None:
        if len(value) >= 5 and value[:1] == CONFLUENT_MAGIC:
            return int(struct.unpack(">I", value[1:5])[0])
        return None

    def decode(self, value: bytes) -> tuple[str, dict[str, Any]]:
        """Returns (schema full name, record)."""
        if value[:2] == SINGLE_OBJECT_MAGIC and len(value) >= 10:
            schema = self._by_fp.get(value[2:10])
            if schema is None:
                raise SchemaError(f"unknown schema fingerprint {value[2:10].hex()}")
            parsed, body = schema.parsed, value[10:]
        else:
            sid = self.schema_id(value)
            if sid is None:
                raise SchemaError("value is neither Avro single-object nor Confluent-framed")
            if sid not in self._by_id:
                raise SchemaError(f"schema id {sid} is not known")
            parsed, body = self._by_id[sid], value[5:]
        record = fastavro.schemaless_reader(io.BytesIO(body), parsed, None)
        if not isinstance(record, dict):
            raise SchemaError(f"{parsed['name']} did not decode to a record")
        return str(parsed["name"]), record
