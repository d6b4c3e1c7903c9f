"""aiokafka's produce request and response, encoded and decoded in one pass each.

aiokafka encodes every request through its generic ``Schema`` (a generator and a call per
field, nested per topic and per partition) and decodes every response the same way. At
the rates users run each partition's batch holds a record or two, so a produce request
to ~20 partitions is encoded and its response decoded for every ~20 records: about a
tenth of the connector's CPU at 1 000 frames/s went there (bench/README.md). These
classes are aiokafka's own ``ProduceRequest_v3``..``v7`` and their responses, with
``encode`` and ``decode`` written for their one layout (byte for byte what aiokafka
writes and reads: a test compares them over every version). ``install`` makes
aiokafka's sender use them; everything else (versions negotiated per connection, the
request header, retries, the handling of each partition's error) stays aiokafka's.
Versions below 3 (brokers older than Kafka 0.11) keep aiokafka's own classes.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any, Self

from aiokafka.producer import sender as aiokafka_sender
from aiokafka.protocol import produce as aiokafka_produce

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_ACKS_TIMEOUT = struct.Struct(">hi")
_PARTITION_HEAD = struct.Struct(">ii")  # partition, length of its record batch
# A partition's response: partition, error_code, base offset, log append time, and from
# v5 the log start offset.
_RESULT_V3 = struct.Struct(">ihqq")
_RESULT_V5 = struct.Struct(">ihqqq")

_NAMES: dict[str, bytes] = {}  # topic → its encoded string (a bounded cache: topics are few)
_MAX_NAMES = 10_000


def _string(text: str) -> bytes:
    encoded = _NAMES.get(text)
    if encoded is None:
        raw = text.encode()
        encoded = _I16.pack(len(raw)) + raw
        if len(_NAMES) >= _MAX_NAMES:
            _NAMES.clear()
        _NAMES[text] = encoded
    return encoded


def encode_request(
    transactional_id: str | None,
    required_acks: int,
    timeout: int,
    topics: list[tuple[str, list[tuple[int, Any]]]],
) -> bytes:
    """The body of a ProduceRequest v3..v7 (one layout for all five)."""
    parts: list[Any] = [
        b"\xff\xff" if transactional_id is None else _string(transactional_id),
        _ACKS_TIMEOUT.pack(required_acks, timeout),
        _I32.pack(len(topics)),
    ]
    append = parts.append
    for topic, partitions in topics:
        append(_string(topic))
        append(_I32.pack(len(partitions)))
        for partition, records in partitions:
            if records is None:
                append(_PARTITION_HEAD.pack(partition, -1))
            else:
                append(_PARTITION_HEAD.pack(partition, len(records)))
                append(records)
    return b"".join(parts)


def decode_response(
    data: bytes, result: struct.Struct
) -> tuple[list[tuple[str, list[tuple[int, ...]]]], int]:
    """(topics, throttle_time_ms) of a ProduceResponse v3..v7 body; each partition's
    result is the tuple aiokafka's decoding gives."""
    unpack_i32, unpack_i16, unpack_result = _I32.unpack_from, _I16.unpack_from, result.unpack_from
    size = result.size
    pos = 4
    (n_topics,) = unpack_i32(data, 0)
    topics = []
    for _ in range(n_topics):
        (length,) = unpack_i16(data, pos)
        pos += 2
        if length < 0 or pos + length > len(data):
            raise ValueError("Buffer underrun decoding string")
        topic = data[pos : pos + length].decode()
        pos += length
        (n_partitions,) = unpack_i32(data, pos)
        pos += 4
        results = []
        for _ in range(n_partitions):
            results.append(unpack_result(data, pos))
            pos += size
        topics.append((topic, results))
    (throttle_time_ms,) = unpack_i32(data, pos)
    return topics, throttle_time_ms


def _response(base: type[Any], result: struct.Struct) -> type[Any]:
    class Response(base):  # type: ignore[misc]
        @classmethod
        def decode(cls, data: BytesIO | bytes) -> Self:
            raw = data.read() if isinstance(data, BytesIO) else data
            try:
                topics, throttle_time_ms = decode_response(raw, result)
            except struct.error as exc:
                raise ValueError(f"Buffer underrun decoding {base.__name__}: {exc}") from None
            return cls(topics, throttle_time_ms)

    Response.__name__ = Response.__qualname__ = base.__name__
    return Response


def _request(base: type[Any], response: type[Any]) -> type[Any]:
    class Request(base):  # type: ignore[misc]
        RESPONSE_TYPE = response

        def encode(self) -> bytes:
            d = self.__dict__
            return encode_request(
                d["transactional_id"], d["required_acks"], d["timeout"], d["topics"]
            )

    Request.__name__ = Request.__qualname__ = base.__name__
    return Request


def _classes() -> dict[int, type[Any]]:
    out = {}
    for version in range(3, 8):
        result = _RESULT_V5 if version >= 5 else _RESULT_V3
        response = _response(getattr(aiokafka_produce, f"ProduceResponse_v{version}"), result)
        out[version] = _request(getattr(aiokafka_produce, f"ProduceRequest_v{version}"), response)
    return out


REQUESTS: dict[int, type[Any]] = _classes()


class ProduceRequest(aiokafka_produce.ProduceRequest):  # type: ignore[misc]
    """aiokafka's ProduceRequest, built as the one-pass classes above where the version
    negotiated with the broker is one of theirs."""

    def build(self, request_struct_class: type[Any]) -> Any:
        fast = REQUESTS.get(request_struct_class.API_VERSION)
        if fast is None:
            return super().build(request_struct_class)
        return fast(self._transactional_id, self._required_acks, self._timeout, self._topics)


def install() -> None:
    """aiokafka's sender builds its produce requests from ``ProduceRequest`` above
    (process-wide, as aiokafka's codec levels are: the connector's one producer)."""
    aiokafka_sender.ProduceRequest = ProduceRequest
