"""The deployment files in infra/: Docker cannot run here, so their structure is checked instead."""

from __future__ import annotations

import re

import yaml

from hm_recs.paths import PROJECT_ROOT

INFRA = PROJECT_ROOT / "infra"
SECRET_KEYS = re.compile(r"(PASSWORD|SECRET|ACCESS_KEY|TOKEN)", re.I)


def _compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def test_compose_has_every_service_of_the_deployment():
    services = _compose()["services"]
    assert {
        "postgres",
        "objectstore",
        "mlflow",
        "spark-master",
        "spark-worker-1",
        "spark-worker-2",
        "code-location",
        "webserver",
        "daemon",
    } <= set(services)
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND"].startswith("postgresql+psycopg2://")
    assert "s3://" in " ".join(services["mlflow"]["command"])
    for name in ("code-location", "webserver", "daemon"):
        env = services[name]["environment"]
        assert env["HM_LAKE_URI"].startswith("s3://") and env["HM_MLFLOW_TRACKING_URI"].startswith("http://")
        assert env["HM_MODELS_URI"].startswith("s3://")  # a fresh run worker finds the trained models
        assert env["HM_SPARK_MASTER"].startswith("spark://")
    assert "workspace.yaml" in " ".join(services["webserver"]["command"])


def test_web_ports_bind_to_localhost_only():
    for name, svc in _compose()["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"


def test_no_credential_is_written_in_a_versioned_file():
    def walk(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, f"{path}[{i}]")
        else:
            yield path, node

    for path, value in walk(_compose()):
        if SECRET_KEYS.search(path.rsplit(".", 1)[-1]) and isinstance(value, str):
            assert value.startswith("${"), f"{path} holds a literal credential"
        if isinstance(value, str) and "postgresql" in value and "@" in value:
            assert "${POSTGRES_PASSWORD" in value, path
    example = (INFRA / ".env.example").read_text()
    assert all(
        line.split("=", 1)[1] == ""
        for line in example.splitlines()
        if "=" in line and SECRET_KEYS.search(line.split("=")[0])
    )
    assert "infra/.env" in (PROJECT_ROOT / ".gitignore").read_text()


def test_production_instance_uses_postgres_from_the_environment():
    conf = yaml.safe_load((INFRA / "dagster.yaml").read_text())
    db = conf["storage"]["postgres"]["postgres_db"]
    assert all(
        isinstance(db[k], dict) and "env" in db[k] for k in ("hostname", "username", "password", "db_name")
    )
    assert conf["run_coordinator"]["class"] == "QueuedRunCoordinator"


def test_kubernetes_values_parse_and_keep_secrets_out():
    values = yaml.safe_load((INFRA / "k8s" / "dagster-values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "hm_recs.definitions"]
    assert {"name": "hm-recs-secrets"} in deployment["envSecrets"]
    assert (
        values["postgresql"]["enabled"] is False
        and values["dagsterWebserver"]["service"]["type"] == "ClusterIP"
    )
    assert not any(SECRET_KEYS.search(e["name"]) for e in deployment["env"])
    conf = (INFRA / "k8s" / "spark-on-k8s.conf").read_text()
    assert "spark.kubernetes.container.image" in conf and "secretKeyRef" in conf
