"""Spark's metrics in Prometheus: each query's progress pushed by the sink, the continuous driver's own."""

import json
import math
import os
import signal
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from pyspark.sql.streaming.listener import QueryProgressEvent, StreamingQueryProgress

from spark_jobs.session import DRIVER_METRICS_PATH, EXECUTOR_METRICS_PATH, spark_config
from spark_jobs.sink import PipelineSink
from spark_jobs.sink._progress import ProgressFigures, ProgressListener, ProgressMetrics, progress_figures
from tx_platform.config import Settings, load_settings
from tx_platform.metrics import SINK_JOB
from tx_platform.pipelines import PipelineSpec
from tx_platform.warehouse import connect
from tx_platform_tests.conftest import assert_eventually, produce_records, start_continuous_sink

QUERY_ID = "3a4f1e52-6a5c-4d3e-9d0b-6f1b2a7c9e01"


def _progress(**changes: Any) -> dict[str, Any]:  # noqa: ANN401
    """A progress as Spark writes it (StreamingQueryProgress.json) for a 500-record batch of the sink."""
    progress: dict[str, Any] = {
        "id": QUERY_ID,
        "runId": "8e1d7c1a-2b3c-4d5e-8f90-a1b2c3d4e5f6",
        "name": "transactions_sink",
        "timestamp": "2026-01-01T12:00:10.000Z",
        "batchId": 3,
        "batchDuration": 1250,
        "numInputRows": 500,
        "inputRowsPerSecond": 250.0,
        "processedRowsPerSecond": 400.0,
        "durationMs": {"addBatch": 1100, "triggerExecution": 1250},
        "stateOperators": [],
        "sources": [
            {
                "description": "KafkaV2[Subscribe[transactions]]",
                "startOffset": {"transactions": {"0": 1000}},
                "endOffset": {"transactions": {"0": 1500}},
                "latestOffset": {"transactions": {"0": 1500}},
                "numInputRows": 500,
                "inputRowsPerSecond": 250.0,
                "processedRowsPerSecond": 400.0,
            }
        ],
        "sink": {"description": "ForeachBatchSink", "numOutputRows": -1},
    }
    return progress | changes


def _state_operator(name: str, rows: int) -> dict[str, Any]:
    return {
        "operatorName": name, "numRowsTotal": rows, "numRowsUpdated": 7, "numRowsRemoved": 2,
        "allUpdatesTimeMs": 3, "allRemovalsTimeMs": 1, "commitTimeMs": 5, "memoryUsedBytes": 4096,
        "numRowsDroppedByWatermark": 0, "numShufflePartitions": 4, "numStateStoreInstances": 4,
    }  # fmt: skip


def _stateful_progress() -> dict[str, Any]:
    return _progress(
        eventTime={"avg": "2026-01-01T11:58:00.000Z", "max": "2026-01-01T11:59:00.000Z",
                   "min": "2026-01-01T11:57:00.000Z", "watermark": "2026-01-01T11:58:15.500Z"},
        stateOperators=[_state_operator("stateStoreSave", 120), _state_operator("dedupe", 30)],
    )  # fmt: skip


# -- unit: progress -> metric values -------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("parsed", [False, True], ids=["json", "StreamingQueryProgress"])
def test_progress_of_a_stateless_batch(parsed: bool) -> None:
    raw = _progress()
    progress = StreamingQueryProgress.fromJson(raw) if parsed else raw
    assert progress_figures(progress) == ProgressFigures(
        batch_id=3, batch_rows=500, batch_duration_seconds=1.25, input_rows_per_second=250.0,
        processed_rows_per_second=400.0, watermark_delay_seconds=None, state_rows=None,
    )  # fmt: skip
    metrics = ProgressMetrics("transactions")
    assert metrics.observe(progress)
    assert metrics.samples() == {
        "txp_spark_batches_total": 1.0,
        "txp_spark_batch_rows": 500.0,
        "txp_spark_batch_duration_seconds": 1.25,
        "txp_spark_input_rows_per_second": 250.0,
        "txp_spark_processed_rows_per_second": 400.0,
    }


@pytest.mark.unit
@pytest.mark.parametrize("parsed", [False, True], ids=["json", "StreamingQueryProgress"])
def test_progress_with_watermark_and_state(parsed: bool) -> None:
    raw = _stateful_progress()
    progress = StreamingQueryProgress.fromJson(raw) if parsed else raw
    figures = progress_figures(progress)
    assert figures.watermark_delay_seconds == 114.5  # 12:00:10.000 - 11:58:15.500
    assert figures.state_rows == 150
    metrics = ProgressMetrics("transactions")
    metrics.observe(progress)
    exposed = generate_latest(metrics.registry).decode()
    assert 'txp_spark_watermark_delay_seconds{pipeline="transactions"} 114.5' in exposed
    assert 'txp_spark_state_rows{pipeline="transactions"} 150.0' in exposed
    assert 'txp_spark_batch_rows{pipeline="transactions"} 500.0' in exposed
    assert 'txp_spark_batches_total{pipeline="transactions"} 1.0' in exposed


@pytest.mark.unit
def test_no_watermark_yet_and_rates_spark_cannot_compute_are_left_out() -> None:
    raw = _progress(eventTime={"watermark": "1970-01-01T00:00:00.000Z"}, processedRowsPerSecond=math.nan)
    del raw["inputRowsPerSecond"]
    figures = progress_figures(raw)
    assert figures.watermark_delay_seconds is None
    assert figures.processed_rows_per_second is None
    assert figures.input_rows_per_second is None
    metrics = ProgressMetrics("p")
    metrics.observe(raw)
    assert set(metrics.samples()) == {
        "txp_spark_batches_total", "txp_spark_batch_rows", "txp_spark_batch_duration_seconds",
    }  # fmt: skip


@pytest.mark.unit
def test_batches_are_counted_once_and_the_last_one_wins() -> None:
    metrics = ProgressMetrics("transactions")
    assert metrics.samples() == {"txp_spark_batches_total": 0.0}
    assert metrics.observe(_progress(batchId=0, numInputRows=10))
    assert metrics.observe(_progress(batchId=1, numInputRows=20))
    assert not metrics.observe(_progress(batchId=1, numInputRows=20))  # delivered twice (listener and catch-up)
    assert not metrics.observe(_progress(batchId=0, numInputRows=10))  # late
    assert metrics.samples()["txp_spark_batches_total"] == 2.0
    assert metrics.samples()["txp_spark_batch_rows"] == 20.0


@pytest.mark.unit
def test_listener_takes_only_its_query_and_never_raises() -> None:
    metrics = ProgressMetrics("transactions")
    listener = ProgressListener(metrics, None, "transactions_sink")

    def event(**changes: Any) -> QueryProgressEvent:  # noqa: ANN401
        return QueryProgressEvent(StreamingQueryProgress.fromJson(_progress(**changes)))

    listener.onQueryProgress(event(name="another_query", batchId=0))
    assert metrics.batches == 0
    listener.onQueryProgress(event(batchId=0))  # by name until the query id is known
    assert metrics.batches == 1
    listener.query_id = QUERY_ID
    listener.onQueryProgress(event(id="00000000-0000-0000-0000-000000000000", batchId=5))
    assert metrics.batches == 1
    listener.onQueryProgress(event(batchId=1, batchDuration="not a number"))  # broken progress: swallowed
    assert listener.errors == 1
    listener.onQueryProgress(event(batchId=2))
    assert metrics.batches == 2


@pytest.mark.unit
def test_spark_config_for_metrics() -> None:
    settings = load_settings(spark_ui_port=4999)
    plain = spark_config(settings, [])
    assert "spark.metrics.conf.*.sink.prometheusServlet.class" not in plain and "spark.jars" not in plain
    config = spark_config(settings, ["/jars/a.jar", "/jars/b.jar"], app_name="tx_platform_sink", metrics=True)
    assert config["spark.jars"] == "/jars/a.jar,/jars/b.jar"
    assert config["spark.ui.enabled"] == "true"
    assert config["spark.ui.port"] == "4999"
    assert config["spark.metrics.conf.*.sink.prometheusServlet.path"] == DRIVER_METRICS_PATH == "/metrics/prometheus"
    assert config["spark.metrics.namespace"] == "tx_platform_sink"
    assert config["spark.sql.streaming.metricsEnabled"] == "true"
    assert config["spark.ui.prometheus.enabled"] == "true"
    cluster = spark_config(load_settings(spark_master="spark://h:7077"), [], metrics=True)
    assert "spark.ui.port" not in cluster and "spark.ui.enabled" not in cluster


# -- integration: the real sink, the stack's Pushgateway and Prometheus ----------------------------


def _get_json(url: str) -> Any:  # noqa: ANN401 - JSON
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own loopback stack
        return json.loads(response.read())


def _pushed(pushgateway: str, job: str, pipeline: str) -> dict[str, float]:
    """Metric name -> value of the Pushgateway's group {job, pipeline} (empty when there is none)."""
    for group in _get_json(f"{pushgateway}/api/v1/metrics")["data"]:
        if group["labels"].get("job") == job and group["labels"].get("pipeline") == pipeline:
            return {
                name: float(family["metrics"][0]["value"])
                for name, family in group.items()
                if name.startswith("txp_spark_")
            }
    return {}


@pytest.mark.integration
@pytest.mark.slow
def test_available_now_run_pushes_its_progress(
    spark,  # noqa: ANN001
    settings: Settings,
    spec: PipelineSpec,
    create_topic,  # noqa: ANN001
) -> None:
    count = 437
    create_topic(spec.topic, 1)
    produce_records(spec, settings, count, seed=4242)
    one_batch = settings.model_copy(update={"max_offsets_per_trigger": 10 * count})
    listeners = len(spark.streams._jsqm.listListeners())
    stats = PipelineSink(spark, spec, one_batch).run_available_now()
    assert (stats.batches, stats.records) == (1, count)
    # the progress is labelled by the spec's name, whatever topic the test gives it
    assert spec.name == "transactions" != spec.topic
    pushed = _pushed(os.environ["TXP_PUSHGATEWAY_URL"], SINK_JOB, spec.name)
    assert pushed["txp_spark_batch_rows"] == count
    assert pushed["txp_spark_batches_total"] == 1
    assert pushed["txp_spark_batch_duration_seconds"] > 0
    assert "txp_spark_processed_rows_per_second" in pushed
    assert "txp_spark_watermark_delay_seconds" not in pushed and "txp_spark_state_rows" not in pushed
    assert len(spark.streams._jsqm.listListeners()) == listeners  # the run's listener is gone with it


def _stored(settings: Settings, spec: PipelineSpec) -> int:
    conn = connect(settings.dsn())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM transactions WHERE kafka_topic = %s", (spec.topic,))
            (n,) = cur.fetchone()
    finally:
        conn.close()
    return int(n)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get_text(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own loopback stack
            return response.read().decode()
    except OSError:
        return ""


@pytest.mark.integration
@pytest.mark.slow
def test_continuous_driver_serves_spark_metrics_to_prometheus(
    settings: Settings,
    spec: PipelineSpec,
    create_topic,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    create_topic(spec.topic, 1)
    log = tmp_path / "sink.log"
    proc = start_continuous_sink(spec, settings, log, TXP_SPARK_UI_PORT=str(_free_port()))
    target = settings.state_dir / "prometheus" / "targets" / f"spark-{proc.pid}.json"
    try:
        assert_eventually(target.exists, timeout=120, what=f"the driver's target file {target}")
        [group] = json.loads(target.read_text())
        assert group["labels"] == {"pipeline": "transactions", "pid": str(proc.pid)}
        [address] = group["targets"]
        assert address.startswith("127.0.0.1:")
        produce_records(spec, settings, 50, seed=77)
        # SIGINT only once they are committed: the test is about metrics, not about a batch in flight
        assert_eventually(lambda: _stored(settings, spec) == 50, timeout=60, what="50 rows from the running sink")
        assert_eventually(
            lambda: _pushed(os.environ["TXP_PUSHGATEWAY_URL"], SINK_JOB, "transactions").get("txp_spark_batches_total"),
            timeout=30,
            what="the running sink's progress in the Pushgateway",
        )
        driver = f"http://{address}{DRIVER_METRICS_PATH}/"
        name = "metrics_tx_platform_sink_driver_spark_streaming_transactions_sink_inputRate_total_Value"
        text = assert_eventually(lambda: name in (t := _get_text(driver)) and t, timeout=60, what=f"{name} at {driver}")
        for metric in ("processingRate_total", "latency", "eventTime_watermark", "states_rowsTotal"):
            assert f"metrics_tx_platform_sink_driver_spark_streaming_transactions_sink_{metric}_Value" in text
        assert "metrics_executor_totalCores" in _get_text(f"http://{address}{EXECUTOR_METRICS_PATH}")

        def up(job: str) -> bool:
            data = _get_json(f"{os.environ['TXP_PROMETHEUS_URL']}/api/v1/targets?state=active")["data"]
            return any(
                t["labels"].get("job") == job and t["labels"].get("pid") == str(proc.pid) and t["health"] == "up"
                for t in data["activeTargets"]
            )

        assert_eventually(
            lambda: up("spark") and up("spark_executors"), timeout=60, what="Prometheus' spark targets up"
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert not target.exists()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        target.unlink(missing_ok=True)
