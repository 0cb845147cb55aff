"""The Dagster definitions built from pipeline specs, without a stack."""

import dataclasses

import pytest
from dagster import (
    AssetCheckResult,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    DailyPartitionsDefinition,
    DefaultSensorStatus,
    Definitions,
    MaterializeResult,
    asset,
    asset_check,
    define_asset_job,
)

from tx_platform.assets import build_pipeline_assets, pipeline_keys
from tx_platform.checks import LossReport
from tx_platform.errors import ConfigError
from tx_platform.pipelines import CRYPTO_TRADES, TRANSACTIONS, PipelineSpec
from tx_platform.resources import compute_lag

pytestmark = pytest.mark.unit

#: What each shipped pipeline's group holds: its topics, the sink's two tables, its derived assets.
GROUPS = {
    "transactions": {
        "kafka/transactions",
        "kafka/transactions_dlq",
        "warehouse/transactions",
        "warehouse/quarantine",
        "warehouse/daily_merchant_summary",
        "warehouse/daily_category_volume",
        "warehouse/customer_daily_spend",
        "warehouse/hourly_volume",
        "warehouse/fraud_alerts",
        "kafka/fraud_alerts",
    },
    "crypto_trades": {
        "kafka/crypto_trades",
        "kafka/crypto_trades_dlq",
        "warehouse/crypto_trades",
        "warehouse/crypto_trades_quarantine",
        "warehouse/crypto_candles_1m",
        "warehouse/crypto_symbol_metrics",
        "warehouse/crypto_spread_1m",
        "warehouse/crypto_whale_alerts",
        "warehouse/crypto_price_anomalies",
    },
}


def test_lag_is_end_minus_committed_per_partition() -> None:
    lag = compute_lag({0: 10, 1: 5, 2: 0}, {0: 4, 1: 5})
    assert (lag.by_partition, lag.total, lag.ahead) == ({0: 6, 1: 0, 2: 0}, 6, {})


def test_loss_report_counts_unexplained_records() -> None:
    assert LossReport(records_read=10, rows=7, quarantined=3).unexplained == 0
    assert LossReport(records_read=10, rows=7, quarantined=2).unexplained == 1
    assert not LossReport(records_read=10, rows=7, quarantined=3, duplicate_ids=1).ok
    assert LossReport(records_read=10, rows=7, quarantined=3).ok


def test_definitions_hold_every_pipeline_as_its_own_group() -> None:
    from tx_platform.definitions import defs

    graph = defs.resolve_asset_graph()
    groups: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        groups.setdefault(graph.get(key).group_name, set()).add(key.to_user_string())
    assert groups == GROUPS

    repository = defs.get_repository_def()
    others = {"txp_run_failure_sensor", "transactions_automation_sensor", "transactions_fraud_sensor"}
    sensors = {s.name: s.job_name for s in repository.sensor_defs if s.name not in others}
    assert sensors == {
        "transactions_lag_sensor": "transactions_sink_job",
        "crypto_trades_lag_sensor": "crypto_trades_sink_job",
    }
    # no default automation sensor (STOPPED by default): the pipeline's own covers every automated asset
    assert {s.name for s in repository.sensor_defs} - set(sensors) == others
    # each sink job runs the sink's two tables and every unpartitioned derived asset downstream of them; the
    # fraud query reads the topic itself: a job of its own, requested after each run that loaded the table
    sink_jobs = {
        name: {k.to_user_string() for k in defs.resolve_job_def(name).asset_layer.selected_asset_keys}
        for name in (*sensors.values(), "transactions_fraud_job")
    }
    assert sink_jobs == {
        "transactions_sink_job": {"warehouse/transactions", "warehouse/quarantine"},
        "crypto_trades_sink_job": GROUPS["crypto_trades"] - {"kafka/crypto_trades", "kafka/crypto_trades_dlq"},
        "transactions_fraud_job": {"warehouse/fraud_alerts", "kafka/fraud_alerts"},
    }
    fraud_sensor = repository.get_sensor_def("transactions_fraud_sensor")
    assert [t.job_name for t in fraud_sensor.targets] == ["transactions_fraud_job"]
    assert fraud_sensor.default_status == DefaultSensorStatus.RUNNING
    assert {
        k.to_user_string() for k in defs.resolve_job_def("transactions_daily_job").asset_layer.selected_asset_keys
    } == {
        "warehouse/daily_merchant_summary",
        "warehouse/daily_category_volume",
        "warehouse/customer_daily_spend",
        "warehouse/hourly_volume",
    }
    assert {s.name: s.job_name for s in repository.schedule_defs} == {
        "transactions_daily_schedule": "transactions_daily_job"
    }
    assert {j.name for j in repository.get_all_jobs()} == {
        "__ASSET_JOB",  # the implicit job `dagster asset materialize --select` builds its runs from
        "transactions_sink_job",
        "crypto_trades_sink_job",
        "transactions_daily_job",
        "transactions_fraud_job",
    }
    assert set(defs.resources or {}) == {"kafka", "postgres", "pyspark", "settings"}


def test_each_sink_table_has_its_pipelines_checks() -> None:
    from tx_platform.definitions import defs

    checks = {(k.asset_key.to_user_string(), k.name) for k in defs.resolve_asset_graph().asset_check_keys}
    assert {
        ("warehouse/transactions", "no_unexplained_loss"),
        ("warehouse/transactions", "transactions_match_contract"),
        ("warehouse/quarantine", "dlq_matches_quarantine"),
        *(
            (f"warehouse/{table}", check)
            for table in ("daily_merchant_summary", "daily_category_volume", "customer_daily_spend", "hourly_volume")
            for check in ("matches_schema", "reconciles_with_transactions")
        ),
        ("warehouse/crypto_trades", "no_unexplained_loss"),
        ("warehouse/crypto_trades", "crypto_trades_match_contract"),
        ("warehouse/crypto_trades_quarantine", "dlq_matches_quarantine"),
    } <= checks
    transactions = {c for c in checks if c[0] in GROUPS["transactions"]}
    assert len(transactions) == 11  # nothing else on the transactions pipeline's assets


def test_the_settings_resource_carries_what_the_environment_would_not() -> None:
    from tx_platform.config import load_settings
    from tx_platform.definitions import build_resources

    resource = build_resources(load_settings(sink_on_data_loss="record", max_offsets_per_trigger=500))["settings"]
    assert resource.overrides == {"sink_on_data_loss": "record", "max_offsets_per_trigger": "500"}
    assert resource.settings.sink_on_data_loss == "record" and resource.settings.max_offsets_per_trigger == 500
    assert build_resources(load_settings())["settings"].overrides == {}


def test_a_pipeline_on_another_topic_gets_keys_of_its_own() -> None:
    spec = TRANSACTIONS.with_topic("tx_0123abcd")
    built = build_pipeline_assets(spec)
    keys = pipeline_keys(spec)
    assert [k.to_user_string() for k in (keys.topic, keys.dlq, keys.table, keys.quarantine)] == [
        "kafka/tx_0123abcd",
        "kafka/tx_0123abcd_dlq",
        "warehouse/transactions",
        "warehouse/quarantine",
    ]
    ops = {a.node_def.name for a in built.materializable}
    assert ops == {
        "kafka__tx_0123abcd",
        "kafka__tx_0123abcd_dlq",
        "transactions_sink",
        "transactions_fraud",
        "warehouse__daily_merchant_summary",
        "warehouse__daily_category_volume",
        "warehouse__customer_daily_spend",
        "warehouse__hourly_volume",
        "warehouse__transactions_no_unexplained_loss",
        "warehouse__transactions_transactions_match_contract",
        "warehouse__quarantine_dlq_matches_quarantine",
    }
    assert built.sink_job.name == "transactions_sink_job"
    assert pipeline_keys(CRYPTO_TRADES).topic == AssetKey(["kafka", "crypto_trades"])  # no dots in keys


def _with_derived(derived: object) -> PipelineSpec:
    return dataclasses.replace(TRANSACTIONS, name="demo_pipe", derived_assets=lambda spec: derived)


def _table_key() -> AssetKey:
    return AssetKey(["warehouse", "transactions"])


def test_unpartitioned_derived_assets_follow_the_sink_and_partitioned_ones_do_not() -> None:
    @asset(key=["warehouse", "minute_stats"], deps=[_table_key()], group_name="demo_pipe")
    def minute_stats() -> MaterializeResult:
        return MaterializeResult()

    @asset(
        key=["warehouse", "day_stats"],
        deps=[_table_key()],
        group_name="demo_pipe",
        partitions_def=DailyPartitionsDefinition(start_date="2025-01-01"),
    )
    def day_stats() -> MaterializeResult:
        return MaterializeResult()

    @asset(key=["warehouse", "hour_stats"], deps=[minute_stats], group_name="demo_pipe")
    def hour_stats() -> MaterializeResult:
        return MaterializeResult()

    @asset(key=["warehouse", "topic_stats"], deps=[AssetKey(["kafka", "transactions"])], group_name="demo_pipe")
    def topic_stats() -> MaterializeResult:
        return MaterializeResult()

    @asset_check(asset=minute_stats)
    def minute_stats_positive() -> AssetCheckResult:
        return AssetCheckResult(passed=True)

    job = define_asset_job("day_stats_job", selection=AssetSelection.assets(day_stats))
    built = build_pipeline_assets(
        _with_derived([minute_stats, hour_stats, topic_stats, day_stats, minute_stats_positive, job])
    )
    assert built.sink_job.name == "demo_pipe_sink_job"
    # downstream of the sink's table, directly or through another derived asset; not what reads only the topic
    assert set(built.sink_job.selection.selected_keys) == {
        AssetKey(["warehouse", "transactions"]),
        AssetKey(["warehouse", "quarantine"]),
        AssetKey(["warehouse", "minute_stats"]),
        AssetKey(["warehouse", "hour_stats"]),
    }
    assert built.topic_readers() == [topic_stats.key]
    assert [j.name for j in built.jobs] == ["demo_pipe_sink_job", "day_stats_job"]
    assert [a.key for a in built.partitioned_assets()] == [day_stats.key]
    assert minute_stats_positive in built.asset_checks
    # a Definitions object is taken apart the same way
    as_definitions = build_pipeline_assets(_with_derived(Definitions(assets=[minute_stats], jobs=[job])))
    assert {k.to_user_string() for k in as_definitions.derived_keys} == {"warehouse/minute_stats"}


def test_derived_assets_are_refused_outside_the_contract() -> None:
    @asset(key=["warehouse", "elsewhere"], group_name="analytics")
    def elsewhere() -> MaterializeResult:
        return MaterializeResult()

    with pytest.raises(ConfigError, match=r"in group\(s\) \['analytics'\]; put every asset .* group_name='demo_pipe'"):
        build_pipeline_assets(_with_derived([elsewhere]))
    with pytest.raises(ConfigError, match="which is not an asset, asset check, job, schedule or sensor"):
        build_pipeline_assets(_with_derived(["warehouse/elsewhere"]))
    with pytest.raises(ConfigError, match=r"Definitions with resources \['postgres'\]"):
        build_pipeline_assets(_with_derived(Definitions(resources={"postgres": object()})))

    @asset(key=["warehouse", "quarantine"], group_name="demo_pipe")
    def quarantine() -> MaterializeResult:
        return MaterializeResult()

    with pytest.raises(ConfigError, match=r"derived assets redefine \['warehouse/quarantine'\]"):
        build_pipeline_assets(_with_derived([quarantine]))


def test_a_missing_derived_assets_module_fails_naming_it() -> None:
    spec = dataclasses.replace(TRANSACTIONS, derived_assets="tx_platform.pipelines.transactions._nowhere:derived")
    with pytest.raises(ConfigError, match=r"cannot resolve 'tx_platform\.pipelines\.transactions\._nowhere:derived'"):
        build_pipeline_assets(spec)


def test_the_fraud_sensor_follows_a_run_that_loaded_the_table_and_keeps_one_run_waiting() -> None:
    from dagster import (
        DagsterEventType,
        DagsterInstance,
        DagsterRun,
        DagsterRunStatus,
        RunRequest,
        SkipReason,
        build_run_status_sensor_context,
        materialize,
    )

    from tx_platform.pipelines.transactions._fraud_assets import fraud_assets

    _fraud, job, sensor = fraud_assets(TRANSACTIONS)
    instance = DagsterInstance.ephemeral()

    @asset(key=["warehouse", "elsewhere"])
    def elsewhere() -> None:
        return None

    @asset(key=["warehouse", "transactions"])
    def table() -> None:
        return None

    def evaluate(assets_def: AssetsDefinition) -> tuple[str, object]:
        result = materialize([assets_def], instance=instance)  # a run of every asset given: no asset selection
        success = next(e for e in result.all_events if e.event_type == DagsterEventType.RUN_SUCCESS)
        context = build_run_status_sensor_context(
            sensor_name=sensor.name, dagster_event=success, dagster_instance=instance, dagster_run=result.dagster_run
        )
        return result.run_id, sensor(context)

    run_id, outcome = evaluate(elsewhere)
    assert isinstance(outcome, SkipReason) and "did not materialize warehouse/transactions" in str(outcome.skip_message)
    run_id, outcome = evaluate(table)
    assert isinstance(outcome, RunRequest) and outcome.run_key == f"after-{run_id}"
    assert outcome.tags == {"txp/after_run": run_id} and [t.job_name for t in sensor.targets] == [job.name]
    # a fraud run not started yet reads everything new when it starts: no second one waits beside it
    instance.add_run(DagsterRun(job_name=job.name, run_id="f" * 36, status=DagsterRunStatus.NOT_STARTED))
    run_id, outcome = evaluate(table)
    assert isinstance(outcome, SkipReason) and f"fraud run {'f' * 36} has not started yet" in str(outcome.skip_message)
