"""The sink's two tables can be selected alone or together; the sink runs once and writes both."""

import pytest
from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

from tx_platform.assets import build_pipeline_assets, pipeline_keys
from tx_platform.config import Settings
from tx_platform.definitions import build_resources
from tx_platform.pipelines import PipelineSpec
from tx_platform_tests.conftest import fetch_one, produce_records

TABLE, QUARANTINE = AssetKey(["warehouse", "transactions"]), AssetKey(["warehouse", "quarantine"])
#: Each selection with the checks that must run with it (the blocking no_unexplained_loss among them).
SELECTIONS: list[tuple[frozenset[AssetKey], set[str]]] = [
    (frozenset({TABLE}), {"no_unexplained_loss", "transactions_match_contract"}),
    (frozenset({QUARANTINE}), {"dlq_matches_quarantine"}),
    (frozenset({TABLE, QUARANTINE}), {"no_unexplained_loss", "transactions_match_contract", "dlq_matches_quarantine"}),
]
IDS = ["transactions", "quarantine", "both"]


@pytest.mark.unit
@pytest.mark.parametrize(("keys", "checks"), SELECTIONS, ids=IDS)
def test_the_cli_can_build_a_run_for_each_selection(keys: frozenset[AssetKey], checks: set[str]) -> None:
    """What `dagster asset materialize --select …` does before it runs anything."""
    from tx_platform.definitions import defs

    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=set(keys))
    assert job.asset_layer.selected_asset_keys == keys
    nodes = {n.name for n in job.nodes}
    assert "transactions_sink" in nodes and len(nodes) == 1 + len(checks)  # the sink op once, plus its checks
    assert {k.name for k in job.asset_layer.asset_graph.asset_check_keys} == checks


@pytest.mark.e2e
@pytest.mark.slow
def test_each_selection_runs_the_sink_once_and_fills_both_tables(spark, spec: PipelineSpec, settings: Settings) -> None:  # noqa: ANN001
    instance = DagsterInstance.ephemeral()
    resources = build_resources(settings)
    everything = build_pipeline_assets(spec).materializable
    assert materialize(
        everything, selection=AssetSelection.assets(pipeline_keys(spec).topic), resources=resources, instance=instance
    ).success

    produced = injected = 0
    for round_no, (keys, checks) in enumerate(SELECTIONS):
        producer = produce_records(spec, settings, 400, seed=7_000 + round_no, hours_ago=3.0, bad_ratio=0.05)
        assert producer.faults is not None
        produced, injected = produced + 400, injected + producer.faults.injected_total
        assert producer.faults.injected_total > 0  # so the quarantine table has something to receive

        result = materialize(everything, selection=AssetSelection.assets(*keys), resources=resources, instance=instance)
        assert result.success
        assert [e.step_key for e in result.get_step_success_events() if e.step_key == "transactions_sink"] == [
            "transactions_sink"
        ]
        materialized = {e.asset_key for e in result.get_asset_materialization_events()}
        assert materialized == keys
        evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert evaluations == dict.fromkeys(checks, True)

        # whichever table was selected, the sink wrote both: every record produced so far is stored once
        (rows,) = fetch_one(settings.dsn(), "SELECT count(*) FROM transactions WHERE kafka_topic = %s", spec.topic)
        (quarantined,) = fetch_one(settings.dsn(), "SELECT count(*) FROM quarantine WHERE kafka_topic = %s", spec.topic)
        assert (rows, quarantined) == (produced - injected, injected), IDS[round_no]
