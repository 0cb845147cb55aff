"""An independent count of a pipeline: every record in its topic against the warehouse and the DLQ.

Unlike :func:`~tx_platform.checks.loss_report`, which trusts the sink's own ledger, the audit
reads the topic itself (every record's partition and offset, from the log start to the end),
every stored coordinate of the pipeline's table and of ``quarantine``, and every record of the
dead-letter topic (by its source-coordinate headers), and compares them as sets:

- ``lost``: records in the topic stored nowhere;
- ``duplicated``: coordinates stored more than once (table and quarantine together), natural keys
  stored twice, and quarantined records sent to the DLQ more than once;
- ``unexplained``: stored coordinates that are not records of the topic (at or past its log start:
  below it, retention took the record after it was stored), quarantined records missing from the
  DLQ, and DLQ records of coordinates that are not quarantined.

All three are 0 when every record ended up exactly once in the table or, with a reason, in
quarantine and the DLQ. Run it once the sink has caught up (records it has not read yet count as
lost). ``txp audit`` prints it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from tx_platform.errors import TxPlatformError
from tx_platform.kafka_admin import watermarks
from tx_platform.pipelines import PipelineSpec

#: Examples of each kind of discrepancy kept in the report (coordinates as ``partition:offset``).
SAMPLES = 5
#: Header of a DLQ record naming its source partition and offset (see ``spark_jobs.sink._dlq``).
_SOURCE_PARTITION = "txp.source.partition"
_SOURCE_OFFSET = "txp.source.offset"

Coordinate = tuple[int, int]


class AuditError(TxPlatformError):
    """The topic could not be read completely."""


@dataclass(frozen=True)
class Audit:
    """The independent count of one pipeline's topic."""

    topic: str
    records: int  # in the topic now (log start to end)
    rows: int
    quarantined: int
    dlq: int
    lost: int
    duplicated: int
    unexplained: int
    samples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing doubled, nothing unexplained."""
        return self.lost == 0 and self.duplicated == 0 and self.unexplained == 0

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data, with ``ok``."""
        return {**asdict(self), "ok": self.ok}


def _consumer(bootstrap: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "txp-audit",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
        }
    )


def read_coordinates(
    bootstrap: str, topic: str, with_headers: bool = False, timeout: float = 120.0
) -> tuple[dict[int, int], list[Coordinate], list[dict[str, bytes]]]:
    """Every record of ``topic`` now: (log start per partition, coordinates, headers when asked).

    Reads each partition from its log start to the end it had when the read began; raises
    AuditError if the end is not reached within ``timeout`` seconds of no progress.
    """
    marks = watermarks(bootstrap, topic)
    coordinates: list[Coordinate] = []
    headers: list[dict[str, bytes]] = []
    pending = {p: high for p, (low, high) in marks.items() if high > low}
    if pending:
        consumer = _consumer(bootstrap)
        try:
            consumer.assign([TopicPartition(topic, p, marks[p][0]) for p in pending])
            idle = 0.0
            while pending:
                messages = consumer.consume(10_000, 1.0)
                if not messages:
                    idle += 1.0
                    if idle > timeout:
                        where = ", ".join(f"[{p}] to {end}" for p, end in sorted(pending.items()))
                        msg = f"[AUDIT_INCOMPLETE] {topic}: could not read {where} within {timeout:.0f} s"
                        raise AuditError(msg)
                    continue
                idle = 0.0
                for message in messages:
                    if message.error() is not None:
                        continue
                    partition, offset = int(message.partition() or 0), int(message.offset() or 0)
                    end = pending.get(partition)
                    if end is None or offset >= end:
                        continue  # written after the audit began
                    coordinates.append((partition, offset))
                    if with_headers:
                        headers.append(
                            {str(h[0]): h[1] for h in list(message.headers() or []) if isinstance(h[1], bytes)}
                        )
                    if offset + 1 >= end:
                        del pending[partition]
        finally:
            consumer.close()
    return {p: low for p, (low, _high) in marks.items()}, coordinates, headers


def _stored(conn: Connection, table: str, topic: str) -> list[Coordinate]:
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT kafka_partition, kafka_offset FROM {} WHERE kafka_topic = %s").format(
                sql.Identifier(table)
            ),
            (topic,),
        )
        return [(int(p), int(o)) for p, o in cur.fetchall()]


def _fmt(coordinates: Any) -> list[str]:  # noqa: ANN401 - any iterable of coordinates
    return [f"{p}:{o}" for p, o in sorted(coordinates)[:SAMPLES]]


def audit_pipeline(conn: Connection, bootstrap: str, spec: PipelineSpec) -> Audit:
    """Audit ``spec``'s topic against its table, ``quarantine`` and its DLQ topic."""
    table, natural_key, topic, dlq_topic = spec.table, spec.natural_key, spec.topic, spec.dlq_topic
    log_start, in_topic_list, _ = read_coordinates(bootstrap, topic)
    in_topic = set(in_topic_list)
    rows = _stored(conn, table, topic)
    quarantined = _stored(conn, "quarantine", topic)
    stored = Counter(rows) + Counter(quarantined)
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT count(*) - count(DISTINCT {key}) FROM {table} WHERE kafka_topic = %s").format(
                key=sql.Identifier(natural_key), table=sql.Identifier(table)
            ),
            (topic,),
        )
        duplicate_keys = int(cur.fetchone()[0])
        cur.execute(
            "SELECT kafka_partition, kafka_offset FROM quarantine WHERE kafka_topic = %s AND dlq_offset IS NULL",
            (topic,),
        )
        unpublished = {(int(p), int(o)) for p, o in cur.fetchall()}
    dlq: Counter[Coordinate] = Counter()
    foreign = 0
    if dlq_topic in _topics(bootstrap):
        _, _, headers = read_coordinates(bootstrap, dlq_topic, with_headers=True)
        for h in headers:
            try:
                dlq[(int(h[_SOURCE_PARTITION]), int(h[_SOURCE_OFFSET]))] += 1
            except (KeyError, ValueError):
                foreign += 1
    quarantine_set = set(quarantined)
    lost = in_topic - stored.keys()
    doubled = {c: n - 1 for c, n in stored.items() if n > 1}
    dlq_doubled = {c: n - 1 for c, n in dlq.items() if n > 1}
    not_in_topic = {c for c in stored if c not in in_topic and c[1] >= log_start.get(c[0], 0)}
    missing_from_dlq = (quarantine_set - dlq.keys()) | unpublished
    not_quarantined = dlq.keys() - quarantine_set
    samples = {
        "lost": _fmt(lost),
        "duplicated": _fmt(set(doubled) | set(dlq_doubled)),
        "not_in_topic": _fmt(not_in_topic),
        "missing_from_dlq": _fmt(missing_from_dlq),
        "dlq_not_quarantined": _fmt(not_quarantined),
    }
    return Audit(
        topic=topic,
        records=len(in_topic),
        rows=len(rows),
        quarantined=len(quarantined),
        dlq=sum(dlq.values()),
        lost=len(lost),
        duplicated=sum(doubled.values()) + duplicate_keys + sum(dlq_doubled.values()),
        unexplained=len(not_in_topic) + len(missing_from_dlq) + len(not_quarantined) + foreign,
        samples={k: v for k, v in samples.items() if v},
    )


def _topics(bootstrap: str) -> set[str]:
    consumer = _consumer(bootstrap)
    try:
        return set(consumer.list_topics(timeout=20).topics)
    finally:
        consumer.close()
