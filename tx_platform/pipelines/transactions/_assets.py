"""Derived assets of the `transactions` pipeline: four daily-partitioned tables rebuilt from `transactions` in SQL.

``warehouse/daily_merchant_summary``, ``warehouse/daily_category_volume``, ``warehouse/customer_daily_spend``
and ``warehouse/hourly_volume`` share one daily partitions definition (UTC), one job and one schedule:

- **automation**: each is ``AutomationCondition.eager()`` over yesterday's and today's partitions, and
  only while every blocking check of ``warehouse/transactions`` passed: after a sink run they refresh
  on their own (``transactions_automation_sensor``, RUNNING by default), and a failing
  ``no_unexplained_loss`` holds them back;
- **schedule**: ``transactions_daily_schedule`` (RUNNING by default) rebuilds yesterday and today at
  00:30 UTC, so a finished day is rebuilt once complete, whatever automation did;
- **backfill**: ``BackfillPolicy.single_run()``: a backfill of N days (UI, or ``dagster asset materialize
  --partition-range A...B``, which accepts only this policy) is one run recomputing its days one after
  the other, each day in its own transaction (a day is two SQL statements taking well under a second,
  so a year of days costs one process start instead of 365);
- **partitions** start at ``TXP_PARTITIONS_START`` (ISO date), by default 30 days before today, so the
  UI lists a month of days rather than every day since the earliest event time the sink accepts.
"""

import os
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    BackfillPolicy,
    Backoff,
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    RunRequest,
    ScheduleEvaluationContext,
    TableColumn,
    TableSchema,
    asset,
    define_asset_job,
    schedule,
)
from pandera.errors import SchemaErrors

from tx_platform.assets import DerivedDefinition, pipeline_keys
from tx_platform.checks._markdown import markdown_table, pandera_failures
from tx_platform.contract import EARLIEST_EVENT_TIME
from tx_platform.errors import ConfigError
from tx_platform.pipelines import PipelineSpec
from tx_platform.pipelines.transactions._fraud_assets import fraud_assets
from tx_platform.pipelines.transactions._summary import (
    DERIVED_TABLES,
    SUMMARY_TABLE,
    DerivedTable,
    derived_schema,
    read_days,
    rebuild_day,
    reconcile_days,
)
from tx_platform.resources import PostgresResource

DAILY_MERCHANT_SUMMARY = AssetKey(["warehouse", SUMMARY_TABLE])
#: Every derived asset's key, in declaration order.
DERIVED_KEYS: tuple[AssetKey, ...] = tuple(AssetKey(["warehouse", t.name]) for t in DERIVED_TABLES)

#: Environment variable of the first daily partition (ISO date, UTC).
PARTITIONS_START_ENV = "TXP_PARTITIONS_START"
#: Days of partitions before today when ``TXP_PARTITIONS_START`` is unset.
DEFAULT_PARTITION_DAYS = 30
#: How far back automation rebuilds, from the end of the latest partition: yesterday and today.
AUTOMATION_LOOKBACK = timedelta(days=2)
#: One run per backfill, whatever its days: a day's rebuild is cheap next to a run's start.
DERIVED_BACKFILL_POLICY = BackfillPolicy.single_run()
#: Who answers for the derived tables (shown in the UI).
OWNERS = ["team:data-platform"]
#: An idempotent rebuild may simply run again: a lost connection or a lock timeout costs a retry, not the run.
DERIVED_RETRY_POLICY = RetryPolicy(max_retries=2, delay=5, backoff=Backoff.EXPONENTIAL)

#: Why each table is computed where it is (said in each asset's description).
WHY_SQL = {
    "daily_merchant_summary": "SQL in Postgres: one day is a range scan of `transactions` on event_time and a "
    "GROUP BY over thousands of rows; moving them to Spark would cost more than the aggregation, and the result "
    "must replace the day in the same database transaction anyway.",
    "daily_category_volume": "SQL in Postgres: a GROUP BY of one day's rows on (MCC, currency) with two DISTINCT "
    "counts; the rows and the result live in Postgres, so a Spark batch would only add two copies of the day.",
    "customer_daily_spend": "SQL in Postgres: one pass over the day grouped by customer; the DELETE + INSERT must be "
    "one transaction in the warehouse, which a Spark JDBC write cannot give without a staging table.",
    "hourly_volume": "SQL in Postgres: 24 x currencies rows per day from one indexed range scan; generate_series "
    "fills quiet hours in the same statement, nothing a Spark batch would do better at this size.",
}


def partitions_start(today: date | None = None) -> date:
    """First daily partition: ``TXP_PARTITIONS_START`` when set, else ``DEFAULT_PARTITION_DAYS`` before ``today``.

    Never before the earliest event time the sink accepts (older records are quarantined, so such
    partitions would stay empty forever). Raises ConfigError for a value that is not an ISO date.
    """
    floor = EARLIEST_EVENT_TIME.date()
    raw = os.environ.get(PARTITIONS_START_ENV, "").strip()
    if raw:
        try:
            start = date.fromisoformat(raw)
        except ValueError as exc:
            msg = f"{PARTITIONS_START_ENV}={raw!r} is not an ISO date (YYYY-MM-DD)"
            raise ConfigError(msg) from exc
    else:
        start = (today or datetime.now(UTC).date()) - timedelta(days=DEFAULT_PARTITION_DAYS)
    return max(start, floor)


def daily_partitions(today: date | None = None) -> DailyPartitionsDefinition:
    """Daily partitions in UTC from :func:`partitions_start`; ``end_offset=1`` includes today, filled as the
    stream runs."""
    return DailyPartitionsDefinition(start_date=partitions_start(today).isoformat(), end_offset=1, timezone="UTC")


def derived_automation_condition() -> AutomationCondition:
    """``eager()`` over yesterday's and today's partitions, and only when every dependency's blocking checks passed.

    ``eager()`` alone looks at the latest partition (today) only: rows that arrive late for
    yesterday, and yesterday itself right after midnight, would never be rebuilt. Its
    ``in_latest_time_window()`` is replaced by one with a two-day lookback.
    """
    window = AutomationCondition.in_latest_time_window(AUTOMATION_LOOKBACK)
    eager = AutomationCondition.eager().replace(AutomationCondition.in_latest_time_window(), window)
    return (eager & AutomationCondition.all_deps_blocking_checks_passed()).with_label(
        "eager (yesterday and today), all dependencies' blocking checks passed"
    )


def column_schema(table: DerivedTable) -> TableSchema:
    """The table's columns as ``dagster/column_schema`` takes them."""
    return TableSchema(columns=[TableColumn(c.name, c.type, c.description) for c in table.columns])


def _derived_asset(spec: PipelineSpec, table: DerivedTable, partitions: DailyPartitionsDefinition) -> AssetsDefinition:
    key = AssetKey(["warehouse", table.name])
    source = pipeline_keys(spec).table

    @asset(
        key=key,
        deps=[source],
        partitions_def=partitions,
        group_name=spec.name,
        kinds={"postgres", "sql"},
        owners=OWNERS,
        tags={"txp/pipeline": spec.name, "txp/layer": "derived"},
        metadata={
            "dagster/column_schema": column_schema(table),
            "dagster/table_name": f"txp.public.{table.name}",
            "primary_key": ", ".join(("day", *table.key)),
        },
        description=f"{table.description} A day is recomputed from `{spec.table}` in one transaction (DELETE the "
        f"day, INSERT ... SELECT). Why {WHY_SQL[table.name]}",
        automation_condition=derived_automation_condition(),
        backfill_policy=DERIVED_BACKFILL_POLICY,
        retry_policy=DERIVED_RETRY_POLICY,
        check_specs=[
            AssetCheckSpec(
                "matches_schema",
                asset=key,
                blocking=True,
                description="Pandera schema of the table: types, ranges, codes, keys, the columns' relations.",
            ),
            AssetCheckSpec(
                "reconciles_with_transactions",
                asset=key,
                blocking=True,
                description=f"Per day and currency, {table.count_column} and {table.amount_column} add up to the "
                f"day's count and sum(amount) in `{spec.table}`, exactly.",
            ),
        ],
    )
    def _derived(
        context: AssetExecutionContext, postgres: PostgresResource
    ) -> Iterator[MaterializeResult | AssetCheckResult]:
        """Recompute the run's days (one, or a backfill's range), each in its own transaction, then check them."""
        days = [date.fromisoformat(k) for k in context.partition_keys]
        written: dict[str, int] = {}
        for day in days:
            # one transaction per day: a failure part-way keeps the days done, and retrying redoes them identically
            with postgres.connection() as conn:
                written[day.isoformat()] = rebuild_day(conn, table, day)
        with postgres.connection() as conn:
            frame = read_days(conn, table, days)
            recon = reconcile_days(conn, table, days)
        context.log.info(f"{table.name}: {sum(written.values())} rows over {len(days)} day(s): {written}")
        metadata: dict[str, MetadataValue] = {
            "days": MetadataValue.text(", ".join(written)),
            "rows_by_day": MetadataValue.json(written),
        }
        if len(days) == 1:
            metadata["dagster/row_count"] = MetadataValue.int(written[days[0].isoformat()])
        yield MaterializeResult(metadata=metadata)

        try:
            derived_schema(table.name).validate(frame, lazy=True)
            yield AssetCheckResult(
                check_name="matches_schema", passed=True, metadata={"rows_checked": MetadataValue.int(len(frame))}
            )
        except SchemaErrors as exc:
            yield AssetCheckResult(
                check_name="matches_schema",
                passed=False,
                severity=AssetCheckSeverity.ERROR,
                metadata=pandera_failures(frame, exc),
            )
        mismatches = recon.mismatches()
        yield AssetCheckResult(
            check_name="reconciles_with_transactions",
            passed=recon.matches,
            severity=AssetCheckSeverity.ERROR,
            metadata={
                "days": len(days),
                "currencies": len({c for _, c in recon.raw}),
                "transactions": sum(n for n, _ in recon.raw.values()),
                "summarised": sum(n for n, _ in recon.derived.values()),
                "mismatched_groups": len(mismatches),
                "sample_failing_rows": markdown_table(mismatches),
            },
        )

    return _derived


def daily_job_name(spec: PipelineSpec) -> str:
    """``<name>_daily_job``: every daily derived asset of the pipeline, one partition (or a range) per run."""
    return f"{spec.name}_daily_job"


def derived_assets(spec: PipelineSpec) -> list[DerivedDefinition]:
    """The four daily derived assets (each with two blocking checks), their job, schedule and automation sensor."""
    partitions = daily_partitions()
    assets = [_derived_asset(spec, table, partitions) for table in DERIVED_TABLES]
    job = define_asset_job(
        daily_job_name(spec),
        selection=AssetSelection.assets(*DERIVED_KEYS),
        description="Rebuild days of every daily derived table of the pipeline (one day, or a backfill's range).",
        tags={"txp/pipeline": spec.name},
    )

    @schedule(
        name=f"{spec.name}_daily_schedule",
        cron_schedule="30 0 * * *",
        execution_timezone="UTC",
        target=job,
        default_status=DefaultScheduleStatus.RUNNING,
        description="At 00:30 UTC, rebuild yesterday (now complete) and today (so far) of every daily derived table.",
    )
    def daily_schedule(context: ScheduleEvaluationContext) -> Iterator[RunRequest]:
        """Two runs per tick: yesterday and today (the tick's own UTC date)."""
        tick = context.scheduled_execution_time or datetime.now(UTC)
        today = tick.astimezone(UTC).date()
        for day in (today - timedelta(days=1), today):
            yield RunRequest(
                run_key=f"{today.isoformat()}:{day.isoformat()}",
                partition_key=day.isoformat(),
                tags={"txp/scheduled_for": today.isoformat()},
            )

    # Dagster's own default automation sensor starts STOPPED: this one evaluates the derived assets' conditions
    # from the first minute the daemon runs
    automation = AutomationConditionSensorDefinition(
        f"{spec.name}_automation_sensor",
        target=AssetSelection.assets(*DERIVED_KEYS),
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Evaluates the daily derived assets' automation conditions: after a sink run whose blocking "
        "checks passed, yesterday and today of each are rebuilt.",
    )
    return [*assets, job, daily_schedule, automation, *fraud_assets(spec)]
