"""The on-disk spool: any sequence of append / read / ack / save-watermark / close /
kill / replay loses nothing, keeps order and never replays what a saved watermark covers
(hypothesis, model-based); a torn write is skipped, never replayed."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from connector.kafka.spool import Spool, SpooledRecord, SpoolFull, decode_record, encode_record


def record(i: int, size: int = 10) -> SpooledRecord:
    return SpooledRecord(
        f"topic.{i % 3}",
        b"k%d" % i,
        b"%08d" % i + b"x" * size,
        (("h", b"%d" % i),) if i % 2 else (),
    )


def index(rec: SpooledRecord) -> int:
    return int(rec.value[:8])


class SpoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="spool-test-"))
        self.spool = Spool(self.dir, segment_bytes=300, max_bytes=10**9, fsync="never")
        self.appended: list[int] = []
        self.ever_read: set[int] = set()
        self.session_reads: list[int] = []
        self.outstanding: list[tuple[tuple[int, int], int]] = []
        self.next = 0
        self.handed: list[int] = []  # this session, in hand-out order
        self.acked: set[int] = set()
        self.covered: set[int] = set()  # under a saved watermark: never replayed

    def _covered_now(self) -> set[int]:
        prefix: set[int] = set()
        for i in self.handed:
            if i not in self.acked:
                break
            prefix.add(i)
        return prefix

    def teardown(self) -> None:
        try:
            self.drain_everything()
            assert self.ever_read >= set(self.appended), "records lost"
            assert not self.spool.has_unread()
        finally:
            self.spool.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    @rule(n=st.integers(1, 8), size=st.integers(0, 120))
    def append(self, n: int, size: int) -> None:
        for _ in range(n):
            self.spool.append(record(self.next, size))
            self.appended.append(self.next)
            self.next += 1

    @rule(n=st.integers(1, 8), size=st.integers(0, 120))
    def append_handed(self, n: int, size: int) -> None:
        """Write-ahead: appended and handed out at once when nothing is unread."""
        for _ in range(n):
            i = self.next
            pos = self.spool.append_handed(record(i, size))
            self.appended.append(i)
            self.next += 1
            if pos is not None:
                assert not self.spool.has_unread(), "handed out while older records wait"
                self.ever_read.add(i)
                self.session_reads.append(i)
                self.outstanding.append((pos, i))
                self.handed.append(i)

    @rule(limit=st.integers(1, 10))
    def read(self, limit: int) -> None:
        for pos, rec in self.spool.read(limit):
            i = index(rec)
            assert i not in self.covered, f"record {i} replayed below the saved watermark"
            self.ever_read.add(i)
            self.session_reads.append(i)
            self.outstanding.append((pos, i))
            self.handed.append(i)

    @precondition(lambda self: self.outstanding)
    @rule(k=st.integers(1, 10), newest_first=st.booleans())
    def ack(self, k: int, newest_first: bool) -> None:
        batch = self.outstanding[-k:] if newest_first else self.outstanding[:k]
        for item in batch:
            self.spool.ack(item[0])
            self.outstanding.remove(item)
            self.acked.add(item[1])

    @rule()
    def save_watermark(self) -> None:
        self.spool.save_watermark()
        self.covered |= self._covered_now()

    def _reopen(self) -> None:
        self.spool = Spool(self.dir, segment_bytes=300, max_bytes=10**9, fsync="never")
        self.outstanding.clear()  # unacked records come back: at-least-once
        self.session_reads.clear()
        self.handed.clear()
        self.acked.clear()

    @rule()
    def close_and_reopen(self) -> None:
        self.spool.close()  # saves the watermark
        self.covered |= self._covered_now()
        self._reopen()

    @rule()
    def kill_and_reopen(self) -> None:
        # SIGKILL: no close, no last watermark; only what the OS already has survives
        # (every append is flushed to the OS).
        for f in (self.spool._writer, self.spool._reader):
            if f is not None:
                f.close()
        self._reopen()

    @invariant()
    def reads_keep_append_order(self) -> None:
        assert self.session_reads == sorted(self.session_reads)
        assert len(self.session_reads) == len(set(self.session_reads))

    def drain_everything(self) -> None:
        while self.spool.has_unread():
            got = list(self.spool.read(1000))
            assert got, "has_unread() but nothing read"
            for pos, rec in got:
                assert index(rec) not in self.covered
                self.ever_read.add(index(rec))
                self.session_reads.append(index(rec))
                self.spool.ack(pos)
        for pos, _ in self.outstanding:
            self.spool.ack(pos)
        self.outstanding.clear()

    @invariant()
    def nothing_is_lost(self) -> None:
        # Whatever was appended but never read is still waiting on disk.
        unread = set(self.appended) - self.ever_read
        if unread:
            assert self.spool.has_unread()


TestSpoolMachine = SpoolMachine.TestCase
TestSpoolMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_full_drain_after_random_use_reads_everything_once_per_session(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=256, fsync="never")
    for i in range(200):
        spool.append(record(i))
    first = [(pos, index(rec)) for pos, rec in spool.read(50)]
    for pos, _ in first[:30]:
        spool.ack(pos)  # 20 read but unacked when the process dies
    spool.close()
    spool = Spool(tmp_path, segment_bytes=256, fsync="never")
    replay = [index(rec) for pos, rec in spool.read(10_000)]
    # at-least-once: unacked (and not-yet-deleted) records come again, in order, none lost
    assert replay == sorted(replay) and set(replay) >= set(range(30, 200))
    spool.close()


def test_torn_write_is_skipped_not_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=10**6, fsync="never")
    for i in range(5):
        spool.append(record(i))
    spool.close()
    (seg,) = tmp_path.glob("spool-*.seg")
    with seg.open("ab") as f:  # a crash mid-write: half a frame
        f.write(b"\x40\x00\x00\x00\x12\x34")
    spool = Spool(tmp_path, segment_bytes=10**6, fsync="never")
    assert [index(r) for _, r in spool.read(100)] == [0, 1, 2, 3, 4]
    assert spool.corrupt == 1
    spool.close()


def test_corrupted_record_is_detected_by_its_checksum(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync="never")
    spool.append(record(0))
    spool.append(record(1))
    spool.close()
    (seg,) = tmp_path.glob("spool-*.seg")
    data = bytearray(seg.read_bytes())
    data[12] ^= 0xFF  # flip a byte inside the first record's payload
    seg.write_bytes(bytes(data))
    spool = Spool(tmp_path, fsync="never")
    assert [index(r) for _, r in spool.read(100)] == []  # the rest of the segment is not trusted
    assert spool.corrupt == 1
    spool.close()


def test_size_limit(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=1000, max_bytes=500, fsync="never")
    with pytest.raises(SpoolFull):
        for i in range(100):
            spool.append(record(i))
    spool.close()


def test_acked_segments_are_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=200, fsync="never")
    for i in range(50):
        spool.append(record(i))
    assert len(list(tmp_path.glob("*.seg"))) > 3
    for pos, _ in list(spool.read(1000)):
        spool.ack(pos)
    assert len(list(tmp_path.glob("*.seg"))) <= 1  # at most the open segment
    assert spool.bytes <= 200
    spool.close()


def test_record_codec_round_trip() -> None:
    rec = SpooledRecord("t", b"", b"\x00\xff" * 10, (("a", b""), ("b", b"\x01")))
    assert decode_record(encode_record(rec)) == rec


def test_a_fully_delivered_open_segment_is_not_replayed_after_close(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync="never")
    for i in range(10):
        spool.append(record(i))
    for pos, _ in list(spool.read(100)):
        spool.ack(pos)
    spool.close()
    again = Spool(tmp_path, fsync="never")
    assert not again.has_unread() and list(again.read(100)) == []
    again.close()


def test_watermark_bounds_what_a_kill_replays(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=10**6, fsync="never")
    for i in range(100):
        spool.append(record(i))
    got = list(spool.read(100))
    for pos, _ in got[:60]:
        spool.ack(pos)
    spool.ack(got[70][0])  # out of order: does not move the watermark past 60
    assert spool.save_watermark()
    assert not spool.save_watermark()  # unchanged: nothing written
    for f in (spool._writer, spool._reader):
        if f is not None:
            f.close()  # killed: no close(), so no newer watermark
    again = Spool(tmp_path, segment_bytes=10**6, fsync="never")
    assert [index(r) for _, r in again.read(1000)] == list(range(60, 100))
    again.close()


def test_segment_numbers_continue_past_a_deleted_watermark_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=200, fsync="never")
    for i in range(30):
        spool.append(record(i))
    for pos, _ in list(spool.read(1000)):
        spool.ack(pos)
    spool.close()  # watermark in a segment that is now deleted
    spool = Spool(tmp_path, segment_bytes=200, fsync="never")
    spool.append(record(99))
    spool.close()
    spool = Spool(tmp_path, segment_bytes=200, fsync="never")
    assert [index(r) for _, r in spool.read(10)] == [99]  # not mistaken for acknowledged
    spool.close()


def test_receive_time_survives_the_disk_and_old_records_still_decode() -> None:
    rec = SpooledRecord("t", b"k", b"v", (), receive_ts=1700000000.25)
    assert decode_record(encode_record(rec)) == rec
    old = SpooledRecord("t", b"k", b"v", ())
    assert decode_record(encode_record(old)).receive_ts == 0.0
    with pytest.raises(ValueError):
        decode_record(encode_record(old) + b"xyz")


def test_scan_unread_does_not_hand_anything_out(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=200, fsync="never")
    for i in range(20):
        spool.append(record(i))
    for pos, _ in list(spool.read(5)):
        spool.ack(pos)
    assert [index(r) for r in spool.scan_unread()] == list(range(5, 20))
    assert [index(r) for _, r in spool.read(100)] == list(range(5, 20))
    spool.close()
