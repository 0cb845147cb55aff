"""Executor-side writes: each task commits its Kafka partitions' slices, each fenced, in parallel with the others.

The fence is tested where it lives (Postgres, with real concurrent transactions: a zombie and its
retry racing on one range, slices of different partitions committing side by side) and through the
sink (one ``sink_batches`` row per partition slice, every record accounted for by the audit).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pytest

from spark_jobs.sink import PipelineSink
from spark_jobs.sink._writer import ArrowRawBytes, SliceWriter
from tx_platform.checks import audit_pipeline
from tx_platform.config import Settings
from tx_platform.pipelines import PipelineSpec
from tx_platform.warehouse import BatchResult, PartitionRange, commit_batch, committed_offsets, connect, ensure_schema
from tx_platform_tests.conftest import fetch_all, produce_records
from tx_platform_tests.test_warehouse.test_commit_batch import ROW, _accepted_line, _bad, _tx


@pytest.mark.unit
def test_a_write_task_without_rows_commits_nothing_and_connects_nowhere(spec: PipelineSpec) -> None:
    writer = SliceWriter(spec, "postgresql://unused", 7, topic_id=None, lease_epoch=None)
    empty = pa.RecordBatch.from_pylist(
        [{"ok": True, "partition": 0, "offset": 10, "line": "a", "key": b"k", "value": b"v"}]
    ).slice(0, 0)
    assert list(writer(iter([]))) == list(writer(iter([empty]))) == []


@pytest.mark.unit
def test_raw_bytes_are_read_from_the_slices_arrow_columns_on_demand() -> None:
    accepted = pa.table({"offset": [5, 7, 9], "key": [b"k5", None, b"k9"], "value": [b"v5", b"v7", None]})
    raw = ArrowRawBytes(2, accepted)
    assert (raw[(2, 7)], raw.get((2, 9)), raw.get((2, 6)), raw.get((1, 5))) == (
        (None, b"v7"), (b"k9", None), None, None,
    )  # fmt: skip
    assert (len(raw), list(raw)) == (3, [(2, 5), (2, 7), (2, 9)])


def _slice(spec: PipelineSpec, unique: str, partition: int, first: int, count: int) -> tuple[list[str], list[str]]:
    good = [
        _tx(spec.topic, f"{unique[:8]}-{partition:04d}-4000-8000-{o:012d}", partition, o)
        for o in range(first, first + count - 1)
    ]
    return good, [_bad(spec.topic, partition, first + count - 1)]  # the slice's last record is a reject


def _race(*commits: Callable[[], BatchResult]) -> list[BatchResult]:
    """Run the commits at the same time, each on its own connection and thread."""
    results: list[Any] = [None] * len(commits)
    barrier = threading.Barrier(len(commits))

    def run(i: int) -> None:
        barrier.wait()
        results[i] = commits[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(commits))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def _commit(
    settings: Settings, spec: PipelineSpec, batch_id: int, good: list[str], bad: list[str], partition: int,
    rng: PartitionRange, fence: bool = True,
) -> Callable[[], BatchResult]:  # fmt: skip
    def run() -> BatchResult:
        conn = connect(settings.dsn())
        try:
            return commit_batch(conn, spec, batch_id, good, bad, {partition: rng}, fence=fence)
        finally:
            conn.close()

    return run


@pytest.mark.integration
def test_a_task_and_its_zombie_racing_on_one_range_write_it_once(
    settings: Settings, spec: PipelineSpec, unique: str
) -> None:
    ensure_schema(settings.dsn(), [spec])
    good, bad = _slice(spec, unique, 0, 0, 200)
    rng = PartitionRange(0, 199)
    results = _race(*[_commit(settings, spec, 3, good, bad, 0, rng) for _ in range(3)])
    assert sorted((r.inserted, r.quarantined, r.skipped) for r in results) == [(0, 0, 200), (0, 0, 200), (199, 1, 0)]
    conn = connect(settings.dsn())
    try:
        assert committed_offsets(conn, spec.topic) == {0: 200}
    finally:
        conn.close()
    query = "SELECT partitions, records, inserted, skipped FROM sink_batches WHERE topic = %s ORDER BY skipped"
    assert fetch_all(settings.dsn(), query, spec.topic) == [([0], 200, 199, 0), ([0], 200, 0, 200), ([0], 200, 0, 200)]


def _task_rows(spec: PipelineSpec, unique: str, partition: int, count: int) -> pa.RecordBatch:
    """A write task's input for one partition's slice, as the decode stage gives it: accepted lines without raw
    bytes (those come in the key and value columns), the last record a reject."""
    good = [
        _accepted_line(spec, f"{unique[:8]}-{partition:04d}-4000-8000-{o:012d}", ROW, partition, o)
        for o in range(count - 1)
    ]
    lines = [(True, line) for line in good] + [(False, _bad(spec.topic, partition, count - 1))]
    return pa.RecordBatch.from_pylist(
        [
            {"ok": ok, "partition": partition, "offset": o, "line": line, "key": b"k%d" % o, "value": b"v%d" % o}
            for o, (ok, line) in enumerate(lines)
        ]
    )


@pytest.mark.integration
def test_a_write_task_holding_two_kafka_partitions_commits_each_slice_fenced_on_its_own(
    settings: Settings, spec: PipelineSpec, unique: str
) -> None:
    """The driver coalesces the Kafka source's partitions to the task slots: a task gets several slices."""
    ensure_schema(settings.dsn(), [spec])
    batches = [_task_rows(spec, unique, 1, 30), _task_rows(spec, unique, 0, 20)]  # as they come, in any order

    def run_task() -> list[tuple[int, int, int, int, int, int]]:
        writer = SliceWriter(spec, settings.dsn(), 7, topic_id=None, lease_epoch=None)
        rows = [row for out in writer(iter(batches)) for row in out.to_pylist()]
        return [(r["partition"], r["first"], r["last"], r["inserted"], r["quarantined"], r["skipped"]) for r in rows]

    # one result per slice, each its own transaction over its own range
    assert run_task() == [(0, 0, 19, 19, 1, 0), (1, 0, 29, 29, 1, 0)]
    # the same task again (Spark retried it after it committed): each slice's fence makes it write nothing
    assert run_task() == [(0, 0, 19, 0, 0, 20), (1, 0, 29, 0, 0, 30)]
    conn = connect(settings.dsn())
    try:
        assert committed_offsets(conn, spec.topic) == {0: 20, 1: 30}
    finally:
        conn.close()
    query = "SELECT partitions, records, inserted, skipped FROM sink_batches WHERE topic = %s ORDER BY 1, 4"
    assert fetch_all(settings.dsn(), query, spec.topic) == [
        ([0], 20, 19, 0), ([0], 20, 0, 20), ([1], 30, 29, 0), ([1], 30, 0, 30),
    ]  # fmt: skip


@pytest.mark.integration
def test_slices_of_different_partitions_commit_side_by_side(
    settings: Settings, spec: PipelineSpec, unique: str
) -> None:
    ensure_schema(settings.dsn(), [spec])
    slices = {p: _slice(spec, unique, p, 0, 500) for p in range(4)}
    results = _race(*[_commit(settings, spec, 0, *slices[p], p, PartitionRange(0, 499)) for p in range(4)])
    assert [(r.inserted, r.quarantined, r.skipped) for r in results] == [(499, 1, 0)] * 4
    conn = connect(settings.dsn())
    try:
        assert committed_offsets(conn, spec.topic) == {p: 500 for p in range(4)}
    finally:
        conn.close()


@pytest.mark.integration
def test_without_the_fence_a_replayed_slice_is_written_twice(
    settings: Settings, spec: PipelineSpec, unique: str
) -> None:
    """The negative control of the fence, at the commit: what the fault tests' audit must then catch."""
    ensure_schema(settings.dsn(), [spec])
    good, bad = _slice(spec, unique, 0, 0, 50)
    rng = PartitionRange(0, 49)
    assert _commit(settings, spec, 0, good, bad, 0, rng)().inserted == 49
    replay = _commit(settings, spec, 0, good, bad, 0, rng, fence=False)()
    assert (replay.inserted, replay.quarantined, replay.skipped) == (0, 49, 0)  # 49 good records again, as duplicates
    query = (
        "SELECT count(*) FROM transactions t JOIN quarantine q USING (kafka_topic, kafka_partition, kafka_offset) "
        "WHERE t.kafka_topic = %s"
    )
    assert fetch_all(settings.dsn(), query, spec.topic) == [(49,)]


@pytest.mark.integration
@pytest.mark.slow
def test_the_sink_commits_one_slice_per_partition_and_accounts_for_every_record(
    spark, settings: Settings, spec: PipelineSpec, create_topic  # noqa: ANN001
) -> None:  # fmt: skip
    create_topic(spec.topic, partitions=4)
    produce_records(spec, settings, 4_000, seed=1010, bad_ratio=0.02)
    stats = PipelineSink(spark, spec, settings).run_available_now()
    assert stats.records == 4_000
    assert stats.slices == 4 * stats.batches
    rows = fetch_all(
        settings.dsn(),
        "SELECT partitions, sum(records) FROM sink_batches WHERE topic = %s GROUP BY partitions ORDER BY 1",
        spec.topic,
    )
    assert [p for p, _ in rows] == [[0], [1], [2], [3]]  # each commit held exactly one partition
    assert sum(n for _, n in rows) == 4_000
    conn = connect(settings.dsn())
    try:
        audit = audit_pipeline(conn, settings.kafka_bootstrap, spec)
    finally:
        conn.close()
    print(audit.as_dict())
    assert (audit.records, audit.rows + audit.quarantined, audit.dlq) == (4_000, 4_000, audit.quarantined)
    assert audit.quarantined > 0
    assert (audit.lost, audit.duplicated, audit.unexplained) == (0, 0, 0)


@pytest.mark.integration
def test_slices_stage_without_raw_bytes_yet_duplicates_and_refused_records_keep_theirs(
    settings: Settings, spec: PipelineSpec, unique: str
) -> None:
    """The sink's layout: accepted lines carry no raw bytes; the few records that need them take them from beside."""
    ensure_schema(settings.dsn(), [spec])
    tx_id = f"{unique[:8]}-2222-4000-8000-000000000000"
    negative = [*ROW[:5], "-12.34", *ROW[6:]]  # a negative amount: the table's CHECK refuses it

    def line(values: list[str], offset: int) -> str:
        return _accepted_line(spec, tx_id if offset < 2 else f"{unique[:8]}-3333-4000-8000-000000000000", values, 0,
                              offset)  # fmt: skip

    lines = [line(ROW, 0), line(ROW, 1), line(negative, 2)]
    raw = {(0, o): (f"key{o}".encode(), f"value{o}".encode()) for o in range(3)}
    conn = connect(settings.dsn())
    try:
        result = commit_batch(conn, spec, 0, lines, [], {0: PartitionRange(0, 2)}, raw=raw)
    finally:
        conn.close()
    assert (result.inserted, result.quarantined, result.warehouse_rejected) == (1, 2, 1)
    rows = fetch_all(
        settings.dsn(),
        "SELECT kafka_offset, error_code, raw_key, raw_value FROM quarantine WHERE kafka_topic = %s ORDER BY 1",
        spec.topic,
    )
    assert [(o, code, bytes(k), bytes(v)) for o, code, k, v in rows] == [
        (1, spec.duplicate_code, b"key1", b"value1"),
        (2, "WAREHOUSE_REJECTED", b"key2", b"value2"),
    ]
    # the latency histograms counted the one inserted row, once per kind
    counts = fetch_all(
        settings.dsn(),
        "SELECT kind, sum(count) FROM sink_latency WHERE topic = %s AND kind <> 'commit' GROUP BY kind ORDER BY 1",
        spec.topic,
    )
    assert counts == [("event_time", 1), ("kafka_timestamp", 1)]
