"""The sink's commit: rows, quarantine and offsets of one micro-batch in one Postgres transaction.

Rows arrive as CSV text (one record per line) and are loaded with COPY into temporary staging
tables; then, under a table lock on ``sink_offsets``:

1. staged records at offsets the sink has already committed are dropped (a replay writes nothing);
2. new transactions are inserted, ``ON CONFLICT (transaction_id) DO NOTHING``;
3. a record whose ``transaction_id`` already exists is quarantined as ``DUPLICATE_TRANSACTION_ID``
   with its raw key and value bytes, so that every Kafka record still ends in exactly one place;
4. rejected records go to ``quarantine``; the offsets move forward; a ``sink_batches`` row is added.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from psycopg2.extensions import connection as Connection

from tx_platform.contract import load_contract

#: Quarantine columns in CSV order (raw bytes as Postgres hex, ``\x...``).
QUARANTINE_COLUMNS = (
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "kafka_timestamp",
    "raw_key",
    "raw_value",
    "error_code",
    "reason",
)
SOURCE_COLUMNS = ("kafka_topic", "kafka_partition", "kafka_offset")


#: Raw bytes staged with every accepted record: a duplicate is quarantined with them.
RAW_COLUMNS = ("raw_key", "raw_value")


def transaction_columns() -> tuple[str, ...]:
    """Columns of ``transactions`` the sink writes: the contract's fields, then the Kafka coordinates."""
    return (*load_contract().field_names, *SOURCE_COLUMNS)


def staged_columns() -> tuple[str, ...]:
    """Columns of a staged accepted record (CSV order): transaction columns, then its raw bytes."""
    return (*transaction_columns(), *RAW_COLUMNS)


@dataclass(frozen=True)
class PartitionRange:
    """Offsets ``[first, last]`` of one partition seen in a batch."""

    first: int
    last: int


@dataclass(frozen=True)
class BatchResult:
    """What one committed batch did."""

    records: int
    inserted: int
    quarantined: int
    skipped: int  # records at offsets committed before (replays)


def _copy(cur: object, table: str, columns: Iterable[str], lines: list[str]) -> None:
    if not lines:
        return
    buffer = io.StringIO("\n".join(lines) + "\n")
    cur.copy_expert(  # type: ignore[attr-defined]
        f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)", buffer
    )


def commit_batch(
    conn: Connection,
    topic: str,
    batch_id: int,
    transaction_lines: list[str],
    quarantine_lines: list[str],
    ranges: Mapping[int, PartitionRange],
) -> BatchResult:
    """Commit one micro-batch exactly once. The caller owns the connection; this commits it."""
    tx_cols = transaction_columns()
    records = len(transaction_lines) + len(quarantine_lines)
    with conn, conn.cursor() as cur:
        cur.execute("LOCK TABLE sink_offsets IN SHARE ROW EXCLUSIVE MODE")
        cur.execute(
            "CREATE TEMP TABLE stage_tx ON COMMIT DROP AS SELECT "  # noqa: S608 - contract column names
            + ", ".join(tx_cols)
            + " FROM transactions WITH NO DATA"
        )
        cur.execute("ALTER TABLE stage_tx ADD COLUMN raw_key bytea, ADD COLUMN raw_value bytea")
        cur.execute("CREATE TEMP TABLE stage_q (LIKE quarantine INCLUDING DEFAULTS) ON COMMIT DROP")
        _copy(cur, "stage_tx", staged_columns(), transaction_lines)
        _copy(cur, "stage_q", QUARANTINE_COLUMNS, quarantine_lines)
        skipped = 0
        for stage in ("stage_tx", "stage_q"):
            cur.execute(
                f"DELETE FROM {stage} s USING sink_offsets o "  # noqa: S608 - fixed table names
                "WHERE o.topic = s.kafka_topic AND o.partition = s.kafka_partition AND s.kafka_offset < o.next_offset"
            )
            skipped += cur.rowcount
        cols = ", ".join(tx_cols)
        cur.execute(
            f"""
            WITH inserted AS (
                INSERT INTO transactions ({cols})
                SELECT {cols} FROM stage_tx ORDER BY kafka_partition, kafka_offset
                ON CONFLICT (transaction_id) DO NOTHING
                RETURNING kafka_partition, kafka_offset
            ), duplicates AS (
                INSERT INTO quarantine ({", ".join(QUARANTINE_COLUMNS)})
                SELECT s.kafka_topic, s.kafka_partition, s.kafka_offset, NULL, s.raw_key, s.raw_value,
                       'DUPLICATE_TRANSACTION_ID',
                       'transaction_id ' || s.transaction_id || ' was already stored from another record'
                FROM stage_tx s
                WHERE NOT EXISTS (
                    SELECT 1 FROM inserted i
                    WHERE i.kafka_partition = s.kafka_partition AND i.kafka_offset = s.kafka_offset
                )
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM duplicates)
            """  # noqa: S608 - columns come from the contract file, not from input
        )
        inserted, duplicates = cur.fetchone()
        cur.execute(
            f"INSERT INTO quarantine ({', '.join(QUARANTINE_COLUMNS)}) "  # noqa: S608
            f"SELECT {', '.join(QUARANTINE_COLUMNS)} FROM stage_q ON CONFLICT DO NOTHING"
        )
        quarantined = duplicates + cur.rowcount
        for partition, rng in sorted(ranges.items()):
            cur.execute(
                """
                INSERT INTO sink_offsets (topic, partition, first_offset, next_offset, batch_id)
                VALUES (%s, %s, %s, %s, %s)
                ON CONFLICT (topic, partition) DO UPDATE SET
                    first_offset = LEAST(sink_offsets.first_offset, EXCLUDED.first_offset),
                    next_offset = GREATEST(sink_offsets.next_offset, EXCLUDED.next_offset),
                    batch_id = EXCLUDED.batch_id,
                    updated_at = now()
                """,
                (topic, partition, rng.first, rng.last + 1, batch_id),
            )
        cur.execute(
            "INSERT INTO sink_batches (topic, batch_id, records, inserted, quarantined, skipped) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (topic, batch_id, records, inserted, quarantined, skipped),
        )
    return BatchResult(records=records, inserted=inserted, quarantined=quarantined, skipped=skipped)


def committed_offsets(conn: Connection, topic: str) -> dict[int, int]:
    """Next offset to read per partition, as committed with the rows."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('sink_offsets') IS NOT NULL")
        if not cur.fetchone()[0]:
            return {}  # the sink has never run against this database
        cur.execute("SELECT partition, next_offset FROM sink_offsets WHERE topic = %s", (topic,))
        return {int(p): int(o) for p, o in cur.fetchall()}
