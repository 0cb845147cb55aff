"""The Compose cluster stack, validated statically (no Docker engine runs here)."""

import json
import re
from pathlib import Path

import pytest
import yaml

from tx_platform.config import PROJECT_ROOT
from tx_platform.stack._postgres import ANALYST_ROLE, DAGSTER_ROLE, OWNER_ROLE, PIPELINE_ROLE, REGISTRY_ROLE

pytestmark = pytest.mark.unit

INFRA = PROJECT_ROOT / "infra"
PROMETHEUS = PROJECT_ROOT / "monitoring" / "prometheus"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def test_every_published_port_is_loopback_only(compose: dict) -> None:
    published = [p for s in compose["services"].values() for p in s.get("ports", [])]
    assert published and all(str(p).startswith("127.0.0.1:") for p in published)


def test_three_controllers_three_brokers_replication_three(compose: dict) -> None:
    services = compose["services"]
    roles = {
        name: s["environment"]["KAFKA_PROCESS_ROLES"]
        for name, s in services.items()
        if "KAFKA_PROCESS_ROLES" in s.get("environment", {})
    }  # noqa: E501
    assert sorted(n for n, r in roles.items() if r == "controller") == ["controller-1", "controller-2", "controller-3"]
    assert sorted(n for n, r in roles.items() if r == "broker") == ["broker-1", "broker-2", "broker-3"]
    node_ids = {services[n]["environment"]["KAFKA_NODE_ID"] for n in roles}
    assert node_ids == {"1", "2", "3", "4", "5", "6"}
    broker = services["broker-1"]["environment"]
    assert broker["KAFKA_CONTROLLER_QUORUM_VOTERS"].count("@controller-") == 3
    assert (broker["KAFKA_DEFAULT_REPLICATION_FACTOR"], broker["KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2")
    assert broker["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_registry_is_the_stock_image_of_the_version_the_laptop_builds(compose: dict) -> None:
    pom = (INFRA / "maven" / "schema-registry" / "pom.xml").read_text()
    version = re.search(r"<apicurio.version>([^<]+)</apicurio.version>", pom).group(1)
    registry = compose["services"]["schema-registry"]
    assert registry["image"] == f"apicurio/apicurio-registry-sql:{version}"
    assert registry["environment"]["REGISTRY_RULES_GLOBAL_COMPATIBILITY"] == "BACKWARD"


def test_dagster_services_get_every_connection_setting(compose: dict) -> None:
    for name in ("dagster-webserver", "dagster-daemon"):
        env = compose["services"][name]["environment"]
        for key in (
            "TXP_KAFKA_BOOTSTRAP",
            "TXP_SCHEMA_REGISTRY_URL",
            "TXP_POSTGRES_DSN",
            "TXP_SPARK_MASTER",
            "TXP_PROMETHEUS_URL",
            "TXP_ALERTMANAGER_URL",
            "TXP_PUSHGATEWAY_URL",
        ):  # noqa: E501
            assert env[key], f"{name}: {key}"
        assert env["TXP_KAFKA_BOOTSTRAP"].count(":9092") == 3 and env["TXP_TOPIC_REPLICATION"] == "3"
    assert (INFRA / "compose" / "Dockerfile.dagster").exists()


def test_no_secret_in_the_files_and_the_same_roles_as_the_laptop(compose: dict) -> None:
    def walk(node: object) -> list[tuple[str, str]]:
        if isinstance(node, dict):
            return [kv for k, v in node.items() for kv in ([(k, v)] if isinstance(v, str) else walk(v))]
        if isinstance(node, list):
            return [kv for item in node for kv in walk(item)]
        return []

    for key, value in walk(compose):
        if "PASSWORD" in key:
            assert value.startswith("${"), f"{key} must come from compose.env"
        assert not re.search(r"://[^:/@]+:[^$@/]+@", value), f"{key} embeds a literal password"
    init = (INFRA / "compose" / "postgres-init.sh").read_text()
    for role in (OWNER_ROLE, PIPELINE_ROLE, ANALYST_ROLE, DAGSTER_ROLE, REGISTRY_ROLE):
        assert f"CREATE ROLE {role} LOGIN" in init
    assert f"CREATE DATABASE txp OWNER {OWNER_ROLE};" in init


def test_the_owner_migrates_before_any_dagster_service_starts(compose: dict) -> None:
    services = compose["services"]
    migrate = services["migrate"]
    assert migrate["command"] == ["txp", "db", "migrate"]
    assert migrate["environment"]["TXP_OWNER_DSN"].startswith(f"postgresql://{OWNER_ROLE}:${{TXP_OWNER_PASSWORD")
    assert migrate["restart"] == "no"
    for name in ("dagster-webserver", "dagster-daemon"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    mounted = [
        v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", []) if v.startswith("./")
    ]
    assert mounted and all((INFRA / m).exists() for m in mounted)
    assert "compose.env" in Path(PROJECT_ROOT / ".gitignore").read_text()


def _host_ports(service: dict) -> set[int]:
    return {int(str(p).split(":")[1]) for p in service.get("ports", [])}


def test_monitoring_services_with_loopback_ports(compose: dict) -> None:
    services = compose["services"]
    expected = {
        "prometheus": 9090,
        "alertmanager": 9095,
        "pushgateway": 9091,
        "postgres-exporter": 9187,
        "grafana": 3001,
        "kafka-ui": 8080,
    }
    for name, port in expected.items():
        assert port in _host_ports(services[name]), name
    all_ports = [p for s in services.values() for p in _host_ports(s)]
    assert len(all_ports) == len(set(all_ports)), "two services publish the same host port"
    assert services["grafana"]["image"].startswith("grafana/grafana-oss:")
    assert services["kafka-ui"]["image"].startswith("ghcr.io/kafbat/kafka-ui:")
    assert services["kafka-ui"]["ports"] == ["127.0.0.1:8080:8080"]
    assert "--web.enable-lifecycle" in services["prometheus"]["command"]
    assert "--cluster.listen-address=" in services["alertmanager"]["command"]
    assert services["postgres-exporter"]["environment"]["DATA_SOURCE_USER"] == "txp_monitor"


def test_compose_mounts_the_repository_config_and_the_compose_targets(compose: dict) -> None:
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "../monitoring/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes
    assert "../monitoring/prometheus/rules:/etc/prometheus/rules:ro" in volumes
    assert "../monitoring/prometheus/targets-compose:/etc/prometheus/targets:ro" in volumes
    am = compose["services"]["alertmanager"]["volumes"]
    assert "../monitoring/alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro" in am
    grafana = compose["services"]["grafana"]
    assert "../monitoring/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "../monitoring/grafana/dashboards:/etc/grafana/dashboards:ro" in grafana["volumes"]
    assert grafana["environment"]["TXP_ANALYST_PASSWORD"].startswith("${TXP_ANALYST_PASSWORD")
    mounted = [
        v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", []) if v.startswith("../")
    ]
    assert mounted and all((INFRA / m).exists() for m in mounted)


def test_every_scrape_job_uses_file_sd_with_a_compose_target_file(compose: dict) -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    expected = {"prometheus", "alertmanager", "pushgateway", "postgres", "registry", "kafka", "txp", "spark"}
    assert expected <= set(jobs)
    assert jobs["pushgateway"].get("honor_labels") is True
    assert config["rule_files"] == ["rules/*.yml"]
    sd_blocks = [job["file_sd_configs"] for job in jobs.values()]
    sd_blocks += [am["file_sd_configs"] for am in config["alerting"]["alertmanagers"]]
    for block in sd_blocks:
        assert block and all(f.startswith("targets/") for sd in block for f in sd["files"])
    files = {f.removeprefix("targets/") for block in sd_blocks for sd in block for f in sd["files"]}
    for name in files - {"spark-*.json"}:
        groups = json.loads((PROMETHEUS / "targets-compose" / name).read_text())
        hosts = {t.rsplit(":", 1)[0] for g in groups for t in g["targets"]}
        assert hosts <= set(compose["services"]), f"{name} names a host that is not a Compose service"
    kafka = json.loads((PROMETHEUS / "targets-compose" / "kafka.json").read_text())
    nodes = {n: s for n, s in compose["services"].items() if "KAFKA_NODE_ID" in s.get("environment", {})}
    assert len(kafka) == len(nodes)
    for group in kafka:
        service = nodes[group["targets"][0].rsplit(":", 1)[0]]
        assert group["labels"]["node_id"] == service["environment"]["KAFKA_NODE_ID"]
        assert group["labels"]["role"] == service["environment"]["KAFKA_PROCESS_ROLES"]


def test_spark_executors_run_the_projects_image_with_the_drivers_python(compose: dict) -> None:
    """The sink's write tasks run Python on the executors: the stock Spark image has neither the package nor 3.11."""
    services = compose["services"]
    driver = services["dagster-daemon"]
    for name in ("spark-master", "spark-worker-1", "spark-worker-2"):
        service = services[name]
        assert (service["image"], service["build"]) == (driver["image"], driver["build"]), name
        assert service["command"][0] == "spark-class", name
    for name in ("spark-worker-1", "spark-worker-2"):
        assert services[name]["environment"]["PYSPARK_PYTHON"] == "python"
    dockerfile = (INFRA / "compose" / "Dockerfile.dagster").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    # the image's Dagster instance is the local stack's (queued runs, the sinks' one-slot pools, the sink's logs)
    assert "from tx_platform.stack import DAGSTER_YAML" in dockerfile
    assert "/opt/dagster/home/dagster.yaml" in dockerfile
    assert services["dagster-daemon"]["environment"]["DAGSTER_HOME"] == "/opt/dagster/home"
