import json
import logging
import math
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from tx_platform.config import Settings
from tx_platform.errors import ConfigError
from tx_platform.metrics import (
    ALL_METRICS,
    COMMIT_BUCKETS,
    LATENCY_BUCKETS,
    AlertLog,
    MetricsServer,
    PipelineCollector,
    SinkFigures,
    Thresholds,
    bucket_for,
    cumulative_buckets,
    derived_families,
    sink_families,
)
from tx_platform.metrics._exporter import Histogram
from tx_platform.pipelines import CRYPTO_TRADES, PIPELINES, TRANSACTIONS
from tx_platform.pipelines.crypto_trades._metrics import MARKET_METRICS
from tx_platform_tests.test_metrics._scrape import parse, scrape, series, value

pytestmark = pytest.mark.unit

P = TRANSACTIONS.with_topic("tx_topic")
C = CRYPTO_TRADES.with_topic("crypto_topic")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("metrics", [ALL_METRICS, (*ALL_METRICS, *MARKET_METRICS)], ids=["platform", "all"])
def test_metric_names_are_unique_and_counters_end_in_total(metrics: tuple) -> None:
    names = [m.name for m in metrics]
    assert len(names) == len(set(names))
    for m in metrics:
        assert m.name.startswith("txp_")
        assert m.name.endswith("_total") == (m.kind == "counter"), m.name
        if m.name.endswith("_seconds"):
            assert "seconds" in m.help.lower() or "Unix time" in m.help, m.name
        if m.kind == "histogram":
            assert m.buckets[-1] == math.inf and list(m.buckets) == sorted(m.buckets)


def test_latency_buckets_are_the_agreed_ones() -> None:
    assert LATENCY_BUCKETS == (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, math.inf)


@pytest.mark.parametrize(
    ("seconds", "le"),
    [(-3.0, 0.1), (0.0, 0.1), (0.1, 0.1), (0.10001, 0.25), (4.99, 5), (5, 5), (3600, 3600), (3600.5, math.inf)],
)
def test_an_observation_falls_in_the_smallest_bucket_at_or_above_it(seconds: float, le: float) -> None:
    assert bucket_for(seconds) == le


def test_commit_buckets_have_their_own_bounds() -> None:
    assert bucket_for(0.003, COMMIT_BUCKETS) == 0.01
    assert bucket_for(0.2, COMMIT_BUCKETS) == 0.25


def test_cumulative_buckets_add_up_and_fold_unknown_bounds_in() -> None:
    # 7.0 is not a bound any more (buckets changed since it was stored): it counts from 10 up
    counts = {0.1: 2, 5.0: 3, 7.0: 4, math.inf: 1}
    assert cumulative_buckets(counts) == [
        ("0.1", 2.0), ("0.25", 2.0), ("0.5", 2.0), ("1.0", 2.0), ("2.0", 2.0), ("5.0", 5.0), ("10.0", 9.0),
        ("30.0", 9.0), ("60.0", 9.0), ("300.0", 9.0), ("900.0", 9.0), ("3600.0", 9.0), ("+Inf", 10.0),
    ]  # fmt: skip


class _Fixed:
    """A collector over fixed figures, as the exporter would read them."""

    def __init__(self, figures: dict[str, SinkFigures] | None, ends: dict[str, dict[int, int] | None] | None) -> None:
        self.figures, self.ends = figures, ends

    def collect(self) -> Iterator:  # noqa: ANN401
        yield from sink_families([P], self.figures, self.ends, Thresholds(7.5, 0.02))


def _expose(figures: dict[str, SinkFigures] | None, ends: dict[str, dict[int, int] | None] | None) -> dict:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(figures, ends))
    return parse(generate_latest(registry).decode())


FIGURES = {
    "tx_topic": SinkFigures(
        committed={0: 10, 1: 7, 2: 12},
        outcomes={"inserted": 25, "quarantined": 3, "skipped": 4},
        batches=2,
        last_commit=1_767_225_600.25,
        quarantined={"NULL_VALUE": 2, "SOMETHING_NEW": 1},
        dead_lettered=2,
        latency={
            "event_time": Histogram({0.1: 5, 60.0: 15, math.inf: 5}, 99_000.5),
            "kafka_timestamp": Histogram({0.5: 25}, 6.25),
            "commit": Histogram({0.05: 2}, 0.06),
        },
    )
}


def test_exposition_of_fixed_rows() -> None:
    samples = _expose(FIGURES, {"tx_topic": {0: 10, 1: 9, 2: 11}})
    lag = {dict(k)["partition"]: v for k, v in series(samples, "txp_sink_lag_records").items()}
    assert lag == {"0": 0, "1": 2, "2": -1}  # negative: Postgres is past the topic's end, reported as it is
    assert all(dict(k)["topic"] == "tx_topic" for k in series(samples, "txp_sink_lag_records"))
    rows = {dict(k)["outcome"]: v for k, v in series(samples, "txp_sink_rows_total").items()}
    assert rows == {"inserted": 25, "quarantined": 3, "skipped": 4}
    codes = {dict(k)["error_code"]: v for k, v in series(samples, "txp_sink_quarantined_total").items()}
    assert codes == {**dict.fromkeys(TRANSACTIONS.error_codes, 0.0), "NULL_VALUE": 2, "SOMETHING_NEW": 1}
    assert value(samples, "txp_sink_dead_lettered_total", pipeline="transactions") == 2
    assert value(samples, "txp_sink_batches_total", pipeline="transactions") == 2
    assert value(samples, "txp_sink_last_commit_timestamp_seconds", pipeline="transactions") == 1_767_225_600.25
    assert value(samples, "txp_e2e_latency_seconds_bucket", pipeline="transactions", le="0.1") == 5
    assert value(samples, "txp_e2e_latency_seconds_bucket", pipeline="transactions", le="30.0") == 5
    assert value(samples, "txp_e2e_latency_seconds_bucket", pipeline="transactions", le="60.0") == 20
    assert value(samples, "txp_e2e_latency_seconds_bucket", pipeline="transactions", le="3600.0") == 20
    assert value(samples, "txp_e2e_latency_seconds_bucket", pipeline="transactions", le="+Inf") == 25
    assert value(samples, "txp_e2e_latency_seconds_count", pipeline="transactions") == 25
    assert value(samples, "txp_e2e_latency_seconds_sum", pipeline="transactions") == 99_000.5
    assert value(samples, "txp_kafka_to_commit_latency_seconds_count", pipeline="transactions") == 25
    assert value(samples, "txp_sink_commit_duration_seconds_bucket", pipeline="transactions", le="0.05") == 2
    assert value(samples, "txp_sink_commit_duration_seconds_count", pipeline="transactions") == 2
    assert value(samples, "txp_e2e_latency_slo_seconds", pipeline="transactions") == 7.5
    assert value(samples, "txp_dead_letter_ratio_threshold", pipeline="transactions") == 0.02


def test_a_topic_kafka_does_not_have_has_no_lag_and_a_new_pipeline_has_zero_histograms() -> None:
    samples = _expose({"tx_topic": SinkFigures()}, {"tx_topic": None})
    assert series(samples, "txp_sink_lag_records") == {}
    assert value(samples, "txp_e2e_latency_seconds_count", pipeline="transactions") == 0
    assert value(samples, "txp_sink_rows_total", pipeline="transactions", outcome="inserted") == 0
    assert ("txp_sink_last_commit_timestamp_seconds", frozenset({("pipeline", "transactions")})) not in samples


def test_without_postgres_only_the_configured_thresholds_remain() -> None:
    samples = _expose(None, {"tx_topic": {0: 3}})
    assert {name for name, _ in samples} == {"txp_e2e_latency_slo_seconds", "txp_dead_letter_ratio_threshold"}


def test_unreachable_sources_give_up_0_within_the_deadline(tmp_path: Path) -> None:
    closed = _free_port()  # nothing listens there
    collector = PipelineCollector(
        [P], f"postgresql://nobody@127.0.0.1:{closed}/none", f"127.0.0.1:{_free_port()}", timeout=3.0
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    for _ in range(2):  # the second scrape must not pile up on a read still hanging from the first
        started = time.monotonic()
        samples = parse(generate_latest(registry).decode())
        assert time.monotonic() - started < 4.5
        assert value(samples, "txp_exporter_up", source="kafka") == 0
        assert value(samples, "txp_exporter_up", source="postgres") == 0
        assert value(samples, "txp_e2e_latency_slo_seconds", pipeline="transactions") == 5.0
        assert 0 < value(samples, "txp_exporter_scrape_duration_seconds") < 4.5
    collector.close()


def test_each_pipeline_is_reported_under_its_own_label_from_its_own_topic() -> None:
    figures = {
        "tx_topic": SinkFigures(committed={0: 4}, outcomes={"inserted": 4}, batches=1),
        "crypto_topic": SinkFigures(
            committed={0: 9, 1: 2}, outcomes={"inserted": 6, "quarantined": 5}, batches=3,
            quarantined={"UNKNOWN_SYMBOL": 4, "NULL_VALUE": 1}, dead_lettered=5,
            latency={"event_time": Histogram({1.0: 6}, 3.0)},
        ),
    }  # fmt: skip
    ends = {"tx_topic": {0: 4}, "crypto_topic": {0: 10, 1: 2}}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collect(lambda: sink_families([P, C], figures, ends, Thresholds())))
    samples = parse(generate_latest(registry).decode())
    lag = {(dict(k)["pipeline"], dict(k)["topic"], dict(k)["partition"]): v
           for k, v in series(samples, "txp_sink_lag_records").items()}  # fmt: skip
    assert lag == {
        ("transactions", "tx_topic", "0"): 0,
        ("crypto_trades", "crypto_topic", "0"): 1,
        ("crypto_trades", "crypto_topic", "1"): 0,
    }
    assert value(samples, "txp_sink_rows_total", pipeline="transactions", outcome="inserted") == 4
    assert value(samples, "txp_sink_rows_total", pipeline="crypto_trades", outcome="inserted") == 6
    assert value(samples, "txp_sink_rows_total", pipeline="crypto_trades", outcome="quarantined") == 5
    assert value(samples, "txp_sink_batches_total", pipeline="crypto_trades") == 3
    assert value(samples, "txp_sink_dead_lettered_total", pipeline="crypto_trades") == 5
    assert value(samples, "txp_sink_dead_lettered_total", pipeline="transactions") == 0
    assert value(samples, "txp_e2e_latency_seconds_count", pipeline="crypto_trades") == 6
    assert value(samples, "txp_e2e_latency_seconds_count", pipeline="transactions") == 0
    # each pipeline's own error codes, every one from 0
    codes: dict[str, dict[str, float]] = {}
    for labels, v in series(samples, "txp_sink_quarantined_total").items():
        codes.setdefault(dict(labels)["pipeline"], {})[dict(labels)["error_code"]] = v
    assert codes["transactions"] == dict.fromkeys(TRANSACTIONS.error_codes, 0.0)
    assert codes["crypto_trades"] == {**dict.fromkeys(CRYPTO_TRADES.error_codes, 0.0), "UNKNOWN_SYMBOL": 4,
                                      "NULL_VALUE": 1}  # fmt: skip
    assert "UNKNOWN_SYMBOL" not in codes["transactions"] and "UNKNOWN_CURRENCY" not in codes["crypto_trades"]
    assert "DUPLICATE_TRADE_ID" in codes["crypto_trades"]


class _Collect:
    def __init__(self, families: Callable[[], list]) -> None:
        self.families = families

    def collect(self) -> Iterator:  # noqa: ANN401
        yield from self.families()


class _Connection:
    """What derived_families hands on: the functions below never use it beyond ``closed``."""

    closed = False


def _gauge(name: str, labels: list[str], val: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, "test", labels=["pipeline"])
    family.add_metric(labels, val)
    return family


def test_a_failing_pipeline_metric_function_is_logged_and_costs_only_its_own_families(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def good(spec, conn):  # noqa: ANN001, ANN202
        assert conn is connection
        yield _gauge("txp_test_figure", [spec.name], 7.0)

    def broken(spec, conn):  # noqa: ANN001, ANN202
        yield _gauge("txp_test_figure", [spec.name], 1.0)
        msg = 'relation "crypto_spread_1m" is locked\nDETAIL: more'
        raise RuntimeError(msg)

    connection = _Connection()
    pipelines = [
        replace(TRANSACTIONS.with_topic("a"), derived_metrics=None),
        replace(CRYPTO_TRADES.with_topic("b"), derived_metrics=broken),
        replace(CRYPTO_TRADES.with_topic("c"), name="crypto_copy", derived_metrics=good),
    ]
    with caplog.at_level(logging.WARNING, logger="tx_platform.metrics._exporter"):
        families = derived_families(pipelines, connection)
    assert [(f.name, [(s.labels, s.value) for s in f.samples]) for f in families] == [
        ("txp_test_figure", [({"pipeline": "crypto_copy"}, 7.0)])
    ]
    assert [r.getMessage() for r in caplog.records] == [
        'metrics: the crypto_trades pipeline\'s own metrics failed: relation "crypto_spread_1m" is locked'
    ]


def test_two_pipelines_with_the_same_metrics_share_one_family() -> None:
    def figure(spec, conn):  # noqa: ANN001, ANN202
        return [_gauge("txp_test_figure", [spec.name], len(spec.topic))]

    pipelines = [replace(CRYPTO_TRADES.with_topic(t), name=n, derived_metrics=figure)
                 for n, t in (("one", "t1"), ("two", "topic2"))]  # fmt: skip
    (family,) = derived_families(pipelines, _Connection())
    assert [(s.labels["pipeline"], s.value) for s in family.samples] == [("one", 2.0), ("two", 6.0)]


def test_the_deployment_reports_every_shipped_pipeline_and_refuses_a_shared_topic() -> None:
    collector = PipelineCollector.from_settings(Settings())
    assert collector.pipelines == tuple(PIPELINES.values())
    assert {p.name for p in collector.pipelines} == {"transactions", "crypto_trades"}
    assert CRYPTO_TRADES.derived_metrics == "tx_platform.pipelines.crypto_trades._metrics:market_metrics"
    collector.close()
    with pytest.raises(ConfigError, match="same topic"):
        PipelineCollector([P, CRYPTO_TRADES.with_topic("tx_topic")], "postgresql://x@127.0.0.1:1/x", "127.0.0.1:1")


ALERTS = {
    "version": "4",
    "groupKey": '{}:{alertname="SinkLagHigh"}',
    "status": "firing",
    "receiver": "txp-exporter",
    "groupLabels": {"alertname": "SinkLagHigh"},
    "commonLabels": {"alertname": "SinkLagHigh", "pipeline": "transactions"},
    "commonAnnotations": {},
    "externalURL": "http://127.0.0.1:9095",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "SinkLagHigh", "pipeline": "transactions", "severity": "warning"},
            "annotations": {"summary": "the sink is 5000 records behind"},
            "startsAt": "2026-01-01T00:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://127.0.0.1:9090/graph",
            "fingerprint": "0123456789abcdef",
        },
        {
            "status": "resolved",
            "labels": {"alertname": "DeadLetterRatioHigh", "pipeline": "transactions"},
            "annotations": {},
            "startsAt": "2026-01-01T00:01:00Z",
            "endsAt": "2026-01-01T00:05:00Z",
        },
    ],
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MetricsServer]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(FIGURES, None))
    srv = MetricsServer(registry, AlertLog(tmp_path / "logs" / "alerts.log"), 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _post(url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_server_exposes_metrics_and_records_alerts(server: MetricsServer, tmp_path: Path) -> None:
    samples = scrape(f"{server.url}/metrics")
    assert value(samples, "txp_sink_batches_total", pipeline="transactions") == 2
    assert _post(f"{server.url}/alerts", json.dumps(ALERTS).encode()) == (200, "2 alerts recorded\n")
    lines = [json.loads(line) for line in (tmp_path / "logs" / "alerts.log").read_text().splitlines()]
    assert [(a["status"], a["alertname"], a["startsAt"]) for a in lines] == [
        ("firing", "SinkLagHigh", "2026-01-01T00:00:00Z"),
        ("resolved", "DeadLetterRatioHigh", "2026-01-01T00:01:00Z"),
    ]
    assert lines[0]["labels"] == {"alertname": "SinkLagHigh", "pipeline": "transactions", "severity": "warning"}
    assert lines[0]["summary"] == "the sink is 5000 records behind"


def test_the_server_refuses_what_is_not_a_webhook(server: MetricsServer, tmp_path: Path) -> None:
    assert _post(f"{server.url}/alerts", b"{not json")[0] == 400
    assert _post(f"{server.url}/alerts", b'{"alerts": 3}')[0] == 400
    assert _post(f"{server.url}/metrics", b"{}")[0] == 404
    assert not (tmp_path / "logs" / "alerts.log").exists()
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{server.url}/nothing", timeout=5)  # noqa: S310
    assert missing.value.code == 404
