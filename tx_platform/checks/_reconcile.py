"""Reconciliation queries: nothing lost, nothing doubled, derived tables agree with their source."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from psycopg2.extensions import connection as Connection


@dataclass(frozen=True)
class LossReport:
    """Records the sink has read (by committed offsets) against the rows that account for them."""

    records_read: int
    transactions: int
    quarantined: int
    duplicate_ids: int = 0
    lost_in_gaps: int = 0  # deleted by retention before the sink read them, recorded in sink_gaps

    @property
    def unexplained(self) -> int:
        """Records read that are in neither table (negative: rows without a record)."""
        return self.records_read - self.transactions - self.quarantined

    @property
    def ok(self) -> bool:
        """Every record accounted for exactly once and no transaction_id stored twice."""
        return self.unexplained == 0 and self.duplicate_ids == 0


def loss_report(conn: Connection, topic: str) -> LossReport:
    """Compare the committed offset ranges of ``topic`` with the rows stored from it.

    Offsets in recorded gaps (``sink_gaps``) were never read: they count as lost, not as read.
    """
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT (SELECT coalesce(sum(next_offset - first_offset), 0) FROM sink_offsets WHERE topic = %(t)s),
                   (SELECT count(*) FROM transactions WHERE kafka_topic = %(t)s),
                   (SELECT count(*) FROM quarantine WHERE kafka_topic = %(t)s),
                   (SELECT count(*) - count(DISTINCT transaction_id) FROM transactions WHERE kafka_topic = %(t)s),
                   (SELECT coalesce(sum(next_offset - first_offset), 0) FROM sink_gaps WHERE topic = %(t)s)
            """,
            {"t": topic},
        )
        spanned, tx, quarantined, duplicates, lost = cur.fetchone()
    return LossReport(int(spanned) - int(lost), int(tx), int(quarantined), int(duplicates), int(lost))


@dataclass(frozen=True)
class DailyReconciliation:
    """Counts and amounts per currency of one day, in the raw table and in the summary."""

    raw: dict[str, tuple[int, Decimal]]
    summary: dict[str, tuple[int, Decimal]]

    @property
    def matches(self) -> bool:
        """True when every currency has the same count and amount in both."""
        return self.raw == self.summary


def daily_reconciliation(conn: Connection, day: date) -> DailyReconciliation:
    """Per-currency count and amount of ``day`` in transactions vs daily_merchant_summary."""
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT currency, count(*), sum(amount) FROM transactions
            WHERE event_time >= %(d)s::date AT TIME ZONE 'UTC' AND event_time < (%(d)s::date + 1) AT TIME ZONE 'UTC'
            GROUP BY currency
            """,
            {"d": day},
        )
        raw = {c: (int(n), Decimal(a)) for c, n, a in cur.fetchall()}
        cur.execute(
            "SELECT currency, sum(transaction_count), sum(total_amount) FROM daily_merchant_summary "
            "WHERE day = %s GROUP BY currency",
            (day,),
        )
        summary = {c: (int(n), Decimal(a)) for c, n, a in cur.fetchall()}
    return DailyReconciliation(raw, summary)
