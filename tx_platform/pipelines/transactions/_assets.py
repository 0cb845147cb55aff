"""Derived assets of the `transactions` pipeline: `daily_merchant_summary`, one daily partition at a time."""

from collections.abc import Iterator
from datetime import date

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
    build_schedule_from_partitioned_job,
    define_asset_job,
)
from pandera.errors import SchemaErrors

from tx_platform.assets import DerivedDefinition, pipeline_keys
from tx_platform.contract import EARLIEST_EVENT_TIME
from tx_platform.pipelines import PipelineSpec
from tx_platform.pipelines.transactions._summary import (
    SUMMARY_TABLE,
    daily_merchant_summary_schema,
    daily_reconciliation,
    read_daily_merchant_summary,
    rebuild_daily_merchant_summary,
)
from tx_platform.resources import PostgresResource

DAILY_MERCHANT_SUMMARY = AssetKey(["warehouse", SUMMARY_TABLE])

#: Daily partitions in UTC; end_offset=1 includes today, which fills up as the stream runs. They
#: start at the earliest event time the sink accepts (older records are quarantined as EVENT_TIME_TOO_OLD).
DAILY_PARTITIONS = DailyPartitionsDefinition(start_date=EARLIEST_EVENT_TIME.date().isoformat(), end_offset=1)


def derived_assets(spec: PipelineSpec) -> list[DerivedDefinition]:
    """`warehouse/daily_merchant_summary` (daily partitions, two checks), its job and its nightly schedule."""
    table = pipeline_keys(spec).table

    @asset(
        key=DAILY_MERCHANT_SUMMARY,
        deps=[table],
        partitions_def=DAILY_PARTITIONS,
        group_name=spec.name,
        kinds={"postgres", "pandas"},
        description=f"Per day (UTC), merchant and currency: counts, amounts, refunds, unique cards. A partition is "
        f"rebuilt atomically from `{spec.table}` in Postgres, then checked.",
        check_specs=[
            AssetCheckSpec("matches_schema", asset=DAILY_MERCHANT_SUMMARY, description="Pandera schema of the table."),
            AssetCheckSpec(
                "reconciles_with_transactions",
                asset=DAILY_MERCHANT_SUMMARY,
                description=f"Per currency, counts and amounts equal those of the day in `{spec.table}`.",
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

    job = define_asset_job(
        "daily_merchant_summary_job",
        selection=AssetSelection.assets(DAILY_MERCHANT_SUMMARY),
        description="Rebuild one day of daily_merchant_summary.",
    )
    schedule = build_schedule_from_partitioned_job(job, hour_of_day=0, minute_of_hour=30)
    return [daily_merchant_summary, job, schedule]
