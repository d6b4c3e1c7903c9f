"""On-disk spool: append-only segments of records waiting for Kafka.

Used when Kafka cannot take records for longer than memory allows, and for what is
still unacknowledged at shutdown; replayed in order before newer records.

Layout: ``<dir>/spool-<n:012d>.seg``; a record is ``u32 length | u32 crc32 | payload``,
payload = topic, key, value and headers, each length-prefixed (u32). A record whose
checksum does not match (a torn write at a crash) ends its segment's readable part;
the rest is counted as corrupt and skipped, never replayed as garbage.

Positions are (segment, offset). ``read()`` hands out records in append order; ``ack()``
marks one done; a segment is deleted once it is closed, fully read and fully acked.

The *watermark* is the end of the longest acknowledged prefix (acks arrive out of order
across partitions). ``save_watermark()`` writes it to ``<dir>/spool.ack`` (atomically:
write, fsync, rename); on reopening (a restart, a crash) reading resumes there, so only
what was unacknowledged, or acknowledged after the last save, is replayed again:
at-least-once with the duplicates bounded by how often the watermark is saved.

A record may carry the wall-clock time it was received (8 bytes after the headers;
records without it decode with ``receive_ts = 0``), so receive→ack latency stays true
for records that went through the disk.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from connector.errors import ConnectorError

_HEADER = struct.Struct("<II")
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_WATERMARK = "spool.ack"

FsyncPolicy = Literal["always", "segment", "never"]


class SpoolFull(ConnectorError):
    """The spool reached its size limit."""


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    receive_ts: float = 0.0  # wall-clock seconds; 0 = unknown


def encode_record(rec: SpooledRecord) -> bytes:
    parts = [rec.topic.encode(), rec.key, rec.value]
    out = bytearray()
    for p in parts:
        out += _U32.pack(len(p)) + p
    out += _U32.pack(len(rec.headers))
    for k, v in rec.headers:
        kb = k.encode()
        out += _U32.pack(len(kb)) + kb + _U32.pack(len(v)) + v
    if rec.receive_ts:
        out += _F64.pack(rec.receive_ts)
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
    rest = len(payload) - pos
    if rest == _F64.size:
        return SpooledRecord(topic, key, value, headers, _F64.unpack_from(payload, pos)[0])
    if rest:
        raise ValueError(f"{rest} trailing bytes")
    return SpooledRecord(topic, key, value, headers)


def _read_frame(f: BinaryIO) -> tuple[SpooledRecord | None, int]:
    """The next record at ``f``'s position and the bytes its frame takes. (None, n): the
    checksum holds but the payload does not decode (that record is skipped); (None, 0):
    a torn or corrupt frame (the rest of the segment cannot be trusted)."""
    header = f.read(_HEADER.size)
    if len(header) != _HEADER.size:
        return None, 0
    length, crc = _HEADER.unpack(header)
    payload = f.read(length)
    if len(payload) != length or zlib.crc32(payload) != crc:
        return None, 0
    try:
        return decode_record(payload), _HEADER.size + length
    except (ValueError, struct.error, UnicodeDecodeError):
        return None, _HEADER.size + length


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
        # Handed out in order: [segment, start, end, acked]; the acked prefix is popped.
        self._handed: deque[list[int]] = deque()
        self._by_pos: dict[tuple[int, int], list[int]] = {}
        self._watermark: tuple[int, int] | None = None
        self._saved_watermark: tuple[int, int] | None = None
        self._resume_from_watermark()
        if self._saved_watermark is not None:
            # Segment numbers only grow, past the watermark's too (its segment may be
            # gone), so a saved watermark never points into newer data.
            self._write_seg = max(self._write_seg, self._saved_watermark[0] + 1)
            if not self._segments:
                self._read_seg = self._write_seg
        self.records = sum(1 for _ in self.scan_unread())  # not yet acknowledged

    def _resume_from_watermark(self) -> None:
        path = self.dir / _WATERMARK
        try:
            seg_s, off_s = path.read_text().split()
            seg, off = int(seg_s), int(off_s)
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            self.corrupt += 1  # unreadable: replay everything (duplicates, never a loss)
            return
        self._saved_watermark = (seg, off)
        # Everything before the watermark was acknowledged: older segments can go.
        for old in [n for n in self._segments if n < seg]:
            self._path(old).unlink(missing_ok=True)
            self._segments.remove(old)
            self._sizes.pop(old, None)
            self._unacked.pop(old, None)
        if seg in self._sizes and off <= self._sizes[seg]:
            self._read_seg, self._read_off = seg, off
        elif self._segments:
            self._read_seg, self._read_off = self._segments[0], 0

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
    def append_handed(self, rec: SpooledRecord) -> tuple[int, int] | None:
        """Appends ``rec`` and, if nothing is unread before it, hands it out at once (as
        ``read()`` would): its position, to ``ack()`` when Kafka has it. None: older
        records are unread; ``rec`` waits behind them for ``read()``. (Write-ahead
        mode: the record is on disk before it is sent, without reading it back.)"""
        caught_up = self._reader_caught_up()
        self.append(rec)
        if not caught_up:
            return None
        self._reader_caught_up()  # steps onto a segment the append opened
        seg = self._write_seg
        start = self._read_off
        end = self._sizes[seg]
        self._read_off = end
        self._unacked[seg] += 1
        entry = [seg, start, end, 0]
        self._handed.append(entry)
        self._by_pos[(seg, start)] = entry
        return seg, start

    def _reader_caught_up(self) -> bool:
        """True if every appended record was handed out; moves the read position past
        finished segments on the way."""
        while self._read_seg != self._write_seg:
            size = self._sizes.get(self._read_seg)
            if size is not None and self._read_off < size:
                return False
            if size is not None:
                self._finish_read_segment()
            else:
                later = [n for n in self._segments if n > self._read_seg]
                self._read_seg, self._read_off = (later[0] if later else self._write_seg), 0
        return self._read_off >= self._sizes.get(self._write_seg, 0)

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
        self.records += 1

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
            entry = [self._read_seg, self._read_off_before, self._read_off, 0]
            self._handed.append(entry)
            self._by_pos[pos] = entry
            handed += 1
            yield pos, rec

    def _read_one(self) -> SpooledRecord | None:
        if self._reader is None:
            self._reader = self._path(self._read_seg).open("rb")
        self._reader.seek(self._read_off)
        self._read_off_before = self._read_off
        rec, used = _read_frame(self._reader)
        if rec is None:
            self.corrupt += 1
        # A torn or corrupt tail (nothing used): skip the rest of this segment.
        self._read_off = self._read_off + used if used else self._sizes[self._read_seg]
        return rec

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
        entry = self._by_pos.pop(pos, None)
        if entry is None:
            return  # not handed out by this instance (or acked already)
        entry[3] = 1
        self.records -= 1
        handed = self._handed
        while handed and handed[0][3]:
            first = handed.popleft()
            self._watermark = (first[0], first[2])
        seg = pos[0]
        if seg in self._unacked:
            self._unacked[seg] -= 1
            self._maybe_delete(seg, fully_read=seg < self._read_seg)

    @property
    def watermark(self) -> tuple[int, int] | None:
        """End of the acknowledged prefix of what this instance handed out."""
        return self._watermark

    def save_watermark(self) -> bool:
        """Persists the watermark (if it moved); True if written."""
        mark = self._watermark
        if mark is None or mark == self._saved_watermark:
            return False
        tmp = self.dir / (_WATERMARK + ".tmp")
        with tmp.open("w") as f:
            f.write(f"{mark[0]} {mark[1]}\n")
            f.flush()
            if self.fsync != "never":
                os.fsync(f.fileno())
        os.replace(tmp, self.dir / _WATERMARK)
        self._saved_watermark = mark
        return True

    def scan_unread(self) -> Iterator[SpooledRecord]:
        """Every unread record, in order, without handing anything out (start-up: what
        an earlier run left, e.g. to find the last trade it took)."""
        segs = [n for n in self._segments if n >= self._read_seg]
        for n in segs:
            pos = self._read_off if n == self._read_seg else 0
            with self._path(n).open("rb") as f:
                f.seek(pos)
                while pos < self._sizes[n]:
                    rec, used = _read_frame(f)
                    if not used:
                        break  # a torn or corrupt tail, as read() treats it
                    pos += used
                    if rec is not None:
                        yield rec

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
        self.save_watermark()
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
