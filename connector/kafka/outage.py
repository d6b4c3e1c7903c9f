"""Kafka's availability as the sink sees it: one log line per change, not one per client
retry.

Unreachable: records wait ``kafka_send_timeout_s`` with nothing acknowledged meanwhile,
or ordered retries are under way. While it lasts, a line every ``OUTAGE_NOTE_S``; then
restored, with what was delivered since. Fed once a second by the sink (no I/O here but
the log).
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("connector.kafka.sink")  # the sink's lines, as operators know them

OUTAGE_NOTE_S = 30.0  # how often an outage is logged while it lasts


class OutageLog:
    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self.down_at = 0.0  # monotonic; 0 while Kafka takes records
        self._next_note = 0.0
        self._delivered_before = 0
        self._replayed_before = 0

    def observe(
        self,
        now: float,
        *,
        oldest_sent: float | None,
        last_ack: float,
        retrying: bool,
        delivered: int,
        replayed: int,
        held: str,
        last_error: str | None,
    ) -> None:
        after = self.after_s
        waiting = oldest_sent is not None and now - oldest_sent > after and now - last_ack > after
        if not self.down_at:
            if waiting or retrying:
                self.down_at = min(now, oldest_sent) if oldest_sent is not None else now
                self._next_note = self.down_at + OUTAGE_NOTE_S
                self._delivered_before, self._replayed_before = delivered, replayed
                since = time.strftime("%H:%M:%S", time.gmtime(time.time() - (now - self.down_at)))
                log.warning(
                    "Kafka unreachable since %s UTC (%s): %s; reading goes on",
                    since,
                    last_error or f"nothing acknowledged for {after:.0f}s",
                    held,
                )
        elif not waiting and not retrying:
            log.info(
                "Kafka restored after %.0fs: %d record(s) delivered since, %d of them "
                "replayed from the spool; %s",
                now - self.down_at,
                delivered - self._delivered_before,
                replayed - self._replayed_before,
                held,
            )
            self.down_at = 0.0
        elif now >= self._next_note:
            self._next_note += OUTAGE_NOTE_S
            log.warning(
                "Kafka still unreachable after %.0fs (%s): %s",
                now - self.down_at,
                last_error or "no acknowledgement",
                held,
            )
