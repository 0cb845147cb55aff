"""The executor side of the sink: each Spark task commits the slice of the micro-batch it read.

The Kafka source plans one Spark partition per Kafka partition and offset range (the sink never
sets ``minPartitions``), and decoding and rendering are narrow, so each task of the write holds
exactly one Kafka partition's records of the batch. The task commits them with
:func:`tx_platform.warehouse.commit_batch` in one Postgres transaction together with that
partition's offset range; the ledger row lock and the fence in that transaction make a retried,
speculative or zombie task whose range is already committed write nothing. The driver receives
only what :class:`SliceResult` holds: counts, the offset range and, for a refused slice, why.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass
from typing import Any

from psycopg2 import errors as pg_errors

from tx_platform.errors import OffsetGapError, SinkFencedError, TopicRecreatedError
from tx_platform.pipelines import PipelineSpec
from tx_platform.warehouse import PartitionRange, RawBytes, commit_batch, connect

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


class SliceWriter:
    """The function a write task runs over its rows ``(ok, partition, offset, line)``.

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

    def __call__(self, rows: Iterable[Any]) -> Iterator[dict[str, Any]]:
        started = time.monotonic()
        good: list[str] = []
        bad: list[str] = []
        raw: dict[tuple[int, int], tuple[bytes | None, bytes | None]] = {}
        partitions: set[int] = set()
        first = last = -1
        for row in rows:
            offset = int(row.offset)
            if row.ok:
                good.append(row.line)
                raw[(int(row.partition), offset)] = (_bytes(row.key), _bytes(row.value))
            else:
                bad.append(row.line)
            if not partitions:
                first = last = offset
            else:
                first, last = min(first, offset), max(last, offset)
            partitions.add(int(row.partition))
        if not partitions:
            return  # an empty offset range: nothing to commit
        if len(partitions) > 1:
            msg = (
                f"[SINK_SLICE_SPANS_PARTITIONS] a write task of batch {self.batch_id} holds Kafka partitions "
                f"{sorted(partitions)}; each task must hold one (is the Kafka source's minPartitions set?)"
            )
            raise RuntimeError(msg)
        (partition,) = partitions
        read = time.monotonic() - started
        result = self.commit(partition, PartitionRange(first, last), good, bad, raw)
        yield asdict(result) | {"read_seconds": round(read, 3)}

    def commit(
        self, partition: int, rng: PartitionRange, good: list[str], bad: list[str], raw: RawBytes | None = None
    ) -> SliceResult:
        """Commit the slice, retrying a transaction Postgres aborted to resolve a conflict."""
        records = len(good) + len(bad)
        started = time.monotonic()
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                with closing(connect(self.dsn)) as conn:
                    with conn.cursor() as cur:
                        # staging tables are temporary: keep a slice's staging in memory (only settable
                        # before the session's first temporary table, hence a connection per slice)
                        cur.execute("SET temp_buffers = %s", (TEMP_BUFFERS,))
                    result = commit_batch(
                        conn, self.spec, self.batch_id, good, bad, {partition: rng},
                        topic_id=self.topic_id, lease_epoch=self.lease_epoch, fence=self.fence, raw=raw,
                    )  # fmt: skip
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


#: Set to 1 by the fault tests' negative control only: commits skip the fence, so a replay doubles.
UNFENCED_ENV = "TXP_TEST_UNFENCED_COMMITS"


def unfenced_for_tests() -> bool:
    """True when the negative control asked for a broken fence (read on the driver, at each batch)."""
    if os.environ.get(UNFENCED_ENV) != "1":
        return False
    log.error("%s=1: commits are NOT fenced; a replayed slice is written twice (fault tests only)", UNFENCED_ENV)
    return True


def _bytes(value: bytes | bytearray | None) -> bytes | None:
    """Spark hands binary columns to Python as ``bytearray``."""
    return None if value is None else bytes(value)
