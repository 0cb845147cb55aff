"""The sink's offset ledger in Postgres: where each partition's committed records end, for which topic.

Three promises rest on it, and each is checked here rather than trusted to Spark's checkpoint:

- **contiguity**: a batch starts exactly where the ledger ends (``[OFFSET_GAP]`` otherwise), so a
  checkpoint ahead of Postgres can never skip records;
- **topic identity**: the ledger keeps Kafka's topic id; a topic deleted and created again under
  the same name is refused (``[TOPIC_RECREATED]``) instead of being read as a replay;
- **one writer**: a sink holds a lease (a session advisory lock plus an epoch) for its topic; a
  second sink fails at start (``[SINK_ALREADY_RUNNING]``), at once or after waiting its turn for
  as long as it was asked to, and a commit under an older epoch is refused (``[SINK_FENCED]``).

Records deleted by retention before the sink read them stop the sink with ``[DATA_LOSS]``, or,
when asked for, are recorded in ``sink_gaps`` and skipped in the open.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg2
from psycopg2.extensions import connection as Connection

from tx_platform.errors import (
    DataLossError,
    OffsetGapError,
    SinkAlreadyRunningError,
    SinkFencedError,
    TopicRecreatedError,
)
from tx_platform.pipelines import PipelineSpec

log = logging.getLogger(__name__)

#: How often a sink waiting for a lease asks for it again, and says (in the log) that it still waits.
LEASE_POLL_SECONDS = 0.5
LEASE_WAIT_LOG_EVERY_SECONDS = 30.0


@dataclass(frozen=True)
class PartitionRange:
    """Offsets ``[first, last]`` of one partition seen in a batch."""

    first: int
    last: int


@dataclass(frozen=True)
class LedgerEntry:
    """What the ledger holds for one partition."""

    first_offset: int
    next_offset: int
    topic_id: str | None


@dataclass(frozen=True)
class Gap:
    """Offsets ``[first, next)`` of one partition that Kafka deleted before the sink read them."""

    partition: int
    first: int
    next: int

    def describe(self, topic: str) -> str:
        return f"{topic}[{self.partition}] offsets {self.first}..{self.next - 1} ({self.next - self.first} records)"


def read_ledger(cur: Any, topic: str) -> dict[int, LedgerEntry]:  # noqa: ANN401 - a DB-API cursor
    """The ledger rows of ``topic`` by partition."""
    cur.execute("SELECT partition, first_offset, next_offset, topic_id FROM sink_offsets WHERE topic = %s", (topic,))
    return {int(p): LedgerEntry(int(first), int(nxt), tid) for p, first, nxt, tid in cur.fetchall()}


def check_batch(
    topic: str, ranges: Mapping[int, PartitionRange], ledger: Mapping[int, LedgerEntry], topic_id: str | None
) -> None:
    """Refuse a batch that does not continue the ledger. Pure: the caller holds the ledger lock.

    A batch may start before the ledger's end (a replay after a crash: those records are skipped),
    never after it. A partition the ledger does not know must start at offset 0 (the sink seeds
    the ledger at start for partitions whose head retention already deleted).
    """
    for partition, rng in sorted(ranges.items()):
        entry = ledger.get(partition)
        if entry is None:
            if rng.first != 0:
                raise OffsetGapError(topic, partition, 0, rng.first)
            continue
        if topic_id is not None and entry.topic_id is not None and entry.topic_id != topic_id:
            raise TopicRecreatedError(topic, entry.topic_id, topic_id)
        if rng.first > entry.next_offset:
            raise OffsetGapError(topic, partition, entry.next_offset, rng.first)


def plan_start(
    topic: str,
    ledger: Mapping[int, LedgerEntry],
    topic_id: str | None,
    watermarks: Mapping[int, tuple[int, int]],
) -> tuple[dict[int, int], list[Gap]]:
    """Check the ledger against the topic before a start. Pure.

    ``watermarks`` is (log start offset, end offset) per partition. Returns the ledger rows to
    create (partition -> first offset, for partitions the ledger does not know yet) and the gaps:
    ranges retention deleted before the sink read them. Raises TopicRecreatedError when the
    topic's id changed or the ledger is past the topic's end.
    """
    seeds: dict[int, int] = {}
    gaps: list[Gap] = []
    for partition, (low, high) in sorted(watermarks.items()):
        entry = ledger.get(partition)
        if entry is None:
            seeds[partition] = low
            continue
        if topic_id is not None and entry.topic_id is not None and entry.topic_id != topic_id:
            raise TopicRecreatedError(topic, entry.topic_id, topic_id)
        if entry.next_offset > high:
            raise TopicRecreatedError(topic, entry.topic_id, topic_id, partition, entry.next_offset, high)
        if low > entry.next_offset:
            gaps.append(Gap(partition, entry.next_offset, low))
    return seeds, gaps


def prepare_ledger(
    conn: Connection,
    topic: str,
    topic_id: str | None,
    watermarks: Mapping[int, tuple[int, int]],
    record_gaps: bool,
) -> list[Gap]:
    """Before a start: check topic identity, seed new partitions, and handle data loss. Commits.

    Without ``record_gaps`` a gap raises ``[DATA_LOSS]``; with it, each gap goes to ``sink_gaps``
    and the ledger moves past it in the same transaction. Returns the gaps recorded.
    """
    with conn, conn.cursor() as cur:
        cur.execute("LOCK TABLE sink_offsets IN SHARE ROW EXCLUSIVE MODE")
        seeds, gaps = plan_start(topic, read_ledger(cur, topic), topic_id, watermarks)
        if gaps and not record_gaps:
            raise DataLossError(topic, [g.describe(topic) for g in gaps])
        for partition, first in seeds.items():
            cur.execute(
                "INSERT INTO sink_offsets (topic, partition, first_offset, next_offset, batch_id, topic_id) "
                "VALUES (%s, %s, %s, %s, -1, %s)",
                (topic, partition, first, first, topic_id),
            )
        for gap in gaps:
            cur.execute(
                "INSERT INTO sink_gaps (topic, partition, first_offset, next_offset) VALUES (%s, %s, %s, %s)",
                (topic, gap.partition, gap.first, gap.next),
            )
            cur.execute(
                "UPDATE sink_offsets SET next_offset = %s, updated_at = now() WHERE topic = %s AND partition = %s",
                (gap.next, topic, gap.partition),
            )
        if topic_id is not None:
            # ledgers written before topic ids were kept adopt the current topic's
            cur.execute(
                "UPDATE sink_offsets SET topic_id = %s WHERE topic = %s AND topic_id IS NULL", (topic_id, topic)
            )
    return gaps


def _lock_key(topic: str) -> str:
    return f"tx_platform.sink:{topic}"


@dataclass
class SinkLease:
    """The right to commit a topic's offsets, held for as long as ``conn`` stays open."""

    topic: str
    epoch: int
    holder: str
    conn: Connection

    def release(self) -> None:
        """Give the lease up now (closing alone frees the lock only once the server session has ended)."""
        if self.conn.closed:
            return
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (_lock_key(self.topic),))
        except psycopg2.Error:
            pass  # the session is gone, and its lock with it
        finally:
            self.conn.close()


def acquire_lease(conn: Connection, topic: str, wait: float = 0.0) -> SinkLease:
    """Take the topic's lease on ``conn`` (a connection of its own, kept open while the sink runs).

    Raises SinkAlreadyRunningError when another session holds it and did not give it up within
    ``wait`` seconds (0: ask once); while it waits, it logs who holds the lease. Each acquisition
    increments the epoch, which fences commits of any earlier holder that lost its session without
    noticing.
    """
    conn.autocommit = True
    holder = f"{socket.gethostname()} pid {os.getpid()}"
    started = time.monotonic()
    logged_at: float | None = None
    with conn.cursor() as cur:
        while True:
            cur.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (_lock_key(topic),))
            if cur.fetchone()[0]:
                break
            cur.execute("SELECT holder, acquired_at FROM sink_leases WHERE topic = %s", (topic,))
            other, since = cur.fetchone() or ("unknown", None)
            waited = time.monotonic() - started
            if waited >= wait:
                conn.close()
                raise SinkAlreadyRunningError(topic, other, since, waited=waited if wait else None)
            if logged_at is None or waited - logged_at >= LEASE_WAIT_LOG_EVERY_SECONDS:
                log.info(
                    "waiting for the lease of %s, held by %s since %s (%.0f s of up to %.0f s)",
                    topic, other, since, waited, wait,
                )  # fmt: skip
                logged_at = waited
            time.sleep(min(LEASE_POLL_SECONDS, wait - waited))
        cur.execute(
            """
            INSERT INTO sink_leases (topic, epoch, holder) VALUES (%s, 1, %s)
            ON CONFLICT (topic) DO UPDATE SET epoch = sink_leases.epoch + 1, holder = EXCLUDED.holder,
                                              acquired_at = now()
            RETURNING epoch
            """,
            (topic, holder),
        )
        epoch = int(cur.fetchone()[0])
    if logged_at is not None:
        log.info("took the lease of %s after waiting %.1f s", topic, time.monotonic() - started)
    return SinkLease(topic=topic, epoch=epoch, holder=holder, conn=conn)


def check_lease(cur: Any, topic: str, epoch: int, batch_id: int) -> None:  # noqa: ANN401 - a DB-API cursor
    """Refuse to commit under an epoch that is no longer the topic's (``[SINK_FENCED]``)."""
    cur.execute("SELECT epoch, holder FROM sink_leases WHERE topic = %s", (topic,))
    row = cur.fetchone()
    if row is None or int(row[0]) != epoch:
        current, holder = (None, None) if row is None else (int(row[0]), row[1])
        raise SinkFencedError(topic, epoch, current, holder, batch_id)


#: Shared tables holding a topic's rejects and progress, with the column naming the topic (the
#: pipeline's own table, keyed by ``kafka_topic``, comes first).
_TOPIC_TABLES = (
    ("quarantine", "kafka_topic"),
    ("sink_offsets", "topic"),
    ("sink_batches", "topic"),
    ("sink_gaps", "topic"),
    ("sink_latency", "topic"),
)


def forget_topic(conn: Connection, spec: PipelineSpec) -> dict[str, int]:
    """Delete everything the warehouse holds of ``spec``'s topic (its table's rows from that topic,
    quarantine, ledger, DLQ progress of its dead-letter topic); commits. Returns rows deleted per table.

    For a topic that was deleted and created again: its offsets start over, so its old rows must
    go before the sink can read it again. Refused while a sink holds the topic's lease.
    """
    topic, dlq_topic = spec.topic, spec.dlq_topic
    deleted: dict[str, int] = {}
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))", (_lock_key(topic),))
        if not cur.fetchone()[0]:
            cur.execute("SELECT holder, acquired_at FROM sink_leases WHERE topic = %s", (topic,))
            raise SinkAlreadyRunningError(topic, *(cur.fetchone() or ("unknown", None)))
        cur.execute("LOCK TABLE sink_offsets IN SHARE ROW EXCLUSIVE MODE")
        # the pipeline's table exists only once its migrations ran (txp db migrate with its spec)
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (spec.table,))
        own = ((spec.table, "kafka_topic"),) if cur.fetchone()[0] else ()
        for table, column in (*own, *_TOPIC_TABLES):
            cur.execute(f"DELETE FROM {table} WHERE {column} = %s", (topic,))  # noqa: S608 - names from the spec
            deleted[table] = cur.rowcount
        cur.execute("DELETE FROM dlq_progress WHERE dlq_topic = %s", (dlq_topic,))
        deleted["dlq_progress"] = cur.rowcount
    return deleted
