"""Dagster asset checks on a pipeline's sink tables (they run with the sink or on their own)."""

from typing import Any

from dagster import AssetCheckResult, AssetChecksDefinition, AssetCheckSeverity, MetadataValue, asset_check
from pandera.errors import SchemaErrors
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from tx_platform.assets import pipeline_keys
from tx_platform.checks._markdown import SAMPLE_ROWS, markdown_table, pandera_failures
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


def loss_by_partition(conn: Connection, spec: PipelineSpec) -> list[dict[str, object]]:
    """Per Kafka partition of ``spec.topic``: records read (committed ranges minus recorded gaps), rows, quarantined.

    Only the partitions where they do not add up, in partition order: what a failed
    ``no_unexplained_loss`` shows.
    """
    query = sql.SQL(
        """
        WITH read AS (SELECT partition AS p, sum(next_offset - first_offset) AS n FROM sink_offsets
                      WHERE topic = %(t)s GROUP BY 1),
             gaps AS (SELECT partition AS p, sum(next_offset - first_offset) AS n FROM sink_gaps
                      WHERE topic = %(t)s GROUP BY 1),
             stored AS (SELECT kafka_partition AS p, count(*) AS n FROM {table} WHERE kafka_topic = %(t)s GROUP BY 1),
             quarantined AS (SELECT kafka_partition AS p, count(*) AS n FROM quarantine
                             WHERE kafka_topic = %(t)s GROUP BY 1),
             parts AS (SELECT p FROM read UNION SELECT p FROM stored UNION SELECT p FROM quarantined)
        SELECT parts.p, coalesce(read.n, 0) - coalesce(gaps.n, 0), coalesce(stored.n, 0), coalesce(quarantined.n, 0)
        FROM parts LEFT JOIN read USING (p) LEFT JOIN gaps USING (p) LEFT JOIN stored USING (p)
                   LEFT JOIN quarantined USING (p)
        ORDER BY parts.p
        """
    ).format(table=sql.Identifier(spec.table))
    with conn.cursor() as cur:
        cur.execute(query, {"t": spec.topic})
        rows = cur.fetchall()
    return [
        {"partition": p, "records_read": int(r), "rows": int(n), "quarantined": int(q), "unexplained": int(r - n - q)}
        for p, r, n, q in rows
        if r - n - q != 0
    ]


def duplicate_keys(conn: Connection, spec: PipelineSpec, limit: int = SAMPLE_ROWS) -> list[dict[str, object]]:
    """Natural keys of ``spec.topic`` stored more than once, with their copies' Kafka coordinates."""
    query = sql.SQL(
        "SELECT {key}::text, count(*), string_agg(kafka_partition || ':' || kafka_offset, ', ') FROM {table} "
        "WHERE kafka_topic = %s GROUP BY {key} HAVING count(*) > 1 ORDER BY {key} LIMIT %s"
    ).format(key=sql.Identifier(spec.natural_key), table=sql.Identifier(spec.table))
    with conn.cursor() as cur:
        cur.execute(query, (spec.topic, limit))
        return [{spec.natural_key: k, "copies": int(n), "partition:offset": at} for k, n, at in cur.fetchall()]


def build_sink_checks(spec: PipelineSpec) -> list[AssetChecksDefinition]:
    """The checks of the sink's tables of ``spec``, all blocking (a failure stops what depends on the table,
    in the same run and, through the derived assets' automation condition, in later ones).

    - ``no_unexplained_loss`` on ``warehouse/<table>``: records read from the topic (committed
      offset ranges) = its rows in the table + its rows in quarantine, no key twice;
    - ``<table>_match_contract`` on ``warehouse/<table>``: the newest rows satisfy
      :func:`~tx_platform.checks.pipeline_schema` (contract types, enums, the spec's rules);
    - ``dlq_matches_quarantine`` on ``warehouse/<quarantine_asset>``: as many records in the
      dead-letter topic as quarantine rows from the topic.

    A failure's metadata holds a markdown table of sample failing rows (``sample_failing_rows``).
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
            samples = [] if report.ok else [*loss_by_partition(conn, spec), *duplicate_keys(conn, spec)]
        metadata: dict[str, Any] = {
            "records_read": report.records_read,
            "rows": report.rows,
            "quarantined": report.quarantined,
            "unexplained": report.unexplained,
            f"duplicate_{spec.natural_key}s": report.duplicate_ids,
            "lost_in_recorded_gaps": report.lost_in_gaps,
        }
        if not report.ok:
            metadata["sample_failing_rows"] = markdown_table(samples)
        return AssetCheckResult(passed=report.ok, severity=AssetCheckSeverity.ERROR, metadata=metadata)

    @asset_check(
        asset=keys.quarantine,
        name="dlq_matches_quarantine",
        description=f"Every record quarantined from `{spec.topic}` is in `{spec.dlq_topic}` once: "
        "DLQ records = quarantine rows.",
        blocking=True,
    )
    def dlq_matches_quarantine(kafka: KafkaResource, postgres: PostgresResource) -> AssetCheckResult:
        """The DLQ topic and the topic's quarantine rows hold the same records."""
        quarantined = int(postgres.scalar("SELECT count(*) FROM quarantine WHERE kafka_topic = %s", (spec.topic,)))
        try:
            in_dlq = sum(kafka.end_offsets(spec.dlq_topic).values())
        except TopicNotFoundError:
            in_dlq = 0
        passed = in_dlq == quarantined
        metadata: dict[str, Any] = {"quarantine_rows": quarantined, "dlq_records": in_dlq}
        if not passed:
            with postgres.connection() as conn, conn.cursor() as cur:
                # the quarantine rows not yet marked as sent (their dlq_offset is set once the DLQ holds them)
                cur.execute(
                    "SELECT kafka_partition, kafka_offset, error_code, reason FROM quarantine "
                    "WHERE kafka_topic = %s AND dlq_offset IS NULL ORDER BY kafka_partition, kafka_offset LIMIT %s",
                    (spec.topic, SAMPLE_ROWS),
                )
                unsent = [dict(zip(("partition", "offset", "error_code", "reason"), r, strict=True)) for r in cur]
            metadata["sample_failing_rows"] = markdown_table(unsent)
        return AssetCheckResult(passed=passed, severity=AssetCheckSeverity.ERROR, metadata=metadata)

    @asset_check(
        asset=keys.table,
        name=contract_check_name(spec),
        description=f"The newest {CONTRACT_SAMPLE_ROWS:,} rows of `{spec.table}` satisfy the Pandera schema derived "
        "from the contract and the pipeline's rules.",
        blocking=True,
    )
    def match_contract(postgres: PostgresResource) -> AssetCheckResult:
        """Types, enums, rules and uniqueness of the stored rows."""
        with postgres.connection() as conn:
            frame = read_newest_rows(conn, spec, CONTRACT_SAMPLE_ROWS)
        try:
            pipeline_schema(spec).validate(frame, lazy=True)
        except SchemaErrors as exc:
            return AssetCheckResult(
                passed=False, severity=AssetCheckSeverity.ERROR, metadata=pandera_failures(frame, exc)
            )
        return AssetCheckResult(passed=True, metadata={"rows_checked": MetadataValue.int(len(frame))})

    return [no_unexplained_loss, match_contract, dlq_matches_quarantine]
