"""Where the spool lives, and holding it: one connector process per spool directory.

``CONNECTOR_SPOOL_DIR`` names the place; unset, the spool goes to the XDG state
directory (``$XDG_STATE_HOME/exchange-connector/spool``, ``~/.local/state/...``), or to
the first free sibling (``spool-1``, …) when another connector on this machine holds it.
A directory is held with an exclusive ``flock`` on its ``spool.lock`` for the process's
life.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from connector.errors import ConfigError, SpoolInUse
from connector.kafka.spool import Spool

if TYPE_CHECKING:
    from connector.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_SPOOL_SLOTS = 8  # connectors on one machine sharing the default place


def default_spool_base() -> Path:
    """Where spools go when CONNECTOR_SPOOL_DIR is unset: the XDG state directory."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(state) / "exchange-connector"


def open_spool(settings: Settings, directory: Path) -> tuple[Spool, int]:
    """The spool in ``directory`` and the descriptor holding its lock (closed to let
    another process have it)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / "spool.lock", os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        raise ConfigError(f"spool_dir (CONNECTOR_SPOOL_DIR) {directory}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SpoolInUse(
            f"spool_dir (CONNECTOR_SPOOL_DIR) {directory} is in use by another connector "
            "process; give each process its own directory"
        ) from None
    spool = Spool(
        directory,
        segment_bytes=settings.spool_segment_bytes,
        max_bytes=settings.spool_max_bytes,
        fsync=settings.spool_fsync,
    )
    return spool, fd


def open_default_spool(settings: Settings) -> tuple[Spool, int] | None:
    """The spool in its default place, or in the first free sibling (another connector
    on this machine holds it); None, with a warning, if none can be used."""
    base = default_spool_base()
    reasons = []
    for slot in range(DEFAULT_SPOOL_SLOTS):
        directory = base / ("spool" if slot == 0 else f"spool-{slot}")
        try:
            held = open_spool(settings, directory)
        except SpoolInUse as exc:
            reasons.append(str(exc))
            continue
        except ConfigError as exc:
            reasons.append(str(exc))
            break
        log.info(
            "spool at %s: what Kafka has not taken past kafka_max_in_flight records goes "
            "there (CONNECTOR_SPOOL_DIR sets the place, CONNECTOR_SPOOL=false turns it off)",
            directory,
        )
        return held
    log.warning(
        "no spool (%s): once kafka_max_in_flight records are unacknowledged, reading "
        "waits for Kafka; set CONNECTOR_SPOOL_DIR to a writable directory",
        "; ".join(reasons),
    )
    return None
