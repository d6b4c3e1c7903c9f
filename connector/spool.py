"""On-disk spool: append-only segments of records waiting for Kafka.

Used when Kafka cannot take records for longer than memory allows, and for what is
still unacknowledged at shutdown; replayed in order before newer records.

Layout: ``<dir>/spool-<n:012d>.seg``; a record is ``u32 length | u32 crc32 | payload``,
payload = topic, key, value and headers, each length-prefixed (u32). A record whose
checksum does not match (a torn write at a crash) ends its segment's readable part;
the rest is counted as corrupt and skipped, never replayed as garbage.

Positions are (segment, offset). ``read()`` hands out records in append order; ``ack()``
marks one done; a segment is deleted once it is closed, fully read and fully acked.
On reopening (a restart), everything not deleted is replayed again: at-least-once.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from connector.errors import ConnectorError

_HEADER = struct.Struct("<II")
_U32 = struct.Struct("<I")

FsyncPolicy = Literal["always", "segment", "never"]


class SpoolFull(ConnectorError):
    """The spool reached its size limit."""


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


def encode_record(rec: SpooledRecord) -> bytes:
    parts = [rec.topic.encode(), rec.key, rec.value]
    out = bytearray()
    for p in parts:
        out += _U32.pack(len(p)) + p
    out += _U32.pack(len(rec.headers))
    for k, v in rec.headers:
        kb = k.encode()
        out += _U32.pack(len(kb)) + kb + _U32.pack(len(v)) + v
    return bytes(out)


def decode_record(payload: bytes) -> SpooledRecord:
    pos = 0

    def take() -> bytes:
        nonlocal pos
        (n,) = _U32.unpack_from(payload, pos)
        pos += 4
        chunk = payload[pos : pos + n]
        if len(chunk) != n:
            raise ValueError("truncated")
        pos += n
        return chunk

    topic, key, value = take().decode(), take(), take()
    (count,) = _U32.unpack_from(payload, pos)
    pos += 4
    headers = tuple((take().decode(), take()) for _ in range(count))
    return SpooledRecord(topic, key, value, headers)


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 64 << 20,
        max_bytes: int = 1 << 30,
        fsync: FsyncPolicy = "segment",
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.corrupt = 0
        segs = sorted(int(p.stem.split("-")[1]) for p in self.dir.glob("spool-*.seg"))
        self._segments: list[int] = segs  # oldest first
        self._sizes = {n: self._path(n).stat().st_size for n in segs}
        self._unacked: dict[int, int] = {n: 0 for n in segs}  # handed out, not acked
        self._writer: BinaryIO | None = None
        self._write_seg = (segs[-1] + 1) if segs else 0  # never append to an old segment
        self._read_seg = segs[0] if segs else self._write_seg
        self._read_off = 0
        self._read_off_before = 0
        self._reader: BinaryIO | None = None

    def _path(self, n: int) -> Path:
        return self.dir / f"spool-{n:012d}.seg"

    @property
    def bytes(self) -> int:
        return sum(self._sizes.values())

    def has_unread(self) -> bool:
        if self._read_off < self._sizes.get(self._read_seg, 0):
            return True
        return any(s > self._read_seg and self._sizes[s] > 0 for s in self._segments)

    # --- writing -----------------------------------------------------------------------
    def append(self, rec: SpooledRecord) -> None:
        payload = encode_record(rec)
        frame = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        if self.bytes + len(frame) > self.max_bytes:
            raise SpoolFull(f"spool {self.dir} is full ({self.bytes} bytes)")
        if self._writer is None or self._sizes[self._write_seg] + len(frame) > self.segment_bytes:
            self._roll()
        assert self._writer is not None
        self._writer.write(frame)
        self._writer.flush()
        if self.fsync == "always":
            os.fsync(self._writer.fileno())
        self._sizes[self._write_seg] += len(frame)

    def _roll(self) -> None:
        if self._writer is not None:
            self._close_writer()
            self._write_seg += 1
        n = self._write_seg
        self._writer = self._path(n).open("ab")
        self._segments.append(n)
        self._sizes[n] = 0
        self._unacked[n] = 0

    def _close_writer(self) -> None:
        assert self._writer is not None
        self._writer.flush()
        if self.fsync != "never":
            os.fsync(self._writer.fileno())
        self._writer.close()
        self._writer = None

    # --- reading -----------------------------------------------------------------------
    def read(self, limit: int = 1000) -> Iterator[tuple[tuple[int, int], SpooledRecord]]:
        """Up to ``limit`` unread records in append order, each with its position."""
        handed = 0
        while handed < limit:
            if self._read_seg not in self._sizes:
                later = [s for s in self._segments if s > self._read_seg]
                if not later:
                    return
                self._read_seg, self._read_off = later[0], 0
                continue
            size = self._sizes[self._read_seg]
            if self._read_off >= size:
                if self._read_seg >= self._write_seg and self._writer is not None:
                    return  # the open segment: nothing more yet
                self._finish_read_segment()
                continue
            rec = self._read_one()
            if rec is None:
                continue
            pos = (self._read_seg, self._read_off_before)
            self._unacked[self._read_seg] += 1
            handed += 1
            yield pos, rec

    def _read_one(self) -> SpooledRecord | None:
        if self._reader is None:
            self._reader = self._path(self._read_seg).open("rb")
        self._reader.seek(self._read_off)
        self._read_off_before = self._read_off
        header = self._reader.read(_HEADER.size)
        size = self._sizes[self._read_seg]
        if len(header) == _HEADER.size:
            length, crc = _HEADER.unpack(header)
            payload = self._reader.read(length)
            if len(payload) == length and zlib.crc32(payload) == crc:
                self._read_off += _HEADER.size + length
                try:
                    return decode_record(payload)
                except (ValueError, struct.error, UnicodeDecodeError):
                    self.corrupt += 1
                    return None
        # A torn or corrupt tail: skip the rest of this segment.
        self.corrupt += 1
        self._read_off = size
        return None

    def _finish_read_segment(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        done = self._read_seg
        later = [s for s in self._segments if s > done]
        self._maybe_delete(done, fully_read=True)
        if later:
            self._read_seg, self._read_off = later[0], 0
        else:  # the next segment written is the next one read
            self._read_seg, self._read_off = max(done + 1, self._write_seg), 0

    def ack(self, pos: tuple[int, int]) -> None:
        seg = pos[0]
        if seg in self._unacked:
            self._unacked[seg] -= 1
            self._maybe_delete(seg, fully_read=seg < self._read_seg)

    def _maybe_delete(self, seg: int, *, fully_read: bool) -> None:
        if not fully_read or self._unacked.get(seg, 0) > 0:
            return
        if seg == self._write_seg and self._writer is not None:
            return
        self._path(seg).unlink(missing_ok=True)
        self._segments = [s for s in self._segments if s != seg]
        self._sizes.pop(seg, None)
        self._unacked.pop(seg, None)

    def close(self) -> None:
        if self._writer is not None:
            self._close_writer()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        # The segment being read may be complete: delete it, or the next start would
        # replay records already delivered.
        seg = self._read_seg
        if seg in self._sizes and self._read_off >= self._sizes[seg]:
            self._maybe_delete(seg, fully_read=True)
