"""Logging set-up: text by default, one JSON object per line with log_format=json."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson


class RepeatFilter(logging.Filter):
    """Keeps the first of a client library's repeated lines, then one a ``window``.

    aiokafka logs every failed reconnect and metadata refresh (about ten lines a second
    while a broker is unreachable: 1 500 in a 40 s outage). A line of the same logger,
    level and template as one shown less than ``window`` seconds ago is counted, not
    shown; the next one shown after the window says how many were held back. The
    connector's own lines (one per state change) pass untouched."""

    def __init__(self, prefixes: tuple[str, ...], window: float = 60.0) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._window = window
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefixes):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = record.created
        shown = self._seen.get(key)
        if shown is not None and now - shown[0] < self._window:
            self._seen[key] = (shown[0], shown[1] + 1)
            return False
        if len(self._seen) > 1000:  # a bound: templates are few
            self._seen.clear()
        self._seen[key] = (now, 0)
        if shown is not None and shown[1]:
            record.msg = f"{record.msg} ({shown[1]} like it in the last {now - shown[0]:.0f}s)"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    handler.addFilter(RepeatFilter(("aiokafka", "kafka")))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library chatter stays at WARNING unless we debug.
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for name in ("aiokafka", "websockets", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)
