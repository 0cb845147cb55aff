"""The sink's commit: rows, quarantine and offsets of one micro-batch in one Postgres transaction.

Generic over the pipeline: its spec names the table, the natural key and the time column.

Rows arrive as CSV text (one record per line). The sink commits one Kafka partition's slice of a
micro-batch per transaction, from the Spark task that read it, so slices of different partitions
commit in parallel; each transaction holds the ledger rows of its partitions (``FOR UPDATE``):

1. the sink's lease is checked (a fenced sink commits nothing) and the batch must continue the
   ledger: same topic id, no partition starting after its committed end (see ``_ledger``);
2. **the direct load**, the common case: a slice that replays nothing, of a table that stores
   Kafka's timestamp, is COPYed straight into the table under a savepoint, and its natural keys are
   then claimed in the key registry from the rows just loaded (found by their Kafka coordinates).
   If Postgres refuses anything (a duplicate key, in the slice or stored before, or a value the
   sink's rules let through), the savepoint is rolled back and the slice takes steps 3-6 instead:
   the same outcome, record for record, at about twice the cost;
3. rows are loaded with COPY into temporary staging tables that carry the target's CHECK and NOT
   NULL constraints. A line Postgres refuses (which the sink's rules should have caught) is found
   by bisection under savepoints and quarantined as ``WAREHOUSE_REJECTED`` with Postgres' message,
   so no record can make the batch fail for ever;
4. staged records at offsets the sink has already committed are dropped (a replay writes nothing);
5. new rows are inserted, ``ON CONFLICT (<primary key>) DO NOTHING`` (the natural key, with the event
   time when the table is partitioned by day), with Kafka's timestamp when the table stores it; a
   partitioned table's natural key is first claimed in its key registry ``<table>_keys``, so a key is
   stored once across all partitions, whatever the event time a second record carries;
6. a record whose natural key already exists is quarantined as ``DUPLICATE_<KEY>``
   with its raw key and value bytes, so that every Kafka record still ends in exactly one place;
7. rejected records go to ``quarantine``; the offsets move forward through the **fence**: an
   ``UPDATE sink_offsets ... WHERE next_offset = <the value read under the row lock>`` that must
   change exactly one row per partition, so a replayed or zombie task whose range is already
   committed writes nothing (step 4 dropped its records) and can never move the ledger twice; a
   ``sink_batches`` row is added per partition with the seconds the transaction ran;
8. last, the latency of every inserted record (event time and Kafka timestamp -> now) and the
   commit's duration are added to the cumulative histograms in ``sink_latency``: exact, in the
   same transaction as the rows, so a crash or a replay never counts a record twice or not at all.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import encodings
from psycopg2.extras import execute_values

from tx_platform.contract import WAREHOUSE_REJECTED
from tx_platform.errors import SinkError
from tx_platform.metrics._definitions import COMMIT_BUCKETS, LATENCY_BUCKETS, bucket_for
from tx_platform.pipelines import PipelineSpec
from tx_platform.warehouse._ddl import key_registry, table_columns
from tx_platform.warehouse._ledger import LedgerEntry, PartitionRange, check_batch, check_lease, read_ledger

log = logging.getLogger(__name__)

#: ``work_mem`` of a commit's transaction: room to sort and join a slice's staged rows in memory.
COMMIT_WORK_MEM = "64MB"

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


#: Raw bytes of an accepted record, in the staged lines of the ``raw=True`` layout.
RAW_COLUMNS = ("raw_key", "raw_value")
#: Kafka's timestamp of an accepted record, staged for the latency histogram, and stored when the
#: pipeline's table has the column (``transactions``: its ``late`` flag is computed from it).
TIMESTAMP_COLUMN = "kafka_timestamp"

#: Raw key and value bytes of accepted records by (partition, offset), handed to ``commit_batch``
#: beside the staged lines: only a duplicate or a record Postgres refuses needs them.
RawBytes = Mapping[tuple[int, int], tuple[bytes | None, bytes | None]]


def staged_columns(spec: PipelineSpec, raw: bool = False) -> tuple[str, ...]:
    """Columns of a staged accepted record, in the CSV order the sink renders: the table's columns,
    then (``raw=True``) raw key and value bytes as Postgres hex, then Kafka's timestamp. The sink
    stages without raw bytes and passes them beside the lines (:data:`RawBytes`): hex-encoding
    every accepted record's bytes would more than double what every line carries. The warehouse
    owns this layout; the Spark side renders it by name."""
    return (*table_columns(spec), *(RAW_COLUMNS if raw else ()), TIMESTAMP_COLUMN)


def _staged_columns_of(spec: PipelineSpec, lines: list[str], raw: RawBytes | None) -> tuple[str, ...]:
    """The staged columns ``lines`` carry: without ``raw`` beside them, lines carry raw bytes, with
    or without the Kafka timestamp (one field fewer, e.g. lines written by hand in tests)."""
    if raw is not None:
        return staged_columns(spec)
    columns = staged_columns(spec, raw=True)
    if lines and len(next(csv.reader(io.StringIO(lines[0])), [])) == len(columns) - 1:
        return columns[:-1]
    return columns


def _hex(value: bytes | None) -> str:
    return "" if value is None else "\\x" + value.hex()


@dataclass(frozen=True)
class BatchResult:
    """What one committed batch did."""

    records: int
    inserted: int
    quarantined: int
    skipped: int  # records at offsets committed before (replays)
    warehouse_rejected: int = 0  # records Postgres refused although they passed the sink's rules
    loaded_directly: bool = False  # the accepted rows were COPYed straight into the table (no staging)


#: Characters of a Postgres error message kept as a quarantine reason.
_REASON_CHARS = 300


#: Bytes psycopg2 reads from a COPY's buffer at a time.
_COPY_CHUNK = 1 << 20


def _copy(cur: Any, table: str, columns: Iterable[str], lines: list[str]) -> None:  # noqa: ANN401 - a cursor
    if not lines:
        return
    # encoded once, as psycopg2 would encode each chunk it reads (in the connection's encoding), and read in
    # large chunks: half the Python time of a str buffer read 8 kB at a time
    payload = ("\n".join(lines) + "\n").encode(encodings[cur.connection.encoding])
    cur.copy_expert(
        f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)", io.BytesIO(payload), size=_COPY_CHUNK
    )


def _pg_message(exc: psycopg2.Error) -> str:
    """The first line of Postgres' message (e.g. ``invalid input syntax for type uuid: "…"``), bounded."""
    lines = (exc.pgerror or str(exc)).strip().splitlines() or [type(exc).__name__]
    return lines[0].replace("\x00", "")[:_REASON_CHARS]


def copy_isolating(cur: Any, table: str, columns: Iterable[str], lines: list[str]) -> list[tuple[str, str]]:  # noqa: ANN401
    """COPY ``lines``; return the lines Postgres refused, each with its error, having loaded the rest.

    One COPY under a savepoint in the normal case; on a data or constraint error, the lines are
    split in halves until each refused line stands alone (k bad lines cost about k·log2(n) COPYs).
    """
    columns = tuple(columns)
    if not lines:
        return []
    cur.execute("SAVEPOINT stage_copy")
    try:
        _copy(cur, table, columns, lines)
    except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
        cur.execute("ROLLBACK TO SAVEPOINT stage_copy")
        cur.execute("RELEASE SAVEPOINT stage_copy")
        if len(lines) == 1:
            return [(lines[0], _pg_message(exc))]
        middle = len(lines) // 2
        return copy_isolating(cur, table, columns, lines[:middle]) + copy_isolating(cur, table, columns, lines[middle:])
    cur.execute("RELEASE SAVEPOINT stage_copy")
    return []


def _csv_line(fields: list[str]) -> str:
    buffer = io.StringIO()
    # the terminator must be "\n": csv quotes a field only for the line breaks its terminator has
    csv.writer(buffer, lineterminator="\n").writerow(fields)
    return buffer.getvalue().removesuffix("\n")


def warehouse_reject(line: str, columns: tuple[str, ...], reason: str, raw: RawBytes | None = None) -> str:
    """A quarantine CSV line for a staged line Postgres refused (raw bytes kept, Kafka timestamp NULL).

    In our CSV an empty unquoted field is NULL and raw bytes are never empty (``\\x`` at least), so
    ``csv`` can read the staged line and write the quarantine line without losing a NULL. Lines
    staged without raw bytes take them from ``raw``.
    """
    row = dict(zip(columns, next(csv.reader(io.StringIO(line))), strict=False))
    if raw is not None and "raw_value" not in row:
        try:
            key, value = raw.get((int(row["kafka_partition"]), int(row["kafka_offset"])), (None, None))
        except (KeyError, ValueError):
            key, value = None, None
        row |= {"raw_key": _hex(key), "raw_value": _hex(value)}
    return _csv_line(
        [
            row.get("kafka_topic", ""),
            row.get("kafka_partition", ""),
            row.get("kafka_offset", ""),
            "",
            row.get("raw_key", ""),
            row.get("raw_value", ""),
            WAREHOUSE_REJECTED,
            f"PostgreSQL refused the record: {reason}",
        ]
    )


def commit_batch(
    conn: Connection,
    spec: PipelineSpec,
    batch_id: int,
    row_lines: list[str],
    quarantine_lines: list[str],
    ranges: Mapping[int, PartitionRange],
    *,
    topic_id: str | None = None,
    lease_epoch: int | None = None,
    fence: bool = True,
    raw: RawBytes | None = None,
    times: RowTimes | None = None,
) -> BatchResult:
    """Commit one micro-batch (or one partition's slice of it) exactly once. The caller owns the
    connection; this commits it.

    ``topic_id`` (Kafka's id of the topic) and ``lease_epoch`` (from ``acquire_lease``) are checked
    against the ledger when given; a batch that does not continue the ledger raises LedgerError.
    ``fence=False`` is for the fault tests' negative control only: it drops the replay filter and
    moves the ledger unconditionally, so a replayed slice is written twice. With ``raw``, the
    accepted lines are staged without raw bytes (:func:`staged_columns`) and ``raw`` holds them.
    ``times`` (:data:`RowTimes`, one instant per accepted line): when the slice is loaded directly, its
    latency histograms are computed from them instead of from its rows read back from the table.
    """
    topic, table = spec.topic, spec.table
    columns = table_columns(spec)
    records = len(row_lines) + len(quarantine_lines)
    partitions = sorted(ranges)
    with conn, conn.cursor() as cur:
        # commits share the table (ROW EXCLUSIVE) and serialize per partition on the ledger rows;
        # prepare_ledger and forget_topic (SHARE ROW EXCLUSIVE) wait for them and they for those
        cur.execute("LOCK TABLE sink_offsets IN ROW EXCLUSIVE MODE")
        # the sorts and joins over a slice's staged rows in memory (the default 4 MB spills a 50k-row slice to disk)
        cur.execute("SET LOCAL work_mem = %s", (COMMIT_WORK_MEM,))
        if lease_epoch is not None:
            check_lease(cur, topic, lease_epoch, batch_id)
        # a ledger row for a partition it does not know yet (next offset 0, so check_batch still
        # requires such a slice to start at 0), then the rows of this slice's partitions, locked in
        # partition order: a replayed or zombie task on the same partition waits here, then finds
        # its range committed
        cur.execute(
            "INSERT INTO sink_offsets (topic, partition, first_offset, next_offset, batch_id, topic_id) "
            "SELECT %s, p, 0, 0, -1, %s FROM unnest(%s::int[]) AS p ON CONFLICT DO NOTHING",
            (topic, topic_id, partitions),
        )
        cur.execute(
            "SELECT partition FROM sink_offsets WHERE topic = %s AND partition = ANY(%s) ORDER BY partition FOR UPDATE",
            (topic, partitions),
        )
        ledger = read_ledger(cur, topic)
        check_batch(topic, ranges, ledger, topic_id)
        conflict, stores_timestamp, keys_table = _target_shape(cur, spec)
        cur.execute("CREATE TEMP TABLE stage_q (LIKE quarantine INCLUDING DEFAULTS) ON COMMIT DROP")
        staged = _staged_columns_of(spec, row_lines, raw)
        replayed = any(rng.first < ledger[p].next_offset for p, rng in ranges.items() if p in ledger)
        # lines without raw bytes carry exactly the table's columns when it stores Kafka's timestamp
        direct = fence and not replayed and raw is not None and stores_timestamp
        direct = direct and _load_directly(cur, spec, batch_id, staged, row_lines, ranges, keys_table)
        refused: list[tuple[str, str]] = []
        if not direct:
            # staging carries the target's CHECK and NOT NULL constraints: a refused value fails here,
            # line by line, not in the INSERT below, where it would take the whole batch with it
            cur.execute(
                f"CREATE TEMP TABLE stage_tx (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) ON COMMIT DROP"
            )
            cur.execute(
                "ALTER TABLE stage_tx ADD COLUMN raw_key bytea, ADD COLUMN raw_value bytea"
                + ("" if stores_timestamp else f", ADD COLUMN {TIMESTAMP_COLUMN} timestamptz")
            )
            refused = copy_isolating(cur, "stage_tx", staged, row_lines)
        rejects = [warehouse_reject(line, staged, reason, raw) for line, reason in refused]
        for line, reason in refused:
            log.warning("batch %d: PostgreSQL refused a record the sink's rules accepted (%s): %.200s", batch_id,
                        reason, line)  # fmt: skip
        unstorable = copy_isolating(cur, "stage_q", QUARANTINE_COLUMNS, quarantine_lines + rejects)
        if unstorable:
            # a quarantine line itself refused: keep the record's coordinates and bytes, drop the rest
            minimal = [warehouse_reject(line, QUARANTINE_COLUMNS, reason) for line, reason in unstorable]
            still = copy_isolating(cur, "stage_q", QUARANTINE_COLUMNS, minimal)
            if still:
                msg = f"[QUARANTINE_WRITE_FAILED] batch {batch_id}: {len(still)} records could not be quarantined: "
                raise SinkError(msg + still[0][1])
        skipped = 0
        for stage in ("stage_tx", "stage_q") if fence and replayed else ():
            cur.execute(
                f"DELETE FROM {stage} s USING sink_offsets o "  # noqa: S608 - fixed table names
                "WHERE o.topic = s.kafka_topic AND o.partition = s.kafka_partition AND s.kafka_offset < o.next_offset"
            )
            skipped += cur.rowcount
        cols = ", ".join((*columns, TIMESTAMP_COLUMN) if stores_timestamp else columns)
        duplicated: list[tuple[int, int]] = []
        if direct:
            inserted = len(row_lines)
        else:
            inserted, duplicated = _insert_staged(cur, spec, cols, conflict, keys_table)
        duplicates = len(duplicated)
        if duplicated:
            _settle_duplicates(cur, topic, duplicated, raw)
        cur.execute(
            f"INSERT INTO quarantine ({', '.join(QUARANTINE_COLUMNS)}) "  # noqa: S608
            f"SELECT {', '.join(QUARANTINE_COLUMNS)} FROM stage_q ON CONFLICT DO NOTHING"
        )
        quarantined = duplicates + cur.rowcount
        for partition, rng in sorted(ranges.items()):
            entry = ledger[partition]
            _advance(cur, topic, partition, rng, entry, batch_id, topic_id, fence)
        # the transaction's duration so far (now() is its start), and the instant its rows count as committed
        cur.execute("SELECT clock_timestamp(), extract(epoch FROM clock_timestamp() - now())::float8")
        committed_at, seconds = cur.fetchone()
        cur.execute(
            "INSERT INTO sink_batches (topic, batch_id, partitions, records, inserted, quarantined, skipped, seconds) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (topic, batch_id, partitions, records, inserted, quarantined, skipped, seconds),
        )
        # the rows this commit inserted: the slice's rows in the table, or what is left in staging
        inserted_rows = "stage_tx"
        if direct:
            instants = ", ".join(latency_instants(spec).values())
            inserted_rows = f"(SELECT {instants} FROM {table} WHERE {_slice_rows(ranges)})"  # noqa: S608
        # instants for every line, or none (the rows are read back instead)
        known = direct and times is not None and all(len(instants) == inserted for instants in times.values())
        _accumulate_latency(
            cur, spec, committed_at, seconds, inserted_rows if inserted > 0 else None, times if known else None
        )
    return BatchResult(
        records=records,
        inserted=inserted,
        quarantined=quarantined,
        skipped=skipped,
        warehouse_rejected=len(refused),
        loaded_directly=direct,
    )


def _slice_rows(ranges: Mapping[int, PartitionRange]) -> str:
    """A condition on a pipeline table's Kafka coordinates: the rows of the slices ``ranges``
    (``%(topic)s`` is the topic's parameter). The ranges are integers, written in as such."""
    return (
        "kafka_topic = %(topic)s AND ("
        + " OR ".join(
            f"(kafka_partition = {int(p)} AND kafka_offset BETWEEN {int(r.first)} AND {int(r.last)})"
            for p, r in sorted(ranges.items())
        )
        + ")"
    )


def _load_directly(
    cur: Any,  # noqa: ANN401 - a cursor
    spec: PipelineSpec,
    batch_id: int,
    columns: tuple[str, ...],
    lines: list[str],
    ranges: Mapping[int, PartitionRange],
    keys_table: str | None,
) -> bool:
    """COPY the accepted ``lines`` straight into the pipeline's table and claim their natural keys in
    its key registry, under a savepoint; False, with nothing left of the attempt, if Postgres refuses
    any of it. The caller has checked that the slice replays nothing (no row of it can be stored yet).

    A refusal is what the staged path sorts out record by record: a natural key stored before or twice
    in the slice (the primary key, or the registry's), a value the sink's rules let through (a CHECK,
    a partition missing for its event time). The registry's rows come from the rows just loaded, found
    by their Kafka coordinates; any other count than the lines' also means the staged path.
    """
    if not lines:
        return True
    cur.execute("SAVEPOINT direct_load")
    try:
        _copy(cur, spec.table, columns, lines)
        if keys_table:
            key, time = spec.natural_key, spec.time_column
            cur.execute(
                f"INSERT INTO {keys_table} ({key}, {time}, kafka_topic, kafka_partition, kafka_offset) "  # noqa: S608
                f"SELECT {key}, {time}, kafka_topic, kafka_partition, kafka_offset FROM {spec.table} "
                f"WHERE {_slice_rows(ranges)} ORDER BY {key}",
                {"topic": spec.topic},
            )
            if cur.rowcount != len(lines):
                msg = f"{cur.rowcount} rows at the slice's coordinates for {len(lines)} lines"
                raise psycopg2.IntegrityError(msg)
    except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
        cur.execute("ROLLBACK TO SAVEPOINT direct_load")
        cur.execute("RELEASE SAVEPOINT direct_load")
        log.info("batch %d: the direct load of %s was refused (%s); staging its records one by one instead",
                 batch_id, ", ".join(f"{spec.topic}[{p}]" for p in sorted(ranges)), _pg_message(exc))  # fmt: skip
        return False
    cur.execute("RELEASE SAVEPOINT direct_load")
    return True


def _insert_staged(
    cur: Any,  # noqa: ANN401 - a cursor
    spec: PipelineSpec,
    cols: str,
    conflict: tuple[str, ...],
    keys_table: str | None,
) -> tuple[int, list[tuple[int, int]]]:
    """Insert the staged rows whose natural key is new; quarantine the others as duplicates (their raw
    bytes still to be settled). Returns (rows inserted, the duplicates' (partition, offset))."""
    table, key = spec.table, spec.natural_key
    if keys_table:
        # the natural key is claimed in the key registry first (unique across the partitions); only the
        # record that claimed it is inserted, every other one is a duplicate
        claim = f"""
        claimed AS (
            INSERT INTO {keys_table} ({key}, {spec.time_column}, kafka_topic, kafka_partition, kafka_offset)
            SELECT {key}, {spec.time_column}, kafka_topic, kafka_partition, kafka_offset
            FROM stage_tx ORDER BY {key}, kafka_partition, kafka_offset
            ON CONFLICT ({key}) DO NOTHING
            RETURNING kafka_partition, kafka_offset
        ),"""  # noqa: S608 - names from the spec and the catalog, not from input
        source = "stage_tx JOIN claimed USING (kafka_partition, kafka_offset)"
    else:
        claim, source = "", "stage_tx"
    cur.execute(
        f"""
        WITH {claim} inserted AS (
            INSERT INTO {table} ({cols})
            SELECT {cols} FROM {source} ORDER BY {key}, kafka_partition, kafka_offset
            ON CONFLICT ({", ".join(conflict)}) DO NOTHING
            RETURNING kafka_partition, kafka_offset
        ), duplicates AS (
            INSERT INTO quarantine ({", ".join(QUARANTINE_COLUMNS)})
            SELECT s.kafka_topic, s.kafka_partition, s.kafka_offset, NULL, s.raw_key, s.raw_value,
                   %(duplicate)s,
                   %(key)s || ' ' || s.{key} || ' was already stored from another record'
            FROM stage_tx s
            WHERE NOT EXISTS (
                SELECT 1 FROM inserted i
                WHERE i.kafka_partition = s.kafka_partition AND i.kafka_offset = s.kafka_offset
            )
            RETURNING kafka_partition, kafka_offset
        )
        SELECT (SELECT count(*) FROM inserted), array_agg(kafka_partition), array_agg(kafka_offset)
        FROM duplicates
        """,  # noqa: S608 - names come from the spec and its contract file, not from input
        {"duplicate": spec.duplicate_code, "key": key},
    )
    inserted, dup_partitions, dup_offsets = cur.fetchone()
    return inserted, list(zip(dup_partitions or [], dup_offsets or [], strict=True))


def _target_shape(cur: Any, spec: PipelineSpec) -> tuple[tuple[str, ...], bool, str | None]:  # noqa: ANN401
    """(the primary key's columns, whether the table stores Kafka's timestamp, its key registry or None)
    of the pipeline's table, read from the catalog, so the sink follows the migrations.

    The conflict target is the primary key: the natural key, plus the event time on a table partitioned by
    it (a partitioned table's unique constraints must hold the partition key). A replayed record has the
    same event time, so it still conflicts. A record whose key was stored with another event time is
    caught by the key registry, ``<table>_keys`` (natural key as primary key, with the claiming record's
    time and Kafka coordinates), when the table has one: the key is claimed there first, in the same
    transaction, so the natural key stays unique across partitions.
    """
    cur.execute(
        "SELECT (SELECT array_agg(a.attname::text ORDER BY k.n) FROM pg_index i "
        "        CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k (attnum, n) "
        "        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "        WHERE i.indrelid = to_regclass(%s) AND i.indisprimary), "
        "       EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s "
        "               AND NOT attisdropped), "
        "       to_regclass(%s) IS NOT NULL",
        (spec.table, spec.table, TIMESTAMP_COLUMN, key_registry(spec)),
    )
    key, stores_timestamp, has_registry = cur.fetchone()
    return tuple(key or (spec.natural_key,)), bool(stores_timestamp), key_registry(spec) if has_registry else None


def _settle_duplicates(
    cur: Any,  # noqa: ANN401 - a cursor
    topic: str,
    duplicated: list[tuple[int, int]],
    raw: RawBytes | None,
) -> None:
    """Give quarantined duplicates their raw bytes (staged without them), and drop them from
    ``stage_tx``, which then holds exactly the rows this commit inserted (for the latency histograms)."""
    partitions, offsets = [p for p, _ in duplicated], [o for _, o in duplicated]
    if raw is not None:
        keys, values = zip(*(raw.get(c, (None, None)) for c in duplicated), strict=True)
        cur.execute(
            """
            UPDATE quarantine q SET raw_key = v.k, raw_value = v.v
            FROM unnest(%s::int[], %s::bigint[], %s::bytea[], %s::bytea[]) AS v(p, o, k, v)
            WHERE q.kafka_topic = %s AND q.kafka_partition = v.p AND q.kafka_offset = v.o
            """,
            (partitions, offsets, list(keys), list(values), topic),
        )
    cur.execute(
        "DELETE FROM stage_tx s USING unnest(%s::int[], %s::bigint[]) AS d(p, o) "
        "WHERE s.kafka_partition = d.p AND s.kafka_offset = d.o",
        (partitions, offsets),
    )


def _advance(
    cur: Any,  # noqa: ANN401 - a cursor
    topic: str,
    partition: int,
    rng: PartitionRange,
    entry: LedgerEntry,
    batch_id: int,
    topic_id: str | None,
    fence: bool,
) -> None:
    """Move one partition's ledger past ``rng``: the fence. Under the row lock the ledger still ends
    where it was read, so the UPDATE changes one row; if it does not, nothing of the slice commits."""
    fenced = "AND next_offset = %(expected)s" if fence else ""
    cur.execute(
        f"""
        UPDATE sink_offsets SET
            first_offset = LEAST(first_offset, %(first)s),
            next_offset = GREATEST(next_offset, %(next)s),
            batch_id = %(batch_id)s,
            topic_id = coalesce(%(topic_id)s, topic_id),
            updated_at = now()
        WHERE topic = %(topic)s AND partition = %(partition)s {fenced}
        """,  # noqa: S608 - a fixed clause
        {
            "first": rng.first,
            "next": rng.last + 1,
            "batch_id": batch_id,
            "topic_id": topic_id,
            "topic": topic,
            "partition": partition,
            "expected": entry.next_offset,
        },
    )
    if cur.rowcount != 1:
        msg = (
            f"[SINK_FENCED] {topic}[{partition}]: the ledger no longer ends at offset {entry.next_offset}; "
            f"batch {batch_id} commits nothing"
        )
        raise SinkError(msg)


#: A commit's rows' instants by histogram kind (``event_time``, ``kafka_timestamp``): Arrow timestamps
#: (microseconds, UTC; null where there is none), one per inserted row, as the sink's write tasks get them.
RowTimes = Mapping[str, pa.Array | pa.ChunkedArray]


def latency_instants(spec: PipelineSpec) -> dict[str, str]:
    """Latency histogram kind -> the staged column holding each row's instant of that kind."""
    return {"event_time": spec.time_column, "kafka_timestamp": TIMESTAMP_COLUMN}


#: Adds a commit's ``(topic, kind, le, count, sum)`` rows to the cumulative ones in ``sink_latency``.
_LATENCY_ADD = (
    "ON CONFLICT (topic, kind, le) DO UPDATE SET count = l.count + EXCLUDED.count, sum = l.sum + EXCLUDED.sum"
)

#: The latency histograms of a commit's rows, bucketed by the smallest upper bound at or above each
#: observation (``sink_latency.le``). ``{rows}``: the rows this commit inserted, the slice's rows in the
#: table after a direct load, else the staged rows left (rows at committed offsets, rows Postgres refused
#: and duplicates are gone from ``stage_tx`` by now); ``{instants}``: ``(kind, s.column)`` per
#: :func:`latency_instants`; ``{add}``: :data:`_LATENCY_ADD`.
#: A time in the future (clock skew, event time up to MAX_FUTURE_SECONDS ahead) counts as 0 s, which
#: keeps ``_sum`` monotonic, as Prometheus expects of a histogram. ``date_part`` computes in float8:
#: ``extract`` (numeric since PostgreSQL 14) made this statement a third slower over a 50k-row slice
#: (111 ms against 79 ms). The bucket: ``width_bucket`` over the negated bounds counts the bounds at or
#: above the observation (c >= 1, the last bound being +Inf), so the smallest of them is bound number
#: n - c + 1.
_LATENCY_SQL = """
INSERT INTO sink_latency AS l (topic, kind, le, count, sum)
SELECT %(topic)s, o.kind,
       (%(bounds)s::float8[])[%(n)s - width_bucket(-o.seconds, %(negated)s::float8[]) + 1] AS le,
       count(*), sum(o.seconds)
FROM (
    SELECT k.kind, greatest(0, date_part('epoch', %(at)s - k.t)) AS seconds
    FROM {rows} s
    CROSS JOIN LATERAL (VALUES {instants}) AS k (kind, t)
    WHERE k.t IS NOT NULL
) o
GROUP BY 2, 3
ORDER BY 2, 3
{add}
"""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def latency_histograms(committed_at: datetime, times: RowTimes) -> list[tuple[str, float, int, float]]:
    """``(kind, le, count, sum of seconds)`` of the rows' latencies at ``committed_at``, in (kind, le) order:
    what :data:`_LATENCY_SQL` computes over the rows in the table, computed from their instants instead.

    Seconds are ``max(0, committed_at - instant)`` in float8 from whole microseconds, as ``date_part``
    gives them for less than a day (beyond, the bucket is +Inf either way); ``le`` is the smallest bound
    at or above them (:func:`~tx_platform.metrics.bucket_for`); rows without an instant are not counted.
    """
    at = (committed_at - _EPOCH) // timedelta(microseconds=1)
    bounds = list(LATENCY_BUCKETS)
    rows: list[tuple[str, float, int, float]] = []
    for kind in sorted(times):
        instants = pc.cast(pc.cast(times[kind], pa.timestamp("us", tz="UTC")), pa.int64()).drop_null()
        if not len(instants):
            continue
        waited = pc.divide(pc.cast(pc.subtract(pa.scalar(at, pa.int64()), instants), pa.float64()), 1_000_000.0)
        waited = pc.max_element_wise(waited, 0.0)
        # the bucket's index: how many bounds lie below the value (bisect_left)
        index = pc.cast(pc.greater(waited, bounds[0]), pa.int64())
        for bound in bounds[1:-1]:
            index = pc.add(index, pc.cast(pc.greater(waited, bound), pa.int64()))
        grouped = pa.table({"i": index, "s": waited}).group_by("i").aggregate([("s", "count"), ("s", "sum")])
        for i, count, total in zip(*(grouped.column(c).to_pylist() for c in ("i", "s_count", "s_sum")), strict=True):
            rows.append((kind, bounds[i], count, total))
    return sorted(rows)


def _accumulate_latency(
    cur: Any,  # noqa: ANN401 - a cursor
    spec: PipelineSpec,
    committed_at: Any,  # noqa: ANN401 - the transaction's clock_timestamp()
    seconds: float,
    inserted_rows: str | None,
    times: RowTimes | None = None,
) -> None:
    """Add this commit to the cumulative histograms in ``sink_latency`` (in the commit's transaction);
    ``inserted_rows``: a relation of the rows it inserted (None: it inserted none); ``times``: their
    instants, when the caller has them (then Postgres does not read the rows again)."""
    topic = spec.topic
    if inserted_rows is not None and times is not None:
        histograms = latency_histograms(committed_at, times)
        if histograms:
            # the same rows, in the same (kind, le) order, as the statement below locks them
            execute_values(
                cur,
                "INSERT INTO sink_latency AS l (topic, kind, le, count, sum) VALUES %s " + _LATENCY_ADD,  # noqa: S608
                [(topic, *row) for row in histograms],
            )
    elif inserted_rows is not None:
        instants = ", ".join(f"('{kind}', s.{column})" for kind, column in latency_instants(spec).items())
        sql = _LATENCY_SQL.format(rows=inserted_rows, instants=instants, add=_LATENCY_ADD)
        bounds = list(LATENCY_BUCKETS)
        negated = sorted(-b for b in bounds)
        cur.execute(sql, {"topic": topic, "at": committed_at, "bounds": bounds, "negated": negated, "n": len(bounds)})
    cur.execute(
        "INSERT INTO sink_latency AS l (topic, kind, le, count, sum) VALUES (%s, 'commit', %s, 1, %s) "  # noqa: S608
        + _LATENCY_ADD,
        (topic, bucket_for(seconds, COMMIT_BUCKETS), seconds),
    )


def committed_offsets(conn: Connection, topic: str) -> dict[int, int]:
    """Next offset to read per partition, as committed with the rows."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('sink_offsets') IS NOT NULL")
        if not cur.fetchone()[0]:
            return {}  # the sink has never run against this database
        cur.execute("SELECT partition, next_offset FROM sink_offsets WHERE topic = %s", (topic,))
        return {int(p): int(o) for p, o in cur.fetchall()}
