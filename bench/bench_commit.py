"""Benchmark: the sink's commit vs row-by-row inserts.

The sink's commit as the sink calls it (accepted lines without raw bytes, which travel beside them):
the direct load (COPY into the table, keys claimed from it) where the table stores Kafka's timestamp,
else the staged path (COPY into staging + one INSERT ... ON CONFLICT); the staged path on its own,
as a slice that Postgres refuses part of takes it (lines carrying their raw bytes always do); and
the baseline, one INSERT per record.

Runs against the warehouse of the running stack (`make up`), in a schema of its own (dropped after),
on topics named bench_*; prints, per pipeline, one line per method with records/s, and the speed-up,
in the same run. Usage:

    .venv/bin/python bench/bench_commit.py [--records 20000] [--repeat 3] [--pipeline transactions ...]
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

from _common import bench_schema

from tx_platform.config import load_settings
from tx_platform.pipelines import PIPELINES, PipelineSpec
from tx_platform.warehouse import PartitionRange, commit_batch, connect, ensure_schema, table_columns

SINK = "the sink's commit"
STAGED = "staged path (COPY + upsert)"
BASELINE = "row-by-row INSERT (baseline)"


def _csv_lines(spec: PipelineSpec, records: list[dict], raw_bytes: bool) -> list[str]:
    """Records as the sink renders them: the table's columns, then Kafka's timestamp; or (``raw_bytes``)
    the table's columns, then raw key and value (a layout that always takes the staged path)."""
    fields = spec.contract.field_names
    kafka_timestamp = datetime.now(UTC).isoformat()
    lines = []
    for offset, record in enumerate(records):
        buffer = io.StringIO()
        row = [record[f].isoformat() if isinstance(record[f], datetime) else record[f] for f in fields]
        tail = ["\\x00", "\\x00"] if raw_bytes else [kafka_timestamp]
        csv.writer(buffer, lineterminator="").writerow([*row, spec.topic, 0, offset, *tail])
        lines.append(buffer.getvalue())
    return lines


def copy_commit(dsn: str, spec: PipelineSpec, records: list[dict], staged: bool = False) -> float:
    """The sink's commit of one slice: one transaction, its rows, offsets and histograms."""
    spec = spec.with_topic(f"bench_{uuid.uuid4().hex[:8]}")
    lines = _csv_lines(spec, records, raw_bytes=staged)
    raw = None if staged else {(0, offset): (b"\x00", b"\x00") for offset in range(len(records))}
    conn = connect(dsn)
    started = time.perf_counter()
    result = commit_batch(conn, spec, 0, lines, [], {0: PartitionRange(0, len(records) - 1)}, raw=raw)
    elapsed = time.perf_counter() - started
    conn.close()
    assert result.inserted == len(records), result  # noqa: S101 - every record is new
    return elapsed


def row_by_row(dsn: str, spec: PipelineSpec, records: list[dict]) -> float:
    """Baseline: one INSERT ... ON CONFLICT per record (what a JDBC row writer does), one transaction.

    No conflict target: the table may be partitioned by day, its primary key then holds the event time."""
    topic = f"bench_{uuid.uuid4().hex[:8]}"
    columns = table_columns(spec)
    fields = spec.contract.field_names
    sql = (
        f"INSERT INTO {spec.table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "  # noqa: S608
        "ON CONFLICT DO NOTHING"
    )
    conn = connect(dsn)
    started = time.perf_counter()
    with conn, conn.cursor() as cur:
        for offset, record in enumerate(records):
            cur.execute(sql, [record[f] for f in fields] + [topic, 0, offset])
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def bench(dsn: str, spec: PipelineSpec, count: int, repeat: int) -> dict[str, float]:
    """Median seconds of each method over ``repeat`` runs of ``count`` fresh records."""
    results: dict[str, list[float]] = {SINK: [], STAGED: [], BASELINE: []}
    # in the recent past: inside every pipeline's event-time rules
    start = datetime.now(UTC) - timedelta(hours=3)
    for run in range(repeat):
        # fresh ids per run and method, so every run inserts all of its rows
        batch = list(spec.generate(count, 1_000 + run, start, span=timedelta(hours=2)))
        staged = list(spec.generate(count, 3_000 + run, start, span=timedelta(hours=2)))
        other = list(spec.generate(count, 2_000 + run, start, span=timedelta(hours=2)))
        results[SINK].append(copy_commit(dsn, spec, batch))
        results[STAGED].append(copy_commit(dsn, spec, staged, staged=True))
        results[BASELINE].append(row_by_row(dsn, spec, other))
    return {name: statistics.median(times) for name, times in results.items()}


def main() -> None:
    """Run both methods on the same kind of records, per pipeline, and print them side by side."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--pipeline", action="append", choices=sorted(PIPELINES), help="repeatable [default: every pipeline]"
    )
    args = parser.parse_args()
    specs = [PIPELINES[name] for name in args.pipeline or PIPELINES]
    # a schema of its own, dropped after: the development warehouse keeps nothing of the benchmark
    with bench_schema(load_settings(), "commit") as dsn:
        ensure_schema(dsn, specs)
        medians_by_pipeline = {spec.name: bench(dsn, spec, args.records, args.repeat) for spec in specs}
    for spec in specs:
        medians = medians_by_pipeline[spec.name]
        print(f"{spec.name}: {args.records:,} records per commit, median of {args.repeat} runs")  # noqa: T201
        for name, seconds in medians.items():
            print(f"  {name:<30} {seconds:8.3f} s  {args.records / seconds:>10,.0f} records/s")  # noqa: T201
        print(f"  speed-up of the sink's commit: {medians[BASELINE] / medians[SINK]:.1f}x over row by row, "  # noqa: T201
              f"{medians[STAGED] / medians[SINK]:.2f}x over the staged path")  # fmt: skip


if __name__ == "__main__":
    main()
