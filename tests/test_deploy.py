"""Deployment files, checked without a Docker engine: docker-compose.yml against the
Compose Specification schema and against our settings, the Dockerfile's promises, and
the Prometheus files against the metrics the connector really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft201909Validator

from connector.metrics import Metrics
from connector.settings import SECRET_FIELDS, Settings, env_name, known_env_names, load_settings

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    validator = Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_compose_services_are_healthchecked_and_wait_for_health() -> None:
    services = compose()["services"]
    assert {"kafka", "schema-registry", "kafka-ui", "connector", "prometheus"} <= set(services)
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
        for dep, cond in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if name != "prometheus":
                assert cond["condition"] == "service_healthy", (name, dep)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft, no ZooKeeper
    assert "karapace" in services["schema-registry"]["image"]
    assert services["prometheus"]["profiles"] == ["monitoring"]


def test_compose_passes_only_real_settings_to_the_connector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connector = compose()["services"]["connector"]
    env = {k: str(v) for k, v in connector["environment"].items()}
    known = known_env_names() | {env_name(n) + "_FILE" for n in SECRET_FIELDS}
    assert set(env) <= known, f"not settings: {sorted(set(env) - known)}"
    for key in list(known):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()  # every value is valid, too
    assert settings.kafka_bootstrap_servers == "kafka:9092"
    assert settings.schema_registry_url == "http://schema-registry:8081"
    assert settings.spool_dir is not None
    mounts = [v.split(":")[1] for v in connector["volumes"]]
    assert str(settings.spool_dir) in mounts  # the spool is a volume
    assert connector["read_only"] is True and connector["cap_drop"] == ["ALL"]
    port = settings.http_port
    assert f"{port}:{port}" in connector["ports"]
    assert f"127.0.0.1:{port}/readyz" in " ".join(connector["healthcheck"]["test"])
    grace = int(connector["stop_grace_period"].rstrip("s"))
    assert grace > settings.shutdown_timeout_s


def test_the_quick_start_agrees_with_compose() -> None:
    readme = (ROOT / "docs" / "operations.md").read_text()
    services = compose()["services"]
    assert "docker compose up --build" in readme
    for service, port in (("kafka-ui", 8080), ("connector", 9102), ("kafka", 29092)):
        assert any(str(p).startswith(f"{port}:") for p in services[service]["ports"])
        assert f"localhost:{port}" in readme, (
            f"docs/operations.md does not mention localhost:{port}"
        )


def test_dockerfile_promises() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2  # multi-stage
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/readyz" in text
    assert 'ENTRYPOINT ["connector", "run"]' in text
    env_block = re.search(r"^ENV (.*?)(?=^\S)", text, re.M | re.S)
    assert env_block
    names = set(re.findall(r"([A-Z_]+)=", env_block.group(1))) - {
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
    }
    assert names <= known_env_names(), names
    expose = re.search(r"^EXPOSE (\d+)", text, re.M)
    assert expose and int(expose.group(1)) == Settings.model_fields["http_port"].default
    assert 'VOLUME ["/var/lib/connector/spool"]' in text


def exported_metric_names() -> set[str]:
    metrics = Metrics()
    names = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        for sample in family.samples:
            names.add(sample.name)
    # labelled metrics have no samples until used: their descriptions name them
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    for collector in vars(metrics).values():
        for family in getattr(collector, "describe", list)():
            names.add(family.name)
            names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
    return names


def test_alert_rules_use_metrics_the_connector_exports() -> None:
    rules = yaml.safe_load((ROOT / "helm/exchange-connector/files/alerts.yml").read_text())
    exported = exported_metric_names()
    seen = 0
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
            for name in re.findall(r"\b(connector_[a-z_]+)", rule["expr"]):
                assert name in exported, f"{rule['alert']}: {name} is not exported"
                seen += 1
    assert seen >= 8
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"connector:{Settings.model_fields['http_port'].default}"]
