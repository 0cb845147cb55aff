"""Benchmark: the sink's commit (COPY into staging + one INSERT ... ON CONFLICT) vs row-by-row inserts.

Runs against the warehouse of the running stack (`make up`), on topics named bench_*; prints one
line per method with records/s, and the speed-up, in the same run. Usage:

    .venv/bin/python bench/bench_commit.py [--records 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import time
import uuid
from datetime import UTC, datetime

from tx_platform.config import load_settings
from tx_platform.contract import load_contract
from tx_platform.producer import generate
from tx_platform.warehouse import PartitionRange, commit_batch, connect, ensure_schema, transaction_columns


def _csv_lines(records: list[dict], topic: str) -> list[str]:
    fields = load_contract().field_names
    lines = []
    for offset, record in enumerate(records):
        buffer = io.StringIO()
        row = [record[f].isoformat() if f == "event_time" else record[f] for f in fields]
        csv.writer(buffer, lineterminator="").writerow([*row, topic, 0, offset, "\\x00", "\\x00"])
        lines.append(buffer.getvalue())
    return lines


def copy_commit(dsn: str, records: list[dict]) -> float:
    """The sink's path: one transaction, COPY, staged upsert, offsets."""
    topic = f"bench_{uuid.uuid4().hex[:8]}"
    lines = _csv_lines(records, topic)
    conn = connect(dsn)
    started = time.perf_counter()
    commit_batch(conn, topic, 0, lines, [], {0: PartitionRange(0, len(records) - 1)})
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def row_by_row(dsn: str, records: list[dict]) -> float:
    """Baseline: one INSERT ... ON CONFLICT per record (what a JDBC row writer does), one transaction."""
    topic = f"bench_{uuid.uuid4().hex[:8]}"
    columns = transaction_columns()
    fields = load_contract().field_names
    sql = (
        f"INSERT INTO transactions ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "  # noqa: S608
        "ON CONFLICT (transaction_id) DO NOTHING"
    )
    conn = connect(dsn)
    started = time.perf_counter()
    with conn, conn.cursor() as cur:
        for offset, record in enumerate(records):
            cur.execute(sql, [record[f] for f in fields] + [topic, 0, offset])
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def main() -> None:
    """Run both methods on the same records and print them side by side."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    dsn = load_settings().dsn()
    ensure_schema(dsn)
    results: dict[str, list[float]] = {"copy + staged upsert (sink)": [], "row-by-row INSERT (baseline)": []}
    for run in range(args.repeat):
        # fresh UUIDs per run and method, so every run inserts all of its rows
        batch = list(generate(args.records, seed=1_000 + run, start=datetime(2026, 1, 1, tzinfo=UTC)))
        other = list(generate(args.records, seed=2_000 + run, start=datetime(2026, 1, 1, tzinfo=UTC)))
        results["copy + staged upsert (sink)"].append(copy_commit(dsn, batch))
        results["row-by-row INSERT (baseline)"].append(row_by_row(dsn, other))
    medians = {name: statistics.median(times) for name, times in results.items()}
    print(f"{args.records:,} records per commit, median of {args.repeat} runs")  # noqa: T201
    for name, seconds in medians.items():
        print(f"  {name:<30} {seconds:8.3f} s  {args.records / seconds:>10,.0f} records/s")  # noqa: T201
    ratio = medians["row-by-row INSERT (baseline)"] / medians["copy + staged upsert (sink)"]
    print(f"  speed-up of the sink's path: {ratio:.1f}x")  # noqa: T201


if __name__ == "__main__":
    main()
