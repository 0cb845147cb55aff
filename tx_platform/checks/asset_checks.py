"""Dagster asset checks on the sink's tables (runnable with the sink or on their own)."""

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check
from pandera.errors import SchemaErrors

from tx_platform.assets import WAREHOUSE_QUARANTINE, WAREHOUSE_TRANSACTIONS
from tx_platform.checks._reconcile import loss_report
from tx_platform.checks._schemas import transactions_schema
from tx_platform.errors import TopicNotFoundError
from tx_platform.resources import KafkaResource, PipelineConfig, PostgresResource
from tx_platform.warehouse import read_recent_transactions

#: How many of the newest rows the contract check reads (a full scan would grow with the table).
CONTRACT_SAMPLE_ROWS = 50_000


@asset_check(
    asset=WAREHOUSE_TRANSACTIONS,
    description="Records read from Kafka (committed offset ranges) = rows in transactions + rows in quarantine, "
    "exactly, and no transaction_id stored twice.",
    blocking=True,
)
def no_unexplained_loss(postgres: PostgresResource, pipeline: PipelineConfig) -> AssetCheckResult:
    """Every record the sink consumed is stored exactly once, as a row or a quarantined record."""
    with postgres.connection() as conn:
        report = loss_report(conn, pipeline.topic)
    return AssetCheckResult(
        passed=report.ok,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "records_read": report.records_read,
            "transactions": report.transactions,
            "quarantined": report.quarantined,
            "unexplained": report.unexplained,
            "duplicate_transaction_ids": report.duplicate_ids,
            "lost_in_recorded_gaps": report.lost_in_gaps,
        },
    )


@asset_check(
    asset=WAREHOUSE_QUARANTINE,
    description="Every quarantined record is in the dead-letter topic once: DLQ records = quarantine rows.",
)
def dlq_matches_quarantine(
    kafka: KafkaResource, postgres: PostgresResource, pipeline: PipelineConfig
) -> AssetCheckResult:
    """The DLQ topic and the quarantine table hold the same records."""
    quarantined = int(postgres.scalar("SELECT count(*) FROM quarantine WHERE kafka_topic = %s", (pipeline.topic,)))
    try:
        in_dlq = sum(kafka.end_offsets(pipeline.dlq_topic).values())
    except TopicNotFoundError:
        in_dlq = 0
    return AssetCheckResult(
        passed=in_dlq == quarantined, metadata={"quarantine_rows": quarantined, "dlq_records": in_dlq}
    )


@asset_check(
    asset=WAREHOUSE_TRANSACTIONS,
    description=f"The newest {CONTRACT_SAMPLE_ROWS:,} rows satisfy the Pandera schema derived from the contract.",
)
def transactions_match_contract(postgres: PostgresResource) -> AssetCheckResult:
    """Types, enums, ISO codes, ranges and uniqueness of stored transactions."""
    with postgres.connection() as conn:
        frame = read_recent_transactions(conn, CONTRACT_SAMPLE_ROWS)
    try:
        transactions_schema().validate(frame, lazy=True)
    except SchemaErrors as exc:
        cases = exc.failure_cases
        return AssetCheckResult(
            passed=False,
            metadata={
                "rows_checked": len(frame),
                "failure_cases": len(cases),
                "first_failures": MetadataValue.text(cases.head(10).to_string()),
            },
        )
    return AssetCheckResult(passed=True, metadata={"rows_checked": len(frame)})
