"""The daily derived tables against the generator's own records, with automation and blocking checks, on the real stack.

Seeded records are written straight into `transactions` (with the Kafka coordinates the sink would
give them) on three days of March 2025 no other test uses; each derived table is then compared,
row by row and exactly, with what plain Python computes from the same records.
"""

import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetSelection,
    DagsterInstance,
    evaluate_automation_conditions,
    instance_for_test,
    materialize,
)
from psycopg2.extras import execute_values

from tx_platform.assets import build_pipeline_assets, pipeline_keys
from tx_platform.config import Settings
from tx_platform.definitions import build_resources
from tx_platform.pipelines import TRANSACTIONS, PipelineSpec
from tx_platform.pipelines.transactions._assets import DERIVED_KEYS, PARTITIONS_START_ENV, daily_job_name
from tx_platform_tests.conftest import PROJECT_ROOT, fetch_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START = datetime(2025, 3, 11, tzinfo=UTC)
DAYS = [date(2025, 3, 11), date(2025, 3, 12), date(2025, 3, 13)]
COUNT, SEED = 2_400, 20_250_311
#: The automation's "now": noon of the last day, so yesterday and today are the 12th and 13th.
EVALUATED_AT = datetime(2025, 3, 13, 12, tzinfo=UTC)
CENT = Decimal("0.01")
TABLES = ("daily_merchant_summary", "daily_category_volume", "customer_daily_spend", "hourly_volume")


def _records(count: int = COUNT, seed: int = SEED) -> list[dict[str, Any]]:
    return list(TRANSACTIONS.generate(count, seed, START, span=timedelta(days=len(DAYS))))


def _insert(dsn: str, topic: str, records: Iterable[dict[str, Any]], first_offset: int = 0) -> int:
    fields = list(TRANSACTIONS.contract.field_names)
    rows = [(*(r[f] for f in fields), topic, 0, first_offset + i) for i, r in enumerate(records)]
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        execute_values(
            cur,
            f"INSERT INTO transactions ({', '.join(fields)}, kafka_topic, kafka_partition, kafka_offset) VALUES %s",  # noqa: S608
            rows,
        )
    conn.close()
    return len(rows)


def _record_offsets(dsn: str, topic: str, next_offset: int) -> None:
    """What the sink commits with its rows: the offsets read, so that no_unexplained_loss can pass."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO sink_offsets (topic, partition, first_offset, next_offset, batch_id) VALUES (%s, 0, 0, %s, 0) "
            "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
            (topic, next_offset),
        )
    conn.close()


def _clean(dsn: str, topic: str) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "DELETE FROM transactions WHERE event_time >= %s AND event_time < %s",
            (START, START + timedelta(days=len(DAYS))),
        )
        cur.execute("DELETE FROM sink_offsets WHERE topic = %s", (topic,))
        for table in TABLES:
            cur.execute(f"DELETE FROM {table} WHERE day = ANY(%s)", (DAYS,))  # noqa: S608 - constant names
    conn.close()


def _day(r: dict[str, Any]) -> date:
    return r["event_time"].astimezone(UTC).date()


def _groups(records: Iterable[dict[str, Any]], *key: str) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(_day(r), *(r[k] for k in key))].append(r)
    return groups


def _sum(rows: Iterable[dict[str, Any]], *types: str) -> Decimal:
    return sum((r["amount"] for r in rows if not types or r["transaction_type"] in types), Decimal(0))


def _count(rows: Iterable[dict[str, Any]], kind: str) -> int:
    return sum(1 for r in rows if r["transaction_type"] == kind)


def expected(table: str, records: list[dict[str, Any]]) -> list[tuple]:
    """The rows ``table`` must hold for the records' days, in key order, computed in plain Python."""
    out: list[tuple] = []
    if table == "daily_merchant_summary":
        for (day, merchant, currency), rows in _groups(records, "merchant_id", "currency").items():
            total = _sum(rows)
            out.append((
                day, merchant, currency, min(r["merchant_category"] for r in rows), min(r["country"] for r in rows),
                len(rows), _count(rows, "PURCHASE"), _count(rows, "REFUND"), total, _sum(rows, "PURCHASE"),
                _sum(rows, "REFUND"), (total / len(rows)).quantize(CENT, ROUND_HALF_UP),
                len({r["card_id"] for r in rows}), min(r["event_time"] for r in rows),
                max(r["event_time"] for r in rows),
            ))  # fmt: skip
    elif table == "daily_category_volume":
        for (day, mcc, currency), rows in _groups(records, "merchant_category", "currency").items():
            out.append((
                day, mcc, currency, len(rows), _count(rows, "PURCHASE"), _count(rows, "REFUND"), _sum(rows),
                _sum(rows, "PURCHASE"), _sum(rows, "REFUND"), len({r["merchant_id"] for r in rows}),
                len({r["card_id"] for r in rows}),
            ))  # fmt: skip
    elif table == "customer_daily_spend":
        for (day, customer, currency), rows in _groups(records, "customer_id", "currency").items():
            out.append((
                day, customer, currency, len(rows), _sum(rows), _sum(rows, "PURCHASE", "WITHDRAWAL", "TRANSFER"),
                _sum(rows, "REFUND"), len({r["merchant_id"] for r in rows}), len({r["card_id"] for r in rows}),
                min(r["event_time"] for r in rows), max(r["event_time"] for r in rows),
            ))  # fmt: skip
    elif table == "hourly_volume":
        by_hour = _groups(records, "currency")
        for (day, currency), rows in by_hour.items():
            for hour in range(24):
                in_hour = [r for r in rows if r["event_time"].astimezone(UTC).hour == hour]
                out.append((day, hour, currency, len(in_hour), _sum(in_hour), len({r["account_id"] for r in in_hour})))
    return sorted(out)


def stored(dsn: str, table: str) -> list[tuple]:
    """The table's rows for the test's days, every column but computed_at, in key order."""
    columns = [c for (c,) in fetch_all(dsn, "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
               "AND column_name <> 'computed_at' ORDER BY ordinal_position", table)]  # fmt: skip
    rows = fetch_all(dsn, f"SELECT {', '.join(columns)} FROM {table} WHERE day = ANY(%s)", DAYS)  # noqa: S608
    return sorted(rows)


@pytest.fixture
def march(spec: PipelineSpec, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The seeded records in `transactions` (no offsets recorded yet), partitions from March 2025; cleaned after."""
    monkeypatch.setenv(PARTITIONS_START_ENV, "2025-03-01")
    dsn = settings.dsn()
    _clean(dsn, spec.topic)
    records = _records()
    assert {_day(r) for r in records} == set(DAYS)  # every day has records
    _insert(dsn, spec.topic, records)
    yield records
    _clean(dsn, spec.topic)


def _requested(instance: DagsterInstance, defs: Any, cursor: Any) -> tuple[dict[AssetKey, set[str]], Any]:  # noqa: ANN401
    result = evaluate_automation_conditions(defs, instance, evaluation_time=EVALUATED_AT, cursor=cursor)
    requested = {key: set(result.get_requested_partitions(key)) for key in DERIVED_KEYS}
    return {k: v for k, v in requested.items() if v}, result.cursor


def test_automation_waits_for_blocking_checks_then_rebuilds_yesterday_and_today_exactly(
    spec: PipelineSpec, settings: Settings, march: list[dict[str, Any]]
) -> None:
    dsn = settings.dsn()
    built = build_pipeline_assets(spec)
    table = pipeline_keys(spec).table
    resources = build_resources(settings)
    defs = built.to_definitions(resources)
    with instance_for_test() as instance:
        requested, cursor = _requested(instance, defs, None)
        assert requested == {}  # the sink's table was never materialized: nothing to derive yet

        # the sink materialized its table, but the rows it holds were never read from Kafka (no committed offsets)
        instance.report_runless_asset_event(AssetMaterialization(asset_key=table))
        checks = materialize(
            built.materializable,
            selection=AssetSelection.checks_for_assets(table),
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        results = {e.check_name: e for e in checks.get_asset_check_evaluations()}
        loss = results["no_unexplained_loss"]
        assert not loss.passed and loss.metadata["unexplained"].value == -COUNT
        # the failure shows its failing rows: partition 0 holds COUNT rows that no offset range accounts for
        sample = loss.metadata["sample_failing_rows"].value
        assert sample.splitlines()[:3] == [
            "| partition | records_read | rows | quarantined | unexplained |",
            "|---|---|---|---|---|",
            f"| 0 | 0 | {COUNT} | 0 | {-COUNT} |",
        ]
        requested, cursor = _requested(instance, defs, cursor)
        assert requested == {}  # the failing blocking check holds every derived asset back

        _record_offsets(dsn, spec.topic, COUNT)
        checks = materialize(
            built.materializable, selection=AssetSelection.checks_for_assets(table), resources=resources,
            instance=instance,
        )  # fmt: skip
        assert {e.check_name: e.passed for e in checks.get_asset_check_evaluations()} == {
            "no_unexplained_loss": True,
            f"{spec.table}_match_contract": True,
        }
        requested, cursor = _requested(instance, defs, cursor)
        # the sink's update, now vouched for, requests yesterday and today of every derived asset
        assert requested == dict.fromkeys(DERIVED_KEYS, {"2025-03-12", "2025-03-13"})

        # one run for both days (a range, as a backfill runs them)
        job = defs.resolve_job_def(daily_job_name(spec))
        run = job.execute_in_process(
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": "2025-03-12",
                "dagster/asset_partition_range_end": "2025-03-13",
            },
        )
        assert run.success
        materialized = {(e.asset_key, e.partition) for e in run.get_asset_materialization_events()}
        assert materialized == {(k, d) for k in DERIVED_KEYS for d in ("2025-03-12", "2025-03-13")}
        evaluations = [(e.asset_key, e.check_name, e.passed) for e in run.get_asset_check_evaluations()]
        assert sorted(evaluations) == sorted(
            (k, c, True) for k in DERIVED_KEYS for c in ("matches_schema", "reconciles_with_transactions")
        )
        requested, cursor = _requested(instance, defs, cursor)
        assert requested == {}  # handled: nothing new

    later = [r for r in march if _day(r) != DAYS[0]]
    for name in TABLES:
        assert stored(dsn, name) == expected(name, later), name


def test_the_cli_backfills_a_range_and_a_day_recomputes_idempotently_with_late_rows(
    spec: PipelineSpec, settings: Settings, march: list[dict[str, Any]], tmp_path: Path
) -> None:
    dsn = settings.dsn()
    _record_offsets(dsn, spec.topic, COUNT)
    select = ",".join(k.to_user_string() for k in DERIVED_KEYS)
    env = {**os.environ, PARTITIONS_START_ENV: "2025-03-01", "DAGSTER_HOME": str(tmp_path)}

    def cli_backfill(partition_range: str) -> subprocess.CompletedProcess[str]:
        argv = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "tx_platform.definitions",
                "--select", select, "--partition-range", partition_range]  # fmt: skip
        return subprocess.run(  # noqa: S603 - our own argv
            argv, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False
        )

    done = cli_backfill("2025-03-11...2025-03-13")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RUN_SUCCESS" in done.stderr
    for name in TABLES:
        assert stored(dsn, name) == expected(name, march), name

    # a record of the 11th arrives late: recomputing the day counts it; the other days stay as they were
    late = _records(count=1, seed=SEED + 1)[0]
    late["event_time"] = START + timedelta(hours=23, minutes=59)
    _insert(dsn, spec.topic, [late], first_offset=COUNT)
    _record_offsets(dsn, spec.topic, COUNT + 1)
    before = {name: stored(dsn, name) for name in TABLES}
    built = build_pipeline_assets(spec)
    with instance_for_test() as instance:
        again = materialize(
            built.materializable,
            selection=AssetSelection.assets(*DERIVED_KEYS),
            partition_key="2025-03-11",
            resources=build_resources(settings),
            instance=instance,
        )
    assert {(e.asset_key, e.partition) for e in again.get_asset_materialization_events()} == {
        (k, "2025-03-11") for k in DERIVED_KEYS
    }
    for name in TABLES:
        rows = stored(dsn, name)
        assert rows == expected(name, [*march, late]), name
        assert [r for r in rows if r[0] != DAYS[0]] == [r for r in before[name] if r[0] != DAYS[0]], name
    assert sum(r[3] for r in stored(dsn, "daily_category_volume") if r[0] == DAYS[0]) == 1 + sum(
        1 for r in march if _day(r) == DAYS[0]
    )
