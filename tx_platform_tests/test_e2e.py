"""End to end through Kafka, Spark, Postgres and Dagster, with exact numbers from a seeded producer."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from dagster import AssetSelection, DagsterInstance, build_sensor_context, materialize

from tx_platform.config import Settings
from tx_platform.definitions import build_resources, pipeline_definitions
from tx_platform.pipelines import PIPELINES, PipelineSpec
from tx_platform.pipelines.transactions._assets import PARTITIONS_START_ENV
from tx_platform.producer import faults_for, open_producer, produce
from tx_platform_tests.conftest import fetch_one

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COUNT = 10_000
SEED = 20_260_301
START = datetime(2026, 3, 1, 6, tzinfo=UTC)  # 24 h from here: partitions 2026-03-01 and 2026-03-02


def test_seeded_transactions_flow_exactly_once(
    spark,  # noqa: ANN001
    spec: PipelineSpec,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the seeded days are older than the default partitions' start (30 days back)
    monkeypatch.setenv(PARTITIONS_START_ENV, START.date().isoformat())
    dsn = settings.dsn()
    instance = DagsterInstance.ephemeral()
    resources = build_resources(settings)
    pipeline = pipeline_definitions(spec)
    everything = pipeline.materializable

    def run(selection: AssetSelection, partition_key: str | None = None):  # noqa: ANN202
        result = materialize(
            everything, selection=selection, resources=resources, instance=instance, partition_key=partition_key
        )
        assert result.success
        return result

    run(AssetSelection.assets(pipeline.keys.topic))
    producer, _ = open_producer(spec, settings.kafka_bootstrap, settings.schema_registry_url)
    report = produce(spec.generate(COUNT, SEED, START), producer)
    assert (report.sent, report.delivered, report.failed) == (COUNT, COUNT, 0)
    expected_sum = sum((r["amount"] for r in spec.generate(COUNT, SEED, START)), start=Decimal(0))
    assert producer.good_totals == {"amount": expected_sum}

    [sensor] = [s for s in pipeline.sensors if s.name.endswith("_lag_sensor")]
    assert (sensor.name, sensor.job_name) == ("transactions_lag_sensor", "transactions_sink_job")
    behind = sensor(build_sensor_context(instance=instance, resources=resources))
    assert [r.tags["txp/lag"] for r in behind.run_requests] == [str(COUNT)]
    assert behind.asset_events[0].asset_key == pipeline.keys.topic
    assert behind.asset_events[0].metadata["lag"].value == COUNT

    sink = run(pipeline.sink_job.selection)
    checks = {e.check_name: e.passed for e in sink.get_asset_check_evaluations()}
    assert checks == {"no_unexplained_loss": True, "transactions_match_contract": True, "dlq_matches_quarantine": True}
    rows, amount = fetch_one(dsn, "SELECT count(*), sum(amount) FROM transactions WHERE kafka_topic = %s", spec.topic)
    assert (rows, amount) == (COUNT, expected_sum)
    (quarantined,) = fetch_one(dsn, "SELECT count(*) FROM quarantine WHERE kafka_topic = %s", spec.topic)
    assert quarantined == 0

    caught_up = sensor(build_sensor_context(instance=instance, resources=resources))
    assert not caught_up.run_requests and "caught up: lag 0" in caught_up.skip_reason.skip_message

    second = run(AssetSelection.assets(*pipeline.keys.sink))
    meta = second.asset_materializations_for_node("transactions_sink")[0].metadata
    assert meta["records_read"].value == 0 and meta["rows_inserted"].value == 0
    assert fetch_one(dsn, "SELECT count(*) FROM transactions WHERE kafka_topic = %s", spec.topic)[0] == COUNT

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


def _expected_checks(partitions: dict[str, list[str]]) -> int:
    """Checks the demo runs: every check of every pipeline's assets, those of partitioned assets per partition."""
    total = 0
    for name, spec in PIPELINES.items():
        built = pipeline_definitions(spec)
        partitioned = {k for a in built.partitioned_assets() for k in a.keys}
        for assets_def in built.materializable:
            for check in assets_def.check_keys:
                runs = len(partitions[name]) if check.asset_key in partitioned else 1
                total += runs
    return total


def test_demo_runs_every_pipeline_reconciled_and_keeps_dagster_runs_in_postgres(test_stack, stack_env) -> None:  # noqa: ANN001
    import psycopg2

    from tx_platform.demo import run_demo, summary_json

    summary = run_demo(
        test_stack,
        counts={"transactions": 2_000, "crypto_trades": 1_500},
        seed=77,
        reset=True,
        bad_ratio=0.02,
        log=lambda _m: None,
    )
    assert summary.ok, summary_json(summary)
    assert list(summary.pipelines) == ["transactions", "crypto_trades"]
    transactions, trades = summary.pipelines["transactions"], summary.pipelines["crypto_trades"]
    assert (transactions.produced, trades.produced) == (2_000, 1_500)
    dsn = stack_env["TXP_POSTGRES_DSN"]
    for name, figures in summary.pipelines.items():
        spec = PIPELINES[name]
        assert figures.rows + figures.quarantined == figures.produced
        assert figures.quarantined == figures.injected_bad == figures.dlq and figures.lag == 0
        assert all(s["expected"] == s["stored"] and Decimal(s["stored"]) > 0 for s in figures.sums.values())
        # every fault kind of the pipeline was injected, and quarantined with the code it is built to get
        (codes,) = fetch_one(
            dsn, "SELECT array_agg(DISTINCT error_code) FROM quarantine WHERE kafka_topic = %s", spec.topic
        )
        assert set(codes) == {fault.expected_code for fault in faults_for(spec)}, name
    assert set(transactions.sums) == {"amount"} and set(trades.sums) == {"price", "quantity"}
    assert len(transactions.partitions) == 2  # 24 h ending now: two days
    partitions = {name: figures.partitions for name, figures in summary.pipelines.items()}
    assert summary.checks_failed == 0 and summary.checks_passed == _expected_checks(partitions)
    assert {k for k in summary.timings if "[" not in k} == {
        "stack_up", "reset", "topics", "transactions.produce", "crypto_trades.produce", "transactions.sink_job",
        "transactions.topic_readers", "crypto_trades.sink_job", "extra.fraud",
    }  # fmt: skip
    fraud = summary.extra["fraud"]
    assert fraud["ok"] and fraud["recall"] == 1.0 and fraud["precision"] == 1.0 and fraud["injected"] == 4
    url = stack_env["TXP_DAGSTER_PG_URL"].replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE status = 'SUCCESS'")
        # topics, one sink job per pipeline, one run per partition
        assert cur.fetchone()[0] >= 1 + 2 + len(transactions.partitions)
    conn.close()
