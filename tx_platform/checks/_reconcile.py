"""Queries behind the sink's checks: nothing lost, nothing doubled, and the newest rows as pandas."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from tx_platform.pipelines import PipelineSpec


@dataclass(frozen=True)
class LossReport:
    """Records the sink has read (by committed offsets) against the rows that account for them."""

    records_read: int
    #: rows of the pipeline's table that came from the topic
    rows: int
    quarantined: int
    duplicate_ids: int = 0
    lost_in_gaps: int = 0  # deleted by retention before the sink read them, recorded in sink_gaps

    @property
    def unexplained(self) -> int:
        """Records read that are in neither table (negative: rows without a record)."""
        return self.records_read - self.rows - self.quarantined

    @property
    def ok(self) -> bool:
        """Every record accounted for exactly once and no natural key stored twice."""
        return self.unexplained == 0 and self.duplicate_ids == 0


def loss_report(conn: Connection, spec: PipelineSpec) -> LossReport:
    """Compare the committed offset ranges of ``spec.topic`` with the rows stored from it.

    Rows are counted in the pipeline's table and in the shared ``quarantine`` table, both by their
    ``kafka_topic``, so a pipeline read from another topic (``spec.with_topic``) is judged alone.
    Offsets in recorded gaps (``sink_gaps``) were never read: they count as lost, not as read.
    """
    query = sql.SQL(
        """
        SELECT (SELECT coalesce(sum(next_offset - first_offset), 0) FROM sink_offsets WHERE topic = %(t)s),
               (SELECT count(*) FROM {table} WHERE kafka_topic = %(t)s),
               (SELECT count(*) FROM quarantine WHERE kafka_topic = %(t)s),
               (SELECT count(*) - count(DISTINCT {key}) FROM {table} WHERE kafka_topic = %(t)s),
               (SELECT coalesce(sum(next_offset - first_offset), 0) FROM sink_gaps WHERE topic = %(t)s)
        """
    ).format(table=sql.Identifier(spec.table), key=sql.Identifier(spec.natural_key))
    with conn.cursor() as cur:
        cur.execute(query, {"t": spec.topic})
        spanned, rows, quarantined, duplicates, lost = cur.fetchone()
    return LossReport(int(spanned) - int(lost), int(rows), int(quarantined), int(duplicates), int(lost))


def read_newest_rows(conn: Connection, spec: PipelineSpec, limit: int) -> pd.DataFrame:
    """The ``limit`` most recently ingested rows of the pipeline's table, as its Pandera schema reads them.

    UUID columns come back as text (the contract's UUIDs are strings) and timestamps as UTC pandas
    datetimes; decimals stay :class:`~decimal.Decimal` objects, whose exact values the checks judge.
    """
    query = sql.SQL("SELECT * FROM {table} ORDER BY ingested_at DESC, kafka_offset DESC LIMIT %s").format(
        table=sql.Identifier(spec.table)
    )
    with conn.cursor() as cur:
        cur.execute(query, (limit,))
        columns = [d.name for d in cur.description]
        frame = pd.DataFrame(cur.fetchall(), columns=columns)
    for field in spec.contract.fields:
        if field.postgres_type == "uuid":
            frame[field.name] = frame[field.name].map(lambda v: None if v is None else str(v))
        elif field.postgres_type == "timestamptz":
            frame[field.name] = pd.to_datetime(frame[field.name], utc=True)
    frame["ingested_at"] = pd.to_datetime(frame["ingested_at"], utc=True)
    return frame
