import importlib

import pytest

pytestmark = pytest.mark.unit

PUBLIC = {
    "tx_platform": {
        "ArtifactError", "ConfigError", "ContractError", "DeliveryError", "ServiceUnavailableError", "Settings",
        "SinkError", "StackError", "TopicNotFoundError", "TxPlatformError", "__version__", "load_settings",
    },
    "tx_platform.pipelines": {
        "CRYPTO_TRADES", "DEFAULT_PIPELINE", "PIPELINES", "TRANSACTIONS", "BlockedRecords", "Generator", "PipelineSpec",
        "asset_name", "get_pipeline", "pipeline_of_topic", "resolve_ref",
    },
    "tx_platform.contract": {
        "COMPATIBILITY", "CONTRACT_ERROR_CODES", "EARLIEST_EVENT_TIME", "MAX_FUTURE_SECONDS", "UUID_REGEX",
        "WAREHOUSE_REJECTED", "AvroRecordSerializer", "Contract", "Field", "Record", "Registration", "Rule", "RuleKind",
        "SchemaIncompatibleError", "Serializer", "between", "country_codes", "currency_codes", "event_time_rules",
        "java_full_match", "load_contract", "matches", "not_before", "not_in_future", "one_of", "parse_contract",
        "positive", "postgres_full_match", "python_full_match", "register_contract", "registry_client",
        "split_wire_format", "subject_for",
    },
    "tx_platform.producer": {
        "INJECTED_HEADER", "THROUGHPUT_CONFIG", "WIRE_FAULTS", "DeliveryReport", "Fault", "FaultInjector",
        "RecordProducer", "WireEncoder", "faults_for", "open_producer", "produce",
    },
    "tx_platform.warehouse": {
        "MAX_CHECK_VALUES", "QUARANTINE_COLUMNS", "SOURCE_COLUMNS", "BatchResult", "Gap", "LedgerEntry",
        "PartitionRange", "RawBytes", "SinkLease",
        "acquire_lease", "check_batch", "check_lease", "commit_batch", "committed_offsets", "connect",
        "copy_isolating", "describe_dsn", "ensure_schema", "forget_topic", "latency_instants", "plan_start",
        "prepare_ledger", "read_ledger", "rule_constraints", "sql_check", "staged_columns",
        "sync_constraints", "table_columns", "table_ddl", "transaction",
        "DAYS_AHEAD", "DAYS_BEHIND", "PIPELINE_TABLE_DIRECTIVE", "SHARED_SCOPE", "AppliedMigration", "Migration",
        "MigrationChangedError", "MigrationError", "SchemaNotMigratedError", "default_partition", "ensure_partitions",
        "known_migrations", "maintain_partitions", "migrate", "migration_status", "partition_name",
        "pipeline_migrations", "shared_migrations", "verify_migrated",
        "CustomerRow", "DimensionLoad", "MerchantRow", "load_dimensions", "pool_rows",
    },
    "tx_platform.stack": {
        "DAGSTER_YAML", "Artifacts", "LocalStack", "ManagedProcess", "ServiceStatus", "StackLayout", "free_port_block",
        "port_in_use", "pyspark_version", "require_java", "resolve_artifacts", "tail",
    },
    "tx_platform.checks": {
        "Audit", "AuditError", "LossReport", "audit_pipeline", "loss_report", "pandera_check", "pipeline_schema",
        "read_coordinates", "read_newest_rows",
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
    "tx_platform.cli": {"cli", "main"},
    "spark_jobs.sink": {"PipelineSink", "SinkStats", "await_query", "contract_struct", "decode", "render"},
    "spark_jobs.fraud": {
        "ALERTS_TOPIC", "AccountState", "Alert", "AlertPublisher", "Detector", "FraudQuery", "FraudStats", "Tx",
        "alerts_topic",
    },
    "spark_jobs.transforms": {
        "ALLOWED_LATENESS", "CANDLES", "CandleQueryError", "CandleSpec", "CandleStats", "CandleStream", "CandleWriter",
        "NotionalParts", "WriterSchemasChangedError", "candle_frame", "collect_candles", "good_trades", "run_candles",
        "run_candles_available_now", "start_candles",
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
