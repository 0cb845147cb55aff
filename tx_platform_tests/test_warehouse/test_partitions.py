"""`transactions` partitioned by day, on the real PostgreSQL, in a scratch schema of each test's own:
rows of an upgraded warehouse land in the partition of their day, partitions are made ahead, the DEFAULT
partition catches a day without one and gives its rows up when that day's partition is created, replays
still dedupe on (transaction_id, event_time), and the `late` flag on both sides of the allowed lateness."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg2
import pytest

from tx_platform.pipelines import TRANSACTIONS, PipelineSpec
from tx_platform.warehouse import (
    DAYS_AHEAD,
    DAYS_BEHIND,
    PartitionRange,
    commit_batch,
    default_partition,
    ensure_partitions,
    migrate,
    partition_name,
)
from tx_platform_tests.test_warehouse.conftest import rows as _rows

pytestmark = pytest.mark.integration


def _partition_counts(dsn: str) -> dict[str, int]:
    rows = _rows(dsn, "SELECT tableoid::regclass::text, count(*) FROM transactions GROUP BY 1")
    return {name: count for name, count in rows}


def _line(values: list[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def _staged(spec: PipelineSpec, record: dict[str, Any], partition: int, offset: int, kafka_ts: datetime) -> str:
    """A staged line as the sink renders it (raw layout): the table's columns, raw bytes, Kafka's timestamp."""
    values = [record[f] for f in spec.contract.field_names]
    rendered = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return _line([*rendered, spec.topic, partition, offset, "\\x41", "\\x42", kafka_ts.isoformat()])


def test_partitions_are_made_ahead_and_behind_and_a_day_without_one_is_caught_by_default_then_moved(
    scratch_dsn: str,
) -> None:
    migrate(scratch_dsn, [TRANSACTIONS])
    today = datetime.now(UTC).date()
    names = {n for (n,) in _rows(scratch_dsn, "SELECT relname FROM pg_class WHERE relispartition")}
    wanted = {partition_name("transactions", today + timedelta(days=n)) for n in range(-DAYS_BEHIND, DAYS_AHEAD + 1)}
    assert wanted | {default_partition("transactions")} <= names
    assert partition_name("transactions", today + timedelta(days=DAYS_AHEAD + 1)) not in names

    # 40 records 30 days ahead and 60 more 3 weeks ago: no partition covers them, DEFAULT takes them
    far, old = today + timedelta(days=30), today - timedelta(days=21)
    records = [
        *TRANSACTIONS.generate(40, 3, datetime.combine(far, datetime.min.time(), UTC), span=timedelta(hours=20)),
        *TRANSACTIONS.generate(60, 4, datetime.combine(old, datetime.min.time(), UTC), span=timedelta(hours=20)),
    ]
    lines = [_staged(TRANSACTIONS, r, 0, i, r["event_time"]) for i, r in enumerate(records)]
    conn = psycopg2.connect(scratch_dsn)
    try:
        result = commit_batch(conn, TRANSACTIONS, 0, lines, [], {0: PartitionRange(0, len(lines) - 1)})
    finally:
        conn.close()
    assert (result.inserted, result.quarantined) == (100, 0)
    assert _partition_counts(scratch_dsn) == {"transactions_default": 100}

    # the owner creates the far day's partition: its 40 rows move, the old day's 60 stay in DEFAULT
    conn = psycopg2.connect(scratch_dsn)
    try:
        with conn, conn.cursor() as cur:
            assert ensure_partitions(cur, TRANSACTIONS, [far]) == {partition_name("transactions", far): 40}
            assert ensure_partitions(cur, TRANSACTIONS, [far]) == {}  # idempotent
    finally:
        conn.close()
    assert _partition_counts(scratch_dsn) == {partition_name("transactions", far): 40, "transactions_default": 60}
    # the next migrate creates a partition for every day still in DEFAULT
    assert migrate(scratch_dsn, [TRANSACTIONS]) == []
    assert _partition_counts(scratch_dsn) == {
        partition_name("transactions", far): 40,
        partition_name("transactions", old): 60,
    }
    assert _rows(scratch_dsn, "SELECT count(*) FROM transactions") == [(100,)]


def test_an_upgraded_warehouse_s_rows_sit_in_the_partition_of_their_day(scratch_dsn: str) -> None:
    from tx_platform_tests.test_warehouse.test_migrate import _fill_previous

    _fill_previous(scratch_dsn)
    days = Counter(d for (d,) in _rows(scratch_dsn, "SELECT (event_time AT TIME ZONE 'UTC')::date FROM transactions"))
    migrate(scratch_dsn)
    counts = _partition_counts(scratch_dsn)
    assert counts == {partition_name("transactions", day): n for day, n in days.items()}
    assert sum(counts.values()) == 300
    assert len(days) == 5  # 2026-03-01 22:00 plus 4 days: rows on five calendar days


def test_a_replay_and_a_reused_id_with_another_event_time_are_both_duplicates_across_partitions(
    scratch_dsn: str,
) -> None:
    migrate(scratch_dsn, [TRANSACTIONS])
    record = next(TRANSACTIONS.generate(1, 5, datetime.now(UTC) - timedelta(hours=1)))
    at = record["event_time"]
    conn = psycopg2.connect(scratch_dsn)
    try:
        first = commit_batch(
            conn, TRANSACTIONS, 0, [_staged(TRANSACTIONS, record, 0, 0, at)], [], {0: PartitionRange(0, 0)}
        )
        # the same record again at a new offset (a producer retry): same id, same event time -> duplicate
        again = commit_batch(
            conn, TRANSACTIONS, 1, [_staged(TRANSACTIONS, record, 0, 1, at)], [], {0: PartitionRange(1, 1)}
        )
        # the id reused with another event time (another day's partition): the key registry refuses it
        moved = {**record, "event_time": at - timedelta(days=1)}
        other = commit_batch(
            conn, TRANSACTIONS, 2, [_staged(TRANSACTIONS, moved, 0, 2, at)], [], {0: PartitionRange(2, 2)}
        )
    finally:
        conn.close()
    assert (first.inserted, first.quarantined) == (1, 0)
    assert (again.inserted, again.quarantined) == (0, 1)
    assert (other.inserted, other.quarantined) == (0, 1)
    assert _rows(scratch_dsn, "SELECT error_code, kafka_offset FROM quarantine ORDER BY 2") == [
        ("DUPLICATE_TRANSACTION_ID", 1),
        ("DUPLICATE_TRANSACTION_ID", 2),
    ]
    stored = _rows(scratch_dsn, "SELECT kafka_offset FROM transactions WHERE transaction_id = %s ORDER BY 1",
                   (str(record["transaction_id"]),))  # fmt: skip
    assert stored == [(0,)]
    claimed = _rows(scratch_dsn, "SELECT kafka_offset, event_time FROM transactions_keys WHERE transaction_id = %s",
                    (str(record["transaction_id"]),))  # fmt: skip
    assert claimed == [(0, at)]


def test_deleted_rows_release_their_keys_and_a_moved_day_keeps_them(scratch_dsn: str) -> None:
    """The key registry follows the rows: deleting a row frees its id (a topic forgotten, a day cleaned by
    hand), and rows moved out of DEFAULT into their new day partition keep their claims."""
    migrate(scratch_dsn, [TRANSACTIONS])
    far = datetime(2031, 6, 1, 12, tzinfo=UTC)  # no partition that far ahead: the row lands in DEFAULT
    first, second = list(TRANSACTIONS.generate(2, 6, far))
    conn = psycopg2.connect(scratch_dsn)
    try:
        lines = [_staged(TRANSACTIONS, r, 0, n, far) for n, r in enumerate((first, second))]
        commit_batch(conn, TRANSACTIONS, 0, lines, [], {0: PartitionRange(0, 1)})
        with conn, conn.cursor() as cur:
            days = {r["event_time"].astimezone(UTC).date() for r in (first, second)}
            moved = ensure_partitions(cur, TRANSACTIONS, days)
            cur.execute("DELETE FROM transactions WHERE transaction_id = %s", (str(first["transaction_id"]),))
        again = commit_batch(
            conn, TRANSACTIONS, 1, [_staged(TRANSACTIONS, r, 0, 2 + n, far) for n, r in enumerate((first, second))],
            [], {0: PartitionRange(2, 3)},
        )  # fmt: skip
    finally:
        conn.close()
    assert moved.keys() == {partition_name("transactions", day) for day in days}
    assert sum(moved.values()) == 2  # both rows left DEFAULT
    # the deleted row's id was free again; the moved row's id was still claimed
    assert (again.inserted, again.quarantined) == (1, 1)
    assert _rows(scratch_dsn, "SELECT kafka_offset FROM transactions_keys ORDER BY 1") == [(1,), (2,)]
    # TRUNCATE fires no row trigger: a statement trigger empties the registry with the table
    with psycopg2.connect(scratch_dsn) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE transactions")
        cur.execute("SELECT count(*) FROM transactions_keys")
        assert cur.fetchone() == (0,)
        cur.execute("TRUNCATE transactions, transactions_keys")  # both named at once, as make demo's reset does
    conn.close()
    assert _rows(scratch_dsn, "SELECT count(*) FROM transactions_keys") == [(0,)]


@pytest.mark.parametrize("lateness", [timedelta(minutes=10), timedelta(minutes=3)], ids=["10min", "3min"])
def test_the_late_flag_on_both_sides_of_the_allowed_lateness(scratch_dsn: str, lateness: timedelta) -> None:
    spec = dataclasses.replace(TRANSACTIONS, allowed_lateness=lateness)
    migrate(scratch_dsn, [spec])
    event = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    # Kafka timestamp minus event time, per record, and whether that is late
    cases = [
        (timedelta(0), False),
        (lateness - timedelta(seconds=1), False),
        (lateness, False),  # exactly the allowed lateness is still on time
        (lateness + timedelta(milliseconds=1), True),
        (lateness + timedelta(seconds=1), True),
        (timedelta(hours=2), True),
        (-timedelta(seconds=30), False),  # event time after Kafka's clock (a skewed producer): not late
    ]
    records = list(TRANSACTIONS.generate(len(cases), 9, event, span=timedelta(seconds=1)))
    records = [{**r, "event_time": event} for r in records]
    lines = [
        _staged(spec, r, 0, i, event + delay) for i, (r, (delay, _)) in enumerate(zip(records, cases, strict=True))
    ]
    conn = psycopg2.connect(scratch_dsn)
    try:
        commit_batch(conn, spec, 0, lines, [], {0: PartitionRange(0, len(lines) - 1)})
    finally:
        conn.close()
    got = _rows(scratch_dsn, "SELECT kafka_offset, kafka_timestamp - event_time, late FROM transactions ORDER BY 1")
    assert got == [(i, delay, late) for i, (delay, late) in enumerate(cases)]


def test_a_changed_allowed_lateness_rebuilds_the_flag_on_migrate(scratch_dsn: str) -> None:
    migrate(scratch_dsn, [TRANSACTIONS])  # 10 minutes
    record = next(TRANSACTIONS.generate(1, 11, datetime.now(UTC) - timedelta(hours=2)))
    at = record["event_time"]
    line = _staged(TRANSACTIONS, record, 0, 0, at + timedelta(minutes=5))
    conn = psycopg2.connect(scratch_dsn)
    try:
        commit_batch(conn, TRANSACTIONS, 0, [line], [], {0: PartitionRange(0, 0)})
    finally:
        conn.close()
    assert _rows(scratch_dsn, "SELECT late FROM transactions") == [(False,)]
    stricter = dataclasses.replace(TRANSACTIONS, allowed_lateness=timedelta(minutes=1))
    assert migrate(scratch_dsn, [stricter]) == []  # no file applied; the flag follows the spec
    assert _rows(scratch_dsn, "SELECT late FROM transactions") == [(True,)]
    # the views that read the flag were made again, and read the new one
    assert _rows(scratch_dsn, "SELECT transactions, late_transactions FROM daily_revenue") == [(1, 1)]


def test_partition_names_and_days() -> None:
    assert partition_name("transactions", date(2026, 3, 9)) == "transactions_p20260309"
    assert default_partition("transactions") == "transactions_default"
