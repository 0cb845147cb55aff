"""Dagster asset checks on a pipeline's sink tables (they run with the sink or on their own)."""

from dagster import AssetCheckResult, AssetChecksDefinition, AssetCheckSeverity, MetadataValue, asset_check
from pandera.errors import SchemaErrors

from tx_platform.assets import pipeline_keys
from tx_platform.checks._reconcile import loss_report, read_newest_rows
from tx_platform.checks._schemas import pipeline_schema
from tx_platform.errors import TopicNotFoundError
from tx_platform.pipelines import PipelineSpec
from tx_platform.resources import KafkaResource, PostgresResource

#: How many of the newest rows the contract check reads (a full scan would grow with the table).
CONTRACT_SAMPLE_ROWS = 50_000


def contract_check_name(spec: PipelineSpec) -> str:
    """``<table>_match_contract``: the Pandera check of the pipeline's table."""
    return f"{spec.table}_match_contract"


def build_sink_checks(spec: PipelineSpec) -> list[AssetChecksDefinition]:
    """The checks of the sink's tables of ``spec``.

    - ``no_unexplained_loss`` on ``warehouse/<table>`` (blocking): records read from the topic
      (committed offset ranges) = its rows in the table + its rows in quarantine, no key twice;
    - ``<table>_match_contract`` on ``warehouse/<table>``: the newest rows satisfy
      :func:`~tx_platform.checks.pipeline_schema` (contract types, enums, the spec's rules);
    - ``dlq_matches_quarantine`` on ``warehouse/<quarantine_asset>``: as many records in the
      dead-letter topic as quarantine rows from the topic.
    """
    keys = pipeline_keys(spec)

    @asset_check(
        asset=keys.table,
        name="no_unexplained_loss",
        description=f"Records read from `{spec.topic}` (committed offset ranges) = its rows in `{spec.table}` + its "
        f"rows in `quarantine`, exactly, and no {spec.natural_key} stored twice.",
        blocking=True,
    )
    def no_unexplained_loss(postgres: PostgresResource) -> AssetCheckResult:
        """Every record the sink consumed is stored exactly once, as a row or a quarantined record."""
        with postgres.connection() as conn:
            report = loss_report(conn, spec)
        return AssetCheckResult(
            passed=report.ok,
            severity=AssetCheckSeverity.ERROR,
            metadata={
                "records_read": report.records_read,
                "rows": report.rows,
                "quarantined": report.quarantined,
                "unexplained": report.unexplained,
                f"duplicate_{spec.natural_key}s": report.duplicate_ids,
                "lost_in_recorded_gaps": report.lost_in_gaps,
            },
        )

    @asset_check(
        asset=keys.quarantine,
        name="dlq_matches_quarantine",
        description=f"Every record quarantined from `{spec.topic}` is in `{spec.dlq_topic}` once: "
        "DLQ records = quarantine rows.",
    )
    def dlq_matches_quarantine(kafka: KafkaResource, postgres: PostgresResource) -> AssetCheckResult:
        """The DLQ topic and the topic's quarantine rows hold the same records."""
        quarantined = int(postgres.scalar("SELECT count(*) FROM quarantine WHERE kafka_topic = %s", (spec.topic,)))
        try:
            in_dlq = sum(kafka.end_offsets(spec.dlq_topic).values())
        except TopicNotFoundError:
            in_dlq = 0
        return AssetCheckResult(
            passed=in_dlq == quarantined, metadata={"quarantine_rows": quarantined, "dlq_records": in_dlq}
        )

    @asset_check(
        asset=keys.table,
        name=contract_check_name(spec),
        description=f"The newest {CONTRACT_SAMPLE_ROWS:,} rows of `{spec.table}` satisfy the Pandera schema derived "
        "from the contract and the pipeline's rules.",
    )
    def match_contract(postgres: PostgresResource) -> AssetCheckResult:
        """Types, enums, rules and uniqueness of the stored rows."""
        with postgres.connection() as conn:
            frame = read_newest_rows(conn, spec, CONTRACT_SAMPLE_ROWS)
        try:
            pipeline_schema(spec).validate(frame, lazy=True)
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

    return [no_unexplained_loss, match_contract, dlq_matches_quarantine]
