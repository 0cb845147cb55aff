"""End to end through Kafka, Spark, Postgres and Dagster, with exact numbers from a seeded producer."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from dagster import AssetSelection, DagsterInstance, build_sensor_context, materialize

from tx_platform.config import Settings
from tx_platform.definitions import ASSET_CHECKS, ASSETS, build_resources, sink_job
from tx_platform.producer import generate, open_producer, produce
from tx_platform.sensors import build_kafka_lag_sensor
from tx_platform_tests.conftest import fetch_one

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COUNT = 10_000
SEED = 20_260_301
START = datetime(2026, 3, 1, 6, tzinfo=UTC)  # 24 h from here: partitions 2026-03-01 and 2026-03-02


def test_seeded_transactions_flow_exactly_once(spark, settings: Settings) -> None:  # noqa: ANN001
    dsn = settings.dsn()
    instance = DagsterInstance.ephemeral()
    resources = build_resources(settings)
    everything = [*ASSETS, *ASSET_CHECKS]

    def run(selection: AssetSelection, partition_key: str | None = None):  # noqa: ANN202
        result = materialize(
            everything, selection=selection, resources=resources, instance=instance, partition_key=partition_key
        )
        assert result.success
        return result

    run(AssetSelection.assets("kafka/transactions"))
    producer, _ = open_producer(settings.kafka_bootstrap, settings.topic, settings.schema_registry_url)
    report = produce(generate(COUNT, SEED, START), producer)
    assert (report.sent, report.delivered, report.failed) == (COUNT, COUNT, 0)
    expected_sum = sum((r["amount"] for r in generate(COUNT, SEED, START)), start=Decimal(0))

    sensor = build_kafka_lag_sensor(sink_job)
    behind = sensor(build_sensor_context(instance=instance, resources=resources))
    assert [r.tags["txp/lag"] for r in behind.run_requests] == [str(COUNT)]
    assert behind.asset_events[0].metadata["lag"].value == COUNT

    sink = run(AssetSelection.assets("warehouse/transactions", "warehouse/quarantine"))
    checks = {e.check_name: e.passed for e in sink.get_asset_check_evaluations()}
    assert checks == {"no_unexplained_loss": True, "transactions_match_contract": True, "dlq_matches_quarantine": True}
    rows, amount = fetch_one(
        dsn, "SELECT count(*), sum(amount) FROM transactions WHERE kafka_topic = %s", settings.topic
    )
    assert (rows, amount) == (COUNT, expected_sum)
    (quarantined,) = fetch_one(dsn, "SELECT count(*) FROM quarantine WHERE kafka_topic = %s", settings.topic)
    assert quarantined == 0

    caught_up = sensor(build_sensor_context(instance=instance, resources=resources))
    assert not caught_up.run_requests and "caught up: lag 0" in caught_up.skip_reason.skip_message

    second = run(AssetSelection.assets("warehouse/transactions", "warehouse/quarantine"))
    meta = second.asset_materializations_for_node("transactions_sink")[0].metadata
    assert meta["records_read"].value == 0 and meta["rows_inserted"].value == 0
    assert fetch_one(dsn, "SELECT count(*) FROM transactions WHERE kafka_topic = %s", settings.topic)[0] == COUNT

    days = [START.date(), (START + timedelta(days=1)).date()]
    for day in days:
        summary = run(AssetSelection.assets("warehouse/daily_merchant_summary"), day.isoformat())
        assert {e.check_name: e.passed for e in summary.get_asset_check_evaluations()} == {
            "matches_schema": True,
            "reconciles_with_transactions": True,
        }
    count, total = fetch_one(
        dsn,
        "SELECT sum(transaction_count), sum(total_amount) FROM daily_merchant_summary WHERE day = ANY(%s)",
        days,
    )
    assert (count, total) == (COUNT, expected_sum)


def test_demo_prints_reconciled_summary_and_keeps_dagster_runs_in_postgres(test_stack, stack_env) -> None:  # noqa: ANN001
    import psycopg2

    from tx_platform.demo import run_demo

    summary = run_demo(test_stack, count=2_000, seed=77, reset=True, bad_ratio=0.02, log=lambda _m: None)
    assert summary.ok, summary
    assert summary.produced == 2_000 and summary.injected_bad > 12  # every fault kind at least once
    assert summary.transactions_rows + summary.quarantined == 2_000
    assert summary.quarantined == summary.injected_bad == summary.dlq and summary.lag == 0
    assert summary.checks_failed == 0 and summary.checks_passed == 3 + 2 * len(summary.partitions)
    url = stack_env["TXP_DAGSTER_PG_URL"].replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE status = 'SUCCESS'")
        assert cur.fetchone()[0] >= 1 + 1 + len(summary.partitions)
    conn.close()
