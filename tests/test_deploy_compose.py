"""docker-compose.yml: its structure, since no Docker engine runs where the tests run.

Services, images, ports, volumes, health checks and restart policies; every worker ``command`` is
parsed by the real ``fraiseql-cli`` parser; the configuration file the workers mount loads with
the real settings loader, and its /metrics ports are the ones the health checks and Prometheus use.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fraiseql_obs_app.cli import build_parser
from fraiseql_observability.config import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
WORKERS = {"migrate": "migrate", "stream": "stream", "sink": "sink", "scheduler": "schedule"}
LONG_RUNNING = {"kafka", "postgres", "stream", "sink", "scheduler", "prometheus", "grafana"}


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def _bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts (``./…`` sources)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (REPO / source).resolve()
    return mounts


def _config(service: dict[str, Any]) -> Settings:
    """The settings the worker runs with: its --config file, then its environment."""
    command = service["command"]
    container_path = command[command.index("--config") + 1]
    host_path = _bind_mounts(service)[container_path]
    environ = {k: re.sub(r"\$\{[^}]+\}", "secret", str(v))
               for k, v in service.get("environment", {}).items()}
    return load_settings(host_path, environ=environ)


def test_services_images_and_policies() -> None:
    found = services()
    assert set(found) >= LONG_RUNNING | {"migrate"}
    assert found["kafka"]["image"] == "apache/kafka:3.9.1"
    kafka_env = found["kafka"]["environment"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert "zookeeper" not in COMPOSE.read_text().lower()
    for name in ("prometheus", "grafana"):
        image = found[name]["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{name}: pin a version ({image})"
    for name in LONG_RUNNING:
        assert found[name]["restart"] in {"unless-stopped", "always"}, name
        check = found[name]["healthcheck"]
        assert check["test"] and check["interval"] and check["retries"], name
    assert found["migrate"]["restart"] == "on-failure"  # one-shot
    assert "healthcheck" not in found["migrate"]


def test_postgres_image_has_hypopg_and_roles() -> None:
    postgres = services()["postgres"]
    dockerfile = REPO / postgres["build"]["context"] / "Dockerfile"
    text = dockerfile.read_text()
    assert re.search(r"^FROM postgres:15\b", text, re.MULTILINE)
    assert "postgresql-15-hypopg" in text
    init = REPO / postgres["build"]["context"] / "initdb" / "10-fraiseql-roles.sh"
    script = init.read_text()
    # Each worker's login is a member of its least-privilege group role.
    for login, group in (("fraiseql_sink_user", "fraiseql_collector"),
                         ("fraiseql_scheduler_user", "fraiseql_scheduler"),
                         ("fraiseql_grafana", "fraiseql_analyst")):
        assert re.search(rf"CREATE ROLE {login} LOGIN PASSWORD :'\w+'\s+IN ROLE {group}", script)
    # Passwords arrive as psql variables, not formatted into SQL by the shell.
    assert "<<'SQL'" in script
    assert subprocess.run(["bash", "-n", str(init)], check=False).returncode == 0
    assert init.stat().st_mode & 0o111, "docker-entrypoint runs initdb scripts that are executable"


def test_worker_commands_exist_in_the_cli() -> None:
    parser = build_parser()
    found = services()
    for name, subcommand in WORKERS.items():
        service = found[name]
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        command = [str(part) for part in service["command"]]
        try:
            args = parser.parse_args(command)
        except SystemExit:
            pytest.fail(f"{name}: `fraiseql-cli {' '.join(command)}` is not a valid command")
        assert args.command == subcommand, name
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["fraiseql-cli"]' in dockerfile
    assert re.search(r"^USER 10001", dockerfile, re.MULTILINE)  # not root
    for source in re.findall(r"^COPY (\S+) ", dockerfile, re.MULTILINE):
        assert (REPO / source).exists(), f"Dockerfile copies a missing {source}"


def test_worker_configuration_and_metrics_ports() -> None:
    found = services()
    prometheus = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    scraped = {job["job_name"]: target for job in prometheus["scrape_configs"]
               for static in job["static_configs"] for target in static["targets"]}
    ports = {}
    for name in WORKERS:
        settings = _config(found[name])
        assert settings.kafka.bootstrap_servers == "kafka:9092"
        if name != "stream":  # the stream worker never touches the database
            url = settings.database_url
            assert "@postgres:5432/metrics" in url, name
        ports[name] = {"stream": settings.streams.metrics_port, "sink": settings.sinks.metrics_port,
                       "scheduler": settings.analysis.metrics_port}.get(name)
    # Least privilege: only the one-shot migration logs in as the superuser.
    users = {name: found[name]["environment"]["FRAISEQL_METRICS_DATABASE_URL"]
             .removeprefix("postgresql://").split(":")[0]
             for name in ("migrate", "sink", "scheduler")}
    assert users == {"migrate": "postgres", "sink": "fraiseql_sink_user",
                     "scheduler": "fraiseql_scheduler_user"}
    assert "FRAISEQL_METRICS_DATABASE_URL" not in found["stream"].get("environment", {})
    for name in ("stream", "sink", "scheduler"):
        port = ports[name]
        assert port, name
        # The health check asks the worker's own /metrics; Prometheus scrapes the same port.
        assert f"127.0.0.1:{port}/metrics" in " ".join(found[name]["healthcheck"]["test"])
        assert scraped[f"fraiseql-{name}"] == f"{name}:{port}"


def test_volumes_ports_and_dependencies() -> None:
    document = compose()
    found = document["services"]
    declared = set(document["volumes"])
    for name, service in found.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: bind mount of missing {source}"
            else:
                assert source in declared, f"{name}: undeclared volume {source}"
        for port in service.get("ports", []):
            # Published on loopback only: nothing is exposed to the network by default.
            assert str(port).startswith("127.0.0.1:"), (name, port)
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {dependency: {"condition": "service_started"} for dependency in depends}
        for dependency, condition in depends.items():
            assert dependency in found, (name, dependency)
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in found[dependency], (name, dependency)
    # State that must survive a restart lives in named volumes.
    assert {v.split(":")[1] for v in found["kafka"]["volumes"]} == {"/var/lib/kafka/data"}
    assert found["kafka"]["environment"]["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert "pg-data:/var/lib/postgresql/data" in found["postgres"]["volumes"]
    assert "prometheus-data:/prometheus" in found["prometheus"]["volumes"]
    # Prometheus gets the rules; Grafana the provisioning and the dashboards.
    prometheus_mounts = _bind_mounts(found["prometheus"])
    assert (prometheus_mounts["/etc/prometheus"] / "rules" / "fraiseql-alerts.yml").is_file()
    grafana_mounts = _bind_mounts(found["grafana"])
    dashboards_dir = grafana_mounts["/var/lib/grafana/dashboards"]
    assert len(list(dashboards_dir.glob("*.json"))) == 4
    assert (grafana_mounts["/etc/grafana/provisioning"] / "datasources" / "datasources.yml").is_file()
    provider = yaml.safe_load((grafana_mounts["/etc/grafana/provisioning"] / "dashboards"
                               / "dashboards.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    sources = yaml.safe_load((grafana_mounts["/etc/grafana/provisioning"] / "datasources"
                              / "datasources.yml").read_text())["datasources"]
    urls = {source["type"]: source["url"] for source in sources}
    assert urls == {"prometheus": "http://prometheus:9090",
                    "grafana-postgresql-datasource": "postgres:5432"}


def test_every_required_variable_is_in_env_example() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    example = (REPO / "deploy" / "docker" / "env.example").read_text()
    listed = set(re.findall(r"^(\w+)=", example, re.MULTILINE))
    assert required, "secrets must be required, not defaulted"
    assert required <= listed, sorted(required - listed)
