"""Pipeline metrics for Prometheus: every metric defined once, the sink exporter, the producer's push.

- the sink's figures are derived from Postgres at scrape time by ``txp metrics serve``
  (``PipelineCollector``), so no process death loses them; its ``/alerts`` takes Alertmanager's webhook;
- the producer, a short-lived client, pushes its own to the Pushgateway (``pushing_producer_metrics``).
"""

from tx_platform.metrics._definitions import (
    ALL_METRICS,
    COMMIT_BUCKETS,
    DEAD_LETTER_RATIO_THRESHOLD,
    DELIVERY_BUCKETS,
    E2E_LATENCY,
    E2E_LATENCY_SLO,
    EXPORTER_SCRAPE_DURATION,
    EXPORTER_UP,
    KAFKA_TO_COMMIT_LATENCY,
    LATENCY_BUCKETS,
    PRODUCER_BYTES_TOTAL,
    PRODUCER_DELIVERY_LATENCY,
    PRODUCER_RECORDS_TOTAL,
    SINK_BATCHES_TOTAL,
    SINK_COMMIT_DURATION,
    SINK_DEAD_LETTERED_TOTAL,
    SINK_LAG_RECORDS,
    SINK_LAST_COMMIT_TIMESTAMP,
    SINK_QUARANTINED_TOTAL,
    SINK_ROWS_TOTAL,
    Metric,
    bucket_for,
    cumulative_buckets,
)
from tx_platform.metrics._exporter import (
    Pipeline,
    PipelineCollector,
    SinkFigures,
    Thresholds,
    pipeline_for_topic,
    pipelines_from_settings,
    read_sink_figures,
    sink_families,
)
from tx_platform.metrics._push import PRODUCER_JOB, ProducerMetrics, Pusher, pushing_producer_metrics
from tx_platform.metrics._server import AlertLog, MetricsServer, build_server, serve
from tx_platform.metrics._service import MetricsExporterService

__all__ = [
    "ALL_METRICS",
    "COMMIT_BUCKETS",
    "DEAD_LETTER_RATIO_THRESHOLD",
    "DELIVERY_BUCKETS",
    "E2E_LATENCY",
    "E2E_LATENCY_SLO",
    "EXPORTER_SCRAPE_DURATION",
    "EXPORTER_UP",
    "KAFKA_TO_COMMIT_LATENCY",
    "LATENCY_BUCKETS",
    "PRODUCER_BYTES_TOTAL",
    "PRODUCER_DELIVERY_LATENCY",
    "PRODUCER_JOB",
    "PRODUCER_RECORDS_TOTAL",
    "SINK_BATCHES_TOTAL",
    "SINK_COMMIT_DURATION",
    "SINK_DEAD_LETTERED_TOTAL",
    "SINK_LAG_RECORDS",
    "SINK_LAST_COMMIT_TIMESTAMP",
    "SINK_QUARANTINED_TOTAL",
    "SINK_ROWS_TOTAL",
    "AlertLog",
    "Metric",
    "MetricsExporterService",
    "MetricsServer",
    "Pipeline",
    "PipelineCollector",
    "ProducerMetrics",
    "Pusher",
    "SinkFigures",
    "Thresholds",
    "bucket_for",
    "build_server",
    "cumulative_buckets",
    "pipeline_for_topic",
    "pipelines_from_settings",
    "pushing_producer_metrics",
    "read_sink_figures",
    "serve",
    "sink_families",
]
