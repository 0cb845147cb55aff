"""The offset ledger: contiguity, topic identity, one writer, recorded gaps, and the commit's safety net."""

import csv
import io
import logging
import threading
import time
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg2
import pytest

from tx_platform.checks import loss_report
from tx_platform.config import Settings
from tx_platform.errors import (
    DataLossError,
    OffsetGapError,
    SinkAlreadyRunningError,
    SinkFencedError,
    TopicRecreatedError,
)
from tx_platform.pipelines import PipelineSpec
from tx_platform.pipelines.transactions._summary import daily_reconciliation, rebuild_daily_merchant_summary
from tx_platform.warehouse import (
    Gap,
    LedgerEntry,
    PartitionRange,
    acquire_lease,
    check_batch,
    commit_batch,
    committed_offsets,
    connect,
    ensure_schema,
    forget_topic,
    plan_start,
    prepare_ledger,
)

ROW = ["A1", "C1", "K1", "M1", "5411", "12.34", "EUR", "POS", "PURCHASE", "DE", "Köln", "50.9", "6.9",
       "2026-01-02T03:04:05.678Z"]  # fmt: skip
ID_A, ID_B = "6f1c3a5e-0000-4000-8000-00000000000a", "6f1c3a5e-0000-4000-8000-00000000000b"


def _line(values: list[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue().removesuffix("\n")


def _tx(topic: str, tx_id: str, partition: int, offset: int, **fields: str) -> str:
    names = ["account_id", "customer_id", "card_id", "merchant_id", "merchant_category", "amount", "currency",
             "channel", "transaction_type", "country", "city", "latitude", "longitude", "event_time"]  # fmt: skip
    row = [fields.get(n, v) for n, v in zip(names, ROW, strict=True)]
    return _line([tx_id, *row, topic, partition, offset, "\\x4131", f"\\x{offset:04x}"])


def _uid(unique: str, i: int) -> str:
    return f"{unique[:8]}-0000-4000-8000-{i:012d}"


def _commit_one(conn: Any, spec: PipelineSpec, batch_id: int, unique: str, offset: int, **checks: Any) -> None:  # noqa: ANN401
    """Commit one record at ``offset`` of partition 0 (``checks``: topic_id, lease_epoch)."""
    line = _tx(spec.topic, _uid(unique, offset), 0, offset)
    commit_batch(conn, spec, batch_id, [line], [], {0: PartitionRange(offset, offset)}, **checks)


# -- pure logic ----------------------------------------------------------------------------------
@pytest.mark.unit
def test_a_batch_must_continue_the_ledger() -> None:
    ledger = {0: LedgerEntry(0, 100, "id-1")}
    check_batch("t", {0: PartitionRange(100, 150)}, ledger, "id-1")  # continues
    check_batch("t", {0: PartitionRange(40, 99)}, ledger, "id-1")  # a replay: skipped later, not refused
    check_batch("t", {1: PartitionRange(0, 9)}, ledger, "id-1")  # a new partition from its first offset
    with pytest.raises(OffsetGapError, match=r"\[OFFSET_GAP\] t\[0\]: the batch starts at offset 120 .* ends at 100"):
        check_batch("t", {0: PartitionRange(120, 150)}, ledger, "id-1")
    with pytest.raises(OffsetGapError, match=r"t\[1\]"):
        check_batch("t", {1: PartitionRange(5, 9)}, ledger, "id-1")
    with pytest.raises(TopicRecreatedError, match=r"\[TOPIC_RECREATED\] t: Kafka's topic id is id-2, the ledger's"):
        check_batch("t", {0: PartitionRange(0, 5)}, ledger, "id-2")


@pytest.mark.unit
def test_plan_start_seeds_new_partitions_and_finds_gaps_and_recreated_topics() -> None:
    ledger = {0: LedgerEntry(0, 100, "id-1"), 1: LedgerEntry(0, 50, None)}
    seeds, gaps = plan_start("t", ledger, "id-1", {0: (0, 120), 1: (80, 90), 2: (30, 40)})
    assert seeds == {2: 30}
    assert gaps == [Gap(1, 50, 80)]
    assert gaps[0].describe("t") == "t[1] offsets 50..79 (30 records)"
    with pytest.raises(
        TopicRecreatedError, match="partition 0 ends at offset 60, but the ledger has committed up to 100"
    ):
        plan_start("t", ledger, "id-1", {0: (0, 60)})
    with pytest.raises(TopicRecreatedError):
        plan_start("t", ledger, "id-9", {0: (0, 500)})


# -- against the real Postgres -----------------------------------------------------------------
@pytest.mark.integration
def test_commit_refuses_a_gap_and_a_recreated_topic(settings: Settings, spec: PipelineSpec, unique: str) -> None:
    ensure_schema(settings.dsn(), [spec])
    topic = spec.topic
    conn = connect(settings.dsn())
    try:
        _commit_one(conn, spec, 0, unique, 0, topic_id="A")
        with pytest.raises(OffsetGapError, match=rf"{topic}\[0\]: the batch starts at offset 5"):
            _commit_one(conn, spec, 1, unique, 5)
        with pytest.raises(TopicRecreatedError):
            _commit_one(conn, spec, 1, unique, 1, topic_id="B")
        assert committed_offsets(conn, topic) == {0: 1}  # nothing of the refused batches was written
        _commit_one(conn, spec, 1, unique, 1, topic_id="A")
        assert committed_offsets(conn, topic) == {0: 2}
    finally:
        conn.close()


@pytest.mark.integration
def test_a_sink_asked_to_wait_takes_the_lease_once_it_is_free_or_fails_saying_how_long_it_waited(
    settings: Settings, spec: PipelineSpec, caplog: pytest.LogCaptureFixture
) -> None:
    ensure_schema(settings.dsn(), [spec])
    topic = spec.topic
    first = acquire_lease(connect(settings.dsn()), topic)
    started = time.monotonic()
    refused = rf"{topic} \(.* pid \d+, since .*\) \(waited 1 s for it to finish\)"
    with pytest.raises(SinkAlreadyRunningError, match=refused):
        acquire_lease(connect(settings.dsn()), topic, wait=1.0)
    assert 1.0 <= time.monotonic() - started < 5
    releaser = threading.Timer(1.5, first.release)
    releaser.start()
    try:
        with caplog.at_level(logging.INFO, logger="tx_platform.warehouse._ledger"):
            started = time.monotonic()
            second = acquire_lease(connect(settings.dsn()), topic, wait=60.0)
            took = time.monotonic() - started
    finally:
        releaser.join()
    try:
        assert 1.4 <= took < 10  # it waited for the release, not for its deadline
        assert second.epoch == first.epoch + 1
        said = [r.getMessage() for r in caplog.records]
        waiting = f"waiting for the lease of {topic}, held by {first.holder} since "
        assert any(m.startswith(waiting) for m in said), said
        assert any(m.startswith(f"took the lease of {topic} after waiting ") for m in said), said
    finally:
        second.release()


@pytest.mark.integration
def test_one_sink_per_topic_and_a_fenced_sink_commits_nothing(
    settings: Settings, spec: PipelineSpec, unique: str
) -> None:
    ensure_schema(settings.dsn(), [spec])
    topic = spec.topic
    first = acquire_lease(connect(settings.dsn()), topic)
    with pytest.raises(SinkAlreadyRunningError, match=rf"\[SINK_ALREADY_RUNNING\] another sink is committing {topic}"):
        acquire_lease(connect(settings.dsn()), topic)
    conn = connect(settings.dsn())
    try:
        _commit_one(conn, spec, 0, unique, 0, lease_epoch=first.epoch)
        first.release()  # e.g. its session died; a new sink takes over
        second = acquire_lease(connect(settings.dsn()), topic)
        assert second.epoch == first.epoch + 1
        with pytest.raises(SinkFencedError, match=rf"\[SINK_FENCED\] {topic}: .*epoch {first.epoch}.*batch 1"):
            _commit_one(conn, spec, 1, unique, 1, lease_epoch=first.epoch)
        assert committed_offsets(conn, topic) == {0: 1}
        with pytest.raises(SinkAlreadyRunningError):
            forget_topic(conn, spec)  # not while a sink runs
        second.release()
        assert forget_topic(conn, spec) == {
            "transactions": 1, "quarantine": 0, "sink_offsets": 1, "sink_batches": 1, "sink_gaps": 0,
            "sink_latency": 2, "dlq_progress": 0,
        }  # fmt: skip
        assert committed_offsets(conn, topic) == {}
    finally:
        conn.close()


@pytest.mark.integration
def test_data_loss_stops_the_sink_or_is_recorded_and_accounted(
    settings: Settings, spec: PipelineSpec, unique: str
) -> None:
    ensure_schema(settings.dsn(), [spec])
    topic = spec.topic
    conn = connect(settings.dsn())
    try:
        lines = [_tx(topic, _uid(unique, i), 0, i) for i in range(10)]
        commit_batch(conn, spec, 0, lines, [], {0: PartitionRange(0, 9)}, topic_id="A")
        # retention deleted offsets 10..24 before the sink read them
        with pytest.raises(
            DataLossError, match=rf"\[DATA_LOSS\] {topic}: .*{topic}\[0\] offsets 10..24 \(15 records\)"
        ):
            prepare_ledger(conn, topic, "A", {0: (25, 40)}, record_gaps=False)
        assert committed_offsets(conn, topic) == {0: 10}
        gaps = prepare_ledger(conn, topic, "A", {0: (25, 40), 1: (7, 7)}, record_gaps=True)
        assert gaps == [Gap(0, 10, 25)]
        assert committed_offsets(conn, topic) == {0: 25, 1: 7}  # partition 1 seeded at its log start
        more = [_tx(topic, _uid(unique, i), 0, i) for i in range(25, 30)]
        commit_batch(conn, spec, 1, more, [], {0: PartitionRange(25, 29)}, topic_id="A")
        report = loss_report(conn, spec)
        assert (report.records_read, report.rows, report.lost_in_gaps, report.unexplained) == (15, 15, 15, 0)
    finally:
        conn.close()


@pytest.mark.integration
def test_a_record_postgres_refuses_is_quarantined_and_the_batch_commits(
    settings: Settings, spec: PipelineSpec, unique: str
) -> None:
    """The safety net under the sink's rules: Postgres' refusal quarantines one record, not the batch."""
    ensure_schema(settings.dsn(), [spec])
    topic = spec.topic
    good = [_tx(topic, _uid(unique, i), 0, i) for i in (0, 2, 4)]
    refused = [
        _tx(topic, _uid(unique, 1) + "\n", 0, 1),  # the uuid cast refuses a trailing newline
        _tx(topic, _uid(unique, 3), 0, 3, city="nul\x00byte"),  # text cannot hold U+0000
        _tx(topic, _uid(unique, 5), 0, 5, merchant_category="5411\n"),  # the CHECK refuses it
        _tx(topic, _uid(unique, 6), 0, 6, amount="1" + "0" * 20),  # numeric(18,2) overflows
    ]
    conn = connect(settings.dsn())
    try:
        result = commit_batch(conn, spec, 0, good + refused, [], {0: PartitionRange(0, 6)})
        with conn.cursor() as cur:
            cur.execute(
                "SELECT kafka_offset, error_code, reason, raw_value FROM quarantine WHERE kafka_topic = %s ORDER BY 1",
                (topic,),
            )
            rows = cur.fetchall()
        report = loss_report(conn, spec)
    finally:
        conn.close()
    assert (result.inserted, result.quarantined, result.warehouse_rejected) == (3, 4, 4)
    assert [(o, c) for o, c, _r, _v in rows] == [(o, "WAREHOUSE_REJECTED") for o in (1, 3, 5, 6)]
    assert all(r.startswith("PostgreSQL refused the record: ") and "\x00" not in r for _o, _c, r, _v in rows)
    assert "uuid" in rows[0][2] and "check constraint" in rows[2][2]
    assert [bytes(v) for *_rest, v in rows] == [bytes([0, o]) for o in (1, 3, 5, 6)]  # raw bytes kept
    assert report.ok and report.records_read == 7


@pytest.mark.integration
def test_daily_summary_sums_amounts_near_the_column_limit(settings: Settings, spec: PipelineSpec, unique: str) -> None:
    ensure_schema(settings.dsn(), [spec])
    topic = spec.topic
    day = "2025-03-04"
    big = "9999999999999999.99"  # the largest numeric(18,2)
    lines = [
        _tx(topic, _uid(unique, i), 0, i, amount=big, merchant_id=f"M-{unique}", event_time=f"{day}T10:00:0{i}Z")
        for i in range(3)
    ]
    conn = connect(settings.dsn())
    try:
        commit_batch(conn, spec, 0, lines, [], {0: PartitionRange(0, 2)})
        with conn:
            rebuild_daily_merchant_summary(conn, date.fromisoformat(day))
        with conn.cursor() as cur:
            cur.execute("SELECT total_amount FROM daily_merchant_summary WHERE merchant_id = %s", (f"M-{unique}",))
            (total,) = cur.fetchone()
        recon = daily_reconciliation(conn, date.fromisoformat(day))
    finally:
        conn.close()
    assert total == Decimal(big) * 3
    assert recon.matches


@pytest.mark.integration
def test_schema_upgrade_widens_the_summary_sums(settings: Settings, spec: PipelineSpec) -> None:
    """A warehouse from before the fix (numeric(18,2) sums) is widened by ensure_schema, rows kept."""
    ensure_schema(settings.dsn(), [spec])
    conn = connect(settings.dsn())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT numeric_precision FROM information_schema.columns WHERE column_name = 'total_amount'")
            assert cur.fetchone()[0] == 38
        with conn.cursor() as cur, pytest.raises(psycopg2.errors.NumericValueOutOfRange):
            cur.execute("SELECT (9999999999999999.99::numeric(18,2) * 3)::numeric(18,2)")
    finally:
        conn.close()
