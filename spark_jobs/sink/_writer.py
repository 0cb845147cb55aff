"""The executor side of the sink: each Spark task commits the slices of the micro-batch it read.

The Kafka source plans one Spark partition per Kafka partition and offset range (the sink never
sets ``minPartitions``), and decoding and rendering are narrow; the driver coalesces those to the
task slots, so a task of the write holds one or more Kafka partitions' records of the batch. For
each partition it commits them with :func:`tx_platform.warehouse.commit_batch` in one Postgres
transaction together with that partition's offset range; the ledger row lock and the fence in that
transaction make a retried, speculative or zombie task whose range is already committed write
nothing. The driver receives only what :class:`SliceResult` holds: counts, the offset range and,
for a refused slice, why.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import suppress
from dataclasses import asdict, dataclass

import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
from psycopg2 import errors as pg_errors
from psycopg2.extensions import connection as Connection

from tx_platform.errors import OffsetGapError, SinkFencedError, TopicRecreatedError
from tx_platform.pipelines import PipelineSpec
from tx_platform.warehouse import PartitionRange, RawBytes, commit_batch, connect, latency_instants

log = logging.getLogger(__name__)

#: Attempts of one slice's transaction when Postgres aborts it to break a deadlock or a
#: serialization conflict (two tasks storing the same natural key); a replay writes nothing twice.
COMMIT_ATTEMPTS = 5

#: Memory for a slice's temporary staging tables (Postgres' default, 8 MB, spills a 50k-row slice to disk).
TEMP_BUFFERS = "256MB"

#: ``SliceResult.refused`` values: the ledger refused the slice (the driver names the error).
REFUSED_GAP = "offset_gap"
REFUSED_RECREATED = "topic_recreated"
REFUSED_FENCED = "fenced"


@dataclass(frozen=True)
class SliceResult:
    """What one task did with its slice: the only thing the driver collects."""

    partition: int
    first: int
    last: int
    records: int
    inserted: int = 0
    quarantined: int = 0
    skipped: int = 0
    warehouse_rejected: int = 0
    #: seconds the task spent receiving its rows (Spark reading, decoding, rendering them)
    read_seconds: float = 0.0
    #: seconds of the commit (connection, staging, insert, ledger), retries included
    seconds: float = 0.0
    refused: str | None = None
    message: str | None = None

    @property
    def range(self) -> PartitionRange:
        return PartitionRange(self.first, self.last)


#: What a write task returns (``mapInArrow``'s output), field for field of :class:`SliceResult`.
RESULT_SCHEMA = pa.schema(
    [
        ("partition", pa.int32()),
        *[(n, pa.int64()) for n in ("first", "last", "records", "inserted", "quarantined", "skipped")],
        ("warehouse_rejected", pa.int64()),
        ("read_seconds", pa.float64()),
        ("seconds", pa.float64()),
        ("refused", pa.string()),
        ("message", pa.string()),
    ]
)


class ArrowRawBytes(Mapping[tuple[int, int], tuple[bytes | None, bytes | None]]):
    """Raw key and value bytes of a slice's accepted records, read from its Arrow columns on demand.

    Only a duplicate or a record Postgres refuses needs them, so no per-record object is made
    until the first lookup (and then one index of offsets)."""

    def __init__(self, partition: int, accepted: pa.Table) -> None:
        self._partition = partition
        self._table = accepted
        self._index: dict[int, int] | None = None

    def _row_of(self, offset: int) -> int:
        if self._index is None:
            self._index = {o: i for i, o in enumerate(self._table.column("offset").to_pylist())}
        return self._index[offset]

    def __getitem__(self, coordinate: tuple[int, int]) -> tuple[bytes | None, bytes | None]:
        partition, offset = coordinate
        if partition != self._partition:
            raise KeyError(coordinate)
        row = self._row_of(offset)
        return self._table.column("key")[row].as_py(), self._table.column("value")[row].as_py()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self._partition, o) for o in self._table.column("offset").to_pylist())

    def __len__(self) -> int:
        return self._table.num_rows


class SliceWriter:
    """The function a write task runs over its rows ``(ok, partition, offset, line, key, value)``,
    as Arrow batches (``DataFrame.mapInArrow``): columns, not one Python object per row.

    Pickled to the executors with everything it needs (the spec, the DSN, the lease epoch and
    topic id the driver checked): executors import the warehouse, never the driver's modules.
    """

    def __init__(
        self,
        spec: PipelineSpec,
        dsn: str,
        batch_id: int,
        *,
        topic_id: str | None,
        lease_epoch: int | None,
        fence: bool = True,
    ) -> None:
        self.spec = spec
        self.dsn = dsn
        self.batch_id = batch_id
        self.topic_id = topic_id
        self.lease_epoch = lease_epoch
        self.fence = fence

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """``mapInArrow``'s function: the task's rows in, one result row per Kafka partition's slice out (none
        for no rows). A task may hold several partitions' slices (the driver coalesces the Kafka source's
        partitions to the slots there are); each slice commits in its own transaction, fenced on its own."""
        started = time.monotonic()
        received = [b for b in batches if b.num_rows]
        if not received:
            return  # an empty offset range: nothing to commit
        table = pa.Table.from_batches(received)
        partitions = sorted(pc.unique(table.column("partition")).to_pylist())
        for partition in partitions:
            part = table if len(partitions) == 1 else table.filter(pc.equal(table.column("partition"), partition))
            bounds = pc.min_max(part.column("offset")).as_py()
            ok = part.column("ok")
            accepted = part.filter(ok)
            good = accepted.column("line").to_pylist()
            bad = part.filter(pc.invert(ok)).column("line").to_pylist()
            raw = ArrowRawBytes(partition, accepted)
            kinds = [kind for kind in latency_instants(self.spec) if kind in accepted.column_names]
            times = {kind: accepted.column(kind) for kind in kinds}
            read = time.monotonic() - started
            result = self.commit(partition, PartitionRange(bounds["min"], bounds["max"]), good, bad, raw, times or None)
            yield pa.RecordBatch.from_pylist([asdict(result) | {"read_seconds": round(read, 3)}], schema=RESULT_SCHEMA)
            started = time.monotonic()

    def commit(
        self,
        partition: int,
        rng: PartitionRange,
        good: list[str],
        bad: list[str],
        raw: RawBytes | None = None,
        times: Mapping[str, pa.ChunkedArray] | None = None,
    ) -> SliceResult:
        """Commit the slice, retrying a transaction Postgres aborted to resolve a conflict."""
        records = len(good) + len(bad)
        started = time.monotonic()
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                conn = worker_connection(self.dsn)
                try:
                    result = commit_batch(
                        conn, self.spec, self.batch_id, good, bad, {partition: rng},
                        topic_id=self.topic_id, lease_epoch=self.lease_epoch, fence=self.fence, raw=raw, times=times,
                    )  # fmt: skip
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                    if isinstance(exc, pg_errors.TransactionRollbackError):
                        raise  # a deadlock or a serialization conflict: the connection is fine
                    # the connection broke (Postgres restarted since this worker's last slice, or died
                    # now): a new one next time. An error at COMMIT may hide a commit that happened:
                    # the fence makes the retry (ours or Spark's) write nothing twice either way
                    drop_worker_connection(self.dsn)
                    if attempt == COMMIT_ATTEMPTS:
                        raise
                    log.warning("batch %d, partition %d: the connection to PostgreSQL broke; retrying (%d)",
                                self.batch_id, partition, attempt)  # fmt: skip
                    time.sleep(0.5 * attempt)
                    continue
                break
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as exc:
                if attempt == COMMIT_ATTEMPTS:
                    raise
                log.warning("batch %d, partition %d: %s; retrying (%d)", self.batch_id, partition,
                            str(exc).strip(), attempt)  # fmt: skip
                time.sleep(0.05 * attempt)
            except OffsetGapError as exc:
                return SliceResult(partition, rng.first, rng.last, records, refused=REFUSED_GAP, message=str(exc))
            except TopicRecreatedError as exc:
                return SliceResult(partition, rng.first, rng.last, records, refused=REFUSED_RECREATED, message=str(exc))
            except SinkFencedError as exc:
                return SliceResult(partition, rng.first, rng.last, records, refused=REFUSED_FENCED, message=str(exc))
        return SliceResult(
            partition=partition,
            first=rng.first,
            last=rng.last,
            records=result.records,
            inserted=result.inserted,
            quarantined=result.quarantined,
            skipped=result.skipped,
            warehouse_rejected=result.warehouse_rejected,
            seconds=round(time.monotonic() - started, 3),
        )


#: One connection per Python worker and DSN: Spark reuses its Python workers from task to task
#: (``spark.python.worker.reuse``), so a slice's commit skips the connection set-up.
_CONNECTIONS: dict[str, Connection] = {}


def worker_connection(dsn: str) -> Connection:
    """This Python worker's connection to ``dsn``, opened on first use (each slice commits its own
    transaction on it; ``commit_batch`` leaves it idle)."""
    conn = _CONNECTIONS.get(dsn)
    if conn is None or conn.closed:
        conn = connect(dsn)
        with conn.cursor() as cur:
            # staging tables are temporary: keep a slice's staging in memory (settable only before the
            # session's first temporary table, so once per connection)
            cur.execute("SET temp_buffers = %s", (TEMP_BUFFERS,))
        conn.commit()
        _CONNECTIONS[dsn] = conn
    return conn


def drop_worker_connection(dsn: str) -> None:
    """Close and forget this worker's connection to ``dsn`` (after an error that may have broken it)."""
    conn = _CONNECTIONS.pop(dsn, None)
    if conn is not None:
        with suppress(psycopg2.Error):
            conn.close()


#: Set to 1 by the fault tests' negative control only: commits skip the fence, so a replay doubles.
UNFENCED_ENV = "TXP_TEST_UNFENCED_COMMITS"


def unfenced_for_tests() -> bool:
    """True when the negative control asked for a broken fence (read on the driver, at each batch)."""
    if os.environ.get(UNFENCED_ENV) != "1":
        return False
    log.error("%s=1: commits are NOT fenced; a replayed slice is written twice (fault tests only)", UNFENCED_ENV)
    return True
