"""Kubernetes manifests (deploy/k8s) and the weekly analysis script (deploy/weekly-analysis.sh).

No cluster runs here: the manifests' structure is checked (probes on the /metrics port, resource
requests and limits, non-root security contexts, database URLs only from Secrets, commands the
CLI accepts, the NetworkPolicy's reachable destinations). The weekly script runs for real against
``fraiseql-cli analyze`` on a migrated metrics database and posts to a local HTTP server.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from fraiseql_obs_app.cli import build_parser
from fraiseql_observability.config import load_settings
from tests.fix_procs import clean_env

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
SCRIPT = REPO / "deploy" / "weekly-analysis.sh"
WORKERS = {"stream": "stream", "sink": "sink", "scheduler": "schedule"}
REFERENCE_FILTER = ('jq \'.suggestions | map(select(.priority == "high" or .priority == "critical"))'
                    ' | length\'')


def resources() -> list[dict[str, Any]]:
    """Every object the kustomization applies."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = []
    for name in kustomization["resources"]:
        objects += [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
    return objects


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in resources() if obj["kind"] == kind}


def _settings(tmp_path: Path) -> Any:
    config = tmp_path / "fraiseql.toml"
    config.write_text(by_kind("ConfigMap")["fraiseql-config"]["data"]["fraiseql.toml"])
    return load_settings(config, environ={})


def _selected(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector matches ``labels``."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
        if expression["operator"] == "NotIn" and value in expression["values"]:
            return False
    return True


def test_kustomization_resources_and_namespace() -> None:
    objects = resources()
    assert {obj["kind"] for obj in objects} >= {"Namespace", "ConfigMap", "Deployment", "Service",
                                                 "NetworkPolicy", "CronJob"}
    assert all(obj["metadata"].get("namespace", "fraiseql") == "fraiseql" for obj in objects)
    assert not [obj for obj in objects if obj["kind"] == "Secret"], "secrets are not committed"


def test_deployments(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    ports = {"stream": settings.streams.metrics_port, "sink": settings.sinks.metrics_port,
             "scheduler": settings.analysis.metrics_port}
    parser = build_parser()
    deployments = by_kind("Deployment")
    services = by_kind("Service")
    assert set(deployments) == {f"fraiseql-{name}" for name in WORKERS}
    for component, subcommand in WORKERS.items():
        deployment = deployments[f"fraiseql-{component}"]
        pod = deployment["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert _selected(deployment["spec"]["selector"], labels)
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False
        (container,) = spec["containers"]
        # The command the image's `fraiseql-cli` entry point runs.
        args = parser.parse_args(container["args"])
        assert args.command == subcommand
        config_mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
        assert container["args"][1] == f"{config_mount['mountPath']}/fraiseql.toml"
        # Probes on the /metrics port the configuration makes the worker serve.
        (port,) = container["ports"]
        assert port == {"name": "metrics", "containerPort": ports[component]}
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, probe
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}, (component, kind)
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        # The database URL (a password) only from a Secret; the stream worker gets none.
        env = {e["name"]: e for e in container.get("env", [])}
        assert all("value" not in e for e in env.values())
        if component == "stream":
            assert "FRAISEQL_METRICS_DATABASE_URL" not in env
        else:
            source = env["FRAISEQL_METRICS_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
            assert source["name"] == "fraiseql-metrics-db"
        # A Service for /metrics selecting exactly these pods.
        service = services[f"fraiseql-{component}-metrics"]
        assert _selected({"matchLabels": service["spec"]["selector"]}, labels)
        assert service["spec"]["ports"] == [{"name": "metrics", "port": ports[component],
                                             "targetPort": "metrics"}]
        assert service["metadata"]["annotations"]["prometheus.io/port"] == str(ports[component])
    # Only one scheduler, ever: no rolling update running two.
    scheduler = deployments["fraiseql-scheduler"]["spec"]
    assert scheduler["replicas"] == 1 and scheduler["strategy"]["type"] == "Recreate"
    reports = next(m for m in scheduler["template"]["spec"]["containers"][0]["volumeMounts"]
                   if m["name"] == "reports")
    assert reports["mountPath"] == settings.analysis.reports_dir  # writable despite the read-only root


def _egress_for(labels: dict[str, str]) -> list[dict[str, Any]]:
    """The egress rules of every policy that selects a pod with ``labels``."""
    rules: list[dict[str, Any]] = []
    for policy in by_kind("NetworkPolicy").values():
        spec = policy["spec"]
        if _selected(spec["podSelector"], labels) and "Egress" in spec["policyTypes"]:
            rules += spec.get("egress", [])
    return rules


def _destinations(rules: list[dict[str, Any]]) -> set[tuple[str, int | str]]:
    out: set[tuple[str, int | str]] = set()
    for rule in rules:
        for peer in rule["to"]:
            if "ipBlock" in peer:
                name = "internet"
            else:
                name = (peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] + "/"
                        + "/".join(f"{v}" for v in peer["podSelector"]["matchLabels"].values()))
            for port in rule["ports"]:
                out.add((name, port["port"]))
    return out


def test_network_policy() -> None:
    policies = by_kind("NetworkPolicy")
    # A default deny of both directions for every FraiseQL pod.
    deny = [p["spec"] for p in policies.values()
            if set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not p["spec"].get("ingress")
            and not p["spec"].get("egress")]
    assert deny and deny[0]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/part-of": "fraiseql-observability"}}
    dns = ("kube-system/kube-dns", 53)
    kafka = ("kafka/kafka", 9092)
    database = ("metrics-db/metrics-db", 5432)
    expected = {"stream": {dns, kafka}, "sink": {dns, kafka, database},
                "scheduler": {dns, kafka, database},
                "weekly-analysis": {dns, database, ("internet", 443)}}
    for component, allowed in expected.items():
        labels = {"app.kubernetes.io/name": "fraiseql-observability",
                  "app.kubernetes.io/component": component,
                  "app.kubernetes.io/part-of": "fraiseql-observability"}
        assert _destinations(_egress_for(labels)) == allowed, component
    # Every worker pod template carries the labels the policies select on.
    for deployment in by_kind("Deployment").values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert _selected(deny[0]["podSelector"], labels)
    # The internet rule excludes private ranges: the chat post cannot reach the cluster network.
    internet = next(peer["ipBlock"] for rule in _egress_for(
        {"app.kubernetes.io/part-of": "fraiseql-observability",
         "app.kubernetes.io/component": "weekly-analysis"}) for peer in rule["to"] if "ipBlock" in peer)
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(internet["except"])
    # Ingress: /metrics from Prometheus only.
    ingress = [rule for p in policies.values() for rule in p["spec"].get("ingress", [])]
    assert len(ingress) == 1
    assert ingress[0]["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"}
    assert ingress[0]["ports"] == [{"protocol": "TCP", "port": "metrics"}]


def test_weekly_cronjob() -> None:
    job = by_kind("CronJob")["fraiseql-weekly-analysis"]
    assert len(job["spec"]["schedule"].split()) == 5 and job["spec"]["schedule"].endswith("* * 1")
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["fraiseql-weekly-analysis"]
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    assert "COPY deploy/weekly-analysis.sh /usr/local/bin/fraiseql-weekly-analysis" in dockerfile
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert set(env) == {"FRAISEQL_ANALYZE_DATABASE_URL", "FRAISEQL_CHAT_WEBHOOK_URL"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


# --- the weekly analysis script --------------------------------------------------------------------


class _Webhook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"path": self.path, "type": self.headers["Content-Type"],
                                    "body": json.loads(body)})
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, type[_Webhook]]]:
    handler = type("Webhook", (_Webhook,), {"received": [], "status": 200})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/T0KEN-s3cret", handler
    finally:
        server.shutdown()
        server.server_close()


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = clean_env()
    environ["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{environ.get('PATH', '')}"
    environ.update(env)
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=environ,
                          timeout=120, check=False)


def _report(tmp_path: Path, priorities: list[str]) -> Path:
    path = tmp_path / "analysis.json"
    path.write_text(json.dumps({
        "version": "1", "window": {"start": "2025-01-06T00:00:00Z", "end": "2025-01-13T00:00:00Z"},
        "metrics": {"total_executions": 1234567.8, "unique_queries": 3, "avg_execution_time_ms": 4},
        "suggestions": [{"priority": p, "type": "denormalize", "table": f"tv_\"order{i}",
                         "impact": {"estimated_speedup": 12.5, "queries_per_day": 86400.4}}
                        for i, p in enumerate(priorities)],
    }))
    return path


def test_weekly_script_uses_the_reference_filter() -> None:
    text = SCRIPT.read_text()
    assert REFERENCE_FILTER in " ".join(text.split()).replace("\\ ", "")
    assert 'analyze --database "$URL"' in text and "--format json" in text
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False).returncode == 0
    assert os.access(SCRIPT, os.X_OK)


@pytest.mark.postgres
def test_weekly_script_dry_run_against_real_analyze(metrics_db: str) -> None:
    result = run_script("--dry-run", FRAISEQL_ANALYZE_DATABASE_URL=metrics_db)
    assert result.returncode == 0, result.stderr
    message = json.loads(result.stdout)["text"]
    assert message.startswith("FraiseQL weekly analysis (")
    assert "0 high-priority suggestion(s), 0 in all" in message
    assert metrics_db not in result.stdout + result.stderr


def test_weekly_script_posts_the_count(tmp_path: Path,
                                       webhook: tuple[str, type[_Webhook]]) -> None:
    url, handler = webhook
    report = _report(tmp_path, ["critical", "low", "high", "medium"])
    result = run_script("--report", str(report), FRAISEQL_CHAT_WEBHOOK_URL=url)
    assert result.returncode == 0, result.stderr
    assert "posted (2 high-priority" in result.stdout
    (post,) = handler.received
    assert post["path"] == "/hooks/T0KEN-s3cret" and post["type"] == "application/json"
    text = post["body"]["text"]
    assert "2 high-priority suggestion(s), 4 in all, 1234567 queries analyzed" in text
    assert '- [critical] denormalize on tv_"order0: ~12.5x for 86400 queries/day' in text
    assert "[low]" not in text
    assert "T0KEN" not in result.stdout + result.stderr  # the webhook URL is a secret


def test_weekly_script_failures(tmp_path: Path, webhook: tuple[str, type[_Webhook]]) -> None:
    url, handler = webhook
    report = _report(tmp_path, ["high"])
    missing = run_script("--report", str(report))
    assert missing.returncode == 2 and "FRAISEQL_CHAT_WEBHOOK_URL" in missing.stderr
    handler.status = 500
    failed = run_script("--report", str(report), FRAISEQL_CHAT_WEBHOOK_URL=url,
                        FRAISEQL_CHAT_RETRIES="0")
    assert failed.returncode == 1 and "posting to the chat webhook failed" in failed.stderr
    assert "T0KEN" not in failed.stdout + failed.stderr
    no_database = run_script("--dry-run")
    assert no_database.returncode == 2 and "FRAISEQL_ANALYZE_DATABASE_URL" in no_database.stderr
    garbage = tmp_path / "garbage.json"
    garbage.write_text("not json")
    assert run_script("--dry-run", "--report", str(garbage)).returncode == 1
