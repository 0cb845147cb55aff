import inspect

import pytest

from spark_jobs.sink import _decode
from tx_platform.contract import ERROR_CODES
from tx_platform.producer import FAULTS, FaultInjector

pytestmark = pytest.mark.unit


def _encode(record: dict) -> bytes:
    return b"\x00\x00\x00\x00\x01" + record["account_id"].encode() * 4


def test_every_fault_names_a_known_error_code_and_the_sink_can_give_it() -> None:
    from tx_platform.warehouse import _sink_writer

    decided_in_postgres = {"DUPLICATE_TRANSACTION_ID", "WAREHOUSE_REJECTED"}
    source = inspect.getsource(_decode)
    for code in ERROR_CODES:
        module_source = inspect.getsource(_sink_writer) if code in decided_in_postgres else source
        assert f"'{code}'" in module_source or f'"{code}"' in module_source, code
    assert {f.expected_code for f in FAULTS} <= set(ERROR_CODES)


def test_injector_is_seeded_cycles_every_kind_and_counts() -> None:
    from datetime import UTC, datetime

    from tx_platform.producer import generate

    record = next(generate(1, seed=5, start=datetime(2026, 1, 1, tzinfo=UTC)))
    a, b = FaultInjector(0.5, seed=1, encode=_encode), FaultInjector(0.5, seed=1, encode=_encode)
    outs_a = [a.outgoing(record) for _ in range(400)]
    outs_b = [b.outgoing(record) for _ in range(400)]
    assert [(o.value, o.injected) for o in outs_a] == [(o.value, o.injected) for o in outs_b]
    assert 150 < a.injected_total < 250
    assert set(a.injected) == {f.kind for f in FAULTS}
    assert all(o.key == record["account_id"].encode() for o in outs_a)


def test_zero_ratio_changes_nothing_and_bad_ratio_is_checked() -> None:
    injector = FaultInjector(0.0, seed=1, encode=_encode)
    assert injector.outgoing({"account_id": "A9"}).injected is None and injector.injected_total == 0
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultInjector(1.5, seed=1, encode=_encode)
