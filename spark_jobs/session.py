"""Spark configuration shared by Dagster's PySpark resource and `spark-submit` runs."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tx_platform.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import DataStreamReader

#: Where Spark's PrometheusServlet serves the driver's metrics (streaming queries included).
DRIVER_METRICS_PATH = "/metrics/prometheus"
#: Where the UI serves the executors' metrics in Prometheus format (``spark.ui.prometheus.enabled``).
EXECUTOR_METRICS_PATH = "/metrics/executors/prometheus"

#: JVM options of the driver and the executors. The sink's decode stage (Avro, every rule of the
#: contract and the spec, the CSV line) is generated with a method of about 12,900 bytes of bytecode
#: (Spark's ``CodegenMetrics``), over the 8,000 above which HotSpot by default never compiles one
#: (``DontCompileHugeMethods``): the stage then ran interpreted, at about half the speed (README,
#: "What changed in the decode stage").
JVM_OPTIONS = "-XX:-DontCompileHugeMethods"
#: ``spark.sql.execution.arrow.maxBytesPerBatch`` at which Spark skips the per-row size check (Int.MaxValue).
ARROW_NO_BYTE_LIMIT = 2**31 - 1
#: ``fetch.max.wait.ms`` of the consumers Spark's Kafka source reads with: how long the broker may hold a
#: fetch that finds no new record (Kafka's default: 500 ms). A Spark task reads a bounded offset range, all
#: of it in the log already; yet a micro-batch whose ranges ended near the end of the log waited that long
#: about twice per task (a 200,000-record range over 4 partitions read in 1.41 s instead of 0.43 s, and the
#: last 8 records in 1.16 s instead of 0.23 s). A catch-up's last batches and every batch of a continuous
#: query end there.
KAFKA_FETCH_MAX_WAIT_MS = 20


def spark_config(
    settings: Settings, jars: Sequence[Path | str], app_name: str = "tx_platform", metrics: bool = False
) -> dict[str, str]:
    """Spark settings for ``settings``: master, connector ``jars``, UTC, loopback-only driver.

    The jars are resolved at the edge (the CLI, the Dagster definitions: ``tx_platform.stack.
    resolve_artifacts``) from the Maven cache, so no session ever downloads anything at start-up;
    under ``spark-submit`` they come from ``--jars``.

    ``metrics`` (the continuous sink): Spark's metrics in Prometheus format on its UI, the driver's
    at :data:`DRIVER_METRICS_PATH` (streaming query metrics on, names prefixed with ``app_name``
    instead of the application id, so they stay the same from run to run) and the executors' at
    :data:`EXECUTOR_METRICS_PATH`. In local mode the UI is on, on ``settings.spark_ui_port``;
    on a cluster the UI's own settings are left alone.
    """
    local = settings.spark_master.startswith("local")
    config = {
        "spark.master": settings.spark_master,
        "spark.app.name": app_name,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": "4" if local else "64",
        "spark.sql.streaming.forceDeleteTempCheckpointLocation": "true",
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": str(settings.spark_ui).lower(),
        # read when the JVM starts: by PySpark when it launches the driver's JVM, by the cluster for executors
        "spark.driver.extraJavaOptions": JVM_OPTIONS,
        "spark.executor.extraJavaOptions": JVM_OPTIONS,
        # Arrow batches to Python (the sink's write tasks) are bounded by maxRecordsPerBatch (10,000 rows);
        # a byte bound too (64 MiB by default) makes Spark measure the batch after every row it adds
        "spark.sql.execution.arrow.maxBytesPerBatch": str(ARROW_NO_BYTE_LIMIT),
    }
    if jars:
        config["spark.jars"] = ",".join(str(j) for j in jars)
    if local or settings.spark_master.startswith("spark://127.0.0.1:"):
        # local[*], or the local stack's standalone master: the driver and its UI listen on loopback
        # only, and the executors (on loopback too) reach the driver there
        config |= {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
        # the sink's write tasks run Python on the executors (they commit to Postgres): on this
        # machine they run the driver's interpreter, which has the project installed
        config["spark.pyspark.python"] = executor_python()
    if metrics:
        config |= {
            "spark.ui.prometheus.enabled": "true",
            "spark.metrics.conf.*.sink.prometheusServlet.class": "org.apache.spark.metrics.sink.PrometheusServlet",
            "spark.metrics.conf.*.sink.prometheusServlet.path": DRIVER_METRICS_PATH,
            "spark.metrics.namespace": app_name,
            "spark.sql.streaming.metricsEnabled": "true",
        }
        if local:
            config["spark.ui.enabled"] = "true"
        else:
            del config["spark.ui.enabled"]
    if local and config.get("spark.ui.enabled") == "true":
        config["spark.ui.port"] = str(settings.spark_ui_port)
    return config


def executor_python() -> str:
    """The interpreter executors on this machine run: ``PYSPARK_PYTHON`` if set, else this process's.

    PySpark reads ``PYSPARK_PYTHON`` when the SparkContext starts (``spark.pyspark.python`` only
    reaches ``spark-submit``), so the variable is set here too, before any session is built. On a
    remote cluster, set ``PYSPARK_PYTHON`` to an interpreter of the executors' image that has
    ``tx_platform`` and ``psycopg2`` installed.
    """
    return os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def kafka_source(spark: SparkSession, bootstrap: str, topic: str) -> DataStreamReader:
    """A streaming reader of ``topic`` with the consumer settings every query of ours reads Kafka with
    (:data:`KAFKA_FETCH_MAX_WAIT_MS`); the caller adds its starting offsets and limits."""
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap)
        .option("subscribe", topic)
        .option("kafka.fetch.max.wait.ms", str(KAFKA_FETCH_MAX_WAIT_MS))
    )
