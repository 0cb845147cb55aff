import csv
import io

import pytest

from tx_platform.config import Settings
from tx_platform.pipelines import PipelineSpec
from tx_platform.warehouse import PartitionRange, commit_batch, committed_offsets, connect, ensure_schema
from tx_platform_tests.conftest import fetch_all, fetch_one

pytestmark = pytest.mark.integration

ROW = ["A1", "C1", "K1", "M1", "5411", "12.34", "EUR", "POS", "PURCHASE", "DE", 'Köln, "Altstadt"', "50.9", "6.9",
       "2026-01-02T03:04:05.678Z"]  # fmt: skip


def _line(values: list[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def _tx(topic: str, tx_id: str, partition: int, offset: int) -> str:
    return _line([tx_id, *ROW, topic, partition, offset, "\\x4131", f"\\x{offset:04x}"])


def _bad(topic: str, partition: int, offset: int) -> str:
    return _line([topic, partition, offset, "2026-01-02T03:04:05Z", "\\x41", "\\x7b7d", "UNDECODABLE_AVRO", "why"])


def _counts(settings: Settings, spec: PipelineSpec) -> tuple[int, int]:
    conn = connect(settings.dsn())
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM transactions WHERE kafka_topic = %s", (spec.topic,))
        rows = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM quarantine WHERE kafka_topic = %s", (spec.topic,))
        quarantined = cur.fetchone()[0]
    conn.close()
    return rows, quarantined


def test_replayed_batch_writes_nothing_twice(settings: Settings, spec: PipelineSpec, unique: str) -> None:
    ensure_schema(settings.dsn(), [spec])
    topic = spec.topic
    ids = [f"{unique[:8]}-0000-4000-8000-00000000000{i}" for i in range(3)]
    good = [_tx(topic, ids[0], 0, 0), _tx(topic, ids[1], 0, 1), _tx(topic, ids[2], 1, 0)]
    bad = [_bad(topic, 1, 1)]
    ranges = {0: PartitionRange(0, 1), 1: PartitionRange(0, 1)}

    conn = connect(settings.dsn())
    first = commit_batch(conn, spec, 0, good, bad, ranges)
    replay = commit_batch(conn, spec, 0, good, bad, ranges)
    offsets = committed_offsets(conn, topic)
    conn.close()

    assert (first.inserted, first.quarantined, first.skipped) == (3, 1, 0)
    assert (replay.inserted, replay.quarantined, replay.skipped) == (0, 0, 4)
    assert offsets == {0: 2, 1: 2}
    assert _counts(settings, spec) == (3, 1)


def test_same_transaction_id_at_a_new_offset_is_quarantined_as_duplicate(
    settings: Settings, spec: PipelineSpec, unique: str
) -> None:
    ensure_schema(settings.dsn(), [spec])
    topic = spec.topic
    tx_id = f"{unique[:8]}-1111-4000-8000-000000000000"
    conn = connect(settings.dsn())
    commit_batch(conn, spec, 0, [_tx(topic, tx_id, 0, 0)], [], {0: PartitionRange(0, 0)})
    result = commit_batch(
        conn, spec, 1, [_tx(topic, tx_id, 0, 1), _tx(topic, tx_id, 0, 2)], [], {0: PartitionRange(1, 2)}
    )
    with conn.cursor() as cur:
        cur.execute(
            "SELECT kafka_offset, error_code, reason, raw_key, raw_value FROM quarantine WHERE kafka_topic = %s "
            "ORDER BY 1",
            (topic,),
        )
        quarantined = cur.fetchall()
        cur.execute("SELECT city FROM transactions WHERE kafka_topic = %s", (topic,))
        (city,) = cur.fetchone()
    conn.close()
    assert (result.inserted, result.quarantined) == (0, 2)
    already = f"transaction_id {tx_id} was already stored from another record"
    assert [(o, c, r, bytes(k), bytes(v)) for o, c, r, k, v in quarantined] == [
        (1, "DUPLICATE_TRANSACTION_ID", already, b"A1", b"\x00\x01"),
        (2, "DUPLICATE_TRANSACTION_ID", already, b"A1", b"\x00\x02"),
    ]
    assert city == 'Köln, "Altstadt"'  # CSV quoting survives COPY


def test_crypto_trades_commit_on_their_own_table_and_key(settings: Settings, unique: str) -> None:
    from decimal import Decimal

    from tx_platform.pipelines import CRYPTO_TRADES

    spec = CRYPTO_TRADES.with_topic(f"crypto_{unique}")
    ensure_schema(settings.dsn(), [spec])
    trade_id = f"{unique[:8]}-2222-4000-8000-000000000000"

    def trade(offset: int, quantity: str) -> str:
        row = [trade_id, "KRAKEN", "BTC-USD", "SELL", "64123.4567891234", quantity, "USD", "o-1",
               "2026-01-02T03:04:05.678Z"]  # fmt: skip
        return _line([*row, spec.topic, 0, offset, "\\x4254432d555344", f"\\x{offset:04x}"])

    conn = connect(settings.dsn())
    first = commit_batch(conn, spec, 0, [trade(0, "0.000000000000000001")], [], {0: PartitionRange(0, 0)})
    again = commit_batch(conn, spec, 1, [trade(1, "2")], [], {0: PartitionRange(1, 1)})
    with conn.cursor() as cur:
        cur.execute("SELECT price, quantity, side FROM crypto_trades WHERE kafka_topic = %s", (spec.topic,))
        stored = cur.fetchall()
        cur.execute("SELECT kafka_offset, error_code, reason FROM quarantine WHERE kafka_topic = %s", (spec.topic,))
        quarantined = cur.fetchall()
    offsets = committed_offsets(conn, spec.topic)
    conn.close()
    assert (first.inserted, again.inserted, again.quarantined) == (1, 0, 1)
    assert stored == [(Decimal("64123.4567891234"), Decimal("0.000000000000000001"), "SELL")]
    assert quarantined == [(1, "DUPLICATE_TRADE_ID", f"trade_id {trade_id} was already stored from another record")]
    assert offsets == {0: 2}


def _accepted_line(spec: PipelineSpec, tx_id: str, values: list[str], partition: int, offset: int) -> str:
    """An accepted record's line as the sink renders it: no raw bytes (they travel beside it)."""
    return _line([tx_id, *values, spec.topic, partition, offset, "2026-01-02T03:04:06.000Z"])


def _stored(settings: Settings, spec: PipelineSpec) -> tuple[list[tuple[int, str]], int, int, int]:
    """(offset, transaction_id) of the stored rows, keys in the registry, latency observations, quarantine rows."""
    dsn, topic = settings.dsn(), spec.topic
    rows = fetch_all(dsn, "SELECT kafka_offset, transaction_id::text FROM transactions WHERE kafka_topic = %s "
                     "ORDER BY 1", topic)  # fmt: skip
    (keys,) = fetch_one(dsn, "SELECT count(*) FROM transactions_keys WHERE kafka_topic = %s", topic)
    (observed,) = fetch_one(dsn, "SELECT coalesce(sum(count), 0) FROM sink_latency WHERE topic = %s "
                            "AND kind = 'event_time'", topic)  # fmt: skip
    (quarantined,) = fetch_one(dsn, "SELECT count(*) FROM quarantine WHERE kafka_topic = %s", topic)
    return rows, keys, observed, quarantined


def test_a_slice_that_replays_nothing_is_loaded_directly_and_its_keys_claimed(
    settings: Settings, spec: PipelineSpec, unique: str
) -> None:
    ensure_schema(settings.dsn(), [spec])
    ids = [f"{unique[:8]}-4444-4000-8000-{i:012d}" for i in range(3)]
    good = [_accepted_line(spec, tx_id, ROW, 0, offset) for offset, tx_id in enumerate(ids)]
    raw = {(0, o): (b"k", b"v%d" % o) for o in range(4)}
    conn = connect(settings.dsn())
    first = commit_batch(conn, spec, 0, good, [_bad(spec.topic, 0, 3)], {0: PartitionRange(0, 3)}, raw=raw)
    replay = commit_batch(conn, spec, 0, good, [_bad(spec.topic, 0, 3)], {0: PartitionRange(0, 3)}, raw=raw)
    conn.close()

    assert (first.loaded_directly, first.inserted, first.quarantined, first.skipped) == (True, 3, 1, 0)
    # a replay is never loaded directly: its records are staged and dropped as committed
    assert (replay.loaded_directly, replay.inserted, replay.quarantined, replay.skipped) == (False, 0, 0, 4)
    assert _stored(settings, spec) == ([(0, ids[0]), (1, ids[1]), (2, ids[2])], 3, 3, 1)


def test_a_slice_postgres_refuses_any_of_goes_through_staging_record_for_record(
    settings: Settings, spec: PipelineSpec, unique: str
) -> None:
    """A duplicate key (stored before, with another event time; or twice in the slice) or a value the table
    refuses undoes the direct load: the staged path then stores, quarantines and counts each record as always."""
    ensure_schema(settings.dsn(), [spec])
    ids = [f"{unique[:8]}-5555-4000-8000-{i:012d}" for i in range(4)]
    raw = {(0, o): (b"k", b"v%d" % o) for o in range(10)}
    conn = connect(settings.dsn())
    first = commit_batch(conn, spec, 0, [_accepted_line(spec, ids[0], ROW, 0, 0)], [], {0: PartitionRange(0, 0)},
                         raw=raw)  # fmt: skip
    later = [*ROW[:-1], "2026-01-03T00:00:00.000Z"]  # another day's partition: only the key registry sees it
    bad_category = [*ROW[:4], "12", *ROW[5:]]  # the table's CHECK on merchant_category refuses it
    slices = [
        [_accepted_line(spec, ids[1], ROW, 0, 1), _accepted_line(spec, ids[0], later, 0, 2)],  # stored before
        [_accepted_line(spec, ids[2], ROW, 0, 3), _accepted_line(spec, ids[2], ROW, 0, 4)],  # twice, same time
        [
            _accepted_line(spec, ids[3], ROW, 0, 5),
            _accepted_line(spec, f"{unique[:8]}-6666-4000-8000-000000000000", bad_category, 0, 6),
        ],
    ]
    results = []
    for batch_id, lines in enumerate(slices, start=1):
        offsets = [1 + 2 * (batch_id - 1), 2 * batch_id]
        results.append(commit_batch(conn, spec, batch_id, lines, [], {0: PartitionRange(*offsets)}, raw=raw))
    with conn.cursor() as cur:
        cur.execute(
            "SELECT kafka_offset, error_code, raw_value, reason FROM quarantine WHERE kafka_topic = %s ORDER BY 1",
            (spec.topic,),
        )
        quarantined = [(o, code, bytes(value), reason) for o, code, value, reason in cur.fetchall()]
    conn.close()

    assert first.loaded_directly
    assert [(r.loaded_directly, r.inserted, r.quarantined, r.warehouse_rejected) for r in results] == [
        (False, 1, 1, 0),
        (False, 1, 1, 0),
        (False, 1, 1, 1),
    ]
    assert [(o, code, value) for o, code, value, _ in quarantined] == [
        (2, "DUPLICATE_TRANSACTION_ID", b"v2"),
        (4, "DUPLICATE_TRANSACTION_ID", b"v4"),
        (6, "WAREHOUSE_REJECTED", b"v6"),
    ]
    assert "rule4_invalid_merchant_category" in quarantined[2][3]
    # nothing of the undone direct loads is left: each record once, in the table or in quarantine
    assert _stored(settings, spec) == ([(0, ids[0]), (1, ids[1]), (3, ids[2]), (5, ids[3])], 4, 4, 3)
