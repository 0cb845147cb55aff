"""Dagster used as its users expect: schedule, partitions, automation, blocking checks, lineage, pools, metadata."""

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from dagster import (
    AssetKey,
    AssetsDefinition,
    AutomationCondition,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    build_schedule_context,
)
from pandera.errors import SchemaErrors

from tx_platform.assets import build_pipeline_assets, migrations_column_schema, sink_pool
from tx_platform.checks._markdown import markdown_table, pandera_failures
from tx_platform.contract import EARLIEST_EVENT_TIME
from tx_platform.errors import ConfigError
from tx_platform.pipelines import CRYPTO_TRADES, TRANSACTIONS
from tx_platform.pipelines.transactions._assets import (
    DERIVED_KEYS,
    PARTITIONS_START_ENV,
    daily_partitions,
    derived_automation_condition,
    partitions_start,
)
from tx_platform.pipelines.transactions._summary import DERIVED_TABLES, derived_schema
from tx_platform_tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.unit

TABLE = AssetKey(["warehouse", "transactions"])


def _defs():  # noqa: ANN202 - Definitions
    from tx_platform.definitions import defs

    return defs


def test_the_schedule_rebuilds_yesterday_and_today_and_starts_running() -> None:
    repository = _defs().get_repository_def()
    schedule = repository.get_schedule_def("transactions_daily_schedule")
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 0 * * *", "UTC")
    today = datetime.now(UTC).date()
    tick = datetime(today.year, today.month, today.day, 0, 30, tzinfo=UTC)
    with build_schedule_context(scheduled_execution_time=tick, repository_def=repository) as context:
        requests = list(schedule.evaluate_tick(context).run_requests or [])
    assert [r.partition_key for r in requests] == [(today - timedelta(days=1)).isoformat(), today.isoformat()]
    assert len({r.run_key for r in requests}) == 2


def test_partitions_start_a_month_back_or_where_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PARTITIONS_START_ENV, raising=False)
    today = date(2026, 11, 25)
    assert partitions_start(today) == date(2026, 10, 26)
    keys = daily_partitions(today).get_partition_keys(current_time=datetime(2026, 11, 25, 12, tzinfo=UTC))
    assert (keys[0], keys[-1], len(keys)) == ("2026-10-26", "2026-11-25", 31)  # today included (end_offset=1)
    monkeypatch.setenv(PARTITIONS_START_ENV, "2026-11-20")
    assert partitions_start(today) == date(2026, 11, 20)
    monkeypatch.setenv(PARTITIONS_START_ENV, "2020-01-01")  # before the earliest event time the sink accepts
    assert partitions_start(today) == EARLIEST_EVENT_TIME.date()
    monkeypatch.setenv(PARTITIONS_START_ENV, "yesterday")
    with pytest.raises(ConfigError, match=r"TXP_PARTITIONS_START='yesterday' is not an ISO date"):
        partitions_start(today)


def test_derived_assets_are_eager_behind_blocking_checks_with_backfill_and_retry_policies() -> None:
    graph = _defs().resolve_asset_graph()
    condition = derived_automation_condition()
    # eager(), with its latest-window test widened to two days, AND all dependencies' blocking checks passed
    assert AutomationCondition.all_deps_blocking_checks_passed() in condition.children
    eager = next(c for c in condition.children if c.get_label() == "eager")
    assert AutomationCondition.in_latest_time_window(timedelta(days=2)) in eager.children
    for key in DERIVED_KEYS:
        node = graph.get(key)
        assert node.automation_condition == condition
        assert node.backfill_policy is not None and node.backfill_policy.max_partitions_per_run is None  # single run
        assert node.parent_keys == {TABLE}
    built = build_pipeline_assets(TRANSACTIONS)
    retries = {
        key: assets_def.op.retry_policy
        for assets_def in built.assets
        if isinstance(assets_def, AssetsDefinition)
        for key in assets_def.keys
    }
    for key in DERIVED_KEYS:
        policy = retries[key]
        assert policy is not None and policy.max_retries == 2
    assert retries[built.keys.topic] is not None and retries[built.keys.dlq] is not None
    assert retries[TABLE] is None  # the sink: the lag sensor retries it with backoff
    sensor = _defs().get_repository_def().get_sensor_def("transactions_automation_sensor")
    assert sensor.default_status == DefaultSensorStatus.RUNNING


def test_every_check_is_blocking_and_the_dlq_follows_the_sink() -> None:
    graph = _defs().resolve_asset_graph()
    for spec in (TRANSACTIONS, CRYPTO_TRADES):
        built = build_pipeline_assets(spec)
        specs = [s for a in built.materializable for s in a.check_specs]
        assert len(specs) >= 3 and all(s.blocking for s in specs), [s.name for s in specs if not s.blocking]
        assert graph.get(built.keys.dlq).parent_keys == set(built.keys.sink)
    names = {(s.asset_key.to_user_string(), s.name) for a in build_pipeline_assets(TRANSACTIONS).materializable
             for s in a.check_specs}  # fmt: skip
    assert {("warehouse/transactions", "no_unexplained_loss"), ("warehouse/quarantine", "dlq_matches_quarantine"),
            ("warehouse/daily_merchant_summary", "reconciles_with_transactions")} <= names  # fmt: skip


def test_one_sink_per_pipeline_through_its_pool_and_a_freshness_policy_on_its_table() -> None:
    graph = _defs().resolve_asset_graph()
    for spec in (TRANSACTIONS, CRYPTO_TRADES):
        built = build_pipeline_assets(spec)
        sink = next(a for a in built.materializable if built.keys.table in a.keys)
        assert sink.op.pool == f"sink_{spec.name}" == sink_pool(spec)
        policy = graph.get(built.keys.table).freshness_policy
        assert policy is not None and policy.fail_window.to_timedelta() == timedelta(hours=6)


def test_assets_carry_column_schema_table_name_owners_kinds_tags_and_code() -> None:
    graph = _defs().resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.owners == ["team:data-platform"], key
        assert node.kinds, key
        assert node.tags["txp/pipeline"] == node.group_name, key
        assert "dagster/code_references" in node.metadata, key
    table = graph.get(TABLE).metadata
    columns = [c.name for c in table["dagster/column_schema"].columns]
    assert columns == [
        *TRANSACTIONS.contract.field_names,
        "kafka_topic",
        "kafka_partition",
        "kafka_offset",
        "ingested_at",
    ]
    assert table["dagster/table_name"] == "txp.public.transactions"
    for derived in DERIVED_TABLES:
        metadata = graph.get(AssetKey(["warehouse", derived.name])).metadata
        declared = [(c.name, c.type) for c in metadata["dagster/column_schema"].columns]
        assert declared == [(c.name, c.type) for c in derived.columns]
        # the declared columns are the migration's, exactly
        from_sql = migrations_column_schema(TRANSACTIONS, derived.name)
        assert from_sql is not None and [(c.name, c.type) for c in from_sql.columns] == declared
        assert metadata["dagster/table_name"] == f"txp.public.{derived.name}"
    for key in graph.get_all_asset_keys():
        if key.path[0] == "warehouse" and key.path[-1] not in {"quarantine", "crypto_trades_quarantine"}:
            assert "dagster/column_schema" in graph.get(key).metadata, key


def test_no_private_dagster_import_anywhere_in_the_package() -> None:
    private = re.compile(r"^\s*(from|import)\s+dagster\._", re.MULTILINE)
    offenders = [str(p) for p in (PROJECT_ROOT / "tx_platform").rglob("*.py") if private.search(p.read_text("utf-8"))]
    assert offenders == []
    lag = _defs().get_repository_def().get_sensor_def("transactions_lag_sensor")
    assert [t.job_name for t in lag.targets] == ["transactions_sink_job"]  # @sensor(target=the sink job)


def test_a_failed_schema_check_shows_the_failing_rows_as_a_markdown_table() -> None:
    frame = pd.DataFrame(
        {
            "day": [date(2026, 1, 1)] * 2,
            "hour": [3, 24],
            "currency": ["EUR", "EUR"],
            "transaction_count": [2, 1],
            "total_amount": [Decimal("10.00"), Decimal("5.00")],
            "unique_accounts": [2, 1],
        }
    )
    with pytest.raises(SchemaErrors) as failed:
        derived_schema("hourly_volume").validate(frame, lazy=True)
    metadata = pandera_failures(frame, failed.value)
    lines = metadata["sample_failing_rows"].value.splitlines()
    assert lines[0] == "| failed | day | hour | currency | transaction_count | total_amount | unique_accounts |"
    # the row itself (hour 24), with the check it failed; then the frame-level failure (not 24 hours per currency)
    assert lines[2] == "| hour: in_range(0, 23) | 2026-01-01 | 24 | EUR | 1 | 5.00 | 1 |"
    assert any("twenty_four_hours" in line for line in lines[3:])
    assert markdown_table([{"a": "x|y"}] * 12, limit=2).value.splitlines()[2:] == [
        "| x\\|y |",
        "| x\\|y |",
        "",
        "_10 more failing row(s) not shown_",
    ]


def test_the_workspace_serves_the_definitions_module() -> None:
    assert "module_name: tx_platform.definitions" in Path(PROJECT_ROOT / "workspace.yaml").read_text("utf-8")
