"""Monitoring of the local stack: Prometheus, Alertmanager, Pushgateway, postgres_exporter.

Integration tests run on the session's test stack (real processes); unit tests cover the target
files, the rendered Alertmanager config and the state of a service whose binary is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tx_platform.config import load_settings
from tx_platform.errors import StackError
from tx_platform.pipelines import PIPELINES
from tx_platform.stack import LocalStack, StackLayout
from tx_platform.stack._kafka import KafkaNode
from tx_platform.stack._monitoring import (
    ALERTMANAGER_CONFIG,
    PROMETHEUS_CONFIG,
    PROMETHEUS_RULES,
    local_targets,
    prometheus_service,
    render_alertmanager_config,
    write_prometheus_files,
)
from tx_platform_tests.conftest import assert_eventually, listening_sockets, process_group, socket_inodes

MONITORING = ("prometheus", "alertmanager", "pushgateway", "postgres-exporter")
LOOPBACK = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        body = response.read()
    return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except OSError:
        return False


# -- integration: the session's stack -----------------------------------------------------------
@pytest.fixture(scope="module")
def prometheus_url(stack_env: dict[str, str]) -> str:
    return stack_env["TXP_PROMETHEUS_URL"]


@pytest.fixture(scope="module")
def alertmanager_url(stack_env: dict[str, str]) -> str:
    return stack_env["TXP_ALERTMANAGER_URL"]


def _require_monitoring(test_stack: LocalStack) -> None:
    missing = [s.package for s in test_stack.monitoring() if s.binary is None]
    if missing:
        pytest.skip(f"not installed: {' '.join(missing)} (infra/system-deps.sh installs them)")


@pytest.mark.integration
def test_monitoring_services_run_and_prometheus_is_ready(test_stack: LocalStack, prometheus_url: str) -> None:
    _require_monitoring(test_stack)
    rows = {r.name: r for r in test_stack.status()}
    for name in MONITORING:
        assert rows[name].running and rows[name].pid and rows[name].not_installed is None, name
    assert _ok(f"{prometheus_url}/-/ready")
    # the repository's file, through the state directory's link (relative paths resolve there)
    config = test_stack.state_dir / "prometheus" / "prometheus.yml"
    assert config.resolve() == PROMETHEUS_CONFIG.resolve()
    flags = _get(f"{prometheus_url}/api/v1/status/flags")["data"]
    assert flags["config.file"] == str(config)
    assert flags["web.enable-lifecycle"] == "true"
    assert flags["storage.tsdb.path"].startswith(str(test_stack.state_dir))


@pytest.mark.integration
def test_core_targets_are_up(test_stack: LocalStack, prometheus_url: str) -> None:
    _require_monitoring(test_stack)
    wanted = {"prometheus", "alertmanager", "pushgateway", "postgres"}

    def up_jobs() -> set[str] | None:
        active = _get(f"{prometheus_url}/api/v1/targets?state=active")["data"]["activeTargets"]
        up = {t["labels"]["job"] for t in active if t["health"] == "up"}
        return up if wanted <= up else None

    up = assert_eventually(up_jobs, timeout=60, what=f"Prometheus targets {sorted(wanted)} up")
    assert wanted <= up
    active = _get(f"{prometheus_url}/api/v1/targets?state=active")["data"]["activeTargets"]
    kafka = [t for t in active if t["labels"]["job"] == "kafka"]
    # one target per Kafka node (its JMX agent), labelled with the node's id and roles
    assert sorted(t["labels"]["node_id"] for t in kafka) == sorted(str(n.node_id) for n in test_stack.kafka_nodes())
    assert all(t["labels"]["role"] for t in kafka)
    assert any(t["labels"]["job"] == "txp" for t in active)
    # Alertmanager is known as the alerting target through file_sd too
    alertmanagers = assert_eventually(
        lambda: _get(f"{prometheus_url}/api/v1/alertmanagers")["data"]["activeAlertmanagers"],
        timeout=60,
        what="Prometheus to discover its Alertmanager",
    )
    assert [a["url"] for a in alertmanagers] == [
        f"http://127.0.0.1:{test_stack.layout.alertmanager_port}/api/v2/alerts"
    ]


@pytest.mark.integration
def test_pg_up_through_the_prometheus_api(test_stack: LocalStack, prometheus_url: str) -> None:
    _require_monitoring(test_stack)
    query = urllib.parse.urlencode({"query": 'pg_up{job="postgres"}'})

    def pg_up() -> list[dict[str, Any]]:
        return [r for r in _get(f"{prometheus_url}/api/v1/query?{query}")["data"]["result"] if r["value"][1] == "1"]

    result = assert_eventually(pg_up, timeout=60, what="pg_up == 1 in Prometheus")
    assert result[0]["metric"]["instance"] == f"127.0.0.1:{test_stack.layout.postgres_exporter_port}"


@pytest.mark.integration
def test_alertmanager_is_ready_and_accepts_a_test_alert(test_stack: LocalStack, alertmanager_url: str) -> None:
    _require_monitoring(test_stack)
    assert _ok(f"{alertmanager_url}/-/ready")
    name = f"TxpTestAlert{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    alert = [
        {
            "labels": {"alertname": name, "severity": "info", "job": "tx_platform_tests"},
            "annotations": {"summary": "sent by test_monitoring"},
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=5)).isoformat(),
        }
    ]
    request = urllib.request.Request(  # noqa: S310 - loopback
        f"{alertmanager_url}/api/v2/alerts",
        data=json.dumps(alert).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        assert response.status == 200
    query = urllib.parse.urlencode({"filter": f'alertname="{name}"'})
    found = assert_eventually(
        lambda: _get(f"{alertmanager_url}/api/v2/alerts?{query}"), timeout=30, what=f"alert {name} in Alertmanager"
    )
    assert found[0]["labels"]["alertname"] == name
    assert [r["name"] for r in found[0]["receivers"]] == ["local-log"]
    # the receiver is the pipeline exporter's webhook on this stack's metrics port
    rendered = (test_stack.state_dir / "alertmanager" / "alertmanager.yml").read_text()
    assert f"http://127.0.0.1:{test_stack.layout.metrics_port}/alerts" in rendered


@pytest.mark.integration
def test_every_listening_port_of_the_stack_is_on_loopback(test_stack: LocalStack) -> None:
    _require_monitoring(test_stack)
    listening = listening_sockets()
    by_service: dict[str, set[tuple[str, int]]] = {}
    for row in test_stack.status():
        assert row.pid, f"{row.name} is not running"
        inodes = {i for pid, _argv in process_group(row.pid) for i in socket_inodes(pid)}
        by_service[row.name] = {listening[i] for i in inodes if i in listening}
    for name, sockets in by_service.items():
        assert sockets, f"{name} listens nowhere"
        assert {host for host, _ in sockets} == {LOOPBACK}, f"{name} listens beyond 127.0.0.1: {sockets}"
    layout = test_stack.layout
    ports = {name: {port for _, port in sockets} for name, sockets in by_service.items()}
    assert ports["prometheus"] == {layout.prometheus_port}
    assert ports["alertmanager"] == {layout.alertmanager_port}  # no cluster gossip port
    assert ports["pushgateway"] == {layout.pushgateway_port}
    assert ports["postgres-exporter"] == {layout.postgres_exporter_port}


# -- unit ---------------------------------------------------------------------------------------
def _nodes(tmp_path: Path) -> list[KafkaNode]:
    return [
        KafkaNode(1, tmp_path / "k1", tmp_path / "k1.log", None, 9093, 9404),
        KafkaNode(2, tmp_path / "k2", tmp_path / "k2.log", 9092, None, 9405),
        KafkaNode(3, tmp_path / "k3", tmp_path / "k3.log", 9192, None, None),  # no agent: no target
    ]


def _targets(tmp_path: Path) -> dict[str, list[dict[str, object]]]:
    return local_targets(
        prometheus_port=19090,
        alertmanager_port=19095,
        pushgateway_port=19091,
        postgres_exporter_port=19187,
        registry_port=18081,
        metrics_port=19188,
        kafka_nodes=_nodes(tmp_path),
    )


@pytest.mark.unit
def test_local_targets_are_loopback_with_kafka_labels(tmp_path: Path) -> None:
    targets = _targets(tmp_path)
    assert set(targets) == {"prometheus", "alertmanager", "pushgateway", "postgres", "registry", "kafka", "txp"}
    assert targets["prometheus"] == [{"targets": ["127.0.0.1:19090"]}]
    assert targets["postgres"] == [{"targets": ["127.0.0.1:19187"]}]
    assert targets["txp"] == [{"targets": ["127.0.0.1:19188"]}]
    assert targets["kafka"] == [
        {"targets": ["127.0.0.1:9404"], "labels": {"node_id": "1", "role": "controller"}},
        {"targets": ["127.0.0.1:9405"], "labels": {"node_id": "2", "role": "broker"}},
    ]


@pytest.mark.unit
def test_launcher_targets_follow_the_layout_one_per_kafka_node(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "state", tmp_path / "jars", StackLayout(brokers=3, controllers=3, jmx_port=29404))
    kafka = [n for n in stack.kafka_nodes() if n.metrics_port]
    assert [n.metrics_port for n in kafka] == [29404 + i for i in range(6)]
    groups = local_targets(
        prometheus_port=1, alertmanager_port=2, pushgateway_port=3, postgres_exporter_port=4, registry_port=5,
        metrics_port=6, kafka_nodes=stack.kafka_nodes(),
    )["kafka"]  # fmt: skip
    assert [g["labels"] for g in groups] == [
        *({"node_id": str(i), "role": "controller"} for i in (1, 2, 3)),
        *({"node_id": str(i), "role": "broker"} for i in (4, 5, 6)),
    ]


@pytest.mark.unit
def test_prometheus_files_link_the_repository_and_keep_driver_targets(tmp_path: Path) -> None:
    root = tmp_path / "prometheus"
    config = write_prometheus_files(root, _targets(tmp_path))
    assert config == root / "prometheus.yml" and config.is_symlink()
    assert config.resolve() == PROMETHEUS_CONFIG.resolve()
    assert (root / "rules").resolve() == PROMETHEUS_RULES.resolve()
    assert json.loads((root / "targets" / "kafka.json").read_text())[0]["labels"]["node_id"] == "1"
    assert json.loads((root / "targets" / "spark.json").read_text()) == []
    # a driver that registered keeps its file; a second write is the same and leaves no temp files
    (root / "targets" / "spark.json").write_text('[{"targets": ["127.0.0.1:4040"]}]')
    write_prometheus_files(root, _targets(tmp_path))
    assert "4040" in (root / "targets" / "spark.json").read_text()
    assert sorted(p.name for p in (root / "targets").iterdir()) == sorted(
        [*(f"{n}.json" for n in _targets(tmp_path)), "spark.json"]
    )


@pytest.mark.unit
@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_accepts_the_local_config_with_every_target_file(tmp_path: Path) -> None:
    config = write_prometheus_files(tmp_path / "prometheus", _targets(tmp_path))
    result = subprocess.run(  # noqa: S603
        [shutil.which("promtool") or "promtool", "check", "config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # every file_sd file the config names exists locally (spark-*.json matches none until a driver runs)
    warnings = [line for line in output.splitlines() if "WARNING" in line and "spark-*.json" not in line]
    assert warnings == []


@pytest.mark.unit
def test_alertmanager_config_gets_the_stack_metrics_port() -> None:
    template = ALERTMANAGER_CONFIG.read_text()
    rendered = render_alertmanager_config(template, 29188)
    assert "http://127.0.0.1:29188/alerts" in rendered
    assert rendered.replace("29188", "9188") == template.replace("29188", "9188")
    with pytest.raises(StackError, match="webhook"):
        render_alertmanager_config("route: {receiver: x}\n", 29188)


@pytest.mark.unit
def test_a_missing_binary_is_not_installed_not_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    stack = LocalStack(tmp_path / "state", tmp_path / "jars")
    rows = {r.name: r for r in stack.status()}
    assert {n: rows[n].not_installed for n in MONITORING} == {
        "prometheus": "prometheus",
        "alertmanager": "prometheus-alertmanager",
        "pushgateway": "prometheus-pushgateway",
        "postgres-exporter": "prometheus-postgres-exporter",
    }
    assert all(not rows[n].running for n in MONITORING)
    assert rows["postgres"].not_installed is None  # a required service is never "not installed"
    assert stack.prometheus.start() is False  # nothing to start, and no error
    # the real command, in a process of its own (rich sizes its table from COLUMNS when it starts)
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", "from tx_platform.cli import cli; cli()", "stack", "status"],
        env={**os.environ, "TXP_STATE_DIR": str(stack.state_dir), "PATH": str(empty), "COLUMNS": "250"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert "not installed — apt-get install prometheus-alertmanager" in result.stdout
    assert "not installed — apt-get install prometheus-postgres-exporter" in result.stdout
    assert result.returncode == 1  # Kafka and PostgreSQL are down: those should run


@pytest.mark.unit
def test_an_installed_binary_is_found_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "alertmanager"  # upstream's name, from a release tarball
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    stack = LocalStack(tmp_path / "state", tmp_path / "jars")
    assert stack.alertmanager.binary == str(fake)
    rows = {r.name: r for r in stack.status()}
    assert rows["alertmanager"].not_installed is None and not rows["alertmanager"].running
    assert rows["prometheus"].not_installed == "prometheus"


@pytest.mark.unit
def test_services_bind_loopback_and_keep_state_under_the_state_dir(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "state", load_settings().jars_dir)
    for service in stack.monitoring():
        assert service.listen_arg == f"--web.listen-address=127.0.0.1:{service.port}"
        assert service.root.is_relative_to(stack.state_dir) and service.log_file.is_relative_to(stack.state_dir)
        assert service.process.pid_file.is_relative_to(stack.state_dir)
        for arg in service.args:
            if arg.startswith(("--storage.path", "--storage.tsdb.path", "--persistence.file")):
                assert Path(arg.split("=", 1)[1]).is_relative_to(stack.state_dir), arg
    assert "--cluster.listen-address=" in stack.alertmanager.args
    assert "--storage.tsdb.retention.time=2d" in stack.prometheus.args
    assert "--web.enable-lifecycle" in stack.prometheus.args
    exporter = stack.postgres_exporter
    assert exporter.env["DATA_SOURCE_NAME"].startswith("postgresql://txp_monitor:")
    assert not any("txp_monitor" in a for a in exporter.args)  # the password never reaches ps
    env = stack.env()
    assert env["TXP_ALERTMANAGER_URL"] == "http://127.0.0.1:9095"
    assert env["TXP_PUSHGATEWAY_URL"] == "http://127.0.0.1:9091"
    # a port that is a prefix of another never matches its process (pid reuse guard)
    assert prometheus_service(tmp_path, 1909, tmp_path / "l", tmp_path / "c").process.marker.endswith("1909 ")


@pytest.mark.unit
def test_status_summary_says_why_when_prometheus_does_not_answer() -> None:
    import socket

    from tx_platform.stack._monitoring import monitoring_summary

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        summary = monitoring_summary(url, timeout=1)
    assert summary.error is not None and summary.error.startswith(f"Prometheus did not answer at {url} (")
    assert (summary.targets, summary.pipelines) == ((), ())


@pytest.mark.integration
def test_status_shows_targets_lag_and_p99(test_stack: LocalStack, prometheus_url: str, create_topic) -> None:  # noqa: ANN001
    """`txp stack status` reads its monitoring lines from Prometheus: targets, lag per pipeline, e2e p99."""
    from tx_platform.stack._monitoring import monitoring_summary

    # every shipped pipeline's own topic: the exporter reports the lag of each, under its pipeline
    for spec in PIPELINES.values():
        create_topic(spec.topic)

    def every_pipeline():  # noqa: ANN202
        summary = monitoring_summary(prometheus_url)
        return {p.pipeline for p in summary.pipelines} == set(PIPELINES) and summary

    summary = assert_eventually(
        every_pipeline,
        timeout=60,
        what=f"the pipelines {sorted(PIPELINES)} in Prometheus",
    )
    jobs = {t.job: t.health for t in summary.targets}
    assert {"prometheus", "postgres", "kafka", "registry", "txp"} <= set(jobs)
    assert all(jobs[j] == "up" for j in ("prometheus", "postgres", "kafka", "registry", "txp")), jobs
    for pipeline in summary.pipelines:
        assert pipeline.lag is not None and pipeline.lag >= 0, pipeline
    result = subprocess.run(  # noqa: S603
        [str(Path(sys.executable).parent / "txp"), "stack", "status", "--state-dir", str(test_stack.state_dir)],
        capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for text in ("scrape target", "registry", "txp", "e2e p99, last 5 min", "transactions", "crypto_trades"):
        assert text in result.stdout, text
