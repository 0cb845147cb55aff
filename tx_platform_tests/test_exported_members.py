import importlib

import pytest

pytestmark = pytest.mark.unit

PUBLIC = {
    "tx_platform": {
        "ArtifactError", "ConfigError", "ContractError", "DeliveryError", "ServiceUnavailableError", "Settings",
        "SinkError", "StackError", "TopicNotFoundError", "TxPlatformError", "__version__", "load_settings",
    },
    "tx_platform.contract": {
        "COMPATIBILITY", "EARLIEST_EVENT_TIME", "ERROR_CODES", "MAX_FUTURE_SECONDS", "MCC_PATTERN", "MCC_REGEX",
        "SUBJECT", "UUID_PATTERN", "UUID_REGEX", "java_full_match", "python_full_match",
        "AvroRecordSerializer", "Contract", "Field", "Record", "Registration", "SchemaIncompatibleError", "Serializer",
        "country_codes", "currency_codes", "load_contract", "parse_contract", "register_contract", "registry_client",
        "split_wire_format", "subject_for",
    },
    "tx_platform.producer": {
        "CATEGORIES", "COUNTRIES", "FAULTS", "INJECTED_HEADER", "PRODUCER_DEFAULTS", "Category", "Country",
        "DeliveryReport", "Fault", "FaultInjector", "Pools", "TransactionProducer", "build_pools", "generate",
        "open_producer", "produce",
    },
    "tx_platform.stack": {
        "Artifacts", "LocalStack", "ManagedProcess", "ServiceStatus", "StackLayout", "port_in_use",
        "pyspark_version", "require_java", "resolve_artifacts", "tail",
    },
    "tx_platform.checks": {
        "LossReport", "daily_merchant_summary_schema", "daily_reconciliation", "loss_report", "transactions_schema",
    },
    "tx_platform.metrics": {
        "ALL_METRICS", "COMMIT_BUCKETS", "DEAD_LETTER_RATIO_THRESHOLD", "DELIVERY_BUCKETS", "E2E_LATENCY",
        "E2E_LATENCY_SLO", "EXPORTER_SCRAPE_DURATION", "EXPORTER_UP", "KAFKA_TO_COMMIT_LATENCY", "LATENCY_BUCKETS",
        "PRODUCER_BYTES_TOTAL", "PRODUCER_DELIVERY_LATENCY", "PRODUCER_JOB", "PRODUCER_RECORDS_TOTAL",
        "SINK_BATCHES_TOTAL", "SINK_COMMIT_DURATION", "SINK_DEAD_LETTERED_TOTAL", "SINK_LAG_RECORDS",
        "SINK_JOB", "SINK_LAST_COMMIT_TIMESTAMP", "SINK_QUARANTINED_TOTAL", "SINK_ROWS_TOTAL", "SPARK_BATCHES_TOTAL",
        "SPARK_BATCH_DURATION", "SPARK_BATCH_ROWS", "SPARK_INPUT_ROWS_PER_SECOND", "SPARK_PROCESSED_ROWS_PER_SECOND",
        "SPARK_STATE_ROWS", "SPARK_WATERMARK_DELAY", "AlertLog", "Metric",
        "MetricsExporterService", "MetricsServer", "PipelineCollector", "ProducerMetrics", "Pusher",
        "SinkFigures", "Thresholds", "bucket_for", "build_server", "cumulative_buckets", "derived_families",
        "pushing_producer_metrics", "read_sink_figures", "serve", "sink_families",
    },
    "spark_jobs.sink": {
        "QUERY_NAME", "SinkConfig", "SinkStats", "TransactionSink", "await_query", "contract_struct", "decode",
        "render",
    },
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_is_what_we_mean_to_export(module: str) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == PUBLIC[module]
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name} is in __all__ but missing"


def test_errors_inherit_the_builtin_they_specialise() -> None:
    import tx_platform as t

    assert issubclass(t.ConfigError, ValueError) and issubclass(t.ConfigError, t.TxPlatformError)
    assert issubclass(t.ServiceUnavailableError, ConnectionError)
    assert issubclass(t.ArtifactError, t.StackError) and issubclass(t.StackError, RuntimeError)
