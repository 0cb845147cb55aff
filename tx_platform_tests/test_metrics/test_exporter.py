"""The exporter against the real stack: exact figures after the real sink, lag, alerts, the stack service."""

import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spark_jobs.sink import SinkConfig, TransactionSink
from tx_platform.config import Settings
from tx_platform.kafka_admin import end_offsets
from tx_platform.metrics import MetricsExporterService, MetricsServer, build_server
from tx_platform.producer import build_pools, generate, open_producer, produce
from tx_platform.warehouse import connect
from tx_platform_tests.test_metrics._scrape import scrape, series, value
from tx_platform_tests.test_metrics.test_metrics_unit import ALERTS

pytestmark = pytest.mark.integration

SEED = 20260101


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _produce(settings: Settings, count: int, seed: int, bad_ratio: float = 0.0) -> None:
    producer, _ = open_producer(
        settings.kafka_bootstrap, settings.topic, settings.schema_registry_url, bad_ratio=bad_ratio, seed=seed
    )
    start = datetime.now(UTC) - timedelta(hours=1)
    report = produce(generate(count, seed, start, timedelta(hours=1), build_pools(seed)), producer)
    assert report.delivered == count


@pytest.fixture
def exporter(settings: Settings, tmp_path: Path) -> Iterator[MetricsServer]:
    server, collector = build_server(settings.model_copy(update={"alerts_log": tmp_path / "alerts.log"}), 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    collector.close()


def _table_counts(settings: Settings) -> dict[str, object]:
    conn = connect(settings.dsn())
    try:
        with conn.cursor() as cur:
            t = settings.topic
            cur.execute("SELECT count(*) FROM transactions WHERE kafka_topic = %s", (t,))
            (rows,) = cur.fetchone()
            cur.execute("SELECT error_code, count(*) FROM quarantine WHERE kafka_topic = %s GROUP BY 1", (t,))
            codes = dict(cur.fetchall())
            cur.execute("SELECT count(*) FROM quarantine WHERE kafka_topic = %s AND dlq_offset IS NOT NULL", (t,))
            (dead,) = cur.fetchone()
            cur.execute("SELECT count(*), sum(inserted), sum(quarantined) FROM sink_batches WHERE topic = %s", (t,))
            batches, inserted, quarantined = cur.fetchone()
    finally:
        conn.close()
    return {"rows": rows, "codes": codes, "dead": dead, "batches": batches, "inserted": inserted,
            "quarantined": quarantined}  # fmt: skip


def test_exporter_figures_equal_the_warehouse_after_the_real_sink(
    settings: Settings, spark, create_topic: Callable[..., None], exporter: MetricsServer, tmp_path: Path
) -> None:
    create_topic(settings.topic)
    count = 600
    _produce(settings, count, SEED, bad_ratio=0.05)

    before = scrape(f"{exporter.url}/metrics")
    assert value(before, "txp_exporter_up", source="kafka") == 1
    assert value(before, "txp_exporter_up", source="postgres") == 1
    ends = end_offsets(settings.kafka_bootstrap, settings.topic)
    assert sum(ends.values()) == count
    lag = {int(dict(k)["partition"]): v for k, v in series(before, "txp_sink_lag_records").items()}
    assert lag == {p: float(e) for p, e in ends.items()}  # nothing committed yet: lag is the end offset

    stats = TransactionSink(spark, SinkConfig.from_settings(settings)).run_available_now()
    assert stats.inserted + stats.quarantined == count

    after = scrape(f"{exporter.url}/metrics")
    db = _table_counts(settings)
    pipe = {"pipeline": "transactions"}
    lag = {int(dict(k)["partition"]): v for k, v in series(after, "txp_sink_lag_records").items()}
    assert lag == dict.fromkeys(range(3), 0.0)
    assert {dict(k)["topic"] for k in series(after, "txp_sink_lag_records")} == {settings.topic}
    assert value(after, "txp_sink_rows_total", outcome="inserted", **pipe) == db["rows"] == stats.inserted
    assert value(after, "txp_sink_rows_total", outcome="quarantined", **pipe) == sum(db["codes"].values())
    assert value(after, "txp_sink_rows_total", outcome="skipped", **pipe) == 0
    assert db["codes"], "the producer injected bad records"
    codes = {dict(k)["error_code"]: v for k, v in series(after, "txp_sink_quarantined_total").items()}
    assert {c: v for c, v in codes.items() if v} == {c: float(n) for c, n in db["codes"].items()}
    assert value(after, "txp_sink_dead_lettered_total", **pipe) == db["dead"] == stats.dead_lettered
    assert value(after, "txp_sink_batches_total", **pipe) == db["batches"] == stats.batches
    assert value(after, "txp_e2e_latency_seconds_count", **pipe) == db["rows"]
    assert value(after, "txp_kafka_to_commit_latency_seconds_count", **pipe) == db["rows"]
    assert value(after, "txp_sink_commit_duration_seconds_count", **pipe) == db["batches"]
    # event times spread over the last hour: every record took more than 0.1 s and less than 1 h + a bit
    assert value(after, "txp_e2e_latency_seconds_bucket", le="0.1", **pipe) == 0
    assert value(after, "txp_e2e_latency_seconds_bucket", le="900.0", **pipe) < db["rows"]
    assert abs(value(after, "txp_sink_last_commit_timestamp_seconds", **pipe) - time.time()) < 300

    more = 250
    _produce(settings, more, SEED + 1)
    later = scrape(f"{exporter.url}/metrics")
    new_ends = end_offsets(settings.kafka_bootstrap, settings.topic)
    lag = {int(dict(k)["partition"]): v for k, v in series(later, "txp_sink_lag_records").items()}
    assert lag == {p: float(new_ends[p] - ends[p]) for p in range(3)}
    assert sum(lag.values()) == more

    assert _post_alerts(f"{exporter.url}/alerts") == 200
    logged = [json.loads(line) for line in (tmp_path / "alerts.log").read_text().splitlines()]
    assert [(a["status"], a["alertname"]) for a in logged] == [
        ("firing", "SinkLagHigh"),
        ("resolved", "DeadLetterRatioHigh"),
    ]


def _post_alerts(url: str) -> int:
    request = urllib.request.Request(url, json.dumps(ALERTS).encode(), {"Content-Type": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
        return int(response.status)


def test_the_stack_service_starts_serves_and_stops_gracefully(stack_env: dict[str, str], tmp_path: Path) -> None:
    port = _free_port()
    env = {**stack_env, "TXP_ALERTS_LOG": str(tmp_path / "alerts.log")}
    service = MetricsExporterService(port, tmp_path, tmp_path / "logs" / "metrics-exporter.log", env)
    service.start(timeout=60)
    try:
        assert service.status().running and service.status().ports == (port,)
        samples = scrape(f"{service.url}/metrics")
        assert value(samples, "txp_exporter_up", source="postgres") == 1
        assert value(samples, "txp_exporter_up", source="kafka") == 1
        assert _post_alerts(f"{service.url}/alerts") == 200
        assert len((tmp_path / "alerts.log").read_text().splitlines()) == 2
        service.start()  # idempotent: already running
    finally:
        assert service.stop()
    assert not service.status().running
    log = service.log_file.read_text()
    assert "SIGTERM received" in log and "metrics exporter stopped" in log
    assert "alert FIRING SinkLagHigh" in log
    assert os.environ.get("TXP_ALERTS_LOG") is None  # the variable went to the child only
