import pytest

from tx_platform.checks import LossReport
from tx_platform.resources import compute_lag

pytestmark = pytest.mark.unit


def test_lag_is_end_minus_committed_per_partition() -> None:
    lag = compute_lag({0: 10, 1: 5, 2: 0}, {0: 4, 1: 5})
    assert (lag.by_partition, lag.total, lag.ahead) == ({0: 6, 1: 0, 2: 0}, 6, {})


def test_loss_report_counts_unexplained_records() -> None:
    assert LossReport(records_read=10, transactions=7, quarantined=3).unexplained == 0
    assert LossReport(records_read=10, transactions=7, quarantined=2).unexplained == 1
    assert not LossReport(records_read=10, transactions=7, quarantined=3, duplicate_ids=1).ok
    assert LossReport(records_read=10, transactions=7, quarantined=3).ok


def test_definitions_load_with_the_designed_asset_keys() -> None:
    from tx_platform.definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {
        "kafka/transactions",
        "kafka/transactions_dlq",
        "warehouse/transactions",
        "warehouse/quarantine",
        "warehouse/daily_merchant_summary",
    }
    assert defs.resolve_sensor_def("kafka_lag_sensor").job_name == "sink_job"
    checks = {k.name for k in defs.resolve_asset_graph().asset_check_keys}
    assert checks == {
        "no_unexplained_loss",
        "transactions_match_contract",
        "dlq_matches_quarantine",
        "matches_schema",
        "reconciles_with_transactions",
    }


def test_the_data_loss_policy_reaches_the_dagster_sink() -> None:
    from tx_platform.config import load_settings
    from tx_platform.definitions import build_resources

    assert build_resources(load_settings(sink_on_data_loss="record"))["pipeline"].on_data_loss == "record"
    assert build_resources(load_settings())["pipeline"].on_data_loss == "fail"
