"""Every pipeline metric, defined once: name, help (with its unit), kind and label names.

Alert rules and dashboards are written against these names; change one only together with them.
The exporter's and the producer's collectors build their families from these definitions
(``Metric.family``), so a name or a label can never differ between them.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

INF = math.inf

#: Upper bounds (seconds) of the latency histograms: event time / Kafka timestamp -> committed.
LATENCY_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, INF)
#: Upper bounds (seconds) of the sink's commit transaction durations.
COMMIT_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, INF)
#: Upper bounds (seconds) of produce() -> delivery report (librdkafka gives up after 120 s).
DELIVERY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, INF)

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Metric:
    """One metric: its exposed name (counters end in ``_total``), help, kind and fixed label names."""

    name: str
    help: str
    kind: Kind
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    def family(self) -> CounterMetricFamily | GaugeMetricFamily:
        """An empty counter or gauge family for a custom collector; add samples with ``add_metric``."""
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.help, labels=list(self.labels))
        if self.kind == "gauge":
            return GaugeMetricFamily(self.name, self.help, labels=list(self.labels))
        msg = f"{self.name} is a {self.kind}: use histogram_family()"
        raise TypeError(msg)

    def histogram_family(self) -> HistogramMetricFamily:
        """An empty histogram family; add samples with ``histogram_sample``."""
        if self.kind != "histogram":
            msg = f"{self.name} is a {self.kind}, not a histogram"
            raise TypeError(msg)
        return HistogramMetricFamily(self.name, self.help, labels=list(self.labels))


def bucket_for(seconds: float, buckets: Sequence[float] = LATENCY_BUCKETS) -> float:
    """The smallest upper bound ``le`` with ``seconds <= le`` (``buckets`` sorted, ending in +Inf)."""
    return buckets[bisect.bisect_left(buckets, seconds)]


def cumulative_buckets(
    counts: Mapping[float, int], buckets: Sequence[float] = LATENCY_BUCKETS
) -> list[tuple[str, float]]:
    """Per-bucket counts (keyed by the ``le`` each observation fell in) -> Prometheus' cumulative buckets.

    Counts stored under a bound that is not in ``buckets`` (buckets changed since) are added to
    every bound at or above it, so the result stays cumulative and ends with the total at +Inf.
    """
    out = []
    for bound in buckets:
        out.append((floatToGoString(bound), float(sum(n for le, n in counts.items() if le <= bound))))
    return out


def histogram_sample(
    family: HistogramMetricFamily,
    labels: Iterable[str],
    counts: Mapping[float, int],
    total: float,
    buckets: Sequence[float] = LATENCY_BUCKETS,
) -> None:
    """Add one histogram (non-cumulative counts by ``le``, sum of seconds) to a histogram family."""
    family.add_metric(list(labels), cumulative_buckets(counts, buckets), total)


_P = ("pipeline",)

# -- the sink, derived from Postgres (the ledger is the truth) ---------------------------------
SINK_LAG_RECORDS = Metric(
    "txp_sink_lag_records",
    "Records in the topic not yet committed to Postgres: end offset minus committed offset, per partition "
    "(negative: Postgres holds offsets past the topic's end).",
    "gauge",
    (*_P, "topic", "partition"),
)
SINK_ROWS_TOTAL = Metric(
    "txp_sink_rows_total",
    "Records the sink committed, by outcome: inserted, quarantined, skipped (already committed).",
    "counter",
    (*_P, "outcome"),
)
SINK_QUARANTINED_TOTAL = Metric(
    "txp_sink_quarantined_total", "Records in quarantine, by error code.", "counter", (*_P, "error_code")
)
SINK_DEAD_LETTERED_TOTAL = Metric(
    "txp_sink_dead_lettered_total", "Quarantined records Kafka acknowledged on the dead-letter topic.", "counter", _P
)
SINK_BATCHES_TOTAL = Metric(
    "txp_sink_batches_total",
    "Commits of the sink: one per micro-batch and Kafka partition with records in it (a write task's slice).",
    "counter",
    _P,
)
SINK_LAST_COMMIT_TIMESTAMP = Metric(
    "txp_sink_last_commit_timestamp_seconds",
    "Unix time (seconds) of the sink's last committed micro-batch.",
    "gauge",
    _P,
)
SINK_COMMIT_DURATION = Metric(
    "txp_sink_commit_duration_seconds",
    "Seconds one micro-batch's commit transaction ran in Postgres (ledger lock wait included).",
    "histogram",
    _P,
    COMMIT_BUCKETS,
)
E2E_LATENCY = Metric(
    "txp_e2e_latency_seconds",
    "Seconds from a record's event_time to its commit in Postgres (inserted rows; future event times count 0).",
    "histogram",
    _P,
    LATENCY_BUCKETS,
)
KAFKA_TO_COMMIT_LATENCY = Metric(
    "txp_kafka_to_commit_latency_seconds",
    "Seconds from a record's Kafka timestamp (create or append time) to its commit in Postgres (inserted rows).",
    "histogram",
    _P,
    LATENCY_BUCKETS,
)
E2E_LATENCY_SLO = Metric(
    "txp_e2e_latency_slo_seconds",
    "The end-to-end latency objective in seconds (TXP_E2E_LATENCY_SLO_SECONDS); alert rules compare against it.",
    "gauge",
    _P,
)
DEAD_LETTER_RATIO_THRESHOLD = Metric(
    "txp_dead_letter_ratio_threshold",
    "Share of records (0-1) sent to the dead-letter topic above which an alert fires "
    "(TXP_DEAD_LETTER_RATIO_THRESHOLD).",
    "gauge",
    _P,
)

# -- the exporter itself --------------------------------------------------------------------------
EXPORTER_UP = Metric(
    "txp_exporter_up", "1 when the exporter's last scrape could read the source (kafka, postgres).", "gauge",
    ("source",),
)  # fmt: skip
EXPORTER_SCRAPE_DURATION = Metric(
    "txp_exporter_scrape_duration_seconds", "Seconds the exporter's last scrape of its sources took.", "gauge"
)

# -- the producer, pushed to the Pushgateway -------------------------------------------------------
PRODUCER_RECORDS_TOTAL = Metric(
    "txp_producer_records_total",
    "Records the producer handed to Kafka, by delivery result: delivered, failed (this run of txp produce).",
    "counter",
    (*_P, "result"),
)
PRODUCER_BYTES_TOTAL = Metric(
    "txp_producer_bytes_total",
    "Bytes (key and value) of the records Kafka acknowledged (this run of txp produce).",
    "counter",
    _P,
)
PRODUCER_DELIVERY_LATENCY = Metric(
    "txp_producer_delivery_latency_seconds",
    "Seconds from produce() to the record's delivery report (this run of txp produce).",
    "histogram",
    _P,
    DELIVERY_BUCKETS,
)

# -- each streaming query's progress, pushed by the sink's StreamingQueryListener -------------------
SPARK_INPUT_ROWS_PER_SECOND = Metric(
    "txp_spark_input_rows_per_second",
    "Records per second arriving from Kafka, as the last micro-batch's progress reports them.",
    "gauge",
    _P,
)
SPARK_PROCESSED_ROWS_PER_SECOND = Metric(
    "txp_spark_processed_rows_per_second",
    "Records per second the last micro-batch processed (its rows over its duration).",
    "gauge",
    _P,
)
SPARK_BATCH_DURATION = Metric(
    "txp_spark_batch_duration_seconds",
    "Seconds the last micro-batch took, planning and commit included (progress batchDuration).",
    "gauge",
    _P,
)
SPARK_BATCH_ROWS = Metric(
    "txp_spark_batch_rows", "Records read from Kafka by the last micro-batch (progress numInputRows).", "gauge", _P
)
SPARK_BATCHES_TOTAL = Metric(
    "txp_spark_batches_total", "Micro-batches the streaming query completed (this run of the sink).", "counter", _P
)
SPARK_WATERMARK_DELAY = Metric(
    "txp_spark_watermark_delay_seconds",
    "Seconds the event-time watermark trails the last micro-batch's trigger time (queries with a watermark).",
    "gauge",
    _P,
)
SPARK_STATE_ROWS = Metric(
    "txp_spark_state_rows",
    "Rows held in the streaming query's state stores, all stateful operators (stateful queries).",
    "gauge",
    _P,
)

#: Every metric the platform exposes, for docs and tests.
ALL_METRICS: tuple[Metric, ...] = (
    SINK_LAG_RECORDS,
    SINK_ROWS_TOTAL,
    SINK_QUARANTINED_TOTAL,
    SINK_DEAD_LETTERED_TOTAL,
    SINK_BATCHES_TOTAL,
    SINK_LAST_COMMIT_TIMESTAMP,
    SINK_COMMIT_DURATION,
    E2E_LATENCY,
    KAFKA_TO_COMMIT_LATENCY,
    E2E_LATENCY_SLO,
    DEAD_LETTER_RATIO_THRESHOLD,
    EXPORTER_UP,
    EXPORTER_SCRAPE_DURATION,
    PRODUCER_RECORDS_TOTAL,
    PRODUCER_BYTES_TOTAL,
    PRODUCER_DELIVERY_LATENCY,
    SPARK_INPUT_ROWS_PER_SECOND,
    SPARK_PROCESSED_ROWS_PER_SECOND,
    SPARK_BATCH_DURATION,
    SPARK_BATCH_ROWS,
    SPARK_BATCHES_TOTAL,
    SPARK_WATERMARK_DELAY,
    SPARK_STATE_ROWS,
)
