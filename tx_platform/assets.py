"""Software-defined assets: Kafka topics -> the Spark sink's tables -> derived daily tables."""

from collections.abc import Iterator
from datetime import date

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
    multi_asset,
)
from dagster_pyspark import LazyPySparkResource
from pandera.errors import SchemaErrors

from spark_jobs.sink import SinkConfig, TransactionSink
from spark_jobs.sink._dlq import DLQ_MAX_MESSAGE_BYTES
from tx_platform.checks import daily_merchant_summary_schema, daily_reconciliation
from tx_platform.contract import EARLIEST_EVENT_TIME
from tx_platform.resources import KafkaResource, PipelineConfig, PostgresResource, compute_lag
from tx_platform.warehouse import read_daily_merchant_summary, rebuild_daily_merchant_summary

KAFKA_TRANSACTIONS = AssetKey(["kafka", "transactions"])
KAFKA_TRANSACTIONS_DLQ = AssetKey(["kafka", "transactions_dlq"])
WAREHOUSE_TRANSACTIONS = AssetKey(["warehouse", "transactions"])
WAREHOUSE_QUARANTINE = AssetKey(["warehouse", "quarantine"])
DAILY_MERCHANT_SUMMARY = AssetKey(["warehouse", "daily_merchant_summary"])

#: Daily partitions in UTC; end_offset=1 includes today, which fills up as the stream runs. They
#: start at the earliest event time the sink accepts (older records are quarantined as EVENT_TIME_TOO_OLD).
DAILY_PARTITIONS = DailyPartitionsDefinition(start_date=EARLIEST_EVENT_TIME.date().isoformat(), end_offset=1)


@asset(
    key=KAFKA_TRANSACTIONS,
    group_name="kafka",
    kinds={"kafka"},
    description="Kafka topic of card transactions (key = account_id). Materializing creates it if missing "
    "and records its partitions and end offsets.",
)
def kafka_transactions(kafka: KafkaResource, pipeline: PipelineConfig) -> MaterializeResult:
    """The `transactions` topic."""
    created = kafka.ensure_topic(pipeline.topic, pipeline.topic_partitions, pipeline.topic_replication)
    ends = kafka.end_offsets(pipeline.topic)
    return MaterializeResult(
        metadata={
            "topic": pipeline.topic,
            "created_now": created,
            "partitions": len(ends),
            "end_offsets_total": sum(ends.values()),
        }
    )


@asset(
    key=KAFKA_TRANSACTIONS_DLQ,
    group_name="kafka",
    kinds={"kafka"},
    description="Dead-letter topic for records the sink rejects (the quarantine table holds the same, with reasons).",
)
def kafka_transactions_dlq(kafka: KafkaResource, pipeline: PipelineConfig) -> MaterializeResult:
    """The `transactions.dlq` topic."""
    created = kafka.ensure_topic(
        pipeline.dlq_topic,
        pipeline.topic_partitions,
        pipeline.topic_replication,
        {"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)},
    )
    ends = kafka.end_offsets(pipeline.dlq_topic)
    return MaterializeResult(
        metadata={"topic": pipeline.dlq_topic, "created_now": created, "end_offsets_total": sum(ends.values())}
    )


#: Said on both tables: the sink is one Spark query whatever the selection (see transactions_sink).
_SINK_WRITES_BOTH = (
    " The sink writes `transactions` and `quarantine` together (each Kafka record goes to exactly one of them), "
    "so selecting either table or both runs it once."
)


@multi_asset(
    specs=[
        AssetSpec(
            WAREHOUSE_TRANSACTIONS,
            deps=[KAFKA_TRANSACTIONS],
            group_name="warehouse",
            kinds={"spark", "postgres"},
            description="Postgres `transactions`: every valid record once, upserted on transaction_id by the Spark "
            "sink (AvailableNow: each materialization processes everything new, then stops)." + _SINK_WRITES_BOTH,
        ),
        AssetSpec(
            WAREHOUSE_QUARANTINE,
            deps=[KAFKA_TRANSACTIONS],
            group_name="warehouse",
            kinds={"postgres"},
            description="Postgres `quarantine`: records the sink rejected, with raw bytes, error code and reason."
            + _SINK_WRITES_BOTH,
        ),
    ],
    can_subset=True,
    op_tags={"txp/sink": "transactions"},
)
def transactions_sink(
    context: AssetExecutionContext,
    pyspark: LazyPySparkResource,
    kafka: KafkaResource,
    postgres: PostgresResource,
    pipeline: PipelineConfig,
) -> Iterator[MaterializeResult]:
    """Run the streaming sink once over everything new in Kafka.

    Subsettable, but the work is not divisible: one Kafka record goes to exactly one of the two
    tables, in the same Postgres transaction as the offsets, so the sink always writes both. A
    selection of either table or both runs it once; materializations are reported only for the
    selected keys (``context.selected_asset_keys``).
    """
    config = SinkConfig(
        kafka_bootstrap=kafka.bootstrap_servers,
        dsn=postgres.dsn,
        registry_url=pipeline.schema_registry_url,
        topic=pipeline.topic,
        dlq_topic=pipeline.dlq_topic,
        checkpoint_root=pipeline.checkpoint_root,
        max_offsets_per_trigger=pipeline.max_offsets_per_trigger,
        topic_replication=pipeline.topic_replication,
        on_data_loss=pipeline.on_data_loss,
    )
    stats = TransactionSink(pyspark.spark_session, config).run_available_now()
    lag = compute_lag(kafka.end_offsets(pipeline.topic), postgres.committed_offsets(pipeline.topic)).total
    context.log.info(
        f"sink: {stats.records} records in {stats.batches} batches -> {stats.inserted} rows, "
        f"{stats.quarantined} quarantined, {stats.skipped} replayed; lag now {lag}; {stats.seconds:.1f} s"
    )
    selected = context.selected_asset_keys
    if WAREHOUSE_TRANSACTIONS in selected:
        total_rows = postgres.scalar("SELECT count(*) FROM transactions")
        yield MaterializeResult(
            asset_key=WAREHOUSE_TRANSACTIONS,
            metadata={
                "records_read": stats.records,
                "rows_inserted": stats.inserted,
                "replayed_skipped": stats.skipped,
                "batches": stats.batches,
                "seconds": stats.seconds,
                "lag_after": lag,
                "dagster/row_count": MetadataValue.int(int(total_rows or 0)),
            },
        )
    if WAREHOUSE_QUARANTINE in selected:
        total_quarantined = postgres.scalar("SELECT count(*) FROM quarantine")
        yield MaterializeResult(
            asset_key=WAREHOUSE_QUARANTINE,
            metadata={
                "rows_quarantined": stats.quarantined,
                "sent_to_dlq": stats.dead_lettered,
                "dagster/row_count": MetadataValue.int(int(total_quarantined or 0)),
            },
        )


@asset(
    key=DAILY_MERCHANT_SUMMARY,
    deps=[WAREHOUSE_TRANSACTIONS],
    partitions_def=DAILY_PARTITIONS,
    group_name="analytics",
    kinds={"postgres", "pandas"},
    description="Per day (UTC), merchant and currency: counts, amounts, refunds, unique cards. A partition is "
    "rebuilt atomically from `transactions` in Postgres, then checked.",
    check_specs=[
        AssetCheckSpec("matches_schema", asset=DAILY_MERCHANT_SUMMARY, description="Pandera schema of the table."),
        AssetCheckSpec(
            "reconciles_with_transactions",
            asset=DAILY_MERCHANT_SUMMARY,
            description="Per currency, counts and amounts equal those of the day in `transactions`.",
        ),
    ],
)
def daily_merchant_summary(
    context: AssetExecutionContext, postgres: PostgresResource
) -> Iterator[MaterializeResult | AssetCheckResult]:
    """Rebuild one day of `daily_merchant_summary` and check it."""
    day = date.fromisoformat(context.partition_key)
    with postgres.connection() as conn:
        rows = rebuild_daily_merchant_summary(conn, day)
    with postgres.connection() as conn:
        frame = read_daily_merchant_summary(conn, day)
        recon = daily_reconciliation(conn, day)
    yield MaterializeResult(metadata={"day": str(day), "dagster/row_count": MetadataValue.int(rows)})

    schema_meta: dict[str, MetadataValue]
    try:
        daily_merchant_summary_schema().validate(frame, lazy=True)
        schema_ok, schema_meta = True, {"rows": MetadataValue.int(len(frame))}
    except SchemaErrors as exc:
        cases = exc.failure_cases
        schema_ok = False
        schema_meta = {
            "rows": MetadataValue.int(len(frame)),
            "failure_cases": MetadataValue.int(len(cases)),
            "first_failures": MetadataValue.text(cases.head(10).to_string()),
        }
    yield AssetCheckResult(check_name="matches_schema", passed=schema_ok, metadata=schema_meta)
    yield AssetCheckResult(
        check_name="reconciles_with_transactions",
        passed=recon.matches,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "currencies": len(recon.raw),
            "transactions": sum(n for n, _ in recon.raw.values()),
            "summarised": sum(n for n, _ in recon.summary.values()),
        },
    )
