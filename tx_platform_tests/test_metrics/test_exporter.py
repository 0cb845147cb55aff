"""The exporter against the real stack: exact figures of both pipelines after the real sink, lag, alerts."""

import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spark_jobs.sink import PipelineSink
from tx_platform.config import Settings
from tx_platform.kafka_admin import end_offsets
from tx_platform.metrics import MetricsExporterService, MetricsServer, build_server
from tx_platform.pipelines import CRYPTO_TRADES, PipelineSpec
from tx_platform.warehouse import connect, ensure_schema
from tx_platform_tests.conftest import fetch_all, produce_records
from tx_platform_tests.test_metrics._scrape import Samples, scrape, series, value
from tx_platform_tests.test_metrics.test_metrics_unit import ALERTS

pytestmark = pytest.mark.integration

SEED = 20260101


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def crypto(unique: str) -> PipelineSpec:
    """The crypto_trades pipeline on a topic of this test's own."""
    return CRYPTO_TRADES.with_topic(f"crypto_{unique}")


@pytest.fixture
def exporter(settings: Settings, spec: PipelineSpec, crypto: PipelineSpec, tmp_path: Path) -> Iterator[MetricsServer]:
    """The exporter of a deployment whose two pipelines read this test's topics."""
    server, collector = build_server(
        settings.model_copy(update={"alerts_log": tmp_path / "alerts.log"}), 0, pipelines=[spec, crypto]
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    collector.close()


def _table_counts(settings: Settings, spec: PipelineSpec) -> dict[str, object]:
    conn = connect(settings.dsn())
    try:
        with conn.cursor() as cur:
            t = spec.topic
            cur.execute(f"SELECT count(*) FROM {spec.table} WHERE kafka_topic = %s", (t,))  # noqa: S608
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


def _lag(samples: Samples, pipeline: str) -> dict[int, float]:
    found = {k: v for k, v in series(samples, "txp_sink_lag_records").items() if dict(k)["pipeline"] == pipeline}
    return {int(dict(k)["partition"]): v for k, v in found.items()}


def _newest_prices(settings: Settings, crypto: PipelineSpec) -> dict[tuple[str, str], float]:
    rows = fetch_all(
        settings.dsn(),
        "SELECT DISTINCT ON (symbol, exchange) symbol, exchange, price FROM crypto_trades"
        " WHERE kafka_topic = %s ORDER BY symbol, exchange, event_time DESC, trade_id DESC",
        crypto.topic,
    )
    return {(s, e): float(p) for s, e, p in rows}


def test_exporter_figures_equal_the_warehouse_after_the_real_sink(
    settings: Settings,
    spec: PipelineSpec,
    crypto: PipelineSpec,
    spark,  # noqa: ANN001
    create_topic: Callable[..., None],
    exporter: MetricsServer,
    tmp_path: Path,
) -> None:
    ensure_schema(settings.dsn(), [spec, crypto])
    counts = {spec.name: 600, crypto.name: 400}
    producers = {}
    for p in (spec, crypto):
        create_topic(p.topic)
        producers[p.name] = produce_records(p, settings, counts[p.name], SEED, hours_ago=1.0, bad_ratio=0.05)

    before = scrape(f"{exporter.url}/metrics")
    assert value(before, "txp_exporter_up", source="kafka") == 1
    assert value(before, "txp_exporter_up", source="postgres") == 1
    ends = {}
    for p in (spec, crypto):
        ends[p.name] = end_offsets(settings.kafka_bootstrap, p.topic)
        assert sum(ends[p.name].values()) == counts[p.name]
        # nothing committed yet: lag is the end offset
        assert _lag(before, p.name) == {partition: float(e) for partition, e in ends[p.name].items()}
    assert {dict(k)["topic"] for k in series(before, "txp_sink_lag_records")} == {spec.topic, crypto.topic}
    # the market is empty, and says so with zeros
    assert sum(series(before, "txp_crypto_trades_total").values()) == 0

    stats = {p.name: PipelineSink(spark, p, settings).run_available_now() for p in (spec, crypto)}
    for p in (spec, crypto):
        assert stats[p.name].inserted + stats[p.name].quarantined == counts[p.name]

    after = scrape(f"{exporter.url}/metrics")
    for p in (spec, crypto):
        db, run = _table_counts(settings, p), stats[p.name]
        pipe = {"pipeline": p.name}
        assert _lag(after, p.name) == dict.fromkeys(range(3), 0.0)
        assert value(after, "txp_sink_rows_total", outcome="inserted", **pipe) == db["rows"] == run.inserted
        assert value(after, "txp_sink_rows_total", outcome="quarantined", **pipe) == sum(db["codes"].values())
        assert value(after, "txp_sink_rows_total", outcome="skipped", **pipe) == 0
        assert db["codes"], f"the producer injected bad {p.name} records"
        codes = {
            dict(k)["error_code"]: v
            for k, v in series(after, "txp_sink_quarantined_total").items()
            if dict(k)["pipeline"] == p.name
        }
        assert set(codes) == set(p.error_codes) | set(db["codes"])  # the pipeline's own codes, every one from 0
        assert {c: v for c, v in codes.items() if v} == {c: float(n) for c, n in db["codes"].items()}
        assert value(after, "txp_sink_dead_lettered_total", **pipe) == db["dead"] == run.dead_lettered
        # one commit per micro-batch and partition slice (3 partitions, one batch each)
        assert value(after, "txp_sink_batches_total", **pipe) == db["batches"] == run.slices == 3 * run.batches
        assert value(after, "txp_e2e_latency_seconds_count", **pipe) == db["rows"]
        assert value(after, "txp_kafka_to_commit_latency_seconds_count", **pipe) == db["rows"]
        assert value(after, "txp_sink_commit_duration_seconds_count", **pipe) == db["batches"]
        # event times spread over the last hour: every record took more than 0.1 s and less than 1 h + a bit
        assert value(after, "txp_e2e_latency_seconds_bucket", le="0.1", **pipe) == 0
        assert value(after, "txp_e2e_latency_seconds_bucket", le="900.0", **pipe) < db["rows"]
        assert abs(value(after, "txp_sink_last_commit_timestamp_seconds", **pipe) - time.time()) < 300
    assert "UNKNOWN_SYMBOL" in {dict(k)["error_code"] for k in series(after, "txp_sink_quarantined_total")}

    # the market of the crypto topic: what the producer sent as good trades, and the newest prices
    trades = series(after, "txp_crypto_trades_total")
    assert {dict(k)["pipeline"] for k in trades} == {"crypto_trades"}
    assert sum(trades.values()) == stats[crypto.name].inserted
    volume = sum(series(after, "txp_crypto_base_volume_total").values())
    assert volume == pytest.approx(float(producers[crypto.name].good_totals["quantity"]), rel=1e-12)
    prices = {(dict(k)["symbol"], dict(k)["exchange"]): v for k, v in series(after, "txp_crypto_last_price").items()}
    assert prices and prices == _newest_prices(settings, crypto)

    more = 250
    produce_records(spec, settings, more, SEED + 1)
    later = scrape(f"{exporter.url}/metrics")
    new_ends = end_offsets(settings.kafka_bootstrap, spec.topic)
    lag = _lag(later, spec.name)
    assert lag == {p: float(new_ends[p] - ends[spec.name][p]) for p in range(3)}
    assert sum(lag.values()) == more
    assert _lag(later, crypto.name) == dict.fromkeys(range(3), 0.0)

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
